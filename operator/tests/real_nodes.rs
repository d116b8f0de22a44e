//! Jobs on real nodes (testenv's kubelets with containerd and runc): what only a real kubelet decides — the
//! training contract's DNS names and environment used by a real program, exit codes, and the failure policy.
//! Needs `testenv up --real-nodes N` and `HAIYUN_TEST_REAL_KUBECONFIG` (scripts/test.sh starts one).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use haiyun_api::{ComputeJob, ComputePool, Queue};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams};
use serde_json::{Value, json};
use support::{ALL_REDUCE, Env, queue, real_pool, wait_for};

const LONG: Duration = Duration::from_secs(120);

/// A job of `replicas` one-GPU tasks running `script` in busybox on the real nodes.
fn real_job(name: &str, queue: &str, replicas: u32, script: &str) -> Value {
    support::real_job(name, queue, replicas, 1, script)
}

fn real_job_of(name: &str, queue: &str, replicas: u32, gpus: u32, script: &str) -> Value {
    support::real_job(name, queue, replicas, gpus, script)
}

async fn logs(env: &Env, pod: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    pods.logs(pod, &LogParams::default()).await.unwrap_or_else(|e| format!("(no logs: {e})"))
}

#[tokio::test]
async fn a_two_node_job_rendezvous_through_its_dns_names_and_environment_sums_a_vector_and_succeeds() {
    let Some(env) = Env::start_real("allreduce").await else { return };
    env.create::<ComputePool>(real_pool("real")).await.unwrap();
    env.create::<Queue>(queue("real-q", "nvidia.com/gpu:h100", 4)).await.unwrap();
    let _op = env.operator("only", &[]);
    env.create::<ComputeJob>(real_job("allreduce", "real-q", 2, ALL_REDUCE)).await.unwrap();
    let running = env.wait_phase("default", "allreduce", "Running", LONG).await;
    let nodes: Vec<String> =
        running.status.unwrap().placement.unwrap().tasks.iter().map(|t| t.node.clone()).collect();
    assert_eq!(nodes.len(), 2);
    let done = wait_for("the all-reduce to end", LONG, || async {
        let j = env.job("default", "allreduce").await;
        let phase = j.status.as_ref().map(|s| s.phase);
        matches!(phase, Some(haiyun_api::JobPhase::Succeeded | haiyun_api::JobPhase::Failed)).then_some(j)
    })
    .await;
    let out0 = logs(&env, "allreduce-worker-0").await;
    let out1 = logs(&env, "allreduce-worker-1").await;
    assert_eq!(
        done.status.as_ref().map(|s| s.phase),
        Some(haiyun_api::JobPhase::Succeeded),
        "{:?}\nrank 0: {out0}\nrank 1: {out1}",
        done.status
    );
    assert!(out0.contains("rank 0 of 2 (world 2): sum 3 6 9"), "{out0}");
    assert!(out1.contains("rank 1 of 2 (world 2): sum 3 6 9"), "{out1}");
    // Its GPUs are free again: a job of all four runs next.
    env.create::<ComputeJob>(real_job("after", "real-q", 2, "exit 0")).await.unwrap();
    env.wait_phase("default", "after", "Succeeded", LONG).await;
}

