//! batch/v1 Jobs as gangs, the way Kueue admits them: a Job whose pods name Haiyun as their scheduler and whose
//! `haiyun.io/queue` label names a queue is suspended at creation (the chart's MutatingAdmissionPolicy), mirrored
//! by a ComputeJob it owns (queue, quota, explanations and status as for any job), unsuspended once the gang is
//! placed, and the pods its Job controller makes, replacements included, are bound to the placed node of their
//! completion index. The Job's own backoffLimit and podFailurePolicy decide its failures.

use std::collections::BTreeSet;
use std::sync::Arc;

use haiyun_api::{
    ComputeJob, DATASETS_ANNOTATION, GPUS_ANNOTATION, JOB_UID_LABEL, QUEUE_LABEL, RUN_LABEL,
    RUNTIME_ANNOTATION,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::pods::{PodError, api_err, bind_with, ensure_service};
use crate::index::cluster::{RunPhase, RunRecord};
use crate::index::pod::pod_requests;

/// The label the Job controller puts on its pods.
const JOB_NAME: &str = "batch.kubernetes.io/job-name";
/// The annotation with an Indexed Job pod's completion index.
const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

pub use crate::index::pod::managed;

/// The ComputeJob that stands for a Job in its queue, or why the Job cannot run as a gang.
pub fn mirror(job: &Job) -> Result<ComputeJob, String> {
    let spec = job.spec.as_ref().ok_or("the Job has no spec")?;
    let parallelism = spec.parallelism.unwrap_or(1).max(0) as u32;
    if parallelism == 0 {
        return Err("spec.parallelism is 0: a gang needs at least one pod".into());
    }
    if spec.completions.is_some_and(|c| c as u32 != parallelism) {
        return Err(format!(
            "spec.completions ({}) differs from spec.parallelism ({parallelism}): Haiyun runs a Job as one gang of \
             all its pods at once; set both to the gang's size",
            spec.completions.unwrap_or_default()
        ));
    }
    let template = Pod {
        metadata: spec.template.metadata.clone().unwrap_or_default(),
        spec: spec.template.spec.clone(),
        ..Default::default()
    };
    let (cpu, mem, gpus) = pod_requests(&template);
    let pod_spec = serde_json::to_value(&spec.template.spec).map_err(|e| e.to_string())?;
    let mut group =
        json!({ "name": "pod", "replicas": parallelism, "gpus": gpus, "template": { "spec": pod_spec } });
    if cpu > 0 {
        group["cpu"] = json!(format!("{cpu}m"));
    }
    if mem > 0 {
        group["memory"] = json!(format!("{mem}Mi"));
    }
    let mut cj_spec = json!({
        "queue": job.labels().get(QUEUE_LABEL).cloned().unwrap_or_default(),
        "taskGroups": [group],
        "maxRestarts": 0,
        "batchJob": job.name_any(),
    });
    if let Some(r) = job.annotations().get(RUNTIME_ANNOTATION) {
        cj_spec["runtimeEstimate"] = json!(r);
    }
    if let Some(u) = job.annotations().get(haiyun_api::SUBMITTER_ANNOTATION) {
        cj_spec["submittedBy"] = json!(u);
    }
    if let Some(d) = job.annotations().get(DATASETS_ANNOTATION) {
        let names: Vec<&str> = d.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
        cj_spec["datasets"] = json!(names);
    }
    let owner = OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name: job.name_any(),
        uid: job.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(false),
    };
    let cj = json!({
        "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputeJob",
        "metadata": { "name": job.name_any(), "namespace": job.namespace(), "ownerReferences": [owner] },
        "spec": cj_spec,
    });
    serde_json::from_value(cj).map_err(|e| format!("cannot make its ComputeJob: {e}"))
}

/// The managed Jobs that have no ComputeJob yet.
pub fn unmirrored<'a>(jobs: &'a [Arc<Job>], cjs: &[Arc<ComputeJob>]) -> Vec<&'a Arc<Job>> {
    let have: BTreeSet<(String, String)> = cjs
        .iter()
        .filter(|c| c.spec.batch_job.is_some())
        .map(|c| (c.namespace().unwrap_or_default(), c.name_any()))
        .collect();
    jobs.iter()
        .filter(|j| managed(j) && !have.contains(&(j.namespace().unwrap_or_default(), j.name_any())))
        .collect()
}

