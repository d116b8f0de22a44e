//! The scheduler's model of a federation: pools, nodes, GPUs and the work that asks for them.

mod cluster;
mod data;
mod gpu;
mod job;
mod node;
mod node_set;
mod task;

pub use cluster::{Cluster, ClusterError, GpuId, NodeId, PoolId};
pub use data::{Classification, Dataset};
pub use gpu::{GPU_MILLI, Gpu, GpuModels, Health, MAX_GPU_MODELS, ModelId, ModelSet};
pub use job::{DatasetId, Job, JobId, QueueId, Time, UserId, Work};
pub use node::{MAX_GPUS_PER_NODE, Node, Pool, PoolKind};
pub use node_set::{NO_NODE_SETS, NodeSet, NodeSetId, NodeSets};
pub use task::{Gang, GangError, TaskSpec, Topology};
