//! `QuotaRequest`: a trainer asks a queue for more of a flavor for a time window.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;

/// An administrator's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Decision {
    /// Granted.
    Approved,
    /// Refused.
    Denied,
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum RequestState {
    /// Waiting for a decision.
    #[default]
    Pending,
    /// Approved; its window has not begun.
    Approved,
    /// Approved and inside its window: the quota is raised.
    Active,
    /// Refused.
    Denied,
    /// Its window ended.
    Expired,
}

/// A request for more quota.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "haiyun.io",
    version = "v1alpha1",
    kind = "QuotaRequest",
    namespaced,
    shortname = "qr",
    status = "QuotaRequestStatus",
    doc = "A request for N more of a flavor on a queue between two times; once approved it raises the quota inside its window and lapses by itself.",
    printcolumn(name = "Queue", type_ = "string", json_path = ".spec.queue"),
    printcolumn(name = "Flavor", type_ = "string", json_path = ".spec.flavor"),
    printcolumn(name = "Amount", type_ = "string", json_path = ".spec.amount"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "End", type_ = "string", json_path = ".spec.end")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("timestamp(self.end) > timestamp(self.start)").message("end must be after start").field_path(".end"))]
#[x_kube(validation = Rule::new("!has(oldSelf.decision) || (has(self.decision) && self.decision == oldSelf.decision)").message("decision cannot be changed once made; create a new request"))]
#[x_kube(validation = Rule::new("!has(self.decidedBy) || has(self.decision)").message("decidedBy is stamped by the API server when decision is set (the chart's MutatingAdmissionPolicy): do not set it").field_path(".decidedBy"))]
#[x_kube(validation = Rule::new("!has(oldSelf.decidedBy) || (has(self.decidedBy) && self.decidedBy == oldSelf.decidedBy)").message("decidedBy cannot be changed once stamped").field_path(".decidedBy"))]
pub struct QuotaRequestSpec {
    /// The queue.
    #[x_kube(validation = Rule::new("self == oldSelf").message("queue is immutable"))]
    #[schemars(length(max = 253))]
    pub queue: String,
    /// `cpu`, `memory` or `nvidia.com/gpu:<model>` (immutable).
    #[x_kube(validation = Rule::new("self == oldSelf").message("flavor is immutable; create a new request"))]
    #[x_kube(validation = Rule::new("self == 'cpu' || self == 'memory' || (self.startsWith('nvidia.com/gpu:') && size(self) > 15)").message("flavor must be cpu, memory or nvidia.com/gpu:<model>, e.g. nvidia.com/gpu:h100"))]
    #[schemars(length(max = 100))]
    pub flavor: String,
    /// How much (quantity, e.g. "8"; immutable).
    #[x_kube(validation = Rule::new("self == oldSelf").message("amount is immutable; create a new request"))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(\\\\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$') && !self.matches('^0+(\\\\.0+)?[a-zA-Z]*$')").message("amount must be a positive quantity such as 8 or 64Gi"))]
    #[schemars(length(max = 100))]
    pub amount: String,
    /// When the window opens (RFC 3339; immutable).
    #[x_kube(validation = Rule::new("self == oldSelf").message("start is immutable; create a new request"))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$')").message("start must be an RFC 3339 time such as 2026-11-26T09:00:00Z"))]
    #[schemars(length(max = 100))]
    pub start: String,
    /// When it closes (RFC 3339; immutable).
    #[x_kube(validation = Rule::new("self == oldSelf").message("end is immutable; create a new request"))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$')").message("end must be an RFC 3339 time such as 2026-11-26T17:00:00Z"))]
    #[schemars(length(max = 100))]
    pub end: String,
    /// Why it is needed.
    #[serde(default)]
    pub reason: String,
    /// An administrator's decision; only users allowed the verb `approve` on the queue may set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// Who set `decision`: the API server stamps the requesting user here (the chart's MutatingAdmissionPolicy),
    /// whatever the writer put; only with a decision, and never changed after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub decided_by: Option<String>,
}

/// Where a request stands.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaRequestStatus {
    /// State.
    #[serde(default)]
    pub state: RequestState,
    /// Who approved it: the user in `spec.decidedBy`, `administrator` when no policy stamped one, or `auto` when the
    /// cohort had the amount unlent.
    #[serde(default)]
    pub approved_by: String,
    /// Conditions (`Approved`, `Active`).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