#[tokio::test]
async fn a_task_that_exits_1_twice_restarts_the_gang_and_then_succeeds_and_with_one_restart_the_job_fails() {
    let Some(env) = Env::start_real("restarts").await else { return };
    env.create::<ComputePool>(real_pool("real")).await.unwrap();
    env.create::<Queue>(queue("real-q", "nvidia.com/gpu:h100", 4)).await.unwrap();
    let _op = env.operator("only", &[]);
    let flaky = r#"echo "attempt $HAIYUN_RESTART_ATTEMPT"; [ "$HAIYUN_RESTART_ATTEMPT" -ge 2 ] || exit 1"#;
    env.create::<ComputeJob>(real_job("flaky", "real-q", 2, flaky)).await.unwrap();
    let mut once = real_job("once", "real-q", 1, "exit 1");
    once["spec"]["maxRestarts"] = json!(1);
    env.create::<ComputeJob>(once).await.unwrap();
    let done = env.wait_phase("default", "flaky", "Succeeded", Duration::from_secs(180)).await;
    let st = done.status.unwrap();
    assert_eq!(st.restarts, 2, "restarted twice from its checkpoint, then succeeded");
    let failure = st.last_failure.unwrap();
    assert_eq!((failure.exit_code, failure.reason.as_str()), (Some(1), "Error"), "{failure:?}");
    assert!(logs(&env, "flaky-worker-0").await.contains("attempt 2"));
    let failed = env.wait_phase("default", "once", "Failed", Duration::from_secs(120)).await;
    let st = failed.status.unwrap();
    assert_eq!(st.restarts, 1);
    assert_eq!(st.last_failure.unwrap().exit_code, Some(1), "the exit code is in the job's status");
    let reasons = env.event_reasons("default", "flaky").await;
    // Kubernetes folds repeated events of one reason into a series: one Restarting event, counted twice.
    assert!(reasons.iter().any(|r| r == "Restarting"), "{reasons:?}");
}

