//! A job's pods in this cluster: created with deterministic names exactly where the job's status places them (made
//! on their node, or bound through the Binding subresource once a device claim is allocated), deleted by the job's
//! uid. Every step is idempotent, so a crash anywhere is repaired by running the step again (the status is written
//! first, by the applier).

use haiyun_api::job::TaskPlacement;
use haiyun_api::{ComputeJob, GPUS_ANNOTATION, JOB_NAME_LABEL, JOB_UID_LABEL, SCHEDULER_NAME};
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::claims::NodeDevices;
use crate::index::pod::GPU_RESOURCE;

pub use haiyun_api::RUN_LABEL;
/// Image of pods whose task group has no template.
pub const DEFAULT_IMAGE: &str = "registry.k8s.io/pause:3.10";

/// Why a step on pods failed; every step can be retried.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// An API call failed.
    #[error("failed to {action} {object}: {source}")]
    Api {
        /// What was being done.
        action: &'static str,
        /// To what.
        object: String,
        /// The cause.
        source: kube::Error,
    },
    /// A pod exists, bound elsewhere (a previous run); it is being deleted.
    #[error("pod {0} from an earlier run is still terminating")]
    Stale(String),
    /// A pod of that name exists in the remote cluster that another operator (or someone) made: it is not deleted.
    #[error(
        "pod {0} exists in the remote cluster and is not this operator's; delete it there or rename the job"
    )]
    Taken(String),
    /// The job's Service name is taken by the Service of an earlier job of that name; it is being deleted.
    #[error("Service {0} of an earlier job of this name is being deleted")]
    StaleService(String),
    /// The placement names more tasks than the job has.
    #[error("placement task {index} (pod {pod}) has no task group in the job's spec")]
    NoTask {
        /// The pod.
        pod: String,
        /// The task.
        index: usize,
    },
    /// A pod's GPUs cannot be allocated yet (its claim of an earlier pod is going, or the node's GPU driver no
    /// longer offers a placed device); the next round tries again.
    #[error("GPUs of pod {pod}: {why}")]
    Devices {
        /// The pod.
        pod: String,
        /// Why not yet.
        why: String,
    },
    /// A pod's ResourceClaim could not be built (a bug: its fields are the operator's own).
    #[error("failed to build ResourceClaim {claim}: {source}")]
    Claim {
        /// The claim.
        claim: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// A task group has a template that is not a pod template.
    #[error("spec.taskGroups[{group}].template is not a pod template: {source}")]
    Template {
        /// The group.
        group: usize,
        /// The cause.
        source: serde_json::Error,
    },
}

impl PodError {
    /// What the API server refused for good (an invalid pod or Service, a forbidden or malformed request), as its
    /// message: retrying as it is cannot work.
    pub fn refusal(&self) -> Option<String> {
        match self {
            PodError::Api { source: kube::Error::Api(s), action, object }
                if matches!(s.code, 400 | 403 | 422) =>
            {
                Some(format!("{action} {object}: {}", s.message))
            }
            PodError::Template { .. } | PodError::NoTask { .. } | PodError::Claim { .. } => {
                Some(self.to_string())
            }
            _ => None,
        }
    }
}

pub(crate) fn api_err(
    action: &'static str,
    object: impl Into<String>,
) -> impl FnOnce(kube::Error) -> PodError {
    let object = object.into();
    move |source| PodError::Api { action, object, source }
}

pub(crate) fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Where a job's pods and Service are made: here, owned by the job (Kubernetes deletes them with it), or in a
/// remote cluster, where the job does not exist: labelled with the operator's origin instead, for its collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stamp {
    /// In the job's own cluster.
    Local,
    /// In a remote cluster, by the operator of this origin.
    Remote {
        /// The origin label's value.
        origin: String,
    },
}

impl Stamp {
    /// Marks an object made for the job.
    pub fn apply(&self, meta: &mut kube::api::ObjectMeta) {
        if let Stamp::Remote { origin } = self {
            meta.owner_references = None;
            let labels = meta.labels.get_or_insert_with(Default::default);
            labels.insert(crate::backend::remote::ORIGIN_LABEL.into(), origin.clone());
        }
    }
}

