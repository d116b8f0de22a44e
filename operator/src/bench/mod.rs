//! What the operator's benchmark programs share: their runtime, the CRDs they install, and waiting for the operator
//! they start to lead.

pub mod side;

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};

/// Runs a benchmark's body on a runtime: its error is printed and the process fails.
pub fn run<F, E>(body: F) -> ExitCode
where
    F: Future<Output = Result<(), E>>,
    E: Display,
{
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(body) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The GPU nodes a benchmark runs on: how many, their GPUs in all, and the model of the first.
#[derive(Debug, Clone)]
pub struct GpuNodes {
    /// Nodes with a GPU model label.
    pub count: usize,
    /// Their allocatable `nvidia.com/gpu`, summed.
    pub gpus: u64,
    /// The first node's GPU model; `None` when there are no GPU nodes.
    pub model: Option<String>,
}

/// Lists the GPU nodes once (testenv's kwok nodes carry the GPU model label and `nvidia.com/gpu`).
pub async fn gpu_nodes(client: &Client) -> Result<GpuNodes, kube::Error> {
    let list = Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels(haiyun_api::GPU_MODEL_LABEL))
        .await?;
    let model = list.items.first().and_then(|n| n.labels().get(haiyun_api::GPU_MODEL_LABEL).cloned());
    let gpus = list
        .items
        .iter()
        .filter_map(|n| n.status.as_ref()?.allocatable.as_ref()?.get("nvidia.com/gpu")?.0.parse::<u64>().ok())
        .sum();
    Ok(GpuNodes { count: list.items.len(), gpus, model })
}

/// Applies Haiyun's CRDs (server-side, as `manager`) and gives the API server two seconds to serve them.
pub async fn install_crds(client: &Client, manager: &str) -> Result<(), kube::Error> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in haiyun_api::crd::all() {
        crds.patch(&crd.name_any(), &PatchParams::apply(manager).force(), &Patch::Apply(&crd)).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

/// Waits until `identity` holds Lease `lease` in namespace `default`; `Err` with why after `limit`.
pub async fn wait_leading(
    client: &Client,
    lease: &str,
    identity: &str,
    limit: Duration,
) -> Result<(), String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let start = Instant::now();
    loop {
        let holder =
            leases.get_opt(lease).await.map_err(|e| e.to_string())?.and_then(|l| l.spec?.holder_identity);
        if holder.as_deref() == Some(identity) {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(format!("the operator did not take the lease within {} s", limit.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
