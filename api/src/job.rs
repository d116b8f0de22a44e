//! `ComputeJob`: a gang of task groups in a queue, with data it reads, and the status that answers "why and when".

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;
use crate::pool::PoolKind;

/// What a job does, which decides where it may run and what may evict it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// Model training: any pool, preemptible unless `preemptible: false`.
    #[default]
    Training,
    /// Analytics: as training.
    Analytics,
    /// A supercomputing batch run: without `poolKinds`, only pools of kind hpc or pools that run batch scripts.
    HpcBatch,
    /// Serving: never preempted, whatever `preemptible` says, unless its queue sets `preemptInference`.
    Inference,
}

/// Where a gang's tasks must land relative to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// Anywhere.
    #[default]
    Any,
    /// One node.
    SameNode,
    /// One NVLink domain.
    NvlinkDomain,
    /// One rack.
    Rack,
    /// One pool.
    Pool,
}

/// A GPU model a task group accepts, with its relative throughput there.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuModelChoice {
    /// The model (as nodes label it, e.g. `h100`).
    pub model: String,
    /// Throughput relative to the job's runtime estimate (1 = as estimated, 2 = twice as fast).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<f64>,
}

/// Identical tasks.
#[derive(KubeSchema, Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.gpuFraction) || self.gpus == 1").message("gpuFraction shares one GPU: set gpus to 1, or drop gpuFraction to ask for whole GPUs").field_path(".gpuFraction"))]
pub struct TaskGroup {
    /// Name (pods are named `<job>-<group>-<index>`).
    #[schemars(length(min = 1, max = 30))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("name must be a DNS label (lower-case letters, digits and '-'), e.g. worker"))]
    pub name: String,
    /// How many.
    #[x_kube(validation = Rule::new("self >= 1").message("replicas must be at least 1"))]
    pub replicas: u32,
    /// CPU per task (quantity, e.g. "8" or "500m").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory per task (quantity, e.g. "64Gi").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Whole GPUs per task.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self <= 32").message("gpus must be at most 32 per task"))]
    pub gpus: u32,
    /// A share of one GPU (0 < f < 1), with `gpus: 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0 && self < 1.0").message("gpuFraction must be between 0 and 1, e.g. 0.5"))]
    pub gpu_fraction: Option<f64>,
    /// GPU models it accepts (empty: any).
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub gpu_models: Vec<GpuModelChoice>,
    /// Pod template for Kubernetes pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::crd::preserve_unknown")]
    pub template: Option<serde_json::Value>,
    /// Batch script for Slurm pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
}

