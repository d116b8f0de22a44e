//! The Kubernetes backend: pools of this cluster's Nodes (a nodeSelector each). A job runs as pods that Haiyun
//! creates and binds; evicting or collecting a job deletes its pods.

pub mod batch;
pub mod claims;
pub mod contract;
pub mod devices;
pub mod nodes;
pub mod pods;

use std::collections::BTreeSet;

use futures::FutureExt;
use futures::future::BoxFuture;
use haiyun_api::{ComputeJob, ComputePool, JOB_UID_LABEL};
use haiyun_scheduler::model::PoolId;
use kube::{Client, ResourceExt};

pub use pods::{DEFAULT_IMAGE, PodError, pod_for};

use super::{BackendError, BackendKind, Inputs, Live, Orphan, PoolBackend, Refusal};
use crate::index::pod::holds_resources;
use crate::index::{Federation, Objects};

/// Pools of this cluster's nodes. Without a client (`offline`) it contributes nodes but applies nothing.
#[derive(Clone)]
pub struct KubernetesBackend {
    client: Option<Client>,
}

impl std::fmt::Debug for KubernetesBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesBackend").field("online", &self.client.is_some()).finish()
    }
}

impl KubernetesBackend {
    /// A backend applying decisions through `client`.
    pub fn new(client: Client) -> Self {
        KubernetesBackend { client: Some(client) }
    }

    /// A backend that only reads (a cycle computed without a cluster to apply it to).
    pub fn offline() -> Self {
        KubernetesBackend { client: None }
    }

    fn client(&self) -> Result<&Client, BackendError> {
        self.client.as_ref().ok_or(BackendError::NotServed(BackendKind::Kubernetes))
    }
}

impl PoolBackend for KubernetesBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Kubernetes
    }

    fn reachable(&self, _pool: &ComputePool) -> Result<(), Refusal> {
        Ok(())
    }

    /// Its nodes, and the runs of mirrored batch/v1 Jobs that have ended (the Job's conditions say how).
    fn contribute(&self, pools: &[(PoolId, &ComputePool)], inputs: &Inputs<'_>, fed: &mut Federation) {
        nodes::contribute(pools, inputs, fed);
        let ended: std::collections::HashMap<(Option<String>, String), _> = inputs
            .objects
            .batch_jobs
            .iter()
            .filter_map(|j| Some(((j.namespace(), j.name_any()), batch::ended_run(j)?)))
            .collect();
        if ended.is_empty() {
            return;
        }
        for cj in &inputs.objects.jobs {
            let Some(name) = cj.spec.batch_job.clone() else { continue };
            if let Some(record) = ended.get(&(cj.namespace(), name)) {
                fed.runs.insert((cj.uid().unwrap_or_default(), cj.run()), *record);
            }
        }
    }

    /// Running pods of jobs that hold no placement (gone, ended, or evicted); ended pods stay for their logs.
    fn orphans(&self, objects: &Objects, live: &Live) -> Vec<Orphan> {
        let mut found: BTreeSet<(String, String)> = BTreeSet::new();
        for p in &objects.pods {
            let Some(uid) = p.labels().get(JOB_UID_LABEL) else { continue };
            // A remote cluster's pod: its own backend collects it.
            if p.labels().contains_key(super::remote::CLUSTER_LABEL) {
                continue;
            }
            if live.placed.contains(uid) || !holds_resources(p) || p.metadata.deletion_timestamp.is_some() {
                continue;
            }
            found.insert((p.namespace().unwrap_or_default(), uid.clone()));
        }
        found.into_iter().map(|(namespace, uid)| Orphan::Pods { namespace, uid }).collect()
    }

    fn dispatch<'a>(
        &'a self,
        job: &'a ComputeJob,
        _fresh: bool,
    ) -> BoxFuture<'a, Result<usize, BackendError>> {
        async move {
            let client = self.client()?;
            match job.spec.batch_job.as_deref() {
                Some(name) => Ok(batch::ensure(client, job, name).await?),
                None => Ok(pods::ensure_pods(client, job, &pods::Stamp::Local).await?),
            }
        }
        .boxed()
    }

    fn evict<'a>(&'a self, job: &'a ComputeJob) -> BoxFuture<'a, Result<String, BackendError>> {
        async move {
            let ns = job.namespace().unwrap_or_default();
            if let Some(name) = job.spec.batch_job.as_deref() {
                batch::suspend(self.client()?, job, name).await?;
            }
            let n = pods::delete_pods(self.client()?, &ns, &job.uid().unwrap_or_default()).await?;
            Ok(format!("{n} pods deleted"))
        }
        .boxed()
    }

    fn collect<'a>(&'a self, orphan: &'a Orphan) -> BoxFuture<'a, Result<usize, BackendError>> {
        async move {
            match orphan {
                Orphan::Pods { namespace, uid } => {
                    let n = pods::delete_pods(self.client()?, namespace, uid).await?;
                    if n > 0 {
                        tracing::info!(job_uid = %uid, pods = n, "deleted pods of a job without a placement");
                    }
                    Ok(n)
                }
                Orphan::Batch { .. } | Orphan::Remote { .. } => Ok(0),
            }
        }
        .boxed()
    }

    /// Its pods belong to the job (owner references): Kubernetes deletes them with it.
    fn release<'a>(&'a self, _job: &'a ComputeJob) -> BoxFuture<'a, Result<(), BackendError>> {
        async { Ok(()) }.boxed()
    }
}
