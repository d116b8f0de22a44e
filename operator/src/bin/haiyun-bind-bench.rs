//! Pods bound per second on a real API server with kwok nodes: Haiyun against the upstream kube-scheduler on the
//! same nodes and pods, under the same client QPS limit. Start testenv first, e.g.
//! `testenv/testenv up --dir /tmp/bench --nodes 1000 --gpus-per-node 16 --with-scheduler --scheduler-qps 500`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use haiyun_api::{ComputeJob, ComputePool, JOB_NAME_LABEL, Queue};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "haiyun-bind-bench", about = "Pods bound per second: Haiyun vs kube-scheduler on testenv")]
struct Args {
    /// Single-GPU pods to bind.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Gangs to bind.
    #[arg(long, default_value_t = 1_000)]
    gangs: usize,
    /// Pods per gang (one GPU each).
    #[arg(long, default_value_t = 8)]
    gang_size: u32,
    /// Client QPS limit given to Haiyun's operator; start kube-scheduler with the same (testenv --scheduler-qps).
    #[arg(long, default_value_t = 500.0)]
    qps: f64,
    /// Creates the bench keeps in flight (pods, or ComputeJobs for the gangs), for both schedulers: the single-pod
    /// runs bind as fast as they are made when this is too low (see `created_s` in the output).
    #[arg(long, default_value_t = 32)]
    create_concurrency: usize,
    /// The operator binary (default: next to this one).
    #[arg(long)]
    operator: Option<PathBuf>,
    /// Print JSON only.
    #[arg(long)]
    json: bool,
}

/// One side of one comparison.
#[derive(Debug, Clone, serde::Serialize)]
struct Run {
    pods: usize,
    seconds: f64,
    pods_per_s: f64,
    /// Seconds until the bench's last create returned: a run that binds its last pod just after that was paced by
    /// the creates, not by the scheduler.
    created_s: f64,
}

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("failed to talk to the API server: {0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Setup(String),
}

fn main() -> ExitCode {
    haiyun_operator::bench::run(bench(Args::parse()))
}

async fn bench(args: Args) -> Result<(), BenchError> {
    let client = Client::try_default().await?;
    let found = haiyun_operator::bench::gpu_nodes(&client).await?;
    let model =
        found.model.ok_or_else(|| BenchError::Setup("no GPU nodes: start testenv with --nodes N".into()))?;
    let gpus = found.gpus;
    let need = args.pods.max(args.gangs * args.gang_size as usize) as u64;
    if gpus < need {
        return Err(BenchError::Setup(format!(
            "{gpus} GPUs on the nodes, {need} needed: add nodes or GPUs per node"
        )));
    }
    setup(&client, &model).await?;
    let say = |s: String| {
        if !args.json {
            eprintln!("{s}");
        }
    };
    say(format!("{} nodes, {gpus} GPUs; client QPS limit {}", found.count, args.qps));

    let c = args.create_concurrency.max(1);
    let ks = pods_run(&client, ("bench-ks", c), args.pods, "default-scheduler", None).await?;
    say(format!("kube-scheduler: {} single-GPU pods in {:.1} s", ks.pods, ks.seconds));
    let mut op = operator(&args, &client).await?;
    let hy = pods_run(&client, ("bench-hy", c), args.pods, "haiyun", Some("bench")).await?;
    say(format!("haiyun:         {} single-GPU pods in {:.1} s", hy.pods, hy.seconds));
    let total = args.gangs * args.gang_size as usize;
    let ks_g = pods_run(&client, ("bench-ks-gang", c), total, "default-scheduler", None).await?;
    say(format!("kube-scheduler: {total} pods (no gangs) in {:.1} s", ks_g.seconds));
    let (hy_g, partial) = gangs_run(&client, ("bench-hy-gang", c), args.gangs, args.gang_size).await?;
    say(format!(
        "haiyun:         {} gangs of {} in {:.1} s, {partial} gangs left partly bound",
        args.gangs, args.gang_size, hy_g.seconds
    ));
    let _ = op.kill();
    let _ = op.wait();

    let out = json!({
        "nodes": found.count,
        "gpus": gpus,
        "client_qps": args.qps,
        "create_concurrency": c,
        "single": { "kube_scheduler": ks, "haiyun": hy, "haiyun_vs_kube_scheduler": hy.pods_per_s / ks.pods_per_s },
        "gangs": {
            "gangs": args.gangs, "gang_size": args.gang_size,
            "kube_scheduler_without_gangs": ks_g, "haiyun": hy_g,
            "haiyun_vs_kube_scheduler": hy_g.pods_per_s / ks_g.pods_per_s,
            "gangs_left_partly_bound": partial,
        }
    });
    println!("{out}");
    Ok(())
}

