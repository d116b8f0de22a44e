//! The `haiyun` command line against a real API server (testenv) with the operator running: lists, `explain` on a
//! job blocked by quota and the quota request it suggests, `approve` raising the quota as `top` shows, submissions,
//! one object by name, `describe`, `logs` of a job with no pod yet, `delete`, `get -w` printing each change, and
//! bad input that fails with one line and the documented exit code. On real nodes: `logs` prints what a task wrote.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../operator/tests/support/mod.rs"]
mod support;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use haiyun_api::{ComputeJob, ComputePool, Queue};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
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

    // The phase is said once, and explain ends with the request for the 8 GPUs it lacks, for its 5 minutes.
    let (_, out, _) = haiyun(&env, &["explain", "second"]);
    assert!(!out.contains("quota: quota"), "{out}");
    let run = out
        .lines()
        .find_map(|l| l.strip_prefix("Run: haiyun quota request "))
        .unwrap_or_else(|| panic!("{out}"));
    let suggested = run.split("  # ").next().unwrap();
    assert_eq!(suggested, "--queue cli-q --flavor nvidia.com/gpu:h100 --amount 8 --hours 1", "{out}");

    // Run what it suggests, approve, and watch the quota rise in `top` and the job start.
    let mut args = vec!["quota", "request"];
    args.extend(suggested.split_whitespace());
    args.extend(["--name", "cli-more"]);
    let (code, out, err) = haiyun(&env, &args);
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

    one_by_name_describe_logs_and_delete(&env).await;
    watches(&env).await;

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

