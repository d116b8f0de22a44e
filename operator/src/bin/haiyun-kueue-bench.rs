//! Kueue v0.17.0 (with kube-scheduler binding its pods) or Haiyun admitting the same batch/v1 Jobs on testenv, one
//! controller per run on a fresh control plane (`scripts/kueue-side-by-side.sh` runs Kueue, then Haiyun with Jobs,
//! then Haiyun with ComputeJobs):
//! - `--scenario scale`: Kueue's own scheduler scale test in GPUs; jobs admitted per second, time to the last pod
//!   bound, p50/p99 wait and each controller's memory and CPU;
//! - `--compute-jobs`: Haiyun gets ComputeJobs of the same shapes instead (its second row);
//! - `--scenario fragmented`: a queue whose quota fits while every node's free GPUs are too few; counts jobs admitted
//!   whose pods cannot be placed (`--topology` turns on Kueue's topology-aware scheduling).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures::{StreamExt, TryStreamExt};
use haiyun_api::ComputeJob;
use haiyun_api::job::JobPhase;
use haiyun_operator::bench::side::{self, Controller, Queues, Shape, SideError};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(name = "haiyun-kueue-bench", about = "batch/v1 Jobs through Kueue or Haiyun on testenv")]
struct Args {
    /// Which controller admits the Jobs: `kueue` (testenv up --with-kueue) or `haiyun` (started by this bench).
    #[arg(long, value_enum)]
    controller: Controller,
    /// What to run.
    #[arg(long, value_enum, default_value_t = Scenario::Scale)]
    scenario: Scenario,
    /// Jobs in all (scale: spread round robin over the queues, Kueue's test has 15 000; fragmented: per kind).
    #[arg(long, default_value_t = 15_000)]
    jobs: usize,
    /// Queues (ClusterQueues with a LocalQueue each, or Haiyun Queues); fragmented uses one.
    #[arg(long, default_value_t = 30)]
    queues: usize,
    /// Cohorts the queues are split between, in equal runs.
    #[arg(long, default_value_t = 5)]
    cohorts: usize,
    /// Each queue's nominal GPU quota (fragmented: room for every job).
    #[arg(long, default_value_t = 20)]
    quota: u32,
    /// Each queue's borrowing limit in GPUs.
    #[arg(long, default_value_t = 100)]
    borrowing_limit: u32,
    /// Haiyun only: submit ComputeJobs of the same shapes instead of batch/v1 Jobs (Haiyun makes and binds their
    /// pods itself; no Job controller takes part).
    #[arg(long)]
    compute_jobs: bool,
    /// Kueue's topology-aware scheduling: a Topology of hosts on its flavor, each pod set required on one host.
    #[arg(long)]
    topology: bool,
    /// Fragmented: how long to wait for admissions before counting.
    #[arg(long, default_value_t = 60)]
    settle_s: u64,
    /// Client QPS limit of Haiyun's operator (Kueue's is testenv's --kueue-qps, kube-scheduler's --scheduler-qps).
    #[arg(long, default_value_t = 100.0)]
    qps: f64,
    /// The operator binary (default: next to this one).
    #[arg(long)]
    operator: Option<PathBuf>,
    /// testenv's directory, for the controllers' pids (default: the directory of $KUBECONFIG).
    #[arg(long)]
    testenv_dir: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_s: u64,
    /// Print JSON only.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Scale,
    Fragmented,
}

/// The namespace of the jobs.
const NS: &str = "bench";
/// The namespace of the pods that fragment the nodes in the fragmented scenario.
const TENANTS: &str = "tenants";

/// Kueue's baseline classes (7:2:1 small:medium:large, requests 1, 5 and 20, run 200, 500 and 1 000 ms), the
/// request read as GPUs; large is a gang of four 5-GPU pods, since no node has 20 GPUs.
const CLASSES: [(&str, Shape); 3] = [
    ("small", Shape { pods: 1, gpus: 1, run_ms: Some(200) }),
    ("medium", Shape { pods: 1, gpus: 5, run_ms: Some(500) }),
    ("large", Shape { pods: 4, gpus: 5, run_ms: Some(1000) }),
];

/// The class of the `k`-th job of a queue.
fn class_of(k: usize) -> (&'static str, Shape) {
    match k % 10 {
        0..=6 => CLASSES[0],
        7 | 8 => CLASSES[1],
        _ => CLASSES[2],
    }
}

fn main() -> ExitCode {
    haiyun_operator::bench::run(bench(Args::parse()))
}

