//! `haiyun-bench scale`: placements per second and memory on a large synthetic federation.

use std::time::Instant;

use haiyun_scheduler::placer::{NodesToScore, Outcome, Placer, PlacerConfig};
use haiyun_scheduler::plugin::{Policy, PolicyName, TypicalPods};
use haiyun_scheduler::snapshot::{Snapshot, SnapshotError};
use haiyun_scheduler::testing::{synthetic_federation, synthetic_workload};
use haiyun_scheduler::{Cluster, Gang};
use serde::Serialize;

/// Why the scale run failed.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    /// The snapshot refused a change.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A policy could not be built.
    #[error(transparent)]
    Policy(#[from] haiyun_scheduler::plugin::PolicyError),
}

/// One policy's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyFigures {
    /// Policy name.
    pub policy: String,
    /// Tasks placed.
    pub tasks_placed: usize,
    /// Gangs rejected.
    pub gangs_rejected: usize,
    /// Seconds to place every pending gang.
    pub elapsed_s: f64,
    /// Tasks handled (placed or rejected) per second.
    pub placements_per_s: f64,
}

/// The scale run's JSON result.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    /// Nodes.
    pub nodes: usize,
    /// GPUs.
    pub gpus: usize,
    /// Pending tasks.
    pub tasks: usize,
    /// Pending gangs.
    pub gangs: usize,
    /// Our policy.
    pub haiyun: PolicyFigures,
    /// The baseline run in the same process.
    pub baseline: PolicyFigures,
    /// haiyun placements/s over the baseline's.
    pub ratio_vs_baseline: f64,
    /// Resident memory after building the federation and workload, MiB.
    pub rss_before_mib: f64,
    /// Peak resident memory of the whole run, MiB.
    pub rss_peak_mib: f64,
    /// Bytes of snapshot per node (resident growth from building it, divided by nodes).
    pub snapshot_bytes_per_node: f64,
}

/// Builds the federation and the pending work.
pub fn setup(nodes: usize, tasks: usize, seed: u64) -> (Cluster, Vec<Gang>, TypicalPods) {
    let cluster = synthetic_federation(nodes, seed);
    let gangs = synthetic_workload(tasks, seed);
    let typical = TypicalPods::estimate(gangs.iter().flat_map(|g| g.tasks.iter().map(|t| (*t, ""))), 0.95);
    (cluster, gangs, typical)
}

/// Places every gang in order on a fresh snapshot with the named policy.
pub fn place_all(
    cluster: &Cluster,
    gangs: &[Gang],
    typical: &TypicalPods,
    policy: PolicyName,
    config: PlacerConfig,
) -> Result<PolicyFigures, ScaleError> {
    let mut snap = Snapshot::new(cluster.clone())?;
    let mut placer = Placer::new(Policy::new(policy, 1, Some(typical))?, config);
    let (mut placed, mut rejected, mut tasks) = (0usize, 0usize, 0usize);
    let start = Instant::now();
    for g in gangs {
        tasks += g.tasks.len();
        match placer.place(&mut snap, g)? {
            Outcome::Placed(p) => placed += p.tasks.len(),
            Outcome::Rejected(_) => rejected += 1,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(PolicyFigures {
        policy: policy.to_string(),
        tasks_placed: placed,
        gangs_rejected: rejected,
        elapsed_s: elapsed,
        placements_per_s: tasks as f64 / elapsed.max(1e-9),
    })
}

/// Resident memory now and at peak, MiB, from /proc (0 where unavailable).
pub fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Runs haiyun and the bestfit baseline on the same federation and workload; `nodes_to_score` 0 is adaptive.
pub fn run(nodes: usize, tasks: usize, seed: u64, nodes_to_score: usize) -> Result<ScaleReport, ScaleError> {
    let config = PlacerConfig {
        nodes_to_score: if nodes_to_score == 0 {
            NodesToScore::Adaptive
        } else {
            NodesToScore::AtMost(nodes_to_score)
        },
    };
    let (cluster, gangs, typical) = setup(nodes, tasks, seed);
    let (rss_before, _) = rss_mib();
    let snap = Snapshot::new(cluster.clone())?;
    let (rss_snap, _) = rss_mib();
    drop(snap);
    let haiyun = place_all(&cluster, &gangs, &typical, PolicyName::Haiyun, config)?;
    let baseline = place_all(&cluster, &gangs, &typical, PolicyName::Bestfit, config)?;
    let (_, peak) = rss_mib();
    Ok(ScaleReport {
        nodes,
        gpus: cluster.gpu_count(),
        tasks: gangs.iter().map(|g| g.tasks.len()).sum(),
        gangs: gangs.len(),
        ratio_vs_baseline: haiyun.placements_per_s / baseline.placements_per_s.max(1e-9),
        haiyun,
        baseline,
        rss_before_mib: rss_before,
        rss_peak_mib: peak,
        snapshot_bytes_per_node: (rss_snap - rss_before).max(0.0) * 1024.0 * 1024.0 / nodes as f64,
    })
}