#[tokio::test]
async fn a_job_whose_node_dies_and_is_fenced_runs_again_on_the_other_nodes_and_never_twice_at_once() {
    let Some(env) = Env::start_real("nodeloss").await else { return };
    let Ok(dir) = std::env::var("TESTENV_REAL_DIR") else {
        assert!(std::env::var_os("HAIYUN_REQUIRE_REAL_NODES").is_none(), "TESTENV_REAL_DIR is not set");
        return;
    };
    env.create::<ComputePool>(real_pool("real")).await.unwrap();
    env.create::<Queue>(queue("real-q", "nvidia.com/gpu:h100", 4)).await.unwrap();
    let _op = env.operator("only", &[]);
    // Two tasks of two GPUs: one per node.
    let mut job = real_job_of("survivor", "real-q", 2, 2, "sleep 25");
    job["spec"]["nodeLossGraceSeconds"] = json!(5);
    env.create::<ComputeJob>(job).await.unwrap();
    let running = env.wait_phase("default", "survivor", "Running", LONG).await;
    let victim = running.status.unwrap().placement.unwrap().tasks[1].node.clone();

    // A watcher lists the job's pods all along: never pods of two runs at once.
    let client = env.client.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let pods: Api<Pod> = Api::namespaced(client, "default");
            let mut worst = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let lp = kube::api::ListParams::default().labels("haiyun.io/job=survivor");
                if let Ok(list) = pods.list(&lp).await {
                    let runs: std::collections::BTreeSet<String> = list
                        .items
                        .iter()
                        .filter_map(|p| p.metadata.labels.as_ref()?.get("haiyun.io/run").cloned())
                        .collect();
                    worst = worst.max(runs.len());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            worst
        })
    };
    let testenv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testenv/testenv");
    let killed =
        std::process::Command::new(&testenv).args(["kill-node", "--dir", &dir, "--node", &victim]).status();
    assert!(killed.unwrap().success(), "testenv kill-node {victim}");
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(env.client.clone());
    wait_for(&format!("{victim} not ready"), LONG, || async {
        let n = nodes.get(&victim).await.ok()?;
        let ready = n.status?.conditions?.into_iter().find(|c| c.type_ == "Ready")?;
        (ready.status != "True").then_some(())
    })
    .await;
    // After the job's grace period the taint-eviction controller evicts its pod there; with the kubelet dead the pod
    // stays Terminating, so until the node is fenced the job keeps its place: its task may still run there.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let evicted = wait_for("the pod on the dead node evicted", LONG, || async {
        let list =
            pods.list(&kube::api::ListParams::default().labels("haiyun.io/job=survivor")).await.ok()?;
        list.items.into_iter().find(|p| {
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(victim.as_str())
                && p.metadata.deletion_timestamp.is_some()
        })
    })
    .await;
    let reason = evicted
        .status
        .and_then(|s| s.conditions)
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionTarget");
    assert_eq!(reason.and_then(|c| c.reason).as_deref(), Some("DeletionByTaintManager"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = env.job("default", "survivor").await.status.unwrap();
    assert_eq!((held.preemptions, held.placement.is_some()), (0, true), "not re-placed before the fence");
    // The administrator fences the dead node (Kubernetes' non-graceful node shutdown).
    let taint = json!({"spec": {"taints": [{"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown", "effect": "NoExecute"}]}});
    nodes.patch(&victim, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&taint)).await.unwrap();
    let done = env.wait_phase("default", "survivor", "Succeeded", Duration::from_secs(180)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let worst = watcher.await.unwrap();
    let st = done.status.unwrap();
    assert_eq!(st.preemptions, 1, "placed again once, as a new run");
    let failure = st.last_failure.unwrap();
    assert_eq!(failure.reason, "NodeLost");
    assert!(failure.message.contains(&victim), "{failure:?}");
    assert!(
        st.placement.unwrap().tasks.iter().all(|t| t.node != victim),
        "the second run avoids the lost node"
    );
    assert_eq!(worst, 1, "pods of two runs of the job existed at once");
    assert!(env.event_reasons("default", "survivor").await.iter().any(|r| r == "NodeLost"));
    let log: Vec<String> = env
        .decisions()
        .iter()
        .filter(|d| d["job"] == "default/survivor")
        .map(|d| d["event"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(log, ["place", "preempt", "place", "finish"], "the audit trail of both runs");
}

#[tokio::test]
async fn a_template_runs_only_on_the_node_its_selector_names_and_one_no_node_has_waits_naming_the_selector() {
    let Some(env) = Env::start_real("selector").await else { return };
    env.create::<ComputePool>(real_pool("real")).await.unwrap();
    env.create::<Queue>(queue("real-q", "nvidia.com/gpu:h100", 6)).await.unwrap();
    let _op = env.operator("only", &[]);
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(env.client.clone());
    let mut names: Vec<String> = nodes
        .list(&kube::api::ListParams::default().labels("testenv.io/real=true"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|n| {
            // Not the node another test killed.
            let st = n.status.as_ref().and_then(|s| s.conditions.as_ref());
            let ready = st.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            ready && n.spec.as_ref().and_then(|s| s.taints.as_ref()).is_none_or(|t| t.is_empty())
        })
        .filter_map(|n| n.metadata.name)
        .collect();
    names.sort();
    let last = names.last().cloned().expect("real nodes");
    // Inside one pool: the kubelet itself would refuse a pod bound to a node its selector does not match.
    let with_selector = |name: &str, selector: Value| {
        let mut j = real_job(name, "real-q", 1, "true");
        j["spec"]["taskGroups"][0]["template"]["spec"]["nodeSelector"] = selector;
        j
    };
    let label = json!({"metadata": {"labels": {"haiyun-test/pinned": "yes"}}});
    nodes.patch(&last, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&label)).await.unwrap();
    env.create::<ComputeJob>(with_selector("pinned", json!({"haiyun-test/pinned": "yes"}))).await.unwrap();
    env.create::<ComputeJob>(with_selector("mars", json!({"zone": "mars"}))).await.unwrap();
    let done = env.wait_phase("default", "pinned", "Succeeded", LONG).await;
    assert_eq!(done.status.unwrap().placement.unwrap().tasks[0].node, last);
    let why = wait_for("mars to say why it waits", LONG, || async {
        let st = env.job("default", "mars").await.status?;
        st.pending_reasons.first().map(|r| r.message.clone())
    })
    .await;
    assert!(why.contains("nodeSelector zone=mars"), "{why}");
}

/// Applies the chart's MutatingAdmissionPolicy that suspends Haiyun's batch/v1 Jobs at creation.
async fn install_batch_policy(env: &Env) {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/haiyun/templates/batch-jobs.yaml");
    // The chart's only template lines are the guard for clusters that serve the policy's API.
    let text: String = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("{{"))
        .map(|l| format!("{l}\n"))
        .collect();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let obj: kube::api::DynamicObject = serde::Deserialize::deserialize(doc).unwrap();
        let types = obj.types.clone().unwrap();
        let (group, version) = types.api_version.split_once('/').unwrap();
        let gvk = kube::api::GroupVersionKind::gvk(group, version, &types.kind);
        let ar = kube::api::ApiResource::from_gvk(&gvk);
        let api: Api<kube::api::DynamicObject> = Api::all_with(env.client.clone(), &ar);
        let pp = kube::api::PatchParams::apply("haiyun-test").force();
        let name = obj.metadata.name.clone().unwrap();
        api.patch(&name, &pp, &kube::api::Patch::Apply(&obj)).await.unwrap();
    }
    // The API server takes a new policy in a moment later: probe with a dry-run Job until it suspends one.
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(env.client.clone(), "default");
    let probe: k8s_openapi::api::batch::v1::Job = serde_json::from_value(json!({
        "metadata": { "name": "policy-probe", "labels": { "haiyun.io/queue": "none" } },
        "spec": { "template": { "spec": { "schedulerName": "haiyun", "restartPolicy": "Never",
            "containers": [{ "name": "c", "image": "x" }] } } }
    }))
    .unwrap();
    let dry = kube::api::PostParams { dry_run: true, ..Default::default() };
    wait_for("the batch-job admission policy to take effect", LONG, || async {
        let made = jobs.create(&dry, &probe).await.ok()?;
        made.spec?.suspend.filter(|s| *s).map(|_| ())
    })
    .await;
}

/// An Indexed batch/v1 Job of 4 one-GPU busybox pods in queue `real-q` running `script`, for Haiyun to gang.
fn indexed_job(name: &str, script: &str) -> Value {
    let image =
        std::env::var("TESTENV_BUSYBOX_IMAGE").unwrap_or_else(|_| "localhost/testenv/busybox:latest".into());
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": { "name": name, "namespace": "default", "labels": { "haiyun.io/queue": "real-q" } },
        "spec": { "parallelism": 4, "completions": 4, "completionMode": "Indexed", "backoffLimit": 0,
            "template": { "spec": { "schedulerName": "haiyun", "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [{ "name": "main", "image": image, "imagePullPolicy": "Never",
                    "command": ["sh", "-c", script],
                    "resources": { "limits": { "nvidia.com/gpu": "1" } } }] } } }
    })
}

