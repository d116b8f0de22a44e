//! Generalisation of the JCT policy: job lists of the kind Gavel's generator makes (its Philly-derived durations,
//! scale factors and Poisson arrivals, new seeds), each run under `fifo` and `haiyun` with the decision log checked.

use std::collections::BTreeMap;

use haiyun_scheduler::rng::SplitMix64;
use haiyun_scheduler::trace::{GavelJob, Throughputs};
use serde::Serialize;

use crate::jct::{JctError, run_list};

/// One kind of list: Gavel's W1 (multi-GPU, a job every 2000 s on average) or W2 (single-GPU, every 900 s).
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// Name.
    pub name: &'static str,
    /// Whether jobs take 1, 2, 4 or 8 GPUs (70/10/15/5 %), else one.
    pub multi: bool,
    /// Mean gap between arrivals, seconds.
    pub mean_gap_s: f64,
}

/// The two kinds of the shipped lists.
pub const KINDS: [Kind; 2] = [
    Kind { name: "W1_multigpu", multi: true, mean_gap_s: 2000.0 },
    Kind { name: "W2_singlegpu", multi: false, mean_gap_s: 900.0 },
];

fn unit(r: &mut SplitMix64) -> f64 {
    (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// `n` jobs of `kind` from `seed`: a duration on V100 of 10^U(1.5, 3) minutes (80 %) or 10^U(3, 4) (20 %), a scale
/// factor, a job type drawn uniformly among those the table has at that scale, and steps = duration × throughput.
pub fn generate(thr: &Throughputs, types: &[String], kind: Kind, seed: u64, n: usize) -> Vec<GavelJob> {
    let mut r = SplitMix64::new(seed);
    let mut t = 0.0;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if i > 0 {
            t += -(1.0 - unit(&mut r)).ln() * kind.mean_gap_s;
        }
        let exp = if unit(&mut r) >= 0.8 { 3.0 + unit(&mut r) } else { 1.5 + 1.5 * unit(&mut r) };
        let run_s = 60.0 * 10f64.powf(exp);
        let gpus = if kind.multi {
            match unit(&mut r) {
                x if x < 0.7 => 1,
                x if x < 0.8 => 2,
                x if x < 0.95 => 4,
                _ => 8,
            }
        } else {
            1
        };
        let usable: Vec<&String> = types.iter().filter(|jt| thr.get(jt, gpus, "v100") > 0.0).collect();
        let Some(jt) = usable.get(r.below(usable.len() as u64) as usize) else { continue };
        out.push(GavelJob {
            id: i.to_string(),
            arrival_s: t,
            job_type: (*jt).clone(),
            gpus,
            total_steps: (run_s * thr.get(jt, gpus, "v100")).floor().max(1.0),
        });
    }
    out
}

/// What one kind of list gave over its seeds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KindResult {
    /// Lists run.
    pub lists: usize,
    /// Mean over lists of the average JCT, hours, by policy.
    pub mean_avg_jct_h: BTreeMap<String, f64>,
    /// Mean over lists of the lower bound: every job alone on its fastest GPU type from its arrival, hours.
    pub mean_lower_bound_h: f64,
    /// Mean over lists of haiyun's average JCT over the lower bound.
    pub mean_haiyun_over_bound: f64,
    /// Worst list of that ratio.
    pub worst_haiyun_over_bound: f64,
    /// Mean over lists of haiyun's average JCT over fifo's.
    pub mean_haiyun_over_fifo: f64,
}

