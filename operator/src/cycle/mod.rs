//! One scheduling cycle, with no IO: the cluster's objects, the agents' reports, the backends' frozen views, the
//! overlay of this process's own decisions and `now` in; actions, decision lines, statuses, the dashboard snapshot
//! and gauges out. Every shell (the operator on Kubernetes, `haiyun demo` in memory) calls this one function.

use std::collections::{BTreeMap, HashSet};

use haiyun_api::ComputePoolStatus;
use haiyun_api::job::JobPhase;
use haiyun_scheduler::model::Time;
use haiyun_scheduler::schedule::{ScheduleError, SchedulerConfig};
use kube::ResourceExt;

use crate::backend::{BackendKind, Backends, Inputs, Live};
use crate::dashboard::{self, Snapshot};
use crate::decision::Decision;
use crate::fleet::FleetView;
use crate::index::{self, Assumed, Cache, Claims, IndexError, Objects, Overlay, World};
use crate::metrics::Gauges;
use crate::plan::{self, Action};
use crate::report;
use crate::status;
use crate::time::rfc3339;
use haiyun_scheduler::queue::Flavor;

/// The shortest time between two writes of one queue's or pool's status, in seconds.
pub const CAPACITY_STATUS_PERIOD_S: f64 = 1.0;

/// What a cycle reads.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The cluster's objects as last seen.
    pub objects: &'a Objects,
    /// What the node agents report.
    pub fleet: &'a FleetView,
    /// The backends this process serves, frozen for the cycle.
    pub backends: &'a Backends,
    /// Objects (by uid, or a status write's key) whose earlier actions are still being applied: they get no new
    /// ones but admissions and evictions, which wait their turn.
    pub busy: &'a HashSet<String>,
    /// The core's settings.
    pub config: SchedulerConfig,
    /// Now, unix seconds.
    pub now: Time,
}

/// What a cycle remembers between runs: the overlay of its own decisions, and which decision lines it wrote.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    /// Decisions not in the watch caches yet, and what the shell reported back.
    pub overlay: Overlay,
    /// What the index converted, reused while its inputs are unchanged.
    index: Cache,
    /// Jobs whose last status was logged as rejected, with the message.
    rejected: BTreeMap<String, String>,
    /// Jobs whose finish is logged (uid).
    finished: HashSet<String>,
    /// QuotaRequests whose verdict is logged (uid → verdict line's detail).
    quota: BTreeMap<String, String>,
    /// When each queue's and pool's status was last written (its key → unix seconds).
    written: BTreeMap<String, Time>,
    /// The runs open in the usage ledger and what the closed ones used (None: no ledger, or not loaded yet: nothing
    /// is recorded).
    pub runs: Option<crate::ledger::runs::Book>,
}

/// What a cycle decided.
#[derive(Debug, Clone)]
pub struct Output {
    /// What to apply: evictions before the admissions they make room for.
    pub actions: Vec<Action>,
    /// Decision lines to write now (preempt, finish, reject; `place` is written as its action writes the job's status).
    pub decisions: Vec<Decision>,
    /// The dashboard's view of this cycle.
    pub snapshot: Snapshot,
    /// Gauges for `/metrics`.
    pub gauges: Gauges,
    /// Jobs and plain pods the cycle considered.
    pub jobs: usize,
    /// What the usage ledger must record (runs that ended, then runs that started).
    pub ledger: Vec<crate::ledger::runs::Op>,
}

