//! GpuClustering: keep GPU tasks of the same shape together on nodes.

use super::{Score, Scored};
use crate::model::{NodeId, TaskSpec};
use crate::plugin::best_fit_gpus;
use crate::snapshot::NodeView;

const TAGS: usize = 33;

/// Per node, how many GPU tasks of each shape (shared, 1-GPU, 2-GPU, …) it holds.
#[derive(Debug, Clone, Default)]
pub struct GpuClustering {
    tags: Vec<[u32; TAGS]>,
}

fn tag(task: &TaskSpec) -> Option<usize> {
    if task.is_cpu_only() {
        None
    } else if task.is_shared() {
        Some(0)
    } else {
        Some((task.gpus as usize).min(TAGS - 1))
    }
}

impl GpuClustering {
    fn counts(&mut self, node: NodeId) -> &mut [u32; TAGS] {
        let i = node as usize;
        if self.tags.len() <= i {
            self.tags.resize(i + 1, [0; TAGS]);
        }
        &mut self.tags[i]
    }
}

impl Score for GpuClustering {
    const NAME: &'static str = "GpuClustering";

    fn score(&mut self, node: &NodeView<'_>, task: &TaskSpec, usable: u32) -> Scored {
        let gpus = best_fit_gpus(node.free, usable, task).unwrap_or(0);
        let Some(t) = tag(task) else { return Scored { score: 0, gpus } };
        let s: i64 = node.free.iter().map(|f| i64::from(*f)).sum();
        let b = (25 * (8000 - s)).div_euclid(8000);
        let counts = *self.counts(node.id);
        let held = counts.iter().filter(|c| **c > 0).count();
        let score = match (counts[t] > 0, held) {
            (true, 1) => b + 75,
            (true, _) => b + 50,
            (false, 0) => b + 25,
            (false, _) => b,
        };
        Scored { score, gpus }
    }

    fn reserve(&mut self, node: NodeId, task: &TaskSpec) {
        if let Some(t) = tag(task) {
            self.counts(node)[t] += 1;
        }
    }

    fn unreserve(&mut self, node: NodeId, task: &TaskSpec) {
        if let Some(t) = tag(task) {
            let c = &mut self.counts(node)[t];
            *c = c.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, task, view_of};

    #[test]
    fn gpu_clustering_prefers_a_node_holding_only_the_same_shape() {
        let n = node().gpus(8, 0).build();
        let free = [1000u16; 8];
        let mut p = GpuClustering::default();
        let one = task().gpus(1, 1000).build();
        let share = task().gpus(1, 500).build();
        p.reserve(1, &one);
        p.reserve(2, &one);
        p.reserve(2, &share);
        let score = |p: &mut GpuClustering, id| {
            let mut v = view_of(&n, 1000, 1000, &free);
            v.id = id;
            p.score(&v, &one, 0xff).score
        };
        let (empty, same, mixed, other) = (score(&mut p, 0), score(&mut p, 1), score(&mut p, 2), {
            p.reserve(3, &share);
            score(&mut p, 3)
        });
        assert_eq!((empty, same, mixed, other), (25, 75, 50, 0));
        p.unreserve(3, &share);
        assert_eq!(score(&mut p, 3), 25);
    }
}