/// Runs `seeds` lists of 150 jobs of each kind under fifo and haiyun on `cluster`; every decision log is replayed
/// by the checker. `progress` hears each list as it starts.
pub fn run(
    thr: &Throughputs,
    types: &[String],
    cluster: &str,
    seeds: u64,
    mut progress: impl FnMut(&str),
) -> Result<BTreeMap<&'static str, KindResult>, JctError> {
    let mut out = BTreeMap::new();
    for kind in KINDS {
        let mut k = KindResult::default();
        let (mut over_bound, mut over_fifo) = (Vec::new(), Vec::new());
        for seed in 1..=seeds {
            let name = format!("{}_gen{seed}", kind.name);
            progress(&name);
            let list = generate(thr, types, kind, seed * 1_000_003 + kind.mean_gap_s as u64, 150);
            let bound = list
                .iter()
                .map(|j| {
                    ["v100", "p100", "k80"]
                        .iter()
                        .map(|g| thr.get(&j.job_type, j.gpus, g))
                        .filter(|v| *v > 0.0)
                        .map(|v| j.total_steps / v)
                        .fold(f64::INFINITY, f64::min)
                })
                .sum::<f64>()
                / list.len().max(1) as f64
                / 3600.0;
            let mut jct = BTreeMap::new();
            for policy in ["fifo", "haiyun"] {
                let (r, _) = run_list(&name, &list, thr, cluster, policy)?;
                *k.mean_avg_jct_h.entry(policy.to_string()).or_default() += r.avg_jct_h;
                jct.insert(policy, r.avg_jct_h);
            }
            k.mean_lower_bound_h += bound;
            over_bound.push(jct["haiyun"] / bound);
            over_fifo.push(jct["haiyun"] / jct["fifo"]);
            k.lists += 1;
        }
        let n = k.lists.max(1) as f64;
        k.mean_avg_jct_h.values_mut().for_each(|v| *v /= n);
        k.mean_lower_bound_h /= n;
        k.mean_haiyun_over_bound = over_bound.iter().sum::<f64>() / n;
        k.worst_haiyun_over_bound = over_bound.iter().copied().fold(0.0, f64::max);
        k.mean_haiyun_over_fifo = over_fifo.iter().sum::<f64>() / n;
        out.insert(kind.name, k);
    }
    Ok(out)
}

/// The job types of a throughput table (its `job_type` column), in order of first appearance.
pub fn job_types(thr_csv: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in thr_csv.lines().skip(1) {
        if let Some(t) = line.split(',').next().map(str::trim).filter(|t| !t.is_empty()) {
            if !out.iter().any(|o| o == t) {
                out.push(t.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const THR: &str = include_str!("../../data/gavel/isolated_throughputs.csv");

    #[test]
    fn generated_lists_have_gavels_shape() {
        let thr = haiyun_scheduler::trace::parse_throughputs(THR).unwrap();
        let types = job_types(THR);
        assert_eq!(types.len(), 26);
        let list = generate(&thr, &types, KINDS[0], 7, 2000);
        assert_eq!(list.len(), 2000);
        let share = |g: u32| list.iter().filter(|j| j.gpus == g).count() as f64 / 2000.0;
        assert!((share(1) - 0.70).abs() < 0.04 && (share(8) - 0.05).abs() < 0.02, "{}", share(1));
        let gap = list.last().unwrap().arrival_s / 1999.0;
        assert!((gap - 2000.0).abs() < 150.0, "{gap}");
        let minutes: Vec<f64> =
            list.iter().map(|j| j.total_steps / thr.get(&j.job_type, j.gpus, "v100") / 60.0).collect();
        let long = minutes.iter().filter(|m| **m >= 1000.0).count() as f64 / 2000.0;
        assert!((long - 0.2).abs() < 0.03, "{long}");
        assert!(minutes.iter().all(|m| *m >= 31.0 && *m <= 10_001.0));
        let steps = |seed| {
            generate(&thr, &types, KINDS[1], seed, 50).iter().map(|j| j.total_steps).collect::<Vec<_>>()
        };
        assert_eq!(steps(7), steps(7));
        assert_ne!(steps(7), steps(8));
        assert!(generate(&thr, &types, KINDS[1], 7, 300).iter().all(|j| j.gpus == 1));
    }
}
