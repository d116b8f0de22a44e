//! One scheduling cycle over the world, and what it asks the shell to do: admit, bind, evict, update status.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use haiyun_api::job::{
    JobPhase, PendingReason as ApiReason, Placement as ApiPlacement, TaskPlacement as ApiTask,
};
use haiyun_api::{ComputeJob, ComputeJobStatus};
use haiyun_scheduler::model::{JobId, Time};
use haiyun_scheduler::placer::RejectionCode;
use haiyun_scheduler::schedule::{PendingReason, Phase, ScheduleError, Scheduler};
use kube::ResourceExt;

use crate::backend::{BackendKind, Orphan};
use crate::index::cluster::Drain;
use crate::index::{JobState, Tracked, TrackedPod, World};
use crate::status::StatusWrite;
use crate::time::rfc3339;
use k8s_openapi::api::batch::v1::Job as BatchJob;
use k8s_openapi::api::core::v1::Pod;

/// Estimated starts closer than this to the recorded one are not written again.
const ESTIMATE_SLACK_S: f64 = 60.0;

/// Something the shell should do.
#[derive(Debug, Clone)]
pub enum Action {
    /// Record the placement in the job's status, then make its work exist through its pool's backend.
    Admit {
        /// The job.
        job: Arc<ComputeJob>,
        /// Where.
        placement: ApiPlacement,
        /// The backend of its pool.
        backend: BackendKind,
        /// Whether to make its work now. Not when a job preempted in the same cycle still runs on its nodes: the
        /// kubelet would refuse pods bound before the victim's leave, so a later cycle binds them.
        dispatch: bool,
    },
    /// Make sure the work of an admitted job exists as its status records it.
    Bind {
        /// The job.
        job: Arc<ComputeJob>,
        /// The backend of its pool.
        backend: BackendKind,
    },
    /// Stop the job's run and put it back in its queue.
    Evict {
        /// The job.
        job: Arc<ComputeJob>,
        /// The backend of its pool.
        backend: BackendKind,
        /// Why, when it is not a preemption: a node of its run was lost.
        lost: Option<String>,
    },
    /// Write the job's status.
    Status {
        /// The job.
        job: Arc<ComputeJob>,
        /// Its new status.
        status: Box<ComputeJobStatus>,
    },
    /// Bind a plain pod, its GPUs in the Binding's annotations.
    BindPod {
        /// The pod.
        pod: Arc<Pod>,
        /// The pool (for the decision log).
        pool: String,
        /// The node.
        node: String,
        /// GPU indices on it.
        gpus: Vec<u32>,
    },
    /// Keep a plain pod's place on a node without binding it yet: pods preempted in this cycle still run there, and
    /// the kubelet would refuse it. A later cycle binds it once they are gone.
    HoldPod {
        /// The pod.
        pod: Arc<Pod>,
        /// The node.
        node: String,
        /// GPU indices on it.
        gpus: Vec<u32>,
    },
    /// Delete a plain pod that was preempted (its owner makes it again).
    EvictPod {
        /// The pod.
        pod: Arc<Pod>,
    },
    /// Delete or cancel what runs in a pool without a placement.
    Collect {
        /// The backend that runs it.
        backend: BackendKind,
        /// What.
        orphan: Orphan,
    },
    /// A ComputeJob being deleted: release what it holds in the backend, then let it go (remove the finalizer).
    Release {
        /// The job.
        job: Arc<ComputeJob>,
        /// The backend whose finalizer it carries.
        backend: BackendKind,
    },
    /// Say on a plain pod why it waits (its PodScheduled condition).
    PodWaits {
        /// The pod.
        pod: Arc<Pod>,
        /// Why.
        message: String,
    },
    /// Write a Queue's, ComputePool's or QuotaRequest's status.
    WriteStatus(StatusWrite),
    /// Make the ComputeJob that stands for a batch/v1 Job in its queue (or say on the Job why it cannot run as one
    /// gang).
    Mirror {
        /// The Job.
        job: Arc<BatchJob>,
    },
}

