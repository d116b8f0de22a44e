//! The kubelet plugin: the registration service the kubelet finds in its plugins_registry directory, and the DRA
//! service that prepares a pod's claims (reads the allocation, refuses an over-commit, writes the CDI spec) before
//! its containers start and unprepares them after.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::Api;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use crate::ledger::{Ledger, PodRef, Prepared};
use crate::{DRIVER, Slot, allocation, cdi};

/// The kubelet's plugin registration protocol.
pub mod registration {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    tonic::include_proto!("pluginregistration");
}

/// The kubelet's DRA protocol, v1.
pub mod dra {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
}

use dra::dra_plugin_server::{DraPlugin, DraPluginServer};

/// The DRA service version served.
const SERVICE: &str = "v1.DRAPlugin";

/// Why the plugin could not start.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// A socket could not be made.
    #[error("failed to listen on {path}: {source}")]
    Listen {
        /// The socket.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The DRA server stopped.
    #[error("the kubelet plugin server stopped: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The registration server stopped.
    #[error(transparent)]
    Register(#[from] crate::registrar::RegistrarError),
}

/// What the DRA service works with.
pub struct Driver {
    /// This node (the pool name of its slice).
    pub node: String,
    /// The API server, to read claims.
    pub client: kube::Client,
    /// Where CDI specs go (the container runtime's CDI spec directory).
    pub cdi_dir: PathBuf,
    /// Where device nodes are looked for.
    pub dev_dir: PathBuf,
    /// The node's devices as last probed, by slot.
    pub gpus: Arc<Mutex<BTreeMap<u32, Slot>>>,
    /// Prepared claims.
    pub ledger: tokio::sync::Mutex<Ledger>,
    /// The MPS daemons of shared GPUs.
    pub mps: crate::mps::Mps,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("node", &self.node)
            .field("cdi_dir", &self.cdi_dir)
            .finish_non_exhaustive()
    }
}

