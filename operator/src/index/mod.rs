//! The index: Kubernetes objects (Nodes, Pods and Haiyun's CRDs) turned into the core's model. The only place
//! where Kubernetes types become core types.

pub mod cache;
pub mod cluster;
pub mod constraint;
pub mod disruption;
pub mod job;
pub mod node_filter;
pub mod overlay;
pub mod pod;
pub mod queue;
pub mod storage;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use haiyun_api::job::{Failure, JobPhase, Placement as ApiPlacement};
use haiyun_api::{ComputeJob, ComputePool, Dataset, JOB_UID_LABEL, Queue, QuotaRequest, RUN_LABEL, quantity};
use haiyun_scheduler::Placement;
use haiyun_scheduler::model::{Dataset as CoreDataset, GpuModels, JobId, Time};
use haiyun_scheduler::schedule::{Scheduler, SchedulerConfig};
use haiyun_scheduler::snapshot::TaskPlacement;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

pub use cache::Cache;
pub use cluster::{Claims, Federation, RunPhase, RunRecord, gpu_indices, gpu_mask};
pub use job::{JobProblem, is_terminal};
pub use overlay::{Assumed, Outcome, Overlay, StepKind};
pub use pod::{PodCounts, pod_counts};

/// Every Kubernetes object the operator reads, as last seen.
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
    /// batch/v1 Jobs that name a queue (those whose pods name Haiyun run as gangs).
    pub batch_jobs: Vec<Arc<k8s_openapi::api::batch::v1::Job>>,
    /// DRA ResourceSlices of Haiyun's GPU driver (the GPUs of the nodes it serves).
    pub slices: Vec<Arc<k8s_openapi::api::resource::v1::ResourceSlice>>,
    /// DRA ResourceClaims (those allocated from Haiyun's driver by another scheduler hold its GPUs).
    pub resource_claims: Vec<Arc<k8s_openapi::api::resource::v1::ResourceClaim>>,
    /// Capacity leases federations grant this cluster (Leases in `haiyun-fence` labelled `haiyun.io/grant`).
    pub grants: Vec<Arc<k8s_openapi::api::coordination::v1::Lease>>,
    /// Node fence Leases (labelled `haiyun.io/node-fence`) that the nodes' fence holders renew.
    pub node_fences: Vec<Arc<k8s_openapi::api::coordination::v1::Lease>>,
    /// PersistentVolumes (what a claim is bound to: a dataset's storage is known by the volume's identity).
    pub volumes: Vec<Arc<k8s_openapi::api::core::v1::PersistentVolume>>,
    /// PersistentVolumeClaims.
    pub claims: Vec<Arc<k8s_openapi::api::core::v1::PersistentVolumeClaim>>,
}

/// Why a running job was lost: it holds nothing any more and ends as Failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Loss {
    /// Its backend answers but no longer lists the run: it ended while the operator could not see it. Running it
    /// again could do the work twice.
    #[error(
        "its run ended while the operator could not see it (its pool no longer lists it); its outcome is unknown"
    )]
    Forgotten,
    /// Its recorded placement no longer fits the federation (a node or pool left).
    #[error("{0}")]
    Misplaced(String),
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
    /// It can no longer run where it was placed, and is not run again: it ends as Failed.
    Lost(Loss),
    /// A node it runs on is gone for good (deleted or fenced): it is evicted and placed again, as a new run.
    NodeLost(String),
    /// Its pods ended (all succeeded, or one failed); it holds nothing any more.
    Ended {
        /// Why its run failed, when a task failed.
        failure: Option<Failure>,
    },
    /// Its last run failed and it waits out its backoff before it runs again (why, and until when).
    Backoff {
        /// Why its last run failed.
        why: String,
        /// When it may run again (unix seconds).
        until: Time,
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
    /// A pod of its run was taken away and is not confirmed gone yet: it keeps its place and is not re-made.
    pub disrupted: Option<String>,
}

