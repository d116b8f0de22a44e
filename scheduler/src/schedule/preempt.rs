//! Preemption: evict the fewest victims that lose least work, for priority, reclaim or queue order.
// Never a livelock: within a queue only strictly lower priorities are evicted, or equal ones the order puts
// behind by a 2x margin (two jobs cannot both have twice the other's remaining time); reclaim only evicts jobs of
// queues above their nominal quota for a queue that stays within its own.

use super::cycle::Cycle;
use super::options::RunOption;
use super::{Phase, ScheduleError, Scheduler, Timeline, saved_work};
use crate::model::{JobId, Time};
use crate::queue::WithinQueue;

/// A victim evicted for ordering must have at least this many times the newcomer's run time left.
const ORDER_MARGIN: f64 = 2.0;
/// …and lose at most this many seconds of run time since its last checkpoint.
const ORDER_MAX_LOSS_S: f64 = 300.0;

impl Scheduler {
    /// Running jobs that `id` may evict to run as option `o`, cheapest first. With `any_loss`, jobs that would
    /// lose too much work now count too (to find when the next chance comes).
    pub(crate) fn victims_for(&self, id: JobId, o: &RunOption, now: Time, any_loss: bool) -> Vec<JobId> {
        let job = &self.jobs[id as usize].job;
        let reclaim = self.quotas.within_nominal(job.queue, &o.req, now);
        let cohort = self.quotas.spec(job.queue).and_then(|s| s.cohort.clone());
        let policy = self.quotas.spec(job.queue).map_or(WithinQueue::Never, |s| s.within_queue);
        let newcomer = super::cycle::best_runtime(&self.jobs[id as usize], self.present);
        let same_cohort =
            |q: u32| cohort.is_some() && self.quotas.spec(q).and_then(|s| s.cohort.clone()) == cohort;
        let queues: Vec<u32> = (0..self.running_by_queue.len() as u32)
            .filter(|q| *q == job.queue || (reclaim && same_cohort(*q) && self.quotas.is_borrowing(*q, now)))
            .collect();
        let mut c: Vec<(i32, f64, Time, JobId)> = queues
            .iter()
            .flat_map(|q| self.running_by_queue[*q as usize].iter().copied())
            .filter(|v| *v != id)
            .filter_map(|v| {
                let e = &self.jobs[v as usize];
                let r = e.run.as_ref()?;
                if !e.job.preemptible || r.pool != o.pool || r.started >= now {
                    return None;
                }
                let rate = e.job.work.rate(r.model);
                let done = (now - r.working_from).max(0.0) * rate;
                let lost = done - saved_work(&e.job, rate, r.working_from, now);
                let same = e.job.queue == job.queue && policy != WithinQueue::Never;
                let lower = same && e.job.priority < job.priority;
                let left_s = e.job.work.runtime((e.remaining - done).max(0.0), r.model);
                let later = same
                    && policy == WithinQueue::LowerOrLaterInOrder
                    && e.job.priority == job.priority
                    && left_s >= ORDER_MARGIN * newcomer
                    && (any_loss || lost <= ORDER_MAX_LOSS_S * rate);
                let lent = reclaim
                    && e.job.queue != job.queue
                    && cohort.is_some()
                    && self.quotas.spec(e.job.queue).and_then(|s| s.cohort.clone()) == cohort
                    && self.quotas.is_borrowing(e.job.queue, now);
                if !(lower || lent || later) {
                    return None;
                }
                Some((e.job.priority, lost, -r.started, v))
            })
            .collect();
        c.sort_by(|a, b| {
            a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.total_cmp(&b.2)).then(a.3.cmp(&b.3))
        });
        c.into_iter().map(|x| x.3).collect()
    }

    /// Tries each option: evicts candidates one by one until the job fits; commits only if it then starts.
    pub(crate) fn try_preempt(
        &mut self,
        id: JobId,
        options: &[RunOption],
        now: Time,
        tl: &mut Timeline,
        out: &mut Cycle,
    ) -> Result<bool, ScheduleError> {
        for o in options {
            let candidates = self.victims_for(id, o, now, false);
            let mut evicted: Vec<JobId> = Vec::new();
            let queue = self.jobs[id as usize].job.queue;
            for v in candidates {
                let vq = self.jobs[v as usize].job.queue;
                if vq != queue && !self.quotas.is_borrowing(vq, now) {
                    continue;
                }
                self.evict(v)?;
                evicted.push(v);
                if self.quotas.fits(queue, &o.req, now).is_err() {
                    continue;
                }
                let gang = self.gang_for(id, o);
                if let Some(p) = self.placer.try_place_in(&mut self.snap, &gang, Some(o.pool))? {
                    // Charge the newcomer first, then hand back the victims its placement and quota did not
                    // need, most recently evicted first.
                    let start = self.start_with(id, o, p, now)?;
                    let mut needed = Vec::new();
                    for v in evicted.into_iter().rev() {
                        if !self.try_restore(v, now)? {
                            needed.push(v);
                        }
                    }
                    for v in needed.into_iter().rev() {
                        self.requeue(v, now, tl);
                        out.preempted.push(v);
                    }
                    tl.add(o.pool, &o.req, now, start.est_end);
                    out.started.push(start);
                    return Ok(true);
                }
            }
            for v in evicted.into_iter().rev() {
                self.restore(v)?;
            }
        }
        Ok(false)
    }

    /// Whether a running job would lose at most `ORDER_MAX_LOSS_S` of run time if evicted now.
    pub(crate) fn near_checkpoint(&self, v: JobId, now: Time) -> bool {
        let e = &self.jobs[v as usize];
        let Some(r) = e.run.as_ref() else { return false };
        let rate = e.job.work.rate(r.model);
        let done = (now - r.working_from).max(0.0) * rate;
        done - saved_work(&e.job, rate, r.working_from, now) <= ORDER_MAX_LOSS_S * rate
    }

    /// The next time one of the job's possible victims reaches a checkpoint (and so could be evicted cheaply).
    pub(crate) fn next_preemption_chance(&self, id: JobId, options: &[RunOption], now: Time) -> Option<Time> {
        options
            .iter()
            .flat_map(|o| self.victims_for(id, o, now, true))
            .filter_map(|v| {
                let e = &self.jobs[v as usize];
                let (r, c) = (e.run.as_ref()?, e.job.checkpoint_s?);
                let ran = (now - r.working_from).max(0.0);
                // A second after the checkpoint, so that it surely counts.
                Some(r.working_from + ((ran / c).floor() + 1.0) * c + 1.0)
            })
            .filter(|t| *t > now)
            .min_by(|a, b| a.total_cmp(b))
    }

    /// What a running job holds: its placement, the quota it is charged, and its queue.
    fn held(
        &self,
        v: JobId,
    ) -> Option<(crate::placer::Placement, crate::queue::Resources, crate::model::QueueId)> {
        let e = &self.jobs[v as usize];
        e.run.as_ref().map(|r| (r.placement.clone(), r.charged.clone(), e.job.queue))
    }

    /// Frees a running job's nodes and quota (its run record stays until it is requeued or restored).
    pub(crate) fn evict(&mut self, v: JobId) -> Result<(), ScheduleError> {
        self.unplaceable.clear();
        if let Some((placement, charged, queue)) = self.held(v) {
            self.placer.forget(&mut self.snap, &placement)?;
            self.quotas.release(queue, &charged)?;
        }
        Ok(())
    }

    /// Gives an evicted job its place back if its nodes and its queue's quota still have room.
    fn try_restore(&mut self, v: JobId, now: Time) -> Result<bool, ScheduleError> {
        let Some((placement, charged, queue)) = self.held(v) else { return Ok(false) };
        if self.quotas.fits(queue, &charged, now).is_err() {
            return Ok(false);
        }
        match self.placer.assume(&mut self.snap, &placement) {
            Ok(()) => {
                self.quotas.charge(queue, &charged)?;
                Ok(true)
            }
            Err(crate::snapshot::SnapshotError::OverCommit { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Undoes an eviction whose resources nobody took in between.
    pub(crate) fn restore(&mut self, v: JobId) -> Result<(), ScheduleError> {
        if let Some((placement, charged, queue)) = self.held(v) {
            self.placer.assume(&mut self.snap, &placement)?;
            self.quotas.charge(queue, &charged)?;
        }
        Ok(())
    }

    /// Turns an evicted job back into a pending one that keeps the work up to its last checkpoint.
    pub(crate) fn requeue(&mut self, v: JobId, now: Time, tl: &mut Timeline) {
        let e = &mut self.jobs[v as usize];
        if let Some(r) = e.run.take() {
            let rate = e.job.work.rate(r.model);
            e.remaining = (e.remaining - saved_work(&e.job, rate, r.working_from, now)).max(0.0);
            tl.remove(r.pool, &r.charged, now, r.est_end.max(now + 1.0));
        }
        e.status.phase = Phase::Pending;
        e.status.preemptions += 1;
        e.status.estimated_start = None;
        e.status.estimated_end = None;
    }
}
