//! Jobs on real nodes (testenv's kubelets with containerd and runc): what only a real kubelet decides — the
//! training contract's DNS names and environment used by a real program, exit codes, and the failure policy.
//! Needs `testenv up --real-nodes N` and `HAIYUN_TEST_REAL_KUBECONFIG` (scripts/test.sh starts one).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use haiyun_api::{ComputeJob, ComputePool, Queue, fixtures};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams};
use serde_json::{Value, json};
use support::{Env, queue, wait_for};

const LONG: Duration = Duration::from_secs(120);

/// A pool of the real nodes.
fn real_pool(name: &str) -> Value {
    fixtures::pool(name).site("lab").kubernetes(&[("testenv.io/real", "true")]).value()
}

/// A job of `replicas` one-GPU tasks running `script` in busybox on the real nodes.
fn real_job(name: &str, queue: &str, replicas: u32, script: &str) -> Value {
    let image =
        std::env::var("TESTENV_BUSYBOX_IMAGE").unwrap_or_else(|_| "localhost/testenv/busybox:latest".into());
    let template = json!({ "spec": { "terminationGracePeriodSeconds": 1, "containers": [{
        "name": "main", "image": image, "imagePullPolicy": "Never", "command": ["sh", "-c", script] }] } });
    fixtures::job("default", name)
        .queue(queue)
        .group_name("worker")
        .replicas(replicas)
        .gpus(1)
        .runtime("2m")
        .template(template)
        .value()
}

/// An all-reduce over TCP that uses only the injected environment and DNS: every rank sends its vector
/// (r+1, 2(r+1), 3(r+1)) to rank 0 at MASTER_ADDR:MASTER_PORT; rank 0 sums them and sends the sum to every rank
/// at its own DNS name; each rank checks it against the closed form and exits 0, or 1 on a wrong sum.
const ALL_REDUCE: &str = r#"
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
