//! The scheduling loop: owns the core's inputs and the overlay of its own decisions, runs a cycle on every
//! change and on a timer, and hands actions to the applier. It never waits on the API server.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use haiyun_api::job::JobPhase;
use haiyun_api::{
    ComputePool, ComputePoolStatus, JOB_UID_LABEL, Queue, QueueStatus, QuotaRequest, QuotaRequestStatus,
};
use haiyun_scheduler::schedule::SchedulerConfig;
use kube::api::{Api, Patch, PatchParams};
use kube::core::object::HasStatus;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::apply::Applier;
use crate::backend::kubernetes::MANAGER;
use crate::backend::slurm::SlurmPools;
use crate::decision::{Decision, DecisionLog};
use crate::index::{self, Assumed, Objects, Overlay, World};
use crate::metrics::{Gauges, Metrics};
use crate::plan::{self, Action};
use crate::report;
use crate::time::{now, rfc3339};
use crate::watch::Stores;

/// The loop's settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Core settings.
    pub scheduler: SchedulerConfig,
    /// Cycle at least this often.
    pub interval: Duration,
    /// Wait this long after a change to batch the next ones.
    pub debounce: Duration,
}

/// The scheduling loop.
#[derive(Debug)]
pub struct Engine {
    stores: Stores,
    applier: Applier,
    config: EngineConfig,
    overlay: Overlay,
    log: DecisionLog,
    metrics: Arc<Metrics>,
    /// Jobs whose last status we logged as rejected, with the message.
    rejected: BTreeMap<String, String>,
    outcomes: tokio::sync::mpsc::UnboundedReceiver<crate::index::Outcome>,
    /// Jobs whose finish is logged.
    finished: HashSet<String>,
    /// What the node agents report, when the telemetry server runs.
    fleet: Option<Arc<crate::fleet::Fleet>>,
    /// The Slurm pools.
    slurm: SlurmPools,
    /// Where each cycle's dashboard snapshot goes.
    board: Option<crate::dashboard::Board>,
}

impl Engine {
    /// A loop over `stores`, applying through `applier`.
    pub fn new(
        stores: Stores,
        applier: Applier,
        config: EngineConfig,
        log: DecisionLog,
        metrics: Arc<Metrics>,
        outcomes: tokio::sync::mpsc::UnboundedReceiver<crate::index::Outcome>,
    ) -> Self {
        Engine {
            stores,
            applier,
            config,
            overlay: Overlay::default(),
            log,
            metrics,
            rejected: BTreeMap::new(),
            outcomes,
            finished: HashSet::new(),
            fleet: None,
            slurm: SlurmPools::default(),
            board: None,
        }
    }

    /// Publishes each cycle's dashboard snapshot to `board`.
    pub fn with_board(mut self, board: crate::dashboard::Board) -> Self {
        self.board = Some(board);
        self
    }

    /// Reads Slurm pools from these clients.
    pub fn with_slurm(mut self, slurm: SlurmPools) -> Self {
        self.slurm = slurm;
        self
    }

    /// Takes GPU health from the node agents' reports.
    pub fn with_fleet(mut self, fleet: Arc<crate::fleet::Fleet>) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// Runs cycles until the process ends.
    pub async fn run(mut self) {
        loop {
            let _ = tokio::time::timeout(self.config.interval, self.stores.changed.notified()).await;
            tokio::time::sleep(self.config.debounce).await;
            self.cycle_once();
        }
    }

