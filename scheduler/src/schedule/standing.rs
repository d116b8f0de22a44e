//! Running jobs as preemption weighs them, worked out once at a cycle's start: what each would lose if evicted now,
//! the run time it has left, when it next reaches a checkpoint; indexed by queue and pool.

use super::preempt::ORDER_MAX_LOSS_S;
use super::{Scheduler, saved_work};
use crate::model::{JobId, PoolId, Time};

/// A running job that may be evicted, as of one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Standing {
    pub id: JobId,
    pub priority: i32,
    pub pool: PoolId,
    pub started: Time,
    /// Work done since its last checkpoint: lost if it is evicted now.
    pub lost: f64,
    /// Whether that is at most `ORDER_MAX_LOSS_S` of run time.
    pub near: bool,
    /// Seconds of run time it has left.
    pub left_s: f64,
    /// A second after its next checkpoint, so that it surely counts (`None`: it takes none).
    pub chance: Option<Time>,
}

/// The running jobs of one queue in one pool that may be evicted.
#[derive(Debug, Clone, Default)]
pub(crate) struct List {
    pub jobs: Vec<Standing>,
    /// The earliest of their chances after the instant they were worked out for.
    pub earliest: Option<Time>,
    /// Whether one of their runs changed since.
    pub stale: bool,
}

/// The running jobs that may be evicted, by queue and then by pool, as of the cycle's start.
#[derive(Debug, Clone, Default)]
pub(crate) struct Standings {
    /// The instant they were worked out for.
    at: Time,
    by_queue: Vec<Vec<List>>,
    /// Jobs whose run changed since: their standing is worked out again when asked for.
    touched: Vec<bool>,
}

impl Standings {
    /// Notes that the run of job `id` of queue `queue`, in `pool`, changed.
    pub(crate) fn touch(&mut self, id: JobId, queue: u32, pool: PoolId) {
        if let Some(t) = self.touched.get_mut(id as usize) {
            *t = true;
        }
        if let Some(l) = self.by_queue.get_mut(queue as usize).and_then(|p| p.get_mut(pool as usize)) {
            l.stale = true;
        }
    }

    /// Queue `q`'s jobs in `pool`.
    pub(crate) fn list(&self, q: u32, pool: PoolId) -> Option<&List> {
        self.by_queue.get(q as usize).and_then(|p| p.get(pool as usize))
    }

    /// Queue `q`'s jobs in `pool` if they are as they were at `now` (none of their runs changed since).
    pub(crate) fn unchanged(&self, q: u32, pool: PoolId, now: Time) -> Option<&List> {
        self.list(q, pool).filter(|l| self.at == now && !l.stale)
    }

    /// Their standings.
    pub(crate) fn of(&self, q: u32, pool: PoolId) -> &[Standing] {
        self.list(q, pool).map_or(&[][..], |l| l.jobs.as_slice())
    }
}

impl Scheduler {
    /// How preemption weighs job `v` at `now`; `None` when it may not be evicted (not running, not preemptible, or
    /// started this instant).
    pub(crate) fn standing(&self, v: JobId, now: Time) -> Option<Standing> {
        let e = &self.jobs[v as usize];
        let r = e.run.as_ref()?;
        if !e.job.preemptible || r.started >= now {
            return None;
        }
        let rate = e.job.work.rate(r.model);
        let ran = (now - r.working_from).max(0.0);
        let done = ran * rate;
        let lost = done - saved_work(&e.job, rate, r.working_from, now);
        Some(Standing {
            id: v,
            priority: e.job.priority,
            pool: r.pool,
            started: r.started,
            lost,
            near: lost <= ORDER_MAX_LOSS_S * rate,
            left_s: e.job.work.runtime((e.remaining - done).max(0.0), r.model),
            chance: e.job.checkpoint_s.map(|c| r.working_from + ((ran / c).floor() + 1.0) * c + 1.0),
        })
    }

    /// Works out the standings of the running jobs at `now`, the cycle's start.
    pub(crate) fn index_running(&mut self, now: Time) {
        let pools = self.snap.cluster().pools.len();
        // The last cycle's lists are emptied and filled again: their allocations are kept.
        let mut by_queue = std::mem::take(&mut self.standings.by_queue);
        by_queue.resize_with(self.quotas.len(), Vec::new);
        for lists in &mut by_queue {
            lists.resize_with(pools, List::default);
            for l in lists.iter_mut() {
                l.jobs.clear();
                l.earliest = None;
                l.stale = false;
            }
        }
        for i in 0..self.jobs.len() as JobId {
            let Some(s) = self.standing(i, now) else { continue };
            if let Some(list) = by_queue
                .get_mut(self.jobs[i as usize].job.queue as usize)
                .and_then(|q| q.get_mut(s.pool as usize))
            {
                if let Some(c) = s.chance.filter(|c| *c > now) {
                    list.earliest = Some(list.earliest.map_or(c, |e: Time| e.min(c)));
                }
                list.jobs.push(s);
            }
        }
        let mut touched = std::mem::take(&mut self.standings.touched);
        touched.clear();
        touched.resize(self.jobs.len(), false);
        self.standings = Standings { at: now, by_queue, touched };
    }

    /// An indexed standing as it is at `now`: the same unless the job's run changed since (or `now` is another
    /// instant), then worked out again.
    pub(crate) fn standing_now(&self, s: &Standing, now: Time) -> Option<Standing> {
        let st = &self.standings;
        if st.at == now && st.touched.get(s.id as usize) == Some(&false) {
            // What is kept must be what would be worked out: checked in debug builds (every test).
            debug_assert_eq!(Some(*s), self.standing(s.id, now), "a running job's standing went stale");
            Some(*s)
        } else {
            self.standing(s.id, now)
        }
    }
}
