//! An indexed view of free capacity, changed incrementally as tasks are assumed, forgotten or GPUs change health.

mod bitset;
mod index;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use bitset::BitSet;
pub use index::{CapacityIndex, ModelFree, UnionIter};

use crate::model::{
    Cluster, ClusterError, GPU_MILLI, GpuId, Health, ModelSet, Node, NodeId, NodeSets, PoolId, TaskSpec,
};

/// Why the snapshot refused a change. Each is a broken invariant, never an expected outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The cluster description is inconsistent.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A node id past the end.
    #[error("failed to find node #{0}: no such node in the snapshot")]
    UnknownNode(NodeId),
    /// A GPU index past the node's GPUs.
    #[error("failed to find GPU {index} on node {node:?}: it has {gpus} GPUs")]
    UnknownGpu {
        /// The node.
        node: String,
        /// The GPU index.
        index: u8,
        /// Its GPU count.
        gpus: usize,
    },
    /// Assuming the task would over-commit the node.
    #[error("failed to assume task on node {node:?}: it would over-commit {resource}")]
    OverCommit {
        /// The node.
        node: String,
        /// The resource that would go negative or past capacity.
        resource: &'static str,
    },
    /// Forgetting a task that the node does not hold.
    #[error(
        "failed to forget task on node {node:?}: {resource} would exceed capacity, so the task was not there"
    )]
    NotAssumed {
        /// The node.
        node: String,
        /// The resource that would exceed capacity.
        resource: &'static str,
    },
    /// A GPU choice that does not match the task's GPU count.
    #[error("failed to assume task on node {node:?}: it asks for {wanted} GPUs but {chosen} were chosen")]
    GpuCountMismatch {
        /// The node.
        node: String,
        /// GPUs the task asks for.
        wanted: u32,
        /// GPUs chosen.
        chosen: u32,
    },
    /// Ranks of the wrong length.
    #[error("failed to set node ranks: got {got} ranks for {nodes} nodes")]
    RankCount {
        /// Ranks given.
        got: usize,
        /// Nodes in the snapshot.
        nodes: usize,
    },
}

/// One task placed: where, on which GPUs, asking for what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskPlacement {
    /// The node.
    pub node: NodeId,
    /// Bit `j` set: GPU `j` of the node carries `spec.gpu_milli` of the task.
    pub gpus: u32,
    /// What the task asked for.
    pub spec: TaskSpec,
}

impl TaskPlacement {
    /// The GPUs used, by federation-wide id.
    pub fn gpu_ids(&self) -> impl Iterator<Item = GpuId> + '_ {
        mask_bits(self.gpus).map(|j| GpuId { node: self.node, index: j as u8 })
    }
}

/// Free resources of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct NodeFree {
    cpu_milli: u64,
    memory_mib: u64,
    tasks: u32,
    version: u32,
    /// The node's most tasks, here beside what changes so a view reads one cache line.
    max_tasks: u32,
}

/// What a plugin sees of one node: its description and what is free on it now.
#[derive(Debug, Clone, Copy)]
pub struct NodeView<'a> {
    /// The node's id.
    pub id: NodeId,
    /// Its description.
    pub node: &'a Node,
    /// Free CPU in milli-cores.
    pub cpu_free: u64,
    /// Free memory in MiB.
    pub memory_free: u64,
    /// Tasks on it now.
    pub tasks: u32,
    /// The most tasks it takes.
    pub max_tasks: u32,
    /// Free milli per GPU; an unplaceable (unhealthy or unknown) GPU counts as 0 free.
    pub free: &'a [u16],
    /// Tie-break rank: lower wins among equal scores.
    pub rank: u32,
    /// Moves whenever the node's free capacity changes; plugins key caches on it.
    pub version: u32,
    /// The cluster's node sets, which tasks may be limited to.
    pub sets: &'a NodeSets,
    /// The models of its GPUs.
    pub models: ModelSet,
    /// Whether all its GPUs are of one model.
    pub uniform: bool,
}

impl NodeView<'_> {
    /// Bit mask of the GPUs whose model is in `models`.
    pub fn gpus_of(&self, models: ModelSet) -> u32 {
        if models.is_any() {
            return low_bits(self.free.len());
        }
        if self.uniform {
            return if self.models.intersects(models) { low_bits(self.free.len()) } else { 0 };
        }
        self.node
            .gpus
            .iter()
            .enumerate()
            .filter(|(_, g)| models.contains(g.model))
            .fold(0u32, |acc, (j, _)| acc | (1u32 << j))
    }
}

impl NodeView<'_> {
    /// Bit mask of the GPUs in NVLink domain `domain`.
    pub fn gpus_in_domain(&self, domain: u32) -> u32 {
        self.node
            .gpus
            .iter()
            .enumerate()
            .filter(|(_, g)| g.nvlink_domain == domain)
            .fold(0u32, |acc, (j, _)| acc | (1u32 << j))
    }
}

