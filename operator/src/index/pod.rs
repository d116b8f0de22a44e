//! Plain pods that name Haiyun as their scheduler (no ComputeJob): each is a job of one task in the queue its
//! `haiyun.io/queue` label names. Binding is their only record: the Binding carries their GPUs as an annotation.

use std::collections::HashMap;
use std::sync::Arc;

use haiyun_api::job::Failure;
use haiyun_api::{
    GPUS_ANNOTATION, JOB_UID_LABEL, QUEUE_LABEL, RUN_LABEL, RUNTIME_ANNOTATION, SCHEDULER_NAME, quantity,
};
use haiyun_scheduler::model::{Gang, Job, ModelSet, TaskSpec, Time, Work};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::cluster::{RunPhase, RunRecord};
use super::job::{DEFAULT_RUNTIME_S, JobProblem, Refs};

/// GPU resource name on nodes and pods.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// What a job's pods say (or, for a backend that records runs itself, what its record says in those terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PodCounts {
    /// Pods of the job.
    pub total: usize,
    /// Bound to a node.
    pub bound: usize,
    /// Running.
    pub running: usize,
    /// Succeeded.
    pub succeeded: usize,
    /// Failed.
    pub failed: usize,
}

impl PodCounts {
    /// A recorded run of `tasks` tasks, all waiting, running, succeeded or failed; no record: not submitted yet.
    pub fn of_run(record: Option<&RunRecord>, tasks: usize) -> Self {
        let Some(r) = record else { return PodCounts::default() };
        let all =
            |running, succeeded, failed| PodCounts { total: tasks, bound: tasks, running, succeeded, failed };
        match r.phase {
            RunPhase::Waiting => all(0, 0, 0),
            RunPhase::Holding => all(tasks, 0, 0),
            RunPhase::Succeeded => all(0, tasks, 0),
            RunPhase::Failed => all(0, 0, tasks.max(1)),
        }
    }
}

/// Each job's pods by phase, keyed by job uid and run.
pub type Counts = HashMap<(String, String), PodCounts>;

/// Each job's pods, keyed by job uid and run, in the order of the pod list.
pub type Runs = HashMap<(String, String), Vec<Arc<Pod>>>;

/// Groups the pods that carry a job uid and run by them, once per cycle, so that a job reads its own pods
/// instead of scanning every pod of the cluster.
pub fn pods_by_run(pods: &[Arc<Pod>]) -> Runs {
    let mut out: Runs = HashMap::new();
    for p in pods {
        let (Some(uid), Some(run)) = (p.labels().get(JOB_UID_LABEL), p.labels().get(RUN_LABEL)) else {
            continue;
        };
        out.entry((uid.clone(), run.clone())).or_default().push(p.clone());
    }
    out
}

/// Counts each job's pods by phase, keyed by job uid and run.
pub fn pod_counts(pods: &[Arc<Pod>]) -> Counts {
    let mut out: HashMap<(String, String), PodCounts> = HashMap::new();
    for p in pods {
        let Some(uid) = p.labels().get(JOB_UID_LABEL) else { continue };
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let run = p.labels().get(RUN_LABEL).cloned().unwrap_or_default();
        let c = out.entry((uid.clone(), run)).or_default();
        c.total += 1;
        if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
            c.bound += 1;
        }
        match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Running") => c.running += 1,
            Some("Succeeded") => c.succeeded += 1,
            Some("Failed") => c.failed += 1,
            _ => {}
        }
    }
    out
}

/// Why a run of the job `uid` failed, from its first failed pod: the container's exit code and reason (`Error`,
/// `OOMKilled`), else the pod's own reason (e.g. `Evicted`).
pub fn failure(pods: &[Arc<Pod>], uid: &str, run: u32) -> Failure {
    let run = run.to_string();
    let failed = pods.iter().find(|p| {
        p.labels().get(JOB_UID_LABEL).is_some_and(|u| u == uid)
            && p.labels().get(RUN_LABEL) == Some(&run)
            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
    });
    let Some(p) = failed else {
        return Failure { reason: "Failed".into(), message: "a task failed".into(), ..Default::default() };
    };
    let st = p.status.as_ref();
    let terminated = st
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref().and_then(|s| s.terminated.as_ref()).map(|t| (c.name.as_str(), t)))
        .find(|(_, t)| t.exit_code != 0);
    match terminated {
        Some((container, t)) => Failure {
            reason: t.reason.clone().unwrap_or_else(|| "Error".into()),
            pod: p.name_any(),
            exit_code: Some(t.exit_code),
            message: format!(
                "container {container} of pod {} exited with code {}",
                p.name_any(),
                t.exit_code
            ),
            time: String::new(),
        },
        None => Failure {
            reason: st.and_then(|s| s.reason.clone()).unwrap_or_else(|| "Failed".into()),
            pod: p.name_any(),
            exit_code: None,
            message: st
                .and_then(|s| s.message.clone())
                .unwrap_or_else(|| format!("pod {} failed", p.name_any())),
            time: String::new(),
        },
    }
}