/// The run of a mirrored Job, when the Job has ended (its Complete or Failed condition).
pub fn ended_run(job: &Job) -> Option<RunRecord> {
    let conds = job.status.as_ref()?.conditions.as_ref()?;
    let phase =
        conds.iter().find(|c| c.status == "True" && matches!(c.type_.as_str(), "Complete" | "Failed"))?;
    let phase = if phase.type_ == "Complete" { RunPhase::Succeeded } else { RunPhase::Failed };
    Some(RunRecord { phase, times: None })
}

/// Starts the placed gang: labels the Job's pods with the job and run (through its template, while it is still
/// suspended), unsuspends it, and binds each pod the Job controller made to the node of its completion index.
/// Returns how many pods it bound.
pub async fn ensure(client: &Client, cj: &ComputeJob, name: &str) -> Result<usize, PodError> {
    let Some(placement) = cj.status.as_ref().and_then(|s| s.placement.as_ref()) else { return Ok(0) };
    let ns = cj.namespace().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let uid = cj.uid().unwrap_or_default();
    let run = cj.run().to_string();
    ensure_service(client, cj, &super::pods::Stamp::Local).await?;
    let job = jobs.get(name).await.map_err(api_err("read Job", name))?;
    if ended_run(&job).is_some() {
        // It ended (e.g. as it was being preempted): the next cycle ends the job from the Job's conditions.
        return Ok(0);
    }
    let labels = job.spec.as_ref().and_then(|s| s.template.metadata.as_ref()).and_then(|m| m.labels.as_ref());
    let labelled =
        labels.is_some_and(|l| l.get(JOB_UID_LABEL) == Some(&uid) && l.get(RUN_LABEL) == Some(&run));
    let suspended = job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
    if !labelled || suspended {
        let patch = json!({ "spec": { "suspend": false, "template": { "metadata": { "labels": {
            JOB_UID_LABEL: uid, RUN_LABEL: run } } } } });
        jobs.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err("start Job", name))?;
    }
    let list = pods.list(&ListParams::default().labels(&format!("{JOB_NAME}={name}"))).await;
    let list = list.map_err(api_err("list pods of Job", name))?;
    let ours: Vec<&Pod> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && p.labels().get(RUN_LABEL) == Some(&run))
        .collect();
    let nodes: Vec<&str> = placement.tasks.iter().map(|t| t.node.as_str()).collect();
    let mut slots = Slots::new(&nodes, &ours);
    let mut bound = 0;
    for p in ours.iter().filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_none())) {
        let Some(task) = slots.take(p).and_then(|i| placement.tasks.get(i)) else { continue };
        let gpus: Vec<String> = task.gpus.iter().map(u32::to_string).collect();
        let annotations = [(GPUS_ANNOTATION.to_string(), gpus.join(","))].into_iter().collect();
        bind_with(&pods, &p.name_any(), &task.node, Some(annotations)).await?;
        bound += 1;
    }
    Ok(bound)
}

/// The placed tasks a Job's pods take: an Indexed Job's pod takes its completion index; a plain Job's pod the first
/// task no live pod holds (a replacement takes the slot of the pod it replaces).
struct Slots {
    free: Vec<bool>,
}

fn live(p: &Pod) -> bool {
    !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

impl Slots {
    fn new(nodes: &[&str], pods: &[&Pod]) -> Self {
        let mut free = vec![true; nodes.len()];
        for p in pods.iter().filter(|p| live(p) && p.annotations().get(COMPLETION_INDEX).is_none()) {
            let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) else { continue };
            if let Some(i) = (0..nodes.len()).find(|i| free[*i] && nodes[*i] == node) {
                free[i] = false;
            }
        }
        Slots { free }
    }

    fn take(&mut self, p: &Pod) -> Option<usize> {
        if let Some(i) = p.annotations().get(COMPLETION_INDEX) {
            return i.parse().ok();
        }
        let i = self.free.iter().position(|f| *f)?;
        self.free[i] = false;
        Some(i)
    }
}

