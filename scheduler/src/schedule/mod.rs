//! The scheduling cycle: order, admit (quota), place, preempt, backfill and explain, over an indexed snapshot.

mod adopt;
mod cycle;
mod explain;
mod holdings;
mod migrate;
mod options;
mod preempt;
mod standing;
mod status;
mod steps;
mod timeline;

use serde::{Deserialize, Serialize};

pub use cycle::{Cycle, Start};
pub use status::{Hint, JobStatus, PendingReason, Phase};
pub use timeline::Timeline;

use crate::model::{Cluster, Dataset, Job, JobId, ModelId, ModelSet, PoolId, QueueId, Time};
use crate::placer::{Placement, Placer, PlacerConfig};
use crate::plugin::{Policy, PolicyError, PolicyName, TypicalPods};
use crate::queue::{QuotaError, Quotas, Resources};
use crate::snapshot::{Snapshot, SnapshotError};

/// Scheduler settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    /// Placement policy.
    pub policy: PolicyName,
    /// Placer settings.
    pub placer: PlacerConfig,
    /// Pending jobs (in order) that get reservations; later ones get a rough estimate.
    pub backfill_depth: usize,
    /// Whether jobs may preempt (higher priority in a queue, or reclaiming lent quota).
    pub preemption: bool,
    /// Whether later jobs may start while an earlier one waits (without it, order is strict).
    pub backfill: bool,
    /// Whether running jobs move to faster free GPU types when that ends them sooner despite the lost work.
    pub upgrades: bool,
    /// With upgrades, start now on a slower option that finishes within `1 + slack` times the best option's
    /// time from now, rather than wait for the faster one.
    pub start_now_slack: f64,
    /// Upgrades may also evict jobs the queue's order puts well behind (near their checkpoints) from faster GPUs,
    /// not only take free ones.
    pub upgrade_by_preemption: bool,
    /// Before a job starts on a slower option, it may evict jobs the queue's order puts well behind (near their
    /// checkpoints) from the option that finishes first.
    pub preempt_for_speed: bool,
    /// Seconds a preempted job needs to restart.
    pub restart_s: f64,
    /// Transfer bandwidth between pools, MiB/s, for data a pool lacks.
    pub bandwidth_mib_s: f64,
    /// Seed for seeded policies.
    pub seed: u64,
    /// Half-life of past usage in fair share, seconds (`None`: queues are ordered by what they hold now only).
    pub usage_half_life_s: Option<f64>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            policy: PolicyName::Haiyun,
            placer: PlacerConfig::default(),
            backfill_depth: 1000,
            preemption: true,
            backfill: true,
            upgrades: true,
            start_now_slack: 1.0,
            upgrade_by_preemption: true,
            preempt_for_speed: true,
            restart_s: 60.0,
            bandwidth_mib_s: 1000.0,
            seed: 1,
            usage_half_life_s: None,
        }
    }
}

/// Why the scheduler refused a call. Expected outcomes (a job that must wait) are never errors.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    /// The snapshot refused a change (a broken invariant).
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The quota book refused a change.
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// The policy could not be built.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A job id past the end.
    #[error("failed to find job #{0}")]
    UnknownJob(JobId),
    /// A job names a queue that does not exist.
    #[error("failed to submit job {job:?}: queue #{queue} does not exist (create it first)")]
    UnknownQueue {
        /// The job.
        job: String,
        /// The queue it named.
        queue: QueueId,
    },
    /// A job names a dataset that does not exist.
    #[error("failed to submit job {job:?}: dataset #{dataset} is not registered")]
    UnknownDataset {
        /// The job.
        job: String,
        /// The dataset.
        dataset: u32,
    },
    /// A job with no tasks.
    #[error("failed to submit job {0:?}: it has no tasks (give at least one task group with replicas >= 1)")]
    EmptyGang(String),
    /// An adopted placement does not match the job's tasks.
    #[error("failed to adopt job {job:?}: it has {tasks} tasks but its placement places {placed}")]
    PlacementMismatch {
        /// The job.
        job: String,
        /// Its tasks.
        tasks: usize,
        /// Tasks the placement places.
        placed: usize,
    },
    /// Finishing a job that is not running.
    #[error("failed to finish job #{0}: it is not running")]
    NotRunning(JobId),
}

/// Where and since when a job runs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Run {
    pub placement: Placement,
    pub pool: PoolId,
    pub model: Option<ModelId>,
    pub charged: Resources,
    pub started: Time,
    /// When its work (after any restart) begins: `started` plus restart and data transfer.
    pub working_from: Time,
    pub est_end: Time,
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub job: Job,
    /// Work left at the start of the current run (or now, if pending).
    pub remaining: f64,
    pub run: Option<Run>,
    pub status: JobStatus,
}