impl Action {
    /// The uid of the object it concerns (its job's for an orphan; `Kind/name` for a status write): actions on
    /// one object run in order, one at a time.
    pub fn uid(&self) -> String {
        match self {
            Action::Admit { job, .. }
            | Action::Bind { job, .. }
            | Action::Evict { job, .. }
            | Action::Release { job, .. }
            | Action::Status { job, .. } => job.uid().unwrap_or_default(),
            Action::BindPod { pod, .. }
            | Action::HoldPod { pod, .. }
            | Action::EvictPod { pod }
            | Action::PodWaits { pod, .. } => pod.uid().unwrap_or_default(),
            Action::Collect { orphan, .. } => orphan.lock().to_string(),
            Action::WriteStatus(w) => w.key(),
            Action::Mirror { job } => job.uid().unwrap_or_default(),
        }
    }

    /// Its kind, as the `action` label of `haiyun_actions_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Admit { .. } => "admit",
            Action::Bind { .. } => "bind",
            Action::Evict { .. } => "evict",
            Action::Status { .. } => "status",
            Action::BindPod { .. } => "bind_pod",
            Action::HoldPod { .. } => "hold_pod",
            Action::EvictPod { .. } => "evict_pod",
            Action::Collect { .. } => "collect",
            Action::Release { .. } => "release",
            Action::PodWaits { .. } => "pod_waits",
            Action::WriteStatus(_) => "write_status",
            Action::Mirror { .. } => "mirror",
        }
    }

    /// `namespace/name` of the object it concerns.
    pub fn key(&self) -> String {
        match self {
            Action::Admit { job, .. }
            | Action::Bind { job, .. }
            | Action::Evict { job, .. }
            | Action::Release { job, .. }
            | Action::Status { job, .. } => crate::index::job::key(job),
            Action::BindPod { pod, .. }
            | Action::HoldPod { pod, .. }
            | Action::EvictPod { pod }
            | Action::PodWaits { pod, .. } => crate::index::pod::key(pod),
            Action::Collect { orphan: Orphan::Pods { namespace, uid }, .. } => {
                format!("{namespace}/pods-of-{uid}")
            }
            Action::Collect { orphan: Orphan::Stranded { cluster, namespace, pod, .. }, .. } => {
                format!(
                    "{}{namespace}/stranded-{pod}",
                    cluster.as_ref().map(|c| format!("{c}/")).unwrap_or_default()
                )
            }
            Action::Collect { orphan: Orphan::Remote { pool, namespace, uid, run }, .. } => {
                format!("{pool}/{namespace}/pods-of-{uid}-{}", run.as_deref().unwrap_or("all"))
            }
            Action::Collect { orphan: Orphan::Batch { pool, id, .. }, .. } => {
                format!("{pool}/batch-job-{id}")
            }
            Action::WriteStatus(w) => w.key(),
            Action::Mirror { job } => {
                format!("{}/job-{}", job.namespace().unwrap_or_default(), job.name_any())
            }
        }
    }
}

