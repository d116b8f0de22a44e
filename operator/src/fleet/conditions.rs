//! Node conditions from the fleet book: `HaiyunGPUHealthy` names each failed GPU and why, and
//! `HaiyunAgentReporting` turns False when the node's agent is silent past the grace period. Only changes are written.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::{Fleet, GpuState, NodeView};
use crate::time::{now, rfc3339};

/// The GPU health condition type.
pub const GPU_CONDITION: &str = "HaiyunGPUHealthy";
/// The agent liveness condition type.
pub const AGENT_CONDITION: &str = "HaiyunAgentReporting";

/// One condition as it should read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The type.
    pub kind: &'static str,
    /// True, False or Unknown.
    pub status: &'static str,
    /// CamelCase reason.
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

/// The two conditions of a node with this view.
pub fn wanted(v: &NodeView, grace: Duration) -> [Wanted; 2] {
    let bad: Vec<String> = v
        .gpus
        .iter()
        .filter(|(_, g)| g.state != GpuState::Healthy)
        .map(|(i, g)| {
            let what = if g.state == GpuState::Unhealthy { "unhealthy" } else { "unknown" };
            let uuid = if g.uuid.is_empty() { String::new() } else { format!(" ({})", g.uuid) };
            format!("GPU {i}{uuid} {what}: {}", g.reason)
        })
        .collect();
    let gpu = if v.stale {
        Wanted {
            kind: GPU_CONDITION,
            status: "Unknown",
            reason: "AgentSilent",
            message: "the node agent is silent; GPU health is unknown and no new work is placed here".into(),
        }
    } else if bad.is_empty() {
        Wanted {
            kind: GPU_CONDITION,
            status: "True",
            reason: "AllGPUsHealthy",
            message: format!("{} GPUs healthy", v.gpus.len()),
        }
    } else {
        Wanted { kind: GPU_CONDITION, status: "False", reason: "GPUUnhealthy", message: bad.join("; ") }
    };
    let agent = if v.stale {
        Wanted {
            kind: AGENT_CONDITION,
            status: "False",
            reason: "AgentSilent",
            message: format!(
                "no report for more than the {} s grace period; running work is left alone",
                grace.as_secs()
            ),
        }
    } else {
        Wanted {
            kind: AGENT_CONDITION,
            status: "True",
            reason: "AgentReporting",
            message: "the node agent reports".into(),
        }
    };
    [gpu, agent]
}

/// Writes the conditions of every node in `fleet` once a second, only where they changed: on this cluster's Nodes,
/// and on a remote pool's node (`<pool>/<node>`) in that pool's cluster.
pub async fn run(client: kube::Client, fleet: Arc<Fleet>, remotes: crate::backend::remote::Remotes) {
    let local: Api<Node> = Api::all(client);
    // node → (the conditions written, when each last changed status)
    let mut written: HashMap<String, ([Wanted; 2], [String; 2])> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (node, view) in fleet.view() {
            let want = wanted(&view, fleet.grace());
            let stamp = rfc3339(now());
            let since = match written.get(&node) {
                Some((old, _)) if *old == want => continue,
                Some((old, since)) => [0, 1]
                    .map(|i| if old[i].status == want[i].status { since[i].clone() } else { stamp.clone() }),
                None => [stamp.clone(), stamp.clone()],
            };
            let conditions: Vec<_> = want
                .iter()
                .zip(&since)
                .map(|(w, t)| {
                    json!({"type": w.kind, "status": w.status, "reason": w.reason, "message": w.message,
                           "lastHeartbeatTime": stamp, "lastTransitionTime": t})
                })
                .collect();
            let patch = json!({"status": {"conditions": conditions}});
            let (api, name) = match node.split_once('/') {
                Some((pool, name)) => match remotes.client(pool) {
                    Some(c) => (Api::all(c), name),
                    // Not linked (yet): written once it is.
                    None => continue,
                },
                None => (local.clone(), node.as_str()),
            };
            match api.patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
                Ok(_) => {
                    written.insert(node, (want, since));
                }
                // An agent outside the cluster (token-file auth) has no Node object to write to.
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    written.insert(node, (want, since));
                }
                Err(e) => {
                    tracing::warn!(%node, error = %e, "failed to write the node's GPU conditions; retrying")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::GpuView;

    #[test]
    fn the_conditions_name_the_failed_gpu_and_a_silent_agent() {
        let gpu = |state, reason: &str| GpuView {
            state,
            reason: reason.into(),
            uuid: "GPU-x".into(),
            utilization: None,
            nvlink_peers: Vec::new(),
            energy_mj: None,
            power_mw: None,
        };
        let mut v = NodeView {
            stale: false,
            silent_seconds: 0.0,
            gpus: [(0, gpu(GpuState::Healthy, "")), (3, gpu(GpuState::Unhealthy, "XID 79"))].into(),
            last_gap_seconds: 0.0,
            lost: 0,
            replayed: 0,
        };
        let [g, a] = wanted(&v, Duration::from_secs(90));
        assert_eq!((g.status, g.reason), ("False", "GPUUnhealthy"));
        assert_eq!(g.message, "GPU 3 (GPU-x) unhealthy: XID 79");
        assert_eq!(a.status, "True");
        v.stale = true;
        let [g, a] = wanted(&v, Duration::from_secs(90));
        assert_eq!((g.status, a.status, a.reason), ("Unknown", "False", "AgentSilent"));
        assert!(a.message.contains("90 s"));
    }
}
