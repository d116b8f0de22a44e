//! The node fence holder (`haiyun-operator node-fence`, one per node): it renews its node's fence Lease, and once it
//! has gone the fence timeout without a renewal (its node cut off from the API server, or the API server down) it
//! stops Haiyun's pods on the node through the container runtime. The operator, which sees the Lease lapse, may then
//! run their jobs elsewhere without two live runs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use haiyun_api::JOB_UID_LABEL;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use super::cri::{CriError, Runtime};
use super::fence::LABEL;

/// Field manager of the holder's writes.
const MANAGER: &str = "haiyun-node-fence";

/// Why a fence step failed.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The Lease could not be renewed.
    #[error("failed to renew node fence Lease {namespace}/{name}: {source}")]
    Renew {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The cause.
        source: kube::Error,
    },
    /// The Lease was not renewed in time.
    #[error("renewing node fence Lease {0} took longer than the renewal period")]
    Slow(String),
    /// The runtime could not stop what runs.
    #[error(transparent)]
    Cri(#[from] CriError),
}

/// How the node is fenced.
#[derive(Debug, Clone)]
pub struct FenceConfig {
    /// The node (its name in its own cluster).
    pub node: String,
    /// The namespace of its Lease.
    pub namespace: String,
    /// The fence timeout: without a renewal for this long, Haiyun's pods here are stopped.
    pub timeout: Duration,
    /// The container runtime's CRI socket.
    pub cri: PathBuf,
}

impl FenceConfig {
    /// The node's Lease name.
    pub fn lease(&self) -> String {
        format!("node-fence.{}", self.node)
    }

    /// How often the Lease is renewed: a fifth of the timeout, between 0.5 s and 10 s.
    pub fn period(&self) -> Duration {
        (self.timeout / 5).clamp(Duration::from_millis(500), Duration::from_secs(10))
    }
}

/// When the Lease was last renewed, on this process's monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Fence {
    timeout: Duration,
    /// When the last renewal that succeeded was sent (the API server took it no earlier).
    last: Instant,
    /// Whether the timeout passed since: our pods here are being stopped until the next renewal.
    pub fenced: bool,
}

impl Fence {
    /// A fence started at `now`: a holder that starts cut off counts the timeout from its own start.
    pub fn new(timeout: Duration, now: Instant) -> Fence {
        Fence { timeout, last: now, fenced: false }
    }

    /// A renewal sent at `sent` succeeded; returns whether that lifts a fence.
    pub fn renewed(&mut self, sent: Instant) -> bool {
        self.last = self.last.max(sent);
        std::mem::replace(&mut self.fenced, false)
    }

    /// Whether the timeout has passed at `now` since the last renewal; once it has, the node is fenced.
    pub fn due(&mut self, now: Instant) -> bool {
        if now.duration_since(self.last) >= self.timeout {
            self.fenced = true;
        }
        self.fenced
    }
}

/// Renews the node's Lease (server-side apply: made if missing).
async fn renew(leases: &Api<Lease>, cfg: &FenceConfig) -> Result<(), GuardError> {
    let name = cfg.lease();
    let now = k8s_openapi::jiff::Timestamp::now();
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": { "name": name, "labels": { LABEL: "true" } },
        "spec": {
            "holderIdentity": cfg.node,
            "leaseDurationSeconds": cfg.timeout.as_secs().max(1),
            "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(now),
        }
    });
    leases.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&lease)).await.map_err(
        |source| GuardError::Renew { namespace: cfg.namespace.clone(), name: name.clone(), source },
    )?;
    Ok(())
}

/// Stops every Haiyun job's pod on this node; returns the pods stopped.
async fn stop_ours(cri: &std::path::Path) -> Result<Vec<String>, GuardError> {
    let mut runtime = Runtime::connect(cri).await?;
    let mut stopped = Vec::new();
    for sandbox in runtime.sandboxes_with(JOB_UID_LABEL).await? {
        runtime.stop(&sandbox).await?;
        stopped.push(sandbox.pod);
    }
    Ok(stopped)
}

