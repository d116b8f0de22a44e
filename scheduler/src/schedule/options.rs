//! The ways a job could run: each cleared pool × each GPU model it allows there, with what it would cost.

use super::{Entry, PendingReason, Scheduler};
use crate::model::{Classification, Cluster, ModelId, ModelSet, PoolId, Time};
use crate::queue::{QuotaShortfall, Resources};

/// One way to run a job.
#[derive(Debug, Clone)]
pub(crate) struct RunOption {
    pub pool: PoolId,
    pub model: Option<ModelId>,
    pub req: Resources,
    /// Restart + data transfer + run time, seconds.
    pub duration: f64,
    /// Seconds of that spent before work begins (restart + transfer).
    pub setup: f64,
    pub quota: Result<(), QuotaShortfall>,
}

/// GPU models present in each pool of a cluster.
pub(crate) fn models_by_pool(c: &Cluster) -> Vec<ModelSet> {
    let mut sets = vec![ModelSet::NONE; c.pools.len()];
    for n in &c.nodes {
        if let Some(s) = sets.get_mut(n.pool as usize) {
            s.0 |= n.models().0;
        }
    }
    sets
}

impl Scheduler {
    /// The models every task of the gang allows.
    pub(crate) fn allowed_models(e: &Entry) -> ModelSet {
        e.job
            .gang
            .tasks
            .iter()
            .filter(|t| !t.is_cpu_only())
            .fold(ModelSet::ANY, |acc, t| ModelSet(acc.0 & t.models.0))
    }

    /// Pools with nodes whose clearance covers every dataset the job reads and that hold a replica of each core
    /// dataset it reads: core data never moves, even where a transfer would be faster.
    pub(crate) fn cleared_pools(&self, e: &Entry) -> Vec<PoolId> {
        let needs = self.needs(e);
        let c = self.snap.cluster();
        (0..c.pools.len() as PoolId)
            .filter(|p| c.pools[*p as usize].clearance >= needs && self.snap.groups().pools.contains_key(p))
            .filter(|p| e.job.pools.is_empty() || e.job.pools.contains(p))
            .filter(|p| self.holds_core(e, *p))
            .collect()
    }

    /// Whether `pool` holds a replica of every core dataset `e` reads.
    fn holds_core(&self, e: &Entry, pool: PoolId) -> bool {
        e.job
            .datasets
            .iter()
            .filter_map(|d| self.datasets.get(*d as usize))
            .filter(|d| d.classification == Classification::Core)
            .all(|d| d.replicas.contains(&pool))
    }

    fn needs(&self, e: &Entry) -> Classification {
        e.job
            .datasets
            .iter()
            .filter_map(|d| self.datasets.get(*d as usize))
            .map(|d| d.classification)
            .max()
            .unwrap_or_default()
    }

    fn transfer_s(&self, e: &Entry, pool: PoolId) -> f64 {
        e.job
            .datasets
            .iter()
            .filter_map(|d| self.datasets.get(*d as usize))
            .filter(|d| !d.replicas.contains(&pool))
            .map(|d| d.size_mib as f64 / self.config.bandwidth_mib_s.max(1e-9))
            .sum()
    }

    /// Every way `e` could run at `now`, or why there is none.
    pub(crate) fn options(&self, e: &Entry, now: Time) -> Result<Vec<RunOption>, PendingReason> {
        self.options_where(e, (e.remaining, e.status.preemptions > 0), now, |_, _, _| true)
    }

    /// The ways `e` could run at `now` with `remaining` work, `restarted` or not, that `keep` keeps (given the
    /// pool, the model and the duration): their quota is checked only for those.
    pub(crate) fn options_where(
        &self,
        e: &Entry,
        (remaining, restarted): (f64, bool),
        now: Time,
        keep: impl Fn(PoolId, Option<ModelId>, f64) -> bool,
    ) -> Result<Vec<RunOption>, PendingReason> {
        let needs = self.needs(e);
        let cleared = self.cleared_pools(e);
        if cleared.is_empty() {
            let any_cleared = self.snap.cluster().pools.iter().any(|p| p.clearance >= needs);
            return Err(if any_cleared && !e.job.pools.is_empty() {
                PendingReason::NoAllowedPool { needs }
            } else {
                PendingReason::DataClearance { needs }
            });
        }
        let cpu_only = e.job.gang.tasks.iter().all(|t| t.is_cpu_only());
        let allowed = Self::allowed_models(e);
        let restart = if restarted { self.config.restart_s } else { 0.0 };
        let mut out = Vec::new();
        for p in cleared {
            let models: Vec<Option<ModelId>> = if cpu_only {
                vec![None]
            } else {
                ModelSet(self.pool_models.get(p as usize).map_or(0, |s| s.0) & allowed.0)
                    .iter()
                    .map(Some)
                    .collect()
            };
            for model in models {
                let run = e.job.work.runtime(remaining, model);
                if !run.is_finite() {
                    continue;
                }
                let setup = restart + self.transfer_s(e, p);
                if !keep(p, model, setup + run) {
                    continue;
                }
                let req = Resources::of_gang(&e.job.gang, model);
                let quota = self.quotas.fits(e.job.queue, e.job.user, &req, now);
                if self.nominal_only && quota.is_ok() && !self.quotas.within_nominal(e.job.queue, &req, now) {
                    continue;
                }
                out.push(RunOption { pool: p, model, req, duration: setup + run, setup, quota });
            }
        }
        if out.is_empty() { Err(PendingReason::NoUsableModel) } else { Ok(out) }
    }
}
