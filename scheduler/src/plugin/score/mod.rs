//! Score plugins: one placement policy per file, selectable by name.

mod bestfit;
mod dotprod;
mod fgd;
mod frag;
mod gpu_clustering;
mod gpu_packing;
mod haiyun;
mod random;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use bestfit::BestFit;
pub use dotprod::DotProd;
pub use fgd::Fgd;
pub use frag::{FragCache, FragModel, node_fragmentation};
pub use gpu_clustering::GpuClustering;
pub use gpu_packing::GpuPacking;
pub use haiyun::{Haiyun, HaiyunParams};
pub use random::Random;

use super::typical::TypicalPods;
use crate::model::{NodeId, TaskSpec};
use crate::snapshot::NodeView;

/// A node's score for a task and the GPUs the task would take there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scored {
    /// Higher is better.
    pub score: i64,
    /// Bit mask of the GPUs chosen on the node.
    pub gpus: u32,
}

/// The Score extension point (with Reserve/Unreserve for plugins that keep per-node state).
pub trait Score {
    /// Plugin name.
    const NAME: &'static str;

    /// Scores `node` for `task`, choosing the GPUs; `usable` masks the GPUs the task may use. Only called on
    /// nodes that passed every filter.
    fn score(&mut self, node: &NodeView<'_>, task: &TaskSpec, usable: u32) -> Scored;

    /// Rescales the raw scores of one task's feasible nodes in place.
    fn normalize(&self, _scores: &mut [i64]) {}

    /// Whether [`Score::normalize`] changes scores; when not, the best node is found while scoring.
    fn normalizes(&self) -> bool {
        false
    }

    /// Whether a score depends only on the node's state and the task (so it may be cached per node version).
    fn cacheable(&self) -> bool {
        true
    }

    /// Called after a task is assumed on a node.
    fn reserve(&mut self, _node: NodeId, _task: &TaskSpec) {}

    /// Called after a task is forgotten on a node.
    fn unreserve(&mut self, _node: NodeId, _task: &TaskSpec) {}
}

/// The placement policies by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyName {
    /// A uniformly random feasible node.
    Random,
    /// Dot product of free and requested CPU and GPU.
    Dotprod,
    /// Keep GPU tasks of one shape together.
    GpuClustering,
    /// Fill partly used GPUs first.
    GpuPacking,
    /// Least free CPU and GPU left after placing.
    Bestfit,
    /// Fragmentation gradient descent (Weng et al., ATC 2023).
    Fgd,
    /// Haiyun's own: fragmentation-aware over every resource the expected workload needs.
    Haiyun,
}

impl PolicyName {
    /// Every policy, in the order of the FGD paper, ours last.
    pub const ALL: [PolicyName; 7] = [
        PolicyName::Random,
        PolicyName::Dotprod,
        PolicyName::GpuClustering,
        PolicyName::GpuPacking,
        PolicyName::Bestfit,
        PolicyName::Fgd,
        PolicyName::Haiyun,
    ];

    /// The name used on command lines and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyName::Random => "random",
            PolicyName::Dotprod => "dotprod",
            PolicyName::GpuClustering => "gpu-clustering",
            PolicyName::GpuPacking => "gpu-packing",
            PolicyName::Bestfit => "bestfit",
            PolicyName::Fgd => "fgd",
            PolicyName::Haiyun => "haiyun",
        }
    }
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PolicyName {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PolicyName::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| PolicyError::UnknownPolicy(s.to_string()))
    }
}

/// Why a policy cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A name no policy has.
    #[error(
        "failed to select policy {0:?}: use one of random, dotprod, gpu-clustering, gpu-packing, bestfit, fgd, haiyun"
    )]
    UnknownPolicy(String),
    /// A policy parameter that is not `key=number` with a known key.
    #[error(
        "failed to read policy parameter {0:?}: use key=number with key memory or starved (starved: a number >= 0)"
    )]
    BadParam(String),
    /// A workload-aware policy without an estimate of the workload.
    #[error(
        "failed to build policy {0}: it needs the typical task shapes of the workload, and none were given"
    )]
    NeedsWorkload(PolicyName),
}

