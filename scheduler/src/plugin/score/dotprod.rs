//! DotProd: prefer nodes whose free CPU and GPU, dotted with the request, are smallest.

use super::{Score, Scored, score_cpu};
use crate::model::TaskSpec;
use crate::plugin::best_fit_gpus;
use crate::snapshot::NodeView;

/// `trunc(100·(1 − ½·[(c/128000)·(pc/128000) + (S/8000)·(R/8000)]))`, unnormalised.
#[derive(Debug, Clone, Copy, Default)]
pub struct DotProd;

impl Score for DotProd {
    const NAME: &'static str = "DotProd";

    fn score(&mut self, node: &NodeView<'_>, task: &TaskSpec, usable: u32) -> Scored {
        let c = node.cpu_free as f64;
        let s: f64 = node.free.iter().map(|f| f64::from(*f)).sum();
        let pc = score_cpu(task) as f64;
        let r = task.gpu_total_milli() as f64;
        let v = 100.0 * (1.0 - 0.5 * ((c / 128_000.0) * (pc / 128_000.0) + (s / 8000.0) * (r / 8000.0)));
        Scored { score: v.trunc() as i64, gpus: best_fit_gpus(node.free, usable, task).unwrap_or(0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, task, view_of};

    #[test]
    fn dotprod_prefers_the_node_with_less_free_gpu() {
        let n = node().cpu(64_000).gpus(8, 0).build();
        let t = task().cpu(8000).gpus(1, 1000).build();
        let full = view_of(&n, 64_000, 1, &[1000; 8]);
        let busy = view_of(&n, 64_000, 1, &[1000, 1000, 0, 0, 0, 0, 0, 0]);
        let (a, b) = (DotProd.score(&full, &t, 0xff).score, DotProd.score(&busy, &t, 0xff).score);
        assert!(b > a, "busy {b} should beat full {a}");
        assert_eq!(
            a,
            (100.0f64 * (1.0 - 0.5 * (0.5 * 8000.0 / 128_000.0 + 1.0 * 1000.0 / 8000.0))).trunc() as i64
        );
    }
}
