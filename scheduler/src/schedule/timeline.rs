//! Backfill's view of the future: usage per (pool, flavor) over time, from running jobs and reservations.

use std::collections::BTreeMap;

// Keys are small (pool, flavor) pairs read in every query: a fast hash, not SipHash, and no order depends on it.
use rustc_hash::FxHashMap as HashMap;

use super::steps::{Cursor, Steps};
use crate::model::{PoolId, Time};
use crate::queue::{Flavor, Resources};

/// Milliseconds, so times can key an ordered map.
pub(crate) fn key(t: Time) -> i64 {
    // Clamped well inside i64, so `key + 1` and sums of keys cannot overflow (about 146 million years).
    ((t * 1000.0).round()).clamp(-4.6e18, 4.6e18) as i64
}

fn time(k: i64) -> Time {
    k as f64 / 1000.0
}

/// Usage steps per (pool, flavor) and the capacity they are measured against. Usage at the origin (the cycle's
/// `now`) is kept as a base, so queries need not sum the past.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    origin: i64,
    capacity: HashMap<(PoolId, Flavor), u64>,
    base: HashMap<(PoolId, Flavor), i64>,
    /// Changes after the origin.
    steps: HashMap<(PoolId, Flavor), Steps>,
}

/// Capacity per (pool, flavor) of a cluster: its nodes' CPU and their placeable GPUs, in key order.
pub(crate) fn capacity_of(cluster: &crate::model::Cluster) -> Vec<((PoolId, Flavor), u64)> {
    let mut caps: BTreeMap<(PoolId, usize), ((PoolId, Flavor), u64)> = BTreeMap::new();
    let mut count = |p: PoolId, f: Flavor, v: u64| caps.entry((p, f.index())).or_insert(((p, f), 0)).1 += v;
    for n in &cluster.nodes {
        count(n.pool, Flavor::Cpu, n.cpu_milli);
        for g in n.gpus.iter().filter(|g| g.health.is_placeable()) {
            count(n.pool, Flavor::Gpu(g.model), u64::from(crate::model::GPU_MILLI));
        }
    }
    caps.into_values().collect()
}

impl Timeline {
    /// An empty timeline whose past ends at `now`.
    pub fn at(now: Time) -> Self {
        Timeline { origin: key(now), ..Timeline::default() }
    }

    fn shift(&mut self, pool: PoolId, f: Flavor, at: i64, v: i64) {
        if at <= self.origin {
            *self.base.entry((pool, f)).or_default() += v;
        } else {
            self.steps.entry((pool, f)).or_default().shift(at, v);
        }
    }

    /// Sets the capacity of a flavor in a pool.
    pub fn set_capacity(&mut self, pool: PoolId, f: Flavor, amount: u64) {
        self.capacity.insert((pool, f), amount);
    }

    /// Capacity of a flavor in a pool.
    pub fn capacity(&self, pool: PoolId, f: Flavor) -> u64 {
        self.capacity.get(&(pool, f)).copied().unwrap_or(0)
    }

    /// What of `f` is free in `pool` now (capacity less what runs now; later reservations not counted).
    pub fn free_now(&self, pool: PoolId, f: Flavor) -> u64 {
        (self.capacity(pool, f) as i64 - self.base.get(&(pool, f)).copied().unwrap_or(0)).max(0) as u64
    }

    /// Marks `req` used in `pool` over `[start, end)`.
    pub fn add(&mut self, pool: PoolId, req: &Resources, start: Time, end: Time) {
        self.change(pool, req, start, end, 1);
    }

