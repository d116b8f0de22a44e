//! The remote Kubernetes backend: a pool that is (a node set of) another Kubernetes cluster, reached with a kubeconfig
//! from a Secret. Its Nodes join the federation as `<pool>/<node>`; a job placed there runs as pods the operator
//! creates and binds in that cluster, labelled with this operator's origin, the job's uid and its run (the epoch);
//! their phases and exit codes flow back like local pods'. A cluster that stops answering takes nothing new and
//! keeps what runs there (policy `hold`); after it answers again its pods are read afresh and the collector deletes
//! ours whose job is gone or whose run is old.

pub mod events;
pub mod fence;
pub mod grant;
pub mod kubeconfig;
pub mod link;
pub mod links;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use haiyun_api::{ComputeJob, ComputePool, JOB_UID_LABEL, RUN_LABEL};
use haiyun_scheduler::model::{PoolId, Time};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};

pub use kubeconfig::KubeconfigError;
pub use link::{Health, Seen, Timing};
pub use links::Remotes;

use super::kubernetes::nodes::Hold;
use super::kubernetes::pods::{self, PodError, Stamp};
use super::{BackendError, BackendKind, Inputs, Live, Orphan, PoolBackend, Refusal};
use crate::index::pod::holds_resources;
use crate::index::{Federation, Objects};

/// Label on everything the operator makes in a remote cluster: which federation (operator) made it.
pub const ORIGIN_LABEL: &str = "haiyun.io/origin";
/// Label the operator puts, in its own memory only, on a remote cluster's Nodes and pods: the pool they belong to.
pub const CLUSTER_LABEL: &str = "haiyun.io/remote-pool";

/// The federation's name of node `node` of the remote cluster of pool `pool`.
pub fn node_name(pool: &str, node: &str) -> String {
    format!("{pool}/{node}")
}

/// The remote cluster's own name of a federation node name.
pub fn remote_name(node: &str) -> &str {
    node.split_once('/').map_or(node, |(_, n)| n)
}

/// A remote pool as one cycle sees it.
#[derive(Clone)]
pub enum View {
    /// Its Secret or kubeconfig cannot be used, with why.
    Bad(String),
    /// Linked: what its link shows, and the client to apply decisions there.
    Linked(Box<Seen>, Client),
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            View::Bad(why) => f.debug_tuple("Bad").field(why).finish(),
            View::Linked(seen, _) => f.debug_tuple("Linked").field(&seen.health).finish(),
        }
    }
}

/// The remote pools for one cycle: their views (frozen) and this operator's origin.
#[derive(Debug, Clone, Default)]
pub struct RemoteBackend {
    views: Arc<BTreeMap<String, View>>,
    origin: String,
    /// Every remote cluster stopped answering at once: this operator is the one cut off.
    isolated: bool,
    /// The clock-skew margin of policy `fenced`.
    skew: std::time::Duration,
}

impl RemoteBackend {
    /// The backend over these views.
    pub fn new(views: BTreeMap<String, View>, origin: String, skew: std::time::Duration) -> Self {
        let linked: Vec<&Seen> = views
            .values()
            .filter_map(|v| if let View::Linked(s, _) = v { Some(s.as_ref()) } else { None })
            .collect();
        let isolated = linked.len() >= 2 && linked.iter().all(|s| matches!(s.health, Health::Down(_)));
        RemoteBackend { views: Arc::new(views), origin, isolated, skew }
    }

    /// Adds the remote clusters' pods (ours, as the federation names them) to the objects a cycle reads, so jobs
    /// placed there are tracked from their pods like local ones.
    pub fn merge(&self, objects: &mut Objects) {
        for v in self.views.values() {
            if let View::Linked(seen, _) = v {
                objects.pods.extend(seen.pods.iter().cloned());
            }
        }
    }

    /// With policy `fenced`, once a cut cluster's fence holder has surely deleted our pods there (the fence timeout,
    /// their termination grace and the skew margin since the last renewal, on this process's clock): why its jobs
    /// may run elsewhere. Never while this operator is the one cut off.
    fn fenced(&self, seen: &Seen) -> Option<String> {
        let (timeout, ago) = seen.fence?;
        if !matches!(seen.health, Health::Down(_)) || self.isolated {
            return None;
        }
        let grace = super::kubernetes::fence::longest_grace(seen.pods.iter().filter(|p| holds_resources(p)));
        let limit = timeout + std::time::Duration::from_secs(grace) + self.skew;
        (ago >= limit).then(|| {
            format!(
                "is in a cluster cut for {} s with policy fenced: its fence holder deleted our pods there after {} s \
                 without a renewal (their grace {grace} s, margin {} s)",
                ago.as_secs(),
                timeout.as_secs(),
                self.skew.as_secs()
            )
        })
    }