    /// One cycle: build the world, plan, log and hand out the actions.
    pub fn cycle_once(&mut self) {
        let span = tracing::info_span!(
            "scheduling_cycle",
            jobs = tracing::field::Empty,
            actions = tracing::field::Empty
        );
        let _entered = span.enter();
        let mut objects = self.stores.objects();
        if let Some(f) = &self.fleet {
            objects.fleet = Arc::new(f.view());
        }
        objects.slurm = Arc::new(self.slurm.views());
        while let Ok(o) = self.outcomes.try_recv() {
            self.overlay.record(&o);
        }
        self.overlay.settle(&objects.jobs, &objects.pods);
        let live: HashSet<String> = objects.jobs.iter().filter_map(|j| j.uid()).collect();
        let keys: HashSet<String> = objects.jobs.iter().map(|j| index::job::key(j)).collect();
        self.finished.retain(|u| live.contains(u));
        self.applier.forget_gone(&live);
        self.rejected.retain(|k, _| keys.contains(k));
        let t = now();
        let started = Instant::now();
        let mut world = match index::build(&objects, &self.overlay, self.config.scheduler, t) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "failed to build the world; retrying next cycle");
                return;
            }
        };
        let actions = match plan::plan(&mut world, t) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "scheduling cycle failed (a broken invariant); retrying next cycle");
                return;
            }
        };
        let counts = report::job_counts(&world);
        let pools = report::pools(&world, t);
        self.metrics.observe_cycle(started.elapsed().as_secs_f64(), gauges(&counts, &pools));
        span.record("jobs", world.jobs.len() + world.pods.len());
        span.record("actions", actions.len());
        self.dispatch(actions, t);
        self.collect_garbage(&objects);
        self.report(&world, &objects, &counts, pools, t);
    }

    fn dispatch(&mut self, actions: Vec<Action>, t: f64) {
        let stamp = rfc3339(t);
        let mut evictions = Vec::new();
        let mut rest = Vec::new();
        for a in actions {
            let uid = a.uid();
            match &a {
                Action::BindPod { pod, pool, node, gpus } => {
                    let mut line = crate::decision::Decision::for_pod("place", pod, stamp.clone());
                    line.pool.clone_from(pool);
                    line.tasks = vec![crate::decision::TaskLine::of_pod(pod, node, gpus)];
                    self.log.write(&line);
                    self.overlay.binding.insert(uid, (node.clone(), gpus.clone(), t));
                    rest.push(a);
                }
                Action::EvictPod { pod } => {
                    self.log.write(&crate::decision::Decision::for_pod("preempt", pod, stamp.clone()));
                    evictions.push(self.applier.spawn(a, None));
                }
                Action::PodWaits { .. }
                | Action::Collect { .. }
                | Action::CancelSlurm { .. }
                | Action::Release { .. } => {
                    if !self.applier.busy(&uid) {
                        rest.push(a);
                    }
                }
                Action::Evict { job } => {
                    let placement = job.status.as_ref().and_then(|s| s.placement.as_ref());
                    self.log.write(&Decision::new("preempt", job, placement, stamp.clone()));
                    self.overlay.assumed.remove(&uid);
                    self.overlay.evicting.insert(uid);
                    evictions.push(self.applier.spawn(a, None));
                }
                Action::Admit { job, placement } => {
                    self.log.write(&Decision::new("place", job, Some(placement), stamp.clone()));
                    self.overlay.assumed.insert(uid, Assumed { placement: placement.clone(), started: t });
                    rest.push(a);
                }
                Action::Status { job, status } => {
                    let key = index::job::key(job);
                    let old = job.status.as_ref().map(|s| s.phase);
                    let ended = matches!(status.phase, JobPhase::Succeeded | JobPhase::Failed);
                    if ended && old != Some(status.phase) && self.finished.insert(uid.clone()) {
                        let d = Decision::new("finish", job, status.placement.as_ref(), stamp.clone());
                        self.log.write(&d.detail(format!("{:?}", status.phase)));
                    }
                    if status.phase == JobPhase::Pending {
                        let why =
                            status.pending_reasons.first().map(|r| r.message.clone()).unwrap_or_default();
                        if self.rejected.get(&key) != Some(&why) {
                            self.log.write(
                                &Decision::new("reject", job, None, stamp.clone()).detail(why.clone()),
                            );
                            self.rejected.insert(key, why);
                        }
                    }
                    if !self.applier.busy(&uid) {
                        rest.push(a);
                    }
                }
                Action::Bind { .. } => {
                    if !self.applier.busy(&uid) {
                        rest.push(a);
                    }
                }
            }
        }
        let gate = (!evictions.is_empty()).then(|| Applier::gate(evictions));
        for a in rest {
            let g =
                matches!(a, Action::Admit { .. } | Action::BindPod { .. }).then(|| gate.clone()).flatten();
            self.applier.spawn(a, g);
        }
    }

    /// Deletes running pods of jobs that are gone, ended (a failed job's other pods) or hold no placement (left
    /// by an eviction); ended pods stay for their logs.
    fn collect_garbage(&self, objects: &Objects) {
        let placed: HashSet<String> = objects
            .jobs
            .iter()
            .filter(|j| {
                index::placement_of(j, &self.overlay).is_some()
                    || self.applier.busy(&j.uid().unwrap_or_default())
            })
            .filter_map(|j| j.uid())
            .collect();
        let mut orphans: BTreeMap<(String, String), ()> = BTreeMap::new();
        for p in &objects.pods {
            let Some(uid) = p.labels().get(JOB_UID_LABEL) else { continue };
            let holds = crate::index::cluster::holds_resources(p);
            if placed.contains(uid) || !holds || p.metadata.deletion_timestamp.is_some() {
                continue;
            }
            orphans.insert((p.namespace().unwrap_or_default(), uid.clone()), ());
        }
        for (ns, uid) in orphans.into_keys() {
            if !self.applier.busy(&uid) {
                self.applier.spawn(Action::Collect { namespace: ns, uid }, None);
            }
        }
        self.collect_slurm(objects, &placed);
        for j in &objects.jobs {
            let ours = j.finalizers().iter().any(|f| f == crate::backend::slurm::FINALIZER);
            if ours
                && j.metadata.deletion_timestamp.is_some()
                && !self.applier.busy(&j.uid().unwrap_or_default())
            {
                self.applier.spawn(Action::Release { job: j.clone() }, None);
            }
        }
    }

    /// Cancels Slurm jobs of ours whose ComputeJob is gone or holds no placement, or that belong to an earlier run.
    /// A key for a later run than the cache shows is our own fresh submission: it is left alone.
    fn collect_slurm(&self, objects: &Objects, placed: &HashSet<String>) {
        let runs: HashMap<String, u32> = objects
            .jobs
            .iter()
            .filter_map(|j| Some((j.uid()?, j.status.as_ref().map_or(0, |s| s.preemptions))))
            .collect();
        for (pool, view) in objects.slurm.iter() {
            for j in view.extra.iter().filter(|j| crate::index::slurm::active(j)) {
                let action = Action::CancelSlurm { pool: pool.clone(), id: j.id, key: j.comment.clone() };
                self.applier.spawn(action, None);
            }
            for (key, job) in &view.jobs {
                let Some((uid, run)) = crate::backend::slurm::watch::parse_key(key) else { continue };
                if !crate::index::slurm::active(job) || self.applier.busy(uid) {
                    continue;
                }
                let current = runs.get(uid).copied();
                let keep = placed.contains(uid) && current.is_some_and(|c| run >= c);
                if !keep {
                    let action = Action::CancelSlurm { pool: pool.clone(), id: job.id, key: key.clone() };
                    self.applier.spawn(action, None);
                }
            }
        }
    }

    /// Writes the status of queues, pools and quota requests where it changed.
    fn report(
        &self,
        world: &World,
        objects: &Objects,
        counts: &report::JobCounts,
        pools: BTreeMap<String, ComputePoolStatus>,
        t: f64,
    ) {
        let gens: BTreeMap<String, i64> =
            objects.queues.iter().map(|q| (q.name_any(), q.metadata.generation.unwrap_or(0))).collect();
        let client = self.applier.client().clone();
        let queues = report::queues(world, counts, t, &gens);
        let requests = report::requests(world, &objects.requests, t);
        if let Some(board) = &self.board {
            let snap = crate::dashboard::snapshot(
                world,
                objects,
                &pools,
                &queues,
                &requests,
                &objects.fleet,
                rfc3339(t),
            );
            board.send_replace(Arc::new(snap));
        }
        publish::<Queue>(&client, &objects.queues, queues, |c, _| Api::all(c.clone()));
        publish::<ComputePool>(&client, &objects.pools, pools, |c, _| Api::all(c.clone()));
        publish::<QuotaRequest>(&client, &objects.requests, requests, |c, r: &QuotaRequest| {
            Api::namespaced(c.clone(), &r.namespace().unwrap_or_default())
        });
    }
}

