//! The agent's run mode: a sampling round every interval, and a local `/metrics` (DCGM names) and `/healthz`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;

use std::sync::atomic::Ordering;

use crate::health::Health;
use crate::link::{LinkConfig, LinkStats};
use crate::probe::GpuProbe;
use crate::sampler::Sampler;

/// Why the agent could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("failed to listen on {addr}: {source} (choose another with --metrics-addr)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// What the endpoints show: the last exposition and health.
#[derive(Debug, Default)]
struct Latest {
    metrics: String,
    health: BTreeMap<u32, Health>,
}

/// The agent's own figures, after the DCGM ones.
fn render_own(out: &mut String, link: Option<&LinkStats>, field_errors: &BTreeMap<&'static str, u64>) {
    use std::fmt::Write;
    let _ =
        writeln!(out, "# HELP haiyun_agent_field_errors_total Probe reads that failed or are not supported.");
    let _ = writeln!(out, "# TYPE haiyun_agent_field_errors_total counter");
    for (field, n) in field_errors {
        let _ = writeln!(out, "haiyun_agent_field_errors_total{{field=\"{field}\"}} {n}");
    }
    let Some(l) = link else { return };
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    for (name, kind, help, v) in [
        (
            "haiyun_agent_link_up",
            "gauge",
            "Whether the stream to the operator is open.",
            u64::from(l.up.load(Ordering::Relaxed)),
        ),
        (
            "haiyun_agent_buffered_samples",
            "gauge",
            "Samples not yet acknowledged by the operator.",
            load(&l.buffered),
        ),
        (
            "haiyun_agent_dropped_samples_total",
            "counter",
            "Samples dropped because the buffer was full.",
            load(&l.dropped),
        ),
        ("haiyun_agent_connects_total", "counter", "Streams opened to the operator.", load(&l.connects)),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
}

/// How the agent runs.
#[derive(Debug)]
pub struct Options {
    /// The node.
    pub node: String,
    /// Time between rounds.
    pub interval: Duration,
    /// Where `/metrics` and `/healthz` are served.
    pub addr: SocketAddr,
    /// The link to the operator, if any.
    pub link: Option<LinkConfig>,
    /// The kubelet's PodResources socket, to label GPUs in use with their pods.
    pub pod_resources: Option<std::path::PathBuf>,
}

/// Samples `probe` every `interval`, streams the rounds to the operator when a link is configured, and serves
/// `/metrics` on `addr` until the process ends; returns the bound address once listening.
pub async fn run(
    probe: Box<dyn GpuProbe>,
    opts: Options,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ServeError> {
    let latest = Arc::new(Mutex::new(Latest::default()));
    let keep = latest.clone();
    let stats = Arc::new(LinkStats::default());
    let (rounds, rx) = tokio::sync::mpsc::channel(64);
    let linked = opts.link.is_some();
    let link_stats = linked.then(|| stats.clone());
    if let Some(cfg) = opts.link {
        tokio::spawn(crate::link::run(cfg, rx, stats));
    }
    let (node, interval) = (opts.node, opts.interval);
    // Who holds which device, refreshed from the kubelet every few seconds (kept as the kubelet said it; each round
    // maps it onto that round's GPUs).
    let held = Arc::new(Mutex::new(crate::holders::pb::ListPodResourcesResponse::default()));
    if let Some(socket) = opts.pod_resources {
        let held = held.clone();
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                match crate::holders::list(&socket).await {
                    Ok(list) => {
                        *held.lock().unwrap_or_else(|p| p.into_inner()) = list;
                        warned = false;
                    }
                    Err(e) if !warned => {
                        eprintln!(
                            "warning: {e}; GPUs in use are exported without pod labels until it answers"
                        );
                        warned = true;
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
    }
    std::thread::spawn(move || {
        let mut sampler = Sampler::spawn(probe, interval, interval * 5);
        let mut last_xid: BTreeMap<u32, u32> = BTreeMap::new();
        loop {
            if linked && rounds.is_closed() {
                return; // the runtime that ran the link is gone
            }
            let round = sampler.read();
            for x in &round.xids {
                last_xid.insert(x.index, x.code);
            }
            let holders = {
                let list = held.lock().unwrap_or_else(|p| p.into_inner());
                crate::holders::by_gpu(&list, &round.inventory)
            };
            let mut text = crate::dcgm::render(
                &node,
                &round.inventory,
                &round.samples,
                &|i| last_xid.get(&i).copied(),
                &holders,
            );
            render_own(&mut text, link_stats.as_deref(), &round.field_errors);
            let health = round.health.clone();
            // A full channel means the link task is stuck; the round still reaches /metrics.
            let _ = rounds.try_send(round);
            let mut l = keep.lock().unwrap_or_else(|p| p.into_inner());
            l.metrics = text;
            l.health = health;
        }
    });
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(l): State<Arc<Mutex<Latest>>>| async move {
                l.lock().unwrap_or_else(|p| p.into_inner()).metrics.clone()
            }),
        )
        .route(
            "/healthz",
            get(|State(l): State<Arc<Mutex<Latest>>>| async move {
                let l = l.lock().unwrap_or_else(|p| p.into_inner());
                serde_json::to_string(&l.health).unwrap_or_default()
            }),
        )
        .with_state(latest);
    let addr = opts.addr;
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(|source| ServeError::Bind { addr, source })?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((local, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::fake::FakeProbe;

    async fn get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn the_running_agent_serves_dcgm_metrics_that_change_from_round_to_round() {
        let probe = Box::new(FakeProbe::profile("dgx-h100").unwrap());
        let opts = Options {
            node: "node-a".into(),
            interval: Duration::from_millis(50),
            addr: "127.0.0.1:0".parse().unwrap(),
            link: None,
            pod_resources: None,
        };
        let (addr, _task) = run(probe, opts).await.unwrap();
        let util = |text: &str| {
            text.lines().find(|l| l.starts_with("DCGM_FI_DEV_GPU_UTIL{gpu=\"0\"")).map(str::to_string)
        };
        let mut first = None;
        for _ in 0..100 {
            first = util(&get(addr, "/metrics").await);
            if first.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let first = first.expect("metrics within 2 s");
        let mut changed = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(60)).await;
            if util(&get(addr, "/metrics").await).as_ref() != Some(&first) {
                changed = true;
                break;
            }
        }
        assert!(changed, "utilisation moves between rounds");
        assert!(get(addr, "/healthz").await.contains(r#""0":{"state":"healthy"}"#));
    }
}
