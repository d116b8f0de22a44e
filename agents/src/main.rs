//! `haiyun-agent`: reads a node's GPUs and reports them (`--once --json` prints one report and exits).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use haiyun_agent::link::LinkConfig;
use haiyun_agent::probe::GpuProbe;

#[derive(Debug, Parser)]
#[command(name = "haiyun-agent", version, about = "Haiyun's node agent")]
struct Cli {
    /// The GPU probe: `nvml` (this machine's NVIDIA GPUs) or `fake:<profile>` (dgx-h100, hgx-h100-2x4, a100-mig, dgx-a100, t4-edge, mixed).
    #[arg(long, default_value = "nvml")]
    probe: String,
    /// The node name reported (default: $NODE_NAME, else the host name).
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// In a remote cluster of the federation: the operator's pool for that cluster. The node then reports as
    /// `<pool>/<node>`, and its token is reviewed by that cluster's API server.
    #[arg(long, env = "HAIYUN_POOL")]
    pool: Option<String>,
    /// Print one report and exit.
    #[arg(long)]
    once: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Time between samples: `1s`, `500ms`, `2m`, or plain seconds (run mode).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    interval: Duration,
    /// Where `/metrics` (DCGM names) and `/healthz` are served (run mode).
    #[arg(long, default_value = "0.0.0.0:9400")]
    metrics_addr: std::net::SocketAddr,
    /// The operator's telemetry endpoint, e.g. `http://haiyun-telemetry.haiyun-system:9090` (run mode).
    #[arg(long, env = "HAIYUN_OPERATOR")]
    operator: Option<String>,
    /// A file with the bearer token that proves this node's identity (in a cluster: the projected token).
    #[arg(long, env = "HAIYUN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Samples kept while the operator is unreachable (at 1 s: 10 minutes).
    #[arg(long, default_value_t = 600)]
    buffer: usize,
    /// The kubelet's PodResources socket (e.g. /var/lib/kubelet/pod-resources/kubelet.sock): GPUs in use get the
    /// `pod`, `namespace` and `container` labels of their holders (run mode).
    #[arg(long)]
    pod_resources: Option<PathBuf>,
    /// A file of faults for the fake machine (`xid 3 79`, `ecc 1 2`, `remap 4`, `disappear 6`, `reset 6`).
    #[arg(long)]
    faults: Option<PathBuf>,
}

/// Parses `1s`, `250ms`, `2m` or a plain number of seconds; at least 10 ms.
fn parse_interval(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 =
        num.trim().parse().map_err(|_| format!("{s:?} is not a duration: write e.g. 1s or 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit in {s:?}: use ms, s or m")),
    };
    if !(secs.is_finite() && secs >= 0.01) {
        return Err(format!("{s:?} is too short: at least 10ms"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn probe(cli: &Cli) -> Result<Box<dyn GpuProbe>, String> {
    haiyun_agent::probe::open(&cli.probe, cli.faults.as_deref())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let node = cli.node.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
    });
    let node = match &cli.pool {
        Some(pool) => format!("{pool}/{node}"),
        None => node,
    };
    let mut probe = match probe(&cli) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if !cli.once {
        return run(cli, node, probe);
    }
    match haiyun_agent::report::once(&node, probe.as_mut()) {
        Ok(r) if cli.json => match serde_json::to_string_pretty(&r) {
            Ok(s) => {
                println!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: failed to write JSON: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(r) => {
            for g in &r.gpus {
                println!(
                    "{} {:>2} {:<28} {:>3}% {:>3} C  {:?}",
                    r.node,
                    g.info.index,
                    g.info.name,
                    g.sample.utilization_gpu_pct.unwrap_or(0),
                    g.sample.temperature_c.unwrap_or(0),
                    g.health
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Run mode: samples every interval, streams to the operator and serves `/metrics` until interrupted.
fn run(cli: Cli, node: String, probe: Box<dyn GpuProbe>) -> ExitCode {
    let link = cli.operator.map(|endpoint| LinkConfig {
        endpoint,
        node: node.clone(),
        token_file: cli.token_file,
        buffer: cli.buffer,
        backoff_base: Duration::from_millis(500),
        backoff_cap: Duration::from_secs(30),
        quiet: false,
    });
    // One worker thread is plenty: the agent's work is a round a second.
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = haiyun_agent::serve::Options {
        node,
        interval: cli.interval,
        addr: cli.metrics_addr,
        link,
        pod_resources: cli.pod_resources.clone(),
    };
    rt.block_on(async move {
        match haiyun_agent::serve::run(probe, opts).await {
            Ok((local, task)) => {
                eprintln!("serving /metrics and /healthz on {local}");
                tokio::select! {
                    _ = task => {}
                    () = haiyun_agent::shutdown::requested() => eprintln!("stopping (SIGTERM)"),
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_read_like_durations() {
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_interval("1ms").unwrap_err().contains("at least"));
        assert!(parse_interval("soon").is_err());
        assert!(parse_interval("3h").unwrap_err().contains("unit"));
    }
}
