//! `Dataset`: data a job reads, its classification and the pools holding a replica.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How sensitive data is; a pool's clearance is the highest level it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    /// Anyone may see it.
    #[default]
    Public,
    /// Inside the organisation.
    Internal,
    /// Personal or commercially sensitive.
    Sensitive,
    /// The most protected holdings.
    Core,
}

/// A dataset that jobs read.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "haiyun.io",
    version = "v1alpha1",
    kind = "Dataset",
    shortname = "ds",
    doc = "Data that jobs read: its size, classification and the pools that hold a replica.",
    printcolumn(name = "Class", type_ = "string", json_path = ".spec.classification"),
    printcolumn(name = "Size", type_ = "string", json_path = ".spec.size"),
    printcolumn(name = "Owner", type_ = "string", json_path = ".spec.owner")
)]
#[serde(rename_all = "camelCase")]
pub struct DatasetSpec {
    /// Size as a quantity, e.g. "500Gi".
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(\\\\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$')").message("size must be a quantity such as 500Gi or 2T"))]
    #[schemars(length(max = 32))]
    pub size: String,
    /// How sensitive it is; jobs reading it run only in pools cleared for this level.
    pub classification: Classification,
    /// Names of the ComputePools that hold a replica (others pay the transfer time).
    #[serde(default)]
    pub replicas: Vec<String>,
    /// Who answers for it.
    #[serde(default)]
    pub owner: String,
    /// Who may read it (absent: every namespace and queue). A job that names it from elsewhere is refused at
    /// admission (the chart's ValidatingAdmissionPolicy) or, where that policy is not installed, held with a reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<DataAccess>,
    /// The storage that holds it. A job whose pods mount it (through any claim bound to it, or an inline NFS volume)
    /// without naming the dataset in `spec.datasets` is held with a reason: the volume's identity counts, never the
    /// claim's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<DataStorage>,
}

/// Where a dataset's bytes live: any of these identifies it.
#[derive(KubeSchema, Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataStorage {
    /// PersistentVolumes that hold it, by name.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub persistent_volumes: Vec<String>,
    /// CSI volumes that hold it: a PersistentVolume of this driver and volume handle, whatever its name.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub csi: Vec<CsiVolume>,
    /// NFS exports that hold it: a PersistentVolume or an inline volume of this server at this path or under it.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub nfs: Vec<NfsExport>,
}

/// A CSI volume's identity.
#[derive(KubeSchema, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CsiVolume {
    /// The CSI driver, e.g. `nfs.csi.k8s.io`.
    #[schemars(length(min = 1, max = 253))]
    pub driver: String,
    /// Its volume handle.
    #[schemars(length(min = 1, max = 1024))]
    pub volume_handle: String,
}

/// An NFS export.
#[derive(KubeSchema, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NfsExport {
    /// The server (host name or address).
    #[schemars(length(min = 1, max = 253))]
    pub server: String,
    /// The exported path; a volume of this path or any path under it holds the dataset.
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("path must be absolute, e.g. /exports/census"))]
    pub path: String,
}

/// The namespaces and queues whose jobs may read a dataset: a job may if its namespace or its queue is listed.
#[derive(KubeSchema, Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.namespaces) + size(self.queues) > 0").message("access must list at least one namespace or queue; remove access to let every job read the dataset"))]
pub struct DataAccess {
    /// Namespaces whose jobs may read it.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Queues whose jobs may read it.
    #[serde(default)]
    pub queues: Vec<String>,
}

impl DataAccess {
    /// Whether a job of `namespace` in `queue` may read the dataset.
    pub fn allows(&self, namespace: &str, queue: &str) -> bool {
        self.namespaces.iter().any(|n| n == namespace) || self.queues.iter().any(|q| q == queue)
    }
}
