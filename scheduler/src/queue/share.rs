//! Fair share: past usage that halves every half-life, and the order of queues by it through nested cohorts.
// The order is Slurm's "fair tree": at each level of the cohort tree, the sibling with the least usage per unit of
// weight comes first, and a whole subtree outranks the next sibling before that one's queues get a turn. A cohort's
// weight is the sum of its queues' weights, so two teams of equal weight share alike however many queues each has.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{Flavor, Quotas, Resources};
use crate::model::{QueueId, Time};

/// The root of a cohort path: `research` of `research/vision`.
pub(super) fn root(path: &str) -> &str {
    path.split('/').next().unwrap_or(path)
}

/// Usage that fades: resource-seconds per flavor (flavor units × seconds, indexed as [`Resources`]) as of `at`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Decayed {
    /// When `amounts` were last brought up to date.
    pub at: Time,
    /// Resource-seconds per flavor at `at`.
    pub amounts: Vec<f64>,
}

impl Decayed {
    /// Its amounts at `t` (at or after `at`), each halved once per `half_life` seconds since `at`.
    pub fn value(&self, t: Time, half_life: f64) -> Vec<f64> {
        let d = decay(t - self.at, half_life);
        self.amounts.iter().map(|a| a * d).collect()
    }

    /// Adds `amounts` as they stood at `t`.
    pub fn add(&mut self, t: Time, amounts: &[f64], half_life: f64) {
        let (mine, theirs) = align(self.at, t, half_life);
        self.amounts.iter_mut().for_each(|a| *a *= mine);
        accumulate(&mut self.amounts, amounts, theirs);
        self.at = self.at.max(t);
    }
}

/// The factor by which usage fades over `dt` seconds.
fn decay(dt: Time, half_life: f64) -> f64 {
    (-dt.max(0.0) / half_life).exp2()
}

/// The factors that bring usage as of `mine` and usage as of `theirs` to the later of the two times.
pub fn align(mine: Time, theirs: Time, half_life: f64) -> (f64, f64) {
    if theirs >= mine {
        (decay(theirs - mine, half_life), 1.0)
    } else {
        (1.0, decay(mine - theirs, half_life))
    }
}

/// The decayed seconds, as of `end`, of holding one unit from `start` to `end`: the integral of
/// `2^(-(end - t) / half_life)` over the run.
pub fn decayed_seconds(start: Time, end: Time, half_life: f64) -> f64 {
    (1.0 - decay(end - start, half_life)) * half_life / std::f64::consts::LN_2
}

/// The decayed resource-seconds, as of `end`, of holding `held` from `start` to `end`.
pub fn run_usage(held: &Resources, start: Time, end: Time, half_life: f64) -> Vec<f64> {
    let seconds = decayed_seconds(start, end, half_life);
    held.0.iter().map(|v| *v as f64 * seconds).collect()
}

/// Adds `factor × from` into `into`, flavor by flavor, growing it as needed.
fn accumulate(into: &mut Vec<f64>, from: &[f64], factor: f64) {
    if into.len() < from.len() {
        into.resize(from.len(), 0.0);
    }
    into.iter_mut().zip(from).for_each(|(a, b)| *a += b * factor);
}

/// A cohort node's or queue's totals for fair share.
#[derive(Debug, Clone, Default)]
struct Totals {
    usage: Vec<f64>,
    scale: Vec<f64>,
    weight: f64,
}

impl Totals {
    fn add(&mut self, usage: &[f64], scale: &[f64], weight: f64) {
        accumulate(&mut self.usage, usage, 1.0);
        accumulate(&mut self.scale, scale, 1.0);
        self.weight += weight;
    }

    /// The largest usage over scale among flavors, over the weight.
    fn score(&self) -> f64 {
        let dominant = self
            .usage
            .iter()
            .enumerate()
            .filter(|(_, u)| **u > 0.0)
            .map(|(i, u)| match self.scale.get(i).copied().unwrap_or(0.0) {
                s if s > 0.0 => u / s,
                _ => f64::INFINITY,
            })
            .fold(0.0, f64::max);
        dominant / self.weight
    }
}

