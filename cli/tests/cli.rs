//! The `haiyun` command line against a real API server (testenv) with the operator running: lists, `explain` on a
//! job blocked by quota, `quota request` then `approve` raising the quota as `top` shows, submissions, and bad input
//! that fails with one line and the documented exit code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../operator/tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use clap::Parser;
use haiyun_api::{ComputeJob, ComputePool, Queue};
use support::{Env, job, pool, queue, wait_for};

const LONG: Duration = Duration::from_secs(60);

#[derive(Parser)]
struct Wrap {
    #[command(flatten)]
    settings: haiyun_operator::Settings,
}

/// Runs `haiyun ARGS` against the test cluster; returns (exit code, stdout, stderr).
fn haiyun(env: &Env, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_haiyun"))
        .args(args)
        .env("KUBECONFIG", &env.kubeconfig)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn the_cli_lists_explains_requests_and_approves_quota_and_refuses_bad_input_in_one_line() {
    let Some(env) = Env::start("cli").await else { return };
    env.nodes("g", 2, 8, "H100").await;
    env.create::<ComputePool>(pool(&env, "cli-pool", "g", "public")).await.unwrap();
    env.create::<Queue>(queue("cli-q", "nvidia.com/gpu:h100", 8)).await.unwrap();
    let kubeconfig = env.kubeconfig.to_str().unwrap().to_string();
    let lease = env.lease();
    // The operator runs in this process, on its own thread, for the life of the test.
    std::thread::spawn(move || {
        let flags = ["--namespace", "default", "--lease-seconds", "3", "--interval-ms", "500"];
        let addrs = ["--metrics-addr", "127.0.0.1:0", "--telemetry-addr", "127.0.0.1:0"];
        let args = ["operator", "--kubeconfig", &kubeconfig, "--lease-name", &lease];
        let w = Wrap::parse_from(args.iter().chain(&flags).chain(&addrs));
        if let Err(e) = haiyun_operator::run(w.settings, "test") {
            eprintln!("operator stopped: {e}");
        }
    });
    env.create::<ComputeJob>(job("first", "cli-q", 1, 8, "10m")).await.unwrap();
    env.wait_phase("default", "first", "Running", LONG).await;
    env.create::<ComputeJob>(job("second", "cli-q", 1, 8, "10m")).await.unwrap();
    wait_for("second blocked at quota", LONG, || async {
        let j = env.job("default", "second").await;
        j.status?.pending_reasons.iter().any(|r| r.phase == "quota").then_some(())
    })
    .await;

    let (code, out, _) = haiyun(&env, &["get", "jobs"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("NAME") && out.contains("first") && out.contains("Running"), "{out}");
    let (_, out, _) = haiyun(&env, &["get", "pools"]);
    assert!(out.contains("cli-pool") && out.contains("kubernetes"), "{out}");
    let (code, out, err) = haiyun(&env, &["explain", "second"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Blocked at quota:") && out.contains("shortfall:") && out.contains("needs 8"),
        "{out}"
    );
    assert!(out.contains("Estimated start:"), "{out}");
    let (_, out, _) = haiyun(&env, &["explain", "second", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"]["pendingReasons"][0]["phase"], "quota");

    // Ask for 8 more GPUs, approve, and watch the quota rise in `top` and the job start.
    let (code, out, err) = haiyun(
        &env,
        &[
            "quota",
            "request",
            "--queue",
            "cli-q",
            "--flavor",
            "nvidia.com/gpu:h100",
            "--amount",
            "8",
            "--hours",
            "1",
            "--name",
            "cli-more",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("quotarequest/cli-more created"), "{out}");
    let (code, _, err) = haiyun(&env, &["quota", "approve", "cli-more"]);
    assert_eq!(code, 0, "{err}");
    env.wait_phase("default", "second", "Running", LONG).await;
    let top = wait_for("top to show the raised quota", LONG, || async {
        let (_, out, _) = haiyun(&env, &["top"]);
        out.contains("nvidia.com/gpu:h100 16/16").then_some(out)
    })
    .await;
    assert!(top.contains("cli-pool") && top.contains("h100"), "{top}");
    let (_, out, _) = haiyun(&env, &["quota", "list"]);
    assert!(out.contains("cli-more") && out.contains("Active"), "{out}");

    // Submissions from flags and from a file.
    let (code, out, err) = haiyun(
        &env,
        &["submit", "--name", "third", "--queue", "cli-q", "--gpus", "2", "--image", "example.invalid/t:1"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("computejob/third submitted"), "{out}");
    let file = env.dir.join("job.yaml");
    std::fs::write(&file, serde_yaml::to_string(&job("fourth", "cli-q", 1, 1, "1s")).unwrap()).unwrap();
    let (code, _, err) = haiyun(&env, &["submit", "-f", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");

    // Bad input: one line, no backtrace, the documented exit code.
    let one_line = |err: &str| err.trim().lines().count() == 1 && !err.contains("panicked");
    let (code, _, err) = haiyun(&env, &["explain", "nope"]);
    assert_eq!((code, one_line(&err)), (3, true), "{err}");
    assert!(err.contains("ComputeJob \"nope\" not found in namespace default"), "{err}");
    std::fs::write(&file, "kind: ComputeJob\nspec: [").unwrap();
    let (code, _, err) = haiyun(&env, &["submit", "-f", file.to_str().unwrap()]);
    assert_eq!((code, one_line(&err)), (2, true), "{err}");
    assert!(err.contains("not YAML"), "{err}");
    let (code, _, err) =
        haiyun(&env, &["submit", "--name", "x", "--queue", "cli-q", "--gpus", "-1", "--image", "i"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--gpus"), "{err}");
    let (code, _, err) = haiyun(&env, &["quota", "approve", "missing"]);
    assert_eq!(code, 3, "{err}");
    let dead = env.dir.join("dead-kubeconfig");
    let text = std::fs::read_to_string(&env.kubeconfig).unwrap();
    let server = text.lines().find_map(|l| l.trim().strip_prefix("server: ")).unwrap().to_string();
    std::fs::write(&dead, text.replace(&server, "https://127.0.0.1:9")).unwrap();
    let (code, _, err) = haiyun(&env, &["--kubeconfig", dead.to_str().unwrap(), "get", "jobs"]);
    assert_eq!((code, one_line(&err)), (4, true), "{err}");
    assert!(err.contains("cannot reach the cluster"), "{err}");
}

#[test]
fn simulate_replays_a_job_list_without_a_cluster_and_refuses_bad_input_in_one_line() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_haiyun")).args(args).current_dir(&root).output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
    };
    let jobs = "data/gavel/jobs/W2_singlegpu_seed0_n150_lam900.csv";
    let log = std::env::temp_dir().join(format!("haiyun-simulate-{}.jsonl", std::process::id()));
    let (code, out, err) =
        run(&["simulate", "--jobs", jobs, "--decisions", log.to_str().unwrap(), "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((r["jobs"].as_u64(), r["completed"].as_u64()), (Some(150), Some(150)));
    assert!(r["avg_jct_h"].as_f64().unwrap() > 0.0 && r["gpu_util_pct"].as_f64().unwrap() > 0.0);
    assert!(std::fs::read_to_string(&log).unwrap().lines().count() >= 150, "a decision per job at least");
    let (code, out, _) = run(&["simulate", "--jobs", jobs, "--policy", "fifo"]);
    assert_eq!(code, 0);
    assert!(out.contains("under fifo") && out.contains("average JCT"), "{out}");
    for (args, says) in [
        (vec!["simulate", "--jobs", "nope.csv"], "--jobs nope.csv: no such file"),
        (vec!["simulate", "--jobs", jobs, "--federation", "v100"], "--federation"),
        (vec!["simulate", "--jobs", jobs, "--policy", "best"], "fifo or haiyun"),
    ] {
        let (code, _, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.trim().lines().count() == 1 && err.contains(says), "{args:?}: {err}");
    }
    let _ = std::fs::remove_file(&log);
}
