//! Placements per second across remote clusters driven by one operator, as a ratio to the single-cluster rate measured
//! in the same run on the same machine; the p99 from decision to remote create; remote objects per job; the
//! operator's peak memory. Start testenv control planes with kwok nodes first: the local one (`KUBECONFIG`) and the
//! remotes, e.g. `testenv/testenv up --dir /tmp/fed-r0 --nodes 500 --gpus-per-node 8` for each.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use haiyun_api::{ComputeJob, ComputePool, JOB_NAME_LABEL, Queue};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config, ResourceExt};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "haiyun-federation-bench", about = "One operator placing jobs across remote clusters")]
struct Args {
    /// Kubeconfigs of the remote clusters, comma-separated (testenv control planes with kwok nodes).
    #[arg(long, value_delimiter = ',', required = true)]
    remotes: Vec<PathBuf>,
    /// One-GPU jobs placed in each phase (local, then remote).
    #[arg(long, default_value_t = 2000)]
    jobs: usize,
    /// The operator binary (default: next to this one).
    #[arg(long)]
    operator: Option<PathBuf>,
    /// Print JSON only.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("failed to talk to an API server: {0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Setup(String),
}

const QUEUE: &str = "fed-bench";
const LEASE: &str = "fed-bench";

fn main() -> ExitCode {
    haiyun_operator::bench::run(bench(Args::parse()))
}

fn setup_err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(e.to_string())
}

/// A client for a kubeconfig file, with its text.
async fn remote(path: &PathBuf) -> Result<(Client, String), BenchError> {
    let text = std::fs::read_to_string(path).map_err(|e| setup_err(format!("{}: {e}", path.display())))?;
    let kc = Kubeconfig::from_yaml(&text).map_err(setup_err)?;
    let config =
        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.map_err(setup_err)?;
    Ok((Client::try_from(config)?, text))
}

