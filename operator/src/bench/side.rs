//! Kueue and Haiyun side by side on testenv: the same queues, quotas and batch/v1 Jobs for either controller, and
//! what each controller process used.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use haiyun_api::{ComputeJob, ComputePool, GPU_MODEL_LABEL, QUEUE_LABEL, Queue, SCHEDULER_NAME};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// Why a side-by-side run could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SideError {
    #[error("failed to talk to the API server: {0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Setup(String),
}

/// Which controller admits the Jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Controller {
    /// Kueue v0.17.0 (`testenv up --with-kueue`), kube-scheduler binding its pods.
    Kueue,
    /// Haiyun's operator, which admits and binds.
    Haiyun,
}

/// The queues both controllers get: `count` queues in `cohorts` equal runs, each with a nominal GPU quota and a
/// borrowing limit; `topology` turns on Kueue's topology-aware scheduling (a Topology of hosts on its flavor).
#[derive(Debug, Clone, Copy)]
pub struct Queues {
    pub count: usize,
    pub cohorts: usize,
    pub quota: u32,
    pub borrowing_limit: u32,
    pub topology: bool,
}

impl Queues {
    /// The cohort queue `q` belongs to.
    pub fn cohort_of(&self, q: usize) -> usize {
        q / (self.count / self.cohorts).max(1)
    }
}

/// One Job: `pods` pods (an Indexed gang) of `gpus` GPUs each, running `run_ms` on kwok (none: until deleted).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub pods: u32,
    pub gpus: u32,
    pub run_ms: Option<u64>,
}

/// The Kueue label that names a Job's LocalQueue.
const QUEUE_NAME_LABEL: &str = "kueue.x-k8s.io/queue-name";
/// The Kueue annotation that makes a pod set need one topology domain.
const REQUIRED_TOPOLOGY: &str = "kueue.x-k8s.io/podset-required-topology";
/// The node label of Kueue's topology level.
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// testenv's kwok moves a pod with this annotation to Succeeded that long after it started.
const DURATION_ANNOTATION: &str = "haiyun.io/duration";
/// Field manager of every object the benches apply.
const MANAGER: &str = "haiyun-bench";

/// Creates namespace `name` unless it exists.
pub async fn namespace(client: &Client, name: &str) -> Result<(), SideError> {
    let obj: Namespace = serde_json::from_value(json!({ "metadata": { "name": name } }))
        .map_err(|e| SideError::Setup(e.to_string()))?;
    match Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Server-side applies `obj` (with apiVersion and kind) through the dynamic API.
pub async fn apply(client: &Client, obj: Value) -> Result<(), SideError> {
    let obj: DynamicObject = serde_json::from_value(obj).map_err(|e| SideError::Setup(e.to_string()))?;
    let types = obj.types.clone().ok_or_else(|| SideError::Setup("object without apiVersion".into()))?;
    let (group, version) = types.api_version.split_once('/').unwrap_or(("", &types.api_version));
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &types.kind));
    let api: Api<DynamicObject> = match obj.metadata.namespace.as_deref() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    api.patch(&obj.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&obj)).await?;
    Ok(())
}