/// A job of one or more task groups, placed all together.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "haiyun.io",
    version = "v1alpha1",
    kind = "ComputeJob",
    namespaced,
    shortname = "cjob",
    status = "ComputeJobStatus",
    doc = "A training, analytics, HPC or inference job: task groups placed all-or-nothing through a queue.",
    printcolumn(name = "Queue", type_ = "string", json_path = ".spec.queue"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Pool", type_ = "string", json_path = ".status.placement.pool"),
    printcolumn(name = "Est. start", type_ = "string", json_path = ".status.estimatedStart"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.pendingReasons[0].message",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS label that starts with a letter (lower-case letters, digits and '-'): it names the job's headless Service and its pods' subdomain"),
    validation = Rule::new("self.spec.taskGroups.all(g, size(self.metadata.name) + size(g.name) + size(string(g.replicas - 1)) <= 61)").message("metadata.name is too long: each pod's hostname <name>-<group>-<index> must fit in 63 characters; shorten the job's or the task group's name")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.submittedBy) == has(oldSelf.submittedBy)").message("submittedBy is stamped by the API server at creation (the chart's MutatingAdmissionPolicy): it cannot be added or removed later").field_path(".submittedBy"))]
#[x_kube(validation = Rule::new("!has(self.minAvailable)").message("minAvailable is not supported: Haiyun starts every task of a gang at once (elastic gangs are not built); remove spec.minAvailable").field_path(".minAvailable"))]
pub struct ComputeJobSpec {
    /// The Queue it is submitted to (immutable).
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("size(self) > 0").message("queue must name a Queue"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("queue is immutable; delete and re-create the job"))]
    pub queue: String,
    /// Higher goes first and may preempt lower in the same queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// What it does.
    #[serde(default)]
    pub kind: JobKind,
    /// Task groups (immutable; names unique).
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("taskGroups are immutable; delete and re-create the job"))]
    pub task_groups: Vec<TaskGroup>,
    /// Not supported, and refused by the API server: every task of a gang starts at once. Kept in the schema so a
    /// manifest that sets it gets that answer instead of having the field silently dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<u32>,
    /// Where the tasks must land relative to each other.
    #[serde(default)]
    pub topology: Topology,
    /// Pool kinds it may run in (empty: any).
    #[serde(default)]
    pub pool_kinds: Vec<PoolKind>,
    /// Sites it may run in (empty: any).
    #[serde(default)]
    pub sites: Vec<String>,
    /// Datasets (by name) it reads.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub datasets: Vec<String>,
    /// How long it runs at throughput 1 (e.g. "2h", "90m").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+[smhd])+$')").message("runtimeEstimate must be a duration such as 90m or 1h30m"))]
    #[schemars(length(max = 32))]
    pub runtime_estimate: Option<String>,
    /// Whether it may be preempted.
    #[serde(default = "yes")]
    pub preemptible: bool,
    /// Seconds between its checkpoints (work since the last one is lost on preemption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_seconds: Option<u32>,
    /// Key that makes submission idempotent across retries: a job whose key an older job of its namespace carries
    /// is a duplicate and does not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Times the whole gang is restarted after a task fails (exit code, OOMKilled), from its last checkpoint, with
    /// exponential backoff; then the job fails (default 3). Preemption does not count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self <= 100").message("maxRestarts must be at most 100"))]
    pub max_restarts: Option<u32>,
    /// The rendezvous port on the first task (`MASTER_PORT`; default 29500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("masterPort must be a port, 1 to 65535"))]
    pub master_port: Option<u32>,
    /// Seconds its pods stay on a node that stops answering (NotReady or unreachable) before Kubernetes evicts them;
    /// the gang then runs again elsewhere once they are confirmed gone (default 300, Kubernetes' own). Node loss does
    /// not count toward maxRestarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self <= 86400").message("nodeLossGraceSeconds must be at most 86400 (a day)"))]
    pub node_loss_grace_seconds: Option<u32>,
    /// The batch/v1 Job of this namespace whose pods this job is (set by Haiyun when it admits an Indexed Job through
    /// a queue): Haiyun unsuspends that Job once the gang is placed and binds the pods its Job controller makes to the
    /// placed nodes; the Job's own backoffLimit and podFailurePolicy apply, not maxRestarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("batchJob is immutable"))]
    pub batch_job: Option<String>,
    /// Who submitted it: stamped by the API server from the creating request's user (the chart's
    /// MutatingAdmissionPolicy, whatever the writer put there), carried into the usage ledger; it never changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("submittedBy is stamped at creation and cannot be changed"))]
    pub submitted_by: Option<String>,
}

impl ComputeJobSpec {
    /// The task group of the job's `index`-th task (groups' replicas in order) and the group's position.
    pub fn group_of_task(&self, index: usize) -> Option<(usize, &TaskGroup)> {
        let mut left = index;
        for (i, g) in self.task_groups.iter().enumerate() {
            if left < g.replicas as usize {
                return Some((i, g));
            }
            left -= g.replicas as usize;
        }
        None
    }
}

fn yes() -> bool {
    true
}

/// A job's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum JobPhase {
    /// Seen, not yet in a queue (e.g. its queue does not exist).
    #[default]
    Pending,
    /// Waiting in its queue.
    Queued,
    /// Placed; its pods are being bound.
    Admitted,
    /// All pods running.
    Running,
    /// All pods succeeded.
    Succeeded,
    /// A pod failed.
    Failed,
    /// Evicted; it waits to run again.
    Preempted,
}

/// One reason a job waits.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingReason {
    /// The phase that stopped it: queue, quota, fairness, placement, data-clearance, reservation, faster-later.
    pub phase: String,
    /// A sentence for people.
    pub message: String,
    /// For quota: the flavor that is short.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flavor: Option<String>,
    /// For quota: what the job needs of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needed: Option<String>,
    /// For quota: what is left of the queue's own quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left: Option<String>,
    /// For quota: what the cohort could lend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohort_can_lend: Option<String>,
}