/// Runs a cycle at `now` and returns what to apply, in order; `kinds` gives each pool's backend.
pub fn plan(
    world: &mut World,
    kinds: &BTreeMap<String, BackendKind>,
    now: Time,
) -> Result<Vec<Action>, ScheduleError> {
    let kind = |job: &ComputeJob, placement: Option<&ApiPlacement>| {
        let pool = placement.or_else(|| job.status.as_ref().and_then(|s| s.placement.as_ref()));
        pool.and_then(|p| kinds.get(&p.pool).copied()).unwrap_or(BackendKind::Kubernetes)
    };
    let cycle = world.scheduler.cycle(now)?;
    let preempted: std::collections::HashSet<JobId> = cycle.preempted.iter().copied().collect();
    // A cycle that evicts a lost job starts and preempts nothing: the lost job's pods on live nodes still hold their
    // GPUs until the next cycle, which counts them as terminating, while the core here already saw them free.
    let losing = world.jobs.iter().any(|t| {
        matches!(t.state, JobState::NodeLost(_))
            && t.job
                .status
                .as_ref()
                .is_some_and(|s| matches!(s.phase, JobPhase::Admitted | JobPhase::Running))
    });
    // The nodes this cycle's victims (jobs and plain pods) run on: what is placed there starts once their pods are
    // gone.
    let victim_pods =
        world.pods.iter().filter(|t| matches!(t.state, JobState::Placed(id) if preempted.contains(&id)));
    let vacating: std::collections::HashSet<&str> = world
        .jobs
        .iter()
        .filter(|t| matches!(t.state, JobState::Placed(id) if preempted.contains(&id)))
        .filter_map(|t| t.job.status.as_ref()?.placement.as_ref())
        .flat_map(|p| p.tasks.iter().map(|t| t.node.as_str()))
        .chain(victim_pods.filter_map(|t| t.pod.spec.as_ref()?.node_name.as_deref()))
        .collect();
    let mut out = Vec::new();
    let empty = ComputeJobStatus::default();
    for t in &world.jobs {
        // Read in place: a job whose status stays as it is (most, each cycle) costs no copy of it.
        let old = t.job.status.as_ref().unwrap_or(&empty);
        match &t.state {
            JobState::Terminal => {}
            JobState::Held(p) => {
                // It runs on; say what is wrong without touching its place.
                let mut st = old.clone();
                st.pending_reasons = vec![ApiReason {
                    phase: p.phase().into(),
                    message: format!("running, but {p}"),
                    ..Default::default()
                }];
                push_status(&mut out, t, st, now);
            }
            JobState::Problem(p) => {
                let mut st = old.clone();
                st.phase = JobPhase::Pending;
                st.pending_reasons =
                    vec![ApiReason { phase: p.phase().into(), message: p.to_string(), ..Default::default() }];
                st.hints.clear();
                st.estimated_start = None;
                push_status(&mut out, t, st, now);
            }
            JobState::Ended { failure } => {
                let mut st = old.clone();
                if !matches!(old.phase, JobPhase::Admitted | JobPhase::Running) {
                    continue; // the cache has not caught up with our own admission yet
                }
                if let Some(f) = failure {
                    let mut f = f.clone();
                    f.time = rfc3339(now);
                    st.last_failure = Some(f);
                    if crate::status::may_restart(&t.job) {
                        push_status(&mut out, t, crate::status::restarting(st, now), now);
                        continue;
                    }
                }
                st.phase = if failure.is_some() { JobPhase::Failed } else { JobPhase::Succeeded };
                match t.times {
                    // The backend (Slurm) knows when the job really ran.
                    Some((start, end)) if end >= start => {
                        st.start_time = Some(rfc3339(start));
                        finish(&mut st, end);
                    }
                    _ => finish(&mut st, now),
                }
                push_status(&mut out, t, st, now);
            }
            JobState::NodeLost(why) if matches!(old.phase, JobPhase::Admitted | JobPhase::Running) => {
                out.push(Action::Evict {
                    job: t.job.clone(),
                    backend: kind(&t.job, None),
                    lost: Some(why.clone()),
                });
            }
            JobState::NodeLost(_) => {} // the cache has not caught up with our own admission yet
            JobState::Backoff { why, until } => {
                let mut st = old.clone();
                st.phase = JobPhase::Queued;
                st.pending_reasons = vec![ApiReason {
                    phase: "restart".into(),
                    message: format!("restarting after a failure ({why}); not before {}", rfc3339(*until)),
                    ..Default::default()
                }];
                st.estimated_start = Some(rfc3339(*until));
                push_status(&mut out, t, st, now);
            }
            JobState::Lost(why) => {
                let mut st = old.clone();
                st.phase = JobPhase::Failed;
                finish(&mut st, now);
                st.pending_reasons = vec![ApiReason {
                    phase: "placement".into(),
                    message: format!("lost: {why}"),
                    ..Default::default()
                }];
                push_status(&mut out, t, st, now);
            }
            JobState::Waiting(_) if matches!(old.phase, JobPhase::Admitted | JobPhase::Running) => {
                // Being evicted: the applier writes its status once its pods are gone.
            }
            JobState::Waiting(id) => {
                let s = &world.scheduler;
                match s.status(*id).map(|x| x.phase) {
                    Some(Phase::Running) if t.job.metadata.deletion_timestamp.is_some() => {} // going away
                    Some(Phase::Running) if losing => {} // the next cycle decides again
                    Some(Phase::Running) => {
                        let placement = api_placement(s, *id, &t.job);
                        let backend = kind(&t.job, Some(&placement));
                        // Only kubelets refuse pods bound too early; Slurm queues the job, the simulator frees at once.
                        let kubelets =
                            matches!(backend, BackendKind::Kubernetes | BackendKind::RemoteKubernetes);
                        let dispatch =
                            !kubelets || !placement.tasks.iter().any(|t| vacating.contains(t.node.as_str()));
                        out.push(Action::Admit { job: t.job.clone(), placement, backend, dispatch })
                    }
                    _ => push_status(&mut out, t, waiting_status(s, *id, old), now),
                }
            }
            JobState::Placed(id) => {
                let backend = kind(&t.job, None);
                if preempted.contains(id) {
                    if !losing {
                        out.push(Action::Evict { job: t.job.clone(), backend, lost: None });
                    }
                    continue;
                }
                placed(&mut out, t, old, (backend, &world.federation.draining), now);
            }
        }
    }
    for t in world.pods.iter().filter(|_| !losing) {
        pod_actions(&mut out, t, (&world.scheduler, &world.federation.draining), &preempted, &vacating);
    }
    Ok(out)
}

