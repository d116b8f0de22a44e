//! `haiyun-bench fgd`: the FGD placement-quality protocol (shared/benchmarks/FGD-PROTOCOL.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use haiyun_scheduler::model::Cluster;
use haiyun_scheduler::plugin::score::HaiyunParams;
use haiyun_scheduler::plugin::{Policy, PolicyName, TypicalPods};
use haiyun_scheduler::sim::{AllocBuckets, ReplayError, replay_fgd, round2};
use haiyun_scheduler::trace::{Sequence, TraceError, TracePod, parse_nodes, parse_pods};
use serde::Serialize;

use crate::progress::Progress;

/// Share of all pods the typical shapes must cover (the paper's 95%).
const TYPICAL_COVERAGE: f64 = 0.95;

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum FgdError {
    /// A file could not be read.
    #[error("failed to read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A trace file is malformed.
    #[error("failed to parse {path}")]
    Trace {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: TraceError,
    },
    /// A sequence file is malformed.
    #[error("failed to parse sequence {path}")]
    Sequence {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// The policy could not be built.
    #[error(transparent)]
    Policy(#[from] haiyun_scheduler::plugin::PolicyError),
    /// A replay failed.
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

/// Inputs of one benchmark run.
#[derive(Debug, Clone)]
pub struct FgdArgs {
    /// Node CSV.
    pub nodes: PathBuf,
    /// Pod CSV.
    pub pods: PathBuf,
    /// Folder of `seed-S.json`.
    pub sequences: PathBuf,
    /// Policy to run.
    pub policy: PolicyName,
    /// Seeds to run.
    pub seeds: Vec<u64>,
    /// Haiyun's parameters (research; defaults are the shipped policy).
    pub haiyun: HaiyunParams,
}

/// The protocol's JSON result.
#[derive(Debug, Clone, Serialize)]
pub struct FgdReport {
    /// Pod CSV stem.
    pub workload: String,
    /// Policy name.
    pub policy: String,
    /// Seeds run.
    pub seeds: Vec<u64>,
    /// GPUs in the cluster.
    pub total_gpus: usize,
    /// Mean allocation (%) at 100% and 130% arrived demand.
    pub alloc_pct: BTreeMap<String, Option<f64>>,
    /// Per seed, allocation at 100% and 130%.
    pub alloc_pct_by_seed: BTreeMap<String, BTreeMap<String, Option<f64>>>,
    /// Mean fragmentation ratio (%) at 100% and 130%.
    pub frag_ratio_pct: BTreeMap<String, Option<f64>>,
    /// Mean failed pods per seed.
    pub failed_pods: f64,
    /// Mean pods per seed.
    pub pods: f64,
    /// Pods scheduled per second of scheduling time.
    pub placements_per_s: f64,
    /// Wall time of the scheduling, all seeds.
    pub elapsed_s: f64,
}

fn read(path: &Path) -> Result<String, FgdError> {
    std::fs::read_to_string(path).map_err(|source| FgdError::Read { path: path.to_path_buf(), source })
}

/// Loads the cluster and pods of a workload.
pub fn load(nodes: &Path, pods: &Path) -> Result<(Cluster, Vec<TracePod>), FgdError> {
    let mut cluster =
        parse_nodes(&read(nodes)?).map_err(|source| FgdError::Trace { path: nodes.to_path_buf(), source })?;
    let list = parse_pods(&read(pods)?, &mut cluster.models)
        .map_err(|source| FgdError::Trace { path: pods.to_path_buf(), source })?;
    Ok((cluster, list))
}

/// Loads one seed's sequence.
pub fn load_sequence(dir: &Path, seed: u64) -> Result<Sequence, FgdError> {
    let path = dir.join(format!("seed-{seed}.json"));
    serde_json::from_str(&read(&path)?).map_err(|source| FgdError::Sequence { path, source })
}

/// The typical shapes of the pod list as given (the paper's definition).
pub fn typical_pods(pods: &[TracePod]) -> TypicalPods {
    TypicalPods::estimate(pods.iter().map(|p| (p.spec, p.gpu_spec.as_str())), TYPICAL_COVERAGE)
}

fn mean(v: &[f64]) -> Option<f64> {
    if v.is_empty() { None } else { Some(round2(v.iter().sum::<f64>() / v.len() as f64)) }
}

/// Runs the protocol for every seed and summarises it.
pub fn run(args: &FgdArgs) -> Result<FgdReport, FgdError> {
    let (cluster, pods) = load(&args.nodes, &args.pods)?;
    let typical = typical_pods(&pods);
    let total_gpus = cluster.gpu_count();
    let points = [100i64, 130];
    let mut by_seed = BTreeMap::new();
    let (mut alloc, mut frag) = (vec![Vec::new(); 2], vec![Vec::new(); 2]);
    let (mut failed, mut count, mut elapsed) = (0usize, 0usize, 0.0f64);
    let bar = Progress::new(&format!("fgd {}", args.policy), args.seeds.len());
    for (i, seed) in args.seeds.iter().enumerate() {
        bar.set(i);
        let seq = load_sequence(&args.sequences, *seed)?;
        let policy = Policy::with_params(args.policy, *seed, Some(&typical), args.haiyun)?;
        let start = Instant::now();
        let run = replay_fgd(&cluster, &pods, &seq, policy, &typical)?;
        elapsed += start.elapsed().as_secs_f64();
        failed += run.failed;
        count += seq.pod_rows.len();
        let a = AllocBuckets::allocation(total_gpus, &run.arrived, &run.used);
        let f = AllocBuckets::new(total_gpus, &run.arrived, &run.frag_pct);
        let mut this = BTreeMap::new();
        for (k, x) in points.iter().enumerate() {
            let v = a.at(*x);
            this.insert(x.to_string(), v);
            alloc[k].extend(v);
            frag[k].extend(f.at(*x));
        }
        by_seed.insert(seed.to_string(), this);
    }
    bar.finish();
    let n = args.seeds.len().max(1) as f64;
    Ok(FgdReport {
        workload: args.pods.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        policy: args.policy.to_string(),
        seeds: args.seeds.clone(),
        total_gpus,
        alloc_pct: points.iter().zip(&alloc).map(|(x, v)| (x.to_string(), mean(v))).collect(),
        alloc_pct_by_seed: by_seed,
        frag_ratio_pct: points.iter().zip(&frag).map(|(x, v)| (x.to_string(), mean(v))).collect(),
        failed_pods: failed as f64 / n,
        pods: count as f64 / n,
        placements_per_s: if elapsed > 0.0 { count as f64 / elapsed } else { 0.0 },
        elapsed_s: elapsed,
    })
}

/// Parses `42-51` or `42,45,47` into seeds.
pub fn parse_seeds(s: &str) -> Result<Vec<u64>, String> {
    let bad = || format!("--seeds {s:?}: give a range like 42-51 or a list like 42,43");
    if let Some((a, b)) = s.split_once('-') {
        let (a, b): (u64, u64) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
        if a > b {
            return Err(bad());
        }
        return Ok((a..=b).collect());
    }
    s.split(',').map(|p| p.trim().parse().map_err(|_| bad())).collect()
}