/// A mask with the low `n` bits set.
pub fn low_bits(n: usize) -> u32 {
    if n >= 32 { u32::MAX } else { (1u32 << n) - 1 }
}

/// Nodes grouped by rack, pool and NVLink domain, for topology-constrained gangs.
#[derive(Debug, Clone, Default)]
pub struct Groups {
    /// Nodes of each rack.
    pub racks: BTreeMap<u32, Vec<NodeId>>,
    /// Nodes of each pool.
    pub pools: BTreeMap<PoolId, Vec<NodeId>>,
    /// Nodes with at least one GPU in each NVLink domain.
    pub nvlink: BTreeMap<u32, Vec<NodeId>>,
}

/// Free capacity of a whole federation, indexed for fast candidate search.
#[derive(Debug, Clone)]
pub struct Snapshot {
    cluster: Cluster,
    free: Vec<NodeFree>,
    gpu_start: Vec<u32>,
    gpu_alloc: Vec<u16>,
    gpu_free: Vec<u16>,
    index: CapacityIndex,
    rank: Vec<u32>,
    groups: Groups,
    /// Per node: the models of its GPUs, and whether they are all one model (read with every view).
    models: Vec<(ModelSet, bool)>,
}

impl Snapshot {
    /// An empty snapshot (nothing allocated) of `cluster`. Ranks default to node order.
    pub fn new(cluster: Cluster) -> Result<Self, SnapshotError> {
        cluster.validate()?;
        let mut gpu_start = Vec::with_capacity(cluster.nodes.len() + 1);
        let mut total = 0u32;
        for n in &cluster.nodes {
            gpu_start.push(total);
            total += n.gpus.len() as u32;
        }
        gpu_start.push(total);
        let gpu_free = cluster
            .nodes
            .iter()
            .flat_map(|n| n.gpus.iter().map(|g| if g.health.is_placeable() { GPU_MILLI as u16 } else { 0 }))
            .collect();
        let free = cluster
            .nodes
            .iter()
            .map(|n| NodeFree {
                cpu_milli: n.cpu_milli,
                memory_mib: n.memory_mib,
                tasks: 0,
                version: 0,
                max_tasks: n.max_tasks,
            })
            .collect();
        let mut groups = Groups::default();
        for (i, n) in cluster.nodes.iter().enumerate() {
            let id = i as NodeId;
            groups.racks.entry(n.rack).or_default().push(id);
            groups.pools.entry(n.pool).or_default().push(id);
            let mut domains: Vec<u32> = n.gpus.iter().map(|g| g.nvlink_domain).collect();
            domains.dedup();
            for d in domains {
                let list = groups.nvlink.entry(d).or_default();
                if list.last() != Some(&id) {
                    list.push(id);
                }
            }
        }
        let models = cluster.nodes.iter().map(|n| (n.models(), n.models().0.count_ones() <= 1)).collect();
        let mut snap = Snapshot {
            models,
            rank: (0..cluster.nodes.len() as u32).collect(),
            gpu_alloc: vec![0; total as usize],
            cluster,
            free,
            gpu_start,
            gpu_free,
            index: CapacityIndex::default(),
            groups,
        };
        for id in 0..snap.cluster.nodes.len() as NodeId {
            snap.reindex(id);
        }
        Ok(snap)
    }

    /// The federation this snapshot describes.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.free.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }

    /// Replaces the tie-break ranks (one per node; lower wins ties).
    pub fn set_ranks(&mut self, ranks: Vec<u32>) -> Result<(), SnapshotError> {
        if ranks.len() != self.free.len() {
            return Err(SnapshotError::RankCount { got: ranks.len(), nodes: self.free.len() });
        }
        self.rank = ranks;
        Ok(())
    }

    /// The capacity index.
    pub fn index(&self) -> &CapacityIndex {
        &self.index
    }

    /// Node groups for topology.
    pub fn groups(&self) -> &Groups {
        &self.groups
    }

    /// A changing counter per node: it moves whenever the node's free capacity changes.
    pub fn version(&self, id: NodeId) -> u32 {
        self.free.get(id as usize).map_or(0, |f| f.version)
    }