/// Kueue's side: a ResourceFlavor for the nodes' GPU model (with `topology`, on a Topology of hosts), and per queue
/// a ClusterQueue `cq-<q>` in its cohort (Kueue's scale test's preemption: reclaim within the cohort, lower priority
/// within the queue) with a LocalQueue `lq-<q>` in `ns`.
pub async fn setup_kueue(client: &Client, queues: &Queues, model: &str, ns: &str) -> Result<(), SideError> {
    let flavor = model.to_lowercase();
    let mut spec = json!({ "nodeLabels": { GPU_MODEL_LABEL: model } });
    if queues.topology {
        apply(
            client,
            json!({
                "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Topology", "metadata": { "name": "hosts" },
                "spec": { "levels": [{ "nodeLabel": HOSTNAME_LABEL }] }
            }),
        )
        .await?;
        spec["topologyName"] = json!("hosts");
    }
    apply(
        client,
        json!({
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": { "name": flavor },
            "spec": spec
        }),
    )
    .await?;
    for q in 0..queues.count {
        apply(client, json!({
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": { "name": format!("cq-{q}") },
            "spec": {
                "cohortName": format!("cohort-{}", queues.cohort_of(q)),
                "namespaceSelector": {},
                "preemption": { "reclaimWithinCohort": "Any", "withinClusterQueue": "LowerPriority" },
                "resourceGroups": [{ "coveredResources": ["nvidia.com/gpu"], "flavors": [{ "name": flavor,
                    "resources": [{ "name": "nvidia.com/gpu", "nominalQuota": queues.quota,
                        "borrowingLimit": queues.borrowing_limit }] }] }]
            }
        }))
        .await?;
        apply(
            client,
            json!({
                "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
                "metadata": { "name": format!("lq-{q}"), "namespace": ns },
                "spec": { "clusterQueue": format!("cq-{q}") }
            }),
        )
        .await?;
    }
    Ok(())
}

/// Haiyun's side: its CRDs, a pool over the kwok nodes, Queues `q-<q>` with the same quotas and cohorts, and the
/// chart's admission policy that suspends a queued Job at creation (the part of `helm install` the Job path needs).
pub async fn setup_haiyun(client: &Client, queues: &Queues, model: &str, ns: &str) -> Result<(), SideError> {
    super::install_crds(client, MANAGER).await?;
    let pool: ComputePool = serde_json::from_value(json!({
        "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputePool", "metadata": { "name": "bench" },
        "spec": { "kind": "ai", "backend": { "kubernetes": { "nodeSelector": { "type": "kwok" } } } }
    }))
    .map_err(|e| SideError::Setup(e.to_string()))?;
    let pp = PatchParams::apply(MANAGER).force();
    Api::<ComputePool>::all(client.clone()).patch("bench", &pp, &Patch::Apply(&pool)).await?;
    for q in 0..queues.count {
        let queue: Queue = serde_json::from_value(json!({
            "apiVersion": "haiyun.io/v1alpha1", "kind": "Queue", "metadata": { "name": format!("q-{q}") },
            "spec": { "cohort": format!("cohort-{}", queues.cohort_of(q)), "resources": [{
                "flavor": format!("nvidia.com/gpu:{}", model.to_lowercase()),
                "nominal": queues.quota.to_string(), "borrowingLimit": queues.borrowing_limit.to_string() }] }
        }))
        .map_err(|e| SideError::Setup(e.to_string()))?;
        Api::<Queue>::all(client.clone()).patch(&format!("q-{q}"), &pp, &Patch::Apply(&queue)).await?;
    }
    let text = include_str!("../../../charts/haiyun/templates/batch-jobs.yaml");
    // The template's only template lines are its guard for clusters that serve the policy's API.
    let text: String = text.lines().filter(|l| !l.starts_with("{{")).map(|l| format!("{l}\n")).collect();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let obj: Value = serde::Deserialize::deserialize(doc).map_err(|e| SideError::Setup(e.to_string()))?;
        apply(client, obj).await?;
    }
    // The API server takes a new policy in a moment later: a dry-run Job until one comes back suspended.
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let shape = Shape { pods: 1, gpus: 1, run_ms: None };
    let probe = job(Controller::Haiyun, "policy-probe", ns, 0, shape, false)?;
    let dry = PostParams { dry_run: true, ..Default::default() };
    let start = Instant::now();
    loop {
        if let Ok(made) = jobs.create(&dry, &probe).await
            && made.spec.and_then(|s| s.suspend) == Some(true)
        {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(SideError::Setup(
                "the batch-job admission policy did not take effect in 60 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// An Indexed Job `name` in queue `queue` for `controller`: `shape.pods` pods that each ask `shape.gpus` GPUs and run
/// `shape.run_ms` on kwok; `topology` asks Kueue to keep each pod set on one host.
pub fn job(
    controller: Controller,
    name: &str,
    ns: &str,
    queue: usize,
    shape: Shape,
    topology: bool,
) -> Result<Job, SideError> {
    let (labels, scheduler) = match controller {
        Controller::Kueue => (json!({ QUEUE_NAME_LABEL: format!("lq-{queue}") }), "default-scheduler"),
        Controller::Haiyun => (json!({ QUEUE_LABEL: format!("q-{queue}") }), SCHEDULER_NAME),
    };
    let mut annotations = json!({});
    if let Some(ms) = shape.run_ms {
        annotations[DURATION_ANNOTATION] = json!(format!("{ms}ms"));
    }
    if topology {
        annotations[REQUIRED_TOPOLOGY] = json!(HOSTNAME_LABEL);
    }
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": { "name": name, "namespace": ns, "labels": labels },
        "spec": {
            "parallelism": shape.pods, "completions": shape.pods, "completionMode": "Indexed", "backoffLimit": 0,
            "template": {
                "metadata": { "annotations": annotations },
                "spec": {
                    "schedulerName": scheduler, "restartPolicy": "Never",
                    "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.10",
                        "resources": { "limits": { "nvidia.com/gpu": shape.gpus.to_string() } } }]
                }
            }
        }
    }))
    .map_err(|e| SideError::Setup(e.to_string()))
}

