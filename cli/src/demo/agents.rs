//! The demo's node agents: the real agent (sampler, health, link) on a fake machine per GPU node, streaming over gRPC
//! on loopback to the operator's telemetry server. Utilisation follows what is allocated; edge sites reach the
//! server through relays that drop their links now and then; a GPU now and then raises XID 79 and is reset later.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haiyun_agent::link::LinkConfig;
use haiyun_agent::probe::fake::{FakeProbe, Fault};
use haiyun_agent::probe::{GpuInfo, GpuProbe, GpuSample, ProbeError, Xid};
use haiyun_api::ComputePool;
use haiyun_operator::backend::simulated::nodes as simulated;
use haiyun_operator::fleet::Fleet;
use haiyun_operator::fleet::auth::Authenticator;
use haiyun_operator::fleet::server::{Service, serve};

use crate::cluster::CliError;

/// What the demo tells the fake machines: allocated GPUs and faults to raise, by node.
#[derive(Debug, Default)]
pub struct Machines {
    /// Allocated share (0–1) of each GPU, by node.
    pub allocated: HashMap<String, Vec<f64>>,
    /// Faults waiting to be raised, by node.
    pub faults: HashMap<String, Vec<Fault>>,
}

/// Shared with every probe.
pub type SharedMachines = Arc<Mutex<Machines>>;

/// A fake machine whose load is what the scheduler placed on it.
struct DemoProbe {
    node: String,
    fake: FakeProbe,
    machines: SharedMachines,
}

impl DemoProbe {
    fn raise_faults(&mut self) {
        let faults = self.machines.lock().map(|mut m| m.faults.remove(&self.node)).ok().flatten();
        for f in faults.unwrap_or_default() {
            self.fake.inject(f);
        }
    }
}

impl GpuProbe for DemoProbe {
    fn inventory(&mut self) -> Result<Vec<GpuInfo>, ProbeError> {
        self.raise_faults();
        self.fake.inventory()
    }

    fn sample(&mut self) -> Result<Vec<GpuSample>, ProbeError> {
        let alloc = self.machines.lock().ok().and_then(|m| m.allocated.get(&self.node).cloned());
        let mut samples = self.fake.sample()?;
        for s in &mut samples {
            let share = alloc.as_ref().and_then(|a| a.get(s.index as usize)).copied().unwrap_or(0.0);
            // Busy GPUs run hot and vary; idle ones sit near zero.
            let wobble = s.utilization_gpu_pct.unwrap_or(50) % 20;
            let util = if share > 0.0 { (share * 78.0) as u32 + wobble } else { wobble / 8 };
            s.utilization_gpu_pct = Some(util.min(100));
        }
        Ok(samples)
    }

    fn xids(&mut self) -> Vec<Xid> {
        self.fake.xids()
    }

    fn resets(&mut self) -> Vec<u32> {
        self.fake.resets()
    }
}

/// The fake profile for a simulated node group, when one matches it.
fn profile(model: &str, gpus: u32) -> Option<&'static str> {
    match (model.to_lowercase().as_str(), gpus) {
        ("h100", 8) => Some("dgx-h100"),
        ("a100", 8) => Some("dgx-a100"),
        ("t4", 1) => Some("t4-edge"),
        _ => None,
    }
}

/// A relay that drops every connection while its link is down.
#[derive(Debug, Clone)]
pub struct Relay {
    /// Where agents connect.
    pub addr: SocketAddr,
    /// A datacentre's WAN link (annotation `haiyun.io/demo-link: wan`), else an edge site's link.
    pub wan: bool,
    down: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Relay {
    async fn start(target: SocketAddr, wan: bool) -> Result<Relay, CliError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| CliError::Start(format!("an edge relay on loopback: {e}")))?;
        let addr = listener.local_addr().map_err(|e| CliError::Start(e.to_string()))?;
        let relay = Relay { addr, wan, down: Arc::default(), conns: Arc::default() };
        let (down, conns) = (relay.down.clone(), relay.conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if down.load(Ordering::SeqCst) {
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                if let Ok(mut c) = conns.lock() {
                    c.retain(|h| !h.is_finished());
                    c.push(task.abort_handle());
                }
            }
        });
        Ok(relay)
    }

    /// Takes the link down (dropping every connection) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down && let Ok(mut c) = self.conns.lock() {
            for h in c.drain(..) {
                h.abort();
            }
        }
    }

    /// Whether the link is down.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }
}

