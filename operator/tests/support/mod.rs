//! Fixtures for operator tests on testenv: a lock that runs them one at a time, CRDs, kwok GPU nodes, an operator
//! process, and polling helpers.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

pub mod browser;
pub mod remote;
pub mod slurm;
pub mod tools;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use haiyun_api::fixtures;
use haiyun_api::{ComputeJob, ComputePool, Dataset, Queue, QuotaRequest};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::ApiResource;
use kube::{Client, Config, Resource, ResourceExt};
use serde_json::{Value, json};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A test's view of testenv; tests holding one run one at a time.
pub struct Env {
    pub client: Client,
    pub kubeconfig: PathBuf,
    pub name: String,
    pub dir: PathBuf,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Env {
    /// The shared control plane, cleaned of earlier tests' objects, with the CRDs installed; `None` (the test
    /// is skipped) when no testenv runs.
    pub async fn start(name: &str) -> Option<Env> {
        Env::start_with("HAIYUN_TEST_KUBECONFIG", "HAIYUN_REQUIRE_TESTENV", name).await
    }

    /// The control plane with real nodes (`testenv up --real-nodes N`), as `start` does for the kwok one.
    pub async fn start_real(name: &str) -> Option<Env> {
        Env::start_with("HAIYUN_TEST_REAL_KUBECONFIG", "HAIYUN_REQUIRE_REAL_NODES", name).await
    }

    /// The control plane whose real nodes run Haiyun's GPU driver (`testenv up --real-nodes N --agent fake:…`).
    pub async fn start_dra(name: &str) -> Option<Env> {
        Env::start_with("HAIYUN_TEST_DRA_KUBECONFIG", "HAIYUN_REQUIRE_DRA", name).await
    }

    async fn start_with(var: &str, require: &str, name: &str) -> Option<Env> {
        let (client, path) = client_of(var, require).await?;
        let serial = SERIAL.lock().await;
        let dir = std::env::temp_dir().join(format!("haiyun-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let env = Env { client, kubeconfig: path, name: name.into(), dir, _serial: serial };
        env.install_crds().await;
        env.clean().await;
        Some(env)
    }

    async fn install_crds(&self) {
        install_crds(&self.client).await;
    }

    /// Deletes every Haiyun object, the pods of jobs and the nodes tests made.
    pub async fn clean(&self) {
        // No operator runs now to release jobs holding the Slurm finalizer: drop it.
        let jobs: Api<ComputeJob> = Api::namespaced(self.client.clone(), "default");
        for j in jobs.list(&ListParams::default()).await.unwrap() {
            if j.metadata.finalizers.as_ref().is_some_and(|f| !f.is_empty()) {
                let patch = json!({"metadata": {"finalizers": null}});
                let _ = jobs.patch(&j.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await;
            }
        }
        let batch: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(self.client.clone(), "default");
        let _ = batch.delete_collection(&DeleteParams::background(), &ListParams::default()).await;
        delete_all::<ComputeJob>(Api::namespaced(self.client.clone(), "default")).await;
        delete_all::<QuotaRequest>(Api::namespaced(self.client.clone(), "default")).await;
        delete_all::<Queue>(Api::all(self.client.clone())).await;
        delete_all::<ComputePool>(Api::all(self.client.clone())).await;
        delete_all::<Dataset>(Api::all(self.client.clone())).await;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), "default");
        for p in pods.list(&ListParams::default()).await.unwrap() {
            let _ = pods.delete(&p.name_any(), &DeleteParams::default().grace_period(0)).await;
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        for n in nodes.list(&ListParams::default().labels("haiyun.io/test")).await.unwrap() {
            let _ = nodes.delete(&n.name_any(), &DeleteParams::default()).await;
        }
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client.clone(), "default");
        let _ = leases.delete(&self.lease(), &DeleteParams::default()).await;
    }

    /// The Lease name of this test's operators.
    pub fn lease(&self) -> String {
        format!("haiyun-test-{}", self.name)
    }

    /// Creates `count` kwok nodes with `gpus` GPUs of `model`, labelled `haiyun.io/test=<test>` and `group`.
    pub async fn nodes(&self, group: &str, count: usize, gpus: u32, model: &str) -> Vec<String> {
        kwok_nodes(&self.client, &self.name, group, count, gpus, model).await
    }

    /// Creates an object from JSON (any Haiyun kind or core kind), returning the server's refusal as `Err`.
    pub async fn create<K>(&self, value: Value) -> Result<DynamicObject, String>
    where
        K: Resource<DynamicType = ()>,
    {
        let ar = ApiResource::erase::<K>(&());
        let obj: DynamicObject = serde_json::from_value(value).unwrap();
        let api: Api<DynamicObject> = match obj.namespace() {
            Some(ns) => Api::namespaced_with(self.client.clone(), &ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        };
        api.create(&PostParams::default(), &obj).await.map_err(|e| e.to_string())
    }

    /// Starts an operator process for this test.
    pub fn operator(&self, label: &str, extra: &[&str]) -> OperatorProcess {
        OperatorProcess::spawn(self, label, &self.kubeconfig, extra)
    }

    /// Starts an operator process for this test in another cluster (an edge site's own), given its kubeconfig text.
    pub fn operator_in(&self, label: &str, kubeconfig: &str, extra: &[&str]) -> OperatorProcess {
        let path = self.dir.join(format!("kubeconfig-{label}"));
        std::fs::write(&path, kubeconfig).unwrap();
        OperatorProcess::spawn(self, label, &path, extra)
    }

    /// The decision log the operators of this test append to.
    pub fn decision_log(&self) -> PathBuf {
        self.dir.join("decisions.jsonl")
    }

    /// The decision log's lines.
    pub fn decisions(&self) -> Vec<Value> {
        std::fs::read_to_string(self.decision_log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// A job by namespace and name.
    pub async fn job(&self, ns: &str, name: &str) -> ComputeJob {
        Api::<ComputeJob>::namespaced(self.client.clone(), ns).get(name).await.unwrap()
    }

    /// Pods of a job, by its name label.
    pub async fn pods_of(&self, ns: &str, job: &str) -> Vec<Pod> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        api.list(&ListParams::default().labels(&format!("{}={job}", haiyun_api::JOB_NAME_LABEL)))
            .await
            .unwrap()
            .items
    }

    /// Waits until a job reaches `phase`; returns it. On a timeout the panic shows the job's status and every pod of
    /// the namespace (phase, node, conditions), so a failure in CI says where it stood.
    pub async fn wait_phase(&self, ns: &str, name: &str, phase: &str, limit: Duration) -> ComputeJob {
        let api: Api<ComputeJob> = Api::namespaced(self.client.clone(), ns);
        let start = Instant::now();
        loop {
            if let Ok(j) = api.get(name).await {
                let now = j.status.as_ref().map(|s| format!("{:?}", s.phase)).unwrap_or_default();
                if now == phase {
                    return j;
                }
            }
            if start.elapsed() >= limit {
                let status = api.get(name).await.ok().and_then(|j| serde_json::to_string(&j.status).ok());
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
                let list = pods.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
                let pods: Vec<String> = list
                    .iter()
                    .map(|p| {
                        let st = p.status.as_ref();
                        let conds: Vec<String> = st
                            .and_then(|s| s.conditions.as_ref())
                            .into_iter()
                            .flatten()
                            .map(|c| {
                                format!("{}={}:{}", c.type_, c.status, c.reason.as_deref().unwrap_or(""))
                            })
                            .collect();
                        format!(
                            "{} {} on {} [{}]",
                            p.name_any(),
                            st.and_then(|s| s.phase.as_deref()).unwrap_or("?"),
                            p.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or("-"),
                            conds.join(" ")
                        )
                    })
                    .collect();
                panic!(
                    "timed out after {limit:?} waiting for job {ns}/{name} to be {phase}\nstatus: {}\npods:\n  {}",
                    status.unwrap_or_default(),
                    pods.join("\n  ")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Events of an object, by reason.
    pub async fn event_reasons(&self, ns: &str, name: &str) -> Vec<String> {
        let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(self.client.clone(), ns);
        let list = api.list(&ListParams::default()).await.unwrap();
        list.items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter_map(|e| e.reason)
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Leave the objects for a look after a failure; the next test cleans up first.
    }
}

/// Installs (or updates) Haiyun's CRDs in the cluster behind `client` and waits until they are served.
pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in haiyun_api::crd::all() {
        let name = crd.name_any();
        api.patch(&name, &PatchParams::apply("haiyun-tests").force(), &Patch::Apply(&crd)).await.unwrap();
    }
    for crd in haiyun_api::crd::all() {
        let name = crd.name_any();
        wait_for(&format!("CRD {name} established"), Duration::from_secs(20), || async {
            let c = api.get(&name).await.ok()?;
            let ok = c.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True");
            ok.then_some(())
        })
        .await;
    }
}

/// Creates an object from JSON in the cluster behind `client`, returning the server's refusal as `Err`.
pub async fn create_in<K>(client: &Client, value: Value) -> Result<DynamicObject, String>
where
    K: Resource<DynamicType = ()>,
{
    let ar = ApiResource::erase::<K>(&());
    let obj: DynamicObject = serde_json::from_value(value).unwrap();
    let api: Api<DynamicObject> = match obj.namespace() {
        Some(ns) => Api::namespaced_with(client.clone(), &ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    api.create(&PostParams::default(), &obj).await.map_err(|e| e.to_string())
}

/// Deletes every Haiyun object in the cluster behind `client` (namespace `default` for the namespaced ones).
pub async fn delete_haiyun_objects(client: &Client) {
    let jobs: Api<ComputeJob> = Api::namespaced(client.clone(), "default");
    for j in jobs.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default() {
        if j.metadata.finalizers.as_ref().is_some_and(|f| !f.is_empty()) {
            let patch = json!({"metadata": {"finalizers": null}});
            let _ = jobs.patch(&j.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await;
        }
    }
    delete_all::<ComputeJob>(jobs).await;
    delete_all::<Queue>(Api::all(client.clone())).await;
    delete_all::<ComputePool>(Api::all(client.clone())).await;
}

async fn delete_all<K>(api: Api<K>)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let _ = api.delete_collection(&DeleteParams::default(), &ListParams::default()).await;
}

/// Creates `count` kwok nodes through `client` with `gpus` GPUs of `model`, labelled `haiyun.io/test=<test>` and
/// `group`, named `<test>-<group>-<i>`; returns their names once Ready.
pub async fn kwok_nodes(
    client: &Client,
    test: &str,
    group: &str,
    count: usize,
    gpus: u32,
    model: &str,
) -> Vec<String> {
    let api: Api<Node> = Api::all(client.clone());
    let mut names = Vec::new();
    for i in 0..count {
        let name = format!("{}-{group}-{i}", test);
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": { "kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0" },
                "labels": {
                    "kubernetes.io/hostname": name,
                    "type": "kwok",
                    "haiyun.io/test": test,
                    "haiyun.io/group": group,
                    "haiyun.io/gpu-model": model,
                }
            },
            "status": {
                "capacity": { "cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": gpus.to_string() },
                "allocatable": { "cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": gpus.to_string() }
            }
        }))
        .unwrap();
        api.create(&PostParams::default(), &node).await.unwrap();
        names.push(name);
    }
    for n in &names {
        wait_for(&format!("node {n} Ready"), Duration::from_secs(30), || async {
            let node = api.get(n).await.ok()?;
            let ready = node.status?.conditions?.iter().any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then_some(())
        })
        .await;
    }
    names
}

/// A client for the control plane whose kubeconfig `var` names, and that path; `None` (the test is skipped, saying
/// so) when `var` is not set, which fails the test when `require` is set.
pub async fn client_of(var: &str, require: &str) -> Option<(Client, PathBuf)> {
    let Some(path) = std::env::var_os(var) else {
        assert!(
            std::env::var_os(require).is_none(),
            "{require} is set but {var} is not: testenv did not start"
        );
        eprintln!("skipped: {var} is not set (scripts/test.sh starts testenv and sets it)");
        return None;
    };
    let kubeconfig = Kubeconfig::read_from(&path).expect("readable kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    Some((Client::try_from(config).unwrap(), PathBuf::from(path)))
}

/// Polls `f` every 200 ms until it returns `Some`, or panics after `limit` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An operator process; killed (SIGKILL) when dropped.
pub struct OperatorProcess {
    pub child: Child,
    pub log: PathBuf,
    pub metrics_port: u16,
    pub telemetry_port: u16,
}

impl OperatorProcess {
    fn spawn(env: &Env, label: &str, kubeconfig: &std::path::Path, extra: &[&str]) -> Self {
        let port = free_port();
        let telemetry_port = free_port();
        static SPAWNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SPAWNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = env.dir.join(format!("operator-{label}-{n:02}.log"));
        let out = std::fs::File::create(&log).unwrap();
        // Other crates' tests share these fixtures but run the operator in their own way.
        let Some(bin) = option_env!("CARGO_BIN_EXE_haiyun-operator") else {
            panic!(
                "only the operator's own tests spawn its binary; others run haiyun_operator::run in-process"
            )
        };
        let child = Command::new(bin)
            .args(["run", "--namespace", "default", "--lease-name", &env.lease(), "--lease-seconds", "3"])
            .args(["--interval-ms", "500", "--debounce-ms", "20", "--identity", label])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(["--telemetry-addr", &format!("127.0.0.1:{telemetry_port}")])
            .args(["--decision-log", env.decision_log().to_str().unwrap()])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("haiyun-operator starts");
        OperatorProcess { child, log, metrics_port: port, telemetry_port }
    }

    /// `/metrics` text, or empty when not serving.
    pub async fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let addr = format!("127.0.0.1:{}", self.metrics_port);
        let Ok(mut s) = std::net::TcpStream::connect(&addr) else { return String::new() };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let req = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            return String::new();
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body
    }

    /// A metric's value (the first series of that name).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.metrics().await;
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// Kills the process at once (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A queue with `gpus` of `flavor` (e.g. `nvidia.com/gpu:h100`).
pub fn queue(name: &str, flavor: &str, gpus: u32) -> Value {
    fixtures::queue(name).quota(flavor, &gpus.to_string()).value()
}

/// A pool of this cluster's nodes with `haiyun.io/group=<group>` of the test.
pub fn pool(env: &Env, name: &str, group: &str, clearance: &str) -> Value {
    let selector = [("haiyun.io/test", env.name.as_str()), ("haiyun.io/group", group)];
    fixtures::pool(name).site("dc1").clearance(clearance).kubernetes(&selector).value()
}

/// A job of `replicas` workers with `gpus` GPUs each that runs `duration` once bound.
pub fn job(name: &str, queue: &str, replicas: u32, gpus: u32, duration: &str) -> Value {
    let template = json!({
        "metadata": { "annotations": { "haiyun.io/duration": duration } },
        "spec": { "containers": [{ "name": "train", "image": "example.invalid/train:1" }] }
    });
    let j = fixtures::job("default", name).queue(queue).runtime("5m").group_name("worker");
    j.replicas(replicas).gpus(gpus).template(template).value()
}

/// An all-reduce over TCP that uses only the injected environment and DNS: every rank sends its vector
/// (r+1, 2(r+1), 3(r+1)) to rank 0 at MASTER_ADDR:MASTER_PORT; rank 0 sums them and sends the sum to every rank
/// at its own DNS name; each rank checks it against the closed form and exits 0, or 1 on a wrong sum.
pub const ALL_REDUCE: &str = r#"
set -u
n=$PET_NNODES; r=$RANK; port=$MASTER_PORT
a=$((r+1)); b=$((2*(r+1))); c=$((3*(r+1)))
send() { until echo "$2" | nc -w 3 "$1" "$port"; do sleep 0.5; done; }
if [ "$r" = 0 ]; then
  i=1
  while [ "$i" -lt "$n" ]; do
    set -- $(nc -l -p "$port"); a=$((a+$1)); b=$((b+$2)); c=$((c+$3)); i=$((i+1))
  done
  i=1
  while [ "$i" -lt "$n" ]; do
    send "$HAIYUN_JOB-$HAIYUN_TASK_GROUP-$i.$HAIYUN_JOB" "$a $b $c"; i=$((i+1))
  done
else
  send "$MASTER_ADDR" "$a $b $c"
  set -- $(nc -l -p "$port"); a=$1; b=$2; c=$3
fi
s=$((n*(n+1)/2))
echo "rank $r of $n (world $WORLD_SIZE): sum $a $b $c"
[ "$a $b $c" = "$s $((2*s)) $((3*s))" ]
"#;

/// A pool of testenv's real nodes (label `testenv.io/real=true`).
pub fn real_pool(name: &str) -> Value {
    fixtures::pool(name).site("lab").kubernetes(&[("testenv.io/real", "true")]).value()
}

/// A job of `replicas` tasks of `gpus` GPUs each running `script` in busybox on the real nodes.
pub fn real_job(name: &str, queue: &str, replicas: u32, gpus: u32, script: &str) -> Value {
    let image =
        std::env::var("TESTENV_BUSYBOX_IMAGE").unwrap_or_else(|_| "localhost/testenv/busybox:latest".into());
    let template = json!({ "spec": { "terminationGracePeriodSeconds": 1, "containers": [{
        "name": "main", "image": image, "imagePullPolicy": "Never", "command": ["sh", "-c", script] }] } });
    fixtures::job("default", name)
        .queue(queue)
        .group_name("worker")
        .replicas(replicas)
        .gpus(gpus)
        .runtime("2m")
        .template(template)
        .value()
}