/// A pool over every GPU node, a queue with room for everything, and the bench namespaces.
async fn setup(client: &Client, model: &str) -> Result<(), BenchError> {
    haiyun_operator::bench::install_crds(client, "haiyun-bench").await?;
    let pool: ComputePool = serde_json::from_value(json!({
        "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputePool", "metadata": { "name": "bench" },
        "spec": { "kind": "ai", "backend": { "kubernetes": { "nodeSelector": { "type": "kwok" } } } }
    }))
    .map_err(|e| BenchError::Setup(e.to_string()))?;
    Api::<ComputePool>::all(client.clone())
        .patch("bench", &PatchParams::apply("haiyun-bench").force(), &Patch::Apply(&pool))
        .await?;
    let queue: Queue = serde_json::from_value(json!({
        "apiVersion": "haiyun.io/v1alpha1", "kind": "Queue", "metadata": { "name": "bench" },
        "spec": { "resources": [
            { "flavor": format!("nvidia.com/gpu:{}", model.to_lowercase()), "nominal": "1000000" },
            { "flavor": "cpu", "nominal": "1000000" }
        ] }
    }))
    .map_err(|e| BenchError::Setup(e.to_string()))?;
    Api::<Queue>::all(client.clone())
        .patch("bench", &PatchParams::apply("haiyun-bench").force(), &Patch::Apply(&queue))
        .await?;
    let nss: Api<Namespace> = Api::all(client.clone());
    for ns in ["bench-ks", "bench-hy", "bench-ks-gang", "bench-hy-gang"] {
        let obj: Namespace = serde_json::from_value(json!({ "metadata": { "name": ns } }))
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        match nss.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Starts the operator with the QPS limit and waits until it leads.
async fn operator(args: &Args, client: &Client) -> Result<Child, BenchError> {
    let path = match &args.operator {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| BenchError::Setup(e.to_string()))?
            .with_file_name("haiyun-operator"),
    };
    let qps = args.qps.to_string();
    let burst = ((args.qps * 2.0) as u32).max(1).to_string();
    let child = Command::new(&path)
        .args(["run", "--namespace", "default", "--lease-name", "bench", "--identity", "bench"])
        .args(["--metrics-addr", "127.0.0.1:0", "--kube-api-qps", &qps, "--kube-api-burst", &burst])
        .args(["--concurrency", "64", "--interval-ms", "1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| BenchError::Setup(format!("failed to start {}: {e}", path.display())))?;
    haiyun_operator::bench::wait_leading(client, "bench", "bench", Duration::from_secs(60))
        .await
        .map_err(BenchError::Setup)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(child)
}

fn pod(name: &str, scheduler: &str, queue: Option<&str>) -> Pod {
    let mut labels = json!({ "app": "bench" });
    if let Some(q) = queue {
        labels[haiyun_api::QUEUE_LABEL] = json!(q);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "schedulerName": scheduler,
            "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.10",
                "resources": { "requests": { "cpu": "10m", "nvidia.com/gpu": "1" }, "limits": { "nvidia.com/gpu": "1" } } }]
        }
    }))
    .unwrap_or_default()
}

/// Pods seen bound, when the last one was, and bound pods by job.
type Bound = Arc<Mutex<(HashSet<String>, Instant, HashMap<String, HashSet<String>>)>>;

/// Bound pods in `ns`, counted by a watch.
fn count_bound(client: &Client, ns: &str) -> Bound {
    let state: Bound = Arc::new(Mutex::new((HashSet::new(), Instant::now(), HashMap::new())));
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let s = state.clone();
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default());
        futures::pin_mut!(stream);
        while let Some(Ok(ev)) = stream.next().await {
            let pods: Vec<Pod> = match ev {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => vec![p],
                _ => continue,
            };
            let mut g = s.lock().unwrap_or_else(|p| p.into_inner());
            for p in pods {
                if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() && g.0.insert(p.name_any()) {
                    g.1 = Instant::now();
                    if let Some(job) = p.labels().get(JOB_NAME_LABEL) {
                        g.2.entry(job.clone()).or_default().insert(p.name_any());
                    }
                }
            }
        }
    });
    state
}