/// One task's place.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskPlacement {
    /// The pod.
    pub pod: String,
    /// The node.
    pub node: String,
    /// GPU indices on the node.
    #[serde(default)]
    pub gpus: Vec<u32>,
    /// Thousandths of each GPU it holds (1000: whole).
    #[serde(default)]
    pub gpu_milli: u32,
    /// The UUIDs of those GPUs, where the node's agent reported them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_uuids: Vec<String>,
}

/// Where a job runs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// The pool.
    pub pool: String,
    /// The GPU model (empty: CPU only).
    #[serde(default)]
    pub gpu_model: String,
    /// Every task.
    pub tasks: Vec<TaskPlacement>,
}

/// GPU energy a job's runs used, as its nodes' agents count it (the DCGM exporter's
/// `DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobEnergy {
    /// Joules so far.
    pub joules: f64,
    /// The energy counter (millijoules) of each of its GPUs when last accounted, by `node/gpu`.
    #[serde(default)]
    pub counters: std::collections::BTreeMap<String, u64>,
    /// When last accounted (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accounted: Option<String>,
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// `Error` (an exit code), `OOMKilled`, `NodeLost`, or the container's or pod's reason.
    pub reason: String,
    /// The pod whose task failed.
    #[serde(default)]
    pub pod: String,
    /// Its container's exit code, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// What happened, in words.
    #[serde(default)]
    pub message: String,
    /// When (RFC 3339).
    #[serde(default)]
    pub time: String,
}

impl ComputeJob {
    /// Its current run: each preemption and each restart after a failure starts a new one (its pods carry it in
    /// `haiyun.io/run`, its Slurm job in its key).
    pub fn run(&self) -> u32 {
        self.status.as_ref().map_or(0, |s| s.preemptions + s.restarts)
    }
}

impl ComputeJobStatus {
    /// Sets the conditions `Admitted`, `Running` and `Finished` from the phase (transition times kept when a
    /// condition's status does not change).
    pub fn derive_conditions(&mut self, generation: i64, now: &str) {
        use crate::condition::{Condition, set};
        let waiting = self.pending_reasons.first();
        let (admitted, reason, message) = match self.phase {
            JobPhase::Admitted | JobPhase::Running | JobPhase::Succeeded | JobPhase::Failed => {
                (true, "Admitted".to_string(), String::new())
            }
            _ => (
                false,
                waiting.map_or("Waiting".into(), |r| camel(&r.phase)),
                waiting.map_or(String::new(), |r| r.message.clone()),
            ),
        };
        set(&mut self.conditions, Condition::new("Admitted", admitted, &reason, message, generation, now));
        let running = self.phase == JobPhase::Running;
        let why = if running { "PodsRunning" } else { "NotRunning" };
        set(&mut self.conditions, Condition::new("Running", running, why, "", generation, now));
        let finished = matches!(self.phase, JobPhase::Succeeded | JobPhase::Failed);
        let why = match self.phase {
            JobPhase::Succeeded => "Succeeded",
            JobPhase::Failed => "Failed",
            _ => "NotFinished",
        };
        set(&mut self.conditions, Condition::new("Finished", finished, why, "", generation, now));
    }
}

/// `data-clearance` → `DataClearance`.
fn camel(s: &str) -> String {
    s.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next().map_or(String::new(), |f| f.to_uppercase().chain(c).collect())
        })
        .collect()
}

/// What the operator knows of a job.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputeJobStatus {
    /// Phase.
    #[serde(default)]
    pub phase: JobPhase,
    /// Where it runs (set before its pods are bound, so binding resumes exactly after a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Why it waits.
    #[serde(default)]
    pub pending_reasons: Vec<PendingReason>,
    /// What would start it sooner.
    #[serde(default)]
    pub hints: Vec<String>,
    /// When it should start (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_start: Option<String>,
    /// When it was admitted (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When it ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// GPU-hours used so far.
    #[serde(default)]
    pub gpu_hours: f64,
    /// GPU energy its runs used, from its nodes' agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy: Option<JobEnergy>,
    /// Times preempted.
    #[serde(default)]
    pub preemptions: u32,
    /// Times the gang was restarted after a task failed.
    #[serde(default)]
    pub restarts: u32,
    /// Why its last run failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Failure>,
    /// Not before this time (RFC 3339) does it run again after a failure (exponential backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_after: Option<String>,
    /// The spec generation this status describes.
    #[serde(default)]
    pub observed_generation: i64,
    /// Conditions (`Admitted`, `Running`, `Finished`).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