/// The ComputeJob Haiyun's second row submits in place of the Job that [`job`] makes: one task group of `shape.pods`
/// pods that each ask `shape.gpus` GPUs and run `shape.run_ms` on kwok, with no restarts, as the Job's mirror has.
pub fn compute_job(name: &str, ns: &str, queue: usize, shape: Shape) -> Result<ComputeJob, SideError> {
    let mut annotations = json!({});
    if let Some(ms) = shape.run_ms {
        annotations[DURATION_ANNOTATION] = json!(format!("{ms}ms"));
    }
    serde_json::from_value(json!({
        "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputeJob",
        "metadata": { "name": name, "namespace": ns },
        "spec": {
            "queue": format!("q-{queue}"), "maxRestarts": 0,
            "taskGroups": [{ "name": "pod", "replicas": shape.pods, "gpus": shape.gpus,
                "template": {
                    "metadata": { "annotations": annotations },
                    "spec": { "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.10" }] }
                } }]
        }
    }))
    .map_err(|e| SideError::Setup(e.to_string()))
}

/// Starts the operator at `path` under client QPS limit `qps` and waits until it leads.
pub async fn start_operator(path: &Path, client: &Client, qps: f64) -> Result<Child, SideError> {
    let burst = ((qps * 2.0) as u32).max(1).to_string();
    let child = Command::new(path)
        .args(["run", "--namespace", "default", "--lease-name", "bench", "--identity", "bench"])
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--kube-api-qps",
            &qps.to_string(),
            "--kube-api-burst",
            &burst,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| SideError::Setup(format!("failed to start {}: {e}", path.display())))?;
    super::wait_leading(client, "bench", "bench", Duration::from_secs(60)).await.map_err(SideError::Setup)?;
    Ok(child)
}

/// The pid testenv recorded for `name` under `dir`.
pub fn pid_of(dir: &Path, name: &str) -> Result<u32, SideError> {
    let file = dir.join("pids").join(format!("{name}.pid"));
    std::fs::read_to_string(&file).ok().and_then(|s| s.trim().parse().ok()).ok_or_else(|| {
        SideError::Setup(format!("no pid in {}: is testenv up with --with-kueue?", file.display()))
    })
}

/// A process's peak and current memory (MiB) and CPU seconds so far, from /proc.
pub fn process(pid: u32) -> Value {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command's closing parenthesis, utime and stime are the 12th and 13th fields, in ticks of 1/100 s.
    let cpu_s = stat.rsplit_once(')').and_then(|(_, rest)| {
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
    });
    json!({ "pid": pid, "peak_rss_mib": mib("VmHWM:"), "rss_mib": mib("VmRSS:"), "cpu_s": cpu_s })
}
