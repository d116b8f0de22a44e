//! The operator's cycle on generated objects, without a cluster: simulated pools, queues in cohorts, and jobs of
//! which many run (admitted by a first cycle) and the rest wait. It then times cycles with nothing new, once with the
//! index kept between cycles (as the operator runs) and once rebuilt every cycle (as it did before), in one run, and
//! prints JSON figures.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use haiyun_api::{ComputeJob, ComputePool, Queue};
use haiyun_operator::backend::simulated::SimulatedBackend;
use haiyun_operator::backend::{Backends, PoolBackend};
use haiyun_operator::cycle::{self, Memory};
use haiyun_operator::decision::DecisionLog;
use haiyun_operator::fleet::FleetView;
use haiyun_operator::memory::MemoryCluster;
use haiyun_scheduler::schedule::SchedulerConfig;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "haiyun-cycle-bench", about = "The operator's cycle: first, and with nothing new")]
struct Args {
    /// Nodes of 8 GPUs (in four pools).
    #[arg(long, default_value_t = 1_000)]
    nodes: u32,
    /// Jobs submitted before the first cycle.
    #[arg(long, default_value_t = 20_000)]
    jobs: u32,
    /// Queues (in cohorts of ten).
    #[arg(long, default_value_t = 50)]
    queues: u32,
    /// Cycles with nothing new timed in each mode.
    #[arg(long, default_value_t = 5)]
    cycles: usize,
    /// Print JSON only.
    #[arg(long)]
    json: bool,
}

const T0: f64 = 1_800_000_000.0;

#[derive(Debug, serde::Serialize)]
struct Figures {
    nodes: u32,
    jobs: u32,
    queues: u32,
    running: usize,
    first_cycle_s: f64,
    kept_index_cycle_s: Vec<f64>,
    rebuilt_index_cycle_s: Vec<f64>,
    kept_over_rebuilt: f64,
    /// The most actions a timed cycle handed out (0: it had nothing to write).
    timed_cycle_actions: usize,
}

fn typed<K: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<K, String> {
    serde_json::from_value(v).map_err(|e| format!("failed to build a generated object: {e}"))
}

/// The federation and job stream: four pools, queues in cohorts, jobs of 1, 2, 4 or 8 GPUs (some gangs).
fn generate(args: &Args) -> Result<MemoryCluster, String> {
    let mut c = MemoryCluster::new(SchedulerConfig::default(), DecisionLog::default());
    let bad = |e: haiyun_operator::memory::MemoryError| e.to_string();
    for (i, model) in ["h100", "a100", "h100", "l40s"].iter().enumerate() {
        let pool: ComputePool = typed(json!({
            "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputePool", "metadata": {"name": format!("pool-{i}")},
            "spec": {"kind": "ai", "site": format!("site-{i}"), "backend": {"simulated": {"nodes": [
                {"count": args.nodes / 4, "gpus": 8, "gpuModel": model, "cpu": "128", "memory": "1Ti"}]}}}
        }))?;
        c.add_pool(pool, T0).map_err(bad)?;
    }
    let per_queue = (u64::from(args.nodes) * 8 / u64::from(args.queues.max(1))).max(1);
    for q in 0..args.queues {
        let queue: Queue = typed(json!({
            "apiVersion": "haiyun.io/v1alpha1", "kind": "Queue", "metadata": {"name": format!("q{q}")},
            "spec": {"cohort": format!("c{}", q / 10), "resources": [
                {"flavor": "nvidia.com/gpu:h100", "nominal": (per_queue / 2).to_string()},
                {"flavor": "nvidia.com/gpu:a100", "nominal": (per_queue / 4).to_string()},
                {"flavor": "nvidia.com/gpu:l40s", "nominal": (per_queue / 4).to_string()},
                {"flavor": "cpu", "nominal": "100000"}, {"flavor": "memory", "nominal": "100Ti"}]}
        }))?;
        c.add_queue(queue, T0).map_err(bad)?;
    }
    for j in 0..args.jobs {
        let gpus = [1, 1, 2, 4, 8][(j % 5) as usize];
        let replicas = if j % 17 == 0 { 4 } else { 1 };
        let job: ComputeJob = typed(json!({
            "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputeJob",
            "metadata": {"name": format!("job-{j}"), "namespace": format!("team-{}", j % args.queues.max(1))},
            "spec": {"queue": format!("q{}", j % args.queues.max(1)), "runtimeEstimate": format!("{}m", 30 + j % 600),
                     "priority": j % 3, "preemptible": true,
                     "taskGroups": [{"name": "w", "replicas": replicas, "gpus": gpus, "cpu": "4", "memory": "32Gi"}]}
        }))?;
        c.submit(job, None, T0 + f64::from(j) * 0.001).map_err(bad)?;
    }
    Ok(c)
}

