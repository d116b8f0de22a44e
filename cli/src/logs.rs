//! `haiyun logs`: which pod runs a job's task, why there is none yet, and its container's log, once or followed.

use std::io::Write;

use futures::AsyncReadExt;
use haiyun_api::ComputeJob;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::LogParams;

use crate::cluster::{CliError, Cluster, api_error};
use crate::view::{namespace_flag, without_phase};

/// The label (and annotation) with an Indexed Job pod's completion index.
const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// The annotation that names a pod's default container, as kubectl reads it.
const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// `haiyun logs` flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogsFlags {
    /// The job.
    pub job: String,
    /// The task's index within its group.
    #[arg(long, default_value_t = 0)]
    pub task: u32,
    /// The task group (default: the job's first).
    #[arg(long)]
    pub group: Option<String>,
    /// Keep printing as the task writes, until it ends or Ctrl-C.
    #[arg(short, long)]
    pub follow: bool,
    /// The container (default: the pod's default container, else its first).
    #[arg(short, long)]
    pub container: Option<String>,
}

/// The task a flag set names: its group and its pod's name (`<job>-<group>-<index>`), checked against the job.
pub fn task(job: &ComputeJob, group: Option<&str>, index: u32) -> Result<(String, String), CliError> {
    let name = job.name_any();
    let groups: Vec<&str> = job.spec.task_groups.iter().map(|g| g.name.as_str()).collect();
    let g = match group {
        Some(want) => job.spec.task_groups.iter().find(|g| g.name == want).ok_or_else(|| {
            CliError::Input(format!(
                "--group {want}: job {name} has no such task group; give one of {}",
                groups.join(", ")
            ))
        })?,
        None => job.spec.task_groups.first().ok_or_else(|| {
            CliError::Input(format!("job {name} has no task groups: it has no tasks to show"))
        })?,
    };
    if index >= g.replicas {
        return Err(CliError::Input(format!(
            "--task {index}: group {} of job {name} has {} task(s); give --task 0 to {}",
            g.name,
            g.replicas,
            g.replicas.saturating_sub(1)
        )));
    }
    Ok((g.name.clone(), format!("{name}-{}-{index}", g.name)))
}

/// The pod of a task among the job's pods: by its name, or, for a batch/v1 Job's pods, by its completion index (the
/// newest one that is not going away).
pub fn pick<'a>(job: &ComputeJob, pod_name: &str, index: u32, pods: &'a [Pod]) -> Option<&'a Pod> {
    if job.spec.batch_job.is_none() {
        return pods.iter().find(|p| p.name_any() == pod_name);
    }
    let index = index.to_string();
    let has_index = |p: &&Pod| {
        p.labels().get(COMPLETION_INDEX).or_else(|| p.annotations().get(COMPLETION_INDEX)) == Some(&index)
    };
    pods.iter()
        .filter(has_index)
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Why a task has no pod: a job that waits says what for; one that was placed says where it runs.
pub fn missing(job: &ComputeJob, pod_name: &str) -> CliError {
    let name = job.name_any();
    let ns = namespace_flag(job);
    let st = job.status.clone().unwrap_or_default();
    let phase = job.status.as_ref().map_or("New".into(), |s| format!("{:?}", s.phase));
    let hint = match (&st.placement, st.pending_reasons.first()) {
        (Some(p), _) => format!(
            ": job {name} is {phase} in pool {}, but no pod of that name is there (a Slurm pool runs none, and the \
             pods of a finished run may be gone); haiyun describe job {name}{ns} shows its pods",
            p.pool
        ),
        (None, Some(r)) => format!(
            " yet: job {name} is {phase}: {} ({}); haiyun explain {name}{ns} says more",
            without_phase(&r.phase, &r.message),
            r.phase
        ),
        (None, None) if job.status.is_none() => {
            format!(" yet: job {name} is New: the operator has not looked at it yet (is it running?)")
        }
        (None, None) => format!(" yet: job {name} is {phase}"),
    };
    CliError::NotFound { kind: "Pod", name: pod_name.into(), hint }
}

/// The container to read: the one asked for, else the pod's default, else its first.
fn container(pod: &Pod, asked: Option<&str>) -> Option<String> {
    asked
        .map(str::to_string)
        .or_else(|| pod.annotations().get(DEFAULT_CONTAINER).cloned())
        .or_else(|| pod.spec.as_ref()?.containers.first().map(|c| c.name.clone()))
}