    /// Marks each `(pool, req, start, end)` used, as [`Timeline::add`] one by one would, in one pass: the steps of a
    /// (pool, flavor) are sorted and merged once, and built into their map at once when it was empty (a cycle's
    /// running jobs).
    pub fn add_all<'a>(&mut self, spans: impl IntoIterator<Item = (PoolId, &'a Resources, Time, Time)>) {
        let mut steps: HashMap<(PoolId, Flavor), Vec<(i64, i64)>> = HashMap::default();
        for (pool, req, start, end) in spans {
            let (s, e) = (key(start), key(end).max(key(start) + 1));
            for (f, v) in req.flavors().filter(|(f, _)| *f != Flavor::Memory) {
                for (at, d) in [(s, v as i64), (e, -(v as i64))] {
                    if at <= self.origin {
                        *self.base.entry((pool, f)).or_default() += d;
                    } else {
                        steps.entry((pool, f)).or_default().push((at, d));
                    }
                }
            }
        }
        for (pf, mut list) in steps {
            list.sort_unstable_by_key(|(at, _)| *at);
            let mut merged: Vec<(i64, i64)> = Vec::with_capacity(list.len());
            for (at, d) in list {
                match merged.last_mut() {
                    Some((last, sum)) if *last == at => *sum += d,
                    _ => merged.push((at, d)),
                }
            }
            let steps = self.steps.entry(pf).or_default();
            if steps.is_empty() {
                *steps = Steps::of_sorted(merged);
            } else {
                merged.into_iter().for_each(|(at, d)| steps.shift(at, d));
            }
        }
    }

    /// Marks what running jobs hold used from the origin (`now`) until each one's estimated end, and for at least a
    /// second: what [`Timeline::add_all`] makes of every running job's `(pool, charge, now, est_end.max(now + 1))`,
    /// from the holdings kept as jobs start and stop instead of from every job.
    pub(crate) fn add_held(&mut self, h: &super::holdings::Holdings, now: Time) {
        // Every start is the origin; an end is the job's own or a second from now, whichever is later.
        let first = key(now + 1.0);
        for (pf, held) in &h.held {
            *self.base.entry(*pf).or_default() += held;
        }
        for (pf, ends) in h.ends.iter().filter(|(_, e)| !e.is_empty()) {
            let steps = self.steps.entry(*pf).or_default();
            if steps.is_empty() {
                // A copy of a few vectors, not a rebuild: ends that are due (or overdue) fold into a second from now.
                *steps = ends.clone();
                steps.fold_until(first);
            } else {
                ends.iter().for_each(|(at, d)| steps.shift(at.max(first), d));
            }
        }
    }

    /// Whether two timelines count the same usage (entries of zero, and empty step lists, count as absent).
    #[cfg(debug_assertions)]
    pub(crate) fn same_usage(&self, other: &Timeline) -> bool {
        let base = |t: &Timeline| -> BTreeMap<(PoolId, usize), i64> {
            t.base.iter().filter(|(_, v)| **v != 0).map(|((p, f), v)| ((*p, f.index()), *v)).collect()
        };
        let steps = |t: &Timeline| -> BTreeMap<(PoolId, usize), BTreeMap<i64, i64>> {
            t.steps
                .iter()
                .map(|((p, f), m)| ((*p, f.index()), m.iter().filter(|(_, d)| *d != 0).collect()))
                .filter(|(_, m): &(_, BTreeMap<i64, i64>)| !m.is_empty())
                .collect()
        };
        self.origin == other.origin && base(self) == base(other) && steps(self) == steps(other)
    }

    /// Takes back usage added with [`Timeline::add`].
    pub fn remove(&mut self, pool: PoolId, req: &Resources, start: Time, end: Time) {
        self.change(pool, req, start, end, -1);
    }

    fn change(&mut self, pool: PoolId, req: &Resources, start: Time, end: Time, sign: i64) {
        let (s, e) = (key(start), key(end).max(key(start) + 1));
        for (f, v) in req.flavors().filter(|(f, _)| *f != Flavor::Memory) {
            self.shift(pool, f, s, sign * v as i64);
            self.shift(pool, f, e, -sign * v as i64);
        }
    }

    fn max_used(&self, pool: PoolId, f: Flavor, s: i64, e: i64) -> i64 {
        let base = self.base.get(&(pool, f)).copied().unwrap_or(0);
        // Every step lies after the origin: from it, the peak is over every step before `e`.
        base + self.steps.get(&(pool, f)).map_or(0, |steps| steps.peak_in(s, e))
    }

    /// Whether `req` fits in `pool` over the whole of `[start, start + duration)`.
    pub fn fits(&self, pool: PoolId, req: &Resources, start: Time, duration: Time) -> bool {
        let (s, e) = (key(start), key(start + duration).max(key(start) + 1));
        let needed = || req.flavors().filter(|(f, _)| *f != Flavor::Memory);
        let free_now =
            |f: Flavor| self.capacity(pool, f) as i64 - self.base.get(&(pool, f)).copied().unwrap_or(0);
        if s <= self.origin && needed().any(|(f, v)| free_now(f) < v as i64) {
            return false;
        }
        needed().all(|(f, v)| self.capacity(pool, f) as i64 - self.max_used(pool, f, s, e) >= v as i64)
    }

    /// The earliest time at or after `from` when `req` fits in `pool` for `duration`; `None` if it never does
    /// (it asks for more than the pool's capacity, or runs forever). One sweep over the usage steps: a
    /// candidate start survives until a segment over capacity falls inside its window, then moves past it.
    pub fn earliest(&self, pool: PoolId, req: &Resources, from: Time, duration: Time) -> Option<Time> {
        if !duration.is_finite() {
            return None;
        }
        let needed: Vec<(Flavor, i64)> =
            req.flavors().filter(|(f, _)| *f != Flavor::Memory).map(|(f, v)| (f, v as i64)).collect();
        if needed.iter().any(|(f, v)| (self.capacity(pool, *f) as i64) < *v) {
            return None;
        }
        let none = Steps::default();
        // Per flavor: how far usage may rise above what runs now, and a walk through its steps.
        let mut walks: Vec<(i64, Cursor<'_>)> = needed
            .iter()
            .map(|(f, v)| {
                let limit =
                    self.capacity(pool, *f) as i64 - v - self.base.get(&(pool, *f)).copied().unwrap_or(0);
                (limit, self.steps.get(&(pool, *f)).unwrap_or(&none).cursor())
            })
            .collect();
        let start = key(from);
        // A candidate survives while no flavor's usage exceeds its limit at it or at a step inside its window;
        // else the next candidate is where that flavor's usage falls back within it. Walks only go forward: the
        // steps a walk read past the candidate were all within the limit.
        let mut candidate = start;
        'candidates: loop {
            let end = key(time(candidate) + duration).max(candidate + 1);
            for (limit, walk) in &mut walks {
                walk.read_to(candidate);
                if walk.run > *limit || walk.first_above(*limit, end).is_some() {
                    candidate = walk.first_within(*limit)?;
                    continue 'candidates;
                }
            }
            // A start at the query's own instant is `from` itself, not `from` rounded to the millisecond grid.
            return Some(if candidate == start { from } else { time(candidate) });
        }
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
        let mut t = Timeline::at(0.0);
        t.set_capacity(0, Flavor::Gpu(0), 8000);
        t.add(0, &gpus(4), 0.0, 100.0);
        t.add(0, &gpus(2), 0.0, 50.0);
        assert_eq!(t.earliest(0, &gpus(2), 0.0, 10.0), Some(0.0));
        assert_eq!(t.earliest(0, &gpus(4), 0.0, 10.0), Some(50.0));
        assert_eq!(t.earliest(0, &gpus(8), 0.0, 10.0), Some(100.0));
        assert_eq!(t.earliest(0, &gpus(9), 0.0, 10.0), None);
    }

    #[test]
    fn a_job_that_fits_now_starts_exactly_now_not_a_rounded_instant_later() {
        let mut t = Timeline::at(15_735.104_595);
        t.set_capacity(0, Flavor::Gpu(0), 4000);
        assert_eq!(t.earliest(0, &gpus(3), 15_735.104_595, 2000.0), Some(15_735.104_595));
    }

    #[test]
    fn a_reservation_keeps_later_work_out_of_its_window_but_not_out_of_the_hole_before_it() {
        let mut t = Timeline::at(0.0);
        t.set_capacity(0, Flavor::Gpu(0), 4000);
        t.add(0, &gpus(3), 0.0, 100.0);
        t.add(0, &gpus(4), 100.0, 200.0);
        assert!(t.fits(0, &gpus(1), 0.0, 100.0), "a short job backfills the hole");
        assert!(!t.fits(0, &gpus(1), 0.0, 101.0), "but may not run into the reservation");
        assert_eq!(t.earliest(0, &gpus(1), 0.0, 150.0), Some(200.0));
    }
}