impl Quotas {
    /// Sets how fast past usage fades (`None`: fair share counts only what runs now, past usage not at all).
    pub fn set_half_life(&mut self, half_life: Option<f64>) {
        self.half_life = half_life.filter(|h| *h > 0.0 && h.is_finite());
    }

    /// The half-life of past usage, seconds.
    pub fn half_life(&self) -> Option<f64> {
        self.half_life
    }

    /// Adds past usage of queue `q` (decayed resource-seconds per flavor as they stood at `at`), e.g. runs that ended
    /// before this book was built. Nothing without a half-life.
    pub fn add_usage(&mut self, q: QueueId, at: Time, amounts: &[f64]) {
        if let (Some(h), Some(d)) = (self.half_life, self.history.get_mut(q as usize)) {
            d.add(at, amounts, h);
        }
    }

    /// Adds a run of queue `q` that held `held` from `start` to `end` to its past usage.
    pub fn record_run(&mut self, q: QueueId, held: &Resources, start: Time, end: Time) {
        if let Some(h) = self.half_life {
            self.add_usage(q, end, &run_usage(held, start, end, h));
        }
    }

    /// Queue `q`'s past usage at `now` (runs that ended, decayed; empty without a half-life).
    pub fn history(&self, q: QueueId, now: Time) -> Vec<f64> {
        match (self.half_life, self.history.get(q as usize)) {
            (Some(h), Some(d)) => d.value(now, h),
            _ => Vec::new(),
        }
    }

    /// Each queue's rank in fair-share order at `now` (equal usage per weight: equal rank), given the runs live now
    /// as `(queue, held, started)`.
    ///
    /// With a half-life, a queue's usage is its decayed past usage plus its live runs' decayed usage so far, over
    /// the federation's quota of each flavor; without one, what it holds now over its nominal quota. Either way the
    /// largest flavor counts, over the weight, level by level down its cohort path.
    pub fn fair_ranks<'a>(
        &self,
        now: Time,
        live: impl Iterator<Item = (QueueId, &'a Resources, Time)>,
    ) -> Vec<u32> {
        let n = self.specs.len();
        let mut usage: Vec<Vec<f64>> = Vec::with_capacity(n);
        let mut scale: Vec<Vec<f64>> = Vec::with_capacity(n);
        let nominal = |q: usize| -> Vec<f64> {
            (0..self.usage[q].0.len().max(self.specs[q].nominal.0.len()))
                .map(|i| self.nominal(q as QueueId, Flavor::at(i), now) as f64)
                .collect()
        };
        match self.half_life {
            Some(h) => {
                let mut total: Vec<f64> = Vec::new();
                for q in 0..n {
                    usage.push(self.history(q as QueueId, now));
                    accumulate(&mut total, &nominal(q), 1.0);
                }
                for (q, held, started) in live {
                    if let Some(u) = usage.get_mut(q as usize) {
                        accumulate(u, &run_usage(held, started.min(now), now, h), 1.0);
                    }
                }
                scale.resize(n, total);
            }
            None => {
                for q in 0..n {
                    usage.push(self.usage[q].0.iter().map(|v| *v as f64).collect());
                    scale.push(nominal(q));
                }
            }
        }
        let mut nodes: HashMap<&str, Totals> = HashMap::new();
        for (q, s) in self.specs.iter().enumerate() {
            for node in s.cohort.as_deref().map(levels).unwrap_or_default() {
                nodes.entry(node).or_default().add(&usage[q], &scale[q], s.weight);
            }
        }
        let keys: Vec<Vec<f64>> = (0..n)
            .map(|q| {
                let s = &self.specs[q];
                let mut key: Vec<f64> = s
                    .cohort
                    .as_deref()
                    .map(levels)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|node| nodes.get(node).map_or(0.0, Totals::score))
                    .collect();
                key.push(
                    Totals { usage: usage[q].clone(), scale: scale[q].clone(), weight: s.weight }.score(),
                );
                key
            })
            .collect();
        let compare = |a: &Vec<f64>, b: &Vec<f64>| {
            a.iter().zip(b).map(|(x, y)| x.total_cmp(y)).find(|o| o.is_ne()).unwrap_or(a.len().cmp(&b.len()))
        };
        let mut ids: Vec<usize> = (0..n).collect();
        ids.sort_by(|a, b| compare(&keys[*a], &keys[*b]));
        let mut ranks = vec![0u32; n];
        let mut rank = 0u32;
        for (i, q) in ids.iter().enumerate() {
            if i > 0 && compare(&keys[ids[i - 1]], &keys[*q]).is_ne() {
                rank += 1;
            }
            ranks[*q] = rank;
        }
        ranks
    }

    /// What `q` borrows beyond its nominal quota (with `extra` more), as a share of its cohort tree's quota, over
    /// its weight: the measure by which one borrowing queue may take from another (the largest flavor counts).
    pub fn borrowed_share(&self, q: QueueId, extra: &Resources, now: Time) -> f64 {
        let Some(spec) = self.specs.get(q as usize) else { return 0.0 };
        let tree = self.cohort_of(q);
        let mut held = self.usage[q as usize].clone();
        held.add(extra);
        held.flavors()
            .map(|(f, v)| {
                let over = v.saturating_sub(self.nominal(q, f, now)) as f64;
                if over == 0.0 {
                    // Most queues borrow nothing: the tree's quota is summed only for those that do.
                    return 0.0;
                }
                let total: u64 = tree.iter().map(|p| self.nominal(*p, f, now)).sum();
                if total == 0 { f64::INFINITY } else { over / total as f64 }
            })
            .fold(0.0, f64::max)
            / spec.weight
    }
}

