//! Structured reasons why a gang found no place: which filter stopped it, on how many nodes, and by how much.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{GPU_MILLI, GpuModels, ModelSet, NodeId, PoolId, TaskSpec, Topology};
use crate::plugin::{Unfit, check_node, fitting_gpus};
use crate::snapshot::Snapshot;

/// Whether waiting can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub enum RejectionCode {
    /// It would fit on the federation's capacity: preemption or time may help.
    Unschedulable,
    /// It can never fit as specified, even on an empty federation.
    Unresolvable,
}

/// How many nodes one filter refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonCount {
    /// The filter's reason code (e.g. `insufficient-gpus`).
    pub reason: String,
    /// Nodes it refused.
    pub nodes: u32,
}

/// The closest the federation came to holding the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortfall {
    /// GPUs the task (or, with a topology, the whole gang) needs in one place.
    pub gpus: u32,
    /// Milli-GPUs on each.
    pub gpu_milli: u32,
    /// Allowed models.
    pub models: ModelSet,
    /// The place they must share.
    pub within: Topology,
    /// Most GPUs with that share free in any one such place.
    pub best_free: u32,
    /// CPU the task needs (milli-cores) and the most free on a node otherwise able to hold it.
    pub cpu_milli: (u64, u64),
    /// Memory the task needs (MiB) and the most free on a node otherwise able to hold it.
    pub memory_mib: (u64, u64),
}

/// Why a gang was not placed. An expected outcome, not an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Whether waiting can help.
    pub code: RejectionCode,
    /// Index of the first task of the gang that found no node.
    pub task: usize,
    /// Nodes examined.
    pub nodes: u32,
    /// Refusals by reason, most common first.
    pub reasons: Vec<ReasonCount>,
    /// By how much it missed.
    pub shortfall: Shortfall,
}

fn place_name(t: Topology) -> &'static str {
    match t {
        Topology::Any | Topology::SameNode => "node",
        Topology::NvlinkDomain => "NVLink domain",
        Topology::Rack => "rack",
        Topology::Pool => "pool",
    }
}

impl Rejection {
    /// A rejection of task `task` with no diagnosis (for tentative placements nobody explains).
    pub fn unexplained(task: usize) -> Self {
        Rejection {
            code: RejectionCode::Unschedulable,
            task,
            nodes: 0,
            reasons: Vec::new(),
            shortfall: Shortfall {
                gpus: 0,
                gpu_milli: 0,
                models: ModelSet::ANY,
                within: Topology::Any,
                best_free: 0,
                cpu_milli: (0, 0),
                memory_mib: (0, 0),
            },
        }
    }

    /// One line for people: what was needed, the best there was, and the refusals by reason.
    pub fn message(&self, models: &GpuModels) -> String {
        let s = &self.shortfall;
        let place = place_name(s.within);
        let mut msg = if s.gpus == 0 {
            format!(
                "task {} needs {}m CPU and {} MiB memory on one node; best node has {}m CPU and {} MiB free",
                self.task, s.cpu_milli.0, s.memory_mib.0, s.cpu_milli.1, s.memory_mib.1
            )
        } else {
            let what = if s.gpu_milli >= GPU_MILLI {
                format!("{} whole GPUs", s.gpus)
            } else {
                format!("{} GPUs with {} milli free each", s.gpus, s.gpu_milli)
            };
            format!(
                "task {} needs {what} of {} in one {place}; best {place} has {} free",
                self.task,
                models.describe(s.models),
                s.best_free
            )
        };
        let counts: Vec<String> = self.reasons.iter().map(|r| format!("{} {}", r.nodes, r.reason)).collect();
        if !counts.is_empty() {
            msg.push_str(&format!(" (0/{} nodes fit: {})", self.nodes, counts.join(", ")));
        }
        if self.code == RejectionCode::Unresolvable {
            msg.push_str("; it cannot fit even on an empty federation: change the request");
        }
        msg
    }
}

