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