impl Quotas {
    /// How many cohort levels queues `p` and `q` share (0: none; 1: the same root; 2: the same cohort below it…).
    pub fn kinship(&self, p: QueueId, q: QueueId) -> usize {
        let path = |q: QueueId| self.specs.get(q as usize).and_then(|s| s.cohort.as_deref()).map(levels);
        match (path(p), path(q)) {
            (Some(a), Some(b)) => a.iter().zip(&b).take_while(|(x, y)| x == y).count(),
            _ => 0,
        }
    }
}

/// The cohort nodes of a path, from its root: `research`, `research/vision`.
fn levels(path: &str) -> Vec<&str> {
    path.char_indices()
        .filter(|(_, c)| *c == '/')
        .map(|(i, _)| &path[..i])
        .chain(std::iter::once(path))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_halves_every_half_life_and_adds_up_at_the_later_time() {
        let mut d = Decayed::default();
        d.add(100.0, &[8.0], 10.0);
        assert_eq!(d.value(110.0, 10.0), vec![4.0]);
        d.add(90.0, &[4.0], 10.0);
        assert_eq!(d.value(100.0, 10.0), vec![10.0], "an older amount is decayed to the later time");
        assert_eq!(d.at, 100.0);
    }

    #[test]
    fn a_run_long_past_one_half_life_counts_its_integral() {
        let held = Resources(vec![0, 0, 1000]);
        let h = 3600.0;
        let u = run_usage(&held, 0.0, 36.0, h);
        assert!((u[2] - 36_000.0).abs() < 200.0, "a short run counts about its resource-seconds: {}", u[2]);
        let long = run_usage(&held, 0.0, 100.0 * h, h);
        assert!(
            (long[2] - 1000.0 * h / std::f64::consts::LN_2).abs() < 1e-6,
            "an endless run tends to h/ln 2"
        );
    }

    #[test]
    fn levels_are_the_prefixes_of_a_path() {
        assert_eq!(levels("research/vision/3d"), vec!["research", "research/vision", "research/vision/3d"]);
        assert_eq!(levels("solo"), vec!["solo"]);
        assert_eq!(root("research/vision"), "research");
    }
}