/// The annotation that puts a datacentre pool of the demo behind a WAN link the demo cuts now and then.
pub const LINK_ANNOTATION: &str = "haiyun.io/demo-link";

/// The running telemetry server and agents.
#[derive(Debug)]
pub struct Agents {
    /// What the agents report.
    pub fleet: Arc<Fleet>,
    /// Loads and faults for the fake machines.
    pub machines: SharedMachines,
    /// Relays of edge sites and WAN-linked datacentres, by pool.
    pub relays: BTreeMap<String, Relay>,
    /// GPU nodes with an agent, and their GPU count.
    pub nodes: BTreeMap<String, u32>,
}

/// Starts the telemetry server on loopback and one agent per GPU node with a matching fake profile; edge pools'
/// agents go through a relay. Tokens are written under `dir`.
pub async fn start(pools: &[ComputePool], dir: &Path, grace: Duration) -> Result<Agents, CliError> {
    let fleet = Arc::new(Fleet::new(grace, Arc::new(tokio::sync::Notify::new())));
    let mut wanted = Vec::new();
    for p in pools {
        for (node, g) in simulated::nodes(p) {
            if let Some(profile) = profile(&g.gpu_model, g.gpus) {
                wanted.push((p, node, profile, g.gpus));
            }
        }
    }
    let tokens: HashMap<String, String> =
        wanted.iter().map(|(_, n, _, _)| (n.clone(), format!("demo-token-{n}"))).collect();
    let service = Service::new(fleet.clone(), Authenticator::Tokens(tokens.clone()));
    let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
    let at = serve(addr, service).await.map_err(|e| CliError::Start(e.to_string()))?;
    let machines = SharedMachines::default();
    let mut relays = BTreeMap::new();
    let mut nodes = BTreeMap::new();
    for (pool, node, profile, gpus) in wanted {
        let wan = pool
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LINK_ANNOTATION))
            .is_some_and(|v| v == "wan");
        let target = if pool.spec.kind == haiyun_api::PoolKind::Edge || wan {
            let name = pool.metadata.name.clone().unwrap_or_default();
            if !relays.contains_key(&name) {
                relays.insert(name.clone(), Relay::start(at, wan).await?);
            }
            relays[&name].addr
        } else {
            at
        };
        let token_file = dir.join(format!("{node}.token"));
        std::fs::write(&token_file, &tokens[&node])
            .map_err(|e| CliError::Start(format!("writing {}: {e}", token_file.display())))?;
        let fake = FakeProbe::profile(profile).map_err(|e| CliError::Start(e.to_string()))?;
        let probe = DemoProbe { node: node.clone(), fake, machines: machines.clone() };
        let link = LinkConfig {
            endpoint: format!("http://{target}"),
            node: node.clone(),
            token_file: Some(token_file),
            buffer: 600,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(5),
            quiet: true,
        };
        let opts = haiyun_agent::serve::Options {
            node: node.clone(),
            interval: Duration::from_secs(1),
            addr: ([127, 0, 0, 1], 0).into(),
            link: Some(link),
            pod_resources: None,
        };
        haiyun_agent::serve::run(Box::new(probe), opts)
            .await
            .map_err(|e| CliError::Start(format!("the agent of {node}: {e}")))?;
        nodes.insert(node, gpus);
    }
    Ok(Agents { fleet, machines, relays, nodes })
}