/// What a plain pod needs: binding (held while the pods it replaces still hold its node's GPUs), eviction, or word
/// of why it waits.
fn pod_actions(
    out: &mut Vec<Action>,
    t: &TrackedPod,
    (s, draining): (&Scheduler, &HashMap<String, Drain>),
    preempted: &std::collections::HashSet<JobId>,
    vacating: &std::collections::HashSet<&str>,
) {
    let place = |id: JobId| {
        let (p, pool, _) = s.placement(id)?;
        let task = p.tasks.first()?;
        let cluster = s.snapshot().cluster();
        let node = cluster.nodes[task.node as usize].name.clone();
        let pool = cluster.pools.get(pool as usize).map(|p| p.name.clone()).unwrap_or_default();
        Some((pool, node, crate::index::gpu_indices(task.gpus)))
    };
    let message = match &t.state {
        JobState::Problem(p) => format!("{}: {p}", p.phase()),
        JobState::Waiting(id) => match s.status(*id).map(|x| x.phase) {
            Some(Phase::Running) => {
                let Some((pool, node, gpus)) = place(*id) else { return };
                out.push(if vacating.contains(node.as_str()) {
                    Action::HoldPod { pod: t.pod.clone(), node, gpus }
                } else {
                    Action::BindPod { pod: t.pod.clone(), pool, node, gpus }
                });
                return;
            }
            _ => s.explain(*id).into_iter().next().unwrap_or_else(|| "waiting in its queue".into()),
        },
        JobState::Placed(id) if preempted.contains(id) => {
            out.push(Action::EvictPod { pod: t.pod.clone() });
            return;
        }
        JobState::Placed(id) if t.held => {
            let Some((pool, node, gpus)) = place(*id) else { return };
            let uid = t.pod.uid().unwrap_or_default();
            match draining.get(&node).and_then(|d| d.blocker(&uid)) {
                Some(pod) => format!("placed on {node}; bound once pod {pod} leaves it"),
                None => {
                    out.push(Action::BindPod { pod: t.pod.clone(), pool, node, gpus });
                    return;
                }
            }
        }
        _ => return,
    };
    let current = t
        .pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
        .and_then(|c| c.message.clone());
    if current.as_deref() != Some(message.as_str()) {
        out.push(Action::PodWaits { pod: t.pod.clone(), message });
    }
}