/// What this cluster's watch caches held when the cycle ran, so making a job's pods reads only what may be there.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Nodes whose GPUs Haiyun's DRA driver publishes (only their slices are read).
    pub driver_nodes: std::collections::HashSet<String>,
    /// Jobs (namespace, name) with pods of any run (only their pods are listed before new ones are made).
    pub jobs_with_pods: std::collections::HashSet<(String, String)>,
}

impl Seen {
    /// What the cycle's objects show.
    pub fn of(
        slices: &[std::sync::Arc<k8s_openapi::api::resource::v1::ResourceSlice>],
        pods: &[std::sync::Arc<Pod>],
    ) -> Self {
        let jobs_with_pods = pods
            .iter()
            .filter_map(|p| {
                Some((p.namespace().unwrap_or_default(), p.labels().get(JOB_NAME_LABEL)?.clone()))
            })
            .collect();
        Seen { driver_nodes: super::devices::driver_nodes(slices), jobs_with_pods }
    }
}

/// Creates the job's pods where missing, each on the node its placement says; returns how many it put on a node.
/// `seen`: what the watch caches held (a remote cluster's are not kept: everything is read).
pub async fn ensure_pods(
    client: &Client,
    job: &ComputeJob,
    stamp: &Stamp,
    seen: Option<&Seen>,
) -> Result<usize, PodError> {
    let Some(st) = job.status.as_ref() else { return Ok(0) };
    let Some(placement) = st.placement.as_ref() else { return Ok(0) };
    let ns = job.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let run = job.run().to_string();
    let uid = job.uid().unwrap_or_default();
    ensure_service(client, job, stamp).await?;
    // Pods of an earlier run go first, all of them, before any pod of this run is made: two runs never have pods
    // at once. The job's pods of every run are read in one list (by the job-name label, so an earlier job of this
    // name counts); a pod of one of our names that lacks the label turns up when creating it.
    // A job the cache shows no pod of (a first run, or one whose pods are long gone) skips the list.
    let name = job.name_any();
    let mut by_name: std::collections::HashMap<String, Pod> = std::collections::HashMap::new();
    if seen.is_none_or(|s| s.jobs_with_pods.contains(&(ns.clone(), name.clone()))) {
        let listed = pods
            .list(&ListParams::default().labels(&format!("{JOB_NAME_LABEL}={name}")))
            .await
            .map_err(api_err("list pods of job", &name))?;
        by_name = listed.items.into_iter().map(|p| (p.name_any(), p)).collect();
    }
    let existing: Vec<Option<Pod>> = placement.tasks.iter().map(|t| by_name.remove(&t.pod)).collect();
    refuse_others(&pods, &existing, stamp, &uid, &run).await?;
    // The driver's slice of each node with GPU tasks, read once.
    let mut slices: std::collections::HashMap<&str, NodeDevices> = std::collections::HashMap::new();
    for (i, task) in placement.tasks.iter().enumerate() {
        let driven = seen.is_none_or(|s| s.driver_nodes.contains(&task.node));
        if driven && gpu_share(job, i).is_some() && !slices.contains_key(task.node.as_str()) {
            slices.insert(&task.node, super::claims::node_devices(client, &task.node).await?);
        }
    }
    // The pods are made (or bound) all at once: a gang's pods are independent, and one by one a gang of eight
    // waited for eight round trips.
    let mut steps = Vec::with_capacity(placement.tasks.len());
    for ((i, task), found) in placement.tasks.iter().enumerate().zip(existing) {
        let devices = slices.get(task.node.as_str()).and_then(Option::as_ref);
        let place = Place { client, pods: &pods, job, stamp, uid: &uid, run: &run };
        steps.push(place.task(i, task, found, devices));
    }
    let placed = futures::future::join_all(steps).await;
    let mut bound = 0;
    for result in placed {
        bound += result?;
    }
    Ok(bound)
}

/// What placing one task of a job needs.
#[derive(Clone, Copy)]
struct Place<'a> {
    client: &'a Client,
    pods: &'a Api<Pod>,
    job: &'a ComputeJob,
    stamp: &'a Stamp,
    uid: &'a str,
    run: &'a str,
}