/// Seconds each of `n` cycles with nothing new takes, and the most actions one handed out; `keep`: the index kept
/// between cycles. Every timed cycle starts from the same warmed memory (the same overlay of decisions), so the two
/// modes decide alike and differ only in what the index converts again.
fn steady(
    c: &MemoryCluster,
    backend: &SimulatedBackend,
    n: usize,
    keep: bool,
) -> Result<(Vec<f64>, usize), String> {
    let objects = c.objects();
    let backends = Backends::new(vec![Arc::new(backend.clone()) as Arc<dyn PoolBackend>]);
    let fleet = FleetView::default();
    let busy = HashSet::new();
    let input = |now: f64| cycle::Input {
        objects: &objects,
        fleet: &fleet,
        backends: &backends,
        busy: &busy,
        config: SchedulerConfig::default(),
        now,
    };
    let mut warmed = Memory::default();
    cycle::run(&input(T0 + 10.0), &mut warmed).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(n);
    let mut actions = 0;
    for _ in 0..n {
        let mut memory = warmed.clone();
        if !keep {
            memory.forget_index();
        }
        let started = Instant::now();
        let o = cycle::run(&input(T0 + 10.0), &mut memory).map_err(|e| e.to_string())?;
        out.push(started.elapsed().as_secs_f64());
        actions = actions.max(o.actions.len());
    }
    Ok((out, actions))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

fn run(args: &Args) -> Result<Figures, String> {
    let mut c = generate(args)?;
    let started = Instant::now();
    c.cycle(Arc::new(FleetView::default()), T0 + 1.0).map_err(|e| e.to_string())?;
    let first = started.elapsed().as_secs_f64();
    let running =
        c.jobs().values().filter(|j| j.status.as_ref().is_some_and(|s| s.placement.is_some())).count();
    // A second cycle, at the timed cycles' instant, writes what the first one changed (the placed jobs now run, the
    // waiting jobs' estimates moved with the admissions): the timed cycles then have nothing new to write. Without
    // it every timed cycle rewrote every job's status, which a running operator does once.
    c.cycle(Arc::new(FleetView::default()), T0 + 10.0).map_err(|e| e.to_string())?;
    let backend = c.backend();
    let (kept, kept_actions) = steady(&c, &backend, args.cycles, true)?;
    let (rebuilt, rebuilt_actions) = steady(&c, &backend, args.cycles, false)?;
    Ok(Figures {
        nodes: args.nodes,
        jobs: args.jobs,
        queues: args.queues,
        running,
        first_cycle_s: first,
        kept_over_rebuilt: median(&kept) / median(&rebuilt).max(1e-9),
        kept_index_cycle_s: kept,
        rebuilt_index_cycle_s: rebuilt,
        timed_cycle_actions: kept_actions.max(rebuilt_actions),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(f) => {
            match serde_json::to_string(&f) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("failed to print the figures: {e}"),
            }
            if !args.json {
                eprintln!(
                    "{} jobs ({} running) on {} nodes: first cycle {:.2} s; nothing new: {:.3} s with the index kept, \
                     {:.3} s rebuilt ({:.2}x)",
                    f.jobs,
                    f.running,
                    f.nodes,
                    f.first_cycle_s,
                    median(&f.kept_index_cycle_s),
                    median(&f.rebuilt_index_cycle_s),
                    f.kept_over_rebuilt
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