async fn bench(args: Args) -> Result<(), SideError> {
    let client = Client::try_default().await?;
    let found = haiyun_operator::bench::gpu_nodes(&client).await?;
    let model = found
        .model
        .clone()
        .ok_or_else(|| SideError::Setup("no GPU nodes: start testenv with --nodes N".into()))?;
    let dir = testenv_dir(&args)?;
    let queues = match args.scenario {
        Scenario::Scale => Queues {
            count: args.queues,
            cohorts: args.cohorts,
            quota: args.quota,
            borrowing_limit: args.borrowing_limit,
            topology: args.topology,
        },
        Scenario::Fragmented => {
            Queues { count: 1, cohorts: 1, quota: args.quota, borrowing_limit: 0, topology: args.topology }
        }
    };
    if args.compute_jobs && args.controller != Controller::Haiyun {
        return Err(SideError::Setup("--compute-jobs is for --controller haiyun: Kueue admits Jobs".into()));
    }
    if queues.count == 0 || queues.cohorts == 0 || queues.count % queues.cohorts != 0 {
        return Err(SideError::Setup("--queues must be a positive multiple of --cohorts".into()));
    }
    side::namespace(&client, NS).await?;
    if args.scenario == Scenario::Fragmented {
        fragment(&client).await?;
    }
    let operator = match args.controller {
        Controller::Kueue => {
            side::setup_kueue(&client, &queues, &model, NS).await?;
            None
        }
        Controller::Haiyun => {
            side::setup_haiyun(&client, &queues, &model, NS).await?;
            let path = match &args.operator {
                Some(p) => p.clone(),
                None => std::env::current_exe()
                    .map_err(|e| SideError::Setup(e.to_string()))?
                    .with_file_name("haiyun-operator"),
            };
            Some(side::start_operator(&path, &client, args.qps).await?)
        }
    };
    let pids: Vec<(&str, u32)> = match &operator {
        Some(child) => vec![("haiyun_operator", child.id())],
        None => vec![
            ("kueue", side::pid_of(&dir, "kueue")?),
            ("kube_scheduler", side::pid_of(&dir, "kube-scheduler")?),
        ],
    };
    if !args.json {
        eprintln!(
            "{} nodes, {} GPUs; {:?} with {:?}, {} jobs",
            found.count, found.gpus, args.scenario, args.controller, args.jobs
        );
    }
    let seen = watch(&client, args.compute_jobs);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut out = match args.scenario {
        Scenario::Scale => scale(&client, &args, &seen).await?,
        Scenario::Fragmented => fragmented(&client, &args, &seen).await?,
    };
    let used: serde_json::Map<String, Value> =
        pids.iter().map(|(name, pid)| (name.to_string(), side::process(*pid))).collect();
    if let Some(mut child) = operator {
        let _ = child.kill();
        let _ = child.wait();
    }
    out["controller"] = json!(format!("{:?}", args.controller).to_lowercase());
    out["submitted"] = json!(if args.compute_jobs { "ComputeJob" } else { "batch/v1 Job" });
    out["topology"] = json!(args.controller == Controller::Kueue && args.topology);
    out["nodes"] = json!(found.count);
    out["gpus"] = json!(found.gpus);
    out["controllers"] = Value::Object(used);
    println!("{out}");
    Ok(())
}

/// testenv's directory: `--testenv-dir`, else where $KUBECONFIG lies.
fn testenv_dir(args: &Args) -> Result<PathBuf, SideError> {
    if let Some(d) = &args.testenv_dir {
        return Ok(d.clone());
    }
    let kc = std::env::var("KUBECONFIG").map_err(|_| {
        SideError::Setup("set KUBECONFIG to testenv's kubeconfig, or pass --testenv-dir".into())
    })?;
    Path::new(&kc)
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| SideError::Setup(format!("KUBECONFIG={kc} has no directory")))
}

/// When each Job was first seen unsuspended (a ComputeJob: admitted) and each pod first seen bound.
#[derive(Debug, Default)]
struct Seen {
    admitted: HashMap<String, Instant>,
    bound: HashMap<String, Instant>,
}

type Shared = Arc<Mutex<Seen>>;

