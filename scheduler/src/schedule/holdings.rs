//! What running jobs hold per (pool, flavor) and when each lets go, kept as jobs start and stop: a cycle's timeline
//! starts from a copy of it rather than from every running job again.

use rustc_hash::FxHashMap;

use super::Run;
use super::steps::Steps;
use super::timeline::key;
use crate::model::PoolId;
use crate::queue::Flavor;

/// Per (pool, flavor): what running jobs hold, and at each end time (a [`key`]) minus what the jobs ending then
/// hold. Memory is left out, as the timeline leaves it out.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Holdings {
    pub(crate) held: FxHashMap<(PoolId, Flavor), i64>,
    pub(crate) ends: FxHashMap<(PoolId, Flavor), Steps>,
}

impl Holdings {
    /// Counts a run that starts holding.
    pub(crate) fn add(&mut self, r: &Run) {
        self.change(r, 1);
    }

    /// Takes back a run counted with [`Holdings::add`] (its pool, charge and estimated end unchanged since).
    pub(crate) fn remove(&mut self, r: &Run) {
        self.change(r, -1);
    }

    fn change(&mut self, r: &Run, sign: i64) {
        let at = key(r.est_end);
        for (f, v) in r.charged.flavors().filter(|(f, _)| *f != Flavor::Memory) {
            let v = sign * v as i64;
            *self.held.entry((r.pool, f)).or_default() += v;
            // Every delta is a (negative) end: one that comes back to zero (no job ends there) is dropped.
            self.ends.entry((r.pool, f)).or_default().shift(at, -v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placer::Placement;
    use crate::queue::Resources;

    fn run(pool: PoolId, gpus: u64, end: f64) -> Run {
        Run {
            placement: Placement::default(),
            pool,
            model: Some(0),
            charged: Resources::default().with(Flavor::Gpu(0), gpus * 1000).with(Flavor::Memory, 10),
            started: 0.0,
            working_from: 0.0,
            est_end: end,
        }
    }

    #[test]
    fn a_run_taken_back_leaves_nothing_behind() {
        let mut h = Holdings::default();
        let (a, b) = (run(0, 2, 100.0), run(0, 1, 100.0));
        h.add(&a);
        h.add(&b);
        assert_eq!(h.held[&(0, Flavor::Gpu(0))], 3000);
        let ends = |h: &Holdings| h.ends[&(0, Flavor::Gpu(0))].iter().collect::<Vec<_>>();
        assert_eq!(ends(&h), [(100_000, -3000)]);
        assert!(!h.held.contains_key(&(0, Flavor::Memory)));
        h.remove(&a);
        assert_eq!(ends(&h), [(100_000, -1000)]);
        h.remove(&b);
        assert_eq!(h.held[&(0, Flavor::Gpu(0))], 0);
        assert!(h.ends[&(0, Flavor::Gpu(0))].is_empty());
    }
}