/// Prints the log of the task the flags name, once or followed.
pub async fn print(cluster: &Cluster, f: &LogsFlags) -> Result<(), CliError> {
    let job = cluster.job(&f.job).await?;
    let (_, pod_name) = task(&job, f.group.as_deref(), f.task)?;
    let pods = cluster.pods_of(&job).await?;
    let Some(pod) = pick(&job, &pod_name, f.task, &pods) else { return Err(missing(&job, &pod_name)) };
    let name = pod.name_any();
    let lp = LogParams {
        container: container(pod, f.container.as_deref()),
        follow: f.follow,
        ..Default::default()
    };
    let api = cluster.pods();
    if !f.follow {
        let text = api.logs(&name, &lp).await.map_err(|e| api_error("Pod", &name, e))?;
        print!("{text}");
        return Ok(());
    }
    let mut stream = api.log_stream(&name, &lp).await.map_err(|e| api_error("Pod", &name, e))?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = std::io::stdout();
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| CliError::Unreachable(format!("the log of pod {name} broke off: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        // A closed stdout (`| head`) ends the command, as it ends kubectl's.
        if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(batch: bool, status: serde_json::Value) -> ComputeJob {
        let mut spec = serde_json::json!({"queue": "q", "taskGroups": [
            {"name": "launcher", "replicas": 1, "gpus": 0}, {"name": "worker", "replicas": 2, "gpus": 8}]});
        if batch {
            spec["batchJob"] = "train".into();
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputeJob", "metadata": {"name": "train"},
            "spec": spec, "status": status
        }))
        .unwrap()
    }

    fn pod(name: &str, index: Option<&str>, created: &str) -> Pod {
        let labels = index.map_or(serde_json::json!({}), |i| serde_json::json!({ COMPLETION_INDEX: i }));
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels, "creationTimestamp": created},
            "spec": {"containers": [{"name": "main"}, {"name": "sidecar"}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_task_is_its_group_s_pod_and_bad_flags_say_what_there_is() {
        let j = job(false, serde_json::json!({"phase": "Running"}));
        assert_eq!(task(&j, None, 0).unwrap().1, "train-launcher-0");
        assert_eq!(task(&j, Some("worker"), 1).unwrap().1, "train-worker-1");
        let e = task(&j, Some("worker"), 2).unwrap_err();
        assert_eq!((e.code(), e.to_string().contains("give --task 0 to 1")), (2, true), "{e}");
        let e = task(&j, Some("ps"), 0).unwrap_err();
        assert!(e.to_string().contains("give one of launcher, worker"), "{e}");
        let pods = [pod("train-worker-1", None, "2026-01-01T00:00:00Z")];
        assert!(pick(&j, "train-worker-1", 1, &pods).is_some());
        assert!(pick(&j, "train-worker-0", 0, &pods).is_none());
        assert_eq!(container(&pods[0], None).as_deref(), Some("main"));
        assert_eq!(container(&pods[0], Some("sidecar")).as_deref(), Some("sidecar"));
    }

    #[test]
    fn a_batch_job_s_task_is_the_newest_pod_of_its_completion_index() {
        let j = job(true, serde_json::json!({"phase": "Running"}));
        let pods = [
            pod("train-0-old", Some("0"), "2026-01-01T00:00:00Z"),
            pod("train-0-new", Some("0"), "2026-01-01T01:00:00Z"),
            pod("train-1-abc", Some("1"), "2026-01-01T00:00:00Z"),
        ];
        assert_eq!(pick(&j, "ignored", 0, &pods).map(ResourceExt::name_any).as_deref(), Some("train-0-new"));
        assert_eq!(pick(&j, "ignored", 1, &pods).map(ResourceExt::name_any).as_deref(), Some("train-1-abc"));
    }

    #[test]
    fn a_missing_pod_says_the_job_s_phase_and_why_it_waits() {
        let j = job(
            false,
            serde_json::json!({"phase": "Queued", "pendingReasons": [
                {"phase": "quota", "message": "quota: queue q needs 16 nvidia.com/gpu:h100, 8 left"}]}),
        );
        let e = missing(&j, "train-launcher-0");
        assert_eq!(e.code(), 3);
        assert_eq!(
            e.to_string(),
            "Pod \"train-launcher-0\" not found yet: job train is Queued: queue q needs 16 nvidia.com/gpu:h100, \
             8 left (quota); haiyun explain train says more"
        );
        let e = missing(&job(false, serde_json::Value::Null), "train-launcher-0");
        assert!(e.to_string().contains("job train is New: the operator has not looked at it yet"), "{e}");
        let placed = serde_json::json!({"phase": "Running", "placement": {"pool": "slurm-a", "tasks": []}});
        let e = missing(&job(false, placed), "train-launcher-0");
        assert!(e.to_string().contains("not found: job train is Running in pool slurm-a, but no pod"), "{e}");
    }
}