#[cfg(test)]
mod oracle {
    use super::*;
    use crate::rng::SplitMix64;

    /// The plain definition: try `from` and every later step time, in order.
    fn earliest_by_definition(
        t: &Timeline,
        pool: PoolId,
        req: &Resources,
        from: Time,
        duration: Time,
    ) -> Option<Time> {
        let needed: Vec<Flavor> = req.flavors().map(|(f, _)| f).filter(|f| *f != Flavor::Memory).collect();
        if req.flavors().any(|(f, v)| f != Flavor::Memory && t.capacity(pool, f) < v) {
            return None;
        }
        let mut times: Vec<i64> = needed
            .iter()
            .filter_map(|f| t.steps.get(&(pool, *f)))
            .flat_map(|s| s.iter().map(|(k, _)| k).filter(|k| *k > key(from)))
            .collect();
        times.sort_unstable();
        std::iter::once(from).chain(times.into_iter().map(time)).find(|c| t.fits(pool, req, *c, duration))
    }

    /// The plain definition of the peak over `[s, e)`: usage at every step time inside it, and at `s`.
    fn max_used_by_definition(t: &Timeline, pool: PoolId, f: Flavor, s: i64, e: i64) -> i64 {
        let base = t.base.get(&(pool, f)).copied().unwrap_or(0);
        let steps: BTreeMap<i64, i64> =
            t.steps.get(&(pool, f)).map(|s| s.iter().collect()).unwrap_or_default();
        let at = |x: i64| base + steps.range(..=x).map(|(_, d)| d).sum::<i64>();
        std::iter::once(s.max(t.origin))
            .chain(steps.range(s.max(t.origin) + 1..e).map(|(k, _)| *k))
            .map(at)
            .max()
            .unwrap_or(base)
    }