impl Place<'_> {
    /// Makes task `i`'s pod on its node unless `found`, or binds the one found unbound; returns 1 if it put a pod on
    /// a node.
    async fn task(
        self,
        i: usize,
        task: &TaskPlacement,
        found: Option<Pod>,
        devices: Option<&std::collections::BTreeMap<u32, super::claims::SliceDevice>>,
    ) -> Result<usize, PodError> {
        let Place { client, pods, job, stamp, uid, run } = self;
        let mut bound = 0;
        let pod = match found {
            Some(p) => p,
            None => {
                let mut pod = pod_for(job, i, task, run)?;
                stamp.apply(&mut pod.metadata);
                if devices.is_some() {
                    super::claims::attach(&mut pod);
                }
                // A pod without a claim to allocate first is made on its node: no binding call.
                let placed = !uses_claim(&pod);
                if placed {
                    if let Some(spec) = pod.spec.as_mut() {
                        spec.node_name = Some(task.node.clone());
                    }
                }
                match pods.create(&PostParams::default(), &pod).await {
                    Ok(p) => {
                        bound += usize::from(placed);
                        p
                    }
                    Err(e) if is_status(&e, 409) => {
                        let p = pods.get(&task.pod).await.map_err(api_err("read pod", &task.pod))?;
                        let found = [Some(p)];
                        refuse_others(pods, &found, stamp, uid, run).await?;
                        let [Some(p)] = found else { return Err(PodError::Stale(task.pod.clone())) };
                        p
                    }
                    Err(e) => return Err(api_err("create pod", &task.pod)(e)),
                }
            }
        };
        match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            Some(n) if n == task.node => {}
            Some(_) => {
                delete_pod(pods, &task.pod).await?;
                return Err(PodError::Stale(task.pod.clone()));
            }
            None => {
                if uses_claim(&pod) {
                    let Some(devices) = devices else {
                        let why = format!("the GPU driver of {} publishes no devices", task.node);
                        return Err(PodError::Devices { pod: task.pod.clone(), why });
                    };
                    let picked = super::claims::pick(devices, &task.pod, &task.node, &task.gpus)?;
                    let share = gpu_share(job, i).flatten();
                    super::claims::ensure(client, job, &pod, &task.node, &picked, share).await?;
                }
                bind(pods, &task.pod, &task.node).await?;
                bound += 1;
            }
        }
        Ok(bound)
    }
}

/// Stops at pods found under the job's pod names that are not this run's: in a remote cluster one another operator
/// made is refused (never deleted); otherwise one of another job of this name, of an earlier run, or going is
/// deleted, and the job waits for it to go.
async fn refuse_others(
    pods: &Api<Pod>,
    found: &[Option<Pod>],
    stamp: &Stamp,
    uid: &str,
    run: &str,
) -> Result<(), PodError> {
    if let Stamp::Remote { origin } = stamp {
        let label = crate::backend::remote::ORIGIN_LABEL;
        if let Some(p) = found.iter().flatten().find(|p| p.labels().get(label) != Some(origin)) {
            return Err(PodError::Taken(p.name_any()));
        }
    }
    let stale: Vec<String> = found
        .iter()
        .flatten()
        .filter(|p| {
            p.labels().get(JOB_UID_LABEL).map(String::as_str) != Some(uid)
                || p.labels().get(RUN_LABEL).map(String::as_str) != Some(run)
                || p.metadata.deletion_timestamp.is_some()
        })
        .map(|p| p.name_any())
        .collect();
    let Some(first) = stale.first() else { return Ok(()) };
    for name in &stale {
        delete_pod(pods, name).await?;
    }
    Err(PodError::Stale(first.clone()))
}

/// Whether task `index` takes GPUs: `Some(None)` whole ones, `Some(Some(percent))` a share of one.
fn gpu_share(job: &ComputeJob, index: usize) -> Option<Option<u32>> {
    let (_, g) = job.spec.group_of_task(index)?;
    match g.gpu_fraction {
        Some(f) => Some(Some(super::claims::cores(f))),
        None if g.gpus > 0 => Some(None),
        None => None,
    }
}

