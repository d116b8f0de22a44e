//! The federation as the core sees it: pools, the nodes their backends contribute, the runs those backends record,
//! and the names behind the core's ids. Backends fill it; the index reads it and never names a backend.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use haiyun_api::ComputePool;
use haiyun_scheduler::model::{
    Classification, Cluster, GpuModels, Health, Node as CoreNode, Pool, PoolId, PoolKind, Time,
};
use kube::ResourceExt;

use crate::fleet::{GpuState, NodeView};

/// The federation as the core sees it, and the names behind its ids.
#[derive(Debug, Clone, Default)]
pub struct Federation {
    /// The core's model.
    pub cluster: Cluster,
    /// ComputePool names by pool id.
    pub pool_names: Vec<String>,
    /// Pools that exist but cannot take work here, with the reason.
    pub unavailable: BTreeMap<String, String>,
    /// The condition reason of each unavailable pool whose backend gave one.
    pub reasons: BTreeMap<String, &'static str>,
    /// When each pool whose backend stopped answering first stopped (unix seconds).
    pub unreachable_since: BTreeMap<String, Time>,
    /// The capacity lease granted to each remote pool's site, by pool name.
    pub capacity_leases: BTreeMap<String, haiyun_api::pool::CapacityLease>,
    /// GPU-hours of edge sites' own finished jobs, by the federation queue their capacity lease charges.
    pub site_gpu_hours: BTreeMap<String, f64>,
    /// Node id by name.
    pub node_ids: HashMap<String, u32>,
    /// Pools that run batch scripts (their jobs need a script and one task group).
    pub scripts: BTreeSet<PoolId>,
    /// The longest time limit a pool allows, minutes (where its backend sets one).
    pub time_limits: BTreeMap<PoolId, u32>,
    /// Pools whose backend records each run itself (by name), and whether that backend answers now.
    pub run_keepers: BTreeMap<String, bool>,
    /// The runs those backends record, by job uid and run.
    pub runs: HashMap<(String, u32), RunRecord>,
    /// Nodes known to be gone for good (deleted, or fenced by an administrator), with why: what ran there is lost and
    /// may run elsewhere without running twice.
    pub fenced: BTreeMap<String, String>,
    /// GPUs under our placements that their node's agent reports failed (fatal XID, double-bit ECC, off the bus),
    /// by node and index, with why: the job on one runs again elsewhere.
    pub failed_gpus: BTreeMap<(String, u32), String>,
    /// Nodes whose GPUs our placements hold while pods no placement covers still hold them too (a preempted job's
    /// pods terminating), by name: our pods are not bound there before those leave, or the kubelet refuses them.
    pub draining: HashMap<String, Drain>,
}

/// A node where pods no placement of ours covers still hold GPUs our placements there hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Drain {
    /// The node's GPUs.
    pub count: u32,
    /// The GPUs our placements hold there.
    pub ours: u32,
    /// The pods that hold GPUs there and no placement covers.
    pub holders: Vec<Holder>,
}

/// A pod holding GPUs that no placement of ours covers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Holder {
    /// `namespace/name`.
    pub pod: String,
    /// The uid of the Haiyun job whose pod it is (an earlier run of that job), if it is one.
    pub job: Option<String>,
    /// GPUs held at known indices.
    pub mask: u32,
    /// GPUs held at unknown indices.
    pub gpus: u32,
}

impl Drain {
    /// Whether `holders`, beside the GPUs `ours` of ours, take a GPU we hold or more than the node's `count`.
    pub fn clashes<'a>(count: u32, ours: u32, holders: impl IntoIterator<Item = &'a Holder>) -> bool {
        let (mask, unknown) = holders.into_iter().fold((0, 0), |(m, u), h| (m | h.mask, u + h.gpus));
        mask & ours != 0 || (ours | mask).count_ones() + unknown > count
    }

    /// The first pod that keeps job `uid` from being bound here, if any. The pods of its own earlier run do not
    /// count: binding the job deletes them first.
    pub fn blocker(&self, uid: &str) -> Option<&str> {
        let others: Vec<&Holder> = self.holders.iter().filter(|h| h.job.as_deref() != Some(uid)).collect();
        let clash = Drain::clashes(self.count, self.ours, others.iter().copied());
        others.first().filter(|_| clash).map(|h| h.pod.as_str())
    }
}

/// A run as the backend that keeps it records it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunRecord {
    /// Where it stands.
    pub phase: RunPhase,
    /// When it really started and ended (unix seconds), once it started.
    pub times: Option<(Time, Time)>,
}

/// Where a recorded run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunPhase {
    /// Queued in the backend (it may still start).
    Waiting,
    /// Holding its nodes.
    Holding,
    /// Done, successfully.
    Succeeded,
    /// Done, unsuccessfully (failed, cancelled, timed out, lost with its node…).
    Failed,
}

impl Federation {
    /// Adds a pool, named and typed as its spec says; returns its id. Its backend adds its nodes.
    pub fn add_pool(&mut self, p: &ComputePool) -> PoolId {
        self.cluster.pools.push(Pool {
            name: p.name_any(),
            kind: pool_kind(p.spec.kind),
            site: p.spec.site.clone(),
            clearance: classification(p.spec.clearance),
        });
        self.pool_names.push(p.name_any());
        (self.cluster.pools.len() - 1) as PoolId
    }

