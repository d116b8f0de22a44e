//! Usage steps of one (pool, flavor) in ordered blocks, each with its sum and its highest and lowest running sum.

/// Steps per block (a block splits at twice this). Small in tests, so they split blocks often.
#[cfg(not(test))]
const BLOCK: usize = 64;
#[cfg(test)]
const BLOCK: usize = 4;

/// Changes of usage at instants (millisecond keys), in ordered blocks: the peak from a time to another, and a change
/// of one step, each cost a block's length plus the number of blocks, and a copy is a copy of a few vectors. A step
/// that comes back to zero is dropped.
#[derive(Debug, Clone, Default)]
pub(crate) struct Steps {
    blocks: Vec<Block>,
}

impl PartialEq for Steps {
    /// The same steps, however they fall into blocks.
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
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

impl Steps {
    /// Steps from `(key, delta)` pairs sorted by key, each key once; zero deltas are left out.
    pub(crate) fn of_sorted(steps: impl IntoIterator<Item = (i64, i64)>) -> Self {
        let (keys, deltas): (Vec<i64>, Vec<i64>) = steps.into_iter().filter(|(_, d)| *d != 0).unzip();
        let blocks =
            keys.chunks(BLOCK).zip(deltas.chunks(BLOCK)).map(|(k, d)| Block::of(k.to_vec(), d.to_vec()));
        Steps { blocks: blocks.collect() }
    }

    /// Whether there are no steps.
    pub(crate) fn is_empty(&self) -> bool {
        self.blocks.iter().all(|b| b.keys.is_empty())
    }

    /// The steps in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.blocks.iter().flat_map(|b| b.keys.iter().copied().zip(b.deltas.iter().copied()))
    }

    /// Adds `v` to the step at `at` (dropping it when it comes to zero).
    pub(crate) fn shift(&mut self, at: i64, v: i64) {
        if v == 0 {
            return;
        }
        if self.blocks.is_empty() {
            self.blocks.push(Block::default());
        }
        // The last block that starts at or before `at`, else the first.
        let i = self.blocks.partition_point(|b| b.keys.first().is_some_and(|k| *k <= at)).saturating_sub(1);
        let b = &mut self.blocks[i];
        match b.keys.binary_search(&at) {
            Ok(j) if b.deltas[j] + v == 0 => {
                b.keys.remove(j);
                b.deltas.remove(j);
            }
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
        } else if b.keys.is_empty() {
            // No block is ever empty: a reader adding a block's lowest sum to its running sum needs one.
            self.blocks.remove(i);
        } else {
            b.refresh();
        }
    }

    /// Folds every step at or before `at` into one step at `at` (their sum; none when it is zero).
    pub(crate) fn fold_until(&mut self, at: i64) {
        let whole = self.blocks.partition_point(|b| b.keys.last().is_some_and(|k| *k <= at));
        let mut sum: i64 = self.blocks.drain(..whole).map(|b| b.sum).sum();
        if let Some(b) = self.blocks.first_mut() {
            let part = b.keys.partition_point(|k| *k <= at);
            if part > 0 {
                b.keys.drain(..part);
                sum += b.deltas.drain(..part).sum::<i64>();
                b.refresh();
            }
        }
        self.shift(at, sum);
    }

    /// The highest running sum at `s` (the steps at or before it) and after each step before `e`.
    pub(crate) fn peak_in(&self, s: i64, e: i64) -> i64 {
        let (mut run, mut peak) = (0i64, None::<i64>);
        for b in &self.blocks {
            let (Some(first), Some(last)) = (b.keys.first(), b.keys.last()) else { continue };
            if *first >= e {
                break;
            }
            if *last <= s {
                run += b.sum;
                continue;
            }
            if *first > s && *last < e {
                let at_s = *peak.get_or_insert(run);
                peak = Some(at_s.max(run + b.peak));
                run += b.sum;
                continue;
            }
            for (k, d) in b.keys.iter().zip(&b.deltas).take_while(|(k, _)| **k < e) {
                if *k > s {
                    let at_s = *peak.get_or_insert(run);
                    peak = Some(at_s.max(run + d));
                }
                run += d;
            }
        }
        peak.unwrap_or(run)
    }