async fn bench(args: Args) -> Result<(), BenchError> {
    let say = |s: String| {
        if !args.json {
            eprintln!("{s}");
        }
    };
    let local = Client::try_default().await?;
    let mut remotes = Vec::new();
    for p in &args.remotes {
        remotes.push(remote(p).await?);
    }
    setup(&local).await?;
    let origin = haiyun_operator::backend::remote::links::origin(LEASE, "default");
    let op = Operator(operator(&args, &local).await?);

    // The baseline: the same operator placing the same jobs on this cluster's own kwok nodes.
    apply_pool(&local, "bench-local", json!({ "kubernetes": { "nodeSelector": { "type": "kwok" } } }))
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base = phase(&local, &[(local.clone(), String::new())], "fed-bench-local", args.jobs).await?;
    say(format!("one cluster: {} jobs in {:.1} s ({:.1}/s)", args.jobs, base.seconds, base.per_s));
    match Api::<ComputePool>::all(local.clone()).delete("bench-local", &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    delete_jobs(&local, "fed-bench-local").await?;

    // The federation: one pool per remote cluster, its kubeconfig in a Secret.
    let secrets: Api<Secret> = Api::namespaced(local.clone(), "default");
    for (i, (_, text)) in remotes.iter().enumerate() {
        let s: Secret = serde_json::from_value(json!({
            "metadata": { "name": format!("bench-r{i}") }, "stringData": { "kubeconfig": text }
        }))
        .map_err(setup_err)?;
        secrets
            .patch(&format!("bench-r{i}"), &PatchParams::apply("haiyun-bench").force(), &Patch::Apply(&s))
            .await?;
        let backend = json!({ "remoteKubernetes": { "secretName": format!("bench-r{i}"),
            "nodeSelector": { "type": "kwok" } } });
        apply_pool(&local, &format!("bench-r{i}"), backend).await?;
    }
    wait_ready(&local, remotes.len()).await?;
    let watched: Vec<(Client, String)> = remotes.iter().map(|(c, _)| (c.clone(), origin.clone())).collect();
    let fed = phase(&local, &watched, "fed-bench-remote", args.jobs).await?;
    say(format!(
        "{} remote clusters: {} jobs in {:.1} s ({:.1}/s); decision → remote create p50 {:.0} ms, p99 {:.0} ms",
        remotes.len(),
        args.jobs,
        fed.seconds,
        fed.per_s,
        fed.p50_ms,
        fed.p99_ms
    ));
    let mut objects = 0usize;
    for (c, _) in &remotes {
        let lp = ListParams::default()
            .labels(&format!("{}={origin}", haiyun_operator::backend::remote::ORIGIN_LABEL));
        objects += Api::<Pod>::all(c.clone()).list(&lp).await?.items.len();
        objects += Api::<Service>::all(c.clone()).list(&lp).await?.items.len();
    }
    delete_jobs(&local, "fed-bench-remote").await?;
    let peak_mib = peak_rss_mib(op.0.id());
    drop(op);
    let out = json!({
        "remote_clusters": remotes.len(),
        "jobs": args.jobs,
        "single_cluster": { "seconds": base.seconds, "placements_per_s": base.per_s },
        "federation": {
            "seconds": fed.seconds, "placements_per_s": fed.per_s,
            "decision_to_remote_create_ms": { "p50": fed.p50_ms, "p99": fed.p99_ms },
        },
        "federation_vs_single_cluster": fed.per_s / base.per_s,
        "remote_objects_per_job": objects as f64 / args.jobs as f64,
        "operator_peak_rss_mib": peak_mib,
    });
    println!("{out}");
    Ok(())
}

/// CRDs, the queue and the namespaces.
async fn setup(client: &Client) -> Result<(), BenchError> {
    haiyun_operator::bench::install_crds(client, "haiyun-bench").await?;
    let queue: Queue = serde_json::from_value(json!({
        "apiVersion": "haiyun.io/v1alpha1", "kind": "Queue", "metadata": { "name": QUEUE },
        "spec": { "resources": [
            { "flavor": "nvidia.com/gpu:h100", "nominal": "1000000" },
            { "flavor": "cpu", "nominal": "1000000" }
        ] }
    }))
    .map_err(setup_err)?;
    Api::<Queue>::all(client.clone())
        .patch(QUEUE, &PatchParams::apply("haiyun-bench").force(), &Patch::Apply(&queue))
        .await?;
    let nss: Api<Namespace> = Api::all(client.clone());
    for ns in ["fed-bench-local", "fed-bench-remote"] {
        let obj: Namespace =
            serde_json::from_value(json!({ "metadata": { "name": ns } })).map_err(setup_err)?;
        match nss.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn apply_pool(client: &Client, name: &str, backend: serde_json::Value) -> Result<(), BenchError> {
    let pool: ComputePool = serde_json::from_value(json!({
        "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputePool", "metadata": { "name": name },
        "spec": { "kind": "ai", "site": name, "backend": backend }
    }))
    .map_err(setup_err)?;
    Api::<ComputePool>::all(client.clone())
        .patch(name, &PatchParams::apply("haiyun-bench").force(), &Patch::Apply(&pool))
        .await?;
    Ok(())
}

/// Waits until `n` remote pools are Ready.
async fn wait_ready(client: &Client, n: usize) -> Result<(), BenchError> {
    let api: Api<ComputePool> = Api::all(client.clone());
    let start = Instant::now();
    loop {
        let ready = api
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|p| p.spec.backend.remote_kubernetes.is_some())
            .filter(|p| {
                p.status
                    .as_ref()
                    .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        if ready >= n {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(300) {
            return Err(setup_err(format!("only {ready} of {n} remote pools Ready after 5 min")));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The operator under test, stopped when the bench ends, by an error or not: one left running would go on placing
/// the next run's jobs.
struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the operator and waits until it leads.
async fn operator(args: &Args, client: &Client) -> Result<Child, BenchError> {
    let path = match &args.operator {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(setup_err)?.with_file_name("haiyun-operator"),
    };
    let child = Command::new(&path)
        // A long Lease: with many control planes on few cores a renewal can be slow, and a lost Lease ends the run.
        .args([
            "run",
            "--namespace",
            "default",
            "--lease-name",
            LEASE,
            "--identity",
            "bench",
            "--lease-seconds",
            "60",
        ])
        .args(["--metrics-addr", "127.0.0.1:0", "--telemetry-addr", "127.0.0.1:0"])
        .args(["--concurrency", "64", "--interval-ms", "1000", "--remote-sync-ms", "2000"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| setup_err(format!("failed to start {}: {e}", path.display())))?;
    haiyun_operator::bench::wait_leading(client, LEASE, "bench", Duration::from_secs(60))
        .await
        .map_err(BenchError::Setup)?;
    Ok(child)
}

/// When each job (by name) was first seen placed, and its first pod first seen bound.
#[derive(Debug, Default)]
struct Seen {
    placed: HashMap<String, Instant>,
    bound: HashMap<String, Instant>,
}

/// Watches the jobs of `ns` here for their placement, and the pods of `ns` in each cluster for their binding.
fn watch(local: &Client, clusters: &[(Client, String)], ns: &str) -> Arc<Mutex<Seen>> {
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let jobs: Api<ComputeJob> = Api::namespaced(local.clone(), ns);
    let s = seen.clone();
    tokio::spawn(async move {
        let stream = watcher(jobs, watcher::Config::default());
        futures::pin_mut!(stream);
        while let Some(Ok(ev)) = stream.next().await {
            if let watcher::Event::Apply(j) | watcher::Event::InitApply(j) = ev {
                if j.status.as_ref().is_some_and(|st| st.placement.is_some()) {
                    let mut g = s.lock().unwrap_or_else(|p| p.into_inner());
                    g.placed.entry(j.name_any()).or_insert_with(Instant::now);
                }
            }
        }
    });
    for (c, origin) in clusters {
        let pods: Api<Pod> = Api::namespaced(c.clone(), ns);
        let mut config = watcher::Config::default();
        if !origin.is_empty() {
            config = config.labels(&format!("{}={origin}", haiyun_operator::backend::remote::ORIGIN_LABEL));
        }
        let s = seen.clone();
        tokio::spawn(async move {
            let stream = watcher(pods, config);
            futures::pin_mut!(stream);
            while let Some(Ok(ev)) = stream.next().await {
                if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = ev {
                    let bound = p.spec.as_ref().is_some_and(|s| s.node_name.is_some());
                    if let (true, Some(job)) = (bound, p.labels().get(JOB_NAME_LABEL)) {
                        let mut g = s.lock().unwrap_or_else(|p| p.into_inner());
                        g.bound.entry(job.clone()).or_insert_with(Instant::now);
                    }
                }
            }
        });
    }
    seen
}

/// One phase's figures.
#[derive(Debug)]
struct Phase {
    seconds: f64,
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Creates `n` one-GPU jobs in `ns` and times them until each has its pod bound in one of `clusters`.
async fn phase(
    local: &Client,
    clusters: &[(Client, String)],
    ns: &str,
    n: usize,
) -> Result<Phase, BenchError> {
    let seen = watch(local, clusters, ns);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let api: Api<ComputeJob> = Api::namespaced(local.clone(), ns);
    let t0 = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let job: Result<ComputeJob, _> = serde_json::from_value(json!({
                "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputeJob",
                "metadata": { "name": format!("j{i:05}") },
                "spec": { "queue": QUEUE, "taskGroups": [{ "name": "w", "replicas": 1, "gpus": 1, "cpu": "10m" }] }
            }));
            async move {
                let job = job.map_err(setup_err)?;
                match api.create(&PostParams::default(), &job).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                    Err(e) => Err(BenchError::from(e)),
                }
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    let last = loop {
        {
            let g = seen.lock().unwrap_or_else(|p| p.into_inner());
            if g.bound.len() >= n {
                break g.bound.values().max().copied().unwrap_or(t0);
            }
            if t0.elapsed() > Duration::from_secs(1800) {
                return Err(setup_err(format!("only {} of {n} jobs bound after 30 min", g.bound.len())));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let seconds = (last - t0).as_secs_f64();
    let mut lags: Vec<f64> = {
        let g = seen.lock().unwrap_or_else(|p| p.into_inner());
        g.bound
            .iter()
            .filter_map(|(job, at)| {
                Some(at.saturating_duration_since(*g.placed.get(job)?).as_secs_f64() * 1000.0)
            })
            .collect()
    };
    lags.sort_by(f64::total_cmp);
    let pick =
        |q: f64| lags.get(((lags.len() as f64 * q) as usize).min(lags.len().saturating_sub(1))).copied();
    let (p50_ms, p99_ms) = (pick(0.5).unwrap_or(0.0), pick(0.99).unwrap_or(0.0));
    Ok(Phase { seconds, per_s: n as f64 / seconds, p50_ms, p99_ms })
}

async fn delete_jobs(client: &Client, ns: &str) -> Result<(), BenchError> {
    let api: Api<ComputeJob> = Api::namespaced(client.clone(), ns);
    api.delete_collection(&DeleteParams::default(), &ListParams::default()).await?;
    Ok(())
}

/// The operator's peak resident memory (VmHWM), MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