/// A plain pod and where it stands.
#[derive(Debug, Clone)]
pub struct TrackedPod {
    /// The pod.
    pub pod: Arc<Pod>,
    /// Where it stands (never `Ended` or `Lost`: those are left out).
    pub state: JobState,
    /// Whether its place is kept for it, not yet bound (the pods it replaces are still leaving).
    pub held: bool,
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

/// The job's placement: as this operator assumed it, else as its status records it (when admitted or running).
pub fn placement_of<'a>(
    cj: &'a ComputeJob,
    overlay: &'a Overlay,
) -> Option<(&'a ApiPlacement, Option<Time>)> {
    let uid = cj.metadata.uid.as_deref().unwrap_or_default();
    if let Some(a) = overlay.assumed.get(uid) {
        return Some((&a.placement, Some(a.started)));
    }
    // The evicted run's placement is not the job's any more (a later run's is).
    if overlay.evicting.get(uid).is_some_and(|run| cj.run() <= *run) {
        return None;
    }
    let st = cj.status.as_ref()?;
    matches!(st.phase, JobPhase::Admitted | JobPhase::Running).then_some(())?;
    st.placement.as_ref().map(|p| (p, job::started(cj)))
}

/// What the placements of running jobs (but those in `held`) and bound plain pods hold.
fn claims_of(objects: &Objects, overlay: &Overlay, held: &HashSet<String>) -> Claims {
    let mut claims = Claims::default();
    // The runs of placed batch/v1 Jobs: their pods have their Job controller's names, not the placement's.
    let mut batch_runs: HashMap<String, String> = HashMap::new();
    for cj in &objects.jobs {
        let uid = cj.uid().unwrap_or_default();
        if job::is_terminal(cj) || held.contains(&uid) {
            continue;
        }
        let Some((p, _)) = placement_of(cj, overlay) else { continue };
        let ns = cj.namespace().unwrap_or_default();
        let run = cj.run().to_string();
        for t in &p.tasks {
            claims.hold_in(&p.pool, &t.node, &t.gpus, format!("{ns}/{}", t.pod), Some(run.clone()));
        }
        if cj.spec.batch_job.is_some() {
            batch_runs.insert(uid, run);
        }
    }
    if !batch_runs.is_empty() {
        for p in &objects.pods {
            let run = p.labels().get(JOB_UID_LABEL).and_then(|u| batch_runs.get(u));
            if let Some(run) = run.filter(|r| p.labels().get(RUN_LABEL) == Some(*r)) {
                claims.pods.insert(pod::key(p), Some(run.clone()));
            }
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

/// Makes the pools and nodes from what our placements hold, on a model table whose ids it keeps (the backends
/// contribute them; the index names none).
pub type FederationOf<'a> = dyn Fn(&Claims, GpuModels) -> Federation + 'a;

/// Builds the world at `now` from what the operator sees plus what it assumed, converting only what changed since
/// `cache` was last used. A running job that can no longer be read (its queue or a dataset is gone) is held where it
/// runs: its pods count as used capacity and it keeps its place.
pub fn build(
    objects: &Objects,
    overlay: &Overlay,
    cache: &mut Cache,
    federation: &FederationOf<'_>,
    config: SchedulerConfig,
    now: Time,
) -> Result<World, IndexError> {
    let world = assemble(objects, overlay, cache, federation, &HashSet::new(), config, now)?;
    let held: HashSet<String> = world
        .jobs
        .iter()
        .filter(|t| matches!(t.state, JobState::Held(_)))
        .filter_map(|t| t.job.uid())
        .collect();
    if held.is_empty() {
        Ok(world)
    } else {
        assemble(objects, overlay, cache, federation, &held, config, now)
    }
}

fn assemble(
    objects: &Objects,
    overlay: &Overlay,
    cache: &mut Cache,
    federation: &FederationOf<'_>,
    held: &HashSet<String>,
    config: SchedulerConfig,
    now: Time,
) -> Result<World, IndexError> {
    let mut fed = federation(&claims_of(objects, overlay, held), cache.models());
    let book = cache.book(objects, &mut fed.cluster.models);
    let namespaces: BTreeMap<String, Vec<String>> =
        objects.queues.iter().map(|q| (q.name_any(), q.spec.namespaces.clone())).collect();
    let (datasets, dataset_ids) = datasets(objects, &fed);
    let access: BTreeMap<String, haiyun_api::dataset::DataAccess> =
        objects.datasets.iter().filter_map(|d| Some((d.name_any(), d.spec.access.clone()?))).collect();
    let mut cluster = fed.cluster.clone();
    let preempt_inference: BTreeSet<String> =
        objects.queues.iter().filter(|q| q.spec.preempt_inference).map(|q| q.name_any()).collect();
    let storage = storage::Storage::index(&objects.datasets, &objects.volumes, &objects.claims);
    let refs = job::Refs {
        queues: &book.ids,
        invalid_queues: &book.invalid,
        namespaces: &namespaces,
        datasets: &dataset_ids,
        access: &access,
        scripts: &fed.scripts,
        time_limits: &fed.time_limits,
        preempt_inference: &preempt_inference,
        storage: &storage,
    };
    let mut sorted_jobs: Vec<&Arc<ComputeJob>> = objects.jobs.iter().collect();
    sorted_jobs.sort_by(|a, b| {
        job::submitted(a).total_cmp(&job::submitted(b)).then_with(|| by_key(&a.metadata, &b.metadata))
    });
    // Convert every job first: conversion may intern GPU models the nodes do not have.
    let converted = cache.convert(&sorted_jobs, &refs, &mut cluster);
    let duplicates = constraint::duplicates(&converted);
    let mut selectors = constraint::Selectors::default();
    let converted: Vec<(Arc<ComputeJob>, Converted)> = converted
        .into_iter()
        .map(|(cj, conv)| {
            let conv = match duplicates.get(&cj.uid().unwrap_or_default()) {
                Some(older) if conv.is_some() => Some(Err(JobProblem::Duplicate(older.clone()))),
                _ => constraint::narrow(&cj, conv, &objects.nodes, &fed, &mut cluster, &mut selectors),
            };
            (cj, conv)
        })
        .collect();
    fed.cluster.models = cluster.models.clone();
    let mut scheduler = Scheduler::new(cluster, book.quotas, config, None)?;
    for d in datasets {
        scheduler.add_dataset(d);
    }
    let counts = pod_counts(&objects.pods);
    let runs = pod::pods_by_run(&objects.pods);
    let mut world = World {
        scheduler,
        federation: fed,
        queues: book.ids,
        invalid_queues: book.invalid,
        queue_namespaces: namespaces,
        jobs: Vec::with_capacity(converted.len()),
        pods: Vec::new(),
        by_core: Vec::new(),
    };
    for (cj, conv) in converted {
        world.track_job(cj, conv, overlay, (&counts, &runs), now);
    }
    let refs = job::Refs {
        queues: &world.queues,
        invalid_queues: &world.invalid_queues,
        namespaces: &world.queue_namespaces,
        datasets: &dataset_ids,
        access: &access,
        scripts: &BTreeSet::new(),
        time_limits: &BTreeMap::new(),
        preempt_inference: &BTreeSet::new(),
        storage: &storage,
    };
    let plain = plain_pods(objects, overlay, &refs);
    for (p, core, place) in plain {
        let held = overlay.held.contains(&p.uid().unwrap_or_default());
        world.track_pod(p, core, (place, held), now);
    }
    Ok(world)
}

/// Orders two objects as their `namespace/name` keys ([`job::key`], [`pod::key`]) compare, without making the keys:
/// objects made in one burst share their creation second, so a sort by time compares these keys often.
fn by_key(a: &ObjectMeta, b: &ObjectMeta) -> std::cmp::Ordering {
    fn key(m: &ObjectMeta) -> impl Iterator<Item = u8> + '_ {
        let name = m.name.as_deref().or(m.generate_name.as_deref()).unwrap_or_default();
        let ns = m.namespace.as_deref().unwrap_or_default();
        ns.bytes().chain(std::iter::once(b'/')).chain(name.bytes())
    }
    key(a).cmp(key(b))
}

/// A ComputeJob as the core's job: `None` when it is done, else the job or why it cannot be queued.
pub(crate) type Converted = Option<Result<haiyun_scheduler::model::Job, JobProblem>>;

/// The core's datasets (sorted by name), and their ids by name.
fn datasets(objects: &Objects, fed: &Federation) -> (Vec<CoreDataset>, BTreeMap<String, u32>) {
    let mut datasets: Vec<CoreDataset> = Vec::new();
    let mut ids = BTreeMap::new();
    let mut sorted: Vec<&Arc<Dataset>> = objects.datasets.iter().collect();
    sorted.sort_by_key(|d| d.name_any());
    for d in sorted {
        let replicas = d
            .spec
            .replicas
            .iter()
            .filter_map(|r| fed.pool_names.iter().position(|p| p == r))
            .map(|p| p as u32)
            .collect();
        ids.insert(d.name_any(), datasets.len() as u32);
        datasets.push(CoreDataset {
            name: d.name_any(),
            size_mib: quantity::mib(&d.spec.size).unwrap_or(0),
            classification: cluster::classification(d.spec.classification),
            replicas,
        });
    }
    (datasets, ids)
}

/// Plain pods Haiyun schedules that are not done (oldest first), as core jobs, with where they are bound (node,
/// GPU indices, since when).
#[allow(clippy::type_complexity)]
fn plain_pods(
    objects: &Objects,
    overlay: &Overlay,
    refs: &job::Refs<'_>,
) -> Vec<(Arc<Pod>, Result<haiyun_scheduler::model::Job, JobProblem>, Option<(String, Vec<u32>, Time)>)> {
    // The pods of a batch/v1 Job Haiyun runs as a gang are that gang's, not jobs of their own.
    let gangs: HashSet<String> =
        objects.batch_jobs.iter().filter(|j| pod::managed(j)).filter_map(|j| j.uid()).collect();
    let of_gang = |p: &Pod| p.owner_references().iter().any(|o| o.kind == "Job" && gangs.contains(&o.uid));
    let mut plain: Vec<&Arc<Pod>> = objects.pods.iter().filter(|p| pod::is_plain(p) && !of_gang(p)).collect();
    plain.sort_by(|a, b| {
        pod::created(a).total_cmp(&pod::created(b)).then_with(|| by_key(&a.metadata, &b.metadata))
    });
    let mut out = Vec::with_capacity(plain.len());
    for p in plain {
        let place = match overlay.binding.get(&p.uid().unwrap_or_default()) {
            Some((node, gpus, at)) => Some((node.clone(), gpus.clone(), *at)),
            None => match pod::place(p) {
                pod::PodPlace::Ended => continue,
                pod::PodPlace::Bound(node, gpus) => Some((node, gpus, pod::created(p))),
                pod::PodPlace::Unbound => None,
            },
        };
        out.push((p.clone(), pod::core_job(p, refs), place));
    }
    out
}

impl World {
    /// Adds a ComputeJob: adopted where it runs, submitted if it waits, or set aside with why.
    fn track_job(
        &mut self,
        cj: Arc<ComputeJob>,
        conv: Converted,
        overlay: &Overlay,
        (counts, runs): (&pod::Counts, &pod::Runs),
        now: Time,
    ) {
        // Per-user limits count by who submitted it, or by its namespace where no policy stamps the submitter.
        let user = match cj.spec.submitted_by.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => s.to_string(),
            None => format!("namespace/{}", cj.namespace().unwrap_or_default()),
        };
        let user = self.scheduler.quotas_mut().user_id(&user);
        let conv = conv.map(|c| c.map(|job| haiyun_scheduler::model::Job { user: Some(user), ..job }));
        let fed = &self.federation;
        let run = cj.run();
        let uid = cj.uid().unwrap_or_default();
        let placed = placement_of(&cj, overlay);
        // This run's pods (the pods a check below reads; the others are other jobs').
        let own: &[Arc<Pod>] =
            runs.get(&(uid.clone(), run.to_string())).map(Vec::as_slice).unwrap_or_default();
        // A pool whose backend records runs itself (Slurm): the run as it records it, and whether it answers.
        // A mirrored batch/v1 Job: the Job says when the run ended (its pods fail and are replaced meanwhile).
        let batch_job = cj.spec.batch_job.is_some();
        let recorded = placed.and_then(|(p, _)| {
            if batch_job {
                let ended = fed.runs.get(&(uid.clone(), run)).copied()?;
                return Some((Some(ended), p.tasks.len(), true));
            }
            let reachable = *fed.run_keepers.get(&p.pool)?;
            Some((fed.runs.get(&(uid.clone(), run)).copied(), p.tasks.len(), reachable))
        });
        // Running, yet its reachable backend no longer lists it: it ended while the operator could not see it (Slurm
        // forgets finished jobs after MinJobAge). Running it again could do the work twice: it is lost instead.
        let forgotten = matches!(recorded, Some((None, _, true)))
            && cj.status.as_ref().is_some_and(|s| s.phase == JobPhase::Running);
        let (mut pods, times) = match recorded {
            Some((r, n, _)) => (PodCounts::of_run(r.as_ref(), n), r.and_then(|r| r.times)),
            None => (counts.get(&(uid.clone(), run.to_string())).copied().unwrap_or_default(), None),
        };
        if batch_job && recorded.is_none() {
            // Its Job controller replaces a failed pod (within the Job's backoffLimit): the replacement takes the slot.
            pods.total -= pods.failed;
            pods.bound -= pods.failed.min(pods.bound);
            pods.failed = 0;
        }
        // A pod of a running run that the cluster took away (pods a backend records, or cannot show, have none).
        let unseen = |pool: &str| {
            fed.unavailable.contains_key(pool)
                || fed
                    .pool_names
                    .iter()
                    .position(|n| n == pool)
                    .is_some_and(|i| fed.scripts.contains(&(i as u32)))
        };
        let disrupted = placed
            .filter(|(p, _)| !batch_job && recorded.is_none() && !unseen(&p.pool))
            .and_then(|(p, _)| {
                let was_running = cj.status.as_ref().is_some_and(|s| s.phase == JobPhase::Running);
                disruption::of_run(own, &uid, run, p.tasks.len(), was_running, &fed.fenced)
            });
        let state = match conv {
            None => JobState::Terminal,
            Some(Err(p)) if placed.is_some() => JobState::Held(p),
            Some(Err(p)) => JobState::Problem(p),
            Some(Ok(core)) => match placed {
                Some(_) if forgotten => JobState::Lost(Loss::Forgotten),
                Some(_) if disrupted.as_ref().is_some_and(|d| d.confirmed) => {
                    JobState::NodeLost(disrupted.as_ref().map(|d| d.why.clone()).unwrap_or_default())
                }
                // A failed GPU under it, unless it already succeeded: its pods likely failed with the GPU, which is
                // not the job's own failure.
                Some((p, _)) if ended(p, &pods) != Some(false) && failed_gpu(p, fed).is_some() => {
                    JobState::NodeLost(failed_gpu(p, fed).unwrap_or_default())
                }
                Some((p, _)) if ended(p, &pods).is_some() => {
                    let failure = (pods.failed > 0).then(|| match recorded {
                        Some(_) => pod::batch_failure(),
                        None => pod::failure(own, &uid, run),
                    });
                    JobState::Ended { failure }
                }
                Some((p, _)) if p.tasks.iter().any(|t| fed.fenced.contains_key(&t.node)) => {
                    let node = p.tasks.iter().map(|t| &t.node).find(|n| fed.fenced.contains_key(*n));
                    let node = node.cloned().unwrap_or_default();
                    let why = fed.fenced.get(&node).cloned().unwrap_or_default();
                    JobState::NodeLost(format!("node {node} {why}"))
                }
                Some((p, started)) => match core_placement(p, fed, &core) {
                    Ok((placement, pool, model)) => {
                        let at = started.unwrap_or(now);
                        // An admission the cache does not show yet is still being applied: evicting it now would
                        // queue the eviction behind it, and its pods would be made on GPUs this cycle gives away.
                        let in_flight = overlay.assumed.contains_key(&uid);
                        let core = haiyun_scheduler::model::Job {
                            preemptible: core.preemptible && !in_flight,
                            ..core
                        };
                        match self.scheduler.adopt(core, placement, pool, model, at, now) {
                            Ok(id) => JobState::Placed(id),
                            Err(e) => JobState::Lost(Loss::Misplaced(e.to_string())),
                        }
                    }
                    // Its pool does not answer and its nodes are not known yet: it runs on where it is.
                    Err(e) if fed.unavailable.contains_key(&p.pool) => {
                        JobState::Held(JobProblem::Field { field: "status.placement".into(), message: e })
                    }
                    Err(e) => JobState::Lost(Loss::Misplaced(e)),
                },
                None => match job::backoff(&cj, now) {
                    Some((why, until)) => JobState::Backoff { why, until },
                    None => match self.scheduler.submit(core) {
                        Ok(id) => JobState::Waiting(id),
                        Err(e) => JobState::Problem(JobProblem::Field {
                            field: "spec".into(),
                            message: e.to_string(),
                        }),
                    },
                },
            },
        };
        if let JobState::Waiting(id) | JobState::Placed(id) = state {
            debug_assert_eq!(id as usize, self.by_core.len());
            self.by_core.push(Owner::Job(self.jobs.len()));
        }
        // Runs a backend records have no pods to wait for: their dispatch is checked against its listing instead.
        // A batch/v1 Job's pods come from its Job controller, later than our binding step: never wait on it.
        let bound_here = overlay.bound.contains(&uid) && recorded.is_none() && !batch_job;
        let disrupted = disrupted.filter(|d| !d.confirmed).map(|d| d.why);
        self.jobs.push(Tracked { job: cj, state, pods, bound_here, times, disrupted });
    }

    /// Adds a plain pod: adopted where it is bound, submitted if not, or set aside with why.
    fn track_pod(
        &mut self,
        p: Arc<Pod>,
        core: Result<haiyun_scheduler::model::Job, JobProblem>,
        (place, held): (Option<(String, Vec<u32>, Time)>, bool),
        now: Time,
    ) {
        let state = match core {
            Err(problem) => JobState::Problem(problem),
            Ok(core) => match place {
                None => match self.scheduler.submit(core) {
                    Ok(id) => JobState::Waiting(id),
                    Err(e) => {
                        JobState::Problem(JobProblem::Field { field: "pod".into(), message: e.to_string() })
                    }
                },
                Some((node, gpus, at)) => {
                    let Some(node) = self.federation.node_ids.get(&node).copied() else { return };
                    let mask = gpu_mask(&gpus);
                    let spec = core.gang.tasks[0];
                    let placement = Placement { tasks: vec![TaskPlacement { node, gpus: mask, spec }] };
                    let n = &self.federation.cluster.nodes[node as usize];
                    let model = n.gpus.first().map(|g| g.model).filter(|_| mask != 0);
                    match self.scheduler.adopt(core, placement, n.pool, model, at, now) {
                        Ok(id) => JobState::Placed(id),
                        Err(e) => {
                            tracing::warn!(pod = %pod::key(&p), error = %e, "a bound pod does not fit its node");
                            return;
                        }
                    }
                }
            },
        };
        if let JobState::Waiting(id) | JobState::Placed(id) = state {
            debug_assert_eq!(id as usize, self.by_core.len());
            self.by_core.push(Owner::Pod(self.pods.len()));
        }
        self.pods.push(TrackedPod { pod: p, state, held });
    }
}

/// Why a placement lost a GPU: the first of its GPUs whose agent reports it failed.
fn failed_gpu(p: &ApiPlacement, fed: &Federation) -> Option<String> {
    p.tasks.iter().find_map(|t| {
        t.gpus.iter().find_map(|g| {
            let why = fed.failed_gpus.get(&(t.node.clone(), *g))?;
            Some(format!("GPU {g} on node {} failed ({why})", t.node))
        })
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
mod tests {
    use super::*;

    fn meta(ns: Option<&str>, name: Option<&str>, generate: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            namespace: ns.map(str::to_string),
            name: name.map(str::to_string),
            generate_name: generate.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn objects_compare_as_their_keys_do() {
        // '-' sorts before '/': "a-b/x" < "a/x" as keys, though "a" < "a-b" as namespaces.
        let all = [
            meta(Some("a"), Some("x"), None),
            meta(Some("a-b"), Some("x"), None),
            meta(Some("a"), Some("x-1"), None),
            meta(Some("a"), None, Some("gen-")),
            meta(None, Some("x"), None),
            meta(Some("b"), Some(""), None),
            meta(Some("a"), Some("x"), Some("ignored-")),
        ];
        let key = |m: &ObjectMeta| {
            let pod = Pod { metadata: m.clone(), ..Default::default() };
            pod::key(&pod)
        };
        for a in &all {
            for b in &all {
                assert_eq!(by_key(a, b), key(a).cmp(&key(b)), "{:?} vs {:?}", key(a), key(b));
            }
        }
        assert_eq!(by_key(&all[1], &all[0]), std::cmp::Ordering::Less);
    }
}