    /// A walk forward from the first step.
    pub(crate) fn cursor(&self) -> Cursor<'_> {
        Cursor { blocks: &self.blocks, block: 0, at: 0, run: 0 }
    }
}

/// A walk forward through one flavor's steps: `run` sums every step before the next one it reads.
pub(crate) struct Cursor<'a> {
    blocks: &'a [Block],
    block: usize,
    at: usize,
    pub(crate) run: i64,
}

impl Cursor<'_> {
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
    pub(crate) fn read_to(&mut self, t: i64) {
        let _ = self.walk(|_, b| b.keys.last().is_some_and(|k| *k <= t), |k, _| k <= t);
    }

    /// Reads up to the first step before `end` after which the sum exceeds `limit`, and returns its time.
    pub(crate) fn first_above(&mut self, limit: i64, end: i64) -> Option<i64> {
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
    pub(crate) fn first_within(&mut self, limit: i64) -> Option<i64> {
        let (k, run) = self.walk(|run, b| run + b.low > limit, |_, run| run > limit)?;
        self.take(run);
        Some(k)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::rng::SplitMix64;

    /// The plain definition of [`Steps::peak_in`] over a map.
    fn peak_by_definition(m: &BTreeMap<i64, i64>, s: i64, e: i64) -> i64 {
        let at = |x: i64| m.range(..=x).map(|(_, d)| d).sum::<i64>();
        std::iter::once(s).chain(m.range(s + 1..e).map(|(k, _)| *k)).map(at).max().unwrap_or(0)
    }

    #[test]
    fn steps_answer_as_an_ordered_map_through_changes_and_folds() {
        let mut rng = SplitMix64::new(3);
        for case in 0..300 {
            let (mut steps, mut map) = (Steps::default(), BTreeMap::<i64, i64>::new());
            for op in 0..80 {
                if rng.below(10) == 0 {
                    let at = rng.below(400) as i64;
                    steps.fold_until(at);
                    let sum: i64 = map.range(..=at).map(|(_, d)| d).sum();
                    map.retain(|k, _| *k > at);
                    if sum != 0 {
                        map.insert(at, sum);
                    }
                } else {
                    let (at, v) = (rng.below(500) as i64, rng.below(9) as i64 - 4);
                    steps.shift(at, v);
                    *map.entry(at).or_default() += v;
                    map.retain(|_, d| *d != 0);
                }
                let got: Vec<(i64, i64)> = steps.iter().collect();
                let want: Vec<(i64, i64)> = map.iter().map(|(k, d)| (*k, *d)).collect();
                assert_eq!(got, want, "case {case} op {op}");
                for _ in 0..3 {
                    let (s, e) = (rng.below(520) as i64 - 10, rng.below(520) as i64);
                    let e = e.max(s + 1);
                    assert_eq!(
                        steps.peak_in(s, e),
                        peak_by_definition(&map, s, e),
                        "case {case} op {op} [{s}, {e})"
                    );
                }
            }
            assert_eq!(steps.is_empty(), map.is_empty(), "case {case}");
        }
    }

    #[test]
    fn steps_built_at_once_are_those_shifted_in_one_by_one() {
        let pairs = [(1, 3), (2, 0), (5, -1), (9, 2), (12, -4), (13, 1), (20, 5), (21, -6), (30, 1)];
        let mut one = Steps::default();
        pairs.iter().for_each(|(k, d)| one.shift(*k, *d));
        let all = Steps::of_sorted(pairs);
        assert_eq!(all.iter().collect::<Vec<_>>(), one.iter().collect::<Vec<_>>());
        assert!(all.iter().all(|(_, d)| d != 0), "a zero step is left out");
    }
}