/// Why a cycle could not run (a broken invariant: the next cycle tries again).
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    /// The world could not be built.
    #[error("failed to build the world: {0}")]
    Index(#[from] IndexError),
    /// The core broke an invariant.
    #[error("scheduling cycle failed (a broken invariant): {0}")]
    Schedule(#[from] ScheduleError),
}

/// Runs one cycle.
pub fn run(input: &Input<'_>, memory: &mut Memory) -> Result<Output, CycleError> {
    let objects = input.objects;
    memory.overlay.settle(&objects.jobs, &objects.pods);
    memory.forget_gone(objects);
    let federation = |claims: &Claims, models| {
        input.backends.federation(&objects.pools, &Inputs { objects, fleet: input.fleet, claims }, models)
    };
    let mut world =
        index::build(objects, &memory.overlay, &mut memory.index, &federation, input.config, input.now)?;
    if let Some(book) = &memory.runs {
        add_past_usage(&mut world, book);
    }
    let kinds: BTreeMap<String, BackendKind> =
        objects.pools.iter().filter_map(|p| Some((p.name_any(), BackendKind::of(p)?))).collect();
    let mut planned = plan::plan(&mut world, &kinds, input.now)?;
    account_energy(&mut planned, &world, input.fleet, input.now);
    let stamp = rfc3339(input.now);
    let mut out = Vec::with_capacity(planned.len());
    let mut decisions = Vec::new();
    for a in planned {
        memory.take(with_uuids(a, input.fleet), input, &stamp, &mut decisions, &mut out);
    }
    let mut busy: HashSet<String> = input.busy.clone();
    busy.extend(out.iter().map(Action::uid));
    out.extend(garbage(input, &memory.overlay, &busy));
    let unmirrored = crate::backend::kubernetes::batch::unmirrored(&objects.batch_jobs, &objects.jobs);
    out.extend(
        unmirrored
            .into_iter()
            .filter(|j| !busy.contains(&j.uid().unwrap_or_default()))
            .map(|j| Action::Mirror { job: j.clone() }),
    );
    let ledger = memory
        .runs
        .as_mut()
        .map(|book| crate::ledger::runs::reconcile(objects, book, input.now))
        .unwrap_or_default();
    let counts = report::job_counts(&world);
    let pools = report::pools(&world, input.now);
    let gauges = gauges(&counts, &pools);
    let hours = memory.runs.as_ref().map(|b| &b.closed_gpu_seconds);
    let (snapshot, writes, verdicts) = statuses(&world, input, &counts, pools, hours);
    for (uid, line) in verdicts {
        // Once per verdict, though the status write that records it may take a few cycles to show.
        if memory.quota.get(&uid) != Some(&line.detail) {
            memory.quota.insert(uid, line.detail.clone());
            decisions.push(line);
        }
    }
    for w in writes.into_iter().filter(|w| !input.busy.contains(&w.key())) {
        // Usage moves with every job that starts or ends: a queue's or pool's status whose only change is its
        // counters is written at most once per period (the latest one then), so a busy cluster's API requests go to
        // its jobs. Anything else (a quota, capacity, a condition) is written at once.
        if counters_only(&w, objects) {
            let last = memory.written.get(&w.key()).copied();
            if last.is_some_and(|t| input.now - t < CAPACITY_STATUS_PERIOD_S && input.now >= t) {
                continue;
            }
        }
        if !matches!(w, status::StatusWrite::Request { .. }) {
            memory.written.insert(w.key(), input.now);
        }
        out.push(Action::WriteStatus(w));
    }
    let jobs = world.jobs.len() + world.pods.len();
    Ok(Output { actions: out, decisions, snapshot, gauges, jobs, ledger })
}

/// Whether a queue's or pool's new status differs from the one its object has only in the counters that move with
/// every job (jobs pending and admitted, usage, GPU-hours, allocated GPUs).
fn counters_only(w: &status::StatusWrite, objects: &Objects) -> bool {
    match w {
        status::StatusWrite::Queue { name, status } => {
            let Some(old) =
                objects.queues.iter().find(|q| q.name_any() == *name).and_then(|q| q.status.clone())
            else {
                return false;
            };
            let mut new = status.clone();
            (new.pending, new.admitted, new.gpu_hours, new.site_gpu_hours) =
                (old.pending, old.admitted, old.gpu_hours, old.site_gpu_hours);
            if new.usage.len() != old.usage.len() {
                return false;
            }
            for (n, o) in new.usage.iter_mut().zip(&old.usage) {
                (n.used, n.borrowed) = (o.used.clone(), o.borrowed.clone());
            }
            new == old
        }
        status::StatusWrite::Pool { name, status } => {
            let Some(old) =
                objects.pools.iter().find(|p| p.name_any() == *name).and_then(|p| p.status.clone())
            else {
                return false;
            };
            let mut new = status.clone();
            new.allocated_gpus = old.allocated_gpus;
            if new.by_model.len() != old.by_model.len() {
                return false;
            }
            for (n, o) in new.by_model.iter_mut().zip(&old.by_model) {
                n.allocated = o.allocated;
            }
            new == old
        }
        status::StatusWrite::Request { .. } => false,
    }
}

/// Gives each queue its past usage from the ledger (runs that ended, decayed), in the core's units.
fn add_past_usage(world: &mut World, book: &crate::ledger::runs::Book) {
    for (queue, past) in &book.past {
        let Some(q) = world.queues.get(queue).copied() else { continue };
        let models = &world.scheduler.snapshot().cluster().models;
        let mut amounts: Vec<f64> = Vec::new();
        for (flavor, v) in &past.amounts {
            let (at, scale) = match flavor.as_str() {
                "cpu" => (Flavor::Cpu, 1000.0),
                "memory" => (Flavor::Memory, 1024.0),
                gpu => match gpu.strip_prefix("nvidia.com/gpu:").and_then(|m| models.lookup(m)) {
                    Some(m) => (Flavor::Gpu(m), 1000.0),
                    // A model no node has any more: nothing to weigh it against.
                    None => continue,
                },
            };
            if amounts.len() <= at.index() {
                amounts.resize(at.index() + 1, 0.0);
            }
            amounts[at.index()] += v * scale;
        }
        world.scheduler.quotas_mut().add_usage(q, past.at, &amounts);
    }
}

impl Memory {
    /// What the kept index has converted so far.
    pub fn index(&self) -> &Cache {
        &self.index
    }

    /// Drops the kept conversions: the next cycle converts everything again (as every cycle did before the index
    /// was kept).
    pub fn forget_index(&mut self) {
        self.index = Cache::default();
    }

    /// Forgets what it logged of jobs that are gone.
    fn forget_gone(&mut self, objects: &Objects) {
        let live: HashSet<String> = objects.jobs.iter().filter_map(|j| j.uid()).collect();
        let keys: HashSet<String> = objects.jobs.iter().map(|j| index::job::key(j)).collect();
        self.finished.retain(|u| live.contains(u));
        self.rejected.retain(|k, _| keys.contains(k));
        let requests: HashSet<String> = objects.requests.iter().filter_map(|r| r.uid()).collect();
        self.quota.retain(|u, _| requests.contains(u));
    }

    /// Takes a planned action: logs what it decides, assumes what it changes, and hands it out unless earlier
    /// actions on its object are still being applied (admissions and evictions always go out, in order).
    fn take(
        &mut self,
        a: Action,
        input: &Input<'_>,
        stamp: &str,
        decisions: &mut Vec<Decision>,
        out: &mut Vec<Action>,
    ) {
        let uid = a.uid();
        let free = !input.busy.contains(&uid);
        match &a {
            Action::BindPod { node, gpus, .. } => {
                self.overlay.held.remove(&uid);
                self.overlay.binding.insert(uid, (node.clone(), gpus.clone(), input.now));
            }
            Action::HoldPod { node, gpus, .. } => {
                // Nothing to apply: the place is kept in the overlay, and a later cycle binds the pod.
                self.overlay.held.insert(uid.clone());
                self.overlay.binding.insert(uid, (node.clone(), gpus.clone(), input.now));
                return;
            }
            Action::EvictPod { pod } => decisions.push(Decision::for_pod("preempt", pod, stamp.into())),
            Action::Evict { job, lost, .. } => {
                let placement = job.status.as_ref().and_then(|s| s.placement.as_ref());
                let line = Decision::new("preempt", job, placement, stamp.into());
                decisions.push(match lost {
                    Some(why) => line.detail(format!("node lost: {why}")),
                    None => line,
                });
                self.overlay.assumed.remove(&uid);
                self.overlay.evicting.insert(uid, job.run());
            }
            Action::Admit { placement, .. } => {
                let assumed = Assumed { placement: placement.clone(), started: input.now };
                self.overlay.assumed.insert(uid, assumed);
            }
            Action::Status { job, status } => {
                // Logged only with the write that records it: a busy job's status is planned again next cycle, and
                // the trail must not say it failed when that status was never written.
                if !free {
                    return;
                }
                self.log_status(job, status, stamp, decisions);
            }
            Action::PodWaits { .. }
            | Action::Collect { .. }
            | Action::Release { .. }
            | Action::Bind { .. }
            | Action::Mirror { .. }
            | Action::WriteStatus(_) => {
                if !free {
                    return;
                }
            }
        }
        out.push(a);
    }

    /// Logs a job's finish once, and a rejection each time its reason changes.
    fn log_status(
        &mut self,
        job: &haiyun_api::ComputeJob,
        status: &haiyun_api::ComputeJobStatus,
        stamp: &str,
        decisions: &mut Vec<Decision>,
    ) {
        let uid = job.uid().unwrap_or_default();
        let old = job.status.as_ref().map(|s| s.phase);
        let ended = matches!(status.phase, JobPhase::Succeeded | JobPhase::Failed);
        if ended && old != Some(status.phase) && self.finished.insert(uid) {
            let d = Decision::new("finish", job, status.placement.as_ref(), stamp.into());
            decisions.push(d.detail(format!("{:?}", status.phase)));
        }
        if status.phase == JobPhase::Pending {
            let key = index::job::key(job);
            let why = status.pending_reasons.first().map(|r| r.message.clone()).unwrap_or_default();
            if self.rejected.get(&key) != Some(&why) {
                decisions.push(Decision::new("reject", job, None, stamp.into()).detail(why.clone()));
                self.rejected.insert(key, why);
            }
        }
    }
}

/// Energy: every status written this cycle carries an account of its GPUs' energy, and a running job whose account
/// is due gets a status write of its own.
pub(crate) fn account_energy(planned: &mut Vec<Action>, world: &World, fleet: &FleetView, now: Time) {
    let mut written = HashSet::new();
    for a in planned.iter_mut() {
        if let Action::Status { job, status } = a {
            crate::energy::account(status, fleet, now);
            written.insert(job.uid().unwrap_or_default());
        }
    }
    for t in &world.jobs {
        let Some(old) = t.job.status.as_ref() else { continue };
        if !crate::energy::due(old, now) || written.contains(&t.job.uid().unwrap_or_default()) {
            continue;
        }
        let mut st = old.clone();
        crate::energy::account(&mut st, fleet, now);
        if st.energy.is_some() {
            planned.push(Action::Status { job: t.job.clone(), status: Box::new(st) });
        }
    }
}

/// An admission with the UUIDs of the GPUs it places, where the nodes' agents reported them.
fn with_uuids(mut a: Action, fleet: &FleetView) -> Action {
    if let Action::Admit { placement, .. } = &mut a {
        for t in &mut placement.tasks {
            let Some(agent) = fleet.get(&t.node) else { continue };
            t.gpu_uuids = t
                .gpus
                .iter()
                .filter_map(|i| agent.gpus.get(i).map(|g| g.uuid.clone()))
                .filter(|u| !u.is_empty())
                .collect();
        }
    }
    a
}

/// What each backend runs that no placement covers, and jobs being deleted that hold a backend's finalizer; none of
/// the objects in `busy`.
fn garbage(input: &Input<'_>, overlay: &Overlay, busy: &HashSet<String>) -> Vec<Action> {
    let objects = input.objects;
    let placed: HashSet<String> = objects
        .jobs
        .iter()
        .filter_map(|j| j.uid().map(|u| (j, u)))
        .filter(|(j, u)| index::placement_of(j, overlay).is_some() || busy.contains(u))
        .map(|(_, u)| u)
        .collect();
    let runs = objects.jobs.iter().filter_map(|j| Some((j.uid()?, j.run()))).collect();
    let live = Live { placed, runs };
    let mut out = Vec::new();
    for b in input.backends.iter() {
        for orphan in b.orphans(objects, &live) {
            if !busy.contains(orphan.lock()) {
                out.push(Action::Collect { backend: b.kind(), orphan });
            }
        }
        let Some(finalizer) = b.finalizer() else { continue };
        for j in &objects.jobs {
            let ours = j.finalizers().iter().any(|f| f == finalizer);
            if ours && j.metadata.deletion_timestamp.is_some() && !busy.contains(&j.uid().unwrap_or_default())
            {
                out.push(Action::Release { job: j.clone(), backend: b.kind() });
            }
        }
    }
    out
}

/// The dashboard's snapshot and the status writes of queues, pools and quota requests.
fn statuses(
    world: &World,
    input: &Input<'_>,
    counts: &report::JobCounts,
    pools: BTreeMap<String, ComputePoolStatus>,
    ledger: Option<&BTreeMap<String, f64>>,
) -> (Snapshot, Vec<status::StatusWrite>, Vec<(String, Decision)>) {
    let objects = input.objects;
    let gens: BTreeMap<String, i64> =
        objects.queues.iter().map(|q| (q.name_any(), q.metadata.generation.unwrap_or(0))).collect();
    let queues = report::queues(world, counts, input.now, &gens, ledger);
    let requests = report::requests(world, &objects.requests, input.now);
    let stamp = rfc3339(input.now);
    let verdicts = objects
        .requests
        .iter()
        .filter_map(|r| {
            let key = format!("{}/{}", r.namespace().unwrap_or_default(), r.name_any());
            Some((r.uid()?, Decision::for_quota(r, requests.get(&key)?, stamp.clone())?))
        })
        .collect();
    let snap =
        dashboard::snapshot(world, objects, &pools, &queues, &requests, input.fleet, rfc3339(input.now));
    let writes =
        status::writes((&objects.queues, queues), (&objects.pools, pools), (&objects.requests, requests));
    (snap, writes, verdicts)
}

/// The gauges of a cycle: jobs per queue, GPUs and their allocation per pool and model.
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

#[cfg(test)]
mod tests;
