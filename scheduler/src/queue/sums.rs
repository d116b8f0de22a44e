//! Per cohort tree, what its queues may lend and what they hold beyond what they keep, kept as usage changes.

use super::{Flavor, QueueId, Quotas, Resources};

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
    pub(super) fn own_above(&self, q: QueueId, f: Flavor, used: u64) -> u64 {
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

    /// The sums of `q`'s tree for `f`, when they hold at this moment (no grant changes any nominal quota).
    pub(super) fn tree_sums(&self, q: QueueId, f: Flavor) -> Option<(u64, u64)> {
        if !self.grants.is_empty() {
            return None;
        }
        let s = self.sums.get(self.tree_of.get(q as usize).copied().flatten()?)?;
        Some((s.pool.get(f), s.above.get(f)))
    }
}
