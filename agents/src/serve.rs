//! The agent's run mode: a sampling round every interval, and a local `/metrics` (DCGM names) and `/healthz`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;

use crate::health::Health;
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

/// Samples `probe` every `interval` and serves `/metrics` on `addr` until the process ends; returns the bound address
/// once listening.
pub async fn run(
    node: String,
    probe: Box<dyn GpuProbe>,
    interval: Duration,
    addr: SocketAddr,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ServeError> {
    let latest = Arc::new(Mutex::new(Latest::default()));
    let keep = latest.clone();
    std::thread::spawn(move || {
        let mut sampler = Sampler::spawn(probe, interval, interval * 5);
        let mut last_xid: BTreeMap<u32, u32> = BTreeMap::new();
        loop {
            let round = sampler.read();
            for x in &round.xids {
                last_xid.insert(x.index, x.code);
            }
            let text =
                crate::dcgm::render(&node, &round.inventory, &round.samples, &|i| last_xid.get(&i).copied());
            let mut l = keep.lock().unwrap_or_else(|p| p.into_inner());
            l.metrics = text;
            l.health = round.health;
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
        let (addr, _task) =
            run("node-a".into(), probe, Duration::from_millis(50), "127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
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