/// Stops the Job's pods (a preemption): suspends it, so its Job controller deletes them and makes none until it is
/// placed again.
pub async fn suspend(client: &Client, cj: &ComputeJob, name: &str) -> Result<(), PodError> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), &cj.namespace().unwrap_or_default());
    let patch = json!({ "spec": { "suspend": true } });
    match jobs.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(e) if super::pods::is_status(&e, 404) => Ok(()),
        Err(e) => Err(api_err("suspend Job", name)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(parallelism: i32, completions: Option<i32>) -> Job {
        serde_json::from_value(json!({
            "metadata": { "name": "train", "namespace": "ml", "uid": "u1", "labels": { QUEUE_LABEL: "q" },
                          "annotations": { RUNTIME_ANNOTATION: "10m" } },
            "spec": { "parallelism": parallelism, "completions": completions, "completionMode": "Indexed",
                "template": { "spec": { "schedulerName": "haiyun", "restartPolicy": "Never",
                    "nodeSelector": { "zone": "a" },
                    "containers": [{ "name": "c", "image": "x", "resources": {
                        "requests": { "cpu": "2", "memory": "1Gi" }, "limits": { "nvidia.com/gpu": "1" } } }] } } }
        }))
        .expect("job")
    }

    #[test]
    fn an_indexed_job_becomes_a_gang_of_its_pods_in_its_queue_owned_by_the_job() {
        let j = job(4, Some(4));
        assert!(managed(&j));
        let cj = mirror(&j).expect("mirror");
        assert_eq!((cj.name_any(), cj.namespace().as_deref()), ("train".into(), Some("ml")));
        assert_eq!(cj.spec.queue, "q");
        assert_eq!(cj.spec.batch_job.as_deref(), Some("train"));
        assert_eq!(cj.spec.max_restarts, Some(0), "the Job's backoffLimit decides");
        assert_eq!(cj.spec.runtime_estimate.as_deref(), Some("10m"));
        let g = &cj.spec.task_groups[0];
        assert_eq!(
            (g.replicas, g.gpus, g.cpu.as_deref(), g.memory.as_deref()),
            (4, 1, Some("2000m"), Some("1024Mi"))
        );
        let selector = &g.template.as_ref().expect("template")["spec"]["nodeSelector"];
        assert_eq!(selector["zone"], "a", "placement reads the Job's node constraints");
        assert_eq!(cj.metadata.owner_references.expect("owner")[0].uid, "u1");
        assert!(cj.spec.datasets.is_empty());
        let mut reads = job(4, Some(4));
        reads
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(DATASETS_ANNOTATION.into(), "census, roads,".into());
        let cj = mirror(&reads).expect("mirror");
        assert_eq!(
            cj.spec.datasets,
            ["census", "roads"],
            "its datasets' clearance, access and storage checks apply"
        );
    }

    #[test]
    fn a_job_that_is_not_one_gang_is_refused_with_the_fix() {
        let e = mirror(&job(2, Some(8))).expect_err("refused");
        assert!(e.contains("spec.completions (8)") && e.contains("set both"), "{e}");
        assert!(mirror(&job(0, None)).is_err());
        let mut other = job(2, None);
        other.spec.as_mut().expect("spec").template.spec.as_mut().expect("pod").scheduler_name = None;
        assert!(!managed(&other), "pods for kube-scheduler are not ours");
    }

    fn pod(name: &str, node: Option<&str>, index: Option<&str>, phase: &str) -> Pod {
        let annotations = index.map(|i| json!({ COMPLETION_INDEX: i })).unwrap_or(json!({}));
        serde_json::from_value(json!({ "metadata": { "name": name, "annotations": annotations },
            "spec": { "nodeName": node, "containers": [] }, "status": { "phase": phase } }))
        .expect("pod")
    }

    #[test]
    fn a_pod_takes_its_index_or_else_the_first_slot_no_live_pod_holds() {
        let nodes = ["a", "b", "b"];
        let failed = pod("x", Some("a"), None, "Failed");
        let running = pod("y", Some("b"), None, "Running");
        let mut slots = Slots::new(&nodes, &[&failed, &running]);
        let replacement = pod("z", None, None, "Pending");
        assert_eq!(slots.take(&replacement), Some(0), "the failed pod's slot on a");
        assert_eq!(slots.take(&replacement), Some(2), "the second slot on b");
        assert_eq!(slots.take(&replacement), None);
        assert_eq!(slots.take(&pod("i", None, Some("1"), "Pending")), Some(1), "an index is its own slot");
    }

    #[test]
    fn only_an_ended_job_has_a_run_record() {
        let mut j = job(1, None);
        assert_eq!(ended_run(&j), None);
        j.status =
            serde_json::from_value(json!({ "conditions": [{ "type": "Complete", "status": "True" }] })).ok();
        assert_eq!(ended_run(&j).map(|r| r.phase), Some(RunPhase::Succeeded));
        j.status =
            serde_json::from_value(json!({ "conditions": [{ "type": "Failed", "status": "True" }] })).ok();
        assert_eq!(ended_run(&j).map(|r| r.phase), Some(RunPhase::Failed));
    }
}