    /// The view of one node (None past the end).
    #[inline]
    pub fn view(&self, id: NodeId) -> Option<NodeView<'_>> {
        let i = id as usize;
        let f = self.free.get(i)?;
        let (a, b) = (self.gpu_start[i] as usize, self.gpu_start[i + 1] as usize);
        Some(NodeView {
            id,
            node: &self.cluster.nodes[i],
            cpu_free: f.cpu_milli,
            memory_free: f.memory_mib,
            tasks: f.tasks,
            max_tasks: f.max_tasks,
            free: &self.gpu_free[a..b],
            rank: self.rank[i],
            version: f.version,
            sets: &self.cluster.node_sets,
            models: self.models[i].0,
            uniform: self.models[i].1,
        })
    }

    /// Allocated milli per GPU of a node (unplaceable GPUs included).
    pub fn allocated(&self, id: NodeId) -> &[u16] {
        let i = id as usize;
        match (self.gpu_start.get(i), self.gpu_start.get(i + 1)) {
            (Some(a), Some(b)) => &self.gpu_alloc[*a as usize..*b as usize],
            _ => &[],
        }
    }

    /// Takes a task's resources from its node.
    pub fn assume(&mut self, p: &TaskPlacement) -> Result<(), SnapshotError> {
        let i = self.check(p)?;
        let name = || self.cluster.nodes[i].name.clone();
        let f = self.free[i];
        let cpu = f.cpu_milli.checked_sub(p.spec.cpu_milli);
        let mem = f.memory_mib.checked_sub(p.spec.memory_mib);
        let (Some(cpu), Some(mem)) = (cpu, mem) else {
            let resource = if cpu.is_none() { "cpu" } else { "memory" };
            return Err(SnapshotError::OverCommit { node: name(), resource });
        };
        if f.tasks >= self.cluster.nodes[i].max_tasks {
            return Err(SnapshotError::OverCommit { node: name(), resource: "task slots" });
        }
        let a = self.gpu_start[i] as usize;
        for j in mask_bits(p.gpus) {
            if u32::from(self.gpu_alloc[a + j]) + p.spec.gpu_milli > GPU_MILLI {
                return Err(SnapshotError::OverCommit { node: name(), resource: "gpu milli" });
            }
        }
        for j in mask_bits(p.gpus) {
            self.gpu_alloc[a + j] += p.spec.gpu_milli as u16;
        }
        self.free[i] =
            NodeFree { cpu_milli: cpu, memory_mib: mem, tasks: f.tasks + 1, version: f.version + 1, ..f };
        self.refresh_gpus(i);
        Ok(())
    }

    /// Gives a task's resources back to its node.
    pub fn forget(&mut self, p: &TaskPlacement) -> Result<(), SnapshotError> {
        let i = self.check(p)?;
        let node = &self.cluster.nodes[i];
        let f = self.free[i];
        let cpu = f.cpu_milli + p.spec.cpu_milli;
        let mem = f.memory_mib + p.spec.memory_mib;
        let a = self.gpu_start[i] as usize;
        let bad = if cpu > node.cpu_milli {
            Some("cpu")
        } else if mem > node.memory_mib {
            Some("memory")
        } else if f.tasks == 0 {
            Some("task slots")
        } else if mask_bits(p.gpus).any(|j| u32::from(self.gpu_alloc[a + j]) < p.spec.gpu_milli) {
            Some("gpu milli")
        } else {
            None
        };
        if let Some(resource) = bad {
            return Err(SnapshotError::NotAssumed { node: node.name.clone(), resource });
        }
        for j in mask_bits(p.gpus) {
            self.gpu_alloc[a + j] -= p.spec.gpu_milli as u16;
        }
        self.free[i] =
            NodeFree { cpu_milli: cpu, memory_mib: mem, tasks: f.tasks - 1, version: f.version + 1, ..f };
        self.refresh_gpus(i);
        Ok(())
    }

    /// Records a GPU's health; an unplaceable GPU offers no free capacity.
    pub fn set_health(&mut self, gpu: GpuId, health: Health) -> Result<(), SnapshotError> {
        let i = gpu.node as usize;
        let node = self.cluster.nodes.get_mut(i).ok_or(SnapshotError::UnknownNode(gpu.node))?;
        let gpus = node.gpus.len();
        let g = node.gpus.get_mut(usize::from(gpu.index)).ok_or_else(|| SnapshotError::UnknownGpu {
            node: node.name.clone(),
            index: gpu.index,
            gpus,
        })?;
        g.health = health;
        self.free[i].version += 1;
        self.refresh_gpus(i);
        Ok(())
    }

    fn check(&self, p: &TaskPlacement) -> Result<usize, SnapshotError> {
        let i = p.node as usize;
        let node = self.cluster.nodes.get(i).ok_or(SnapshotError::UnknownNode(p.node))?;
        if p.gpus & !low_bits(node.gpus.len()) != 0 {
            return Err(SnapshotError::UnknownGpu {
                node: node.name.clone(),
                index: (31 - p.gpus.leading_zeros()) as u8,
                gpus: node.gpus.len(),
            });
        }
        let wanted = if p.spec.is_cpu_only() { 0 } else { p.spec.gpus };
        if p.gpus.count_ones() != wanted {
            return Err(SnapshotError::GpuCountMismatch {
                node: node.name.clone(),
                wanted,
                chosen: p.gpus.count_ones(),
            });
        }
        Ok(i)
    }

    fn refresh_gpus(&mut self, i: usize) {
        let a = self.gpu_start[i] as usize;
        for (j, g) in self.cluster.nodes[i].gpus.iter().enumerate() {
            self.gpu_free[a + j] =
                if g.health.is_placeable() { GPU_MILLI as u16 - self.gpu_alloc[a + j] } else { 0 };
        }
        self.reindex(i as NodeId);
    }

    fn reindex(&mut self, id: NodeId) {
        let i = id as usize;
        let node = &self.cluster.nodes[i];
        if node.gpus.is_empty() {
            self.index.insert_node(id);
            return;
        }
        let a = self.gpu_start[i] as usize;
        for model in node.models().iter() {
            let mut free = ModelFree::default();
            for (j, g) in node.gpus.iter().enumerate() {
                if g.model != model {
                    continue;
                }
                let f = u32::from(self.gpu_free[a + j]);
                free.whole += u32::from(f == GPU_MILLI);
                free.best_share = free.best_share.max(f);
            }
            self.index.update(id, model, free);
        }
    }
}

