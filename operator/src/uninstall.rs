//! What `helm uninstall` runs first (`haiyun-operator uninstall`): stop the operator, then take Haiyun's finalizers
//! off every ComputeJob, so that deleting a job (or the CRDs) never waits for an operator that is gone.

use std::time::Duration;

use haiyun_api::ComputeJob;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

/// Haiyun's finalizers: a job's work in a backend that must be released before the job goes.
const FINALIZER_PREFIX: &str = "haiyun.io/";

/// Why the uninstall step failed (helm then stops and says so; rerunning `helm uninstall` retries it).
#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    /// An API call failed.
    #[error("failed to {action}: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The cause.
        source: kube::Error,
    },
    /// The operator's pods did not stop in time.
    #[error(
        "the operator's pods ({pods}) still run after {secs} s: stop them (kubectl -n {namespace} scale deployment \
         {deployment} --replicas=0) and run helm uninstall again"
    )]
    StillRunning {
        /// Their names.
        pods: String,
        /// The wait.
        secs: u64,
        /// The namespace.
        namespace: String,
        /// The Deployment.
        deployment: String,
    },
    /// The node fence holders' pods did not stop in time.
    #[error(
        "the node fence holders' pods ({pods}) still run after {secs} s: delete DaemonSet {namespace}/{daemonset} \
         and run helm uninstall again"
    )]
    FenceStillRunning {
        /// Their names.
        pods: String,
        /// The wait.
        secs: u64,
        /// The namespace.
        namespace: String,
        /// The DaemonSet.
        daemonset: String,
    },
    /// The job kept changing while its finalizers were being removed.
    #[error("ComputeJob {0} kept changing while its finalizers were removed: run helm uninstall again")]
    Busy(String),
}

/// What was done.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// The jobs whose finalizers were removed (`namespace/name`).
    pub jobs: Vec<String>,
}

/// Scales `deployment` in `namespace` to zero and waits (at most `wait`) for its pods to end, then removes Haiyun's
/// finalizers from every ComputeJob, with an event on each saying what keeps running, and deletes what the operator
/// made in its namespace: its Lease `lease` and the dashboard's history (ConfigMap `<lease>-history`). With
/// `node_fence`, its DaemonSet goes first: each holder gives up its node's fence Lease as it stops (one that could not
/// has stopped its node's Haiyun pods), and any Lease left is deleted, so no node counts as fenced by a holder gone.
pub async fn run(
    client: &Client,
    namespace: &str,
    (deployment, node_fence): (&str, Option<&str>),
    lease: &str,
    wait: Duration,
) -> Result<Released, UninstallError> {
    stop(client, namespace, deployment, wait).await?;
    if let Some(daemonset) = node_fence {
        unfence(client, namespace, daemonset, wait).await?;
    }
    let released = release(client).await?;
    let failed = |action: String| move |source| UninstallError::Api { action, source };
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    gone(leases.delete(lease, &DeleteParams::default()).await)
        .map_err(failed(format!("delete Lease {lease}")))?;
    let history = format!("{lease}-history");
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    gone(maps.delete(&history, &DeleteParams::default()).await)
        .map_err(failed(format!("delete ConfigMap {history}")))?;
    Ok(released)
}

/// A deletion's result, where "not found" is done too.
fn gone<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn stop(
    client: &Client,
    namespace: &str,
    deployment: &str,
    wait: Duration,
) -> Result<(), UninstallError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let failed = |action: String| move |source| UninstallError::Api { action, source };
    let Some(d) = api.get_opt(deployment).await.map_err(failed(format!("read deployment {deployment}")))?
    else {
        return Ok(()); // already gone
    };
    let selector = selector_of(d.spec.as_ref().map(|s| &s.selector));
    let patch = json!({"spec": {"replicas": 0}});
    api.patch_scale(deployment, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(failed(format!("scale deployment {deployment} to 0")))?;
    match left_after(client, namespace, &selector, wait).await? {
        None => Ok(()),
        Some(pods) => Err(UninstallError::StillRunning {
            pods,
            secs: wait.as_secs(),
            namespace: namespace.into(),
            deployment: deployment.into(),
        }),
    }
}