async fn wait_all(state: &Bound, n: usize) -> Result<Instant, BenchError> {
    let start = Instant::now();
    loop {
        {
            let g = state.lock().unwrap_or_else(|p| p.into_inner());
            if g.0.len() >= n {
                return Ok(g.1);
            }
            if start.elapsed() > Duration::from_secs(900) {
                return Err(BenchError::Setup(format!("only {} of {n} pods bound after 15 min", g.0.len())));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `f` until it succeeds, retrying errors of the connection or of an overloaded server (not refusals).
async fn retry<T, F, Fut>(mut f: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut wait = Duration::from_millis(200);
    for _ in 0..8 {
        match f().await {
            Err(kube::Error::Api(s)) if s.code < 429 => return Err(kube::Error::Api(s)),
            Err(e) => {
                eprintln!("retrying after: {e}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            ok => return ok,
        }
    }
    f().await
}

/// Creates `n` single-GPU pods for `scheduler` in `ns`, `concurrency` at a time, and times them until all are bound;
/// then deletes them.
async fn pods_run(
    client: &Client,
    (ns, concurrency): (&str, usize),
    n: usize,
    scheduler: &str,
    queue: Option<&str>,
) -> Result<Run, BenchError> {
    let state = count_bound(client, ns);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let t0 = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let p = pod(&format!("p{i:05}"), scheduler, queue);
            async move {
                let pp = PostParams::default();
                match retry(|| api.create(&pp, &p)).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                    Err(e) => Err(e),
                }
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let created_s = t0.elapsed().as_secs_f64();
    let last = wait_all(&state, n).await?;
    let seconds = (last - t0).as_secs_f64();
    clean(client, ns).await?;
    Ok(Run { pods: n, seconds, pods_per_s: n as f64 / seconds, created_s })
}

/// Creates `gangs` ComputeJobs of `size` one-GPU pods in `ns`, `concurrency` at a time, times them until every pod
/// is bound, and counts gangs that were ever seen partly bound once all were done (0 means every gang was bound
/// whole).
async fn gangs_run(
    client: &Client,
    (ns, concurrency): (&str, usize),
    gangs: usize,
    size: u32,
) -> Result<(Run, usize), BenchError> {
    let state = count_bound(client, ns);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let api: Api<ComputeJob> = Api::namespaced(client.clone(), ns);
    let t0 = Instant::now();
    futures::stream::iter(0..gangs)
        .map(|i| {
            let api = api.clone();
            let job: Result<ComputeJob, _> = serde_json::from_value(json!({
                "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputeJob",
                "metadata": { "name": format!("g{i:04}") },
                "spec": { "queue": "bench", "taskGroups": [{ "name": "w", "replicas": size, "gpus": 1, "cpu": "10m" }] }
            }));
            async move {
                let job = job.map_err(|e| BenchError::Setup(e.to_string()))?;
                let pp = PostParams::default();
                match retry(|| api.create(&pp, &job)).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                    Err(e) => Err(BenchError::from(e)),
                }
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let created_s = t0.elapsed().as_secs_f64();
    let n = gangs * size as usize;
    let last = wait_all(&state, n).await?;
    let seconds = (last - t0).as_secs_f64();
    let partial = {
        let g = state.lock().unwrap_or_else(|p| p.into_inner());
        g.2.values().filter(|pods| pods.len() != size as usize).count()
    };
    let (dp, lp) = (DeleteParams::default(), ListParams::default());
    retry(|| api.delete_collection(&dp, &lp)).await?;
    clean(client, ns).await?;
    Ok((Run { pods: n, seconds, pods_per_s: n as f64 / seconds, created_s }, partial))
}

/// Deletes every pod of `ns` and waits until they are gone.
async fn clean(client: &Client, ns: &str) -> Result<(), BenchError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let (dp, lp, one) =
        (DeleteParams::default().grace_period(0), ListParams::default(), ListParams::default().limit(1));
    retry(|| api.delete_collection(&dp, &lp)).await?;
    let start = Instant::now();
    while !retry(|| api.list(&one)).await?.items.is_empty() {
        if start.elapsed() > Duration::from_secs(300) {
            return Err(BenchError::Setup(format!("pods of {ns} were not deleted within 5 min")));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}
