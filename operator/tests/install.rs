//! The chart as a platform team runs it, on testenv's real nodes with Haiyun's images in their containerd: CRDs
//! applied earlier with kubectl handed to the release with the README's commands; `helm install` (both operator replicas from the image with in-cluster config, one leads, the agents prove their nodes by
//! TokenReview, the dashboard answers through its Service, a ComputeJob runs, the fence holder deletes a lapsed
//! federation's pods and only those); `helm upgrade` to a second build and a
//! changed CRD under a stream of jobs (none lost or run twice, no GPU held twice, the leader hands over); deleting the
//! leader pod (the other replica leads within the Lease time); `helm uninstall` (CRDs and users' objects stay, no job
//! keeps a finalizer nothing would remove). No step reaches around the chart.
//!
//! Needs `testenv up --real-nodes N --with-scheduler`, the images loaded (`scripts/images.sh --load`, twice: the
//! chart's tag and the upgrade's), `HAIYUN_TEST_IMAGES` and `HAIYUN_TEST_UPGRADE_IMAGES`; scripts/test.sh does all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use haiyun_api::{ComputeJob, ComputePool, Queue};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use support::tools::{kubectl, root, run};
use support::{Env, queue, real_job, real_pool, wait_for};

const NS: &str = "haiyun-system";
const RELEASE: &str = "haiyun";
const LEASE: &str = "haiyun-operator";
const LONG: Duration = Duration::from_secs(180);

/// `REGISTRY:TAG` from an environment variable.
/// The origin of a federation (elsewhere) whose fence holder the release runs here.
const FENCED_BY: &str = "fed-elsewhere.haiyun-system";

fn images(var: &str) -> Option<(String, String)> {
    let v = std::env::var(var).ok()?;
    let (registry, tag) = v.rsplit_once(':')?;
    Some((registry.to_string(), tag.to_string()))
}

/// The release; uninstalled when dropped (a failed test must not leave an operator that acts on later tests).
struct Release {
    helm: PathBuf,
    kubeconfig: PathBuf,
    done: bool,
}

impl Release {
    fn helm(&self, args: &[&str]) -> (bool, String) {
        run(Command::new(&self.helm).env("KUBECONFIG", &self.kubeconfig).args(args), None)
    }

    /// `helm install|upgrade` of `chart` with testenv's values, `images` and the `extra` values (`a=b,c=d`, or "").
    fn deploy(&self, verb: &str, chart: &Path, images: &(String, String), extra: &str) -> (bool, String) {
        let values = root().join("charts/haiyun/ci/testenv-values.yaml");
        let (registry, tag) = images;
        // A history sample every 3 s, so that the failover below has some to carry over.
        // Every testenv node is a process on one machine, each with a containerd of its own: one host path serves
        // the node fence holders' CRI socket, so their timeout is long enough never to fire here.
        let dir = std::env::var("TESTENV_REAL_DIR").expect("TESTENV_REAL_DIR (scripts/test.sh sets it)");
        let mut sets = format!(
            "imageRegistry={registry},image.tag={tag},agent.image.tag={tag},gpuDriver.image.tag={tag},\
             dashboard.historyIntervalSeconds=3,fenceHolder.enabled=true,fenceHolder.origin={FENCED_BY},\
             nodeFence.enabled=true,nodeFence.seconds=3600,nodeFence.criSocket={dir}/real/real-node-0/containerd.sock"
        );
        if !extra.is_empty() {
            sets = format!("{sets},{extra}");
        }
        let mut args = vec![verb, RELEASE, chart.to_str().unwrap(), "-n", NS, "-f", values.to_str().unwrap()];
        args.extend(["--set", &sets, "--wait", "--timeout", "5m"]);
        if verb == "install" {
            args.push("--create-namespace");
        }
        self.helm(&args)
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if !self.done {
            let (_, out) = self.helm(&["uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "3m"]);
            eprintln!("cleanup: helm uninstall: {out}");
        }
    }
}

/// The operator's pods: name → (image, leader label, ready).
async fn operators(client: &Client) -> BTreeMap<String, (String, Option<String>, bool)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let list =
        pods.list(&ListParams::default().labels("app.kubernetes.io/component=operator")).await.unwrap();
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let image = p
                .spec
                .as_ref()
                .map(|s| s.containers[0].image.clone().unwrap_or_default())
                .unwrap_or_default();
            let leader = p.labels().get("haiyun.io/leader").cloned();
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            (p.name_any(), (image, leader, ready))
        })
        .collect()
}