/// Watches the bench namespace's Jobs (with `compute_jobs`, ComputeJobs) and pods into a shared [`Seen`].
fn watch(client: &Client, compute_jobs: bool) -> Shared {
    let seen: Shared = Arc::default();
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    let s = seen.clone();
    if compute_jobs {
        let cjs: Api<ComputeJob> = Api::namespaced(client.clone(), NS);
        tokio::spawn(async move {
            let stream = watcher(cjs, watcher::Config::default());
            futures::pin_mut!(stream);
            while let Some(Ok(ev)) = stream.next().await {
                if let watcher::Event::Apply(j) | watcher::Event::InitApply(j) = ev
                    && j.status.as_ref().is_some_and(|s| {
                        matches!(s.phase, JobPhase::Admitted | JobPhase::Running | JobPhase::Succeeded)
                    })
                {
                    let mut g = s.lock().unwrap_or_else(|p| p.into_inner());
                    g.admitted.entry(j.name_any()).or_insert_with(Instant::now);
                }
            }
        });
    } else {
        tokio::spawn(async move {
            let stream = watcher(jobs, watcher::Config::default());
            futures::pin_mut!(stream);
            while let Some(Ok(ev)) = stream.next().await {
                if let watcher::Event::Apply(j) | watcher::Event::InitApply(j) = ev
                    && j.spec.as_ref().and_then(|s| s.suspend) == Some(false)
                {
                    let mut g = s.lock().unwrap_or_else(|p| p.into_inner());
                    g.admitted.entry(j.name_any()).or_insert_with(Instant::now);
                }
            }
        });
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let s = seen.clone();
    tokio::spawn(async move {
        let stream = watcher(pods, watcher::Config::default());
        futures::pin_mut!(stream);
        while let Some(Ok(ev)) = stream.next().await {
            if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = ev
                && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
            {
                let mut g = s.lock().unwrap_or_else(|p| p.into_inner());
                g.bound.entry(p.name_any()).or_insert_with(Instant::now);
            }
        }
    });
    seen
}

/// Creates `jobs` (name, queue, shape), 32 at a time; returns when each was created.
async fn submit(
    client: &Client,
    args: &Args,
    jobs: Vec<(String, usize, Shape)>,
) -> Result<HashMap<String, Instant>, SideError> {
    let api: Api<Job> = Api::namespaced(client.clone(), NS);
    let cjs: Api<ComputeJob> = Api::namespaced(client.clone(), NS);
    let (controller, topology, compute_jobs) = (args.controller, args.topology, args.compute_jobs);
    let made: Vec<(String, Instant)> = futures::stream::iter(jobs)
        .map(|(name, q, shape)| {
            let (api, cjs) = (api.clone(), cjs.clone());
            async move {
                let obj = side::job(controller, &name, NS, q, shape, topology)?;
                let cj = side::compute_job(&name, NS, q, shape)?;
                let pp = PostParams::default();
                let mut wait = Duration::from_millis(200);
                loop {
                    let made = if compute_jobs {
                        cjs.create(&pp, &cj).await.map(|_| ())
                    } else {
                        api.create(&pp, &obj).await.map(|_| ())
                    };
                    match made {
                        Ok(_) => return Ok((name, Instant::now())),
                        // A retried create whose first try went through.
                        Err(kube::Error::Api(s)) if s.code == 409 => return Ok((name, Instant::now())),
                        Err(kube::Error::Api(s)) if s.code < 429 => {
                            return Err(SideError::Setup(format!("creating Job {name}: {}", s.message)));
                        }
                        Err(e) if wait > Duration::from_secs(20) => return Err(e.into()),
                        Err(_) => {
                            tokio::time::sleep(wait).await;
                            wait *= 2;
                        }
                    }
                }
            }
        })
        .buffer_unordered(32)
        .try_collect()
        .await?;
    Ok(made.into_iter().collect())
}

/// Kueue's scale test: every job through, timed.
async fn scale(client: &Client, args: &Args, seen: &Shared) -> Result<Value, SideError> {
    let jobs: Vec<(String, usize, Shape)> =
        (0..args.jobs).map(|i| (format!("j{i:05}"), i % args.queues, class_of(i / args.queues).1)).collect();
    let pods: usize = jobs.iter().map(|(_, _, s)| s.pods as usize).sum();
    let t0 = Instant::now();
    let created = submit(client, args, jobs).await?;
    if !args.json {
        eprintln!("{} jobs created in {:.1} s", args.jobs, t0.elapsed().as_secs_f64());
    }
    let finished = wait_done(seen, args.jobs, pods, Duration::from_secs(args.timeout_s), args.json).await;
    let g = seen.lock().unwrap_or_else(|p| p.into_inner());
    let mut waits: Vec<f64> = Vec::new();
    let mut by_class: HashMap<&str, Vec<f64>> = HashMap::new();
    for (name, at) in &g.admitted {
        let (Some(made), Some(i)) =
            (created.get(name), name.strip_prefix('j').and_then(|n| n.parse::<usize>().ok()))
        else {
            continue;
        };
        let w = at.saturating_duration_since(*made).as_secs_f64();
        waits.push(w);
        by_class.entry(class_of(i / args.queues).0).or_default().push(w);
    }
    waits.sort_by(f64::total_cmp);
    let last_admit = g.admitted.values().max().map(|t| t.saturating_duration_since(t0).as_secs_f64());
    let last_bound = g.bound.values().max().map(|t| t.saturating_duration_since(t0).as_secs_f64());
    let mean_by_class: serde_json::Map<String, Value> = by_class
        .iter()
        .map(|(c, v)| (c.to_string(), json!(v.iter().sum::<f64>() / v.len().max(1) as f64)))
        .collect();
    Ok(json!({
        "scenario": "scale",
        "jobs": args.jobs, "pods": pods, "queues": args.queues, "cohorts": args.cohorts,
        "quota": args.quota, "borrowing_limit": args.borrowing_limit,
        "finished": finished,
        "admitted": g.admitted.len(), "bound": g.bound.len(),
        "admitted_per_s": last_admit.map(|s| g.admitted.len() as f64 / s),
        "last_admitted_s": last_admit,
        "last_pod_bound_s": last_bound,
        "wait_p50_s": percentile(&waits, 50.0), "wait_p99_s": percentile(&waits, 99.0),
        "wait_mean_by_class_s": mean_by_class,
    }))
}

/// Waits until every job was admitted and every pod bound, or `limit`; false when it gave up.
async fn wait_done(seen: &Shared, jobs: usize, pods: usize, limit: Duration, quiet: bool) -> bool {
    let start = Instant::now();
    let mut last_say = Instant::now();
    loop {
        let (a, b) = {
            let g = seen.lock().unwrap_or_else(|p| p.into_inner());
            (g.admitted.len(), g.bound.len())
        };
        if a >= jobs && b >= pods {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        if !quiet && last_say.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "{:.0} s: {a}/{jobs} jobs admitted, {b}/{pods} pods bound",
                start.elapsed().as_secs_f64()
            );
            last_say = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `p`-th percentile (0–100) of sorted `v`.
fn percentile(v: &[f64], p: f64) -> Option<f64> {
    let last = v.len().checked_sub(1)?;
    v.get((((p / 100.0) * last as f64).round() as usize).min(last)).copied()
}

/// GPUs every node keeps for other tenants in the fragmented scenario (of testenv's 8), leaving 3 free on each.
const TENANT_GPUS: u32 = 5;

/// Takes `TENANT_GPUS` on every kwok node with a pod bound there directly (no queue, no scheduler, as another
/// tenant's or a system pod would), and waits until kwok runs them all.
async fn fragment(client: &Client) -> Result<(), SideError> {
    side::namespace(client, TENANTS).await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), TENANTS);
    let names: Vec<String> = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .list(&ListParams::default().labels("type=kwok"))
        .await?
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    futures::stream::iter(names.clone())
        .map(|node| {
            let api = api.clone();
            async move {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": { "name": format!("tenant-{node}") },
                    "spec": { "nodeName": node, "restartPolicy": "Never",
                        "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.10",
                            "resources": { "limits": { "nvidia.com/gpu": TENANT_GPUS.to_string() } } }] }
                }))
                .map_err(|e| SideError::Setup(e.to_string()))?;
                match api.create(&PostParams::default(), &pod).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                    Err(e) => Err(SideError::from(e)),
                }
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    let start = Instant::now();
    loop {
        let running = api
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        if running >= names.len() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(120) {
            return Err(SideError::Setup(format!(
                "only {running} of {} tenant pods running after 120 s",
                names.len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Jobs that fit the free GPUs left on a node (`TENANT_GPUS` taken) and jobs that fit none, the same number of each,
/// in one queue whose quota fits them all; after `--settle-s`, how many of each were admitted and bound.
async fn fragmented(client: &Client, args: &Args, seen: &Shared) -> Result<Value, SideError> {
    let fits = Shape { pods: 1, gpus: 8 - TENANT_GPUS, run_ms: None };
    let scattered = Shape { pods: 1, gpus: 8 - TENANT_GPUS + 1, run_ms: None };
    let mut jobs = Vec::new();
    for i in 0..args.jobs {
        jobs.push((format!("fit-{i:04}"), 0, fits));
        jobs.push((format!("scattered-{i:04}"), 0, scattered));
    }
    submit(client, args, jobs).await?;
    tokio::time::sleep(Duration::from_secs(args.settle_s)).await;
    let pods: Vec<Pod> = Api::<Pod>::namespaced(client.clone(), NS).list(&ListParams::default()).await?.items;
    let g = seen.lock().unwrap_or_else(|p| p.into_inner());
    let count = |prefix: &str| g.admitted.keys().filter(|k| k.starts_with(prefix)).count();
    let bound = |prefix: &str| g.bound.keys().filter(|k| k.starts_with(prefix)).count();
    let unschedulable = |prefix: &str| {
        pods.iter()
            .filter(|p| p.name_any().starts_with(prefix))
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none())
            .count()
    };
    Ok(json!({
        "scenario": "fragmented",
        "tenant_gpus_per_node": TENANT_GPUS, "quota": args.quota, "settle_s": args.settle_s,
        "fitting": { "jobs": args.jobs, "gpus": fits.gpus, "admitted": count("fit-"), "pods_bound": bound("fit-") },
        "scattered": { "jobs": args.jobs, "gpus": scattered.gpus, "admitted": count("scattered-"),
            "pods_bound": bound("scattered-"), "admitted_but_unschedulable": unschedulable("scattered-") },
    }))
}