/// The set bits of a GPU mask, as indices.
pub fn mask_bits(mut mask: u32) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let j = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        Some(j)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GpuModels, Pool, PoolKind};
    use crate::testing::{node, task};

    fn snap() -> Snapshot {
        let mut models = GpuModels::default();
        let m = models.intern("H100").unwrap_or(0);
        let pools = vec![Pool {
            name: "p".into(),
            kind: PoolKind::Ai,
            site: "s".into(),
            clearance: Default::default(),
        }];
        Snapshot::new(Cluster {
            models,
            pools,
            nodes: vec![node().cpu(8000).memory(4096).gpus(2, m).build()],
            node_sets: Default::default(),
        })
        .unwrap()
    }

    #[test]
    fn assume_then_forget_restores_the_node_and_moves_its_version() {
        let mut s = snap();
        let p =
            TaskPlacement { node: 0, gpus: 0b10, spec: task().cpu(2000).memory(1024).gpus(1, 300).build() };
        s.assume(&p).unwrap();
        let v = s.view(0).unwrap();
        assert_eq!((v.cpu_free, v.memory_free, v.free.to_vec()), (6000, 3072, vec![1000, 700]));
        s.forget(&p).unwrap();
        let v = s.view(0).unwrap();
        assert_eq!((v.cpu_free, v.free.to_vec(), v.version), (8000, vec![1000, 1000], 2));
    }

    #[test]
    fn over_committing_a_gpu_is_an_error_and_changes_nothing() {
        let mut s = snap();
        let p = TaskPlacement { node: 0, gpus: 0b01, spec: task().cpu(1).memory(1).gpus(1, 700).build() };
        s.assume(&p).unwrap();
        assert!(matches!(s.assume(&p), Err(SnapshotError::OverCommit { resource: "gpu milli", .. })));
        assert_eq!(s.allocated(0), &[700, 0]);
    }

    #[test]
    fn forgetting_a_task_that_was_never_assumed_is_an_error() {
        let mut s = snap();
        let p = TaskPlacement { node: 0, gpus: 0b01, spec: task().cpu(1).memory(1).gpus(1, 700).build() };
        assert!(matches!(s.forget(&p), Err(SnapshotError::NotAssumed { .. })));
    }

    #[test]
    fn a_gpu_choice_that_does_not_match_the_request_is_refused() {
        let mut s = snap();
        let p = TaskPlacement { node: 0, gpus: 0b11, spec: task().gpus(1, 1000).build() };
        assert!(matches!(s.assume(&p), Err(SnapshotError::GpuCountMismatch { wanted: 1, chosen: 2, .. })));
        let p = TaskPlacement { node: 0, gpus: 0b100, spec: task().gpus(1, 1000).build() };
        assert!(matches!(s.assume(&p), Err(SnapshotError::UnknownGpu { index: 2, .. })));
    }

    #[test]
    fn an_unhealthy_gpu_leaves_the_index_and_comes_back_when_healthy() {
        let mut s = snap();
        let whole =
            |s: &Snapshot| UnionIter::new(s.index().candidate_sets(2, 1000, ModelSet::ANY), 0).count();
        assert_eq!(whole(&s), 1);
        s.set_health(GpuId { node: 0, index: 1 }, Health::Unhealthy).unwrap();
        assert_eq!(whole(&s), 0);
        assert_eq!(s.view(0).unwrap().free, &[1000, 0]);
        s.set_health(GpuId { node: 0, index: 1 }, Health::Healthy).unwrap();
        assert_eq!(whole(&s), 1);
    }
}
