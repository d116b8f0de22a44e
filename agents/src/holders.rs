//! Who holds each GPU, from the kubelet's PodResources API (as the DCGM exporter reads it): the pod, namespace and
//! container of every device a device plugin or a DRA claim gave, mapped to the node's GPU indices, so per-GPU
//! metrics carry those labels.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tokio::net::UnixStream;

use crate::probe::GpuInfo;

/// The kubelet's PodResources API, v1.
pub mod pb {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    tonic::include_proto!("v1");
}

/// The extended resource NVIDIA's device plugin (and the kubelet's device manager) name GPUs by.
const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Haiyun's DRA driver: device `gpu-<slot>` or `mig-<slot>`.
const HAIYUN_DRIVER: &str = "gpu.haiyun.io";
/// NVIDIA's DRA driver: device `gpu-<index>` (or `gpu-<index>-mig-…`).
const NVIDIA_DRIVER: &str = "gpu.nvidia.com";

/// A container holding a GPU.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Holder {
    /// Its pod.
    pub pod: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The container.
    pub container: String,
}

/// Why the kubelet could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum HoldersError {
    /// The socket could not be reached.
    #[error("failed to reach the kubelet's PodResources socket {path}: {why}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        why: String,
    },
    /// The call failed.
    #[error("the kubelet's PodResources List failed: {0}")]
    List(#[from] tonic::Status),
}

/// Asks the kubelet at `socket` which pods hold which devices.
pub async fn list(socket: &Path) -> Result<pb::ListPodResourcesResponse, HoldersError> {
    let path = socket.to_path_buf();
    let err = |why: String| HoldersError::Connect { path: socket.to_path_buf(), why };
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let p = path.clone();
            async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(UnixStream::connect(p).await?)) }
        }))
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut client = pb::pod_resources_lister_client::PodResourcesListerClient::new(channel);
    Ok(client.list(pb::ListPodResourcesRequest {}).await?.into_inner())
}

/// The GPU index a device stands for, if it is one of this node's GPUs (or a MIG instance of one).
fn gpu_of(inventory: &[GpuInfo], driver: &str, device: &str) -> Option<u32> {
    match driver {
        HAIYUN_DRIVER => {
            let slot = crate::probe::slot::device_index(device)?;
            crate::probe::slot::slots(inventory).into_iter().find(|s| s.slot == slot).map(|s| s.parent)
        }
        NVIDIA_DRIVER => device.strip_prefix("gpu-")?.split('-').next()?.parse().ok(),
        _ => None,
    }
}

/// A device plugin's device id: a GPU's UUID (NVIDIA's plugin) or its index.
fn gpu_by_id(inventory: &[GpuInfo], id: &str) -> Option<u32> {
    inventory.iter().find(|g| g.uuid == id || g.mig.iter().any(|m| m.uuid == id)).map(|g| g.index).or_else(
        || {
            let i: u32 = id.parse().ok()?;
            inventory.iter().any(|g| g.index == i).then_some(i)
        },
    )
}