/// Explains why `task` (index `index` of a gang needing `gang_gpus` GPUs within `within`) found no node in `pool`
/// (`None`: the whole federation): the nodes and places counted are those the placer looked at. Whether it could
/// ever fit is asked of the whole federation.
pub fn explain(
    snap: &Snapshot,
    task: &TaskSpec,
    index: usize,
    within: Topology,
    gang_gpus: u32,
    pool: Option<PoolId>,
) -> Rejection {
    // Counted by code, named once: a refusal per node of a large federation must not make a string each.
    let mut counts: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut outside = 0u32;
    let mut best_node_free = 0u32;
    let (mut best_cpu, mut best_mem) = (0u64, 0u64);
    let mut examined = 0u32;
    for id in scope(snap, pool) {
        let Some(v) = snap.view(id) else { continue };
        examined += 1;
        if !v.sets.allows(task.nodes, id) {
            outside += 1;
            continue;
        }
        let usable = v.gpus_of(task.models);
        let fitting = fitting_gpus(v.free, usable, task.gpu_milli.max(1)).count_ones();
        best_node_free = best_node_free.max(fitting);
        if task.is_cpu_only() || fitting >= task.gpus {
            best_cpu = best_cpu.max(v.cpu_free);
            best_mem = best_mem.max(v.memory_free);
        }
        match check_node(&v, task, usable) {
            Err(Unfit::OutsideNodeSet) => outside += 1,
            Err(u) => *counts.entry(u.code()).or_default() += 1,
            Ok(()) => {}
        }
    }
    let grouped = !matches!(within, Topology::Any);
    let best_free = if grouped { best_group_free(snap, task, within, pool) } else { best_node_free };
    let mut reasons: Vec<ReasonCount> =
        counts.into_iter().map(|(code, nodes)| ReasonCount { reason: code.to_string(), nodes }).collect();
    if outside > 0 {
        reasons.push(ReasonCount { reason: outside_reason(snap, task), nodes: outside });
    }
    reasons.sort_by(|a, b| b.nodes.cmp(&a.nodes).then_with(|| a.reason.cmp(&b.reason)));
    let needed = if grouped { gang_gpus } else { task.gpus };
    let code = if fits_empty(snap, task, within, needed) {
        RejectionCode::Unschedulable
    } else {
        RejectionCode::Unresolvable
    };
    Rejection {
        code,
        task: index,
        nodes: examined,
        reasons,
        shortfall: Shortfall {
            gpus: needed,
            gpu_milli: task.gpu_milli,
            models: task.models,
            within: if grouped { within } else { Topology::Any },
            best_free,
            cpu_milli: (task.cpu_milli, best_cpu),
            memory_mib: (task.memory_mib, best_mem),
        },
    }
}

/// The reason for nodes outside the task's node set, with the set's name.
fn outside_reason(snap: &Snapshot, task: &TaskSpec) -> String {
    let code = Unfit::OutsideNodeSet.code();
    match snap.cluster().node_sets.get(task.nodes) {
        Some(set) => format!("{code} ({})", set.name),
        None => code.to_string(),
    }
}

fn group_lists(snap: &Snapshot, within: Topology) -> Vec<&[u32]> {
    let g = snap.groups();
    match within {
        Topology::Rack => g.racks.values().map(Vec::as_slice).collect(),
        Topology::Pool => g.pools.values().map(Vec::as_slice).collect(),
        Topology::NvlinkDomain => g.nvlink.values().map(Vec::as_slice).collect(),
        Topology::Any | Topology::SameNode => Vec::new(),
    }
}

/// The nodes of `pool`, or of the whole federation.
fn scope(snap: &Snapshot, pool: Option<PoolId>) -> impl Iterator<Item = NodeId> + '_ {
    let listed = pool.map(|p| snap.groups().pools.get(&p).map_or(&[][..], Vec::as_slice));
    let all = if listed.is_none() { 0..snap.len() as NodeId } else { 0..0 };
    listed.unwrap_or(&[]).iter().copied().chain(all)
}

fn best_group_free(snap: &Snapshot, task: &TaskSpec, within: Topology, pool: Option<PoolId>) -> u32 {
    if within == Topology::SameNode {
        return scope(snap, pool)
            .filter_map(|id| snap.view(id))
            .filter(|v| v.sets.allows(task.nodes, v.id))
            .map(|v| fitting_gpus(v.free, v.gpus_of(task.models), task.gpu_milli.max(1)).count_ones())
            .max()
            .unwrap_or(0);
    }
    // As the placer: only places wholly inside the pool.
    let in_pool = |id: &NodeId| {
        pool.is_none_or(|p| snap.cluster().nodes.get(*id as usize).is_some_and(|n| n.pool == p))
    };
    group_lists(snap, within)
        .into_iter()
        .filter(|nodes| nodes.iter().all(in_pool))
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|id| snap.view(*id))
                .filter(|v| v.sets.allows(task.nodes, v.id))
                .map(|v| fitting_gpus(v.free, v.gpus_of(task.models), task.gpu_milli.max(1)).count_ones())
                .sum::<u32>()
        })
        .max()
        .unwrap_or(0)
}

/// Whether an empty federation could hold `needed` GPUs of the task's shape in one place of kind `within`,
/// with a node that has the CPU and memory of one task.
fn fits_empty(snap: &Snapshot, task: &TaskSpec, within: Topology, needed: u32) -> bool {
    let cluster = snap.cluster();
    let node_ok = |id: u32| {
        cluster.nodes.get(id as usize).is_some_and(|n| {
            cluster.node_sets.allows(task.nodes, id)
                && n.cpu_milli >= task.cpu_milli
                && n.memory_mib >= task.memory_mib
                && n.max_tasks > 0
                && (task.is_cpu_only()
                    || n.gpus.iter().filter(|g| task.models.contains(g.model)).count() as u32 >= task.gpus)
        })
    };
    let allowed = |id: &u32| {
        cluster
            .nodes
            .get(*id as usize)
            .filter(|_| cluster.node_sets.allows(task.nodes, *id))
            .map_or(0, |n| n.gpus.iter().filter(|g| task.models.contains(g.model)).count() as u32)
    };
    match within {
        Topology::Any => (0..snap.len() as u32).any(node_ok),
        Topology::SameNode => (0..snap.len() as u32).any(|id| node_ok(id) && allowed(&id) >= needed),
        _ => group_lists(snap, within).into_iter().any(|nodes| {
            nodes.iter().any(|id| node_ok(*id)) && nodes.iter().map(allowed).sum::<u32>() >= needed
        }),
    }
}