/// The scheduling core: jobs, queues, datasets and a snapshot of the federation.
#[derive(Debug)]
pub struct Scheduler {
    pub(crate) snap: Snapshot,
    pub(crate) placer: Placer,
    pub(crate) quotas: Quotas,
    pub(crate) datasets: Vec<Dataset>,
    pub(crate) jobs: Vec<Entry>,
    pub(crate) config: SchedulerConfig,
    /// GPU models present in each pool, and in the whole federation.
    pub(crate) pool_models: Vec<ModelSet>,
    pub(crate) present: ModelSet,
    /// The running jobs preemption may take from, by queue and pool, as of the current cycle's start.
    pub(crate) standings: standing::Standings,
    /// Every job of each queue, in submission order.
    pub(crate) members: Vec<Vec<JobId>>,
    /// Gangs (as restricted to one option) that found no nodes in a pool, kept from cycle to cycle until something
    /// frees capacity (a finish or an eviction that stands): placing more only leaves less room.
    pub(crate) unplaceable: rustc_hash::FxHashMap<(PoolId, crate::model::Gang), crate::placer::Rejection>,
    /// While the cycle's first pass runs: a job's ways to run that fit its quota only by borrowing are left out.
    pub(crate) nominal_only: bool,
    /// What the running jobs hold and until when, kept with every change of a job's run.
    pub(crate) holdings: holdings::Holdings,
    /// Per job, an interval of time in which it surely gains nothing by moving to faster GPUs (an empty one when not
    /// known): the upgrade pass reads this for most jobs instead of each job. Kept with every change of a job's run.
    pub(crate) gains_nothing: Vec<(Time, Time)>,
    /// Capacity per (pool, flavor): the cluster is fixed once the scheduler is made.
    pub(crate) capacity: Vec<((PoolId, crate::queue::Flavor), u64)>,
}

impl Scheduler {
    /// A scheduler for `cluster`; `typical` feeds workload-aware policies.
    pub fn new(
        cluster: Cluster,
        quotas: Quotas,
        config: SchedulerConfig,
        typical: Option<&TypicalPods>,
    ) -> Result<Self, ScheduleError> {
        let empty = TypicalPods::default();
        let policy = Policy::new(config.policy, config.seed, Some(typical.unwrap_or(&empty)))?;
        let pool_models = options::models_by_pool(&cluster);
        let present = pool_models.iter().fold(ModelSet::NONE, |a, s| ModelSet(a.0 | s.0));
        let capacity = timeline::capacity_of(&cluster);
        let mut quotas = quotas;
        if quotas.half_life().is_none() {
            quotas.set_half_life(config.usage_half_life_s);
        }
        Ok(Scheduler {
            standings: standing::Standings::default(),
            members: Vec::new(),
            unplaceable: rustc_hash::FxHashMap::default(),
            nominal_only: false,
            holdings: holdings::Holdings::default(),
            gains_nothing: Vec::new(),
            capacity,
            pool_models,
            present,
            snap: Snapshot::new(cluster)?,
            placer: Placer::new(policy, config.placer),
            quotas,
            datasets: Vec::new(),
            jobs: Vec::new(),
            config,
        })
    }

    /// Registers a dataset and returns its id.
    pub fn add_dataset(&mut self, d: Dataset) -> u32 {
        self.datasets.push(d);
        (self.datasets.len() - 1) as u32
    }

    /// The quota book (read-only).
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// The quota book, to add queues and grants.
    pub fn quotas_mut(&mut self) -> &mut Quotas {
        &mut self.quotas
    }

    /// The snapshot (read-only).
    pub fn snapshot(&self) -> &Snapshot {
        &self.snap
    }

    /// Forgets what the scheduler remembers from one cycle to the next (the gang shapes that found no room in a
    /// pool, what the running jobs hold until when, which of them gain nothing by moving yet): the next cycle works
    /// everything out afresh, and decides the same.
    pub fn forget_rejections(&mut self) {
        self.unplaceable.clear();
        let mut h = holdings::Holdings::default();
        self.jobs.iter().filter_map(|e| e.run.as_ref()).for_each(|r| h.add(r));
        self.holdings = h;
        for (g, e) in self.gains_nothing.iter_mut().zip(&self.jobs) {
            *g = if e.run.is_some() { UNKNOWN } else { ALWAYS };
        }
    }

    /// Submits a job; it is considered from the next cycle on.
    pub fn submit(&mut self, job: Job) -> Result<JobId, ScheduleError> {
        self.check_submission(&job)?;
        let remaining = job.work.total;
        Ok(self.push(Entry { job, remaining, run: None, status: JobStatus::default() }))
    }

    /// Adds a job's entry; returns its id.
    pub(crate) fn push(&mut self, e: Entry) -> JobId {
        let (id, queue) = (self.jobs.len() as JobId, e.job.queue as usize);
        if self.members.len() <= queue {
            self.members.resize_with(queue + 1, Vec::new);
        }
        self.members[queue].push(id);
        if let Some(r) = &e.run {
            self.holdings.add(r);
        }
        self.gains_nothing.push(if e.run.is_some() { UNKNOWN } else { ALWAYS });
        self.jobs.push(e);
        id
    }