    #[test]
    fn adding_all_at_once_gives_the_timeline_adding_one_by_one_gives() {
        let mut rng = SplitMix64::new(5);
        for case in 0..200 {
            let now = rng.below(100) as f64;
            let spans: Vec<(PoolId, Resources, Time, Time)> = (0..rng.below(80))
                .map(|_| {
                    let f = Flavor::Gpu(rng.below(2) as u8);
                    let r = Resources::default().with(f, 1000 * (1 + rng.below(4))).with(Flavor::Cpu, 500);
                    let s = rng.below(50) as f64 * 10.0;
                    (rng.below(2) as PoolId, r, s, s + rng.below(30) as f64 * 10.0)
                })
                .collect();
            let (mut one, mut all) = (Timeline::at(now), Timeline::at(now));
            // Half the cases start empty (the maps built at once), half after some steps (merged into them).
            let head = if case % 2 == 0 { 0 } else { spans.len() / 3 };
            for (p, r, s, e) in &spans[..head] {
                one.add(*p, r, *s, *e);
                all.add(*p, r, *s, *e);
            }
            for (p, r, s, e) in &spans[head..] {
                one.add(*p, r, *s, *e);
            }
            all.add_all(spans[head..].iter().map(|(p, r, s, e)| (*p, r, *s, *e)));
            assert_eq!(one.base, all.base, "case {case}");
            assert_eq!(one.steps, all.steps, "case {case}");
            for (p, f) in one.steps.keys() {
                let (qs, qe) = (one.origin, key(rng.below(900) as f64));
                let qe = qe.max(qs + 1);
                assert_eq!(one.max_used(*p, *f, qs, qe), all.max_used(*p, *f, qs, qe), "case {case}");
            }
        }
    }

    #[test]
    fn the_running_peaks_answer_as_the_definition_through_changes() {
        let mut rng = SplitMix64::new(11);
        let f = Flavor::Gpu(0);
        for case in 0..500 {
            let mut t = Timeline::at(100.0);
            t.set_capacity(0, f, 64_000);
            for step in 0..60 {
                let s = rng.below(60) as f64 * 10.0;
                let d = 10.0 + rng.below(50) as f64 * 10.0;
                let r = Resources::default().with(f, 1000 * (1 + rng.below(4)));
                if rng.below(4) == 0 {
                    t.remove(0, &r, s, s + d);
                } else {
                    t.add(0, &r, s, s + d);
                }
                for _ in 0..3 {
                    let (qs, qe) = (key(rng.below(80) as f64 * 10.0), key(rng.below(900) as f64 * 10.0));
                    // As every caller asks: a window that ends after the origin and after its start.
                    let qe = qe.max(qs.max(t.origin) + 1);
                    assert_eq!(
                        t.max_used(0, f, qs, qe),
                        max_used_by_definition(&t, 0, f, qs, qe),
                        "case {case} step {step}: [{qs}, {qe})"
                    );
                }
            }
        }
    }

    #[test]
    fn the_sweep_finds_the_same_earliest_start_as_the_definition() {
        let mut rng = SplitMix64::new(9);
        for case in 0..2000 {
            let mut t = Timeline::at(0.0);
            t.set_capacity(0, Flavor::Gpu(0), 8000);
            t.set_capacity(0, Flavor::Cpu, 64_000);
            for _ in 0..rng.below(30) {
                let s = if rng.below(2) == 0 { 0.0 } else { rng.below(100) as f64 * 10.0 };
                let d = 10.0 + rng.below(50) as f64 * 10.0;
                let r = Resources::default()
                    .with(Flavor::Gpu(0), 1000 * (1 + rng.below(4)))
                    .with(Flavor::Cpu, 8000 * rng.below(3));
                t.add(0, &r, s, s + d);
            }
            let req = Resources::default()
                .with(Flavor::Gpu(0), 1000 * (1 + rng.below(8)))
                .with(Flavor::Cpu, 8000 * rng.below(4));
            let (from, d) = (rng.below(20) as f64 * 10.0, 10.0 + rng.below(40) as f64 * 10.0);
            assert_eq!(
                t.earliest(0, &req, from, d),
                earliest_by_definition(&t, 0, &req, from, d),
                "case {case}"
            );
        }
    }
}
