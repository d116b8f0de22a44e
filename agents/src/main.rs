//! `haiyun-agent`: reads a node's GPUs and reports them (`--once --json` prints one report and exits).

use std::process::ExitCode;

use clap::Parser;
use haiyun_agent::probe::GpuProbe;
use haiyun_agent::probe::fake::{FakeProbe, FaultFile, FileFaultProbe};

#[derive(Debug, Parser)]
#[command(name = "haiyun-agent", version, about = "Haiyun's node agent")]
struct Cli {
    /// The GPU probe: `fake:<profile>` (dgx-h100, dgx-a100, t4-edge, mixed).
    #[arg(long, default_value = "fake:dgx-h100")]
    probe: String,
    /// The node name reported (default: $NODE_NAME, else the host name).
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// Print one report and exit.
    #[arg(long)]
    once: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Seconds between samples (run mode).
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Where `/metrics` (DCGM names) and `/healthz` are served (run mode).
    #[arg(long, default_value = "0.0.0.0:9400")]
    metrics_addr: std::net::SocketAddr,
    /// A file of faults for the fake machine (`xid 3 79`, `ecc 1 2`, `remap 4`, `disappear 6`, `reset 6`).
    #[arg(long)]
    faults: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(profile) = cli.probe.strip_prefix("fake:") else {
        eprintln!(
            "error: unknown probe {:?}: use fake:<profile> (dgx-h100, dgx-a100, t4-edge, mixed)",
            cli.probe
        );
        return ExitCode::from(2);
    };
    let node = cli.node.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
    });
    if !cli.once {
        return run(cli.faults, profile, node, cli.interval, cli.metrics_addr);
    }
    let report = FakeProbe::profile(profile).and_then(|mut p| haiyun_agent::report::once(&node, &mut p));
    match report {
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
                    g.index,
                    g.name,
                    g.utilization_gpu_pct.unwrap_or(0),
                    g.temperature_c.unwrap_or(0),
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

/// Run mode: samples every interval and serves `/metrics` until interrupted.
fn run(
    faults: Option<std::path::PathBuf>,
    profile: &str,
    node: String,
    interval: f64,
    addr: std::net::SocketAddr,
) -> ExitCode {
    let probe = match FakeProbe::profile(profile) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let probe: Box<dyn GpuProbe> = match faults {
        Some(path) => Box::new(FileFaultProbe { probe, faults: FaultFile::new(path) }),
        None => Box::new(probe),
    };
    if !(interval.is_finite() && interval >= 0.01) {
        eprintln!("error: --interval must be at least 0.01 seconds");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match haiyun_agent::serve::run(node, probe, std::time::Duration::from_secs_f64(interval), addr).await
        {
            Ok((local, task)) => {
                eprintln!("serving /metrics and /healthz on {local}");
                let _ = task.await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
