//! `haiyun-bench jct`: job completion time on heterogeneous GPUs (shared/benchmarks/JCT-PROTOCOL.md).

use std::path::{Path, PathBuf};

use haiyun_scheduler::model::{
    Cluster, Gang, Gpu, GpuModels, Health, Job, Node, Pool, PoolKind, TaskSpec, Topology, Work,
};
use haiyun_scheduler::queue::{Flavor, Ordering, QueueSpec, Quotas, Resources, WithinQueue};
use haiyun_scheduler::schedule::{ScheduleError, Scheduler, SchedulerConfig};
use haiyun_scheduler::sim::{SimError, SimRun, simulate};
use haiyun_scheduler::trace::{GavelJob, Throughputs, TraceError, parse_jobs, parse_throughputs};
use serde::Serialize;

use crate::check::{CheckError, check_log};

use crate::protocol::{CHECKPOINT_S, RESTART_S};

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum JctError {
    /// A file could not be read.
    #[error("failed to read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is malformed.
    #[error("failed to parse {path}")]
    Trace {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: TraceError,
    },
    /// A bad `--cluster`.
    #[error("--cluster {0:?}: give types and GPU counts like v100=12,p100=12,k80=12")]
    Cluster(String),
    /// A policy other than fifo or haiyun.
    #[error("--policy {0:?}: use fifo or haiyun")]
    Policy(String),
    /// The scheduler failed.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// The simulation failed.
    #[error(transparent)]
    Sim(#[from] SimError),
    /// The decision log broke a rule.
    #[error(transparent)]
    Check(#[from] CheckError),
}

/// The protocol's JSON, plus estimate accuracy.
#[derive(Debug, Clone, Serialize)]
pub struct JctReport {
    /// Job list stem.
    pub workload: String,
    /// fifo or haiyun.
    pub policy: String,
    /// Jobs in the list.
    pub jobs: usize,
    /// Jobs completed.
    pub completed: usize,
    /// Average JCT, hours.
    pub avg_jct_h: f64,
    /// Median JCT, hours.
    pub median_jct_h: f64,
    /// 99th percentile JCT, hours.
    pub p99_jct_h: f64,
    /// Last completion, hours.
    pub makespan_h: f64,
    /// GPU-seconds held over GPU-seconds available until the makespan.
    pub gpu_util_pct: f64,
    /// Longest wait before a first start, hours.
    pub max_wait_h: f64,
    /// Preemptions.
    pub preemptions: u32,
    /// Median |estimated start at submission − real start|, hours.
    pub start_estimate_median_abs_err_h: f64,
    /// 90th percentile of that error, hours.
    pub start_estimate_p90_abs_err_h: f64,
    /// Jobs that did not start when they arrived.
    pub jobs_that_waited: usize,
    /// Median estimate error over those jobs, hours.
    pub waited_estimate_median_abs_err_h: f64,
    /// 90th percentile over those jobs, hours.
    pub waited_estimate_p90_abs_err_h: f64,
}

fn read(path: &Path) -> Result<String, JctError> {
    std::fs::read_to_string(path).map_err(|source| JctError::Read { path: path.to_path_buf(), source })
}

/// Parses `v100=12,p100=12,k80=12`.
pub fn parse_cluster(spec: &str) -> Result<Vec<(String, usize)>, JctError> {
    spec.split(',')
        .map(|p| {
            let (t, n) = p.split_once('=').ok_or_else(|| JctError::Cluster(spec.into()))?;
            let n: usize = n.trim().parse().map_err(|_| JctError::Cluster(spec.into()))?;
            Ok((t.trim().to_lowercase(), n))
        })
        .collect()
}

/// One pool per GPU type, one GPU per node.
pub fn cluster(types: &[(String, usize)]) -> Result<Cluster, JctError> {
    let mut models = GpuModels::default();
    let mut pools = Vec::new();
    let mut nodes = Vec::new();
    for (p, (t, n)) in types.iter().enumerate() {
        let model = models
            .intern(&t.to_uppercase())
            .ok_or_else(|| JctError::Cluster(format!("{t}: more than 64 GPU types")))?;
        pools.push(Pool {
            name: t.clone(),
            kind: PoolKind::Ai,
            site: "gavel".into(),
            clearance: Default::default(),
        });
        for i in 0..*n {
            nodes.push(Node {
                name: format!("{t}-{i:02}"),
                pool: p as u32,
                rack: p as u32,
                cpu_milli: 8000,
                memory_mib: 65_536,
                gpus: vec![Gpu {
                    model,
                    memory_mib: 16_384,
                    nvlink_domain: nodes.len() as u32,
                    health: Health::Healthy,
                }],
                max_tasks: 1,
            });
        }
    }
    Ok(Cluster { models, pools, nodes, node_sets: Default::default() })
}

/// The job list as core jobs: k one-GPU tasks, throughput per GPU type from the table.
pub fn jobs(list: &[GavelJob], thr: &Throughputs, cluster: &Cluster) -> Vec<Job> {
    list.iter()
        .map(|g| {
            let throughput = cluster
                .pools
                .iter()
                .filter_map(|p| {
                    cluster
                        .models
                        .lookup(&p.name.to_uppercase())
                        .map(|m| (m, thr.get(&g.job_type, g.gpus, &p.name)))
                })
                .collect();
            let task = TaskSpec {
                cpu_milli: 0,
                memory_mib: 0,
                gpus: 1,
                gpu_milli: 1000,
                models: haiyun_scheduler::model::ModelSet::ANY,
                nodes: Default::default(),
            };
            Job {
                name: g.id.clone(),
                queue: 0,
                priority: 0,
                submitted: g.arrival_s,
                gang: Gang { tasks: vec![task; g.gpus as usize], topology: Topology::Any },
                work: Work { total: g.total_steps, throughput, default: 0.0 },
                datasets: Vec::new(),
                pools: Vec::new(),
                preemptible: true,
                checkpoint_s: Some(CHECKPOINT_S),
                user: None,
            }
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1);
    sorted[i]
}

/// Runs one policy on one job list; returns the report and the simulated run (with its decision log).
pub fn run(
    jobs_csv: &Path,
    thr_csv: &Path,
    cluster_spec: &str,
    policy: &str,
) -> Result<(JctReport, SimRun), JctError> {
    let list =
        parse_jobs(&read(jobs_csv)?).map_err(|source| JctError::Trace { path: jobs_csv.into(), source })?;
    let thr = parse_throughputs(&read(thr_csv)?)
        .map_err(|source| JctError::Trace { path: thr_csv.into(), source })?;
    let workload = jobs_csv.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    run_list(&workload, &list, &thr, cluster_spec, policy)
}

/// Runs one policy on a parsed job list named `workload`.
pub fn run_list(
    workload: &str,
    list: &[GavelJob],
    thr: &Throughputs,
    cluster_spec: &str,
    policy: &str,
) -> Result<(JctReport, SimRun), JctError> {
    let c = cluster(&parse_cluster(cluster_spec)?)?;
    let (ordering, backfill) = match policy {
        "fifo" => (Ordering::Fifo, false),
        "haiyun" => (Ordering::ShortestFirst, true),
        other => return Err(JctError::Policy(other.into())),
    };
    let mut nominal = Resources::default();
    for n in &c.nodes {
        for g in &n.gpus {
            let f = Flavor::Gpu(g.model);
            nominal.set(f, nominal.get(f) + 1000);
        }
    }
    let mut quotas = Quotas::default();
    let mut spec = QueueSpec::new("all", nominal);
    spec.ordering = ordering;
    spec.within_queue = if backfill { WithinQueue::LowerOrLaterInOrder } else { WithinQueue::Never };
    quotas.add(spec).map_err(ScheduleError::from)?;
    let config = SchedulerConfig { backfill, restart_s: RESTART_S, ..SchedulerConfig::default() };
    let sched = Scheduler::new(c.clone(), quotas, config, None)?;
    let sim = simulate(sched, jobs(list, thr, &c))?;
    check_log(&sim.decisions, list, thr)?;
    Ok((report(workload, policy, &sim, c.gpu_count()), sim))
}

fn report(workload: &str, policy: &str, sim: &SimRun, gpus: usize) -> JctReport {
    let h = 3600.0;
    let mut jct: Vec<f64> = sim.jobs.iter().filter_map(|j| j.completion.map(|c| c - j.arrival)).collect();
    jct.sort_by(f64::total_cmp);
    let makespan = sim.jobs.iter().filter_map(|j| j.completion).fold(0.0, f64::max);
    let busy: f64 = sim.jobs.iter().map(|j| j.gpu_seconds).sum();
    let mut err: Vec<f64> =
        sim.jobs.iter().filter_map(|j| Some((j.estimate_at_submit? - j.first_start?).abs())).collect();
    err.sort_by(f64::total_cmp);
    let mut waited: Vec<f64> = sim
        .jobs
        .iter()
        .filter(|j| j.first_start.is_some_and(|s| s > j.arrival + 1.0))
        .filter_map(|j| Some((j.estimate_at_submit? - j.first_start?).abs()))
        .collect();
    waited.sort_by(f64::total_cmp);
    JctReport {
        workload: workload.to_string(),
        policy: policy.into(),
        jobs: sim.jobs.len(),
        completed: jct.len(),
        avg_jct_h: jct.iter().sum::<f64>() / jct.len().max(1) as f64 / h,
        median_jct_h: percentile(&jct, 0.5) / h,
        p99_jct_h: percentile(&jct, 0.99) / h,
        makespan_h: makespan / h,
        gpu_util_pct: if makespan > 0.0 { 100.0 * busy / (gpus as f64 * makespan) } else { 0.0 },
        max_wait_h: sim.jobs.iter().filter_map(|j| Some(j.first_start? - j.arrival)).fold(0.0, f64::max) / h,
        preemptions: sim.jobs.iter().map(|j| j.preemptions).sum(),
        start_estimate_median_abs_err_h: percentile(&err, 0.5) / h,
        start_estimate_p90_abs_err_h: percentile(&err, 0.9) / h,
        jobs_that_waited: waited.len(),
        waited_estimate_median_abs_err_h: percentile(&waited, 0.5) / h,
        waited_estimate_p90_abs_err_h: percentile(&waited, 0.9) / h,
    }
}
