//! Backfill's view of the future: how much of each (pool, flavor) is used over time by running jobs until their
//! estimated end and by reservations of jobs ahead in the queue.

use std::collections::{BTreeMap, HashMap};

use crate::model::{PoolId, Time};
use crate::queue::{Flavor, Resources};

/// Milliseconds, so times can key an ordered map.
fn key(t: Time) -> i64 {
    (t * 1000.0).round() as i64
}

fn time(k: i64) -> Time {
    k as f64 / 1000.0
}

/// Usage steps per (pool, flavor) and the capacity they are measured against.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    capacity: HashMap<(PoolId, Flavor), u64>,
    steps: HashMap<(PoolId, Flavor), BTreeMap<i64, i64>>,
}

impl Timeline {
    /// Sets the capacity of a flavor in a pool.
    pub fn set_capacity(&mut self, pool: PoolId, f: Flavor, amount: u64) {
        self.capacity.insert((pool, f), amount);
    }

    /// Capacity of a flavor in a pool.
    pub fn capacity(&self, pool: PoolId, f: Flavor) -> u64 {
        self.capacity.get(&(pool, f)).copied().unwrap_or(0)
    }

    /// Marks `req` used in `pool` over `[start, end)`.
    pub fn add(&mut self, pool: PoolId, req: &Resources, start: Time, end: Time) {
        let (s, e) = (key(start), key(end).max(key(start) + 1));
        for (f, v) in req.flavors().filter(|(f, _)| *f != Flavor::Memory) {
            let steps = self.steps.entry((pool, f)).or_default();
            *steps.entry(s).or_default() += v as i64;
            *steps.entry(e).or_default() -= v as i64;
        }
    }

    /// Takes back usage added with [`Timeline::add`].
    pub fn remove(&mut self, pool: PoolId, req: &Resources, start: Time, end: Time) {
        let (s, e) = (key(start), key(end).max(key(start) + 1));
        for (f, v) in req.flavors().filter(|(f, _)| *f != Flavor::Memory) {
            let steps = self.steps.entry((pool, f)).or_default();
            *steps.entry(s).or_default() -= v as i64;
            *steps.entry(e).or_default() += v as i64;
        }
    }

    fn max_used(&self, pool: PoolId, f: Flavor, s: i64, e: i64) -> i64 {
        let Some(steps) = self.steps.get(&(pool, f)) else { return 0 };
        let mut used: i64 = steps.range(..=s).map(|(_, d)| d).sum();
        let mut peak = used;
        for (_, d) in steps.range(s + 1..e) {
            used += d;
            peak = peak.max(used);
        }
        peak
    }

    /// Whether `req` fits in `pool` over the whole of `[start, start + duration)`.
    pub fn fits(&self, pool: PoolId, req: &Resources, start: Time, duration: Time) -> bool {
        let (s, e) = (key(start), key(start + duration).max(key(start) + 1));
        req.flavors()
            .filter(|(f, _)| *f != Flavor::Memory)
            .all(|(f, v)| self.capacity(pool, f) as i64 - self.max_used(pool, f, s, e) >= v as i64)
    }

    /// The earliest time at or after `from` when `req` fits in `pool` for `duration`; `None` if it never does
    /// (it asks for more than the pool's capacity, or runs forever).
    pub fn earliest(&self, pool: PoolId, req: &Resources, from: Time, duration: Time) -> Option<Time> {
        if !duration.is_finite() {
            return None;
        }
        let needed: Vec<(Flavor, u64)> = req.flavors().filter(|(f, _)| *f != Flavor::Memory).collect();
        if needed.iter().any(|(f, v)| self.capacity(pool, *f) < *v) {
            return None;
        }
        if self.fits(pool, req, from, duration) {
            return Some(from);
        }
        let mut candidates: Vec<i64> = needed
            .iter()
            .filter_map(|(f, _)| self.steps.get(&(pool, *f)))
            .flat_map(|s| s.range(key(from) + 1..).filter(|(_, d)| **d < 0).map(|(k, _)| *k))
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        candidates.into_iter().map(time).find(|t| self.fits(pool, req, *t, duration))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpus(n: u64) -> Resources {
        Resources::default().with(Flavor::Gpu(0), n * 1000)
    }

    #[test]
    fn a_job_starts_when_enough_running_work_has_ended() {
        let mut t = Timeline::default();
        t.set_capacity(0, Flavor::Gpu(0), 8000);
        t.add(0, &gpus(4), 0.0, 100.0);
        t.add(0, &gpus(2), 0.0, 50.0);
        assert_eq!(t.earliest(0, &gpus(2), 0.0, 10.0), Some(0.0));
        assert_eq!(t.earliest(0, &gpus(4), 0.0, 10.0), Some(50.0));
        assert_eq!(t.earliest(0, &gpus(8), 0.0, 10.0), Some(100.0));
        assert_eq!(t.earliest(0, &gpus(9), 0.0, 10.0), None);
    }

    #[test]
    fn a_reservation_keeps_later_work_out_of_its_window_but_not_out_of_the_hole_before_it() {
        let mut t = Timeline::default();
        t.set_capacity(0, Flavor::Gpu(0), 4000);
        t.add(0, &gpus(3), 0.0, 100.0);
        t.add(0, &gpus(4), 100.0, 200.0);
        assert!(t.fits(0, &gpus(1), 0.0, 100.0), "a short job backfills the hole");
        assert!(!t.fits(0, &gpus(1), 0.0, 101.0), "but may not run into the reservation");
        assert_eq!(t.earliest(0, &gpus(1), 0.0, 150.0), Some(200.0));
    }
}