/// Keeps a condition's transition time when its status did not change.
fn keep_transitions(old: &[haiyun_api::Condition], new: &mut [haiyun_api::Condition]) {
    for c in new.iter_mut() {
        if let Some(o) = old.iter().find(|o| o.type_ == c.type_ && o.status == c.status) {
            c.last_transition_time.clone_from(&o.last_transition_time);
            if o.reason == c.reason && o.message == c.message {
                c.observed_generation = c.observed_generation.max(o.observed_generation);
            }
        }
    }
}

/// Statuses that carry conditions.
trait Conditions {
    fn conditions(&self) -> &[haiyun_api::Condition];
    fn conditions_mut(&mut self) -> &mut [haiyun_api::Condition];
}

macro_rules! conditions {
    ($($t:ty),*) => {$(
        impl Conditions for $t {
            fn conditions(&self) -> &[haiyun_api::Condition] {
                &self.conditions
            }
            fn conditions_mut(&mut self) -> &mut [haiyun_api::Condition] {
                &mut self.conditions
            }
        }
    )*};
}
conditions!(QueueStatus, ComputePoolStatus, QuotaRequestStatus);

/// Writes each new status (keyed `name`, or `namespace/name`) whose object's current status differs, keeping
/// condition transition times.
fn publish<K>(
    client: &kube::Client,
    objects: &[Arc<K>],
    statuses: BTreeMap<String, K::Status>,
    api: impl Fn(&kube::Client, &K) -> Api<K>,
) where
    K: HasStatus + Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::Status: Conditions + Clone + Default + PartialEq + Serialize + Send + 'static,
{
    let key = |o: &K| match o.namespace() {
        Some(ns) => format!("{ns}/{}", o.name_any()),
        None => o.name_any(),
    };
    let by_key: std::collections::HashMap<String, &Arc<K>> = objects.iter().map(|o| (key(o), o)).collect();
    for (k, mut st) in statuses {
        let Some(obj) = by_key.get(&k) else { continue };
        let old = obj.status().cloned().unwrap_or_default();
        keep_transitions(old.conditions(), st.conditions_mut());
        if old != st {
            spawn_status(api(client, obj), obj.name_any(), st);
        }
    }
}

fn spawn_status<K, S>(api: Api<K>, name: String, status: S)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    S: Serialize + Send + 'static,
{
    tokio::spawn(async move {
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": status,
        });
        if let Err(e) =
            api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await
        {
            tracing::warn!(kind = %K::kind(&()), name = %name, error = %e, "failed to write status");
        }
    });
}

fn gauges(counts: &report::JobCounts, pools: &BTreeMap<String, ComputePoolStatus>) -> Gauges {
    let mut g =
        Gauges { pending: counts.pending.clone(), admitted: counts.admitted.clone(), ..Gauges::default() };
    for (pool, st) in pools {
        for m in &st.by_model {
            g.gpus.insert((pool.clone(), m.model.clone()), m.total);
            g.allocated.insert((pool.clone(), m.model.clone()), m.allocated);
        }
    }
    g
}