/// The Lease's holder and transitions.
async fn holder(client: &Client) -> Option<(String, i32)> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let spec = leases.get_opt(LEASE).await.ok()??.spec?;
    Some((spec.holder_identity.filter(|h| !h.is_empty())?, spec.lease_transitions.unwrap_or(0)))
}

/// Waits until one live operator pod holds the Lease and carries the leader label; returns its name.
async fn leader(client: &Client, not: Option<&str>) -> String {
    wait_for("one operator replica to lead", LONG, || async {
        let (h, _) = holder(client).await?;
        let pods = operators(client).await;
        let (_, label, _) = pods.get(&h)?;
        let leaders = pods.values().filter(|(_, l, _)| l.as_deref() == Some("true")).count();
        (Some(h.as_str()) != not && label.as_deref() == Some("true") && leaders == 1).then_some(h)
    })
    .await
}

/// Runs `script` in busybox on a real node and returns its output (the cluster's network: DNS and Services).
async fn in_cluster(client: &Client, name: &str, script: &str) -> String {
    let nodes: Api<Node> = Api::all(client.clone());
    let node =
        nodes.list(&ListParams::default().labels("testenv.io/real=true")).await.unwrap().items[0].name_any();
    let image =
        std::env::var("TESTENV_BUSYBOX_IMAGE").unwrap_or_else(|_| "localhost/testenv/busybox:latest".into());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "nodeName": node, "terminationGracePeriodSeconds": 1,
          "containers": [{"name": "c", "image": image, "imagePullPolicy": "Never", "command": ["sh", "-c", script]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let phase = wait_for(&format!("pod {name} to end"), Duration::from_secs(60), || async {
        let phase = pods.get(name).await.ok()?.status?.phase?;
        matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
    })
    .await;
    let out = pods.logs(name, &LogParams::default()).await.unwrap_or_default();
    assert_eq!(phase, "Succeeded", "{name}: {out}");
    let _ = pods.delete(name, &DeleteParams::default().grace_period(0)).await;
    out
}

/// Every pod each job ever had (by uid) and where and when each ran, from a watch over the whole test.
#[derive(Default)]
struct Seen {
    pods: BTreeMap<String, BTreeSet<String>>,
    last: BTreeMap<String, Pod>,
}

fn watch_pods(client: &Client) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let into = seen.clone();
    tokio::spawn(async move {
        let config = watcher::Config::default().labels(haiyun_api::JOB_NAME_LABEL);
        let mut events = watcher(api, config).boxed();
        while let Some(ev) = events.next().await {
            let pods = match ev {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => vec![p],
                _ => continue,
            };
            let mut s = into.lock().unwrap();
            for p in pods {
                let job = p.labels().get(haiyun_api::JOB_NAME_LABEL).cloned().unwrap_or_default();
                s.pods.entry(job).or_default().insert(p.uid().unwrap_or_default());
                s.last.insert(p.uid().unwrap_or_default(), p);
            }
        }
    });
    seen
}

/// Seconds since the epoch of an RFC 3339 time.
fn secs(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> i64 {
    t.0.as_second()
}

/// Checks that at no second did a node's running pods hold more GPUs than it has (`per_node`), from each pod's
/// container start and finish times; and that no pod was refused by its kubelet for lack of GPUs.
fn no_gpu_held_twice(pods: &[Pod], per_node: i64) {
    let mut spans: BTreeMap<String, Vec<(i64, i64, i64)>> = BTreeMap::new();
    for p in pods {
        let status = p.status.as_ref().unwrap();
        let reason = status.reason.clone().unwrap_or_default();
        assert!(!reason.starts_with("OutOf"), "kubelet refused {}: {reason}", p.name_any());
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        let gpus: i64 = p.spec.as_ref().unwrap().containers[0]
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("nvidia.com/gpu"))
            .and_then(|q| q.0.parse().ok())
            .unwrap_or(0);
        let Some(state) = status.container_statuses.as_ref().and_then(|c| c[0].state.clone()) else {
            continue;
        };
        let span = match (state.running, state.terminated) {
            (Some(r), _) => r.started_at.map(|s| (secs(&s), i64::MAX)),
            (_, Some(t)) => t.started_at.zip(t.finished_at).map(|(s, f)| (secs(&s), secs(&f))),
            _ => None,
        };
        if let Some((start, end)) = span {
            spans.entry(node).or_default().push((start, end, gpus));
        }
    }
    for (node, list) in spans {
        for &(start, _, _) in &list {
            // Strictly inside: one pod ending and another starting within the same second is not an overlap.
            let held: i64 =
                list.iter().filter(|(s, e, _)| *s <= start && start < *e).map(|(_, _, g)| g).sum();
            assert!(
                held <= per_node,
                "{node} had {held} GPUs in use at {start} (it has {per_node}): {list:?}"
            );
        }
    }
}

/// A copy of the chart as its next release would be: version 0.1.1, and the Queue CRD changed (a category).
fn next_chart(dir: &Path) -> PathBuf {
    let chart = dir.join("haiyun");
    let (ok, out) = run(Command::new("cp").arg("-r").arg(root().join("charts/haiyun")).arg(&chart), None);
    assert!(ok, "{out}");
    let meta = chart.join("Chart.yaml");
    let text = std::fs::read_to_string(&meta).unwrap().replace("version: 0.1.0", "version: 0.1.1");
    std::fs::write(&meta, text).unwrap();
    let crd = chart.join("files/crds/queues.haiyun.io.yaml");
    let text = std::fs::read_to_string(&crd).unwrap();
    assert!(text.contains("    kind: Queue\n"), "the Queue CRD changed shape: {text}");
    std::fs::write(
        &crd,
        text.replace("    kind: Queue\n", "    kind: Queue\n    categories:\n    - haiyun-next\n"),
    )
    .unwrap();
    chart
}

#[tokio::test]
async fn helm_install_runs_a_job_and_upgrade_failover_and_uninstall_lose_nothing() {
    let Some(env) = Env::start_real("install").await else { return };
    let required = std::env::var_os("HAIYUN_REQUIRE_REAL_NODES").is_some();
    let (Some(first), Some(second)) = (images("HAIYUN_TEST_IMAGES"), images("HAIYUN_TEST_UPGRADE_IMAGES"))
    else {
        assert!(!required, "HAIYUN_TEST_IMAGES and HAIYUN_TEST_UPGRADE_IMAGES must be set (scripts/test.sh)");
        return;
    };
    let Some(helm) = support::tools::helm("HAIYUN_REQUIRE_REAL_NODES") else { return };
    let client = env.client.clone();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    // The fixtures applied the CRDs with kubectl, as a site that had them before the chart would; helm refuses to take
    // over what it does not own, so they are handed to the release with the README's own commands, run as written.
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let at =
        readme.find("hand them to the release first:").expect("the README says how to hand the CRDs to helm");
    let block = &readme[at..];
    let start = block.find("```\n").unwrap() + 4;
    let end = start + block[start..].find("```").unwrap();
    let script: Vec<&str> = block[start..end].lines().map(str::trim_start).collect();
    let mut bash = Command::new("bash");
    bash.arg("-euc").arg(script.join("\n")).env("KUBECONFIG", &env.kubeconfig);
    if let Some(kubectl) = std::env::var_os("KUBECTL").map(PathBuf::from) {
        let dir = kubectl.parent().map(Path::to_path_buf).unwrap_or_default();
        let path = std::env::join_paths(
            [dir].into_iter().chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
        );
        bash.env("PATH", path.unwrap());
    }
    let (ok, out) = run(&mut bash, None);
    assert!(ok, "the README's steps to hand the CRDs to helm failed:\n{}\n{out}", script.join("\n"));

    // Install.
    let mut release = Release { helm, kubeconfig: env.kubeconfig.clone(), done: false };
    let installed = Instant::now();
    let (ok, out) = release.deploy("install", &root().join("charts/haiyun"), &first, "");
    assert!(ok, "helm install failed:\n{out}");
    let install_s = installed.elapsed().as_secs_f64();
    let pods = operators(&client).await;
    assert_eq!(pods.len(), 2, "two operator replicas: {pods:?}");
    let image = format!("{}/haiyun-operator:{}", first.0, first.1);
    assert!(pods.values().all(|(i, _, ready)| *i == image && *ready), "{pods:?}");
    let first_leader = leader(&client, None).await;
    // Agents: one per real node, each streaming with its projected token (checked by TokenReview).
    let nodes: Api<Node> = Api::all(client.clone());
    let listed = nodes.list(&ListParams::default().labels("testenv.io/real=true")).await.unwrap().items;
    let real: Vec<String> = listed.iter().map(|n| n.name_any()).collect();
    let gpus_per_node: i64 = listed
        .iter()
        .filter_map(|n| n.status.as_ref()?.allocatable.as_ref()?.get("nvidia.com/gpu")?.0.parse().ok())
        .min()
        .expect("real nodes advertise nvidia.com/gpu");
    for node in &real {
        wait_for(&format!("{node}'s agent to report"), LONG, || async {
            let n = nodes.get(node).await.ok()?;
            let conds = n.status?.conditions?;
            conds.iter().any(|c| c.type_ == "HaiyunAgentReporting" && c.status == "True").then_some(())
        })
        .await;
    }
    // The first job.
    env.create::<ComputePool>(real_pool("lab")).await.unwrap();
    env.create::<Queue>(queue("team", "nvidia.com/gpu:h100", 6)).await.unwrap();
    env.create::<ComputeJob>(real_job("first", "team", 1, 1, "echo hello from $HAIYUN_JOB")).await.unwrap();
    env.wait_phase("default", "first", "Succeeded", LONG).await;
    let first_job_s = installed.elapsed().as_secs_f64();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let log = pods_api.logs("first-worker-0", &LogParams::default()).await.unwrap();
    assert!(log.contains("hello from first"), "{log}");
    // The dashboard through its Service, from inside the cluster (CoreDNS and kube-proxy).
    let url = "http://haiyun-operator-dashboard.haiyun-system.svc";
    let out = in_cluster(
        &client,
        "dashboard-get",
        &format!("wget -qO- {url}/api/v1/snapshot; echo; wget -qO- {url}/ | head -c 400"),
    )
    .await;
    let snapshot: serde_json::Value = serde_json::from_str(out.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the dashboard's JSON did not parse ({e}): {out}"));
    assert!(snapshot.to_string().contains("\"lab\""), "the snapshot names no pool lab: {out}");
    assert!(out.contains("<html") || out.contains("<!DOCTYPE") || out.contains("<!doctype"), "{out}");
    // The path `haiyun report` asks the API server's service proxy for reaches the leader's usage endpoint, which
    // says how to turn the ledger on (this release runs none: two replicas need PostgreSQL).
    let path = "/api/v1/namespaces/haiyun-system/services/haiyun-operator-dashboard:http/proxy/api/v1/usage?by=queue";
    let req = http::Request::get(path).body(Vec::new()).unwrap();
    match client.request_text(req).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 503, "{s:?}");
            assert!(s.message.contains("no usage ledger: start the operator with --ledger"), "{s:?}");
        }
        other => panic!("the usage endpoint through the service proxy answered {other:?}"),
    }

    // The fence holder the chart runs for a federation that fences its pods here: once that federation's Lease goes
    // unrenewed for its duration, the holder deletes the federation's pods, and only those.
    let mut lease = k8s_openapi::api::coordination::v1::Lease::default();
    lease.metadata.name = Some(FENCED_BY.into());
    lease.spec = Some(k8s_openapi::api::coordination::v1::LeaseSpec {
        holder_identity: Some(FENCED_BY.into()),
        lease_duration_seconds: Some(3),
        renew_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now())),
        ..Default::default()
    });
    haiyun_operator::backend::remote::fence::apply(&client, &lease).await.unwrap();
    let busybox =
        std::env::var("TESTENV_BUSYBOX_IMAGE").unwrap_or_else(|_| "localhost/testenv/busybox:latest".into());
    for (name, origin) in [("fenced-theirs", FENCED_BY), ("fenced-other", "someone-else.elsewhere")] {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"haiyun.io/origin": origin}},
            "spec": {"nodeName": real[0], "terminationGracePeriodSeconds": 1, "containers": [{
                "name": "main", "image": busybox, "imagePullPolicy": "Never", "command": ["sleep", "600"]}]}
        }))
        .unwrap();
        pods_api.create(&PostParams::default(), &pod).await.unwrap();
    }
    let fenced_at = Instant::now();
    wait_for("the fence holder to delete the federation's pod", LONG, || async {
        let p = pods_api.get_opt("fenced-theirs").await.ok()?;
        p.is_none_or(|p| p.metadata.deletion_timestamp.is_some()).then_some(())
    })
    .await;
    eprintln!(
        "fence holder deleted the pod {:.1} s after a 3 s Lease was last renewed",
        fenced_at.elapsed().as_secs_f64()
    );
    let other = pods_api.get("fenced-other").await.unwrap();
    assert!(other.metadata.deletion_timestamp.is_none(), "another origin's pod is left alone");
    pods_api.delete("fenced-other", &kube::api::DeleteParams::default().grace_period(0)).await.unwrap();

    // The node fence holders the chart runs renew a Lease per node, which the operator times.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), NS);
    let renewed = |l: &k8s_openapi::api::coordination::v1::Lease| {
        l.spec.as_ref().and_then(|s| s.renew_time.clone()).map(|t| t.0.to_string())
    };
    for node in &real {
        let name = format!("node-fence.{node}");
        let first = wait_for(&format!("the node fence Lease of {node}"), LONG, || async {
            let l = leases.get_opt(&name).await.ok()??;
            let holder = l.spec.as_ref().and_then(|s| s.holder_identity.clone());
            assert_eq!(holder.as_deref(), Some(node.as_str()), "{l:?}");
            assert_eq!(l.labels().get("haiyun.io/node-fence").map(String::as_str), Some("true"));
            renewed(&l)
        })
        .await;
        wait_for(&format!("the node fence Lease of {node} renewed"), LONG, || async {
            let now = renewed(&leases.get(&name).await.ok()?)?;
            (now != first).then_some(())
        })
        .await;
    }

    // Upgrade to the second build and a changed CRD, under a stream of jobs.
    let seen = watch_pods(&client);
    let dir = env.dir.join("next");
    std::fs::create_dir_all(&dir).unwrap();
    let chart = next_chart(&dir);
    let stream = {
        let env_client = client.clone();
        tokio::spawn(async move {
            let api: Api<ComputeJob> = Api::namespaced(env_client, "default");
            for i in 0..16 {
                let job: ComputeJob =
                    serde_json::from_value(real_job(&format!("stream-{i:02}"), "team", 1, 1, "sleep 4"))
                        .unwrap();
                api.create(&PostParams::default(), &job).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
        })
    };
    let (_, transitions_before) = holder(&client).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let upgraded = Instant::now();
    let (ok, out) = {
        let r = &release;
        let (helm, kubeconfig) = (r.helm.clone(), r.kubeconfig.clone());
        let chart = chart.clone();
        let second = second.clone();
        tokio::task::spawn_blocking(move || {
            Release { helm, kubeconfig, done: true }.deploy("upgrade", &chart, &second, "")
        })
        .await
        .unwrap()
    };
    assert!(ok, "helm upgrade failed:\n{out}");
    let upgrade_s = upgraded.elapsed().as_secs_f64();
    stream.await.unwrap();
    for i in 0..16 {
        env.wait_phase("default", &format!("stream-{i:02}"), "Succeeded", LONG).await;
    }
    let new_image = format!("{}/haiyun-operator:{}", second.0, second.1);
    let new_leader = leader(&client, None).await;
    let pods = operators(&client).await;
    assert_eq!(pods.get(&new_leader).map(|p| p.0.as_str()), Some(new_image.as_str()), "{pods:?}");
    assert_ne!(new_leader, first_leader);
    let (_, transitions) = holder(&client).await.unwrap();
    assert!(
        transitions > transitions_before,
        "the Lease changed hands ({transitions_before} → {transitions})"
    );
    let queue_crd = crds.get("queues.haiyun.io").await.unwrap();
    assert_eq!(
        queue_crd.spec.names.categories,
        Some(vec!["haiyun-next".to_string()]),
        "the CRD was upgraded"
    );
    let jobs: Api<ComputeJob> = Api::namespaced(client.clone(), "default");
    {
        let s = seen.lock().unwrap();
        for i in 0..16 {
            let name = format!("stream-{i:02}");
            let j = s.pods.get(&name).map(|p| p.len()).unwrap_or(0);
            assert_eq!(j, 1, "{name} had {j} pods: run once, never twice");
        }
        let all: Vec<Pod> = s.last.values().cloned().collect();
        no_gpu_held_twice(&all, gpus_per_node);
    }
    for j in jobs.list(&ListParams::default()).await.unwrap() {
        let st = j.status.as_ref().unwrap();
        assert_eq!((st.restarts, st.preemptions), (0, 0), "{} ran again: {st:?}", j.name_any());
    }

    // Failover: the leader's pod is deleted; the other replica leads within the Lease time, and its dashboard shows
    // the utilisation history the old leader recorded.
    let pods_ns: Api<Pod> = Api::namespaced(client.clone(), NS);
    let before_failover = jiff::Timestamp::now().as_second();
    let deleted = Instant::now();
    pods_ns.delete(&new_leader, &DeleteParams::default()).await.unwrap();
    let next = leader(&client, Some(&new_leader)).await;
    let failover_s = deleted.elapsed().as_secs_f64();
    assert!(failover_s < 15.0, "{next} took {failover_s:.1} s to lead (Lease: 15 s)");
    env.create::<ComputeJob>(real_job("after-failover", "team", 2, 1, "exit 0")).await.unwrap();
    env.wait_phase("default", "after-failover", "Succeeded", LONG).await;
    let out = in_cluster(&client, "history-get", &format!("wget -qO- {url}/api/v1/history")).await;
    let history: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("the history did not parse ({e}): {out}"));
    let samples = history["samples"].as_array().cloned().unwrap_or_default();
    let old = samples.iter().filter(|s| s["at"].as_i64().is_some_and(|t| t < before_failover)).count();
    let lab = samples
        .iter()
        .filter(|s| s["cells"].as_object().is_some_and(|c| c.keys().any(|k| k.starts_with("lab/"))));
    assert!(
        old >= 3 && lab.count() >= 3,
        "the new leader lost the history ({old} samples from before): {out}"
    );

    // The usage ledger through the API server's service proxy, the path `haiyun report` asks: the release goes to one
    // replica with a SQLite ledger on its volume, and a job that runs then is a row of its queue.
    let sqlite = "replicas=1,ledger.url=sqlite:///var/lib/haiyun/ledger.db";
    let (ok, out) = release.deploy("upgrade", &chart, &second, sqlite);
    assert!(ok, "helm upgrade to a SQLite ledger failed:\n{out}");
    let metered = leader(&client, None).await;
    env.create::<ComputeJob>(real_job("metered", "team", 1, 1, "sleep 3")).await.unwrap();
    env.wait_phase("default", "metered", "Succeeded", LONG).await;
    let report = wait_for("the metered run in the ledger's report", LONG, || async {
        let req = http::Request::get(path).body(Vec::new()).unwrap();
        let body: serde_json::Value = serde_json::from_str(&client.request_text(req).await.ok()?).ok()?;
        let row = body["rows"].as_array()?.iter().find(|r| r["key"] == "team")?.clone();
        (row["runs"].as_i64() >= Some(1)).then_some(row)
    })
    .await;
    assert!(report["gpu_seconds"].as_f64().unwrap_or(0.0) > 0.0, "{report}");
    eprintln!("the usage report through the service proxy (leader {metered}): {report}");

    // Uninstall. A job in a Slurm pool carries the finalizer haiyun.io/slurm-job (the Slurm tests show it put there);
    // this cluster has no Slurm, so this one is created with it.
    let mut held = real_job("held", "team", 1, 1, "exit 0");
    held["metadata"]["finalizers"] = json!(["haiyun.io/slurm-job", "example.com/keep"]);
    held["spec"]["queue"] = json!("no-such-queue");
    env.create::<ComputeJob>(held).await.unwrap();
    let (ok, out) = release.helm(&["uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "3m"]);
    assert!(ok, "helm uninstall failed:\n{out}");
    release.done = true;
    for crd in haiyun_api::crd::all() {
        assert!(crds.get_opt(&crd.name_any()).await.unwrap().is_some(), "{} was removed", crd.name_any());
    }
    assert!(jobs.get_opt("first").await.unwrap().is_some(), "users' jobs stay");
    let queues: Api<Queue> = Api::all(client.clone());
    assert!(queues.get_opt("team").await.unwrap().is_some(), "users' queues stay");
    let j = jobs.get("held").await.unwrap();
    assert_eq!(j.finalizers(), ["example.com/keep".to_string()], "only Haiyun's finalizer goes");
    assert!(env.event_reasons("default", "held").await.contains(&"HaiyunUninstalled".to_string()));
    // The DaemonSet's and Deployment's pods go by garbage collection, shortly after helm returns; the Lease and the
    // history ConfigMap (the operator's, not the chart's) go with the uninstall hook.
    wait_for(&format!("nothing left in {NS}"), Duration::from_secs(90), || async {
        let what = "all,serviceaccounts,roles,rolebindings,configmaps,leases";
        let (ok, out) = run(kubectl(&env.kubeconfig).args(["get", what, "-n", NS, "-o", "name"]), None);
        let left: Vec<&str> = out
            .lines()
            .filter(|l| !l.contains("serviceaccount/default") && !l.contains("kube-root-ca"))
            .collect();
        (ok && left.is_empty()).then_some(())
    })
    .await;
    let (_, out) =
        run(kubectl(&env.kubeconfig).args(["get", "clusterroles,clusterrolebindings", "-o", "name"]), None);
    assert!(!out.contains("haiyun-operator"), "cluster RBAC left behind: {out}");
    // Deleting a job no longer waits for Haiyun; nor do the CRDs, removed as the README says.
    jobs.delete("held", &DeleteParams::default()).await.unwrap();
    let (ok, out) = run(
        kubectl(&env.kubeconfig).args([
            "patch",
            "computejob",
            "held",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ]),
        None,
    );
    assert!(ok, "{out}");
    wait_for("job held to go", Duration::from_secs(20), || async {
        jobs.get_opt("held").await.ok()?.is_none().then_some(())
    })
    .await;
    let (ok, out) = run(
        kubectl(&env.kubeconfig).args([
            "delete",
            "crd",
            "-l",
            "app.kubernetes.io/name=haiyun",
            "--timeout",
            "60s",
        ]),
        None,
    );
    assert!(ok && out.matches("deleted").count() == 5, "{out}");
    eprintln!(
        "{}",
        json!({"install_s": install_s, "install_to_first_job_s": first_job_s, "upgrade_s": upgrade_s,
               "failover_s": failover_s})
    );
}
