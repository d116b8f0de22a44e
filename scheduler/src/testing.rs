//! Fixture builders and synthetic federations for tests and benchmarks (feature `testing`).

use crate::model::{
    Cluster, Gang, Gpu, GpuModels, Health, ModelId, ModelSet, NO_NODE_SETS, Node, NodeSetId, Pool, PoolKind,
    TaskSpec, Topology,
};
use crate::rng::SplitMix64;
use crate::snapshot::NodeView;

/// Builds a [`Node`]: `node().cpu(64_000).gpus(8, 0).build()`.
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    node: Node,
}

/// A node with 32 cores, 256 GiB, no GPUs, in pool 0 and rack 0.
pub fn node() -> NodeBuilder {
    NodeBuilder {
        node: Node {
            name: "node".into(),
            pool: 0,
            rack: 0,
            cpu_milli: 32_000,
            memory_mib: 262_144,
            gpus: Vec::new(),
            max_tasks: 110,
        },
    }
}

impl NodeBuilder {
    /// Its name.
    pub fn name(mut self, name: &str) -> Self {
        self.node.name = name.into();
        self
    }
    /// Its CPU in milli-cores.
    pub fn cpu(mut self, milli: u64) -> Self {
        self.node.cpu_milli = milli;
        self
    }
    /// Its memory in MiB.
    pub fn memory(mut self, mib: u64) -> Self {
        self.node.memory_mib = mib;
        self
    }
    /// `count` GPUs of `model`, all in NVLink domain 0.
    pub fn gpus(mut self, count: usize, model: ModelId) -> Self {
        let g = Gpu { model, memory_mib: 81_920, nvlink_domain: 0, health: Health::Healthy };
        self.node.gpus = vec![g; count];
        self
    }
    /// Puts every GPU in NVLink domain `d`.
    pub fn nvlink(mut self, d: u32) -> Self {
        for g in &mut self.node.gpus {
            g.nvlink_domain = d;
        }
        self
    }
    /// Its rack.
    pub fn rack(mut self, rack: u32) -> Self {
        self.node.rack = rack;
        self
    }
    /// Its pool.
    pub fn pool(mut self, pool: u32) -> Self {
        self.node.pool = pool;
        self
    }
    /// Its task limit.
    pub fn max_tasks(mut self, n: u32) -> Self {
        self.node.max_tasks = n;
        self
    }
    /// The node.
    pub fn build(self) -> Node {
        self.node
    }
}

/// Builds a [`TaskSpec`]: `task().cpu(4000).gpus(1, 500).build()`.
#[derive(Debug, Clone, Copy)]
pub struct TaskBuilder {
    spec: TaskSpec,
}

/// A CPU-only task of 1 core and 1 GiB, any model.
pub fn task() -> TaskBuilder {
    TaskBuilder { spec: TaskSpec::cpu(1000, 1024) }
}

impl TaskBuilder {
    /// CPU in milli-cores.
    pub fn cpu(mut self, milli: u64) -> Self {
        self.spec.cpu_milli = milli;
        self
    }
    /// Memory in MiB.
    pub fn memory(mut self, mib: u64) -> Self {
        self.spec.memory_mib = mib;
        self
    }
    /// `count` GPUs with `milli` each.
    pub fn gpus(mut self, count: u32, milli: u32) -> Self {
        self.spec.gpus = count;
        self.spec.gpu_milli = milli;
        self
    }
    /// Allowed models.
    pub fn models(mut self, models: ModelSet) -> Self {
        self.spec.models = models;
        self
    }
    /// Limited to a node set.
    pub fn nodes(mut self, set: NodeSetId) -> Self {
        self.spec.nodes = set;
        self
    }
    /// The spec.
    pub fn build(self) -> TaskSpec {
        self.spec
    }
    /// A gang of `replicas` copies with a topology.
    pub fn gang(self, replicas: u32, topology: Topology) -> Gang {
        Gang { tasks: vec![self.spec.normalized(); replicas as usize], topology }
    }
}

/// A view of `node` with the given free CPU, memory and per-GPU free milli.
pub fn view_of<'a>(node: &'a Node, cpu_free: u64, memory_free: u64, free: &'a [u16]) -> NodeView<'a> {
    let (models, uniform) = (node.models(), node.models().0.count_ones() <= 1);
    NodeView {
        id: 0,
        node,
        cpu_free,
        memory_free,
        tasks: 0,
        max_tasks: node.max_tasks,
        free,
        rank: 0,
        version: 0,
        sets: &NO_NODE_SETS,
        models,
        uniform,
    }
}

