//! `haiyun-dra`: Haiyun's GPU driver on a node: publishes the node's GPUs as a ResourceSlice (health as device
//! taints) and serves the kubelet's DRA plugin API, giving each container exactly the GPUs Haiyun allocated.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use haiyun_agent::sampler::{Round, Sampler};
use haiyun_dra::ledger::Ledger;
use haiyun_dra::plugin::{Driver, serve};
use haiyun_dra::slice;
use k8s_openapi::api::core::v1::Node;
use kube::Api;

#[derive(Debug, Parser)]
#[command(name = "haiyun-dra", about = "Haiyun's GPU driver for Kubernetes (DRA kubelet plugin)")]
struct Cli {
    /// The GPU probe: `nvml` or `fake:<profile>` (dgx-h100, hgx-h100-2x4, a100-mig, dgx-a100, t4-edge, mixed).
    #[arg(long, default_value = "nvml")]
    probe: String,
    /// A file of faults for the fake machine (as the agent's `--faults`).
    #[arg(long)]
    faults: Option<PathBuf>,
    /// This node's name.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// The kubelet's root directory (its plugins and plugins_registry directories are under it).
    #[arg(long, default_value = "/var/lib/kubelet")]
    kubelet_dir: PathBuf,
    /// The container runtime's CDI spec directory.
    #[arg(long, default_value = "/var/run/cdi")]
    cdi_dir: PathBuf,
    /// Where device nodes are (`/dev`, or the host's /dev mounted elsewhere in a container).
    #[arg(long, default_value = "/dev")]
    dev_dir: PathBuf,
    /// Where the driver keeps the claims it prepared.
    #[arg(long, default_value = "/var/lib/haiyun-dra")]
    state_dir: PathBuf,
    /// How often the GPUs are probed (seconds).
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Print the CDI spec this node would give a claim of all its GPUs, and exit (checks the probe and device nodes).
    #[arg(long)]
    print_cdi: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let probe = match haiyun_agent::probe::open(&cli.probe, cli.faults.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let interval = Duration::from_secs_f64(cli.interval.clamp(0.05, 60.0));
    let mut sampler = Sampler::spawn(probe, interval, interval * 5 + Duration::from_secs(5));
    if cli.print_cdi {
        return print_cdi(&cli, sampler.read());
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli, sampler)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_cdi(cli: &Cli, round: Round) -> ExitCode {
    let gpus: BTreeMap<_, _> = haiyun_dra::slots(&round.inventory).into_iter().map(|s| (s.slot, s)).collect();
    let grants: Vec<_> = gpus
        .keys()
        .map(|i| haiyun_dra::allocation::Grant {
            request: "gpus".into(),
            index: *i,
            cores: 100,
            share_id: None,
        })
        .collect();
    match haiyun_dra::cdi::spec("all", &grants, &gpus, &cli.dev_dir, &BTreeMap::new()) {
        Ok(s) => {
            println!("{s:#}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, mut sampler: Sampler) -> Result<(), String> {
    let client =
        kube::Client::try_default().await.map_err(|e| format!("failed to reach the API server: {e}"))?;
    let node = Api::<Node>::all(client.clone())
        .get(&cli.node_name)
        .await
        .map_err(|e| format!("failed to read Node {}: {e} (is --node-name right?)", cli.node_name))?;
    let node_uid = node.metadata.uid.unwrap_or_default();
    std::fs::create_dir_all(&cli.state_dir)
        .map_err(|e| format!("failed to create {}: {e}", cli.state_dir.display()))?;
    let ledger = Ledger::open(cli.state_dir.join("prepared.json")).map_err(|e| e.to_string())?;
    let gpus = Arc::new(Mutex::new(BTreeMap::new()));
    let driver = Arc::new(Driver {
        node: cli.node_name.clone(),
        client: client.clone(),
        cdi_dir: cli.cdi_dir.clone(),
        dev_dir: cli.dev_dir.clone(),
        gpus: gpus.clone(),
        ledger: tokio::sync::Mutex::new(ledger),
        mps: haiyun_dra::mps::Mps::new(cli.state_dir.join("mps"), haiyun_dra::mps::find_control()),
    });
    // Rounds come from the sampler's blocking reads.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Round>(1);
    std::thread::spawn(move || while tx.blocking_send(sampler.read()).is_ok() {});
    let first = rx.recv().await.ok_or("the probe stopped")?;
    let mut inventory = first.inventory.clone();
    set(&gpus, &inventory);
    let mut last = None;
    publish(&client, &cli.node_name, &node_uid, &inventory, &first, &mut last).await;
    let mut server = {
        let dir = cli.kubelet_dir.clone();
        tokio::spawn(async move { serve(driver, &dir).await })
    };
    eprintln!(
        "haiyun-dra: {} GPUs on {}, serving the kubelet in {}",
        inventory.len(),
        cli.node_name,
        cli.kubelet_dir.display()
    );
    let stop = haiyun_agent::shutdown::requested();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => {
                // Prepared claims stay in the ledger and their CDI specs stay on disk: running containers keep their
                // GPUs, and the next start serves the kubelet from where this one left off.
                eprintln!("haiyun-dra: stopping (SIGTERM)");
                return Ok(());
            }
            r = &mut server => {
                return match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(format!("the plugin server panicked: {e}")),
                };
            }
            round = rx.recv() => {
                let round = round.ok_or("the probe stopped")?;
                // A round that could not read the inventory keeps the last one (its GPUs read as unknown).
                if !round.inventory.is_empty() {
                    inventory = round.inventory.clone();
                    set(&gpus, &inventory);
                }
                publish(&client, &cli.node_name, &node_uid, &inventory, &round, &mut last).await;
            }
        }
    }
}

fn set(gpus: &Mutex<BTreeMap<u32, haiyun_dra::Slot>>, inventory: &[haiyun_agent::probe::GpuInfo]) {
    if let Ok(mut g) = gpus.lock() {
        *g = haiyun_dra::slots(inventory).into_iter().map(|s| (s.slot, s)).collect();
    }
}

/// Publishes the slice when it changed, and at least every 30 s (it comes back if someone deleted it).
async fn publish(
    client: &kube::Client,
    node: &str,
    node_uid: &str,
    inventory: &[haiyun_agent::probe::GpuInfo],
    round: &Round,
    last: &mut Option<(k8s_openapi::api::resource::v1::ResourceSlice, Instant)>,
) {
    let s = match slice::build(node, node_uid, inventory, &round.health) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("haiyun-dra: {e}");
            return;
        }
    };
    if last.as_ref().is_some_and(|(l, at)| *l == s && at.elapsed() < Duration::from_secs(30)) {
        return;
    }
    match slice::publish(client, &s).await {
        Ok(()) => *last = Some((s, Instant::now())),
        Err(e) => eprintln!("haiyun-dra: {e}"),
    }
}
