//! The index: Kubernetes objects (Nodes, Pods and Haiyun's CRDs) turned into the core's model. The only place
//! where Kubernetes types become core types.

pub mod cluster;
pub mod job;
pub mod overlay;
pub mod pod;
pub mod queue;
pub mod simulated;
pub mod slurm;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use haiyun_api::job::{JobPhase, Placement as ApiPlacement};
use haiyun_api::{ComputeJob, ComputePool, Dataset, JOB_UID_LABEL, Queue, QuotaRequest, quantity};
use haiyun_scheduler::Placement;
use haiyun_scheduler::model::{Dataset as CoreDataset, JobId, Time};
use haiyun_scheduler::schedule::{Scheduler, SchedulerConfig};
use haiyun_scheduler::snapshot::TaskPlacement;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;

pub use cluster::Federation;
pub use job::JobProblem;
pub use overlay::{Assumed, Outcome, Overlay, StepKind};

/// Everything the operator watches, as last seen.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// ComputePools.
    pub pools: Vec<Arc<ComputePool>>,
    /// Queues.
    pub queues: Vec<Arc<Queue>>,
    /// ComputeJobs.
    pub jobs: Vec<Arc<ComputeJob>>,
    /// QuotaRequests.
    pub requests: Vec<Arc<QuotaRequest>>,
    /// Datasets.
    pub datasets: Vec<Arc<Dataset>>,
    /// Nodes.
    pub nodes: Vec<Arc<Node>>,
    /// Pods.
    pub pods: Vec<Arc<Pod>>,
    /// What the node agents report.
    pub fleet: Arc<crate::fleet::FleetView>,
    /// What the Slurm pools report.
    pub slurm: Arc<crate::backend::slurm::SlurmViews>,
    /// Whether this process serves simulated pools (`haiyun demo`); the operator does not.
    pub simulated: bool,
}

/// What a job's pods say.
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

/// Where a ComputeJob stands in this world.
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    /// Waiting in the core.
    Waiting(JobId),
    /// Admitted or running in the core.
    Placed(JobId),
    /// Not queued, with why.
    Problem(JobProblem),
    /// Running, but it can no longer be read (e.g. its queue is gone): it keeps its place, outside the core.
    Held(JobProblem),
    /// Done (Succeeded or Failed).
    Terminal,
    /// Its recorded placement no longer fits (a node left): its pods are on their own.
    Lost(String),
    /// Its pods ended (all succeeded, or one failed); it holds nothing any more.
    Ended {
        /// Whether a pod failed.
        failed: bool,
    },
}

/// One ComputeJob and where it stands.
#[derive(Debug, Clone)]
pub struct Tracked {
    /// The object.
    pub job: Arc<ComputeJob>,
    /// Where it stands.
    pub state: JobState,
    /// Its pods (of its current run).
    pub pods: PodCounts,
    /// Whether this operator made and bound its pods and the cache has not caught up.
    pub bound_here: bool,
    /// Start and end (Unix seconds) as the backend recorded them (Slurm), when it did.
    pub times: Option<(Time, Time)>,
}

/// A plain pod and where it stands.
#[derive(Debug, Clone)]
pub struct TrackedPod {
    /// The pod.
    pub pod: Arc<Pod>,
    /// Where it stands (never `Ended` or `Lost`: those are left out).
    pub state: JobState,
}

/// What a core job id stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// `World::jobs[i]`.
    Job(usize),
    /// `World::pods[i]`.
    Pod(usize),
}

/// The federation, the quota book and every job, built into a scheduler ready for a cycle.
#[derive(Debug)]
pub struct World {
    /// The core, with running jobs adopted and waiting ones submitted.
    pub scheduler: Scheduler,
    /// Pools and nodes by name.
    pub federation: Federation,
    /// Queue ids by name.
    pub queues: BTreeMap<String, u32>,
    /// Queues refused, with why.
    pub invalid_queues: BTreeMap<String, String>,
    /// Namespaces allowed per queue (empty: all).
    pub queue_namespaces: BTreeMap<String, Vec<String>>,
    /// Every ComputeJob.
    pub jobs: Vec<Tracked>,
    /// Every plain pod Haiyun schedules that is not done.
    pub pods: Vec<TrackedPod>,
    /// What each core job id stands for.
    pub by_core: Vec<Owner>,
}

/// Why the world could not be built.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The core refused its settings.
    #[error("failed to build the scheduler: {0}")]
    Scheduler(#[from] haiyun_scheduler::schedule::ScheduleError),
}

/// GPU indices on a node as the core's mask (indices past the node limit are ignored).
pub fn gpu_mask(indices: &[u32]) -> u32 {
    indices
        .iter()
        .filter(|g| (**g as usize) < haiyun_scheduler::model::MAX_GPUS_PER_NODE)
        .fold(0, |m, g| m | (1 << g))
}

