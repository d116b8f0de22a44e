//! `haiyun-agent`: reads a node's GPUs and reports them (`--once --json` prints one report and exits).

use std::process::ExitCode;

use clap::Parser;
use haiyun_agent::probe::fake::FakeProbe;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !cli.once {
        eprintln!(
            "error: only --once is available yet; streaming to the operator comes with the telemetry service"
        );
        return ExitCode::from(2);
    }
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
