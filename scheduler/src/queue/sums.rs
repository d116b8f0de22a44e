//! Per cohort tree, what its queues may lend and what they hold beyond what they keep, kept as usage changes.

use super::{Flavor, QueueId, Quotas, Resources, Time};

/// One cohort tree's sums, per flavor, from the queues' own definitions (grants not included).
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct TreeSums {
    /// What its queues may lend.
    pub(super) pool: Resources,
    /// What its queues hold beyond the part of their nominal quota they do not lend.
    pub(super) above: Resources,
}

impl Quotas {
    /// What queue `q` may lend of `f` by its definition.
    fn own_lendable(&self, q: QueueId, f: Flavor) -> u64 {
        let s = &self.specs[q as usize];
        let n = s.nominal.get(f);
        s.lending_limit.as_ref().map_or(n, |l| l.get(f).min(n))
    }

    /// What queue `q` holding `used` of `f` holds beyond what it keeps for itself, by its definition.
    fn own_above(&self, q: QueueId, f: Flavor, used: u64) -> u64 {
        used.saturating_sub(self.specs[q as usize].nominal.get(f) - self.own_lendable(q, f))
    }

    /// Works out every tree's sums again (after a queue is added or redefined).
    pub(super) fn resum(&mut self) {
        let mut sums = vec![TreeSums::default(); self.trees.len()];
        for (t, queues) in self.trees.iter().enumerate() {
            for q in queues {
                let (spec, used) = (&self.specs[*q as usize], &self.usage[*q as usize]);
                let flavors = spec.nominal.0.len().max(used.0.len());
                for f in (0..flavors).map(Flavor::at) {
                    let s = &mut sums[t];
                    s.pool.set(f, s.pool.get(f) + self.own_lendable(*q, f));
                    s.above.set(f, s.above.get(f) + self.own_above(*q, f, used.get(f)));
                }
            }
        }
        self.sums = sums;
    }

    /// Moves queue `q`'s part of its tree's sums from what it held (`before`) to what it holds now.
    pub(super) fn shift_sums(&mut self, q: QueueId, before: &Resources) {
        let Some(t) = self.tree_of.get(q as usize).copied().flatten() else { return };
        let now = self.usage[q as usize].clone();
        let flavors = before.0.len().max(now.0.len());
        for f in (0..flavors).map(Flavor::at) {
            let (old, new) = (self.own_above(q, f, before.get(f)), self.own_above(q, f, now.get(f)));
            if old != new {
                let s = &mut self.sums[t].above;
                s.set(f, s.get(f) + new - old);
            }
        }
    }

    /// What `q`'s cohort tree may lend of `f` at `now`, and what its queues hold beyond what they keep: the kept
    /// sums, or a walk over the tree while a grant is active (nominal quotas then change with time).
    pub(super) fn lending(&self, q: QueueId, f: Flavor, now: Time) -> (u64, u64) {
        let tree = self.tree_of.get(q as usize).copied().flatten();
        if let Some(s) = tree.and_then(|t| self.sums.get(t)).filter(|_| self.grants.is_empty()) {
            return (s.pool.get(f), s.above.get(f));
        }
        let cohort = self.cohort_of(q);
        let pool = cohort.iter().map(|p| self.lendable(*p, f, now)).sum();
        let kept = |p: QueueId| self.nominal(p, f, now) - self.lendable(p, f, now);
        let above = cohort.iter().map(|p| self.usage[*p as usize].get(f).saturating_sub(kept(*p))).sum();
        (pool, above)
    }
}