/// The GPU indices of a core mask.
pub fn gpu_indices(mask: u32) -> Vec<u32> {
    haiyun_scheduler::snapshot::mask_bits(mask).map(|j| j as u32).collect()
}

/// Counts each job's pods by phase, keyed by job uid and run.
pub fn pod_counts(pods: &[Arc<Pod>]) -> HashMap<(String, String), PodCounts> {
    let mut out: HashMap<(String, String), PodCounts> = HashMap::new();
    for p in pods {
        let Some(uid) = p.labels().get(JOB_UID_LABEL) else { continue };
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let run = p.labels().get(haiyun_api::RUN_LABEL).cloned().unwrap_or_default();
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

/// The job's placement: as this operator assumed it, else as its status records it (when admitted or running).
pub fn placement_of<'a>(
    cj: &'a ComputeJob,
    overlay: &'a Overlay,
) -> Option<(&'a ApiPlacement, Option<Time>)> {
    let uid = cj.uid().unwrap_or_default();
    if let Some(a) = overlay.assumed.get(&uid) {
        return Some((&a.placement, Some(a.started)));
    }
    if overlay.evicting.contains(&uid) {
        return None;
    }
    let st = cj.status.as_ref()?;
    matches!(st.phase, JobPhase::Admitted | JobPhase::Running).then_some(())?;
    st.placement.as_ref().map(|p| (p, job::started(cj)))
}

pub(crate) fn is_terminal(cj: &ComputeJob) -> bool {
    cj.status.as_ref().is_some_and(|s| matches!(s.phase, JobPhase::Succeeded | JobPhase::Failed))
}

/// What the placements of running jobs (but those in `held`) and bound plain pods hold.
fn claims_of(objects: &Objects, overlay: &Overlay, held: &HashSet<String>) -> cluster::Claims {
    let mut claims = cluster::Claims::default();
    for cj in &objects.jobs {
        let uid = cj.uid().unwrap_or_default();
        if is_terminal(cj) || held.contains(&uid) {
            continue;
        }
        let Some((p, _)) = placement_of(cj, overlay) else { continue };
        let ns = cj.namespace().unwrap_or_default();
        let run = cj.status.as_ref().map_or(0, |s| s.preemptions).to_string();
        for t in &p.tasks {
            claims.hold(&t.node, &t.gpus, format!("{ns}/{}", t.pod), Some(run.clone()));
        }
    }
    for p in objects.pods.iter().filter(|p| pod::is_plain(p)) {
        let place = match overlay.binding.get(&p.uid().unwrap_or_default()) {
            Some((node, gpus, _)) => Some((node.clone(), gpus.clone())),
            None => match pod::place(p) {
                pod::PodPlace::Bound(node, gpus) => Some((node, gpus)),
                _ => None,
            },
        };
        if let Some((node, gpus)) = place {
            claims.hold(&node, &gpus, pod::key(p), None);
        }
    }
    claims
}

/// Builds the world at `now` from what the operator sees plus what it assumed. A running job that can no longer
/// be read (its queue or a dataset is gone) is held where it runs: its pods count as used capacity and it keeps
/// its place.
pub fn build(
    objects: &Objects,
    overlay: &Overlay,
    config: SchedulerConfig,
    now: Time,
) -> Result<World, IndexError> {
    let world = assemble(objects, overlay, &HashSet::new(), config, now)?;
    let held: HashSet<String> = world
        .jobs
        .iter()
        .filter(|t| matches!(t.state, JobState::Held(_)))
        .filter_map(|t| t.job.uid())
        .collect();
    if held.is_empty() { Ok(world) } else { assemble(objects, overlay, &held, config, now) }
}

fn assemble(
    objects: &Objects,
    overlay: &Overlay,
    held: &HashSet<String>,
    config: SchedulerConfig,
    now: Time,
) -> Result<World, IndexError> {
    let pools: Vec<&ComputePool> = objects.pools.iter().map(|p| p.as_ref()).collect();
    let nodes: Vec<&Node> = objects.nodes.iter().map(|p| p.as_ref()).collect();
    let pods: Vec<&Pod> = objects.pods.iter().map(|p| p.as_ref()).collect();
    let claims = claims_of(objects, overlay, held);
    let mut fed = cluster::federation(
        &pools,
        &nodes,
        &pods,
        &claims,
        &objects.fleet,
        &objects.slurm,
        objects.simulated,
    );
    let queues: Vec<&Queue> = objects.queues.iter().map(|p| p.as_ref()).collect();
    let requests: Vec<&QuotaRequest> = objects.requests.iter().map(|p| p.as_ref()).collect();
    let book = queue::book(&queues, &requests, &mut fed.cluster.models);
    let namespaces: BTreeMap<String, Vec<String>> =
        objects.queues.iter().map(|q| (q.name_any(), q.spec.namespaces.clone())).collect();
    let mut datasets: Vec<CoreDataset> = Vec::new();
    let mut dataset_ids = BTreeMap::new();
    let mut sorted_ds: Vec<&Arc<Dataset>> = objects.datasets.iter().collect();
    sorted_ds.sort_by_key(|d| d.name_any());
    for d in sorted_ds {
        let replicas = d
            .spec
            .replicas
            .iter()
            .filter_map(|r| fed.pool_names.iter().position(|p| p == r))
            .map(|p| p as u32)
            .collect();
        dataset_ids.insert(d.name_any(), datasets.len() as u32);
        datasets.push(CoreDataset {
            name: d.name_any(),
            size_mib: quantity::mib(&d.spec.size).unwrap_or(0),
            classification: cluster::classification(d.spec.classification),
            replicas,
        });
    }
    let mut cluster = fed.cluster.clone();
    let refs = job::Refs {
        queues: &book.ids,
        invalid_queues: &book.invalid,
        namespaces: &namespaces,
        datasets: &dataset_ids,
        slurm: &fed.slurm,
        time_limits: &fed.time_limits,
    };
    let counts = pod_counts(&objects.pods);
    let mut sorted_jobs: Vec<&Arc<ComputeJob>> = objects.jobs.iter().collect();
    sorted_jobs.sort_by(|a, b| {
        job::submitted(a).total_cmp(&job::submitted(b)).then_with(|| job::key(a).cmp(&job::key(b)))
    });
    // Convert every job first: conversion may intern GPU models the nodes do not have.
    type Converted = Option<Result<haiyun_scheduler::model::Job, JobProblem>>;
    let converted: Vec<(Arc<ComputeJob>, Converted)> = sorted_jobs
        .into_iter()
        .map(|cj| (cj.clone(), (!is_terminal(cj)).then(|| job::core_job(cj, &refs, &mut cluster))))
        .collect();
    fed.cluster.models = cluster.models.clone();
    let mut scheduler = Scheduler::new(cluster, book.quotas, config, None)?;
    for d in datasets {
        scheduler.add_dataset(d);
    }
    let mut tracked = Vec::with_capacity(converted.len());
    let mut by_core = Vec::new();
    for (cj, conv) in converted {
        let run = cj.status.as_ref().map_or(0, |s| s.preemptions);
        let uid = cj.uid().unwrap_or_default();
        let in_slurm = placement_of(&cj, overlay)
            .and_then(|(p, _)| objects.slurm.get(&p.pool).map(|v| (v, p.tasks.len())))
            .map(|(v, n)| {
                (v.jobs.get(&crate::backend::slurm::watch::key(&uid, run)), n, v.available.is_ok())
            });
        // Running, yet its reachable Slurm no longer lists it: it ended while the operator could not see it (Slurm
        // forgets finished jobs after MinJobAge). Running it again could do the work twice: it is lost instead.
        let forgotten = matches!(in_slurm, Some((None, _, true)))
            && cj.status.as_ref().is_some_and(|s| s.phase == haiyun_api::job::JobPhase::Running);
        let (pods, times) = match in_slurm {
            Some((j, n, _)) => {
                let times =
                    j.filter(|j| j.start_time > 0).map(|j| (j.start_time as Time, j.end_time as Time));
                (slurm::counts(j, n), times)
            }
            None => (counts.get(&(uid, run.to_string())).copied().unwrap_or_default(), None),
        };
        let state = match conv {
            None => JobState::Terminal,
            Some(Err(p)) if placement_of(&cj, overlay).is_some() => JobState::Held(p),
            Some(Err(p)) => JobState::Problem(p),
            Some(Ok(core)) => match placement_of(&cj, overlay) {
                Some(_) if forgotten => JobState::Lost(
                    "its Slurm job ended while the operator could not see it; its outcome is unknown".into(),
                ),
                Some((p, _)) if ended(p, &pods).is_some() => JobState::Ended { failed: pods.failed > 0 },
                Some((p, started)) => match core_placement(p, &fed, &core) {
                    Ok((placement, pool, model)) => {
                        let at = started.unwrap_or(now);
                        match scheduler.adopt(core, placement, pool, model, at, now) {
                            Ok(id) => JobState::Placed(id),
                            Err(e) => JobState::Lost(e.to_string()),
                        }
                    }
                    // Its pool does not answer and its nodes are not known yet: it runs on where it is.
                    Err(e) if fed.unavailable.contains_key(&p.pool) => {
                        JobState::Held(JobProblem::Field { field: "status.placement".into(), message: e })
                    }
                    Err(e) => JobState::Lost(e),
                },
                None => match scheduler.submit(core) {
                    Ok(id) => JobState::Waiting(id),
                    Err(e) => {
                        JobState::Problem(JobProblem::Field { field: "spec".into(), message: e.to_string() })
                    }
                },
            },
        };
        if let JobState::Waiting(id) | JobState::Placed(id) = state {
            debug_assert_eq!(id as usize, by_core.len());
            by_core.push(Owner::Job(tracked.len()));
        }
        // Slurm jobs have no pods to wait for: their submission is checked against Slurm's listing instead.
        let bound_here = overlay.bound.contains(&cj.uid().unwrap_or_default()) && in_slurm.is_none();
        tracked.push(Tracked { job: cj, state, pods, bound_here, times });
    }
    let mut plain: Vec<&Arc<Pod>> = objects.pods.iter().filter(|p| pod::is_plain(p)).collect();
    plain.sort_by(|a, b| {
        pod::created(a).total_cmp(&pod::created(b)).then_with(|| pod::key(a).cmp(&pod::key(b)))
    });
    let mut pods = Vec::new();
    for p in plain {
        let place = match overlay.binding.get(&p.uid().unwrap_or_default()) {
            Some((node, gpus, at)) => Some((node.clone(), gpus.clone(), *at)),
            None => match pod::place(p) {
                pod::PodPlace::Ended => continue,
                pod::PodPlace::Bound(node, gpus) => Some((node, gpus, pod::created(p))),
                pod::PodPlace::Unbound => None,
            },
        };
        let state = match pod::core_job(p, &refs) {
            Err(problem) => JobState::Problem(problem),
            Ok(core) => match place {
                None => match scheduler.submit(core) {
                    Ok(id) => JobState::Waiting(id),
                    Err(e) => {
                        JobState::Problem(JobProblem::Field { field: "pod".into(), message: e.to_string() })
                    }
                },
                Some((node, gpus, at)) => {
                    let Some(node) = fed.node_ids.get(&node).copied() else { continue };
                    let mask = gpu_mask(&gpus);
                    let spec = core.gang.tasks[0];
                    let placement = Placement { tasks: vec![TaskPlacement { node, gpus: mask, spec }] };
                    let n = &fed.cluster.nodes[node as usize];
                    let model = n.gpus.first().map(|g| g.model).filter(|_| mask != 0);
                    match scheduler.adopt(core, placement, n.pool, model, at, now) {
                        Ok(id) => JobState::Placed(id),
                        Err(e) => {
                            tracing::warn!(pod = %pod::key(p), error = %e, "a bound pod does not fit its node");
                            continue;
                        }
                    }
                }
            },
        };
        if let JobState::Waiting(id) | JobState::Placed(id) = state {
            debug_assert_eq!(id as usize, by_core.len());
            by_core.push(Owner::Pod(pods.len()));
        }
        pods.push(TrackedPod { pod: p.clone(), state });
    }
    Ok(World {
        scheduler,
        federation: fed,
        queues: book.ids,
        invalid_queues: book.invalid,
        queue_namespaces: namespaces,
        jobs: tracked,
        pods,
        by_core,
    })
}

/// Whether the pods of a placement ended: `Some(true)` when one failed, `Some(false)` when all succeeded.
fn ended(p: &ApiPlacement, pods: &PodCounts) -> Option<bool> {
    if pods.failed > 0 {
        Some(true)
    } else if !p.tasks.is_empty() && pods.succeeded == p.tasks.len() {
        Some(false)
    } else {
        None
    }
}

/// A recorded placement in core terms: task placements, pool and GPU model.
fn core_placement(
    p: &ApiPlacement,
    fed: &Federation,
    job: &haiyun_scheduler::model::Job,
) -> Result<(Placement, u32, Option<u8>), String> {
    let pool =
        fed.pool_names.iter().position(|n| *n == p.pool).ok_or_else(|| format!("pool {} is gone", p.pool))?;
    let model = if p.gpu_model.is_empty() { None } else { fed.cluster.models.lookup(&p.gpu_model) };
    if p.tasks.len() != job.gang.tasks.len() {
        return Err(format!("its placement has {} tasks, the job {}", p.tasks.len(), job.gang.tasks.len()));
    }
    let mut tasks = Vec::with_capacity(p.tasks.len());
    for (t, spec) in p.tasks.iter().zip(&job.gang.tasks) {
        let node =
            *fed.node_ids.get(&t.node).ok_or_else(|| format!("node {} is gone or not usable", t.node))?;
        let gpus = gpu_mask(&t.gpus);
        tasks.push(TaskPlacement { node, gpus, spec: *spec });
    }
    Ok((Placement { tasks }, pool as u32, model))
}

#[cfg(test)]
mod tests;