/// `get KIND NAME` (kubectl's kind names too), `describe job`, `logs` of a job whose pod does not exist yet, and
/// `delete job`.
async fn one_by_name_describe_logs_and_delete(env: &Env) {
    let one_line = |err: &str| err.trim().lines().count() == 1 && !err.contains("panicked");
    let (code, out, err) = haiyun(env, &["get", "jobs", "first"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.starts_with("NAME") && out.contains("first") && !out.contains("second"), "{out}");
    let (code, _, err) = haiyun(env, &["get", "job", "nope"]);
    assert_eq!((code, one_line(&err)), (3, true), "{err}");
    assert!(err.contains("ComputeJob \"nope\" not found in namespace default"), "{err}");
    let (code, out, err) = haiyun(env, &["get", "pool", "cli-pool", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["metadata"]["name"], "cli-pool", "one object, not a list: {out}");
    let (code, out, _) = haiyun(env, &["get", "queue", "cli-q"]);
    assert!(code == 0 && out.contains("cli-q"), "{out}");
    let (code, _, err) = haiyun(env, &["get", "queues", "nope"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("Queue \"nope\" not found (haiyun get queues lists them)"), "{err}");
    let (code, out, _) = haiyun(env, &["get", "qr", "cli-more"]);
    assert!(code == 0 && out.contains("cli-more") && out.contains("Active"), "{out}");

    // describe: spec, status, the pod kwok runs, and the operator's events.
    let text = wait_for("describe to show the job's pod and events", LONG, || async {
        let (code, out, err) = haiyun(env, &["describe", "job", "first"]);
        assert_eq!(code, 0, "{err}");
        let events = &out[out.find("Events:")?..];
        (out.contains("first-worker-0") && events.contains("Admitted") && events.contains("Running"))
            .then_some(out)
    })
    .await;
    for want in ["Name:               first", "Queue:              cli-q", "Task groups (8 GPUs in all):"] {
        assert!(text.contains(want), "{want:?} in\n{text}");
    }
    assert!(text.contains("  Phase:            Running") && text.contains("pool cli-pool (h100)"), "{text}");
    let pods = &text[text.find("Pods:").unwrap()..text.find("Events:").unwrap()];
    assert!(pods.contains("first-worker-0") && pods.contains("Running"), "{text}");
    let events = &text[text.find("Events:").unwrap()..];
    let (admitted, running) = (events.find("Admitted").unwrap(), events.find("Running").unwrap());
    assert!(admitted < running, "oldest first:\n{text}");
    let (_, out, _) = haiyun(env, &["describe", "job", "first", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["pods"][0]["metadata"]["name"], "first-worker-0", "{out}");
    let (code, _, err) = haiyun(env, &["describe", "job", "nope"]);
    assert_eq!((code, one_line(&err)), (3, true), "{err}");

    // logs: a job still in its queue has no pod yet, and says why; bad flags name what there is.
    wait_for("third to wait at quota", LONG, || async {
        let j = env.job("default", "third").await;
        j.status?.pending_reasons.iter().any(|r| r.phase == "quota").then_some(())
    })
    .await;
    let (code, _, err) = haiyun(env, &["logs", "third"]);
    assert_eq!((code, one_line(&err)), (3, true), "{err}");
    assert!(
        err.contains("Pod \"third-main-0\" not found yet: job third is Queued: queue cli-q needs"),
        "{err}"
    );
    assert!(err.contains("(quota); haiyun explain third says more"), "{err}");
    let (code, _, err) = haiyun(env, &["logs", "first", "--task", "1"]);
    assert_eq!((code, one_line(&err)), (2, true), "{err}");
    assert!(err.contains("give --task 0 to 0"), "{err}");
    let (code, _, err) = haiyun(env, &["logs", "first", "--group", "ps"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("give one of worker"), "{err}");

    // delete: gone, then not found.
    let (code, out, err) = haiyun(env, &["delete", "job", "fourth"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "computejob/fourth deleted\n");
    wait_for("fourth to be gone", LONG, || async {
        (haiyun(env, &["get", "job", "fourth"]).0 == 3).then_some(())
    })
    .await;
    let (code, _, err) = haiyun(env, &["delete", "job", "fourth"]);
    assert_eq!((code, one_line(&err)), (3, true), "{err}");
    assert!(err.contains("ComputeJob \"fourth\" not found in namespace default"), "{err}");
}

/// `haiyun ARGS` running in the background, its stdout read line by line; killed when dropped.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(env: &Env, args: &[&str]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_haiyun"))
            .args(args)
            .env("KUBECONFIG", &env.kubeconfig)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Running { child, lines, seen: Vec::new() }
    }

    /// The next line that `want` accepts, within a minute; panics with every line so far.
    fn next(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + LONG;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if want(&l) {
                        return l;
                    }
                }
                Err(_) => panic!("no line with {what} within {LONG:?}; lines:\n{}", self.seen.join("\n")),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `get -w`: the table with its header once, then a row when a job is created and one when the operator queues it;
/// with `-o json` one object per line, its deletion included.
async fn watches(env: &Env) {
    let mut table = Running::start(env, &["get", "jobs", "-w"]);
    let header = table.next("the header", |l| !l.is_empty());
    assert!(header.starts_with("NAME") && header.contains("PHASE"), "{header}");
    table.next("the listed job first", |l| l.starts_with("first "));
    let mut json = Running::start(env, &["get", "pools", "-w", "-o", "json"]);
    let pool = json.next("the pool as JSON", |l| l.starts_with('{'));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&pool).unwrap()["metadata"]["name"], "cli-pool");
    env.create::<ComputeJob>(job("watch", "cli-q", 1, 1, "10m")).await.unwrap();
    let created = table.next("the new job", |l| l.starts_with("watch "));
    let queued =
        table.next("the job queued by the operator", |l| l.starts_with("watch ") && l.contains("Queued"));
    // Rows line up under the header: the phase starts where PHASE does.
    let column = header.find("PHASE").unwrap();
    assert_eq!(queued.get(column..column + 6), Some("Queued"), "{header}\n{created}\n{queued}");
    assert_eq!(table.seen.iter().filter(|l| l.starts_with("NAME")).count(), 1, "the header once");
    drop(table);

    let mut one = Running::start(env, &["get", "job", "watch", "-w", "-o", "json"]);
    let first = one.next("the job as JSON", |l| l.starts_with('{'));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&first).unwrap()["metadata"]["name"], "watch");
    let before = one.seen.len();
    let (code, _, err) = haiyun(env, &["delete", "job", "watch"]);
    assert_eq!(code, 0, "{err}");
    one.next("the job once deleted", |_| true);
    assert!(one.seen.len() > before);
    assert!(one.seen.iter().all(|l| l.contains("\"name\":\"watch\"")), "only that job: {:?}", one.seen);
    drop(one);
    drop(json);
    let (code, _, err) = haiyun(env, &["get", "job", "nope", "-w"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("ComputeJob \"nope\" not found"), "{err}");
}

/// `haiyun logs` on real nodes: the log of a job's task 0 is what its pod printed. The pod is made here as the
/// operator would make it (name and labels), on a real node, with no operator running.
#[tokio::test]
async fn logs_prints_what_a_task_wrote_on_a_real_node() {
    let Some(env) = Env::start_real("cli-logs").await else { return };
    let ns = "cli-logs";
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    let node = wait_for("a real node", LONG, || async {
        let nodes: Api<Node> = Api::all(env.client.clone());
        let list = nodes.list(&ListParams::default().labels("testenv.io/real=true")).await.ok()?;
        list.items.into_iter().find_map(|n| n.metadata.name)
    })
    .await;
    let mut j = job("echo", "cli-logs-q", 1, 0, "1m");
    j["metadata"]["namespace"] = ns.into();
    // A namespace an earlier run left behind goes first, with what is in it.
    let _ = namespaces.delete(ns, &DeleteParams::default()).await;
    wait_for("namespace cli-logs of an earlier run to be gone", LONG, || async {
        namespaces.get_opt(ns).await.ok()?.is_none().then_some(())
    })
    .await;
    namespaces.create(&PostParams::default(), &serde_json::from_value(json_ns(ns)).unwrap()).await.unwrap();
    env.create::<ComputeJob>(j).await.unwrap();
    let image =
        std::env::var("TESTENV_BUSYBOX_IMAGE").unwrap_or_else(|_| "localhost/testenv/busybox:latest".into());
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        // The name label `logs` finds it by; not the uid label, which an operator running here might act on.
        "metadata": {"name": "echo-worker-0", "namespace": ns, "labels": {haiyun_api::JOB_NAME_LABEL: "echo"}},
        "spec": {"nodeName": node, "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "train", "image": image, "imagePullPolicy": "Never",
                                 "command": ["echo", "hello-from-task-0"]}]}
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let out = wait_for("the task's log", LONG, || async {
        let (code, out, _) = haiyun(&env, &["logs", "echo", "--task", "0", "-n", ns]);
        (code == 0 && out.contains("hello-from-task-0")).then_some(out)
    })
    .await;
    assert_eq!(out.trim(), "hello-from-task-0");
    let (code, out, err) = haiyun(&env, &["logs", "echo", "-f", "-n", ns]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "hello-from-task-0", "a finished task's followed log ends");
    let _ = namespaces.delete(ns, &DeleteParams::default()).await;
}

fn json_ns(name: &str) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

#[test]
fn completion_prints_a_script_for_each_shell_without_a_cluster() {
    let run = |shell: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_haiyun"))
            .args(["completion", shell])
            .env("KUBECONFIG", "/nonexistent")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string())
    };
    for (shell, says) in [
        ("bash", "complete -F _haiyun"),
        ("zsh", "#compdef haiyun"),
        ("fish", "complete -c haiyun"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let (code, out) = run(shell);
        assert_eq!(code, Some(0), "{shell}");
        assert!(out.contains(says) && out.contains("describe") && out.contains("logs"), "{shell}: {out}");
    }
    let (code, _) = run("tcsh");
    assert_eq!(code, Some(2));
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
