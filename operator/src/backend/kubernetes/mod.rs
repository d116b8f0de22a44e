//! The Kubernetes backend: pools of this cluster's Nodes (a nodeSelector each). A job runs as pods that Haiyun
//! creates and binds; evicting or collecting a job deletes its pods.

pub mod batch;
pub mod claims;
pub mod contract;
pub mod cri;
pub mod devices;
pub mod fence;
pub mod guard;
pub mod nodes;
pub mod pods;

use std::collections::BTreeSet;

use futures::FutureExt;
use futures::future::BoxFuture;
use haiyun_api::{ComputeJob, ComputePool, JOB_UID_LABEL};
use haiyun_scheduler::model::PoolId;
use kube::{Client, ResourceExt};

pub use pods::{DEFAULT_IMAGE, PodError, pod_for};

use super::remote::grant::Grants;
use super::{BackendError, BackendKind, Inputs, Live, Orphan, PoolBackend, Refusal};
use crate::index::pod::holds_resources;
use crate::index::{Federation, Objects};

/// Pools of this cluster's nodes. Without a client (`offline`) it contributes nodes but applies nothing.
#[derive(Clone)]
pub struct KubernetesBackend {
    client: Option<Client>,
    /// The capacity leases federations grant this cluster (for its `granted` pools, an edge site's own).
    grants: std::sync::Arc<Grants>,
    /// The node fences their holders keep, as last seen.
    fences: std::sync::Arc<fence::NodeFences>,
    /// What the watch caches held when the cycle ran (which nodes have the DRA driver, which jobs have pods).
    seen: std::sync::Arc<pods::Seen>,
}

impl std::fmt::Debug for KubernetesBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesBackend").field("online", &self.client.is_some()).finish()
    }
}

impl KubernetesBackend {
    /// A backend applying decisions through `client`.
    pub fn new(client: Client) -> Self {
        KubernetesBackend {
            client: Some(client),
            grants: Default::default(),
            fences: Default::default(),
            seen: Default::default(),
        }
    }

    /// The same backend with the capacity leases live now and the node fences as last seen.
    pub fn with_leases(&self, grants: Grants, fences: fence::NodeFences) -> Self {
        KubernetesBackend {
            client: self.client.clone(),
            grants: std::sync::Arc::new(grants),
            fences: std::sync::Arc::new(fences),
            seen: self.seen.clone(),
        }
    }

    /// The same backend, knowing what the watch caches held when the cycle ran.
    pub fn with_seen(mut self, seen: pods::Seen) -> Self {
        self.seen = std::sync::Arc::new(seen);
        self
    }

    /// A backend that only reads (a cycle computed without a cluster to apply it to).
    pub fn offline() -> Self {
        KubernetesBackend {
            client: None,
            grants: Default::default(),
            fences: Default::default(),
            seen: Default::default(),
        }
    }

    fn client(&self) -> Result<&Client, BackendError> {
        self.client.as_ref().ok_or(BackendError::NotServed(BackendKind::Kubernetes))
    }
}

impl PoolBackend for KubernetesBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Kubernetes
    }

    /// A `granted` pool (an edge site's own) takes work only while a federation's capacity lease is live.
    fn reachable(&self, pool: &ComputePool) -> Result<(), Refusal> {
        if !pool.spec.backend.kubernetes.as_ref().is_some_and(|k| k.granted) || !self.grants.live.is_empty() {
            return Ok(());
        }
        let lapsed: Vec<&str> = self.grants.lapsed.values().map(String::as_str).collect();
        let why = if lapsed.is_empty() {
            "no federation has granted this cluster a capacity lease yet".to_string()
        } else {
            lapsed.join("; ")
        };
        Err(Refusal::new(
            "NoCapacityLease",
            format!(
                "{why}: the pool is granted, so it starts nothing new until a grant is live (its jobs keep running)"
            ),
        ))
    }

    /// Its nodes, and the runs of mirrored batch/v1 Jobs that have ended (the Job's conditions say how).
    fn contribute(&self, pools: &[(PoolId, &ComputePool)], inputs: &Inputs<'_>, fed: &mut Federation) {
        nodes::contribute(pools, inputs, (nodes::Hold::Granted(&self.grants.nodes), &self.fences), fed);
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

    /// Running pods of jobs that hold no placement (gone, ended, or evicted); ended pods stay for their logs. And our
    /// pods being deleted on a node its fence holder fenced.
    fn orphans(&self, objects: &Objects, live: &Live) -> Vec<Orphan> {
        let mut out = fence::stranded(&objects.nodes, &objects.pods, &self.fences, None);
        let mut found: BTreeSet<(String, String)> = BTreeSet::new();
        for p in &objects.pods {
            let Some(uid) = p.labels().get(JOB_UID_LABEL) else { continue };
            // A remote cluster's pod: its own backend collects it. A federation's pod in this cluster (an edge site
            // running its own Haiyun): that federation's collector does.
            if p.labels().contains_key(super::remote::CLUSTER_LABEL)
                || p.labels().contains_key(super::remote::ORIGIN_LABEL)
            {
                continue;
            }
            if live.placed.contains(uid) || !holds_resources(p) || p.metadata.deletion_timestamp.is_some() {
                continue;
            }
            found.insert((p.namespace().unwrap_or_default(), uid.clone()));
        }
        out.extend(found.into_iter().map(|(namespace, uid)| Orphan::Pods { namespace, uid }));
        out
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
                None => Ok(pods::ensure_pods(client, job, &pods::Stamp::Local, Some(&self.seen)).await?),
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
                Orphan::Stranded { cluster: None, namespace, pod, pod_uid, uid } => {
                    pods::force_delete(self.client()?, namespace, pod, pod_uid).await?;
                    tracing::info!(job_uid = %uid, pod = %pod, "removed a pod its node's fence holder stopped (node fenced)");
                    Ok(1)
                }
                Orphan::Stranded { cluster: Some(_), .. } | Orphan::Batch { .. } | Orphan::Remote { .. } => Ok(0),
            }
        }
        .boxed()
    }

    /// Its pods belong to the job (owner references): Kubernetes deletes them with it.
    fn release<'a>(&'a self, _job: &'a ComputeJob) -> BoxFuture<'a, Result<(), BackendError>> {
        async { Ok(()) }.boxed()
    }
}
