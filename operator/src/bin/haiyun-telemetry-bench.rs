//! `haiyun-telemetry-bench`: what telemetry costs. `agent` runs the real agent binary (the `dgx-h100` fake at
//! 1 sample/s, streaming to a telemetry server in this process) and prints its CPU share and peak RSS; `ingest`
//! runs the telemetry server in a child process and drives it with thousands of simulated agents at 1 sample/s,
//! printing the server's CPU share, peak RSS and the samples acknowledged. Both print JSON.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use haiyun_api::agent as pb;
use haiyun_api::agent::telemetry_client::TelemetryClient;
use haiyun_operator::fleet::auth::Authenticator;
use haiyun_operator::fleet::{Fleet, server};
use pb::agent_message::Body;

#[derive(Debug, Parser)]
#[command(name = "haiyun-telemetry-bench", about = "What node telemetry costs the agent and the operator")]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Runs the agent binary for `--seconds` and measures it.
    Agent {
        /// The agent binary (build it with `cargo build --release -p haiyun-agent`).
        #[arg(long, default_value = "target/release/haiyun-agent")]
        agent: PathBuf,
        /// How long to measure.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Drives a telemetry server in a child process with simulated agents.
    Ingest {
        /// Simulated agents (one connection each).
        #[arg(long, default_value_t = 5000)]
        agents: usize,
        /// How long to measure, after every agent has connected.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// The child of `ingest`: serves telemetry for `--agents` nodes on `--port` until killed.
    Serve {
        /// Nodes `node-0` … with tokens `token-<i>`.
        #[arg(long)]
        agents: usize,
        /// Port on 127.0.0.1.
        #[arg(long)]
        port: u16,
    },
}

/// CPU seconds (user + system) and peak RSS in KiB of a process, from /proc.
fn usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some((ticks as f64 / 100.0, hwm))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = match cli.what {
        What::Agent { agent, seconds } => rt.block_on(agent_bench(agent, seconds)),
        What::Ingest { agents, seconds } => rt.block_on(ingest(agents, seconds)),
        What::Serve { agents, port } => rt.block_on(serve(agents, port)),
    };
    match out {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn tokens(agents: usize) -> HashMap<String, String> {
    (0..agents).map(|i| (format!("node-{i}"), format!("token-{i}"))).collect()
}

async fn start_server(agents: usize, port: u16) -> Result<(Arc<Fleet>, std::net::SocketAddr), String> {
    let fleet = Arc::new(Fleet::new(Duration::from_secs(90), Arc::new(tokio::sync::Notify::new())));
    let service = server::Service::new(fleet.clone(), Authenticator::Tokens(tokens(agents)));
    let addr = server::serve(([127, 0, 0, 1], port).into(), service).await.map_err(|e| e.to_string())?;
    Ok((fleet, addr))
}

async fn agent_bench(agent: PathBuf, seconds: u64) -> Result<(), String> {
    if !agent.exists() {
        return Err(format!("no agent at {}: run cargo build --release -p haiyun-agent", agent.display()));
    }
    let (fleet, addr) = start_server(1, 0).await?;
    let token = std::env::temp_dir().join(format!("haiyun-bench-token-{}", std::process::id()));
    std::fs::write(&token, "token-0").map_err(|e| e.to_string())?;
    let mut child = Command::new(&agent)
        .args(["--probe", "fake:dgx-h100", "--interval", "1s", "--node", "node-0"])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--operator", &format!("http://{addr}")])
        .arg("--token-file")
        .arg(&token)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("failed to start {}: {e}", agent.display()))?;
    let pid = child.id();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (cpu, rss_kib) = usage(pid).ok_or("the agent exited early")?;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&token);
    let text = fleet.render();
    let samples = text
        .lines()
        .find(|l| l.starts_with("haiyun_agent_samples_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let json = serde_json::json!({
        "bench": "agent",
        "profile": "dgx-h100",
        "interval_s": 1,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "cpu_share_of_one_core": cpu / seconds as f64,
        "peak_rss_mib": rss_kib as f64 / 1024.0,
        "samples_received_by_operator": samples,
        "target": {"cpu_share_of_one_core": 0.01, "peak_rss_mib": 30},
    });
    println!("{json}");
    Ok(())
}

