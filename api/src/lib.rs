//! Haiyun's API: the CRD types (group `haiyun.io`, version `v1alpha1`) and shared wire types.
// kube-derive's repeated `printcolumn(...)` arguments look like duplicated attributes to clippy.
#![allow(clippy::duplicated_attributes)]

#[cfg(feature = "grpc")]
pub mod agent;
pub mod condition;
pub mod crd;
#[cfg(feature = "grpc")]
pub mod cri;
pub mod dataset;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod job;
pub mod pool;
pub mod quantity;
pub mod queue;
pub mod quota;

pub use condition::Condition;
pub use dataset::{Classification, Dataset, DatasetSpec};
pub use job::{ComputeJob, ComputeJobSpec, ComputeJobStatus, JobPhase, PendingReason, TaskGroup};
pub use pool::{ComputePool, ComputePoolSpec, ComputePoolStatus, PoolKind};
pub use queue::{Queue, QueueSpec, QueueStatus};
pub use quota::{QuotaRequest, QuotaRequestSpec, QuotaRequestStatus};

/// The API group.
pub const GROUP: &str = "haiyun.io";
/// The scheduler name pods carry.
pub const SCHEDULER_NAME: &str = "haiyun";
/// Label on a job's pods naming the job (`<namespace>.<name>` does not fit a label; the job's uid does).
pub const JOB_UID_LABEL: &str = "haiyun.io/job-uid";
/// Label on a job's pods naming the job.
pub const JOB_NAME_LABEL: &str = "haiyun.io/job";
/// Label on a job's pod with its run (the job's preemption count when it was admitted).
pub const RUN_LABEL: &str = "haiyun.io/run";
/// Annotation on a pod listing the GPU indices it was given on its node.
pub const GPUS_ANNOTATION: &str = "haiyun.io/gpus";
/// Label on a plain pod (schedulerName haiyun, no ComputeJob) naming its Queue.
pub const QUEUE_LABEL: &str = "haiyun.io/queue";
/// Annotation on a plain pod with its run-time estimate (e.g. "2h").
pub const RUNTIME_ANNOTATION: &str = "haiyun.io/runtime-estimate";
/// Node label giving its GPU model.
pub const GPU_MODEL_LABEL: &str = "haiyun.io/gpu-model";
/// Annotation on a batch/v1 Job that Haiyun runs naming the datasets it reads, comma-separated (its ComputeJob's
/// `spec.datasets`: their clearance, access and storage checks apply as to any job).
pub const DATASETS_ANNOTATION: &str = "haiyun.io/datasets";
/// The user who created a batch/v1 Job that Haiyun runs (stamped by the chart's admission policy).
pub const SUBMITTER_ANNOTATION: &str = "haiyun.io/submitted-by";
