//! `ComputePool`: a pool of compute of one kind, behind one backend, cleared for some data.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;
use crate::dataset::Classification;

/// What a pool is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// Supercomputing.
    Hpc,
    /// GPU / intelligent computing.
    #[default]
    Ai,
    /// General CPU compute.
    General,
    /// Edge sites.
    Edge,
}

/// Nodes of this cluster, chosen by labels.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesBackend {
    /// Labels a Node must carry to belong to the pool.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// An edge site's own pool, run by a site-local Haiyun: its GPUs are used only within the capacity leases a
    /// federation grants this cluster (Leases in namespace `haiyun-fence` labelled `haiyun.io/grant`); without a live
    /// grant it starts nothing new.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub granted: bool,
}

/// A slice of a remote (edge) cluster's GPUs granted to the site as a capacity lease: a site-local Haiyun places the
/// jobs submitted there within it, also while the link is cut; the federation places nothing on those GPUs.
#[derive(KubeSchema, Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Autonomy {
    /// The federation's queue the site's usage is charged to (its finished jobs' GPU-hours).
    #[x_kube(validation = Rule::new("self != ''").message("autonomy.queue must name the queue the site's usage is charged to"))]
    pub queue: String,
    /// GPUs granted to the site.
    #[x_kube(validation = Rule::new("self >= 1").message("autonomy.gpus must be at least 1"))]
    pub gpus: u32,
    /// Seconds the grant stays good at the site without a renewal, e.g. through a cut link (default 3600; 10 to
    /// 604800).
    #[x_kube(validation = Rule::new("self >= 10 && self <= 604800").message("autonomy.leaseSeconds must be between 10 and 604800"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<u32>,
}

impl Autonomy {
    /// How long the grant stays good without a renewal.
    pub fn seconds(&self) -> u32 {
        self.lease_seconds.unwrap_or(3600)
    }
}

/// Nodes of another Kubernetes cluster, reached with a kubeconfig kept in a Secret. Its pods are created there by
/// the operator; a cluster that stops answering takes nothing new and keeps what runs there (policy `hold`).
#[derive(KubeSchema, Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteKubernetesBackend {
    /// Secret in the operator's namespace whose key `kubeconfig` reaches the cluster. Its credentials must be inline
    /// (no exec plugin, auth provider or file reference) and verify TLS.
    #[x_kube(validation = Rule::new("self != ''").message("secretName must name the Secret holding the kubeconfig"))]
    pub secret_name: String,
    /// Labels a Node of that cluster must carry to belong to the pool.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// What becomes of its jobs when the cluster stops answering: `hold` (default) keeps them where they run until
    /// it answers again; `fenced` (for short jobs) places them elsewhere once the fence holder there
    /// (`haiyun-operator fence`) has surely deleted them.
    #[serde(default)]
    pub partition_policy: PartitionPolicy,
    /// With `fenced`: seconds without the operator's renewal of its fence Lease there after which the fence holder
    /// deletes the operator's pods (default 60).
    #[x_kube(validation = Rule::new("self >= 5 && self <= 3600").message("fenceSeconds must be between 5 and 3600"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_seconds: Option<u32>,
    /// A capacity lease for the site: GPUs its own Haiyun places on, cut off or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autonomy: Option<Autonomy>,
}

/// What becomes of a remote cluster's jobs while it does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PartitionPolicy {
    /// They keep their place: never evicted or placed again while the cluster is cut.
    #[default]
    Hold,
    /// They are placed elsewhere, as a new run, once the fence timeout, their pods' termination grace and a
    /// clock-skew margin have passed since the operator last renewed its fence Lease there.
    Fenced,
}

/// A Slurm cluster reached through slurmrestd.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlurmBackend {
    /// slurmrestd's URL.
    pub endpoint: String,
    /// The partition jobs go to.
    pub partition: String,
    /// Secret (in the operator's namespace) holding a JWT under key `token`, or the cluster's JWT signing key under
    /// `jwt_key` (the operator then mints short-lived tokens for `user`).
    pub token_secret: String,
    /// The Unix user jobs run as.
    pub user: String,
    /// Where jobs start and write their output (default `/tmp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
}

/// A pool of simulated nodes (demo and tests).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SimulatedBackend {
    /// Node groups.
    pub nodes: Vec<SimulatedNodes>,
}

