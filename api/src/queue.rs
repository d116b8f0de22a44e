//! `Queue`: quota per resource flavor, a cohort to borrow and lend within, fair-share weight, preemption policy.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;

/// Quota of one flavor.
#[derive(KubeSchema, Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlavorQuota {
    /// `cpu`, `memory` or `nvidia.com/gpu:<model>` (e.g. `nvidia.com/gpu:h100`).
    #[schemars(length(max = 100))]
    #[x_kube(validation = Rule::new("self == 'cpu' || self == 'memory' || (self.startsWith('nvidia.com/gpu:') && size(self) > 15)").message("flavor must be cpu, memory or nvidia.com/gpu:<model>, e.g. nvidia.com/gpu:h100"))]
    pub flavor: String,
    /// Nominal quota (quantity: "64", "500m", "1Ti").
    pub nominal: String,
    /// Most the queue may borrow above nominal (unset: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub borrowing_limit: Option<String>,
    /// Most of its nominal quota others may borrow (unset: all of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lending_limit: Option<String>,
}

/// A limit of one flavor.
#[derive(KubeSchema, Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlavorLimit {
    /// `cpu`, `memory` or `nvidia.com/gpu:<model>`.
    #[schemars(length(max = 100))]
    #[x_kube(validation = Rule::new("self == 'cpu' || self == 'memory' || (self.startsWith('nvidia.com/gpu:') && size(self) > 15)").message("flavor must be cpu, memory or nvidia.com/gpu:<model>, e.g. nvidia.com/gpu:h100"))]
    pub flavor: String,
    /// The most (quantity: "8", "500m", "1Ti"; more than 0).
    pub max: String,
}

/// How a queue orders its own jobs of equal priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Ordering {
    /// Oldest first.
    #[default]
    Fifo,
    /// Smallest GPU-time first, aged so none starves.
    ShortestFirst,
}

/// Which of its own queue's jobs a pending job may evict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WithinQueue {
    /// None.
    Never,
    /// Jobs of lower priority.
    #[default]
    LowerPriority,
    /// Lower priority, or equal priority well behind it in the queue's order.
    LowerOrLaterInOrder,
}

/// A queue of jobs with quota.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "haiyun.io",
    version = "v1alpha1",
    kind = "Queue",
    shortname = "hq",
    status = "QueueStatus",
    doc = "A queue: nominal quota per flavor, borrowing within a cohort, fair-share weight and preemption policy.",
    printcolumn(name = "Cohort", type_ = "string", json_path = ".spec.cohort"),
    printcolumn(name = "Pending", type_ = "integer", json_path = ".status.pending"),
    printcolumn(name = "Admitted", type_ = "integer", json_path = ".status.admitted")
)]
#[serde(rename_all = "camelCase")]
pub struct QueueSpec {
    /// Cohort it borrows from and lends to (unset: none). Cohorts nest as a path: `research/vision` is the cohort
    /// `vision` inside `research`. Quota is lent across the whole tree under the root (`research`); the tree shapes
    /// fair share (at each level the subtree with the least usage per weight goes first) and reclaim (lent quota
    /// comes back from the farthest branch first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.endsWith('/') && !self.contains('//')").message("cohort is a path of names separated by '/', e.g. research/vision: no empty name"))]
    pub cohort: Option<String>,
    /// Quota per flavor.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["flavor".into()]))]
    #[schemars(length(max = 64))]
    pub resources: Vec<FlavorQuota>,
    /// Most one user may hold in the queue at once, per flavor (who submitted the job, `spec.submittedBy`; a job
    /// without one counts as its namespace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["flavor".into()]))]
    #[schemars(length(max = 64))]
    pub user_limit: Vec<FlavorLimit>,
    /// Fair-share weight.
    #[serde(default = "one")]
    #[x_kube(validation = Rule::new("self > 0.0").message("weight must be greater than 0"))]
    pub weight: f64,
    /// Order of its own jobs.
    #[serde(default)]
    pub ordering: Ordering,
    /// Which of its own jobs a pending job may evict.
    #[serde(default)]
    pub within_queue: WithinQueue,
    /// Namespaces whose jobs may use it (empty: all).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Whether its `kind: inference` jobs may be preempted like any other (default false: serving is never evicted).
    #[serde(default)]
    pub preempt_inference: bool,
}

fn one() -> f64 {
    1.0
}

/// Usage of one flavor.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlavorUsage {
    /// The flavor.
    pub flavor: String,
    /// In use by admitted jobs (quantity).
    pub used: String,
    /// Quota now, grants included (quantity).
    pub quota: String,
    /// Of `used`, borrowed from the cohort (quantity).
    pub borrowed: String,
}

/// A queue's state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    /// Jobs waiting.
    #[serde(default)]
    pub pending: u32,
    /// Jobs admitted (running or binding).
    #[serde(default)]
    pub admitted: u32,
    /// Usage per flavor.
    #[serde(default)]
    pub usage: Vec<FlavorUsage>,
    /// GPU-hours of the queue's runs that ended, wherever they ran: with the usage ledger, every run it recorded
    /// (preempted and failed ones too, and jobs since deleted); without it, the finished jobs still in the cluster.
    #[serde(default)]
    pub gpu_hours: f64,
    /// Of those, the GPU-hours of jobs an edge site ran on its own within a capacity lease charged to this queue
    /// (recomputed from the site's jobs, never copied).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub site_gpu_hours: f64,
    /// Conditions (`Ready`).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}