    fn linked(&self, pool: &str) -> Result<(&Seen, &Client), BackendError> {
        match self.views.get(pool) {
            Some(View::Linked(seen, client)) if seen.health == Health::Up => Ok((seen, client)),
            Some(View::Linked(..)) => Err(BackendError::Remote(RemoteError::Down(pool.into()))),
            Some(View::Bad(why)) => Err(BackendError::Remote(RemoteError::Bad(why.clone()))),
            None => Err(BackendError::Remote(RemoteError::Unknown(pool.into()))),
        }
    }
}

/// Why a step in a remote cluster failed; the next cycle tries again.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The cluster does not answer.
    #[error("the remote cluster of pool {0} does not answer; its jobs keep their place until it does")]
    Down(String),
    /// Its kubeconfig cannot be used.
    #[error("{0}")]
    Bad(String),
    /// No remote cluster is linked for the pool.
    #[error("pool {0} has no remote cluster linked (yet)")]
    Unknown(String),
    /// A job's status places it in no pool.
    #[error("job {0} has no placement")]
    Unplaced(String),
    /// A call there failed.
    #[error("failed to {action} in the remote cluster of pool {pool}: {source}")]
    Api {
        /// What was being done.
        action: &'static str,
        /// The pool.
        pool: String,
        /// The cause.
        source: kube::Error,
    },
}

/// The job as the remote cluster sees it: its placement on that cluster's own node names.
fn localised(job: &ComputeJob) -> ComputeJob {
    let mut j = job.clone();
    if let Some(p) = j.status.as_mut().and_then(|s| s.placement.as_mut()) {
        for t in &mut p.tasks {
            t.node = remote_name(&t.node).to_string();
        }
    }
    j
}

/// Creates the job's namespace in the remote cluster unless it exists.
async fn ensure_namespace(client: &Client, pool: &str, ns: &str, origin: &str) -> Result<(), RemoteError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let err = |action| move |source| RemoteError::Api { action, pool: pool.to_string(), source };
    if api.get_opt(ns).await.map_err(err("read the namespace"))?.is_some() {
        return Ok(());
    }
    let mut n = Namespace::default();
    n.metadata.name = Some(ns.into());
    n.metadata.labels = Some([(ORIGIN_LABEL.to_string(), origin.to_string())].into());
    match api.create(&PostParams::default(), &n).await {
        Ok(_) => Ok(()),
        Err(e) if pods::is_status(&e, 409) => Ok(()),
        Err(e) => Err(err("create the namespace")(e)),
    }
}

/// Deletes the job's pods there (of run `run`, or all) and, with all, its headless Service.
async fn delete_job(
    client: &Client,
    namespace: &str,
    uid: &str,
    run: Option<&str>,
) -> Result<usize, PodError> {
    let n = pods::delete_pods_of(client, namespace, uid, run).await?;
    if run.is_none() {
        let services: Api<Service> = Api::namespaced(client.clone(), namespace);
        let list = services
            .list(&ListParams::default().labels(&format!("{JOB_UID_LABEL}={uid}")))
            .await
            .map_err(pods::api_err("list Services of job", uid))?;
        for s in list.items {
            match services.delete(&s.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if pods::is_status(&e, 404) => {}
                Err(e) => return Err(pods::api_err("delete Service", s.name_any())(e)),
            }
        }
    }
    Ok(n)
}