/// Every rank reaches rank 0 at MASTER_ADDR on MASTER_PORT plus its rank, and rank 0 waits for each rank in turn
/// and adds it up: the environment and DNS name the admission policy and Haiyun's Service give an Indexed Job. The
/// connection itself is the message, not data sent over it (rank 0's busybox nc once read something other than the
/// rank from a sender that had succeeded; why was not found), and with one port per rank no sender waits in the backlog
/// of a listener that is about to close.
const RANK_SUM: &str = r#"
set -u
[ "$RANK" = "$JOB_COMPLETION_INDEX" ] || exit 2
if [ "$RANK" = 0 ]; then
  i=1; s=0
  while [ "$i" -lt "$WORLD_SIZE" ]; do
    nc -l -p $((MASTER_PORT+i)) </dev/null >/dev/null || exit 3; s=$((s+i)); i=$((i+1))
  done
  echo "sum $s of $WORLD_SIZE ranks"; [ "$s" = $(( (WORLD_SIZE-1)*WORLD_SIZE/2 )) ]
else
  until nc -w 3 "$MASTER_ADDR" $((MASTER_PORT+RANK)) </dev/null; do sleep 0.5; done
fi
"#;

#[tokio::test]
async fn an_indexed_batch_job_of_4_pods_is_suspended_queued_placed_as_one_gang_and_completes() {
    use kube::ResourceExt;
    let Some(env) = Env::start_real("batchjob").await else { return };
    install_batch_policy(&env).await;
    env.create::<ComputePool>(real_pool("real")).await.unwrap();
    env.create::<Queue>(queue("real-q", "nvidia.com/gpu:h100", 4)).await.unwrap();
    let _op = env.operator("only", &[]);
    let job = indexed_job("ranks", RANK_SUM);
    let created = env.create::<k8s_openapi::api::batch::v1::Job>(job).await.unwrap();
    assert_eq!(created.data["spec"]["suspend"], json!(true), "suspended at creation by the admission policy");
    // Its ComputeJob queues it, and all 4 pods are placed at once.
    let done = env.wait_phase("default", "ranks", "Succeeded", Duration::from_secs(180)).await;
    let placement = done.status.unwrap().placement.unwrap();
    assert_eq!(placement.tasks.len(), 4);
    assert_eq!(done.spec.batch_job.as_deref(), Some("ranks"));
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(env.client.clone(), "default");
    wait_for("the Job to complete", LONG, || async {
        let conds = jobs.get("ranks").await.ok()?.status?.conditions?;
        conds.iter().any(|c| c.type_ == "Complete" && c.status == "True").then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let list =
        pods.list(&kube::api::ListParams::default().labels("batch.kubernetes.io/job-name=ranks")).await;
    for p in list.unwrap().items {
        let index: usize = p.annotations()["batch.kubernetes.io/job-completion-index"].parse().unwrap();
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        assert_eq!(node, placement.tasks[index].node, "pod {} runs where its index was placed", p.name_any());
    }
}

#[tokio::test]
async fn a_preempted_batch_job_is_suspended_and_runs_again_as_a_new_run_once_placed_again() {
    let Some(env) = Env::start_real("batchpreempt").await else { return };
    install_batch_policy(&env).await;
    env.create::<ComputePool>(real_pool("real")).await.unwrap();
    env.create::<Queue>(queue("real-q", "nvidia.com/gpu:h100", 6)).await.unwrap();
    let _op = env.operator("only", &[]);
    // The first run outlasts its preemption; the run Haiyun starts again is short.
    let mut job = indexed_job("low", "if [ \"$RUN\" = 0 ]; then sleep 300; else sleep 2; fi");
    job["spec"]["template"]["spec"]["containers"][0]["env"] = json!([{ "name": "RUN", "valueFrom": { "fieldRef": { "fieldPath": "metadata.labels['haiyun.io/run']" } } }]);
    env.create::<k8s_openapi::api::batch::v1::Job>(job).await.unwrap();
    env.wait_phase("default", "low", "Running", LONG).await;
    // A higher-priority job of the same queue needs 4 of the 6 GPUs: the Job is preempted and suspended.
    let mut urgent = real_job_of("urgent", "real-q", 2, 2, "sleep 1");
    urgent["spec"]["priority"] = json!(10);
    env.create::<ComputeJob>(urgent).await.unwrap();
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(env.client.clone(), "default");
    wait_for("the preempted Job suspended", LONG, || async {
        jobs.get("low").await.ok()?.spec?.suspend.filter(|s| *s).map(|_| ())
    })
    .await;
    // Its pods are bound only once the preempted Job's have left the GPUs, so the kubelet never refuses them.
    let urgent = env.wait_phase("default", "urgent", "Succeeded", LONG).await;
    let st = urgent.status.unwrap();
    assert_eq!(
        (st.restarts, st.last_failure.map(|f| f.message)),
        (0, None),
        "the preemptor's first run is its only one"
    );
    // Placed again, it runs as run 1 and completes.
    let done = env.wait_phase("default", "low", "Succeeded", LONG).await;
    let st = done.status.unwrap();
    assert_eq!((st.preemptions, st.restarts), (1, 0));
    let events: Vec<String> = env
        .decisions()
        .iter()
        .map(|d| format!("{} {}", d["event"].as_str().unwrap_or(""), d["job"].as_str().unwrap_or("")))
        .collect();
    let order = ["place default/low", "preempt default/low", "place default/urgent", "finish default/urgent"];
    assert_eq!(events[..4], order, "{events:?}");
    wait_for("the Job to complete", LONG, || async {
        let conds = jobs.get("low").await.ok()?.status?.conditions?;
        conds.iter().any(|c| c.type_ == "Complete" && c.status == "True").then_some(())
    })
    .await;
}

/// A bare pod of queue `real-q` that Haiyun schedules, asking 2 GPUs, in priority class `class` if given.
fn plain_pod(name: &str, class: Option<&str>, script: &str) -> Pod {
    let image =
        std::env::var("TESTENV_BUSYBOX_IMAGE").unwrap_or_else(|_| "localhost/testenv/busybox:latest".into());
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": "default", "labels": { "haiyun.io/queue": "real-q" } },
        "spec": { "schedulerName": "haiyun", "restartPolicy": "Never", "terminationGracePeriodSeconds": 3,
            "containers": [{ "name": "main", "image": image, "imagePullPolicy": "Never",
                "command": ["sh", "-c", script], "resources": { "limits": { "nvidia.com/gpu": "2" } } }] }
    });
    if let Some(c) = class {
        pod["spec"]["priorityClassName"] = json!(c);
    }
    serde_json::from_value(pod).unwrap()
}

