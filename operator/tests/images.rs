//! Haiyun's images (`scripts/images.sh`) on a real node: each one, imported into the node's containerd, runs its
//! binary as the nonroot user with only what its base layer carries; and the assembler gives the same digest for the
//! same inputs. Needs the real-node testenv with the images loaded (`scripts/test.sh` runs `scripts/images.sh --load`
//! and sets `HAIYUN_TEST_IMAGES`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams, PostParams};
use serde_json::json;
use support::{Env, wait_for};

/// The tag the images carry (the chart's appVersion), from `HAIYUN_TEST_IMAGES` (`REGISTRY:TAG`).
fn images() -> Option<(String, String)> {
    let v = std::env::var("HAIYUN_TEST_IMAGES").ok()?;
    let (registry, tag) = v.rsplit_once(':')?;
    Some((registry.to_string(), tag.to_string()))
}

#[tokio::test]
async fn every_image_runs_its_binary_on_a_real_kubelet_as_nonroot() {
    let Some(env) = Env::start_real("images").await else { return };
    let Some((registry, tag)) = images() else {
        assert!(std::env::var_os("HAIYUN_REQUIRE_REAL_NODES").is_none(), "HAIYUN_TEST_IMAGES is not set");
        return;
    };
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    // No scheduler runs there: the pods name a Ready real node.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(env.client.clone());
    let node = nodes
        .list(&kube::api::ListParams::default().labels("testenv.io/real=true"))
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|n| {
            let c = n.status.as_ref().and_then(|s| s.conditions.as_ref());
            c.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .and_then(|n| n.metadata.name)
        .expect("a Ready real node");
    let cases = [
        ("img-operator", "haiyun-operator", vec!["--version"], "haiyun-operator "),
        ("img-cli", "haiyun-cli", vec!["--version"], "haiyun "),
        (
            "img-agent",
            "haiyun-agent",
            vec!["--probe", "fake:dgx-h100", "--once", "--json"],
            "GPU-fake-h100-07",
        ),
        (
            "img-dra",
            "haiyun-dra",
            vec!["--probe", "fake:mixed", "--node-name", "n", "--print-cdi"],
            "haiyun.io/gpu",
        ),
    ];
    for (pod, image, args, _) in &cases {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": pod},
            "spec": {"restartPolicy": "Never", "nodeName": node,
              "containers": [{"name": "c", "image": format!("{registry}/{image}:{tag}"), "imagePullPolicy": "Never",
                              "args": args, "securityContext": {"runAsNonRoot": true}}]}
        }))
        .unwrap();
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    for (pod, _, _, expect) in &cases {
        let phase = wait_for(&format!("{pod} to end"), Duration::from_secs(120), || async {
            let p = pods.get(pod).await.ok()?;
            let phase = p.status?.phase?;
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
        })
        .await;
        let logs = pods.logs(pod, &LogParams::default()).await.unwrap_or_default();
        assert_eq!(phase, "Succeeded", "{pod}: {logs}");
        assert!(logs.contains(expect), "{pod} printed {logs:?}, not {expect:?}");
        pods.delete(pod, &Default::default()).await.unwrap();
    }
}

#[test]
fn the_assembler_gives_the_same_digest_for_the_same_inputs() {
    let dir = std::env::temp_dir().join(format!("haiyun-oci-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("tool");
    std::fs::copy("/bin/true", &bin).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/oci_image.py");
    let build = |out: &str, epoch: &str| -> serde_json::Value {
        let o = std::process::Command::new("python3")
            .arg(&script)
            .args([
                "--out",
                dir.join(out).to_str().unwrap(),
                "--name",
                "example.invalid/tool:1",
                "--entrypoint",
            ])
            .arg("/usr/local/bin/tool")
            .arg("--file")
            .arg(format!("{}:/usr/local/bin/tool", bin.display()))
            .env("SOURCE_DATE_EPOCH", epoch)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let (a, b, c) =
        (build("a.tar", "1700000000"), build("b.tar", "1700000000"), build("c.tar", "1700000001"));
    assert_eq!(a["manifest"], b["manifest"], "same inputs, same digest");
    assert_eq!(std::fs::read(dir.join("a.tar")).unwrap(), std::fs::read(dir.join("b.tar")).unwrap());
    assert_ne!(a["manifest"], c["manifest"], "the timestamp is part of the image");
    std::fs::remove_dir_all(&dir).unwrap();
}