impl PoolBackend for RemoteBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::RemoteKubernetes
    }

    /// A cluster that does not answer (or whose kubeconfig is bad) takes nothing new; its running jobs keep their
    /// place (policy `hold`).
    fn reachable(&self, pool: &ComputePool) -> Result<(), Refusal> {
        let name = pool.name_any();
        let seen = match self.views.get(&name) {
            None => return Err(Refusal::new("Connecting", "its remote cluster has not been linked yet")),
            Some(View::Bad(why)) => return Err(Refusal::new("BadKubeConfig", why.clone())),
            Some(View::Linked(seen, _)) => seen,
        };
        match &seen.health {
            Health::Up if seen.listed => Ok(()),
            Health::Up | Health::Connecting => {
                Err(Refusal::new("Connecting", "its remote cluster has not been listed yet"))
            }
            Health::Down(why) if self.isolated => Err(Refusal::new(
                "OperatorCutOff",
                format!(
                    "no remote cluster answers: this operator is the one cut off, so nothing there counts as lost; \
                     its jobs keep their place ({why})"
                ),
            )),
            Health::Down(why) => {
                let since = seen.since.map(crate::time::rfc3339).unwrap_or_default();
                Err(Refusal::new(
                    "Unreachable",
                    format!(
                        "its remote cluster does not answer since {since} ({why}); it takes nothing new and its \
                         running jobs keep their place (policy hold)"
                    ),
                ))
            }
        }
    }

    /// The Nodes of each listed cluster; those of a cluster that does not answer stay (so its jobs keep their
    /// place) but take nothing new.
    fn contribute(&self, pools: &[(PoolId, &ComputePool)], inputs: &Inputs<'_>, fed: &mut Federation) {
        for (id, p) in pools {
            let name = p.name_any();
            let Some(View::Linked(seen, _)) = self.views.get(&name) else { continue };
            if let (Some(since), false) = (seen.since, self.isolated) {
                fed.unreachable_since.insert(name.clone(), since);
            }
            if !seen.listed {
                continue;
            }
            if let Some(why) = self.fenced(seen) {
                for n in &seen.nodes {
                    fed.fenced.insert(n.name_any(), why.clone());
                }
            }
            let pods = seen.pods.iter().chain(&seen.foreign).cloned().collect();
            let objects = Objects { nodes: seen.nodes.clone(), pods, ..Objects::default() };
            let own = Inputs { objects: &objects, fleet: inputs.fleet, claims: inputs.claims };
            let open = seen.health == Health::Up;
            let lent = lend(&name, seen, fed);
            let hold = Hold::Lent(&lent);
            let fences = &seen.fences;
            super::kubernetes::nodes::add(
                &[(*id, &BTreeMap::new())],
                &[(*id, *p)],
                &own,
                (open, hold, fences),
                fed,
            );
        }
    }

    /// Our pods in clusters that answer: all of a job that is gone, and the running ones of a job without a
    /// placement or of an old run.
    /// And our pods being deleted on a node there that its fence holder fenced.
    fn orphans(&self, objects: &Objects, live: &Live) -> Vec<Orphan> {
        let mut out = Vec::new();
        for (pool, v) in self.views.iter() {
            if let View::Linked(seen, _) = v
                && seen.health == Health::Up
            {
                out.extend(super::kubernetes::fence::stranded(
                    &seen.nodes,
                    &seen.pods,
                    &seen.fences,
                    Some(pool),
                ));
            }
        }
        let mut found: BTreeSet<(String, String, String, Option<String>)> = BTreeSet::new();
        for p in &objects.pods {
            let (Some(pool), Some(uid)) = (p.labels().get(CLUSTER_LABEL), p.labels().get(JOB_UID_LABEL))
            else {
                continue;
            };
            if !matches!(self.views.get(pool), Some(View::Linked(s, _)) if s.health == Health::Up) {
                continue;
            }
            let ns = p.namespace().unwrap_or_default();
            let run = p.labels().get(RUN_LABEL).cloned().unwrap_or_default();
            let Some(current) = live.runs.get(uid) else {
                found.insert((pool.clone(), ns, uid.clone(), None));
                continue;
            };
            // Only an earlier run is old: the local store may not show yet the run whose pods were just made.
            let old = run.parse::<u32>().is_ok_and(|r| r < *current);
            if holds_resources(p)
                && p.metadata.deletion_timestamp.is_none()
                && (old || !live.placed.contains(uid))
            {
                found.insert((pool.clone(), ns, uid.clone(), Some(run)));
            }
        }
        out.extend(found.into_iter().map(|(pool, namespace, uid, run)| Orphan::Remote {
            pool,
            namespace,
            uid,
            run,
        }));
        out
    }

    fn dispatch<'a>(
        &'a self,
        job: &'a ComputeJob,
        _fresh: bool,
    ) -> BoxFuture<'a, Result<usize, BackendError>> {
        async move {
            let placement = job.status.as_ref().and_then(|s| s.placement.as_ref());
            let pool =
                placement.map(|p| p.pool.clone()).ok_or_else(|| RemoteError::Unplaced(job.name_any()))?;
            let (seen, client) = self.linked(&pool)?;
            let ns = job.namespace().unwrap_or_default();
            let known = |s: &Seen| s.namespaces.lock().unwrap_or_else(|p| p.into_inner()).contains(&ns);
            if !known(seen) {
                ensure_namespace(client, &pool, &ns, &self.origin).await?;
                seen.namespaces.lock().unwrap_or_else(|p| p.into_inner()).insert(ns.clone());
            }
            let stamp = Stamp::Remote { origin: self.origin.clone() };
            let made = pods::ensure_pods(client, &localised(job), &stamp, None).await;
            if made.is_err() {
                // Someone may have deleted the namespace there: look again next time.
                seen.namespaces.lock().unwrap_or_else(|p| p.into_inner()).remove(&ns);
            }
            Ok(made?)
        }
        .boxed()
    }

    fn evict<'a>(&'a self, job: &'a ComputeJob) -> BoxFuture<'a, Result<String, BackendError>> {
        async move {
            let placement = job.status.as_ref().and_then(|s| s.placement.as_ref());
            let pool =
                placement.map(|p| p.pool.clone()).ok_or_else(|| RemoteError::Unplaced(job.name_any()))?;
            // A fenced cluster that does not answer: its fence holder has deleted the pods already.
            if let Some(View::Linked(seen, _)) = self.views.get(&pool) {
                if self.fenced(seen).is_some() {
                    return Ok(format!(
                        "its fence holder deleted its pods in the cut cluster of pool {pool}"
                    ));
                }
            }
            let (_, client) = self.linked(&pool)?;
            let ns = job.namespace().unwrap_or_default();
            let n = delete_job(client, &ns, &job.uid().unwrap_or_default(), None).await?;
            Ok(format!("{n} pods deleted in the remote cluster of pool {pool}"))
        }
        .boxed()
    }

    fn collect<'a>(&'a self, orphan: &'a Orphan) -> BoxFuture<'a, Result<usize, BackendError>> {
        async move {
            if let Orphan::Stranded { cluster: Some(pool), namespace, pod, pod_uid, uid } = orphan {
                let (_, client) = self.linked(pool)?;
                crate::backend::kubernetes::pods::force_delete(client, namespace, pod, pod_uid).await?;
                tracing::info!(%pool, job_uid = %uid, %pod, "removed a remote pod its node's fence holder stopped (node fenced)");
                return Ok(1);
            }
            let Orphan::Remote { pool, namespace, uid, run } = orphan else { return Ok(0) };
            let (_, client) = self.linked(pool)?;
            let n = delete_job(client, namespace, uid, run.as_deref()).await?;
            if n > 0 {
                tracing::info!(%pool, job_uid = %uid, ?run, pods = n, "deleted remote pods no placement covers");
            }
            Ok(n)
        }
        .boxed()
    }

    /// Nothing to wait for: the collector deletes what a deleted job left in a remote cluster once it answers.
    fn release<'a>(&'a self, _job: &'a ComputeJob) -> BoxFuture<'a, Result<(), BackendError>> {
        async { Ok(()) }.boxed()
    }
}

