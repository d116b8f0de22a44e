//! Filter plugins: each says whether one node can hold one task, and if not, why and by how much.

mod gpu_capacity;
mod gpu_model;
mod node_set;
mod resources;

use serde::{Deserialize, Serialize};

pub use gpu_capacity::GpuCapacity;
pub use gpu_model::GpuModel;
pub use node_set::NodeSetMember;
pub use resources::NodeResourcesFit;

use crate::model::TaskSpec;
use crate::snapshot::NodeView;

/// Why a node cannot hold a task: an expected outcome with its shortfall, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum Unfit {
    /// Not enough free CPU.
    InsufficientCpu {
        /// Free milli-cores.
        free: u64,
        /// Milli-cores asked for.
        wanted: u64,
    },
    /// Not enough free memory.
    InsufficientMemory {
        /// Free MiB.
        free: u64,
        /// MiB asked for.
        wanted: u64,
    },
    /// The node holds as many tasks as it may.
    TooManyTasks {
        /// Its limit.
        max: u32,
    },
    /// None of the node's GPUs is of an allowed model.
    GpuModelNotAllowed,
    /// Too few allowed, healthy GPUs with enough free.
    InsufficientGpus {
        /// GPUs that would fit.
        fitting: u32,
        /// GPUs asked for.
        wanted: u32,
    },
    /// The node is outside the gang's topology group.
    OutOfTopology,
    /// The node is outside the task's node set (its template's selector, affinity or tolerations).
    OutsideNodeSet,
}

impl Unfit {
    /// A short stable code for counting reasons.
    pub fn code(&self) -> &'static str {
        match self {
            Unfit::InsufficientCpu { .. } => "insufficient-cpu",
            Unfit::InsufficientMemory { .. } => "insufficient-memory",
            Unfit::TooManyTasks { .. } => "too-many-tasks",
            Unfit::GpuModelNotAllowed => "gpu-model-not-allowed",
            Unfit::InsufficientGpus { .. } => "insufficient-gpus",
            Unfit::OutOfTopology => "out-of-topology",
            Unfit::OutsideNodeSet => "outside-node-set",
        }
    }
}

/// The Filter extension point.
pub trait Filter {
    /// Plugin name, as in explanations.
    const NAME: &'static str;

    /// `Ok` when `node` can hold `task`, else why not.
    fn filter(&self, node: &NodeView<'_>, task: &TaskSpec, usable: u32) -> Result<(), Unfit>;
}

/// Runs every filter in order; `usable` is the mask of the node's GPUs the task may use.
pub fn check_node(node: &NodeView<'_>, task: &TaskSpec, usable: u32) -> Result<(), Unfit> {
    NodeSetMember.filter(node, task, usable)?;
    NodeResourcesFit.filter(node, task, usable)?;
    GpuModel.filter(node, task, usable)?;
    GpuCapacity.filter(node, task, usable)
}
