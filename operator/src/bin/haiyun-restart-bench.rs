//! An operator started against many ComputeJobs on testenv's kwok nodes: seconds until its caches are synced and its
//! first cycle has decided, and its memory; then the same after a SIGKILL, with the jobs it admitted meanwhile and
//! their pods in place. Start testenv first, e.g. `testenv/testenv up --dir /tmp/rs --nodes 10000 --gpus-per-node 8`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use haiyun_api::{ComputeJob, ComputePool, Queue};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "haiyun-restart-bench",
    about = "An operator starting against many jobs on testenv's kwok nodes"
)]
struct Args {
    /// ComputeJobs (made once; a second run on the same control plane reuses them).
    #[arg(long, default_value_t = 100_000)]
    jobs: u32,
    /// Queues, each with an equal share of the GPUs as nominal quota.
    #[arg(long, default_value_t = 500)]
    queues: u32,
    /// Cohorts the queues are dealt into.
    #[arg(long, default_value_t = 20)]
    cohorts: u32,
    /// Seconds the first operator runs (admitting, making pods) before it is killed and started again.
    #[arg(long, default_value_t = 60)]
    settle_s: u64,
    /// Client QPS limit given to the operator.
    #[arg(long, default_value_t = 500.0)]
    qps: f64,
    /// The operator binary (default: next to this one).
    #[arg(long)]
    operator: Option<PathBuf>,
    /// Where the operator's log goes (default: nowhere).
    #[arg(long)]
    operator_log: Option<PathBuf>,
    /// Print JSON only.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("failed to talk to the API server: {0}")]
    Api(#[from] kube::Error),
    #[error("failed to read the operator's /metrics: {0}")]
    Metrics(#[from] reqwest::Error),
    #[error("{0}")]
    Setup(String),
}

/// One start of the operator, in seconds from its process start.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct Start {
    caches_synced_s: f64,
    first_cycle_done_s: f64,
    first_cycle_s: f64,
    /// The pending and admitted gauges after the first cycle: the cluster as that cycle found it.
    pending_after_first: u64,
    admitted_after_first: u64,
    /// Jobs the first cycle placed (its `admit` actions).
    placed_by_first: u64,
    rss_after_first_mib: f64,
    peak_rss_mib: f64,
}

const NAMESPACE: &str = "bench-restart";
const LEASE: &str = "bench-restart";

fn main() -> ExitCode {
    haiyun_operator::bench::run(bench(Args::parse()))
}

async fn bench(args: Args) -> Result<(), BenchError> {
    let client = Client::try_default().await?;
    let found = haiyun_operator::bench::gpu_nodes(&client).await?;
    let model =
        found.model.ok_or_else(|| BenchError::Setup("no GPU nodes: start testenv with --nodes N".into()))?;
    let gpus = found.gpus;
    let say = |s: String| {
        if !args.json {
            eprintln!("{s}");
        }
    };
    say(format!("{} nodes, {gpus} GPUs ({model})", found.count));
    setup(&client, &args, &model, gpus).await?;
    let made = Instant::now();
    let created = submit(&client, &args).await?;
    let submit_s = made.elapsed().as_secs_f64();
    say(format!(
        "{created} ComputeJobs made in {submit_s:.1} s ({} there already)",
        args.jobs as usize - created
    ));

    let port = free_port()?;
    let mut op = operator(&args, port)?;
    let cold = watch_start(&mut op, port, args.settle_s).await;
    let _ = op.kill();
    let _ = op.wait();
    let cold = cold?;
    say(format!("cold start: {cold:?}"));
    let mut op = operator(&args, port)?;
    let warm = watch_start(&mut op, port, 10).await;
    let _ = op.kill();
    let _ = op.wait();
    let warm = warm?;
    say(format!("restart: {warm:?}"));
    let out = json!({
        "nodes": found.count, "gpus": gpus, "jobs": args.jobs, "queues": args.queues, "cohorts": args.cohorts,
        "client_qps": args.qps, "jobs_made": created, "submit_s": submit_s,
        "cold_start": cold, "settle_s": args.settle_s, "restart_after_kill": warm,
    });
    println!("{out}");
    Ok(())
}

/// The pool over every kwok node, queues in cohorts sharing the GPUs, and the namespace.
async fn setup(client: &Client, args: &Args, model: &str, gpus: u64) -> Result<(), BenchError> {
    haiyun_operator::bench::install_crds(client, "haiyun-bench").await?;
    let bad = |e: serde_json::Error| BenchError::Setup(e.to_string());
    let ssa = PatchParams::apply("haiyun-bench").force();
    let pool: ComputePool = serde_json::from_value(json!({
        "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputePool", "metadata": { "name": "restart" },
        "spec": { "kind": "ai", "backend": { "kubernetes": { "nodeSelector": { "type": "kwok" } } } }
    }))
    .map_err(bad)?;
    Api::<ComputePool>::all(client.clone()).patch("restart", &ssa, &Patch::Apply(&pool)).await?;
    let nominal = (gpus / u64::from(args.queues.max(1))).max(1);
    let queues: Api<Queue> = Api::all(client.clone());
    futures::stream::iter(0..args.queues)
        .map(|q| {
            let queue = serde_json::from_value::<Queue>(json!({
                "apiVersion": "haiyun.io/v1alpha1", "kind": "Queue", "metadata": { "name": format!("rq{q}") },
                "spec": { "cohort": format!("rc{}", q % args.cohorts.max(1)), "resources": [
                    { "flavor": format!("nvidia.com/gpu:{}", model.to_lowercase()), "nominal": nominal.to_string() },
                    { "flavor": "cpu", "nominal": "100000" }
                ] }
            }));
            let (queues, ssa) = (queues.clone(), ssa.clone());
            async move {
                let queue = queue.map_err(bad)?;
                queues.patch(&queue.name_any(), &ssa, &Patch::Apply(&queue)).await?;
                Ok::<(), BenchError>(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": NAMESPACE } })).map_err(bad)?;
    match Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Makes the ComputeJobs not there yet: 1, 2, 4 or 8 GPUs, every 17th a gang of four; returns how many it made.
async fn submit(client: &Client, args: &Args) -> Result<usize, BenchError> {
    let api: Api<ComputeJob> = Api::namespaced(client.clone(), NAMESPACE);
    let there: std::collections::HashSet<String> =
        api.list_metadata(&ListParams::default()).await?.items.iter().map(|j| j.name_any()).collect();
    let missing: Vec<u32> = (0..args.jobs).filter(|j| !there.contains(&format!("j{j:06}"))).collect();
    let made = missing.len();
    futures::stream::iter(missing)
        .map(|j| {
            let (replicas, gpus) = (if j % 17 == 0 { 4 } else { 1 }, [1, 1, 2, 4, 8][(j % 5) as usize]);
            let job = serde_json::from_value::<ComputeJob>(json!({
                "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputeJob", "metadata": { "name": format!("j{j:06}") },
                "spec": { "queue": format!("rq{}", j % args.queues.max(1)), "runtimeEstimate": format!("{}m", 30 + j % 600),
                          "priority": j % 3, "preemptible": true,
                          "taskGroups": [{ "name": "w", "replicas": replicas, "gpus": gpus, "cpu": "10m" }] }
            }));
            let api = api.clone();
            async move {
                let job = job.map_err(|e| BenchError::Setup(e.to_string()))?;
                match api.create(&PostParams::default(), &job).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                    Err(e) => Err(BenchError::from(e)),
                }
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(made)
}

fn free_port() -> Result<u16, BenchError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| BenchError::Setup(e.to_string()))?;
    l.local_addr().map(|a| a.port()).map_err(|e| BenchError::Setup(e.to_string()))
}

/// Starts the operator with the QPS limit, its metrics on `port`.
fn operator(args: &Args, port: u16) -> Result<Child, BenchError> {
    let path = match &args.operator {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| BenchError::Setup(e.to_string()))?
            .with_file_name("haiyun-operator"),
    };
    let (qps, burst) = (args.qps.to_string(), ((args.qps * 2.0) as u32).max(1).to_string());
    let (out, err) = match &args.operator_log {
        Some(p) => {
            let bad = |e: std::io::Error| BenchError::Setup(format!("failed to open {}: {e}", p.display()));
            let f = std::fs::OpenOptions::new().create(true).append(true).open(p).map_err(bad)?;
            (Stdio::from(f.try_clone().map_err(bad)?), Stdio::from(f))
        }
        None => (Stdio::null(), Stdio::null()),
    };
    Command::new(&path)
        .args(["run", "--namespace", "default", "--lease-name", LEASE, "--identity", "bench-restart"])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}"), "--telemetry-addr", "127.0.0.1:0"])
        .args(["--kube-api-qps", &qps, "--kube-api-burst", &burst, "--concurrency", "64"])
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| BenchError::Setup(format!("failed to start {}: {e}", path.display())))
}

/// Figures read from the operator's /metrics.
#[derive(Debug, Default)]
struct Read {
    cycles: u64,
    cycle_sum_s: f64,
    pending: u64,
    admitted: u64,
    placed: u64,
}

fn parse(text: &str) -> Read {
    let mut r = Read::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else { continue };
        let v: f64 = value.parse().unwrap_or(0.0);
        let metric = name.split('{').next().unwrap_or(name);
        match metric {
            "haiyun_cycle_duration_seconds_count" => r.cycles = v as u64,
            "haiyun_cycle_duration_seconds_sum" => r.cycle_sum_s = v,
            "haiyun_queue_pending_jobs" => r.pending += v as u64,
            "haiyun_queue_admitted_jobs" => r.admitted += v as u64,
            "haiyun_actions_total" if name.contains("action=\"admit\"") => r.placed = v as u64,
            _ => {}
        }
    }
    r
}

/// The operator's resident and peak memory in MiB, from /proc.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// Watches a started operator until its first cycle is done, then for `after_s` more seconds (for its peak memory).
async fn watch_start(op: &mut Child, port: u16, after_s: u64) -> Result<Start, BenchError> {
    let t0 = Instant::now();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let base = format!("http://127.0.0.1:{port}");
    let mut s = Start::default();
    let mut done: Option<Instant> = None;
    loop {
        if let Ok(Some(status)) = op.try_wait() {
            return Err(BenchError::Setup(format!("the operator exited ({status}); see --operator-log")));
        }
        if t0.elapsed() > Duration::from_secs(600) && done.is_none() {
            return Err(BenchError::Setup("the operator ran no cycle within 10 minutes".into()));
        }
        if s.caches_synced_s == 0.0
            && http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success())
        {
            s.caches_synced_s = t0.elapsed().as_secs_f64();
        }
        if done.is_none()
            && let Ok(r) = http.get(format!("{base}/metrics")).send().await
        {
            let m = parse(&r.text().await?);
            if m.cycles >= 1 {
                done = Some(Instant::now());
                s.first_cycle_done_s = t0.elapsed().as_secs_f64();
                s.first_cycle_s = m.cycle_sum_s / m.cycles as f64;
                (s.pending_after_first, s.admitted_after_first) = (m.pending, m.admitted);
                s.placed_by_first = m.placed;
                s.rss_after_first_mib = memory(op.id()).0;
            }
        }
        s.peak_rss_mib = memory(op.id()).1;
        if done.is_some_and(|d| d.elapsed() >= Duration::from_secs(after_s)) {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
