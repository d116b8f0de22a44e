//! Haiyun: fragmentation gradient over every resource the expected workload needs, not GPUs alone.

use super::fgd::{after, ascending_fit, sigmoid_score};
use super::frag::{FragCache, node_fragmentation};
use super::{Score, Scored, score_cpu};
use crate::model::TaskSpec;
use crate::plugin::fitting_gpus;
use crate::plugin::typical::TypicalPods;
use crate::snapshot::{NodeView, mask_bits};

/// Knobs of the Haiyun policy; the defaults are the shipped policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HaiyunParams {
    /// A shape that does not fit in the node's free memory strands the node's GPUs for it.
    pub memory_aware: bool,
}

impl Default for HaiyunParams {
    fn default() -> Self {
        HaiyunParams { memory_aware: true }
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

    fn frag(&self, node: &NodeView<'_>, cpu: i64, memory: i64, free: &[u16]) -> f64 {
        node_fragmentation(&self.typical, cpu, memory, free, node.node, self.params.memory_aware)
    }
}

impl Score for Haiyun {
    const NAME: &'static str = "Haiyun";

    fn score(&mut self, node: &NodeView<'_>, task: &TaskSpec, usable: u32) -> Scored {
        let n = node.free.len();
        let (cpu0, mem0) = (node.cpu_free as i64, node.memory_free as i64);
        let before = match self.before.entries_get(node.id, node.version) {
            Some(f) => f,
            None => {
                let f = self.frag(node, cpu0, mem0, node.free);
                self.before.put(node.id, node.version, f);
                f
            }
        };
        let cpu = cpu0 - score_cpu(task) as i64;
        let mem = mem0 - task.memory_mib as i64;
        if task.is_shared() {
            let mut best = Scored { score: i64::MIN, gpus: 0 };
            for j in mask_bits(fitting_gpus(node.free, usable, task.gpu_milli)) {
                let free = after(node.free, 1u32 << j, task.gpu_milli);
                let score = sigmoid_score(before - self.frag(node, cpu, mem, &free[..n]));
                if score > best.score {
                    best = Scored { score, gpus: 1u32 << j };
                }
            }
            return best;
        }
        let gpus = if task.is_cpu_only() { 0 } else { ascending_fit(node, task, usable) };
        let free = after(node.free, gpus, task.gpu_milli);
        Scored { score: sigmoid_score(before - self.frag(node, cpu, mem, &free[..n])), gpus }
    }
}
