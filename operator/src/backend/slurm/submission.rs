//! A ComputeJob placed in a Slurm pool as one batch job: its group's script on exactly the nodes the scheduler chose,
//! the GPUs per node it was given, a time limit from its runtime estimate, and its run's key in `comment`.

use std::collections::BTreeMap;

use haiyun_api::job::Placement;
use haiyun_api::pool::SlurmBackend;
use haiyun_api::{ComputeJob, quantity};
use kube::ResourceExt;

use super::Submission;
use super::watch::key;
use crate::index::job::time_limit_min;

/// Memory per task when the job does not say, MiB.
const DEFAULT_MEMORY_MIB: u64 = 1024;

/// Why a job cannot be submitted as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmissionError {
    /// The job has no script.
    #[error("spec.taskGroups[0].script is empty: a Slurm pool runs a batch script")]
    NoScript,
    /// The placement names a node of another pool.
    #[error("placement node {0:?} is not a node of pool {1:?}")]
    ForeignNode(String, String),
}

/// The submission for `job`'s current run placed as `placement` in the Slurm pool `spec`; `gpu_type` is the pool's
/// GRES type as Slurm spells it.
pub fn submission(
    job: &ComputeJob,
    placement: &Placement,
    spec: &SlurmBackend,
    gpu_type: Option<String>,
) -> Result<Submission, SubmissionError> {
    let group = job.spec.task_groups.first().ok_or(SubmissionError::NoScript)?;
    let script = group.script.clone().filter(|s| !s.trim().is_empty()).ok_or(SubmissionError::NoScript)?;
    let prefix = format!("{}/", placement.pool);
    // Per node: tasks and GPUs.
    let mut per_node: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let mut order = Vec::new();
    for t in &placement.tasks {
        let node = t
            .node
            .strip_prefix(&prefix)
            .ok_or_else(|| SubmissionError::ForeignNode(t.node.clone(), placement.pool.clone()))?;
        let e = per_node.entry(node.to_string()).or_insert_with(|| {
            order.push(node.to_string());
            (0, 0)
        });
        e.0 += 1;
        e.1 += t.gpus.len() as u32;
    }
    let tasks_per_node = per_node.values().map(|v| v.0).max().unwrap_or(1);
    let gpus_per_node = per_node.values().map(|v| v.1).max().unwrap_or(0);
    let cpu_milli = group.cpu.as_deref().and_then(|c| quantity::milli(c).ok()).unwrap_or(1000);
    let memory = group.memory.as_deref().and_then(|m| quantity::mib(m).ok()).unwrap_or(DEFAULT_MEMORY_MIB);
    let limit = time_limit_min(job);
    let run = job.run();
    let environment = BTreeMap::from([
        ("PATH".to_string(), "/usr/local/bin:/usr/bin:/bin".to_string()),
        ("HAIYUN_JOB".to_string(), format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())),
        ("HAIYUN_QUEUE".to_string(), job.spec.queue.clone()),
    ]);
    Ok(Submission {
        name: job.name_any(),
        script,
        partition: spec.partition.clone(),
        nodes: order.len() as u32,
        node_list: order,
        gpus_per_node,
        gpu_type: gpu_type.filter(|_| gpus_per_node > 0),
        cpus_per_node: (cpu_milli.div_ceil(1000) as u32).max(1) * tasks_per_node,
        memory_per_node_mib: memory * u64::from(tasks_per_node),
        time_limit_min: limit,
        key: key(&job.uid().unwrap_or_default(), run),
        cwd: spec.working_directory.clone().unwrap_or_else(|| "/tmp".into()),
        environment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use haiyun_api::job::TaskPlacement;

    #[test]
    fn a_placed_batch_job_becomes_one_submission_on_its_nodes() {
        let job: ComputeJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputeJob",
            "metadata": {"name": "sim", "namespace": "hpc", "uid": "u-1"},
            "spec": {"queue": "q", "kind": "hpc-batch", "runtimeEstimate": "10m",
                     "taskGroups": [{"name": "ranks", "replicas": 2, "gpus": 4, "cpu": "2", "memory": "8Gi",
                                     "script": "#!/bin/bash\nsrun hostname\n"}]},
            "status": {"phase": "Admitted", "preemptions": 1}
        }))
        .unwrap();
        let task = |node: &str| TaskPlacement {
            pod: String::new(),
            node: node.into(),
            gpus: vec![0, 1, 2, 3],
            gpu_milli: 1000,
            gpu_uuids: Vec::new(),
        };
        let placement = Placement {
            pool: "hpc".into(),
            gpu_model: "h100".into(),
            tasks: vec![task("hpc/n2"), task("hpc/n1")],
        };
        let spec = SlurmBackend { partition: "batch".into(), ..Default::default() };
        let s = submission(&job, &placement, &spec, Some("h100".into())).unwrap();
        assert_eq!((s.nodes, s.node_list.clone()), (2, vec!["n2".to_string(), "n1".to_string()]));
        assert_eq!((s.gpus_per_node, s.gpu_type.as_deref()), (4, Some("h100")));
        assert_eq!((s.cpus_per_node, s.memory_per_node_mib, s.time_limit_min), (2, 8192, 20));
        assert_eq!(s.key, "haiyun:u-1:1", "the run's key");
        assert_eq!(s.environment["HAIYUN_JOB"], "hpc/sim");
        let elsewhere = Placement { tasks: vec![task("k8s-node")], ..placement };
        assert!(matches!(submission(&job, &elsewhere, &spec, None), Err(SubmissionError::ForeignNode(..))));
    }
}