    /// Sets a job's run (`None`: it holds nothing), keeping the holdings in step.
    pub(crate) fn set_run(&mut self, id: JobId, run: Option<Run>) {
        self.take_run(id);
        if let Some(new) = &run {
            self.holdings.add(new);
            self.gains_nothing[id as usize] = UNKNOWN;
        }
        self.jobs[id as usize].run = run;
    }

    /// Takes a job's run away, keeping the holdings in step.
    pub(crate) fn take_run(&mut self, id: JobId) -> Option<Run> {
        let e = &mut self.jobs[id as usize];
        let run = e.run.take();
        if let Some(old) = &run {
            self.gains_nothing[id as usize] = ALWAYS;
            self.holdings.remove(old);
            self.standings.touch(id, e.job.queue, old.pool);
        }
        run
    }

    /// Refuses a job whose queue or datasets do not exist, or that has no tasks.
    fn check_submission(&self, job: &Job) -> Result<(), ScheduleError> {
        if self.quotas.spec(job.queue).is_none() {
            return Err(ScheduleError::UnknownQueue { job: job.name.clone(), queue: job.queue });
        }
        if let Some(d) = job.datasets.iter().find(|d| **d as usize >= self.datasets.len()) {
            return Err(ScheduleError::UnknownDataset { job: job.name.clone(), dataset: *d });
        }
        if job.gang.tasks.is_empty() {
            return Err(ScheduleError::EmptyGang(job.name.clone()));
        }
        Ok(())
    }

    /// Records that a running job finished, freeing its resources.
    pub fn finish(&mut self, id: JobId, now: Time) -> Result<(), ScheduleError> {
        let e = self.jobs.get(id as usize).ok_or(ScheduleError::UnknownJob(id))?;
        let run = e.run.as_ref().ok_or(ScheduleError::NotRunning(id))?;
        let (placement, charged, queue, user) =
            (run.placement.clone(), run.charged.clone(), e.job.queue, e.job.user);
        let (started, run_pool) = (run.started, run.pool);
        self.placer.forget(&mut self.snap, &placement)?;
        self.unplaceable.retain(|(p, _), _| *p != run_pool);
        self.quotas.release(queue, user, &charged)?;
        self.quotas.record_run(queue, &charged, started, now);
        self.set_run(id, None);
        let e = &mut self.jobs[id as usize];
        e.remaining = 0.0;
        e.status.phase = Phase::Finished;
        e.status.reasons.clear();
        Ok(())
    }

    /// A job's status.
    pub fn status(&self, id: JobId) -> Option<&JobStatus> {
        self.jobs.get(id as usize).map(|e| &e.status)
    }

    /// A job.
    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(id as usize).map(|e| &e.job)
    }

    /// Work a job has left (as of the start of its current run, or now if pending).
    pub fn remaining(&self, id: JobId) -> Option<f64> {
        self.jobs.get(id as usize).map(|e| e.remaining)
    }

    /// Number of jobs ever submitted.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether no job was submitted.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Pending jobs (ids).
    pub fn pending(&self) -> impl Iterator<Item = JobId> + '_ {
        self.jobs
            .iter()
            .enumerate()
            .filter(|(_, e)| e.status.phase == Phase::Pending)
            .map(|(i, _)| i as JobId)
    }

    /// Running jobs (ids).
    pub fn running(&self) -> impl Iterator<Item = JobId> + '_ {
        self.jobs.iter().enumerate().filter(|(_, e)| e.run.is_some()).map(|(i, _)| i as JobId)
    }

    /// Where a running job runs: its placement, pool and GPU model.
    pub fn placement(&self, id: JobId) -> Option<(&Placement, PoolId, Option<ModelId>)> {
        self.jobs.get(id as usize)?.run.as_ref().map(|r| (&r.placement, r.pool, r.model))
    }
}

/// An interval that holds no instant, and one that holds every instant (see `Scheduler::gains_nothing`).
const UNKNOWN: (Time, Time) = (0.0, 0.0);
const ALWAYS: (Time, Time) = (f64::NEG_INFINITY, f64::INFINITY);

/// A checkpoint that falls within this many seconds of `now` is not counted: the caller's clock arithmetic (and an
/// independent replay of it) may put it a hair either side, and claiming work that was not saved is worse than
/// redoing a second of it.
pub const CHECKPOINT_SLACK_S: f64 = 1e-3;

/// Work a running job has saved by `now`: all of it up to the last checkpoint (or none without checkpoints).
pub fn saved_work(job: &Job, rate: f64, working_from: Time, now: Time) -> f64 {
    let ran = (now - working_from - CHECKPOINT_SLACK_S).max(0.0);
    match job.checkpoint_s {
        Some(c) if c > 0.0 => (ran / c).floor() * c * rate,
        _ => 0.0,
    }
}
