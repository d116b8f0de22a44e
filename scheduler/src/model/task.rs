//! Tasks (what one pod or process asks for) and gangs (tasks that start together or not at all).

use serde::{Deserialize, Serialize};

use super::gpu::{GPU_MILLI, ModelSet};
use super::node_set::NodeSetId;

/// What one task asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskSpec {
    /// CPU in milli-cores.
    pub cpu_milli: u64,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Number of GPUs (0 for a CPU-only task).
    pub gpus: u32,
    /// Milli-GPUs on each of those GPUs: 1000 for whole GPUs, less to share one device.
    pub gpu_milli: u32,
    /// GPU models the task may run on.
    pub models: ModelSet,
    /// The node set it is limited to (its template's selector, affinity and tolerations), or any node.
    #[serde(default)]
    pub nodes: NodeSetId,
}

impl TaskSpec {
    /// A CPU-only task.
    pub fn cpu(cpu_milli: u64, memory_mib: u64) -> Self {
        TaskSpec {
            cpu_milli,
            memory_mib,
            gpus: 0,
            gpu_milli: 0,
            models: ModelSet::ANY,
            nodes: NodeSetId::ANY,
        }
    }

    /// Returns the spec with a zero GPU count or a zero share folded into "no GPU", and the share clamped to 1000.
    pub fn normalized(mut self) -> Self {
        self.gpu_milli = self.gpu_milli.min(GPU_MILLI);
        if self.gpus == 0 || self.gpu_milli == 0 {
            self.gpus = 0;
            self.gpu_milli = 0;
        }
        self
    }

    /// Whether the task uses no GPU.
    pub fn is_cpu_only(&self) -> bool {
        self.gpus == 0 || self.gpu_milli == 0
    }

    /// Whether the task shares one GPU with others (one GPU, less than all of it).
    pub fn is_shared(&self) -> bool {
        self.gpus == 1 && self.gpu_milli > 0 && self.gpu_milli < GPU_MILLI
    }

    /// Total milli-GPUs requested.
    pub fn gpu_total_milli(&self) -> u64 {
        u64::from(self.gpus) * u64::from(self.gpu_milli)
    }
}

/// Where the tasks of a gang must land relative to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// Anywhere in the federation.
    #[default]
    Any,
    /// All tasks on one node.
    SameNode,
    /// All GPUs of all tasks in one NVLink domain.
    NvlinkDomain,
    /// All tasks in one rack.
    Rack,
    /// All tasks in one pool.
    Pool,
}

impl Topology {
    /// The name used in APIs and explanations.
    pub fn as_str(self) -> &'static str {
        match self {
            Topology::Any => "any",
            Topology::SameNode => "same-node",
            Topology::NvlinkDomain => "nvlink-domain",
            Topology::Rack => "rack",
            Topology::Pool => "pool",
        }
    }
}

/// Why a gang cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GangError {
    /// A gang needs at least one task.
    #[error("failed to build gang: it has no tasks (give at least one task group with replicas >= 1)")]
    Empty,
    /// A share above one GPU.
    #[error("failed to build gang: task group {group} asks for {milli} milli-GPUs per GPU; the most is 1000")]
    ShareTooLarge {
        /// Index of the group.
        group: usize,
        /// The share asked for.
        milli: u32,
    },
}

/// Tasks that are placed all together or not at all.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Gang {
    /// Every task of the gang (replicas expanded), in placement order.
    pub tasks: Vec<TaskSpec>,
    /// Where the tasks must land relative to each other.
    pub topology: Topology,
}

impl Gang {
    /// A gang of one task.
    pub fn single(task: TaskSpec) -> Self {
        Gang { tasks: vec![task.normalized()], topology: Topology::Any }
    }

    /// Builds a gang from `(spec, replicas)` groups.
    pub fn from_groups(groups: &[(TaskSpec, u32)], topology: Topology) -> Result<Self, GangError> {
        let mut tasks = Vec::new();
        for (i, (spec, replicas)) in groups.iter().enumerate() {
            if spec.gpu_milli > GPU_MILLI {
                return Err(GangError::ShareTooLarge { group: i, milli: spec.gpu_milli });
            }
            tasks.extend(std::iter::repeat_n(spec.normalized(), *replicas as usize));
        }
        if tasks.is_empty() {
            return Err(GangError::Empty);
        }
        Ok(Gang { tasks, topology })
    }

    /// Total milli-GPUs of the gang.
    pub fn gpu_total_milli(&self) -> u64 {
        self.tasks.iter().map(TaskSpec::gpu_total_milli).sum()
    }
}
