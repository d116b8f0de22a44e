//! Writes to Haiyun's own objects on the API server: a job's status and finalizer, and the statuses of queues, pools
//! and quota requests, each by server-side apply as the operator's field manager.

use haiyun_api::{ComputeJob, ComputeJobStatus, ComputePool, Queue, QuotaRequest};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;

use crate::status::StatusWrite;

/// Field manager of every write.
pub const MANAGER: &str = "haiyun-operator";

/// Why a write failed; every write can be retried.
#[derive(Debug, thiserror::Error)]
#[error("failed to {action} {object}: {source}")]
pub struct WriteError {
    /// What was being done.
    action: &'static str,
    /// To what.
    object: String,
    /// The cause.
    source: kube::Error,
}

impl WriteError {
    /// The API server's message where it refused the write as such (invalid, or forbidden by a policy): trying
    /// again cannot help.
    pub fn refusal(&self) -> Option<&str> {
        match &self.source {
            kube::Error::Api(s) if s.code == 403 || s.code == 422 => Some(&s.message),
            _ => None,
        }
    }
}

fn failed(action: &'static str, object: impl Into<String>) -> impl FnOnce(kube::Error) -> WriteError {
    let object = object.into();
    move |source| WriteError { action, object, source }
}

/// Writes a job's whole status (server-side apply: fields left out are removed).
pub async fn job_status(
    client: &Client,
    job: &ComputeJob,
    status: &ComputeJobStatus,
) -> Result<(), WriteError> {
    let api: Api<ComputeJob> = Api::namespaced(client.clone(), &job.namespace().unwrap_or_default());
    // The uid makes the write fail rather than land on a job of the same name made since.
    let patch = json!({
        "apiVersion": "haiyun.io/v1alpha1",
        "kind": "ComputeJob",
        "metadata": { "uid": job.uid() },
        "status": status,
    });
    api.patch_status(&job.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(failed("write the status of", crate::index::job::key(job)))?;
    Ok(())
}

/// Adds (`on`) or removes this operator's finalizer `name` on the job. Server-side apply owns just that entry of
/// the finalizer set, so other controllers' finalizers are untouched.
pub async fn finalizer(client: &Client, job: &ComputeJob, name: &str, on: bool) -> Result<(), WriteError> {
    let has = job.finalizers().iter().any(|f| f == name);
    if has == on {
        return Ok(());
    }
    let api: Api<ComputeJob> = Api::namespaced(client.clone(), &job.namespace().unwrap_or_default());
    let finalizers: Vec<&str> = if on { vec![name] } else { Vec::new() };
    let patch = json!({
        "apiVersion": "haiyun.io/v1alpha1",
        "kind": "ComputeJob",
        "metadata": { "uid": job.uid(), "finalizers": finalizers },
    });
    let manager = format!("{MANAGER}-finalizer");
    match api.patch(&job.name_any(), &PatchParams::apply(&manager).force(), &Patch::Apply(&patch)).await {
        Err(kube::Error::Api(e)) if e.code == 404 && !on => Ok(()),
        r => r.map(|_| ()).map_err(failed("set the finalizer of", crate::index::job::key(job))),
    }
}

/// Writes the status of a queue, pool or quota request.
pub async fn object_status(client: &Client, w: &StatusWrite) -> Result<(), WriteError> {
    match w {
        StatusWrite::Queue { name, status } => {
            apply::<Queue, _>(Api::all(client.clone()), name, status).await
        }
        StatusWrite::Pool { name, status } => {
            apply::<ComputePool, _>(Api::all(client.clone()), name, status).await
        }
        StatusWrite::Request { namespace, name, status } => {
            apply::<QuotaRequest, _>(Api::namespaced(client.clone(), namespace), name, status).await
        }
    }
}

async fn apply<K, S>(api: Api<K>, name: &str, status: &S) -> Result<(), WriteError>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(failed("write the status of", format!("{} {name}", K::kind(&()))))?;
    Ok(())
}

/// Creates a ComputeJob; `false` when one of its name already exists (made in an earlier cycle).
pub async fn create_job(client: &Client, job: &ComputeJob) -> Result<bool, WriteError> {
    let api: Api<ComputeJob> = Api::namespaced(client.clone(), &job.namespace().unwrap_or_default());
    match api
        .create(&kube::api::PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }, job)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(failed("create", format!("ComputeJob {}", job.name_any()))(e)),
    }
}