/// Whether a pod takes its GPUs through Haiyun's claim.
fn uses_claim(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.resource_claims.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.name == super::claims::POD_CLAIM))
}

/// Creates the job's headless Service unless it exists.
pub(super) async fn ensure_service(client: &Client, job: &ComputeJob, stamp: &Stamp) -> Result<(), PodError> {
    let services: Api<Service> = Api::namespaced(client.clone(), &job.namespace().unwrap_or_default());
    let mut service = super::contract::service(job);
    stamp.apply(&mut service.metadata);
    let name = job.name_any();
    match services.create(&PostParams::default(), &service).await {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 409) => {
            // Ours from an earlier job of this name (a remote cluster has no garbage collector for it) selects that
            // job's pods: it goes. One that is not ours stays.
            let found = services.get_opt(&name).await.map_err(api_err("read Service", &name))?;
            let uid = job.uid().unwrap_or_default();
            let Some(old) = found.filter(|s| s.labels().get(JOB_UID_LABEL).is_some_and(|u| *u != uid)) else {
                return Ok(());
            };
            let dp = DeleteParams {
                preconditions: Some(kube::api::Preconditions { uid: old.uid(), resource_version: None }),
                ..DeleteParams::default()
            };
            match services.delete(&name, &dp).await {
                Ok(_) => Err(PodError::StaleService(name)),
                Err(e) if is_status(&e, 404) || is_status(&e, 409) => Err(PodError::StaleService(name)),
                Err(e) => Err(api_err("delete Service", &name)(e)),
            }
        }
        Err(e) => Err(api_err("create the headless Service of", crate::index::job::key(job))(e)),
    }
}

/// Binds a plain pod; the Binding's annotation gives it its GPU indices (the API server copies it to the pod).
pub async fn bind_plain(client: &Client, pod: &Pod, node: &str, gpus: &[u32]) -> Result<(), PodError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let list: Vec<String> = gpus.iter().map(u32::to_string).collect();
    let annotations = [(GPUS_ANNOTATION.to_string(), list.join(","))].into_iter().collect();
    bind_with(&pods, &pod.name_any(), node, Some(annotations)).await
}

/// Deletes a plain pod (preempted).
pub async fn delete_plain(client: &Client, pod: &Pod) -> Result<(), PodError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    delete_pod(&pods, &pod.name_any()).await
}

/// Sets a waiting plain pod's PodScheduled condition to False with why, as kube-scheduler does.
pub async fn mark_waiting(client: &Client, pod: &Pod, message: &str) -> Result<(), PodError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let patch = json!({ "status": { "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
        "lastTransitionTime": crate::time::rfc3339(crate::time::now()),
    }]}});
    pods.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .map_err(api_err("write the status of pod", pod.name_any()))?;
    Ok(())
}

/// Binds a pod to a node through the Binding subresource; a pod already bound there counts as done.
async fn bind(pods: &Api<Pod>, pod: &str, node: &str) -> Result<(), PodError> {
    bind_with(pods, pod, node, None).await
}

pub(super) async fn bind_with(
    pods: &Api<Pod>,
    pod: &str,
    node: &str,
    annotations: Option<std::collections::BTreeMap<String, String>>,
) -> Result<(), PodError> {
    let binding = Binding {
        metadata: kube::api::ObjectMeta { name: Some(pod.into()), annotations, ..Default::default() },
        target: ObjectReference { kind: Some("Node".into()), name: Some(node.into()), ..Default::default() },
    };
    match pods
        .create_subresource::<Binding, serde_json::Value>("binding", pod, &PostParams::default(), &binding)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 409) => {
            let now = pods.get(pod).await.map_err(api_err("read pod", pod))?;
            match now.spec.and_then(|s| s.node_name) {
                Some(n) if n == node => Ok(()),
                _ => Err(api_err("bind pod", pod)(e)),
            }
        }
        Err(e) => Err(api_err("bind pod", pod)(e)),
    }
}

async fn delete_pod(pods: &Api<Pod>, name: &str) -> Result<(), PodError> {
    match pods.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(api_err("delete pod", name)(e)),
    }
}