/// What a holder that stops does: it gives up its node's Lease, so the operator no longer counts on a fence here (a
/// Lease left to lapse would later pass for one). If it cannot (cut off, its Role gone), it stops our pods here
/// before it goes, so that the Lease lapsing stays true.
pub async fn release(client: Client, cfg: &FenceConfig) {
    let leases: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let (name, params) = (cfg.lease(), kube::api::DeleteParams::default());
    match tokio::time::timeout(Duration::from_secs(5), leases.delete(&name, &params)).await {
        Ok(r) if r.as_ref().err().is_none_or(|e| matches!(e, kube::Error::Api(s) if s.code == 404)) => {
            tracing::info!(lease = %cfg.lease(), "gave up the node fence Lease");
        }
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "no answer within 5 s".into(),
            };
            tracing::warn!(%why, "could not give up the node fence Lease: stopping Haiyun's pods here before stopping");
            match stop_ours(&cfg.cri).await {
                Ok(pods) => tracing::warn!(?pods, "stopped Haiyun's pods"),
                Err(e) => tracing::error!(error = %e, "Haiyun's pods here could not be stopped"),
            }
        }
    }
}

/// Renews the Lease every period and fences the node while it cannot; runs until the process stops.
pub async fn run(client: Client, cfg: FenceConfig) {
    let leases: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let period = cfg.period();
    let mut fence = Fence::new(cfg.timeout, Instant::now());
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    tracing::info!(
        lease = %format!("{}/{}", cfg.namespace, cfg.lease()),
        ?period,
        timeout = ?cfg.timeout,
        "renewing the node fence Lease; Haiyun's pods here stop after the timeout without a renewal"
    );
    loop {
        tick.tick().await;
        let sent = Instant::now();
        let result = match tokio::time::timeout(period, renew(&leases, &cfg)).await {
            Ok(r) => r,
            Err(_) => Err(GuardError::Slow(cfg.lease())),
        };
        match result {
            Ok(()) => {
                if fence.renewed(sent) {
                    tracing::info!("the node fence Lease is renewed again; the fence is lifted");
                }
                failing = false;
            }
            Err(e) if !failing => {
                tracing::warn!(error = %e, "node fence Lease not renewed");
                failing = true;
            }
            Err(_) => {}
        }
        let was = fence.fenced;
        if !fence.due(Instant::now()) {
            continue;
        }
        if !was {
            tracing::warn!(timeout = ?cfg.timeout, "no renewal within the fence timeout: stopping Haiyun's pods on this node until the next renewal");
        }
        match stop_ours(&cfg.cri).await {
            Ok(pods) if !pods.is_empty() => tracing::warn!(?pods, "node fenced: stopped Haiyun's pods"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "node fenced, but its pods could not be stopped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_is_fenced_once_the_timeout_passes_without_a_renewal_and_a_renewal_lifts_it() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut f = Fence::new(s(10), t0);
        assert!(!f.due(t0 + s(9)), "an agent that starts cut off waits a full timeout from its start");
        assert!(f.due(t0 + s(10)));
        assert!(f.due(t0 + s(11)), "it stays fenced");
        assert!(f.renewed(t0 + s(12)), "a renewal lifts the fence");
        assert!(!f.due(t0 + s(21)));
        // A renewal is timed from when it was sent: one sent before a later success does not move the clock back.
        assert!(!f.renewed(t0 + s(5)));
        assert!(f.due(t0 + s(22)));
    }

    #[test]
    fn the_lease_is_renewed_five_times_a_timeout_within_bounds() {
        let cfg = |secs| FenceConfig {
            node: "n1".into(),
            namespace: "haiyun-system".into(),
            timeout: Duration::from_secs(secs),
            cri: PathBuf::new(),
        };
        assert_eq!(cfg(30).period(), Duration::from_secs(6));
        assert_eq!(cfg(1).period(), Duration::from_millis(500));
        assert_eq!(cfg(600).period(), Duration::from_secs(10));
        assert_eq!(cfg(30).lease(), "node-fence.n1");
    }
}
