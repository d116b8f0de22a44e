//! A federation: its pools, nodes and GPU models, checked for consistency.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::gpu::GpuModels;
use super::node::{MAX_GPUS_PER_NODE, Node, Pool};
use super::node_set::NodeSets;

/// Index of a pool in a [`Cluster`].
pub type PoolId = u32;
/// Index of a node in a [`Cluster`].
pub type NodeId = u32;

/// One GPU of the federation: its node and device index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GpuId {
    /// The node.
    pub node: NodeId,
    /// Device index on that node.
    pub index: u8,
}

/// Why a cluster description is inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// Two nodes share a name.
    #[error("failed to build cluster: node name {0:?} appears twice (node names must be unique)")]
    DuplicateNode(String),
    /// A node names a pool that does not exist.
    #[error("failed to build cluster: node {node:?} is in pool #{pool}, but only {pools} pools exist")]
    UnknownPool {
        /// The node.
        node: String,
        /// The pool index it names.
        pool: PoolId,
        /// How many pools exist.
        pools: usize,
    },
    /// A node with too many GPUs.
    #[error("failed to build cluster: node {node:?} has {gpus} GPUs; the most one node may have is 32")]
    TooManyGpus {
        /// The node.
        node: String,
        /// Its GPU count.
        gpus: usize,
    },
    /// A GPU names a model the registry does not know.
    #[error("failed to build cluster: node {node:?} has a GPU of model id {model}, which is not registered")]
    UnknownModel {
        /// The node.
        node: String,
        /// The unknown model id.
        model: u8,
    },
    /// More nodes than ids.
    #[error("failed to build cluster: {0} nodes is more than a cluster may hold")]
    TooManyNodes(usize),
}

/// A whole federation as the scheduler sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// GPU model names.
    pub models: GpuModels,
    /// Pools.
    pub pools: Vec<Pool>,
    /// Nodes; a [`NodeId`] is an index here.
    pub nodes: Vec<Node>,
    /// Sets of nodes that tasks may be limited to (their [`super::TaskSpec::nodes`]).
    #[serde(default)]
    pub node_sets: NodeSets,
}

impl Cluster {
    /// Checks that every node names a real pool and known models, names are unique and nodes are not too big.
    pub fn validate(&self) -> Result<(), ClusterError> {
        if u32::try_from(self.nodes.len()).is_err() {
            return Err(ClusterError::TooManyNodes(self.nodes.len()));
        }
        let mut names = HashSet::with_capacity(self.nodes.len());
        for node in &self.nodes {
            if !names.insert(node.name.as_str()) {
                return Err(ClusterError::DuplicateNode(node.name.clone()));
            }
            if node.pool as usize >= self.pools.len() {
                return Err(ClusterError::UnknownPool {
                    node: node.name.clone(),
                    pool: node.pool,
                    pools: self.pools.len(),
                });
            }
            if node.gpus.len() > MAX_GPUS_PER_NODE {
                return Err(ClusterError::TooManyGpus { node: node.name.clone(), gpus: node.gpus.len() });
            }
            if let Some(g) = node.gpus.iter().find(|g| usize::from(g.model) >= self.models.len()) {
                return Err(ClusterError::UnknownModel { node: node.name.clone(), model: g.model });
            }
        }
        Ok(())
    }

    /// Total GPUs in the federation.
    pub fn gpu_count(&self) -> usize {
        self.nodes.iter().map(|n| n.gpus.len()).sum()
    }
}
