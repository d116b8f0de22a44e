//! `haiyun demo` end to end, as a newcomer meets it: the federation on the dashboard and its JSON, agents' telemetry
//! (utilisation, an XID, an edge link that drops), `haiyun explain` and `quota request`/`approve`/`top` against the
//! demo, data that stays in cleared pools (the decision log), bad input, and the dashboard in a real browser.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::demo::{Demo, run, scratch};
use common::support::browser::{browse, get};
use serde_json::Value;

const POOLS: &str =
    "hpc-tianjin,ai-shanghai,public-data-base,ai-xian-remote,general-guangzhou,edge-shenzhen,edge-chengdu";
const QUEUES: &str = "llm,vision,analytics,public-data,edge";

fn gpus(s: &Value) -> impl Iterator<Item = &Value> {
    s["nodes"].as_array().into_iter().flatten().flat_map(|n| n["gpus"].as_array().into_iter().flatten())
}

#[test]
fn the_demo_runs_a_federation_that_the_cli_and_a_browser_can_use() {
    let dir = scratch("main");
    let demo = Demo::start(&dir);

    // Every pool and queue, GPUs with utilisation from their agents, and jobs both running and waiting.
    let s = demo.until("utilisation from the agents and waiting jobs", Duration::from_secs(60), |s| {
        let util = gpus(s).filter(|g| g["utilization"].is_u64()).count();
        (util > 100 && !s["pending"].as_array()?.is_empty()).then(|| s.clone())
    });
    let names: Vec<&str> =
        s["pools"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for p in POOLS.split(',') {
        assert!(names.contains(&p), "pool {p} missing from {names:?}");
    }
    for q in QUEUES.split(',') {
        assert!(s["queues"].get(q).is_some(), "queue {q} missing");
    }
    let kinds: std::collections::BTreeSet<&str> =
        s["pools"].as_array().unwrap().iter().map(|p| p["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["ai", "edge", "general", "hpc"]);
    assert!(s["pools"].as_array().unwrap().iter().all(|p| p["backend"] == "simulated"));
    // Busy GPUs report high utilisation, idle ones low: the agents read what the scheduler placed (a second or two
    // late, so the medians are compared).
    demo.until("utilisation that follows allocation", Duration::from_secs(30), |s| {
        let median = |full: bool| {
            let mut u: Vec<u64> = gpus(s)
                .filter(|g| g["allocated"].as_f64() == Some(if full { 1.0 } else { 0.0 }))
                .filter_map(|g| g["utilization"].as_u64())
                .collect();
            u.sort_unstable();
            u.get(u.len() / 2).copied()
        };
        (median(true)? > 60 && median(false).is_none_or(|m| m < 10)).then_some(())
    });

    // `haiyun explain` on a job that waits names the phase, the shortfall and the estimated start. The job that
    // should wait longest is asked about; should it start in between, another is.
    let mut explained = None;
    for _ in 0..5 {
        let job = latest_waiting(&demo);
        let (ns, name) = job.split_once('/').unwrap();
        let (code, out, err) = demo.haiyun(&["-n", ns, "explain", name]);
        assert_eq!(code, 0, "{err}");
        if out.contains("Blocked at") {
            explained = Some(out);
            break;
        }
    }
    let out = explained.expect("an explanation of a waiting job");
    let phase = ["quota", "reservation", "placement", "waiting for"]
        .iter()
        .any(|p| out.contains(&format!("Blocked at {p}")));
    assert!(phase && out.contains("Estimated start: 20"), "{out}");
    assert!(out.contains("shortfall: flavor") || out.contains("Blocked at placement"), "{out}");
    let (code, out, _) = demo.haiyun(&["-n", "llm", "get", "jobs"]);
    assert_eq!(code, 0);
    assert!(out.contains("pretrain-") && out.contains("Running"), "{out}");

    // A quota request, approved, raises the queue's quota as `top` shows.
    let quota = |out: &str| {
        let line = out.lines().find(|l| l.starts_with("public-data ")).unwrap_or_default().to_string();
        line.contains("nvidia.com/gpu:h100") && line.contains("/40")
    };
    let (code, out, _) = demo.haiyun(&["top"]);
    assert_eq!(code, 0);
    assert!(!quota(&out), "the quota is already raised:\n{out}");
    let request = ["quota", "request", "--queue", "public-data", "--flavor", "nvidia.com/gpu:h100"];
    let (code, _, err) = demo.haiyun(
        &[&["-n", "public-data"], &request[..], &["--amount", "8", "--hours", "24", "--name", "more"]]
            .concat(),
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = demo.haiyun(&["-n", "public-data", "quota", "approve", "more"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("approved"), "{out}");
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out, _) = demo.haiyun(&["top"]);
        if quota(&out) {
            break;
        }
        assert!(Instant::now() < end, "top never showed the raised quota:\n{out}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Bad input: one line, the documented exit code, never a backtrace.
    let bad_yaml = dir.join("bad.yaml");
    std::fs::write(&bad_yaml, "kind: ComputeJob\nspec: [unclosed\n").unwrap();
    let unreachable = dir.join("unreachable");
    std::fs::write(&unreachable, haiyun_cli::demo::api::kubeconfig(([127, 0, 0, 1], 1).into(), "llm"))
        .unwrap();
    let bad_federation = dir.join("federation.yaml");
    std::fs::write(&bad_federation, "kind: Node\n").unwrap();
    for (args, code, says) in [
        (vec!["-n", "llm", "explain", "no-such-job"], 3, "not found"),
        (vec!["-n", "llm", "submit", "-f", bad_yaml.to_str().unwrap()], 2, "bad.yaml"),
        (vec!["-n", "llm", "submit", "--name", "x", "--queue", "llm", "--gpus", "-1"], 2, "--gpus"),
        (vec!["-n", "llm", "quota", "approve", "no-such-request"], 3, "not found"),
    ] {
        let (c, _, err) = demo.haiyun(&args);
        assert_eq!(c, code, "{args:?}: {err}");
        assert!(err.contains(says) && err.trim().lines().count() == 1, "{args:?}: {err}");
    }
    for (args, code, says) in [
        (vec!["--kubeconfig", unreachable.to_str().unwrap(), "get", "jobs"], 4, "cannot reach"),
        (vec!["demo", "--speed", "0"], 2, "--speed"),
        (vec!["demo", "--duration", "soon"], 2, "--duration"),
        (vec!["demo", "--federation", bad_federation.to_str().unwrap()], 2, "Node"),
    ] {
        let (c, _, err) = run(&args);
        assert_eq!(c, code, "{args:?}: {err}");
        assert!(err.contains(says) && err.trim().lines().count() == 1, "{args:?}: {err}");
    }

    // GPU health drives capacity: an XID makes a GPU unhealthy, a dropped edge link makes its GPUs unknown.
    demo.until("an unhealthy GPU (XID 79)", Duration::from_secs(60), |s| {
        gpus(s).any(|g| g["health"] == "unhealthy").then_some(())
    });
    demo.until("an edge GPU gone unknown while its link is down", Duration::from_secs(90), |s| {
        let edge = s["nodes"]
            .as_array()?
            .iter()
            .filter(|n| n["pool"].as_str().is_some_and(|p| p.starts_with("edge-")));
        edge.flat_map(|n| n["gpus"].as_array().into_iter().flatten())
            .any(|g| g["health"] == "unknown")
            .then_some(())
    });
    // An edge pool whose link is down says so instead of "ready": Unreachable (the link cuts workload control
    // too, since when in its status), or, once back but before its agents report again, NoPlaceableGPUs.
    demo.until("an edge pool cut off and Unreachable", Duration::from_secs(120), |s| {
        s["pools"].as_array()?.iter().find_map(|p| {
            let ready = p["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?;
            let cut = ready["reason"] == "Unreachable" && p["status"]["unreachableSince"].is_string();
            (p["kind"] == "edge" && ready["status"] == "False" && cut).then_some(())
        })
    });
    demo.until("an edge pool cut off and not ready", Duration::from_secs(120), |s| {
        let pools = s["pools"].as_array()?;
        let nodes = s["nodes"].as_array()?;
        pools.iter().filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("edge-"))).find_map(|p| {
            let gpus: Vec<&Value> = nodes
                .iter()
                .filter(|n| n["pool"] == p["name"])
                .flat_map(|n| n["gpus"].as_array().into_iter().flatten())
                .collect();
            let cut = !gpus.is_empty() && gpus.iter().all(|g| g["health"] == "unknown");
            let ready = p["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?;
            let why = ready["reason"] == "NoPlaceableGPUs" || ready["reason"] == "Unreachable";
            (cut && ready["status"] == "False" && why).then_some(())
        })
    });

    // The audit trail: jobs that read sensitive public data were placed only in the pool cleared for it.
    let log = std::fs::read_to_string(&demo.decisions).unwrap();
    let places: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|d| d["event"] == "place")
        .collect();
    assert!(places.len() > 20, "{} placements", places.len());
    let sensitive: Vec<&Value> = places
        .iter()
        .filter(|d| {
            d["datasets"].as_array().is_some_and(|ds| {
                ds.iter().any(|x| x == "census-2025-microdata" || x == "medical-imaging-open")
            })
        })
        .collect();
    assert!(!sensitive.is_empty(), "no job read sensitive data");
    assert!(sensitive.iter().all(|d| d["pool"] == "public-data-base"), "{sensitive:?}");

    // The trail is a hash chain: it verifies, `audit show` lists who ran what on a dataset and where, and an edited
    // copy fails at the edited line.
    let file = demo.decisions.to_str().unwrap();
    let (code, out, err) = run(&["audit", "verify", file]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("chain intact"), "{out}");
    let (code, out, err) = run(&["audit", "show", file, "--dataset", "census-2025-microdata", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let shown: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert!(
        !shown.is_empty() && shown.iter().all(|d| d["pool"] == "public-data-base" && d["event"] == "place")
    );
    let (_, table, _) = run(&["audit", "show", file, "--dataset", "census-2025-microdata"]);
    assert!(table.contains("SUBMITTER") && table.contains("public-data-base"), "{table}");
    let copy = dir.join("tampered.jsonl");
    let mut lines: Vec<String> = log.lines().map(String::from).collect();
    let at = lines.iter().position(|l| l.contains("\"pool\":\"public-data-base\"")).unwrap();
    lines[at] = lines[at].replace("\"pool\":\"public-data-base\"", "\"pool\":\"edge-shenzhen\"");
    std::fs::write(&copy, lines.join("\n") + "\n").unwrap();
    let (code, _, err) = run(&["audit", "verify", copy.to_str().unwrap()]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains(&format!("line {}: its hash does not match", at + 1)), "{err}");

    // The usage ledger: every run placed so far is in `haiyun report`, per queue and per pool, and in /metrics.
    let places = |demo: &Demo| {
        std::fs::read_to_string(&demo.decisions)
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"event\":\"place\""))
            .count()
    };
    let before = places(&demo);
    std::thread::sleep(Duration::from_secs(3)); // a few cycles: the ledger records a run once its status says so
    let (code, out, err) = demo.haiyun(&["report", "--by", "queue", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let after = places(&demo);
    let report: Value = serde_json::from_str(&out).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let runs: i64 = rows.iter().map(|r| r["runs"].as_i64().unwrap()).sum();
    assert!(before as i64 <= runs && runs <= after as i64, "{before} ≤ {runs} ≤ {after} runs: {out}");
    assert!(rows.iter().all(|r| QUEUES.split(',').any(|q| r["key"] == q)), "{out}");
    assert!(
        rows.iter().any(|r| r["gpu_seconds"].as_f64().unwrap() > 0.0 && r["cost"].as_f64().unwrap() > 0.0)
    );
    let (code, csv, err) = demo.haiyun(&["report", "--by", "pool", "-o", "csv"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        csv.starts_with("pool,runs,gpu_seconds,cpu_core_seconds,memory_gib_seconds,energy_joules,cost\n"),
        "{csv}"
    );
    assert!(csv.lines().skip(1).all(|l| POOLS.split(',').any(|p| l.starts_with(&format!("{p},")))), "{csv}");
    let (code, table, _) = demo.haiyun(&["report", "--by", "model", "--from", "2020-01-01"]);
    assert_eq!(code, 0);
    assert!(
        table.contains("MODEL")
            && table.contains("GPU_SECONDS")
            && table.contains("usage from 2020-01-01T00:00:00"),
        "{table}"
    );
    let (code, _, err) = demo.haiyun(&["report", "--by", "colour"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--by colour") && err.contains("queue, namespace, user"), "{err}");
    // What the operator refuses, it says in a Kubernetes Status (what a client through the service proxy reads).
    let path = "/api/v1/namespaces/haiyun-system/services/haiyun-operator-dashboard:http/proxy/api/v1/usage?by=colour";
    let status: Value = serde_json::from_str(&get(demo.port, path)).unwrap();
    assert_eq!((status["kind"].as_str(), status["code"].as_u64()), (Some("Status"), Some(400)), "{status}");
    assert!(status["message"].as_str().unwrap().starts_with("by=colour: expected one of queue"), "{status}");
    let (code, _, err) = demo.haiyun(&["report", "--from", "yesterday"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--from yesterday") && err.contains("RFC 3339"), "{err}");
    let metrics = get(demo.port, "/metrics");
    assert!(metrics.contains("haiyun_usage_gpu_seconds_total{queue=\"llm\""), "{metrics}");

    // In a real browser: every pool and queue, figures that change live, and a waiting job's explanation.
    let job = latest_waiting(&demo);
    browse(
        &format!("http://127.0.0.1:{}/", demo.port),
        POOLS,
        QUEUES,
        &job,
        "demo-dashboard.png",
        true,
        true,
    );
}

/// The waiting job whose estimated start is furthest away (`namespace/name`).
fn latest_waiting(demo: &Demo) -> String {
    demo.until("a waiting job with an estimated start", Duration::from_secs(60), |s| {
        let p = s["pending"].as_array()?;
        let latest = p
            .iter()
            .filter(|j| j["estimatedStart"].is_string())
            .max_by_key(|j| j["estimatedStart"].as_str().map(str::to_string))?;
        latest["job"].as_str().map(str::to_string)
    })
}
