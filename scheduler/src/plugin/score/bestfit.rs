//! BestFit: least free CPU and GPU left after placing, normalised over the feasible nodes.

use super::{Score, Scored, score_cpu};
use crate::model::TaskSpec;
use crate::plugin::best_fit_gpus;
use crate::snapshot::NodeView;

/// `trunc(100·(1 − [(c − pc)/128000·½ + (S − R)/8000·½]))`, then scaled to 0–100 over the candidates.
#[derive(Debug, Clone, Copy, Default)]
pub struct BestFit;

impl Score for BestFit {
    const NAME: &'static str = "BestFit";

    fn score(&mut self, node: &NodeView<'_>, task: &TaskSpec, usable: u32) -> Scored {
        let c = node.cpu_free as f64 - score_cpu(task) as f64;
        let s: f64 = node.free.iter().map(|f| f64::from(*f)).sum::<f64>() - task.gpu_total_milli() as f64;
        let v = 100.0 * (1.0 - (c / 128_000.0 * 0.5 + s / 8000.0 * 0.5));
        Scored { score: v.trunc() as i64, gpus: best_fit_gpus(node.free, usable, task).unwrap_or(0) }
    }

    fn normalizes(&self) -> bool {
        true
    }

    fn normalize(&self, scores: &mut [i64]) {
        let (Some(min), Some(max)) = (scores.iter().min().copied(), scores.iter().max().copied()) else {
            return;
        };
        for s in scores.iter_mut() {
            *s = if max == min { 0 } else { (*s - min) * 100 / (max - min) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, task, view_of};

    #[test]
    fn bestfit_prefers_the_tighter_node_and_normalises_to_0_100() {
        let n = node().cpu(64_000).gpus(8, 0).build();
        let t = task().cpu(4000).gpus(1, 1000).build();
        let loose = BestFit.score(&view_of(&n, 64_000, 1, &[1000; 8]), &t, 0xff).score;
        let tight = BestFit.score(&view_of(&n, 8000, 1, &[1000, 1000, 0, 0, 0, 0, 0, 0]), &t, 0xff).score;
        assert!(tight > loose);
        let mut scores = [loose, tight, (loose + tight) / 2];
        BestFit.normalize(&mut scores);
        assert_eq!(scores[0], 0);
        assert_eq!(scores[1], 100);
        let mut same = [7, 7];
        BestFit.normalize(&mut same);
        assert_eq!(same, [0, 0]);
    }
}