/// A placement policy, dispatched without dynamic calls.
#[derive(Debug, Clone)]
pub enum Policy {
    /// See [`Random`].
    Random(Random),
    /// See [`DotProd`].
    DotProd(DotProd),
    /// See [`GpuClustering`].
    GpuClustering(GpuClustering),
    /// See [`GpuPacking`].
    GpuPacking(GpuPacking),
    /// See [`BestFit`].
    BestFit(BestFit),
    /// See [`Fgd`].
    Fgd(Fgd),
    /// See [`Haiyun`].
    Haiyun(Haiyun),
}

macro_rules! each {
    ($self:expr, $p:ident => $e:expr) => {
        match $self {
            Policy::Random($p) => $e,
            Policy::DotProd($p) => $e,
            Policy::GpuClustering($p) => $e,
            Policy::GpuPacking($p) => $e,
            Policy::BestFit($p) => $e,
            Policy::Fgd($p) => $e,
            Policy::Haiyun($p) => $e,
        }
    };
}

impl Policy {
    /// Builds the named policy; `seed` drives `random`, `typical` feeds the workload-aware policies.
    pub fn new(name: PolicyName, seed: u64, typical: Option<&TypicalPods>) -> Result<Self, PolicyError> {
        Self::with_params(name, seed, typical, HaiyunParams::default())
    }

    /// Like [`Policy::new`], with Haiyun's parameters given.
    pub fn with_params(
        name: PolicyName,
        seed: u64,
        typical: Option<&TypicalPods>,
        haiyun: HaiyunParams,
    ) -> Result<Self, PolicyError> {
        let workload = || typical.cloned().ok_or(PolicyError::NeedsWorkload(name));
        Ok(match name {
            PolicyName::Random => Policy::Random(Random::new(seed)),
            PolicyName::Dotprod => Policy::DotProd(DotProd),
            PolicyName::GpuClustering => Policy::GpuClustering(GpuClustering::default()),
            PolicyName::GpuPacking => Policy::GpuPacking(GpuPacking),
            PolicyName::Bestfit => Policy::BestFit(BestFit),
            PolicyName::Fgd => Policy::Fgd(Fgd::new(workload()?)),
            PolicyName::Haiyun => Policy::Haiyun(Haiyun::new(workload()?, haiyun)),
        })
    }

    /// The policy's name.
    pub fn name(&self) -> PolicyName {
        match self {
            Policy::Random(_) => PolicyName::Random,
            Policy::DotProd(_) => PolicyName::Dotprod,
            Policy::GpuClustering(_) => PolicyName::GpuClustering,
            Policy::GpuPacking(_) => PolicyName::GpuPacking,
            Policy::BestFit(_) => PolicyName::Bestfit,
            Policy::Fgd(_) => PolicyName::Fgd,
            Policy::Haiyun(_) => PolicyName::Haiyun,
        }
    }

    /// See [`Score::score`].
    pub fn score(&mut self, node: &NodeView<'_>, task: &TaskSpec, usable: u32) -> Scored {
        each!(self, p => p.score(node, task, usable))
    }

    /// See [`Score::normalize`].
    pub fn normalize(&self, scores: &mut [i64]) {
        each!(self, p => p.normalize(scores))
    }

    /// See [`Score::normalizes`].
    pub fn normalizes(&self) -> bool {
        each!(self, p => p.normalizes())
    }

    /// See [`Score::cacheable`].
    pub fn cacheable(&self) -> bool {
        each!(self, p => p.cacheable())
    }

    /// See [`Score::reserve`].
    pub fn reserve(&mut self, node: NodeId, task: &TaskSpec) {
        each!(self, p => p.reserve(node, task))
    }

    /// See [`Score::unreserve`].
    pub fn unreserve(&mut self, node: NodeId, task: &TaskSpec) {
        each!(self, p => p.unreserve(node, task))
    }
}

/// A task's CPU as the paper's scores see it: its request, or 100 milli when it asks for none.
pub(crate) fn score_cpu(task: &TaskSpec) -> u64 {
    if task.cpu_milli == 0 { 100 } else { task.cpu_milli }
}
