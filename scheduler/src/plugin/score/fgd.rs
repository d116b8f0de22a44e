//! FGD: move each task where it lowers the expected fragmentation most (Weng et al., USENIX ATC 2023).

use super::frag::{FragCache, FragModel, FreeGpus};
use super::{Score, Scored, score_cpu};
use crate::model::{MAX_GPUS_PER_NODE, TaskSpec};
use crate::plugin::typical::TypicalPods;
use crate::plugin::{fitting_gpus, sorted_by_free};
use crate::snapshot::{NodeView, mask_bits};

/// Fragmentation gradient descent, as the paper's simulator scores it.
#[derive(Debug, Clone)]
pub struct Fgd {
    typical: TypicalPods,
    before: FragCache,
}

impl Fgd {
    /// FGD against the given typical shapes.
    pub fn new(typical: TypicalPods) -> Self {
        Fgd { typical, before: FragCache::default() }
    }
}

/// `trunc(100 / (1 + e^(−Δ/1000)))`.
fn sigmoid_score(delta: f64) -> i64 {
    (100.0 / (1.0 + (-delta / 1000.0).exp())).trunc() as i64
}

/// The GPUs a non-shared task takes: the first `gpus` that fit, in ascending order of free (stable).
fn ascending_fit(node: &NodeView<'_>, task: &TaskSpec, usable: u32) -> u32 {
    let mut order = [0u8; 32];
    let n = sorted_by_free(node.free, fitting_gpus(node.free, usable, task.gpu_milli), &mut order);
    order[..n].iter().take(task.gpus as usize).fold(0u32, |acc, j| acc | (1u32 << j))
}

/// FGD's step: the node's score is the sigmoid of how much placing `task` lowers its fragmentation. A shared
/// task tries every GPU that fits and keeps the first best; other tasks take the first GPUs that fit in
/// ascending order of free. `before` is the node's fragmentation and `now` its free GPUs as they are;
/// `frag(cpu, memory, gpus)` measures a node state.
pub(crate) fn gradient_score(
    node: &NodeView<'_>,
    task: &TaskSpec,
    usable: u32,
    before: f64,
    now: &FreeGpus,
    frag: impl Fn(i64, i64, &FreeGpus) -> f64,
) -> Scored {
    let cpu = node.cpu_free as i64 - score_cpu(task) as i64;
    let mem = node.memory_free as i64 - task.memory_mib as i64;
    let model = |j: usize| node.node.gpus.get(j).map(|g| g.model);
    if task.is_shared() {
        let mut best = Scored { score: i64::MIN, gpus: 0 };
        let mut tried = [(0u16, None); MAX_GPUS_PER_NODE];
        let mut n_tried = 0;
        for j in mask_bits(fitting_gpus(node.free, usable, task.gpu_milli)) {
            // Fragmentation sees a node's GPUs only as free milli per model, so a GPU like one already tried
            // (same free, same model) scores the same, and the first of them is kept.
            let like = (node.free[j], model(j));
            if tried[..n_tried].contains(&like) {
                continue;
            }
            tried[n_tried] = like;
            n_tried += 1;
            let mut after = *now;
            after.take(like.0, like.1, task.gpu_milli);
            let score = sigmoid_score(before - frag(cpu, mem, &after));
            if score > best.score {
                best = Scored { score, gpus: 1u32 << j };
            }
        }
        return best;
    }
    let gpus = if task.is_cpu_only() { 0 } else { ascending_fit(node, task, usable) };
    let mut after = *now;
    for j in mask_bits(gpus) {
        after.take(node.free[j], model(j), task.gpu_milli);
    }
    Scored { score: sigmoid_score(before - frag(cpu, mem, &after)), gpus }
}

impl Score for Fgd {
    const NAME: &'static str = "FGD";

    fn score(&mut self, node: &NodeView<'_>, task: &TaskSpec, usable: u32) -> Scored {
        let typical = &self.typical;
        let frag = |cpu: i64, _mem: i64, gpus: &FreeGpus| gpus.fragmentation(typical, cpu, 0, FragModel::FGD);
        let (before, now) = self.before.get_or(node, |gpus| frag(node.cpu_free as i64, 0, gpus));
        gradient_score(node, task, usable, before, &now, frag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::TypicalPod;
    use crate::testing::{node, task, view_of};

    fn typical(shapes: &[(TaskSpec, f64)]) -> TypicalPods {
        TypicalPods { pods: shapes.iter().map(|(spec, p)| TypicalPod { spec: *spec, p: *p }).collect() }
    }

    #[test]
    fn fgd_puts_a_share_where_it_strands_the_least() {
        // The workload is whole-GPU tasks: a 0.5 task belongs on the half-used GPU, keeping a whole one free.
        let half = task().cpu(1000).gpus(1, 500).build();
        let whole = task().cpu(1000).gpus(1, 1000).build();
        let mut p = Fgd::new(typical(&[(whole, 1.0)]));
        let n = node().cpu(64_000).gpus(2, 0).build();
        let v = view_of(&n, 64_000, 1, &[1000, 500]);
        assert_eq!(p.score(&v, &half, 0b11).gpus, 0b10);
    }

    #[test]
    fn fgd_prefers_the_node_whose_fragmentation_drops() {
        let quarter = task().cpu(1000).gpus(1, 250).build();
        let whole = task().cpu(1000).gpus(1, 1000).build();
        let mut p = Fgd::new(typical(&[(whole, 1.0)]));
        let n = node().cpu(64_000).gpus(2, 0).build();
        let mut broken = view_of(&n, 64_000, 1, &[1000, 750]);
        broken.id = 1;
        let fresh = view_of(&n, 64_000, 1, &[1000, 1000]);
        let (a, b) = (p.score(&fresh, &quarter, 0b11), p.score(&broken, &quarter, 0b11));
        assert!(b.score > a.score, "fragmented node {} should beat fresh {}", b.score, a.score);
        assert_eq!(b.gpus, 0b10);
    }
}
