//! Haiyun: fragmentation gradient over every resource the expected workload needs, not GPUs alone.
//!
//! FGD asks, per typical shape, "could one more such task use this node's free GPUs?". Haiyun also asks
//! whether its memory fits and how many copies the node's CPU and memory can still feed: free GPUs that only
//! CPU-starved copies could use count as (discounted) fragmentation, so CPU-heavy and CPU-only tasks go where
//! they strand the fewest GPUs. The discount reflects that lighter shapes may still use those GPUs later.

use super::fgd::gradient_score;
use super::frag::{FragCache, FragModel, node_fragmentation};
use super::{PolicyError, Score, Scored};
use crate::model::TaskSpec;
use crate::plugin::typical::TypicalPods;
use crate::snapshot::NodeView;

/// Knobs of the Haiyun policy; the defaults are the shipped policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HaiyunParams {
    /// How fragmentation is measured.
    pub frag: FragModel,
}

impl Default for HaiyunParams {
    fn default() -> Self {
        HaiyunParams { frag: FragModel { memory: true, starved_weight: 0.075 } }
    }
}

impl HaiyunParams {
    /// Applies `key=value` pairs separated by commas (`memory=1,starved=0.1`) to the defaults.
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        let mut p = HaiyunParams::default();
        for pair in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            let bad = || PolicyError::BadParam(pair.to_string());
            let (k, v) = pair.split_once('=').ok_or_else(bad)?;
            let x: f64 = v.trim().parse().map_err(|_| bad())?;
            match k.trim() {
                "memory" => p.frag.memory = x != 0.0,
                "starved" => p.frag.starved_weight = x,
                _ => return Err(bad()),
            }
        }
        Ok(p)
    }
}

/// Haiyun's default placement score.
#[derive(Debug, Clone)]
pub struct Haiyun {
    typical: TypicalPods,
    params: HaiyunParams,
    before: FragCache,
}

impl Haiyun {
    /// The policy against the given typical shapes.
    pub fn new(typical: TypicalPods, params: HaiyunParams) -> Self {
        Haiyun { typical, params, before: FragCache::default() }
    }
}

impl Score for Haiyun {
    const NAME: &'static str = "Haiyun";

    fn score(&mut self, node: &NodeView<'_>, task: &TaskSpec, usable: u32) -> Scored {
        let (typical, model) = (&self.typical, self.params.frag);
        let frag =
            |cpu: i64, mem: i64, free: &[u16]| node_fragmentation(typical, cpu, mem, free, node.node, model);
        let before = self
            .before
            .get_or(node.id, node.version, || frag(node.cpu_free as i64, node.memory_free as i64, node.free));
        gradient_score(node, task, usable, before, frag)
    }
}
