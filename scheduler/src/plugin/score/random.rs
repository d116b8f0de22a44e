//! Random: a uniformly random feasible node, and a random GPU for a shared task.

use super::{Score, Scored};
use crate::model::TaskSpec;
use crate::plugin::{best_fit_gpus, fitting_gpus};
use crate::rng::SplitMix64;
use crate::snapshot::{NodeView, mask_bits};

/// Scores every node with a fresh random number, so the best is a uniform pick.
#[derive(Debug, Clone)]
pub struct Random {
    rng: SplitMix64,
}

impl Random {
    /// A random policy seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Random { rng: SplitMix64::new(seed) }
    }
}

impl Score for Random {
    const NAME: &'static str = "Random";

    fn score(&mut self, node: &NodeView<'_>, task: &TaskSpec, usable: u32) -> Scored {
        let score = (self.rng.next_u64() >> 1) as i64;
        let gpus = if task.is_shared() {
            let fit = fitting_gpus(node.free, usable, task.gpu_milli);
            let pick = self.rng.below(u64::from(fit.count_ones())) as usize;
            mask_bits(fit).nth(pick).map_or(0, |j| 1u32 << j)
        } else {
            best_fit_gpus(node.free, usable, task).unwrap_or(0)
        };
        Scored { score, gpus }
    }

    fn cacheable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, task, view_of};

    #[test]
    fn random_spreads_a_shared_task_over_every_gpu_that_fits() {
        let n = node().gpus(4, 0).build();
        let v = view_of(&n, 1000, 1000, &[500, 1000, 100, 700]);
        let mut r = Random::new(3);
        let t = task().gpus(1, 500).build();
        let mut seen = 0u32;
        for _ in 0..200 {
            seen |= r.score(&v, &t, 0b1111).gpus;
        }
        assert_eq!(seen, 0b1011);
    }
}
