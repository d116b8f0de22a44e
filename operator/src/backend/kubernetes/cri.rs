//! The container runtime, through the CRI socket the kubelet uses (containerd's or CRI-O's): which of Haiyun's pods
//! run on this node, and stopping them (each container with its pod's termination grace, then the sandbox).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixStream;

use haiyun_api::cri as pb;
use pb::runtime_service_client::RuntimeServiceClient;

/// The annotation the kubelet puts on each container with its pod's termination grace, in seconds.
const GRACE_ANNOTATION: &str = "io.kubernetes.pod.terminationGracePeriod";
/// The grace for a container whose annotation is missing (Kubernetes' default).
const DEFAULT_GRACE: i64 = 30;

/// Why the runtime could not be asked or told.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The socket could not be reached.
    #[error("failed to reach the container runtime's CRI socket {path}: {why}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        why: String,
    },
    /// A call failed.
    #[error("the container runtime refused {call} for {id}: {status}")]
    Call {
        /// The CRI call.
        call: &'static str,
        /// The sandbox or container.
        id: String,
        /// What it answered.
        status: tonic::Status,
    },
}

/// A pod sandbox of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// The runtime's id for it.
    pub id: String,
    /// `namespace/name` of its pod.
    pub pod: String,
    /// Its pod's labels.
    pub labels: BTreeMap<String, String>,
}

/// A connection to the runtime.
#[derive(Debug, Clone)]
pub struct Runtime {
    client: RuntimeServiceClient<tonic::transport::Channel>,
}

impl Runtime {
    /// Connects to the runtime at `socket`.
    pub async fn connect(socket: &Path) -> Result<Runtime, CriError> {
        let path = socket.to_path_buf();
        let channel =
            tonic::transport::Endpoint::from_static("http://localhost")
                .connect_timeout(Duration::from_secs(5))
                .connect_with_connector(tower::service_fn(move |_| {
                    let p = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(UnixStream::connect(p).await?))
                    }
                }))
                .await
                .map_err(|e| CriError::Connect { path: socket.to_path_buf(), why: e.to_string() })?;
        Ok(Runtime { client: RuntimeServiceClient::new(channel) })
    }

    /// The ready pod sandboxes whose pods carry label `key`.
    pub async fn sandboxes_with(&mut self, key: &str) -> Result<Vec<Sandbox>, CriError> {
        let filter = pb::PodSandboxFilter {
            state: Some(pb::PodSandboxStateValue { state: pb::PodSandboxState::SandboxReady as i32 }),
            ..Default::default()
        };
        let list =
            self.client.list_pod_sandbox(pb::ListPodSandboxRequest { filter: Some(filter) }).await.map_err(
                |status| CriError::Call { call: "ListPodSandbox", id: "this node".into(), status },
            )?;
        Ok(list
            .into_inner()
            .items
            .into_iter()
            .filter(|s| s.labels.contains_key(key))
            .map(|s| {
                let pod = s.metadata.map(|m| format!("{}/{}", m.namespace, m.name)).unwrap_or_default();
                Sandbox { id: s.id, pod, labels: s.labels.into_iter().collect() }
            })
            .collect())
    }

    /// Stops a sandbox: each running container with its pod's termination grace (all at once), then the sandbox.
    /// Returns how many containers were running.
    pub async fn stop(&mut self, sandbox: &Sandbox) -> Result<usize, CriError> {
        let filter = pb::ContainerFilter {
            state: Some(pb::ContainerStateValue { state: pb::ContainerState::ContainerRunning as i32 }),
            pod_sandbox_id: sandbox.id.clone(),
            ..Default::default()
        };
        let running = self
            .client
            .list_containers(pb::ListContainersRequest { filter: Some(filter) })
            .await
            .map_err(|status| CriError::Call { call: "ListContainers", id: sandbox.id.clone(), status })?
            .into_inner()
            .containers;
        let stops = running.iter().map(|c| {
            let mut client = self.client.clone();
            let timeout = grace(&c.annotations);
            let id = c.id.clone();
            async move {
                client
                    .stop_container(pb::StopContainerRequest { container_id: id.clone(), timeout })
                    .await
                    .map_err(|status| CriError::Call { call: "StopContainer", id, status })
            }
        });
        for r in futures::future::join_all(stops).await {
            r?;
        }
        self.client
            .stop_pod_sandbox(pb::StopPodSandboxRequest { pod_sandbox_id: sandbox.id.clone() })
            .await
            .map_err(|status| CriError::Call { call: "StopPodSandbox", id: sandbox.id.clone(), status })?;
        Ok(running.len())
    }
}

/// A container's termination grace in seconds, from the kubelet's annotation.
fn grace(annotations: &std::collections::HashMap<String, String>) -> i64 {
    annotations
        .get(GRACE_ANNOTATION)
        .and_then(|g| g.parse().ok())
        .filter(|g| *g >= 0)
        .unwrap_or(DEFAULT_GRACE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_containers_grace_is_its_pods_or_kubernetes_default() {
        let of = |v: &str| std::collections::HashMap::from([(GRACE_ANNOTATION.to_string(), v.to_string())]);
        assert_eq!(grace(&of("5")), 5);
        assert_eq!(grace(&of("0")), 0);
        assert_eq!(grace(&of("-1")), DEFAULT_GRACE);
        assert_eq!(grace(&of("soon")), DEFAULT_GRACE);
        assert_eq!(grace(&Default::default()), DEFAULT_GRACE);
    }
}
