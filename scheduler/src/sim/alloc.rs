//! The FGD protocol's metrics: allocation (and fragmentation) at x% of arrived GPU demand.

use std::collections::BTreeMap;

/// Rounds to two decimals, half to even.
pub fn round2(v: f64) -> f64 {
    (v * 100.0).round_ties_even() / 100.0
}

/// Per-arrival values grouped by arrived demand in whole percent of capacity.
#[derive(Debug, Clone, Default)]
pub struct AllocBuckets {
    buckets: BTreeMap<i64, Vec<f64>>,
}

impl AllocBuckets {
    /// Buckets `values` by `a = round(arrived / C)` with `C = gpus · 1000 / 100`, rounding half to even.
    pub fn new(total_gpus: usize, arrived: &[u64], values: &[f64]) -> Self {
        let c = total_gpus as f64 * 10.0;
        let mut buckets: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
        for (a, v) in arrived.iter().zip(values) {
            buckets.entry((*a as f64 / c).round_ties_even() as i64).or_default().push(*v);
        }
        AllocBuckets { buckets }
    }

    /// Allocation in percent from allocated milli: `u = round(used / C, 2)` per arrival.
    pub fn allocation(total_gpus: usize, arrived: &[u64], used: &[u64]) -> Self {
        let c = total_gpus as f64 * 10.0;
        let u: Vec<f64> = used.iter().map(|x| round2(*x as f64 / c)).collect();
        Self::new(total_gpus, arrived, &u)
    }

    /// The mean value at `x`% arrived, rounded to two decimals; falls back to `[x−1, x+1]`; `None` if empty.
    pub fn at(&self, x: i64) -> Option<f64> {
        let mean = |vals: Vec<f64>| {
            if vals.is_empty() { None } else { Some(round2(vals.iter().sum::<f64>() / vals.len() as f64)) }
        };
        if let Some(v) = self.buckets.get(&x).filter(|v| !v.is_empty()) {
            return mean(v.clone());
        }
        mean((x - 1..=x + 1).filter_map(|k| self.buckets.get(&k)).flatten().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_is_the_mean_of_the_bucket() {
        // 1 GPU: C = 10 milli per percent. Arrivals at 100% and 100.4% both round to bucket 10.
        let b = AllocBuckets::allocation(1, &[100, 104, 200], &[50, 70, 90]);
        assert_eq!(b.at(10), Some(6.0));
        assert_eq!(b.at(20), Some(9.0));
    }

    #[test]
    fn an_empty_bucket_falls_back_to_its_neighbours() {
        let b = AllocBuckets::allocation(1, &[90, 110], &[40, 60]);
        assert_eq!(b.at(10), Some(5.0));
        assert_eq!(b.at(30), None);
    }

    #[test]
    fn rounding_is_half_to_even() {
        assert_eq!(round2(0.125), 0.12);
        assert_eq!(round2(0.135), 0.14);
        assert_eq!((2.5f64).round_ties_even(), 2.0);
    }
}