/// Why a run a backend records itself (a Slurm job) failed: it says no more than that.
pub fn batch_failure() -> Failure {
    Failure {
        reason: "Failed".into(),
        message: "its batch job ended unsuccessfully".into(),
        ..Default::default()
    }
}

/// What a pod holds: milli-CPU, MiB, GPUs (requests, else limits, summed over containers).
pub fn pod_requests(pod: &Pod) -> (u64, u64, u32) {
    let Some(spec) = pod.spec.as_ref() else { return (0, 0, 0) };
    let mut out = (0u64, 0u64, 0u32);
    for c in &spec.containers {
        let Some(r) = c.resources.as_ref() else { continue };
        let get = |k: &str| {
            r.requests.as_ref().and_then(|m| m.get(k)).or_else(|| r.limits.as_ref().and_then(|m| m.get(k)))
        };
        out.0 += get("cpu").and_then(|q| quantity::milli(&q.0).ok()).unwrap_or(0);
        out.1 += get("memory").and_then(|q| quantity::mib(&q.0).ok()).unwrap_or(0);
        out.2 += get(GPU_RESOURCE).and_then(|q| quantity::milli(&q.0).ok()).map_or(0, |m| (m / 1000) as u32);
    }
    out
}

/// Whether a pod still holds its node's resources.
pub fn holds_resources(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    phase != "Succeeded" && phase != "Failed"
}

/// Whether Haiyun schedules this pod as a job of its own.
pub fn is_plain(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()) == Some(SCHEDULER_NAME)
        && !pod.labels().contains_key(JOB_UID_LABEL)
        && pod.metadata.deletion_timestamp.is_none()
}

/// Whether Haiyun runs a batch/v1 Job as one gang: its pods name Haiyun and the Job names a queue.
pub fn managed(job: &k8s_openapi::api::batch::v1::Job) -> bool {
    job.labels().contains_key(QUEUE_LABEL)
        && job.spec.as_ref().and_then(|s| s.template.spec.as_ref()).and_then(|s| s.scheduler_name.as_deref())
            == Some(SCHEDULER_NAME)
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
    if !refs.admits(queue_name, &namespace) {
        return Err(JobProblem::Namespace { namespace, queue: queue_name.clone() });
    }
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_deref()).unwrap_or_default();
    if let Some(u) = refs.storage.unnamed(&namespace, volumes, &[]) {
        let (volume, what, dataset) = (u.volume, u.holding.what, u.holding.dataset);
        return Err(JobProblem::DataStorage { at: "spec.volumes".into(), volume, what, dataset });
    }
    let (cpu, mem, gpus) = pod_requests(pod);
    let task = TaskSpec {
        cpu_milli: cpu,
        memory_mib: mem,
        gpus,
        gpu_milli: 1000,
        models: ModelSet::ANY,
        nodes: Default::default(),
    };
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
        user: None,
    })
}

/// When the pod was created, in unix seconds.
pub fn created(pod: &Pod) -> Time {
    crate::time::of_meta(pod.metadata.creation_timestamp.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, labels: serde_json::Value) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({ "metadata": { "name": name, "labels": labels } })).expect("pod"),
        )
    }

    #[test]
    fn pods_are_grouped_by_job_and_run_in_list_order() {
        let run = |uid: &str, r: &str| json!({ JOB_UID_LABEL: uid, RUN_LABEL: r });
        let pods = vec![
            pod("a-0", run("a", "0")),
            pod("b-0", run("b", "0")),
            pod("plain", json!({})),
            pod("a-1", run("a", "1")),
            pod("a-0-second", run("a", "0")),
            pod("no-run", json!({ JOB_UID_LABEL: "a" })),
        ];
        let runs = pods_by_run(&pods);
        let names = |uid: &str, r: &str| -> Vec<String> {
            runs.get(&(uid.to_string(), r.to_string())).into_iter().flatten().map(|p| p.name_any()).collect()
        };
        assert_eq!(names("a", "0"), ["a-0", "a-0-second"]);
        assert_eq!(names("a", "1"), ["a-1"]);
        assert_eq!(names("b", "0"), ["b-0"]);
        assert_eq!(runs.len(), 3, "pods without a job uid and run are no run's");
    }
}
