//! The training contract: what each pod of a job gets so that a launcher written for Kubeflow's training operator or
//! Volcano runs unchanged — a stable DNS name through the job's headless Service, `restartPolicy: Never` unless the
//! template says otherwise, and the environment of torchrun (`MASTER_ADDR`, `WORLD_SIZE`, `RANK`, `PET_*`) and of
//! Haiyun (`HAIYUN_JOB`, `HAIYUN_TASK_INDEX`, `HAIYUN_GPU_UUIDS`, `HAIYUN_RESTART_ATTEMPT`).

use haiyun_api::job::TaskPlacement;
use haiyun_api::{ComputeJob, JOB_UID_LABEL};
use k8s_openapi::api::core::v1::{EnvVar, Pod, Service, ServiceSpec, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;

/// `MASTER_PORT` when the job does not set `spec.masterPort` (torchrun's default).
pub const DEFAULT_MASTER_PORT: u32 = 29500;
/// Label on a job's pods with the restart attempt they belong to (as JobSet labels its restarts).
pub const RESTART_LABEL: &str = "haiyun.io/restart-attempt";

/// The first task's DNS name: `<job>-<group>-0.<job>.<namespace>.svc`.
pub fn master_addr(job: &ComputeJob) -> String {
    let first = job.spec.task_groups.first().map_or("", |g| g.name.as_str());
    let name = job.name_any();
    format!("{name}-{first}-0.{name}.{}.svc", job.namespace().unwrap_or_default())
}

/// Processes a task of this group runs: one per whole GPU, else one.
fn nproc(g: &haiyun_api::TaskGroup) -> u32 {
    if g.gpus > 0 && g.gpu_fraction.is_none() { g.gpus } else { 1 }
}

/// The environment of the job's `index`-th task (groups' replicas in order), placed as `task`.
pub fn env(job: &ComputeJob, index: usize, task: &TaskPlacement) -> Vec<(String, String)> {
    let Some((group, g)) = job.spec.group_of_task(index) else { return Vec::new() };
    let before: u32 = job.spec.task_groups[..group].iter().map(|g| g.replicas).sum();
    let in_group = index as u32 - before;
    let nodes: u32 = job.spec.task_groups.iter().map(|g| g.replicas).sum();
    let world: u32 = job.spec.task_groups.iter().map(|g| g.replicas * nproc(g)).sum();
    let port = job.spec.master_port.unwrap_or(DEFAULT_MASTER_PORT).to_string();
    let master = master_addr(job);
    let restarts = job.status.as_ref().map_or(0, |s| s.restarts);
    let gpus: Vec<&str> = task.gpu_uuids.iter().map(String::as_str).collect();
    [
        ("HAIYUN_JOB", job.name_any()),
        ("HAIYUN_TASK_GROUP", g.name.clone()),
        ("HAIYUN_TASK_INDEX", in_group.to_string()),
        ("HAIYUN_RESTART_ATTEMPT", restarts.to_string()),
        ("HAIYUN_GPU_UUIDS", gpus.join(",")),
        ("MASTER_ADDR", master.clone()),
        ("MASTER_PORT", port.clone()),
        ("WORLD_SIZE", world.to_string()),
        ("RANK", index.to_string()),
        ("NODE_RANK", index.to_string()),
        ("PET_NNODES", nodes.to_string()),
        ("PET_NODE_RANK", index.to_string()),
        ("PET_NPROC_PER_NODE", nproc(g).to_string()),
        ("PET_MASTER_ADDR", master),
        ("PET_MASTER_PORT", port),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Seconds a pod stays on a node that stopped answering before the taint-eviction controller evicts it, when the
/// job does not set `spec.nodeLossGraceSeconds` (Kubernetes' own default).
pub const DEFAULT_NODE_LOSS_GRACE_S: u32 = 300;
const NOT_READY: &str = "node.kubernetes.io/not-ready";
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// Gives the pod its DNS name (hostname and the job's subdomain), `restartPolicy: Never` unless its template set
/// one, tolerations of a node that stops answering for the job's grace period (unless the template sets them), the
/// restart attempt as a label, and the contract's environment in every container (a variable the template sets
/// itself is left as it is).
pub fn apply(pod: &mut Pod, job: &ComputeJob, index: usize, task: &TaskPlacement) {
    let restarts = job.status.as_ref().map_or(0, |s| s.restarts);
    pod.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(RESTART_LABEL.into(), restarts.to_string());
    let vars = env(job, index, task);
    let Some(spec) = pod.spec.as_mut() else { return };
    spec.hostname = Some(task.pod.clone());
    spec.subdomain = Some(job.name_any());
    spec.restart_policy.get_or_insert_with(|| "Never".into());
    let grace = i64::from(job.spec.node_loss_grace_seconds.unwrap_or(DEFAULT_NODE_LOSS_GRACE_S));
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for key in [NOT_READY, UNREACHABLE] {
        if !tolerations.iter().any(|t| t.key.as_deref() == Some(key)) {
            tolerations.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                toleration_seconds: Some(grace),
                value: None,
            });
        }
    }
    for c in spec.init_containers.iter_mut().flatten().chain(spec.containers.iter_mut()) {
        let env = c.env.get_or_insert_with(Vec::new);
        for (k, v) in &vars {
            if !env.iter().any(|e| &e.name == k) {
                env.push(EnvVar { name: k.clone(), value: Some(v.clone()), value_from: None });
            }
        }
    }
}

/// The job as the owner of what it runs: Kubernetes' garbage collector deletes its pods and Service with it, even
/// while no operator runs.
pub fn owner(job: &ComputeJob) -> OwnerReference {
    OwnerReference {
        api_version: "haiyun.io/v1alpha1".into(),
        kind: "ComputeJob".into(),
        name: job.name_any(),
        uid: job.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(false),
    }
}

/// The job's headless Service: it names the pods' subdomain, so `<pod>.<job>.<namespace>.svc` resolves, also before
/// they are ready (a rendezvous starts before any rank is ready). The job owns it.
pub fn service(job: &ComputeJob) -> Service {
    let mut s = Service::default();
    s.metadata.name = Some(job.name_any());
    s.metadata.namespace = job.namespace();
    s.metadata.labels =
        Some([(JOB_UID_LABEL.to_string(), job.uid().unwrap_or_default())].into_iter().collect());
    s.metadata.owner_references = Some(vec![owner(job)]);
    s.spec = Some(ServiceSpec {
        cluster_ip: Some("None".into()),
        selector: Some([(JOB_UID_LABEL.to_string(), job.uid().unwrap_or_default())].into_iter().collect()),
        publish_not_ready_addresses: Some(true),
        ..Default::default()
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use haiyun_api::fixtures;
    use std::collections::BTreeMap;

    fn vars(job: &ComputeJob, index: usize) -> BTreeMap<String, String> {
        let task = TaskPlacement {
            pod: format!("p{index}"),
            gpu_uuids: vec!["GPU-a".into(), "GPU-b".into()],
            ..Default::default()
        };
        env(job, index, &task).into_iter().collect()
    }

    #[test]
    fn every_task_gets_torchruns_variables_and_its_own_rank() {
        let job = fixtures::job("ml", "train").group_name("worker").replicas(2).gpus(4).build();
        let (a, b) = (vars(&job, 0), vars(&job, 1));
        assert_eq!(a["MASTER_ADDR"], "train-worker-0.train.ml.svc");
        assert_eq!(a["MASTER_PORT"], "29500");
        assert_eq!(
            (a["WORLD_SIZE"].as_str(), a["PET_NNODES"].as_str(), a["PET_NPROC_PER_NODE"].as_str()),
            ("8", "2", "4")
        );
        assert_eq!((a["RANK"].as_str(), b["RANK"].as_str(), b["NODE_RANK"].as_str()), ("0", "1", "1"));
        assert_eq!((b["HAIYUN_TASK_GROUP"].as_str(), b["HAIYUN_TASK_INDEX"].as_str()), ("worker", "1"));
        assert_eq!((a["HAIYUN_JOB"].as_str(), a["HAIYUN_GPU_UUIDS"].as_str()), ("train", "GPU-a,GPU-b"));
        assert_eq!(a["PET_MASTER_ADDR"], a["MASTER_ADDR"]);
    }

    #[test]
    fn ranks_run_across_groups_and_cpu_tasks_run_one_process() {
        let job = fixtures::job("ml", "mix")
            .spec(serde_json::json!({"masterPort": 23456, "taskGroups": [
                {"name": "chief", "replicas": 1}, {"name": "worker", "replicas": 2, "gpus": 2}]}))
            .build();
        let last = vars(&job, 2);
        assert_eq!(
            (last["RANK"].as_str(), last["HAIYUN_TASK_GROUP"].as_str(), last["HAIYUN_TASK_INDEX"].as_str()),
            ("2", "worker", "1")
        );
        assert_eq!((last["WORLD_SIZE"].as_str(), last["MASTER_PORT"].as_str()), ("5", "23456"));
        assert_eq!(last["MASTER_ADDR"], "mix-chief-0.mix.ml.svc");
        assert_eq!(vars(&job, 0)["PET_NPROC_PER_NODE"], "1");
    }

    #[test]
    fn the_pod_gets_its_dns_name_never_restarts_by_default_and_keeps_what_its_template_sets() {
        let template = serde_json::json!({"spec": {"containers": [{"name": "c", "image": "x",
            "env": [{"name": "MASTER_PORT", "value": "1234"}]}]}});
        let job = fixtures::job("ml", "t").template(template).build();
        let task = TaskPlacement { pod: "t-w-0".into(), ..Default::default() };
        let pod = super::super::pods::pod_for(&job, 0, &task, "0").unwrap();
        let spec = pod.spec.unwrap();
        assert_eq!((spec.hostname.as_deref(), spec.subdomain.as_deref()), (Some("t-w-0"), Some("t")));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let grace: Vec<_> = spec
            .tolerations
            .iter()
            .flatten()
            .map(|t| (t.key.clone().unwrap_or_default(), t.effect.clone(), t.toleration_seconds))
            .collect();
        let nx = Some("NoExecute".to_string());
        assert_eq!(
            grace,
            vec![(NOT_READY.into(), nx.clone(), Some(300)), (UNREACHABLE.into(), nx, Some(300))],
            "Kubernetes' default grace unless the job sets spec.nodeLossGraceSeconds"
        );
        let mut quick = job.clone();
        quick.spec.node_loss_grace_seconds = Some(20);
        let pod = super::super::pods::pod_for(&quick, 0, &task, "0").unwrap();
        assert!(pod.spec.unwrap().tolerations.unwrap().iter().all(|t| t.toleration_seconds == Some(20)));
        let env = spec.containers[0].env.clone().unwrap();
        let port: Vec<_> = env.iter().filter(|e| e.name == "MASTER_PORT").collect();
        assert_eq!(port.len(), 1);
        assert_eq!(port[0].value.as_deref(), Some("1234"), "the template's own value wins");
        let job = fixtures::job("ml", "t")
            .template(
                serde_json::json!({"spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c"}]}}),
            )
            .build();
        let pod = super::super::pods::pod_for(&job, 0, &task, "0").unwrap();
        assert_eq!(pod.spec.unwrap().restart_policy.as_deref(), Some("OnFailure"));
    }

    #[test]
    fn the_headless_service_selects_the_jobs_pods_and_publishes_them_before_they_are_ready() {
        let job = fixtures::job("ml", "t").stored("uid-t", 1_800_000_000).build();
        let s = service(&job);
        let spec = s.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(spec.selector.unwrap()[JOB_UID_LABEL], "uid-t");
        assert_eq!(s.metadata.owner_references.unwrap()[0].uid, "uid-t");
    }
}
