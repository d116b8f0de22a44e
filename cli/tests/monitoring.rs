//! The chart's Grafana dashboards and Prometheus alert rules against a real Prometheus (Debian's package) scraping
//! `haiyun demo`: `promtool` accepts the rules, every panel's query returns series, and every rule evaluates without
//! error over metrics that exist (a healthy alert returns nothing by design, so its metrics are checked instead).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::demo::{Demo, scratch};
use common::support::browser::get;
use serde_json::Value;

struct Prometheus {
    child: Child,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/haiyun/files")
}

fn tool(name: &str) -> Option<PathBuf> {
    let path = PathBuf::from(format!("/usr/bin/{name}"));
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("HAIYUN_REQUIRE_PROMETHEUS").is_none(),
        "HAIYUN_REQUIRE_PROMETHEUS is set but {} is missing (Debian's prometheus package)",
        path.display()
    );
    eprintln!("skipped: install Debian's prometheus package for the monitoring test");
    None
}

/// Percent-encodes a query for a URL.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn query(port: u16, q: &str) -> Value {
    serde_json::from_str(&get(port, &format!("/api/v1/query?query={}", encode(q)))).unwrap_or(Value::Null)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(dir: &Path, target: u16, rules: &Path) -> Prometheus {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nrule_files: [\"{}\"]\n\
             scrape_configs:\n- job_name: haiyun\n  static_configs: [{{ targets: [\"127.0.0.1:{target}\"] }}]\n",
            rules.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new("/usr/bin/prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    Prometheus { child, port }
}

/// Every `expr` of a Grafana dashboard.
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    let title = dashboard["title"].as_str().unwrap_or_default().to_string();
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            let name = format!("{title} / {}", p["title"].as_str().unwrap_or_default());
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |t| (name.clone(), t["expr"].as_str().unwrap().into()))
        })
        .collect()
}

#[test]
fn every_dashboard_panel_returns_series_and_every_alert_rule_evaluates_over_metrics_that_exist() {
    let (Some(promtool), Some(_)) = (tool("promtool"), tool("prometheus")) else { return };
    let rules = chart().join("prometheus/rules.yaml");
    let out = Command::new(&promtool).args(["check", "rules"]).arg(&rules).output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = scratch("monitoring");
    let demo = Demo::start(&dir);
    let prom = start(&dir, demo.port, &rules);
    let log = || std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();

    let mut dashboards = Vec::new();
    for entry in std::fs::read_dir(chart().join("grafana")).unwrap() {
        let path = entry.unwrap().path();
        dashboards.push(serde_json::from_str::<Value>(&std::fs::read_to_string(&path).unwrap()).unwrap());
    }
    assert_eq!(dashboards.len(), 4, "capacity, queues, usage and cost, GPU health");
    let queries: Vec<(String, String)> = dashboards.iter().flat_map(panel_queries).collect();

    // Every panel returns series once a few scrapes are in (rates need two samples; runs must have ended for energy
    // and cost to have moved).
    let end = Instant::now() + Duration::from_secs(120);
    let mut empty: Vec<String> = queries.iter().map(|(n, _)| n.clone()).collect();
    while !empty.is_empty() {
        assert!(Instant::now() < end, "panels without series after 120 s: {empty:?}\nprometheus:\n{}", log());
        std::thread::sleep(Duration::from_secs(2));
        empty = queries
            .iter()
            .filter(|(_, q)| {
                let r = query(prom.port, q);
                r["status"] != "success" || r["data"]["result"].as_array().is_none_or(Vec::is_empty)
            })
            .map(|(n, q)| format!("{n}: {q}"))
            .collect();
    }
    eprintln!("{} panel queries over {} dashboards return series", queries.len(), dashboards.len());

    // Every rule evaluated, without error, and every metric it names is scraped.
    let rules: Value = serde_json::from_str(&get(prom.port, "/api/v1/rules")).unwrap();
    let all: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(all.len(), 9, "{rules}");
    for r in &all {
        assert_eq!(r["health"], "ok", "rule {} failed to evaluate: {r}", r["name"]);
        assert!(r["lastEvaluation"].as_str().is_some_and(|t| !t.starts_with("0001")), "{r}");
        let expr = r["query"].as_str().unwrap();
        let names: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("haiyun_"))
            .collect();
        assert!(!names.is_empty(), "{expr}");
        for n in names {
            let r = query(prom.port, &format!("count({{__name__=\"{n}\"}})"));
            assert!(
                r["data"]["result"].as_array().is_some_and(|v| !v.is_empty()),
                "rule {expr}: no metric {n}"
            );
        }
    }
    eprintln!("{} alert rules evaluate over metrics that exist", all.len());
}
