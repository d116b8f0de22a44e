//! Smoke test of the test control plane (testenv/): a real kube-apiserver with kwok GPU nodes.
// Runs against the cluster named by `HAIYUN_TEST_KUBECONFIG` (`scripts/test.sh` and `.ci/run` start testenv and
// set it); without it the test says why and does nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

async fn client() -> Option<Client> {
    let Some(path) = std::env::var_os("HAIYUN_TEST_KUBECONFIG") else {
        assert!(
            std::env::var_os("HAIYUN_REQUIRE_TESTENV").is_none(),
            "HAIYUN_REQUIRE_TESTENV is set but HAIYUN_TEST_KUBECONFIG is not: testenv did not start"
        );
        eprintln!(
            "skipped: HAIYUN_TEST_KUBECONFIG is not set. Start a control plane with \
             `testenv/testenv up --dir DIR --nodes 4` and set it to DIR/kubeconfig (scripts/test.sh does both)."
        );
        return None;
    };
    let kubeconfig = Kubeconfig::read_from(&path).expect("readable kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("valid kubeconfig");
    Some(Client::try_from(config).expect("client"))
}

fn gpus(node: &Node) -> u64 {
    node.status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .and_then(|a| a.get("nvidia.com/gpu"))
        .and_then(|q| q.0.parse().ok())
        .unwrap_or(0)
}

fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn wait_for_phase(pods: &Api<Pod>, name: &str, phase: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let now = pods.get(name).await.expect("pod exists").status.and_then(|s| s.phase).unwrap_or_default();
        if now == phase || start.elapsed() > limit {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_pod_bound_through_the_binding_subresource_runs_then_succeeds_on_a_kwok_gpu_node() {
    let Some(client) = client().await else { return };
    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes.list(&ListParams::default().labels("haiyun.io/gpu-model")).await.expect("list nodes");
    let node = list.items.iter().find(|n| ready(n) && gpus(n) > 0).expect("a Ready node with nvidia.com/gpu");
    let node_name = node.metadata.name.clone().unwrap();

    let pods: Api<Pod> = Api::namespaced(client, "default");
    let name = format!("haiyun-smoke-{}", std::process::id());
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "annotations": { "haiyun.io/duration": "2s" } },
        "spec": {
            "schedulerName": "nobody-serves-this",
            "containers": [{
                "name": "train",
                "image": "example.invalid/train:1",
                "resources": { "limits": { "nvidia.com/gpu": "1" }, "requests": { "nvidia.com/gpu": "1" } }
            }]
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.expect("create pod");
    assert_eq!(
        wait_for_phase(&pods, &name, "Pending", Duration::from_secs(1)).await,
        "Pending",
        "nobody schedules it"
    );

    let binding = Binding {
        metadata: kube::api::ObjectMeta { name: Some(name.clone()), ..Default::default() },
        target: ObjectReference {
            kind: Some("Node".into()),
            name: Some(node_name.clone()),
            ..Default::default()
        },
    };
    let _: serde_json::Value = pods
        .create_subresource("binding", &name, &PostParams::default(), &binding)
        .await
        .expect("bind through the Binding subresource");

    let bound = pods.get(&name).await.unwrap();
    assert_eq!(bound.spec.and_then(|s| s.node_name), Some(node_name));
    assert_eq!(wait_for_phase(&pods, &name, "Running", Duration::from_secs(20)).await, "Running");
    assert_eq!(wait_for_phase(&pods, &name, "Succeeded", Duration::from_secs(20)).await, "Succeeded");
    pods.delete(&name, &DeleteParams::default()).await.expect("delete pod");
}
