//! Nodes and the pools that group them.

use serde::{Deserialize, Serialize};

use super::PoolId;
use super::data::Classification;
use super::gpu::{Gpu, ModelSet};

/// The most GPUs one node may have (a node's GPU choice is a 32-bit mask).
pub const MAX_GPUS_PER_NODE: usize = 32;

/// What a pool is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// Supercomputing (HPC, usually Slurm).
    Hpc,
    /// Intelligent computing: GPU/AI.
    Ai,
    /// General-purpose compute.
    General,
    /// Edge sites with small GPUs and flaky links.
    Edge,
}

impl PoolKind {
    /// The lower-case name used in APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolKind::Hpc => "hpc",
            PoolKind::Ai => "ai",
            PoolKind::General => "general",
            PoolKind::Edge => "edge",
        }
    }
}

/// A pool of nodes behind one backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    /// Unique name.
    pub name: String,
    /// What it is for.
    pub kind: PoolKind,
    /// Site (data centre, region or edge location).
    pub site: String,
    /// The most sensitive data it may hold.
    #[serde(default)]
    pub clearance: Classification,
}

/// A node: CPU, memory and GPUs, in a pool and a rack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Unique name.
    pub name: String,
    /// Its pool.
    pub pool: PoolId,
    /// Rack id, federation-wide.
    pub rack: u32,
    /// Allocatable CPU in milli-cores.
    pub cpu_milli: u64,
    /// Allocatable memory in MiB.
    pub memory_mib: u64,
    /// Its GPUs, in device-index order.
    pub gpus: Vec<Gpu>,
    /// The most tasks it may hold at once.
    pub max_tasks: u32,
}

impl Node {
    /// The set of GPU models on this node.
    pub fn models(&self) -> ModelSet {
        let mut set = ModelSet::NONE;
        for g in &self.gpus {
            set.insert(g.model);
        }
        set
    }
}
