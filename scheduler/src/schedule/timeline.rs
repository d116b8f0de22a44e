//! Backfill's view of the future: usage per (pool, flavor) over time, from running jobs and reservations.

use std::cell::RefCell;
use std::collections::BTreeMap;

// Keys are small (pool, flavor) pairs read in every query: a fast hash, not SipHash, and no order depends on it.
use rustc_hash::FxHashMap as HashMap;

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
    steps: HashMap<(PoolId, Flavor), BTreeMap<i64, i64>>,
    /// Running peaks of each (pool, flavor)'s steps, built when a query from now first needs them and kept up to
    /// date as the steps change: most jobs of a busy cycle ask whether they fit from now.
    peaks: RefCell<HashMap<(PoolId, Flavor), Peaks>>,
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

/// Steps per block of [`Peaks`] (a block splits at twice this). Small in tests, so they split blocks often.
#[cfg(not(test))]
const BLOCK: usize = 256;
#[cfg(test)]
const BLOCK: usize = 4;

/// The steps after the origin in ordered blocks, each with its sum and its highest running sum: the peak from now to
/// a time, and a change of one step, each cost a block's length plus the number of blocks.
#[derive(Debug, Clone, Default)]
struct Peaks {
    blocks: Vec<Block>,
}

/// A run of consecutive steps.
#[derive(Debug, Clone, Default)]
struct Block {
    keys: Vec<i64>,
    deltas: Vec<i64>,
    /// The sum of `deltas`.
    sum: i64,
    /// The highest running sum of `deltas` from the block's start (`i64::MIN` when empty).
    peak: i64,
    /// The lowest (`i64::MAX` when empty).
    low: i64,
}

impl Block {
    fn of(keys: Vec<i64>, deltas: Vec<i64>) -> Self {
        let mut b = Block { keys, deltas, sum: 0, peak: i64::MIN, low: i64::MAX };
        b.refresh();
        b
    }

    fn refresh(&mut self) {
        let (mut sum, mut peak, mut low) = (0i64, i64::MIN, i64::MAX);
        for d in &self.deltas {
            sum += d;
            peak = peak.max(sum);
            low = low.min(sum);
        }
        (self.sum, self.peak, self.low) = (sum, peak, low);
    }
}

impl Peaks {
    fn of(steps: &BTreeMap<i64, i64>) -> Self {
        let (keys, deltas): (Vec<i64>, Vec<i64>) = steps.iter().map(|(k, d)| (*k, *d)).unzip();
        let blocks =
            keys.chunks(BLOCK).zip(deltas.chunks(BLOCK)).map(|(k, d)| Block::of(k.to_vec(), d.to_vec()));
        Peaks { blocks: blocks.collect() }
    }

    /// The highest usage above the base over the steps before `e` (0 when none rises above it).
    fn before(&self, e: i64) -> i64 {
        let (mut run, mut peak) = (0i64, 0i64);
        for b in &self.blocks {
            if b.keys.last().is_some_and(|last| *last < e) {
                peak = peak.max(run + b.peak);
                run += b.sum;
                continue;
            }
            for (_, d) in b.keys.iter().zip(&b.deltas).take_while(|(k, _)| **k < e) {
                run += d;
                peak = peak.max(run);
            }
            break;
        }
        peak
    }

    /// Adds `v` to the step at `at`.
    fn shift(&mut self, at: i64, v: i64) {
        if self.blocks.is_empty() {
            self.blocks.push(Block::default());
        }
        // The last block that starts at or before `at`, else the first.
        let i = self.blocks.partition_point(|b| b.keys.first().is_some_and(|k| *k <= at)).saturating_sub(1);
        let b = &mut self.blocks[i];
        match b.keys.binary_search(&at) {
            Ok(j) => b.deltas[j] += v,
            Err(j) => {
                b.keys.insert(j, at);
                b.deltas.insert(j, v);
            }
        }
        if b.keys.len() > 2 * BLOCK {
            let tail = Block::of(b.keys.split_off(BLOCK), b.deltas.split_off(BLOCK));
            b.refresh();
            self.blocks.insert(i + 1, tail);
        } else {
            b.refresh();
        }
    }
}

/// A walk forward through one flavor's steps: `run` sums every step before the next one it reads.
struct Cursor<'a> {
    blocks: &'a [Block],
    block: usize,
    at: usize,
    run: i64,
}

impl<'a> Cursor<'a> {
    fn new(peaks: &'a Peaks) -> Self {
        Cursor { blocks: &peaks.blocks, block: 0, at: 0, run: 0 }
    }

