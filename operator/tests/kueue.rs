//! Kueue v0.17.0 beside a test control plane (`testenv up --with-kueue`), set up as the side-by-side bench sets it
//! up (`bench::side`): a queue admits the Jobs its quota holds and no more, kube-scheduler binds the admitted Jobs'
//! pods on kwok, and a deleted Job's quota goes to the one that waited.
// Runs against the control plane named by `HAIYUN_TEST_KUEUE_KUBECONFIG` (`scripts/test.sh` starts it when run as
// root); without it the test says why and does nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use haiyun_operator::bench::side::{self, Controller, Queues, Shape};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams, PropagationPolicy};
use support::{client_of, wait_for};

const NS: &str = "kueue-smoke";

/// Whether Job `name` is unsuspended (admitted by Kueue).
async fn admitted(jobs: &Api<Job>, name: &str) -> bool {
    let job = jobs.get(name).await.expect("the job exists");
    job.spec.and_then(|s| s.suspend) == Some(false)
}

/// `Some` once `count` of Job `name`'s pods are bound to a node and running.
async fn bound(pods: &Api<Pod>, name: &str, count: usize) -> Option<()> {
    let list = pods.list(&ListParams::default().labels(&format!("job-name={name}"))).await.ok()?;
    let running = list
        .items
        .iter()
        .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count();
    (running == count).then_some(())
}

#[tokio::test]
async fn kueue_admits_what_the_quota_holds_and_kube_scheduler_binds_the_pods() {
    // Started by scripts/test.sh as root: `testenv/testenv up --dir DIR --nodes 2 --gpus-per-node 8 --with-kueue`.
    let Some((client, _)) = client_of("HAIYUN_TEST_KUEUE_KUBECONFIG", "HAIYUN_REQUIRE_KUEUE").await else {
        return;
    };
    let model = haiyun_operator::bench::gpu_nodes(&client)
        .await
        .expect("nodes listed")
        .model
        .expect("kwok GPU nodes with a model label");
    side::namespace(&client, NS).await.expect("namespace");
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
    // An earlier run's Jobs would hold the queue's quota.
    for name in ["first", "second", "third"] {
        let _ = jobs.delete(name, &dp).await;
    }
    wait_for("an earlier run's Jobs gone", Duration::from_secs(60), || async {
        jobs.list(&ListParams::default()).await.ok().filter(|l| l.items.is_empty()).map(|_| ())
    })
    .await;
    // One queue of 8 GPUs that borrows nothing, on nodes with more: the quota is what holds the third Job back.
    let queues = Queues { count: 1, cohorts: 1, quota: 8, borrowing_limit: 0, topology: false };
    side::setup_kueue(&client, &queues, &model, NS).await.expect("Kueue's flavor and queues");
    let shape = Shape { pods: 2, gpus: 2, run_ms: None };
    for name in ["first", "second", "third"] {
        let job = side::job(Controller::Kueue, name, NS, 0, shape, false).expect("job");
        jobs.create(&PostParams::default(), &job).await.expect("job created");
        // Admitted in order of creation: one at a time, so that the third is the one left out.
        if name != "third" {
            wait_for(&format!("Kueue to admit {name}"), Duration::from_secs(60), || async {
                admitted(&jobs, name).await.then_some(())
            })
            .await;
        }
    }
    for name in ["first", "second"] {
        wait_for(&format!("{name}'s 2 pods bound and running"), Duration::from_secs(60), || {
            bound(&pods, name, 2)
        })
        .await;
    }
    // The quota is full (two Jobs of 4 GPUs in 8): the third stays suspended and has no pods.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!admitted(&jobs, "third").await, "Kueue admitted a Job its queue's quota does not hold");
    let third = pods.list(&ListParams::default().labels("job-name=third")).await.expect("pods listed");
    assert!(third.items.is_empty(), "a suspended Job has pods: {:?}", third.items.len());
    // Deleting an admitted Job gives its quota back: the third is admitted and its pods bound.
    jobs.delete("first", &dp).await.expect("first deleted");
    wait_for("Kueue to admit the third once the first is gone", Duration::from_secs(60), || async {
        admitted(&jobs, "third").await.then_some(())
    })
    .await;
    wait_for("third's pods bound and running", Duration::from_secs(60), || bound(&pods, "third", 2)).await;
    for name in ["second", "third"] {
        jobs.delete(name, &dp).await.expect("job deleted");
    }
}
