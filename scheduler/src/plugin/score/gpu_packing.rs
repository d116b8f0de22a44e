//! GpuPacking: fill partly used GPUs first, then partly used nodes, and open empty nodes last.

use super::{Score, Scored};
use crate::model::{GPU_MILLI, TaskSpec};
use crate::plugin::{best_fit_gpus, sorted_by_free};
use crate::snapshot::NodeView;

/// The paper's GpuPacking score, unnormalised.
#[derive(Debug, Clone, Copy, Default)]
pub struct GpuPacking;

impl Score for GpuPacking {
    const NAME: &'static str = "GpuPacking";

    fn score(&mut self, node: &NodeView<'_>, task: &TaskSpec, usable: u32) -> Scored {
        let gpus = best_fit_gpus(node.free, usable, task).unwrap_or(0);
        if task.is_cpu_only() {
            return Scored { score: 0, gpus };
        }
        let g = node.free.len() as i64;
        if node.free.iter().all(|f| u32::from(*f) == GPU_MILLI) {
            return Scored { score: (33 - g).max(g), gpus };
        }
        let mut order = [0u8; 32];
        let n = sorted_by_free(node.free, usable, &mut order);
        let taken: Vec<u32> = order[..n]
            .iter()
            .map(|j| u32::from(node.free[usize::from(*j)]))
            .filter(|f| *f >= task.gpu_milli)
            .take(task.gpus as usize)
            .collect();
        let whole = taken.iter().filter(|f| **f == GPU_MILLI).count() as i64;
        let score = if whole > 0 {
            (50 - whole).max(33)
        } else {
            let sum: i64 = taken.iter().map(|f| i64::from(f * 100 / GPU_MILLI)).sum();
            (100 - sum / 10).max(50)
        };
        Scored { score, gpus }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, task, view_of};

    #[test]
    fn gpu_packing_ranks_partly_used_gpus_over_used_nodes_over_empty_nodes() {
        let n = node().gpus(8, 0).build();
        let t = task().gpus(1, 300).build();
        let score = |free: &[u16]| GpuPacking.score(&view_of(&n, 1000, 1000, free), &t, 0xff).score;
        let empty = score(&[1000; 8]);
        let used_node = score(&[1000, 1000, 1000, 1000, 1000, 1000, 1000, 0]);
        let used_gpu = score(&[400, 1000, 1000, 1000, 1000, 1000, 1000, 1000]);
        assert_eq!((empty, used_node, used_gpu), (25, 49, 96));
    }
}