/// A heterogeneous federation of `nodes` 8-GPU nodes: pools of each kind, racks of 32, one NVLink domain per
/// node, GPU models H100, A100 and L40S, and T4 at the edge. Deterministic for a seed.
pub fn synthetic_federation(nodes: usize, seed: u64) -> Cluster {
    let mut models = GpuModels::default();
    let ids: Vec<ModelId> = ["H100", "A100", "L40S", "T4"].iter().filter_map(|m| models.intern(m)).collect();
    let pools = vec![
        Pool { name: "hpc".into(), kind: PoolKind::Hpc, site: "wuxi".into(), clearance: Default::default() },
        Pool {
            name: "ai".into(),
            kind: PoolKind::Ai,
            site: "shanghai".into(),
            clearance: Default::default(),
        },
        Pool {
            name: "general".into(),
            kind: PoolKind::General,
            site: "hangzhou".into(),
            clearance: Default::default(),
        },
        Pool {
            name: "edge".into(),
            kind: PoolKind::Edge,
            site: "edge".into(),
            clearance: Default::default(),
        },
    ];
    let mut rng = SplitMix64::new(seed);
    let nodes = (0..nodes)
        .map(|i| {
            let pool = (rng.below(10) as u32).min(3).saturating_sub(u32::from(i % 7 == 0));
            let model = if pool == 3 { ids[3] } else { ids[rng.below(3) as usize] };
            let mut n = node()
                .name(&format!("node-{i:05}"))
                .cpu(128_000)
                .memory(1_048_576)
                .gpus(8, model)
                .nvlink(i as u32)
                .rack(i as u32 / 32)
                .pool(pool)
                .max_tasks(256)
                .build();
            n.gpus.iter_mut().for_each(|g| g.memory_mib = 81_920);
            n
        })
        .collect();
    Cluster { models, pools, nodes, node_sets: Default::default() }
}

/// Pending gangs holding `tasks` tasks in all, drawn from a catalogue of common shapes (real workloads are
/// concentrated: 35 shapes cover 95% of the Alibaba GPU trace): about 50% fractional single-GPU tasks, 30%
/// whole single-GPU, 18% CPU-only and 2% in gangs of 2–4 tasks of 8 GPUs; a quarter restrict GPU models.
/// Deterministic for a seed.
pub fn synthetic_workload(tasks: usize, seed: u64) -> Vec<Gang> {
    const SHARES: [(u32, u64, u64); 6] =
        [(100, 2, 8), (250, 4, 16), (250, 2, 8), (500, 4, 32), (500, 8, 32), (700, 8, 48)];
    const WHOLE: [(u64, u64); 4] = [(8, 64), (12, 96), (16, 128), (4, 32)];
    const CPU: [(u64, u64); 4] = [(4, 16), (8, 32), (16, 64), (32, 128)];
    let mut rng = SplitMix64::new(seed ^ 0x5eed);
    let mut gangs = Vec::new();
    let mut count = 0;
    while count < tasks {
        let r = rng.below(1000);
        let models = if rng.below(4) == 0 { ModelSet::one(rng.below(3) as u8) } else { ModelSet::ANY };
        let gang = if r < 500 {
            let (milli, cores, gib) = SHARES[rng.below(6) as usize];
            Gang::single(task().cpu(cores * 1000).memory(gib * 1024).gpus(1, milli).models(models).build())
        } else if r < 800 {
            let (cores, gib) = WHOLE[rng.below(4) as usize];
            Gang::single(task().cpu(cores * 1000).memory(gib * 1024).gpus(1, 1000).models(models).build())
        } else if r < 993 {
            let (cores, gib) = CPU[rng.below(4) as usize];
            Gang::single(task().cpu(cores * 1000).memory(gib * 1024).build())
        } else {
            let replicas = (2 + rng.below(3) as u32).min((tasks - count) as u32);
            task().cpu(96_000).memory(786_432).gpus(8, 1000).models(models).gang(replicas, Topology::Any)
        };
        count += gang.tasks.len();
        gangs.push(gang);
    }
    gangs
}