impl Driver {
    async fn prepare(&self, claim: &dra::Claim) -> Result<Vec<dra::Device>, String> {
        let key = format!("{}/{}", claim.namespace, claim.name);
        let mut ledger = self.ledger.lock().await;
        let known = ledger.get(&claim.uid).cloned();
        let prepared = match known {
            Some(p) => p,
            None => {
                let api: Api<ResourceClaim> = Api::namespaced(self.client.clone(), &claim.namespace);
                let rc =
                    api.get(&claim.name).await.map_err(|e| format!("failed to read claim {key}: {e}"))?;
                let grants = allocation::grants(&rc, &claim.uid, &self.node).map_err(|e| e.to_string())?;
                let pods = rc
                    .status
                    .and_then(|s| s.reserved_for)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|r| r.resource == "pods")
                    .map(|r| PodRef { namespace: claim.namespace.clone(), name: r.name, uid: r.uid })
                    .collect();
                Prepared { claim: key.clone(), grants, pods }
            }
        };
        if ledger.admit(&claim.uid, prepared.clone()).is_err() {
            // The kubelet may prepare a new claim before it unprepares the claim of a pod already gone: a holder
            // whose pods all left the API server (which needs the kubelet to have stopped their containers) is
            // released now rather than left to block the GPU.
            for (uid, holder) in ledger.sharing(&claim.uid, &prepared.grants) {
                if self.gone(&holder).await {
                    eprintln!("haiyun-dra: released claim {} (its pods are gone)", holder.claim);
                    ledger.release(&uid).map_err(|e| e.to_string())?;
                }
            }
            ledger.admit(&claim.uid, prepared.clone()).map_err(|e| e.to_string())?;
        }
        // Admitted: its shared GPUs' MPS daemons start, and the container's edits are written. A claim that fails
        // here is forgotten, so the kubelet's retry starts over.
        let gpus = self.gpus.lock().map(|g| g.clone()).unwrap_or_default();
        if let Err(e) = self.write_spec(&claim.uid, &prepared, &gpus) {
            let _ = ledger.release(&claim.uid);
            return Err(e);
        }
        Ok(prepared
            .grants
            .iter()
            .enumerate()
            .map(|(i, g)| dra::Device {
                request_names: vec![g.request.clone()],
                pool_name: self.node.clone(),
                device_name: gpus
                    .get(&g.index)
                    .map_or_else(|| crate::device_name(g.index, false), Slot::name),
                // One CDI device carries the whole claim; naming it once keeps the runtime from applying it twice.
                cdi_device_ids: if i == 0 { vec![cdi::device_id(&claim.uid)] } else { Vec::new() },
                share_id: g.share_id.clone(),
            })
            .collect())
    }

    /// Starts the MPS daemons of a prepared claim's shared GPUs and writes its CDI spec.
    fn write_spec(&self, uid: &str, prepared: &Prepared, gpus: &BTreeMap<u32, Slot>) -> Result<(), String> {
        let mut pipes = BTreeMap::new();
        for g in prepared.grants.iter().filter(|g| g.cores < 100) {
            if let Some(slot) = gpus.get(&g.index).filter(|s| s.mig.is_none()) {
                if let Some(pipe) = self.mps.start(&slot.uuid).map_err(|e| e.to_string())? {
                    pipes.insert(g.index, pipe);
                }
            }
        }
        let spec =
            cdi::spec(uid, &prepared.grants, gpus, &self.dev_dir, &pipes).map_err(|e| e.to_string())?;
        cdi::write(&self.cdi_dir, uid, &spec).map_err(|e| e.to_string())
    }

    /// Whether every pod a prepared claim was reserved for has left the API server (a pod of the same name with
    /// another uid is a new pod).
    async fn gone(&self, holder: &Prepared) -> bool {
        if holder.pods.is_empty() {
            return false;
        }
        for p in &holder.pods {
            let api: Api<k8s_openapi::api::core::v1::Pod> =
                Api::namespaced(self.client.clone(), &p.namespace);
            match api.get_opt(&p.name).await {
                Ok(None) => {}
                Ok(Some(now)) if now.metadata.uid.as_deref() != Some(p.uid.as_str()) => {}
                _ => return false,
            }
        }
        true
    }

    async fn unprepare(&self, claim: &dra::Claim) -> Result<(), String> {
        cdi::remove(&self.cdi_dir, &claim.uid).map_err(|e| e.to_string())?;
        let mut ledger = self.ledger.lock().await;
        let held = ledger.get(&claim.uid).cloned();
        if ledger.release(&claim.uid).map_err(|e| e.to_string())? {
            eprintln!("haiyun-dra: unprepared claim {}/{}", claim.namespace, claim.name);
        }
        // A shared GPU whose last share went stops its MPS daemon.
        let gpus = self.gpus.lock().map(|g| g.clone()).unwrap_or_default();
        for g in held.iter().flat_map(|p| &p.grants).filter(|g| g.cores < 100) {
            let still = ledger.sharing(&claim.uid, std::slice::from_ref(g));
            if still.iter().all(|(_, p)| p.grants.iter().all(|o| o.index != g.index || o.cores == 100)) {
                if let Some(slot) = gpus.get(&g.index) {
                    self.mps.stop(&slot.uuid).map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Service(Arc<Driver>);

#[tonic::async_trait]
impl DraPlugin for Service {
    async fn node_prepare_resources(
        &self,
        req: Request<dra::NodePrepareResourcesRequest>,
    ) -> Result<Response<dra::NodePrepareResourcesResponse>, Status> {
        let mut claims = std::collections::HashMap::new();
        for c in req.into_inner().claims {
            let t0 = Instant::now();
            let r = self.0.prepare(&c).await;
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            let answer = match r {
                Ok(devices) => {
                    eprintln!(
                        "haiyun-dra: prepared claim {}/{} ({} GPUs) in {ms:.1} ms",
                        c.namespace,
                        c.name,
                        devices.len()
                    );
                    dra::NodePrepareResourceResponse { devices, error: String::new() }
                }
                Err(error) => {
                    eprintln!("haiyun-dra: refused claim {}/{}: {error}", c.namespace, c.name);
                    dra::NodePrepareResourceResponse { devices: Vec::new(), error }
                }
            };
            claims.insert(c.uid.clone(), answer);
        }
        Ok(Response::new(dra::NodePrepareResourcesResponse { claims }))
    }

    async fn node_unprepare_resources(
        &self,
        req: Request<dra::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<dra::NodeUnprepareResourcesResponse>, Status> {
        let mut claims = std::collections::HashMap::new();
        for c in req.into_inner().claims {
            let error = self.0.unprepare(&c).await.err().unwrap_or_default();
            claims.insert(c.uid.clone(), dra::NodeUnprepareResourceResponse { error });
        }
        Ok(Response::new(dra::NodeUnprepareResourcesResponse { claims }))
    }
}

fn listen(path: &Path) -> Result<tokio::net::UnixListener, PluginError> {
    let err = |source| PluginError::Listen { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    tokio::net::UnixListener::bind(path).map_err(err)
}

/// Serves the DRA service, then announces it to the kubelet whose root directory is `kubelet_dir`; runs until a
/// server stops.
pub async fn serve(driver: Arc<Driver>, kubelet_dir: &Path) -> Result<(), PluginError> {
    let endpoint = kubelet_dir.join("plugins").join(DRIVER).join("dra.sock");
    let dra = listen(&endpoint)?;
    let dra = tonic::transport::Server::builder()
        .add_service(DraPluginServer::new(Service(driver)))
        .serve_with_incoming(UnixListenerStream::new(dra));
    // The registration socket comes second: once the kubelet sees it, the service must answer.
    let reg = listen(&kubelet_dir.join("plugins_registry").join(format!("{DRIVER}-reg.sock")))?;
    let info = registration::PluginInfo {
        r#type: "DRAPlugin".into(),
        name: DRIVER.into(),
        endpoint: endpoint.to_string_lossy().into_owned(),
        supported_versions: vec![SERVICE.into()],
    };
    tokio::select! {
        r = dra => r?,
        r = crate::registrar::serve(reg, info) => r?,
    }
    Ok(())
}