/// Removes a pod from the API server at once (no grace: its node's kubelet cannot end it).
pub async fn force_delete(client: &Client, namespace: &str, name: &str, uid: &str) -> Result<(), PodError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(kube::api::Preconditions { uid: Some(uid.to_string()), resource_version: None }),
        ..DeleteParams::default()
    };
    match pods.delete(name, &dp).await {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
        Err(e) => Err(api_err("force-delete pod", name)(e)),
    }
}

/// Deletes every pod of a job (by its uid label).
pub async fn delete_pods(client: &Client, namespace: &str, uid: &str) -> Result<usize, PodError> {
    delete_pods_of(client, namespace, uid, None).await
}

/// Deletes the pods of a job (by its uid label), only those of run `run` when given.
pub async fn delete_pods_of(
    client: &Client,
    namespace: &str,
    uid: &str,
    run: Option<&str>,
) -> Result<usize, PodError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut selector = format!("{JOB_UID_LABEL}={uid}");
    if let Some(r) = run {
        selector.push_str(&format!(",{RUN_LABEL}={r}"));
    }
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(api_err("list pods of job", uid))?;
    for p in &list.items {
        // Only this very pod: one of the same name made since (a new run) is not ours to delete.
        let dp = DeleteParams {
            preconditions: Some(kube::api::Preconditions { uid: p.uid(), resource_version: None }),
            ..DeleteParams::default()
        };
        match pods.delete(&p.name_any(), &dp).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
            Err(e) => return Err(api_err("delete pod", p.name_any())(e)),
        }
    }
    Ok(list.items.len())
}

/// The pod for task `index` of a job: its group's template (or a pause container), our scheduler, labels that
/// tie it to the job and run, its GPUs in an annotation, the group's requests on its first container, and the
/// training contract (DNS name, restart policy, environment).
pub fn pod_for(job: &ComputeJob, index: usize, task: &TaskPlacement, run: &str) -> Result<Pod, PodError> {
    let Some((group, g)) = job.spec.group_of_task(index) else {
        return Err(PodError::NoTask { pod: task.pod.clone(), index });
    };
    let template = g.template.clone().unwrap_or_else(|| json!({}));
    let mut pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": template.get("metadata").cloned().unwrap_or_else(|| json!({})),
        "spec": template.get("spec").cloned().unwrap_or_else(|| json!({ "containers": [] })),
    }))
    .map_err(|source| PodError::Template { group, source })?;
    let meta = &mut pod.metadata;
    meta.name = Some(task.pod.clone());
    meta.namespace = job.namespace();
    meta.owner_references = Some(vec![super::contract::owner(job)]);
    let labels = meta.labels.get_or_insert_with(Default::default);
    labels.insert(JOB_UID_LABEL.into(), job.uid().unwrap_or_default());
    labels.insert(JOB_NAME_LABEL.into(), job.name_any());
    labels.insert(RUN_LABEL.into(), run.into());
    let gpus: Vec<String> = task.gpus.iter().map(u32::to_string).collect();
    meta.annotations.get_or_insert_with(Default::default).insert(GPUS_ANNOTATION.into(), gpus.join(","));
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.scheduler_name = Some(SCHEDULER_NAME.into());
    spec.node_name = None;
    if spec.containers.is_empty() {
        spec.containers.push(k8s_openapi::api::core::v1::Container {
            name: g.name.clone(),
            image: Some(DEFAULT_IMAGE.into()),
            ..Default::default()
        });
    }
    let res = spec.containers[0].resources.get_or_insert_with(Default::default);
    let requests = res.requests.get_or_insert_with(Default::default);
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    // The task group's requests are what the scheduler placed: they win over the template's.
    if let Some(c) = &g.cpu {
        requests.insert("cpu".into(), Quantity(c.clone()));
    }
    if let Some(m) = &g.memory {
        requests.insert("memory".into(), Quantity(m.clone()));
    }
    if g.gpus > 0 && g.gpu_fraction.is_none() {
        let n = Quantity(g.gpus.to_string());
        requests.insert(GPU_RESOURCE.into(), n.clone());
        res.limits.get_or_insert_with(Default::default).insert(GPU_RESOURCE.into(), n);
    }
    super::contract::apply(&mut pod, job, index, task);
    Ok(pod)
}
