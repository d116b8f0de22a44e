//! What the capacity dashboard shows, built once per scheduling cycle: pools by kind and site with GPUs by model, a
//! GPU heat map per node (allocation, health, and utilisation from the agents), queues against their quota, pending
//! jobs with their reasons and estimated start, and quota requests. Served as JSON and as server-sent events.

use std::collections::BTreeMap;
use std::sync::Arc;

use haiyun_api::job::JobPhase;
use haiyun_api::{ComputePoolStatus, QueueStatus, QuotaRequestStatus};
use kube::ResourceExt;
use serde::Serialize;

use crate::fleet::FleetView;
use crate::index::{Objects, World};

/// One pool.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolView {
    /// Name.
    pub name: String,
    /// hpc, ai, general or edge.
    pub kind: String,
    /// Site.
    pub site: String,
    /// kubernetes, slurm or simulated.
    pub backend: String,
    /// Why it takes no work, when it does not.
    pub unavailable: Option<String>,
    /// Its status (nodes, GPUs by model, allocated).
    pub status: ComputePoolStatus,
}

/// One GPU in the heat map.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuCell {
    /// Index on the node.
    pub index: u32,
    /// Allocated share, 0–1.
    pub allocated: f64,
    /// healthy, unhealthy or unknown.
    pub health: String,
    /// Utilisation its agent last reported, percent.
    pub utilization: Option<u32>,
}

/// One node of the heat map.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// Its pool.
    pub pool: String,
    /// GPU model.
    pub model: String,
    /// Its GPUs.
    pub gpus: Vec<GpuCell>,
}

/// One job that waits.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingJob {
    /// `namespace/name`.
    pub job: String,
    /// Queue.
    pub queue: String,
    /// Phase.
    pub phase: String,
    /// Why it waits, phase by phase.
    pub reasons: Vec<haiyun_api::PendingReason>,
    /// What would let it start sooner.
    pub hints: Vec<String>,
    /// When it may start.
    pub estimated_start: Option<String>,
}

/// Everything the dashboard shows.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// When it was built (RFC 3339).
    pub at: String,
    /// Pools.
    pub pools: Vec<PoolView>,
    /// Nodes with GPUs.
    pub nodes: Vec<NodeView>,
    /// Queues by name.
    pub queues: BTreeMap<String, QueueStatus>,
    /// Jobs that wait.
    pub pending: Vec<PendingJob>,
    /// Quota requests by `namespace/name`, with their queue and state.
    pub requests: BTreeMap<String, (String, QuotaRequestStatus)>,
}

/// Builds the snapshot of a cycle.
pub fn snapshot(
    world: &World,
    objects: &Objects,
    pools: &BTreeMap<String, ComputePoolStatus>,
    queues: &BTreeMap<String, QueueStatus>,
    requests: &BTreeMap<String, QuotaRequestStatus>,
    fleet: &FleetView,
    at: String,
) -> Snapshot {
    let pool_views = objects
        .pools
        .iter()
        .map(|p| PoolView {
            name: p.name_any(),
            kind: crate::index::cluster::pool_kind(p.spec.kind).as_str().to_string(),
            site: p.spec.site.clone(),
            backend: p.spec.backend.name().into(),
            unavailable: world.federation.unavailable.get(&p.name_any()).cloned(),
            status: pools.get(&p.name_any()).cloned().unwrap_or_default(),
        })
        .collect();
    let snap = world.scheduler.snapshot();
    let cluster = snap.cluster();
    let nodes = cluster
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| !n.gpus.is_empty())
        .map(|(i, n)| {
            let alloc = snap.allocated(i as u32);
            let agent = fleet.get(&n.name);
            let gpus = n
                .gpus
                .iter()
                .enumerate()
                .map(|(j, g)| GpuCell {
                    index: j as u32,
                    allocated: f64::from(alloc.get(j).copied().unwrap_or(0)) / 1000.0,
                    health: format!("{:?}", g.health).to_lowercase(),
                    utilization: agent.and_then(|a| a.gpus.get(&(j as u32))).and_then(|g| g.utilization),
                })
                .collect();
            NodeView {
                name: n.name.clone(),
                pool: cluster.pools.get(n.pool as usize).map(|p| p.name.clone()).unwrap_or_default(),
                model: n.gpus.first().map(|g| cluster.models.name(g.model).to_string()).unwrap_or_default(),
                gpus,
            }
        })
        .collect();
    let pending = world
        .jobs
        .iter()
        .filter_map(|t| {
            let st = t.job.status.as_ref()?;
            matches!(st.phase, JobPhase::Queued | JobPhase::Pending | JobPhase::Preempted).then(|| {
                PendingJob {
                    job: crate::index::job::key(&t.job),
                    queue: t.job.spec.queue.clone(),
                    phase: format!("{:?}", st.phase),
                    reasons: st.pending_reasons.clone(),
                    hints: st.hints.clone(),
                    estimated_start: st.estimated_start.clone(),
                }
            })
        })
        .collect();
    let requests = objects
        .requests
        .iter()
        .map(|r| {
            let key = format!("{}/{}", r.namespace().unwrap_or_default(), r.name_any());
            let st = requests.get(&key).cloned().or_else(|| r.status.clone()).unwrap_or_default();
            (key, (r.spec.queue.clone(), st))
        })
        .collect();
    Snapshot { at, pools: pool_views, nodes, queues: queues.clone(), pending, requests }
}

/// The latest snapshot, for the HTTP endpoints; receivers wake on each new one.
pub type Board = tokio::sync::watch::Sender<Arc<Snapshot>>;