/// What an admitted or running job needs: word that it runs, or its pods made and bound (once no pod that is not
/// its own holds the GPUs of its nodes in `draining`).
fn placed(
    out: &mut Vec<Action>,
    t: &Tracked,
    old: &ComputeJobStatus,
    (backend, draining): (BackendKind, &HashMap<String, Drain>),
    now: Time,
) {
    if !matches!(old.phase, JobPhase::Admitted | JobPhase::Running) {
        return; // our own admission is not in the cache yet
    }
    let tasks = old.placement.as_ref().map_or(0, |p| p.tasks.len());
    let pods = t.pods;
    if tasks > 0 && pods.running == tasks && old.phase == JobPhase::Admitted {
        let mut st = old.clone();
        st.phase = JobPhase::Running;
        st.pending_reasons.clear();
        push_status(out, t, st, now);
    } else if (pods.bound < tasks || pods.total < tasks) && !t.bound_here && t.disrupted.is_none() {
        // Admitted and still binding (after a restart), or running and a pod went missing: make them again.
        let uid = t.job.uid().unwrap_or_default();
        let nodes = old.placement.iter().flat_map(|p| p.tasks.iter().map(|t| t.node.as_str()));
        let blocked = nodes.filter_map(|n| Some((n, draining.get(n)?.blocker(&uid)?))).next();
        match blocked {
            Some((node, pod)) => {
                let mut st = old.clone();
                st.pending_reasons = vec![ApiReason {
                    phase: "binding".into(),
                    message: format!("admitted; its pods are bound on {node} once pod {pod} leaves it"),
                    ..Default::default()
                }];
                push_status(out, t, st, now);
            }
            None => out.push(Action::Bind { job: t.job.clone(), backend }),
        }
    }
}

/// Completion time and GPU-hours of a job that ended at `now`.
fn finish(st: &mut ComputeJobStatus, now: Time) {
    st.completion_time.get_or_insert_with(|| rfc3339(now));
    let gpus: f64 = st
        .placement
        .as_ref()
        .map_or(0.0, |p| p.tasks.iter().map(|t| t.gpus.len() as f64 * f64::from(t.gpu_milli) / 1000.0).sum());
    let started = st.start_time.as_deref().and_then(crate::time::parse).unwrap_or(now);
    st.gpu_hours = (gpus * (now - started).max(0.0) / 3600.0 * 1000.0).round() / 1000.0;
}

fn push_status(out: &mut Vec<Action>, t: &Tracked, mut st: ComputeJobStatus, now: Time) {
    st.observed_generation = t.job.metadata.generation.unwrap_or(0);
    st.derive_conditions(st.observed_generation, &rfc3339(now));
    let same = match t.job.status.as_ref() {
        Some(old) => same_status(old, &mut st),
        None => same_status(&ComputeJobStatus::default(), &mut st),
    };
    if !same {
        out.push(Action::Status { job: t.job.clone(), status: Box::new(st) });
    }
}

/// Whether two statuses differ only by an estimate that moved less than a minute (`b` is compared in place, with
/// `a`'s estimate for the moment, and left as it was).
fn same_status(a: &ComputeJobStatus, b: &mut ComputeJobStatus) -> bool {
    let est = |s: &ComputeJobStatus| s.estimated_start.as_deref().and_then(crate::time::parse);
    let close = match (est(a), est(b)) {
        (Some(x), Some(y)) => (x - y).abs() < ESTIMATE_SLACK_S,
        (None, None) => true,
        _ => false,
    };
    if !close {
        return false;
    }
    let own = std::mem::replace(&mut b.estimated_start, a.estimated_start.clone());
    let same = *a == *b;
    b.estimated_start = own;
    same
}