/// Identical simulated nodes.
#[derive(KubeSchema, Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimulatedNodes {
    /// How many.
    #[x_kube(validation = Rule::new("self >= 1").message("count must be at least 1"))]
    pub count: u32,
    /// GPUs per node.
    #[serde(default)]
    pub gpus: u32,
    /// Their GPU model.
    #[serde(default)]
    pub gpu_model: String,
    /// CPU per node (quantity).
    pub cpu: String,
    /// Memory per node (quantity).
    pub memory: String,
}

/// Where a pool's work runs; exactly one is set.
#[derive(KubeSchema, Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.kubernetes), has(self.remoteKubernetes), has(self.slurm), has(self.simulated)].filter(x, x).size() == 1").message("set exactly one of backend.kubernetes, backend.remoteKubernetes, backend.slurm or backend.simulated"))]
pub struct Backend {
    /// Nodes of this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesBackend>,
    /// Nodes of another Kubernetes cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_kubernetes: Option<RemoteKubernetesBackend>,
    /// A Slurm cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<SlurmBackend>,
    /// Simulated nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulated: Option<SimulatedBackend>,
}

impl Backend {
    /// `kubernetes`, `remoteKubernetes`, `slurm` or `simulated`.
    pub fn name(&self) -> &'static str {
        if self.kubernetes.is_some() {
            "kubernetes"
        } else if self.remote_kubernetes.is_some() {
            "remoteKubernetes"
        } else if self.slurm.is_some() {
            "slurm"
        } else {
            "simulated"
        }
    }
}

/// What a pool costs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cost {
    /// Per GPU-hour by GPU model.
    #[serde(default)]
    pub gpu_hour: BTreeMap<String, f64>,
    /// Per core-hour.
    #[serde(default)]
    pub core_hour: f64,
}

/// A pool of compute.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "haiyun.io",
    version = "v1alpha1",
    kind = "ComputePool",
    shortname = "pool",
    status = "ComputePoolStatus",
    doc = "A pool of compute of one kind (hpc, ai, general, edge) behind one backend, cleared for some data.",
    printcolumn(name = "Kind", type_ = "string", json_path = ".spec.kind"),
    printcolumn(name = "Site", type_ = "string", json_path = ".spec.site"),
    printcolumn(name = "Clearance", type_ = "string", json_path = ".spec.clearance"),
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".status.nodes"),
    printcolumn(name = "GPUs", type_ = "integer", json_path = ".status.gpus"),
    printcolumn(name = "Allocated", type_ = "integer", json_path = ".status.allocatedGpus")
)]
#[serde(rename_all = "camelCase")]
pub struct ComputePoolSpec {
    /// What the pool is for.
    pub kind: PoolKind,
    /// Where its work runs.
    pub backend: Backend,
    /// Site (data centre, edge location).
    #[serde(default)]
    pub site: String,
    /// Region.
    #[serde(default)]
    pub region: String,
    /// The most sensitive data it may hold.
    #[serde(default)]
    pub clearance: Classification,
    /// What it costs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Cost>,
}

/// GPUs of one model in a pool.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuCount {
    /// The model.
    pub model: String,
    /// All of them.
    pub total: u32,
    /// Those that may take work.
    pub healthy: u32,
    /// Whole-GPU equivalents in use.
    pub allocated: f64,
}

/// What a pool has and what is in use.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputePoolStatus {
    /// Nodes in the pool.
    #[serde(default)]
    pub nodes: u32,
    /// GPUs in the pool.
    #[serde(default)]
    pub gpus: u32,
    /// Whole-GPU equivalents allocated.
    #[serde(default)]
    pub allocated_gpus: u32,
    /// By GPU model.
    #[serde(default)]
    pub by_model: Vec<GpuCount>,
    /// Conditions (`Ready`).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// When its backend first stopped answering (RFC 3339), while it still does not answer: the start of a cut link,
    /// kept across operator restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_since: Option<String>,
    /// With `autonomy`: the capacity lease granted to the site, as last written there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_lease: Option<CapacityLease>,
}

/// A capacity lease as granted to a site.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapacityLease {
    /// The queue its usage is charged to.
    pub queue: String,
    /// GPUs granted (fewer than asked while the rest are busy).
    pub gpus: u32,
    /// Its epoch: grows each time the grant changes.
    pub epoch: u32,
    /// GPUs granted per node of the site (the site's own node names).
    #[serde(default)]
    pub nodes: BTreeMap<String, u32>,
}
