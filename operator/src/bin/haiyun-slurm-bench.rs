//! `haiyun-slurm-bench`: jobs submitted per second to a real Slurm through Haiyun's backend client (each submission
//! idempotent: a lookup of its key, then `POST /job/submit`) beside `curl` alone posting the same job, at each
//! concurrency. Prints one JSON line per concurrency.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use haiyun_operator::backend::slurm::{Credential, SlurmClient, Submission};

#[derive(Debug, Parser)]
#[command(name = "haiyun-slurm-bench", about = "Slurm dispatch throughput: Haiyun's backend beside curl")]
struct Cli {
    /// The `slurm-env.sh` that `testenv/slurm/slurm-up.sh DIR` wrote.
    #[arg(long)]
    env: std::path::PathBuf,
    /// Jobs per measurement.
    #[arg(long, default_value_t = 200)]
    jobs: usize,
    /// Concurrencies to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    concurrency: Vec<usize>,
}

struct Env {
    api: String,
    url: String,
    user: String,
    token: String,
    jobs_dir: String,
}

fn read_env(path: &std::path::Path) -> Result<Env, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("failed to read {}: {e}", path.display()))?;
    let var = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .map(|v| v.trim_matches('"').to_string())
            .ok_or_else(|| format!("{} has no {name}", path.display()))
    };
    Ok(Env {
        api: var("SLURM_LB_API")?,
        url: var("SLURM_LB_REST_URL")?,
        user: var("SLURM_LB_USER")?,
        token: var("SLURM_LB_TOKEN")?,
        jobs_dir: var("SLURM_LB_JOBS_DIR")?,
    })
}

fn submission(env: &Env, key: String) -> Submission {
    Submission {
        name: "bench".into(),
        script: "#!/bin/bash\ntrue\n".into(),
        partition: "batch".into(),
        nodes: 1,
        node_list: Vec::new(),
        gpus_per_node: 0,
        gpu_type: None,
        cpus_per_node: 1,
        memory_per_node_mib: 10,
        time_limit_min: 1,
        key,
        cwd: env.jobs_dir.clone(),
        environment: BTreeMap::from([("PATH".to_string(), "/usr/bin:/bin".to_string())]),
    }
}

/// `n` POSTs of the same body with `curl`, `par` at a time; returns (seconds, failures).
fn curl(env: &Env, n: usize, par: usize) -> (f64, usize) {
    let body = serde_json::json!({"script": "#!/bin/bash\ntrue\n", "job": {
        "name": "bench-curl", "partition": "batch", "nodes": 1, "time_limit": 1, "memory_per_node": 10,
        "current_working_directory": env.jobs_dir, "environment": {"PATH": "/usr/bin:/bin"}}})
    .to_string();
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::scope(|s| {
        for _ in 0..par {
            let (next, failed, body) = (next.clone(), failed.clone(), body.clone());
            s.spawn(move || {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    let out = Command::new("curl")
                        .args(["-s", "-m", "30", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
                        .args(["-H", &format!("X-SLURM-USER-NAME: {}", env.user)])
                        .args(["-H", &format!("X-SLURM-USER-TOKEN: {}", env.token)])
                        .args(["-H", "Content-Type: application/json", "--data", &body])
                        .arg(format!("{}/job/submit", env.api))
                        .stderr(Stdio::null())
                        .output();
                    if !out.is_ok_and(|o| o.stdout == b"200") {
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    (start.elapsed().as_secs_f64(), failed.load(std::sync::atomic::Ordering::Relaxed))
}

/// `n` idempotent submissions through the backend client, `par` at a time; returns (seconds, failures).
async fn haiyun(env: &Env, client: &SlurmClient, n: usize, par: usize, tag: &str) -> (f64, usize) {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64 - 60)
        .unwrap_or(0);
    let start = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(par.max(1)));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (client, sem) = (client.clone(), sem.clone());
        let sub = submission(env, format!("haiyun:bench-{tag}-{i}:0"));
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await;
            client.submit_once(&sub, 3, Some(since), false).await.is_ok()
        }));
    }
    let mut failed = 0;
    for t in tasks {
        if !t.await.unwrap_or(false) {
            failed += 1;
        }
    }
    (start.elapsed().as_secs_f64(), failed)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = match read_env(&cli.env) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let client = match SlurmClient::new(&env.url, &env.user, Credential::Token(env.token.clone())) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let run = std::process::id();
    for par in cli.concurrency {
        let (curl_s, curl_failed) = curl(&env, cli.jobs, par);
        let (ours_s, ours_failed) =
            rt.block_on(haiyun(&env, &client, cli.jobs, par, &format!("{run}-{par}")));
        let (curl_rate, ours_rate) = (cli.jobs as f64 / curl_s, cli.jobs as f64 / ours_s);
        let line = serde_json::json!({
            "bench": "slurm-dispatch",
            "jobs": cli.jobs,
            "concurrency": par,
            "curl_jobs_per_s": curl_rate,
            "curl_failed": curl_failed,
            "haiyun_jobs_per_s": ours_rate,
            "haiyun_failed": ours_failed,
            "haiyun_over_curl": ours_rate / curl_rate,
        });
        println!("{line}");
        std::thread::sleep(Duration::from_secs(2));
    }
    ExitCode::SUCCESS
}