#[tokio::test]
async fn a_plain_pod_that_preempts_is_bound_only_once_its_victim_has_left_so_the_kubelet_admits_it() {
    use kube::ResourceExt;
    let Some(env) = Env::start_real("plainpreempt").await else { return };
    let classes: Api<k8s_openapi::api::scheduling::v1::PriorityClass> = Api::all(env.client.clone());
    let high = json!({ "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": { "name": "haiyun-test-high" }, "value": 1000 });
    let _ = classes.create(&Default::default(), &serde_json::from_value(high).unwrap()).await;
    // A pool of one live node (an earlier test may have killed another): the victim and the preemptor share it.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(env.client.clone());
    let live = nodes.list(&kube::api::ListParams::default().labels("testenv.io/real=true")).await.unwrap();
    let node = live
        .items
        .iter()
        .find(|n| {
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            ready && n.spec.as_ref().and_then(|s| s.taints.as_ref()).is_none_or(|t| t.is_empty())
        })
        .map(|n| n.name_any())
        .expect("a live real node");
    let pool =
        haiyun_api::fixtures::pool("real").site("lab").kubernetes(&[("kubernetes.io/hostname", &node)]);
    env.create::<ComputePool>(pool.value()).await.unwrap();
    env.create::<Queue>(queue("real-q", "nvidia.com/gpu:h100", 6)).await.unwrap();
    let _op = env.operator("only", &[]);
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    // The low pod takes both GPUs of the node; its shell ignores SIGTERM, so it takes its 3 s grace to go.
    pods.create(&Default::default(), &plain_pod("low", None, "sleep 300")).await.unwrap();
    let phase = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
    wait_for("the low pod running", LONG, || async {
        (phase(&pods.get("low").await.ok()?) == "Running").then_some(())
    })
    .await;
    pods.create(&Default::default(), &plain_pod("urgent", Some("haiyun-test-high"), "sleep 2"))
        .await
        .unwrap();
    let urgent = wait_for("the urgent pod to end", LONG, || async {
        let p = pods.get("urgent").await.ok()?;
        matches!(phase(&p).as_str(), "Succeeded" | "Failed").then_some(p)
    })
    .await;
    let reason = urgent.status.as_ref().and_then(|s| s.reason.clone());
    assert_eq!((phase(&urgent), reason), ("Succeeded".to_string(), None), "the kubelet admitted it");
    assert_eq!(urgent.spec.as_ref().and_then(|s| s.node_name.clone()), Some(node));
    assert!(pods.get_opt("low").await.unwrap().is_none(), "the victim is gone");
    let log: Vec<String> =
        env.decisions().iter().map(|d| d["event"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(log.iter().filter(|e| *e == "preempt").count(), 1, "{log:?}");
}

/// A node fence holder (`haiyun-operator node-fence`) for one real node, reaching the API server through `relay`.
struct Holder(std::process::Child);

impl Holder {
    fn start(env: &Env, dir: &str, node: &str, relay: std::net::SocketAddr, api: &str) -> Holder {
        let kubeconfig = std::fs::read_to_string(&env.kubeconfig)
            .unwrap()
            .replace(&format!("https://{api}"), &format!("https://{relay}"));
        let path = env.dir.join(format!("fence-{node}.kubeconfig"));
        std::fs::write(&path, kubeconfig).unwrap();
        let log = std::fs::File::create(env.dir.join(format!("fence-{node}.log"))).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_haiyun-operator"))
            .args(["node-fence", "--node", node, "--seconds", "5", "--namespace", "default"])
            .arg("--cri-socket")
            .arg(format!("{dir}/real/{node}/containerd.sock"))
            .arg("--kubeconfig")
            .arg(&path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Holder(child)
    }
}

impl Holder {
    /// Stops it as the kubelet would (SIGTERM) and waits for it: it gives up its Lease as it goes. Async, so that the
    /// relays it talks through keep running.
    async fn stop(&mut self) {
        let pid = self.0.id().to_string();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..100 {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Holder {
    /// A test that failed: killed (its Lease stays; the next run of the test deletes it).
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real node cut off from the API server (its kubelet frozen, its holder's relay cut) until dropped, so that a test
/// that fails still gives the node back to the tests after it.
struct Cut<'a> {
    dir: &'a str,
    node: &'a str,
    relay: &'a support::remote::Relay,
}

impl<'a> Cut<'a> {
    fn start(dir: &'a str, node: &'a str, relay: &'a support::remote::Relay) -> Cut<'a> {
        signal_kubelet(dir, node, "-STOP");
        relay.cut();
        Cut { dir, node, relay }
    }
}

impl Drop for Cut<'_> {
    fn drop(&mut self) {
        signal_kubelet(self.dir, self.node, "-CONT");
        self.relay.heal();
    }
}

/// Sends `signal` to a real node's kubelet: STOP freezes it (its node falls silent, its containers run on and nobody
/// can stop them from the API server, as when the node loses its API server), CONT lets it go on.
fn signal_kubelet(dir: &str, node: &str, signal: &str) {
    let pid = std::fs::read_to_string(format!("{dir}/pids/kubelet@{node}.pid")).unwrap();
    let ok = std::process::Command::new("kill").args([signal, pid.trim()]).status().unwrap();
    assert!(ok.success(), "kill {signal} kubelet@{node}");
}

/// Whether the job's pod sandbox is ready on the node, as its container runtime says.
async fn runs_there(dir: &str, node: &str, job: &str) -> bool {
    let socket = std::path::PathBuf::from(format!("{dir}/real/{node}/containerd.sock"));
    let mut runtime = haiyun_operator::backend::kubernetes::cri::Runtime::connect(&socket).await.unwrap();
    let ours = runtime.sandboxes_with(haiyun_api::JOB_UID_LABEL).await.unwrap();
    ours.iter().any(|s| s.labels.get(haiyun_api::JOB_NAME_LABEL).is_some_and(|j| j == job))
}

#[tokio::test]
async fn a_node_cut_off_from_the_api_server_is_fenced_by_its_holder_and_its_job_runs_elsewhere_never_twice() {
    let Some(env) = Env::start_real("nodefence").await else { return };
    let Ok(dir) = std::env::var("TESTENV_REAL_DIR") else {
        assert!(std::env::var_os("HAIYUN_REQUIRE_REAL_NODES").is_none(), "TESTENV_REAL_DIR is not set");
        return;
    };
    env.create::<ComputePool>(real_pool("real")).await.unwrap();
    env.create::<Queue>(queue("real-q", "nvidia.com/gpu:h100", 2)).await.unwrap();
    // Fence Leases of holders that are gone (an install test's) would stand for nodes here: none is left.
    let all: Api<k8s_openapi::api::coordination::v1::Lease> = Api::all(env.client.clone());
    for l in all.list(&kube::api::ListParams::default().labels("haiyun.io/node-fence")).await.unwrap() {
        let ns: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(env.client.clone(), &kube::ResourceExt::namespace(&l).unwrap_or_default());
        ns.delete(&kube::ResourceExt::name_any(&l), &Default::default()).await.unwrap();
    }
    // A holder per live node, each through a relay the test can cut.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(env.client.clone());
    let ready = |n: &k8s_openapi::api::core::v1::Node| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    let live: Vec<String> = nodes
        .list(&kube::api::ListParams::default().labels("testenv.io/real=true"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|n| ready(n))
        .map(|n| kube::ResourceExt::name_any(&n))
        .collect();
    assert!(live.len() >= 2, "two live real nodes are needed: {live:?}");
    let config = std::fs::read_to_string(&env.kubeconfig).unwrap();
    let api = config.split("server: https://").nth(1).unwrap().lines().next().unwrap().trim().to_string();
    let mut relays = std::collections::BTreeMap::new();
    let mut holders = Vec::new();
    for node in &live {
        let relay = support::remote::Relay::start(api.parse().unwrap()).await;
        holders.push(Holder::start(&env, &dir, node, relay.addr, &api));
        relays.insert(node.clone(), relay);
    }
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(env.client.clone(), "default");
    for node in &live {
        wait_for(&format!("the fence Lease of {node}"), LONG, || async {
            leases.get_opt(&format!("node-fence.{node}")).await.ok()?.map(|_| ())
        })
        .await;
    }
    let _op = env.operator("only", &["--remote-skew-seconds", "2"]);
    env.create::<ComputeJob>(real_job_of("cutoff", "real-q", 1, 2, "sleep 25")).await.unwrap();
    let running = env.wait_phase("default", "cutoff", "Running", LONG).await;
    let victim = running.status.unwrap().placement.unwrap().tasks[0].node.clone();
    assert!(runs_there(&dir, &victim, "cutoff").await, "the first run's sandbox is ready on {victim}");

    // The node loses its API server: its kubelet falls silent and its holder cannot renew.
    let cut = std::time::Instant::now();
    let link = Cut::start(&dir, &victim, &relays[&victim]);
    // An outside watcher: the first run's sandbox on the cut node (as its runtime says) and a pod of a later run (as
    // the API server says) never exist at once.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, client, dir, victim) = (stop.clone(), env.client.clone(), dir.clone(), victim.clone());
        tokio::spawn(async move {
            let pods: Api<Pod> = Api::namespaced(client, "default");
            let (mut both, mut stopped_at, mut new_at) = (0, None, None);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let old = runs_there(&dir, &victim, "cutoff").await;
                let lp = kube::api::ListParams::default().labels("haiyun.io/job=cutoff,haiyun.io/run!=0");
                let new = pods.list(&lp).await.map(|l| !l.items.is_empty()).unwrap_or(false);
                if old && new {
                    both += 1;
                }
                if !old && stopped_at.is_none() {
                    stopped_at = Some(cut.elapsed());
                }
                if new && new_at.is_none() {
                    new_at = Some(cut.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (both, stopped_at, new_at)
        })
    };
    let done = env.wait_phase("default", "cutoff", "Succeeded", Duration::from_secs(240)).await;
    let replaced = cut.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (both, stopped_at, new_at) = watcher.await.unwrap();
    let stopped_at = stopped_at.expect("the holder stopped the first run on the cut node");
    let new_at = new_at.expect("a pod of the second run was seen");
    eprintln!(
        "node fence: after the cut, the first run stopped at {stopped_at:?}, the second run's pod was made at \
         {new_at:?}, and the job succeeded at {replaced:?}"
    );
    assert!(stopped_at >= Duration::from_secs(5), "stopped only after the fence timeout: {stopped_at:?}");
    assert!(stopped_at < new_at, "the second run started before the first was stopped");
    assert_eq!(both, 0, "the first run's sandbox and a later run's pod existed at once");
    let st = done.status.unwrap();
    assert_eq!(st.preemptions, 1, "placed again once, as a new run");
    let failure = st.last_failure.unwrap();
    assert_eq!(failure.reason, "NodeLost");
    assert!(failure.message.contains(&victim) && failure.message.contains("fenced"), "{failure:?}");
    assert!(
        st.placement.unwrap().tasks.iter().all(|t| t.node != victim),
        "the second run avoids the cut node"
    );

    // The link comes back: the node is Ready again, the first run's pod is gone, and the holder renews again.
    drop(link);
    wait_for(&format!("{victim} Ready again"), LONG, || async {
        ready(&nodes.get(&victim).await.ok()?).then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let lp = kube::api::ListParams::default().labels("haiyun.io/job=cutoff,haiyun.io/run=0");
    assert!(pods.list(&lp).await.unwrap().items.is_empty(), "the first run's pod was removed");
    for h in &mut holders {
        h.stop().await;
    }
    let left = leases.list(&kube::api::ListParams::default().labels("haiyun.io/node-fence")).await.unwrap();
    assert!(left.items.is_empty(), "a holder that stops gives up its Lease");
}
