//! The capacity dashboard served by the operator on testenv: the page, its JSON snapshot (pools, GPU heat map,
//! queues, pending jobs with reasons, quota requests), and its live stream of server-sent events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use haiyun_api::{ComputeJob, ComputePool, Queue};
use serde_json::Value;
use support::browser::{browse, get};
use support::{Env, job, pool, queue, wait_for};

const LONG: Duration = Duration::from_secs(60);

/// The first `n` `snapshot` events of the live stream.
fn events(port: u16, n: usize) -> Vec<Value> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n").unwrap();
    let mut lines = BufReader::new(s).lines();
    let mut out = Vec::new();
    while out.len() < n {
        let line = lines.next().expect("the stream stays open").unwrap();
        if let Some(data) = line.strip_prefix("data: ") {
            out.push(serde_json::from_str(data).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn the_dashboard_shows_pools_gpus_queues_and_pending_jobs_with_reasons_and_updates_live() {
    let Some(env) = Env::start("dash").await else { return };
    env.nodes("g", 2, 8, "H100").await;
    env.create::<ComputePool>(pool(&env, "dash-pool", "g", "public")).await.unwrap();
    env.create::<Queue>(queue("dash-q", "nvidia.com/gpu:h100", 8)).await.unwrap();
    let op = env.operator("only", &["--history-interval-seconds", "1"]);
    env.create::<ComputeJob>(job("running", "dash-q", 1, 8, "10m")).await.unwrap();
    env.wait_phase("default", "running", "Running", LONG).await;
    env.create::<ComputeJob>(job("waiting", "dash-q", 1, 8, "10m")).await.unwrap();

    let port = op.metrics_port;
    let page = get(port, "/");
    assert!(page.contains("Haiyun — federation capacity") && page.contains("api/v1/events"), "{page}");
    assert!(!page.contains("http://") && !page.contains("https://"), "no external assets");

    let snap: Value = wait_for("a snapshot with the waiting job", LONG, || async {
        let v: Value = serde_json::from_str(&get(port, "/api/v1/snapshot")).ok()?;
        let has_reasons = |j: &Value| j["reasons"].as_array().is_some_and(|r| !r.is_empty());
        let waits = v["pending"].as_array()?.iter().any(|j| j["job"] == "default/waiting" && has_reasons(j));
        waits.then_some(v)
    })
    .await;
    let pool = snap["pools"].as_array().unwrap().iter().find(|p| p["name"] == "dash-pool").unwrap();
    assert_eq!((pool["kind"].as_str(), pool["backend"].as_str()), (Some("ai"), Some("kubernetes")));
    assert_eq!(pool["status"]["gpus"], 16);
    let nodes: Vec<&Value> =
        snap["nodes"].as_array().unwrap().iter().filter(|n| n["pool"] == "dash-pool").collect();
    assert_eq!(nodes.len(), 2);
    let allocated: f64 = nodes
        .iter()
        .flat_map(|n| n["gpus"].as_array().unwrap())
        .map(|g| g["allocated"].as_f64().unwrap())
        .sum();
    assert_eq!(allocated, 8.0, "the running job's 8 GPUs are allocated in the heat map");
    assert_eq!(snap["queues"]["dash-q"]["pending"], 1);
    let waiting = snap["pending"].as_array().unwrap().iter().find(|j| j["job"] == "default/waiting").unwrap();
    assert_eq!(waiting["reasons"][0]["phase"], "quota", "{waiting}");

    // Utilisation over time: samples of the pool's H100s (models are named in lower case), 8 of 16 allocated.
    let history: Value = wait_for("two history samples", LONG, || async {
        let v: Value = serde_json::from_str(&get(port, "/api/v1/history")).ok()?;
        (v["samples"].as_array()?.len() >= 2).then_some(v)
    })
    .await;
    let last = history["samples"].as_array().unwrap().last().unwrap();
    assert_eq!(last["cells"]["dash-pool/h100"]["gpus"], 16, "{history}");
    assert_eq!(last["cells"]["dash-pool/h100"]["allocated"], 8.0, "{history}");
    // Kept where the next leader reads it.
    let maps: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(env.client.clone(), "default");
    let kept = maps.get(&format!("{}-history", env.lease())).await.unwrap();
    assert!(kept.data.unwrap_or_default().get("history.json").is_some_and(|h| h.contains("dash-pool/h100")));

    // In a real browser (headless Chromium from Debian, driven by playwright-core): every pool and queue, live
    // numbers, and the waiting job's explanation; the screenshot is kept as a test artifact.
    browse(
        &format!("http://127.0.0.1:{port}/"),
        "dash-pool",
        "dash-q",
        "default/waiting",
        "dashboard.png",
        false,
        false,
    );

    // Live: two events arrive on the stream, each a full snapshot, and the second is newer.
    let evs = events(port, 2);
    assert!(evs[0]["pools"].as_array().is_some_and(|p| !p.is_empty()));
    env.create::<ComputeJob>(job("third", "dash-q", 1, 1, "10m")).await.unwrap();
    let later = wait_for("the stream to show the new job", LONG, || async {
        events(port, 2)
            .into_iter()
            .find(|e| e["pending"].as_array().is_some_and(|p| p.iter().any(|j| j["job"] == "default/third")))
    })
    .await;
    assert_eq!(later["queues"]["dash-q"]["pending"], 2);
}