async fn serve(agents: usize, port: u16) -> Result<(), String> {
    let (_fleet, _addr) = start_server(agents, port).await?;
    std::future::pending::<()>().await;
    Ok(())
}

fn sample(seq: u64) -> pb::AgentMessage {
    let gpus = (0..8)
        .map(|i| {
            let mut r = pb::Reading {
                index: i,
                memory_used_bytes: Some(40 << 30),
                utilization_gpu_pct: Some(60),
                temperature_c: Some(55),
                power_mw: Some(450_000),
                sm_clock_mhz: Some(1_500),
                ecc_double_bit: Some(0),
                remap_failed: Some(false),
                throttle_reasons: Some(0),
                ..Default::default()
            };
            r.set_health(pb::HealthState::Healthy);
            r
        })
        .collect();
    let taken = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    pb::AgentMessage {
        body: Some(Body::Sample(pb::Sample { seq, taken_unix_ms: taken, gpus, xids: Vec::new() })),
    }
}

/// One simulated agent: connects, says hello, then sends a sample a second and counts acknowledgements.
async fn simulate(
    i: usize,
    addr: String,
    acked: Arc<AtomicU64>,
    connected: Arc<AtomicU64>,
) -> Result<(), String> {
    let channel = tonic::transport::Endpoint::from_shared(addr)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let hello = pb::Hello { node: format!("node-{i}"), boot: 1, ..Default::default() };
    tx.send(pb::AgentMessage { body: Some(Body::Hello(hello)) }).await.map_err(|e| e.to_string())?;
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let token = format!("Bearer token-{i}").parse().map_err(|_| "bad token".to_string())?;
    req.metadata_mut().insert("authorization", token);
    let mut acks = TelemetryClient::new(channel).stream(req).await.map_err(|e| e.to_string())?.into_inner();
    connected.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        while let Ok(Some(_)) = acks.message().await {
            acked.fetch_add(1, Ordering::Relaxed);
        }
    });
    // Spread the agents over the second, as real ones are.
    tokio::time::sleep(Duration::from_millis((i as u64 * 7919) % 1000)).await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    for seq in 1.. {
        tick.tick().await;
        if tx.send(sample(seq)).await.is_err() {
            break;
        }
    }
    Ok(())
}

async fn ingest(agents: usize, seconds: u64) -> Result<(), String> {
    let port = free_port();
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(me)
        .args(["serve", "--agents", &agents.to_string(), "--port", &port.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let pid = child.id();
    let addr = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let acked = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    for i in 0..agents {
        let (a, c, addr) = (acked.clone(), connected.clone(), addr.clone());
        tokio::spawn(async move {
            if let Err(e) = simulate(i, addr, a, c).await {
                eprintln!("agent {i}: {e}");
            }
        });
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    while connected.load(Ordering::Relaxed) < agents as u64 && started.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await; // settle into the steady state
    let (cpu0, _) = usage(pid).ok_or("the server exited")?;
    let acked0 = acked.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let wall = t0.elapsed().as_secs_f64();
    let (cpu1, rss_kib) = usage(pid).ok_or("the server exited")?;
    let samples = acked.load(Ordering::Relaxed) - acked0;
    let _ = child.kill();
    let _ = child.wait();
    let json = serde_json::json!({
        "bench": "ingest",
        "agents": agents,
        "connected": connected.load(Ordering::Relaxed),
        "connect_all_s": connect_s,
        "seconds": wall,
        "samples_acknowledged": samples,
        "samples_per_s": samples as f64 / wall,
        "offered_per_s": agents,
        "server_cpu_share_of_one_core": (cpu1 - cpu0) / wall,
        "server_peak_rss_mib": rss_kib as f64 / 1024.0,
    });
    println!("{json}");
    Ok(())
}