/// Each GPU's holders (several when it is shared), from a List answer.
pub fn by_gpu(list: &pb::ListPodResourcesResponse, inventory: &[GpuInfo]) -> BTreeMap<u32, Vec<Holder>> {
    let mut out: BTreeMap<u32, Vec<Holder>> = BTreeMap::new();
    for pod in &list.pod_resources {
        for c in &pod.containers {
            let holder =
                Holder { pod: pod.name.clone(), namespace: pod.namespace.clone(), container: c.name.clone() };
            let plugin = c
                .devices
                .iter()
                .filter(|d| d.resource_name == GPU_RESOURCE)
                .flat_map(|d| d.device_ids.iter().filter_map(|id| gpu_by_id(inventory, id)));
            let claims = c
                .dynamic_resources
                .iter()
                .flat_map(|r| &r.claim_resources)
                .filter_map(|r| gpu_of(inventory, &r.driver_name, &r.device_name));
            for gpu in plugin.chain(claims) {
                let list = out.entry(gpu).or_default();
                if !list.contains(&holder) {
                    list.push(holder.clone());
                }
            }
        }
    }
    for list in out.values_mut() {
        list.sort();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::GpuProbe;
    use crate::probe::fake::FakeProbe;

    fn container(
        name: &str,
        devices: Vec<pb::ContainerDevices>,
        claims: Vec<(&str, &str)>,
    ) -> pb::ContainerResources {
        let claim_resources = claims
            .into_iter()
            .map(|(driver, device)| pb::ClaimResource {
                driver_name: driver.into(),
                pool_name: "n1".into(),
                device_name: device.into(),
            })
            .collect();
        pb::ContainerResources {
            name: name.into(),
            devices,
            dynamic_resources: vec![pb::DynamicResource {
                claim_name: "c".into(),
                claim_namespace: "ml".into(),
                claim_resources,
            }],
        }
    }

    fn pod(name: &str, containers: Vec<pb::ContainerResources>) -> pb::PodResources {
        pb::PodResources { name: name.into(), namespace: "ml".into(), containers }
    }

    #[test]
    fn maps_plugin_devices_and_claims_to_gpus_and_a_shared_gpu_to_each_holder() {
        let inv = FakeProbe::profile("a100-mig").unwrap().inventory().unwrap();
        let list = pb::ListPodResourcesResponse {
            pod_resources: vec![
                pod("train-0", vec![container("main", Vec::new(), vec![(HAIYUN_DRIVER, "gpu-14")])]),
                // Two MIG instances of GPU 1 (slots 7 and 8) held by two pods.
                pod("infer-a", vec![container("srv", Vec::new(), vec![(HAIYUN_DRIVER, "mig-7")])]),
                pod("infer-b", vec![container("srv", Vec::new(), vec![(HAIYUN_DRIVER, "mig-8")])]),
                pod(
                    "legacy",
                    vec![container(
                        "c",
                        vec![pb::ContainerDevices {
                            resource_name: GPU_RESOURCE.into(),
                            device_ids: vec![inv[3].uuid.clone()],
                        }],
                        vec![("nic.example.com", "gpu-0")],
                    )],
                ),
            ],
        };
        let got = by_gpu(&list, &inv);
        let names = |i: u32| -> Vec<String> {
            got[&i].iter().map(|h| format!("{}/{}", h.pod, h.container)).collect()
        };
        assert_eq!(
            names(2),
            vec!["train-0/main"],
            "slot 14 is GPU 2, the first whole GPU after 14 instances"
        );
        assert_eq!(names(1), vec!["infer-a/srv", "infer-b/srv"]);
        assert_eq!(names(3), vec!["legacy/c"]);
        assert!(!got.contains_key(&0), "another driver's device is not a GPU");
    }

    #[test]
    fn nvidia_dra_devices_and_plain_indices_name_gpus_too() {
        let inv = FakeProbe::profile("dgx-h100").unwrap().inventory().unwrap();
        assert_eq!(gpu_of(&inv, NVIDIA_DRIVER, "gpu-5"), Some(5));
        assert_eq!(gpu_by_id(&inv, "6"), Some(6));
        assert_eq!(gpu_by_id(&inv, "42"), None);
    }

    /// A kubelet's socket answering List, and the client reads it.
    #[tokio::test]
    async fn lists_over_the_kubelets_socket() {
        use pb::pod_resources_lister_server::{PodResourcesLister, PodResourcesListerServer};
        struct Kubelet;
        #[tonic::async_trait]
        impl PodResourcesLister for Kubelet {
            async fn list(
                &self,
                _: tonic::Request<pb::ListPodResourcesRequest>,
            ) -> Result<tonic::Response<pb::ListPodResourcesResponse>, tonic::Status> {
                let p = pod("p", vec![container("c", Vec::new(), vec![(HAIYUN_DRIVER, "gpu-1")])]);
                Ok(tonic::Response::new(pb::ListPodResourcesResponse { pod_resources: vec![p] }))
            }
        }
        let dir = std::env::temp_dir().join(format!("haiyun-podres-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("kubelet.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PodResourcesListerServer::new(Kubelet))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
        let got = list(&sock).await.unwrap();
        assert_eq!(got.pod_resources[0].name, "p");
        assert!(matches!(list(&dir.join("none.sock")).await, Err(HoldersError::Connect { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
