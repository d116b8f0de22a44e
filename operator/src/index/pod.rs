//! Plain pods that name Haiyun as their scheduler (no ComputeJob): each is a job of one task in the queue its
//! `haiyun.io/queue` label names. Binding is their only record: the Binding carries their GPUs as an annotation.

use haiyun_api::{GPUS_ANNOTATION, JOB_UID_LABEL, QUEUE_LABEL, RUNTIME_ANNOTATION, SCHEDULER_NAME, quantity};
use haiyun_scheduler::model::{Gang, Job, ModelSet, TaskSpec, Time, Work};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::cluster::pod_requests;
use super::job::{DEFAULT_RUNTIME_S, JobProblem, Refs};

/// Whether Haiyun schedules this pod as a job of its own.
pub fn is_plain(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()) == Some(SCHEDULER_NAME)
        && !pod.labels().contains_key(JOB_UID_LABEL)
        && pod.metadata.deletion_timestamp.is_none()
}

/// Where a plain pod stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodPlace {
    /// Not bound.
    Unbound,
    /// Bound to a node with these GPU indices.
    Bound(String, Vec<u32>),
    /// Done.
    Ended,
}

/// Where a pod stands.
pub fn place(pod: &Pod) -> PodPlace {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    if phase == "Succeeded" || phase == "Failed" {
        return PodPlace::Ended;
    }
    match pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
        None => PodPlace::Unbound,
        Some(node) => {
            let gpus = gpus_of(pod);
            PodPlace::Bound(node, gpus)
        }
    }
}

/// The GPU indices a pod holds, as Haiyun's binding annotated them (empty: none or unknown).
pub fn gpus_of(pod: &Pod) -> Vec<u32> {
    pod.annotations()
        .get(GPUS_ANNOTATION)
        .map(|s| s.split(',').filter_map(|g| g.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// `namespace/name` of a pod.
pub fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// The core's job for a plain pod.
pub fn core_job(pod: &Pod, refs: &Refs<'_>) -> Result<Job, JobProblem> {
    let Some(queue_name) = pod.labels().get(QUEUE_LABEL) else {
        return Err(JobProblem::Field {
            field: format!("metadata.labels[{QUEUE_LABEL}]"),
            message: "a pod scheduled by haiyun must name its Queue in this label".into(),
        });
    };
    let queue = match refs.queues.get(queue_name) {
        Some(q) => *q,
        None => {
            let detail = refs.invalid_queues.get(queue_name).map(|e| format!(" as a valid queue ({e})"));
            return Err(JobProblem::NoQueue {
                queue: queue_name.clone(),
                detail: detail.unwrap_or_default(),
            });
        }
    };
    let namespace = pod.namespace().unwrap_or_default();
    if refs.namespaces.get(queue_name).is_some_and(|a| !a.is_empty() && !a.contains(&namespace)) {
        return Err(JobProblem::Namespace { namespace, queue: queue_name.clone() });
    }
    let (cpu, mem, gpus) = pod_requests(pod);
    let task = TaskSpec { cpu_milli: cpu, memory_mib: mem, gpus, gpu_milli: 1000, models: ModelSet::ANY };
    let runtime = match pod.annotations().get(RUNTIME_ANNOTATION) {
        Some(r) => quantity::seconds(r).ok_or_else(|| JobProblem::Field {
            field: format!("metadata.annotations[{RUNTIME_ANNOTATION}]"),
            message: "write a duration such as 90m or 1h30m".into(),
        })? as f64,
        None => DEFAULT_RUNTIME_S,
    };
    Ok(Job {
        name: key(pod),
        queue,
        priority: pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0),
        submitted: created(pod),
        gang: Gang::single(task),
        work: Work::seconds(runtime.max(1.0)),
        datasets: Vec::new(),
        pools: Vec::new(),
        preemptible: true,
        checkpoint_s: None,
    })
}

/// When the pod was created, in unix seconds.
pub fn created(pod: &Pod) -> Time {
    pod.metadata.creation_timestamp.as_ref().map_or(0.0, |t| t.0.as_millisecond() as f64 / 1000.0)
}