    /// Reads steps while `whole` says a block can be read at once (from the block's start) or `one` says a step can
    /// be (the running sum after it): stops before the first step neither allows, returning its time and the running
    /// sum with it, or `None` past the last step.
    fn walk(
        &mut self,
        whole: impl Fn(i64, &Block) -> bool,
        one: impl Fn(i64, i64) -> bool,
    ) -> Option<(i64, i64)> {
        let blocks = self.blocks;
        while let Some(b) = blocks.get(self.block) {
            if self.at == 0 && whole(self.run, b) {
                self.run += b.sum;
                self.block += 1;
                continue;
            }
            while let (Some(k), Some(d)) = (b.keys.get(self.at), b.deltas.get(self.at)) {
                if !one(*k, self.run + d) {
                    return Some((*k, self.run + d));
                }
                self.run += d;
                self.at += 1;
            }
            (self.block, self.at) = (self.block + 1, 0);
        }
        None
    }

    /// Reads the step `walk` stopped before.
    fn take(&mut self, run: i64) {
        self.run = run;
        self.at += 1;
        if self.blocks.get(self.block).is_some_and(|b| self.at >= b.keys.len()) {
            (self.block, self.at) = (self.block + 1, 0);
        }
    }

    /// Reads every step at or before `t`.
    fn read_to(&mut self, t: i64) {
        let _ = self.walk(|_, b| b.keys.last().is_some_and(|k| *k <= t), |k, _| k <= t);
    }

    /// Reads up to the first step before `end` after which the sum exceeds `limit`, and returns its time.
    fn first_above(&mut self, limit: i64, end: i64) -> Option<i64> {
        let found = self.walk(
            |run, b| b.keys.last().is_some_and(|k| *k < end) && run + b.peak <= limit,
            |k, run| k < end && run <= limit,
        )?;
        (found.0 < end).then(|| {
            self.take(found.1);
            found.0
        })
    }

    /// Reads up to the first step after which the sum is at most `limit`, and returns its time.
    fn first_within(&mut self, limit: i64) -> Option<i64> {
        let (k, run) = self.walk(|run, b| run + b.low > limit, |_, run| run > limit)?;
        self.take(run);
        Some(k)
    }
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
            *self.steps.entry((pool, f)).or_default().entry(at).or_default() += v;
            if let Some(p) = self.peaks.get_mut().get_mut(&(pool, f)) {
                p.shift(at, v);
            }
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
            // Peaks are rebuilt from the steps when next asked for.
            self.peaks.get_mut().remove(&pf);
            let map = self.steps.entry(pf).or_default();
            if map.is_empty() {
                *map = merged.into_iter().collect();
            } else {
                for (at, d) in merged {
                    *map.entry(at).or_default() += d;
                }
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
            // A clone copies the tree's nodes as they are; collecting a range would sort it again.
            let mut due = ends.clone();
            let mut steps = due.split_off(&(first + 1));
            let overdue: i64 = due.values().sum();
            if overdue != 0 {
                steps.insert(first, overdue);
            }
            self.peaks.get_mut().remove(pf);
            let map = self.steps.entry(*pf).or_default();
            if map.is_empty() {
                *map = steps;
            } else {
                for (at, d) in steps {
                    *map.entry(at).or_default() += d;
                }
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
                .map(|((p, f), m)| {
                    ((*p, f.index()), m.iter().filter(|(_, d)| **d != 0).map(|(k, d)| (*k, *d)).collect())
                })
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
        let Some(steps) = self.steps.get(&(pool, f)) else { return base };
        if s <= self.origin {
            // Every step lies after the origin: the peak from now to `e` is a running peak.
            let mut peaks = self.peaks.borrow_mut();
            return base + peaks.entry((pool, f)).or_insert_with(|| Peaks::of(steps)).before(e);
        }
        let before = if s > self.origin { steps.range(..=s).map(|(_, d)| d).sum::<i64>() } else { 0 };
        let mut used = base + before;
        let mut peak = used;
        for (_, d) in steps.range(s.max(self.origin) + 1..e) {
            used += d;
            peak = peak.max(used);
        }
        peak
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
        let mut cache = self.peaks.borrow_mut();
        for (f, _) in &needed {
            if let Some(steps) = self.steps.get(&(pool, *f)) {
                cache.entry((pool, *f)).or_insert_with(|| Peaks::of(steps));
            }
        }
        let none = Peaks::default();
        // Per flavor: how far usage may rise above what runs now, and a walk through its steps.
        let mut walks: Vec<(i64, Cursor<'_>)> = needed
            .iter()
            .map(|(f, v)| {
                let limit =
                    self.capacity(pool, *f) as i64 - v - self.base.get(&(pool, *f)).copied().unwrap_or(0);
                (limit, Cursor::new(cache.get(&(pool, *f)).unwrap_or(&none)))
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
            .flat_map(|s| s.keys().copied().filter(|k| *k > key(from)))
            .collect();
        times.sort_unstable();
        std::iter::once(from).chain(times.into_iter().map(time)).find(|c| t.fits(pool, req, *c, duration))
    }

    /// The plain definition of the peak over `[s, e)`: usage at every step time inside it, and at `s`.
    fn max_used_by_definition(t: &Timeline, pool: PoolId, f: Flavor, s: i64, e: i64) -> i64 {
        let base = t.base.get(&(pool, f)).copied().unwrap_or(0);
        let steps = t.steps.get(&(pool, f)).cloned().unwrap_or_default();
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