/// A workload's pod selector as a label selector (`a=b,c=d`; empty when it has none).
fn selector_of(selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>) -> String {
    selector
        .and_then(|s| s.match_labels.as_ref())
        .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

/// Waits (at most `wait`) for the pods of `selector` to end; `Some(their names)` when some are still there.
async fn left_after(
    client: &Client,
    namespace: &str,
    selector: &str,
    wait: Duration,
) -> Result<Option<String>, UninstallError> {
    if selector.is_empty() {
        return Ok(None);
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = pods.list(&ListParams::default().labels(selector)).await.map_err(|source| {
            UninstallError::Api { action: format!("list the pods of {selector}"), source }
        })?;
        if left.items.is_empty() {
            return Ok(None);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Some(left.items.iter().map(|p| p.name_any()).collect::<Vec<_>>().join(", ")));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Deletes the node fence holders' DaemonSet, waits (at most `wait`) for their pods to end, then deletes the fence
/// Leases left in `namespace`.
async fn unfence(
    client: &Client,
    namespace: &str,
    daemonset: &str,
    wait: Duration,
) -> Result<(), UninstallError> {
    let failed = |action: String| move |source| UninstallError::Api { action, source };
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
    let found = api.get_opt(daemonset).await.map_err(failed(format!("read DaemonSet {daemonset}")))?;
    if let Some(ds) = found {
        let selector = selector_of(ds.spec.as_ref().map(|s| &s.selector));
        gone(api.delete(daemonset, &DeleteParams::default()).await)
            .map_err(failed(format!("delete DaemonSet {daemonset}")))?;
        if let Some(pods) = left_after(client, namespace, &selector, wait).await? {
            return Err(UninstallError::FenceStillRunning {
                pods,
                secs: wait.as_secs(),
                namespace: namespace.into(),
                daemonset: daemonset.into(),
            });
        }
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let left = leases
        .list(&ListParams::default().labels(crate::backend::kubernetes::fence::LABEL))
        .await
        .map_err(failed("list node fence Leases".into()))?;
    for l in left.items {
        let name = l.name_any();
        gone(leases.delete(&name, &DeleteParams::default()).await)
            .map_err(failed(format!("delete node fence Lease {name}")))?;
    }
    Ok(())
}

async fn release(client: &Client) -> Result<Released, UninstallError> {
    let api: Api<ComputeJob> = Api::all(client.clone());
    let jobs = api
        .list(&ListParams::default())
        .await
        .map_err(|source| UninstallError::Api { action: "list ComputeJobs".into(), source })?;
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: "haiyun-operator".into(), instance: Some("uninstall".into()) },
    );
    let mut out = Released::default();
    for job in jobs.items {
        let ours: Vec<String> =
            job.finalizers().iter().filter(|f| f.starts_with(FINALIZER_PREFIX)).cloned().collect();
        if ours.is_empty() {
            continue;
        }
        drop_finalizers(client, &job).await?;
        let pool = job.status.as_ref().and_then(|s| s.placement.as_ref()).map(|p| p.pool.clone());
        let note = format!(
            "Haiyun was uninstalled: removed its finalizer {}. Work it started{} keeps running until it ends; \
             reinstalling Haiyun cancels it if this job is gone by then.",
            ours.join(", "),
            pool.map(|p| format!(" in pool {p}")).unwrap_or_default()
        );
        let ev = Event {
            type_: EventType::Warning,
            reason: "HaiyunUninstalled".into(),
            note: Some(note),
            action: "Uninstall".into(),
            secondary: None,
        };
        let reference: ObjectReference = job.object_ref(&());
        if let Err(e) = recorder.publish(&ev, &reference).await {
            tracing::warn!(error = %e, "failed to record an event");
        }
        out.jobs.push(crate::index::job::key(&job));
    }
    Ok(out)
}

/// Removes Haiyun's entries from the job's finalizers, whoever wrote them, leaving the others; retried when the job
/// changed in between.
async fn drop_finalizers(client: &Client, job: &ComputeJob) -> Result<(), UninstallError> {
    let key = crate::index::job::key(job);
    let api: Api<ComputeJob> = Api::namespaced(client.clone(), &job.namespace().unwrap_or_default());
    let mut current = job.clone();
    for _ in 0..5 {
        let rest: Vec<&String> =
            current.finalizers().iter().filter(|f| !f.starts_with(FINALIZER_PREFIX)).collect();
        if rest.len() == current.finalizers().len() {
            return Ok(());
        }
        // A resourceVersion in a merge patch is a precondition: the API server refuses it (409) if the job changed.
        let patch = json!({"metadata": {"resourceVersion": current.resource_version(), "finalizers": rest}});
        match api.patch(&current.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(source) => {
                return Err(UninstallError::Api { action: format!("patch the finalizers of {key}"), source });
            }
        }
        match api.get_opt(&current.name_any()).await {
            Ok(Some(j)) => current = j,
            Ok(None) => return Ok(()),
            Err(source) => return Err(UninstallError::Api { action: format!("read {key}"), source }),
        }
    }
    Err(UninstallError::Busy(key))
}