    /// The id the next node added gets.
    pub fn next_node(&self) -> u32 {
        self.cluster.nodes.len() as u32
    }

    /// Adds a node; returns its id.
    pub fn add_node(&mut self, node: CoreNode) -> u32 {
        let id = self.next_node();
        self.node_ids.insert(node.name.clone(), id);
        self.cluster.nodes.push(node);
        id
    }

    /// Marks a pool unable to take work now, with why.
    pub fn refuse(&mut self, pool: &str, why: impl Into<String>) {
        self.unavailable.insert(pool.to_string(), why.into());
    }

    /// Marks a pool unavailable, with its condition's reason.
    pub fn refuse_because(&mut self, pool: &str, reason: &'static str, why: impl Into<String>) {
        self.reasons.insert(pool.to_string(), reason);
        self.refuse(pool, why);
    }
}

/// GPUs held by others: the known ones (`known`), then as many unknown ones as they hold (`unknown`), from the top,
/// never ones our placements hold (`ours`).
pub fn taken(count: u32, ours: u32, known: u32, mut unknown: u32) -> u32 {
    let mut taken = known;
    for j in (0..count).rev() {
        if unknown == 0 {
            break;
        }
        if (ours | taken) & (1 << j) == 0 {
            taken |= 1 << j;
            unknown -= 1;
        }
    }
    taken
}

/// GPU `index`'s health as the node agent reports it (healthy when the node has no agent).
pub fn reported(agent: Option<&NodeView>, index: u32) -> Health {
    let Some(v) = agent else { return Health::Healthy };
    match v.gpus.get(&index).map(|g| g.state) {
        _ if v.stale => Health::Unknown,
        Some(GpuState::Healthy) => Health::Healthy,
        Some(GpuState::Unhealthy) => Health::Unhealthy,
        Some(GpuState::Unknown) | None => Health::Unknown,
    }
}

/// The core's pool kind for an API one.
pub fn pool_kind(k: haiyun_api::PoolKind) -> PoolKind {
    match k {
        haiyun_api::PoolKind::Hpc => PoolKind::Hpc,
        haiyun_api::PoolKind::Ai => PoolKind::Ai,
        haiyun_api::PoolKind::General => PoolKind::General,
        haiyun_api::PoolKind::Edge => PoolKind::Edge,
    }
}

/// The core's classification for an API one.
pub fn classification(c: haiyun_api::Classification) -> Classification {
    match c {
        haiyun_api::Classification::Public => Classification::Public,
        haiyun_api::Classification::Internal => Classification::Internal,
        haiyun_api::Classification::Sensitive => Classification::Sensitive,
        haiyun_api::Classification::Core => Classification::Core,
    }
}

/// Interns a GPU model name as nodes label it (lower-case).
pub fn model_id(models: &mut GpuModels, name: &str) -> Option<u8> {
    models.intern(&name.to_lowercase())
}

/// GPU indices on a node as the core's mask (indices past the node limit are ignored).
pub fn gpu_mask(indices: &[u32]) -> u32 {
    indices
        .iter()
        .filter(|g| (**g as usize) < haiyun_scheduler::model::MAX_GPUS_PER_NODE)
        .fold(0, |m, g| m | (1 << g))
}

/// The GPU indices of a core mask.
pub fn gpu_indices(mask: u32) -> Vec<u32> {
    haiyun_scheduler::snapshot::mask_bits(mask).map(|j| j as u32).collect()
}

/// What this operator's own placements hold on each node, and which pods they cover.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    /// Node name → (GPU indices held, tasks).
    pub nodes: HashMap<String, (u32, u32)>,
    /// Pods the placements cover, by `namespace/name`, with the run they belong to (`None`: a plain pod).
    pub pods: HashMap<String, Option<String>>,
    /// The pool of each node our placements use.
    pub pools: HashMap<String, String>,
}

impl Claims {
    /// Records a task of ours in `pool` on `node` holding `gpus`.
    pub fn hold_in(&mut self, pool: &str, node: &str, gpus: &[u32], pod: String, run: Option<String>) {
        self.pools.insert(node.to_string(), pool.to_string());
        self.hold(node, gpus, pod, run);
    }

    /// Records a task of ours on `node` holding `gpus`.
    pub fn hold(&mut self, node: &str, gpus: &[u32], pod: String, run: Option<String>) {
        let e = self.nodes.entry(node.to_string()).or_default();
        e.0 |= gpu_mask(gpus);
        e.1 += 1;
        self.pods.insert(pod, run);
    }

    /// Whether a placement of ours covers the pod `namespace/name` of run `run` (same name, and same run for a
    /// job's pods).
    pub fn covers(&self, key: &str, run: Option<&String>) -> bool {
        match self.pods.get(key) {
            Some(None) => true,
            Some(Some(r)) => run == Some(r),
            None => false,
        }
    }
}