/// A waiting job's status: its reasons, hints and estimated start.
fn waiting_status(s: &Scheduler, id: JobId, old: &ComputeJobStatus) -> ComputeJobStatus {
    let mut st = old.clone();
    if st.phase != JobPhase::Preempted {
        st.phase = JobPhase::Queued;
    }
    st.placement = None;
    let Some(core) = s.status(id) else { return st };
    // The same reason can come from several pools of one model (one quota for both): it is said once.
    st.pending_reasons = Vec::new();
    for r in core.reasons.iter().map(|r| reason(s, r)) {
        if !st.pending_reasons.contains(&r) {
            st.pending_reasons.push(r);
        }
    }
    st.hints = Vec::new();
    for h in core.hints.iter().map(|h| s.hint_line(h)) {
        if !st.hints.contains(&h) {
            st.hints.push(h);
        }
    }
    st.estimated_start = core.estimated_start.filter(|t| t.is_finite()).map(rfc3339);
    st
}

/// A core reason as the API's structured reason.
fn reason(s: &Scheduler, r: &PendingReason) -> ApiReason {
    let models = &s.snapshot().cluster().models;
    let mut out = ApiReason { message: s.reason_line(r), ..Default::default() };
    out.phase = match r {
        PendingReason::Quota { shortfall: q, .. } => {
            out.flavor = Some(q.flavor.describe(models));
            out.needed = Some(q.flavor.amount(q.needed));
            out.left = Some(q.flavor.amount(q.left));
            out.cohort_can_lend = Some(q.flavor.amount(q.cohort_can_lend));
            "quota"
        }
        PendingReason::Reservation { flavor, needed, free_now, .. } => {
            out.flavor = Some(flavor.describe(models));
            out.needed = Some(flavor.amount(*needed));
            out.left = Some(flavor.amount(*free_now));
            "reservation"
        }
        PendingReason::Placement { rejection, .. } => match rejection.code {
            RejectionCode::Unschedulable => "placement",
            RejectionCode::Unresolvable => "placement-unresolvable",
        },
        PendingReason::FasterLater { .. } => "faster-later",
        PendingReason::DataClearance { .. } => "data-clearance",
        PendingReason::NoAllowedPool { .. } => "placement",
        PendingReason::NoUsableModel => "placement",
        PendingReason::BeyondBackfillDepth => "fairness",
    }
    .into();
    out
}

/// Pod name of task `i` of a job: `<job>-<group>-<replica>`.
pub fn pod_names(job: &ComputeJob) -> Vec<String> {
    let name = job.name_any();
    job.spec
        .task_groups
        .iter()
        .flat_map(|g| (0..g.replicas).map(move |r| (g.name.clone(), r)))
        .map(|(g, r)| format!("{name}-{g}-{r}"))
        .collect()
}

/// The API placement of a job the cycle started.
fn api_placement(s: &Scheduler, id: JobId, job: &ComputeJob) -> ApiPlacement {
    let cluster = s.snapshot().cluster();
    let Some((p, pool, model)) = s.placement(id) else { return ApiPlacement::default() };
    let names = pod_names(job);
    let tasks = p
        .tasks
        .iter()
        .zip(names)
        .map(|(t, pod)| ApiTask {
            pod,
            node: cluster.nodes[t.node as usize].name.clone(),
            gpus: crate::index::gpu_indices(t.gpus),
            gpu_milli: if t.spec.gpus == 0 { 0 } else { t.spec.gpu_milli },
            gpu_uuids: Vec::new(),
        })
        .collect();
    ApiPlacement {
        pool: cluster.pools.get(pool as usize).map(|p| p.name.clone()).unwrap_or_default(),
        gpu_model: model.map(|m| cluster.models.name(m).to_string()).unwrap_or_default(),
        tasks,
    }
}