/// With autonomy: the GPUs granted to the site, by federation node name, and (in `fed`) the grant as the pool's status
/// shows it and the GPU-hours of the site's finished jobs charged to the slice's queue.
fn lend(pool: &str, seen: &Seen, fed: &mut Federation) -> BTreeMap<String, u32> {
    let Some((autonomy, grant)) = &seen.autonomy else { return BTreeMap::new() };
    let hours: f64 = seen
        .site_jobs
        .iter()
        .filter_map(|j| j.status.as_ref())
        .filter(|s| s.completion_time.is_some())
        .map(|s| s.gpu_hours)
        .sum();
    *fed.site_gpu_hours.entry(autonomy.queue.clone()).or_insert(0.0) += hours;
    let Some(g) = grant else { return BTreeMap::new() };
    fed.capacity_leases.insert(
        pool.to_string(),
        haiyun_api::pool::CapacityLease {
            queue: g.queue.clone(),
            gpus: g.gpus(),
            epoch: g.epoch,
            nodes: g.nodes.clone(),
        },
    );
    g.nodes.iter().map(|(n, gpus)| (node_name(pool, n), *gpus)).collect()
}

/// When a remote pool's cut began, as its status recorded it (carried across operator restarts).
pub fn recorded_since(pool: &ComputePool) -> Option<Time> {
    pool.status.as_ref()?.unreachable_since.as_deref().and_then(crate::time::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_carry_their_pool_and_come_back_unchanged() {
        let n = node_name("edge-a", "node-0");
        assert_eq!(n, "edge-a/node-0");
        assert_eq!(remote_name(&n), "node-0");
    }
}
