//! Upgrades: a running job moves to faster GPUs (free ones, or held by jobs its queue's order puts well behind)
//! when it finishes sooner despite the work it loses.

use super::cycle::Cycle;
use super::options::RunOption;
use super::{ScheduleError, Scheduler, Timeline, saved_work};
use crate::model::{JobId, Time};

/// An upgrade must bring the finish forward by at least this many seconds…
const MIN_GAIN_S: f64 = 600.0;
/// …and by at least this share of the time the job has left.
const MIN_GAIN_SHARE: f64 = 0.05;

impl Scheduler {
    /// Moves running jobs to faster free capacity where that ends them sooner, biggest gain first. Runs after
    /// the pending jobs have had their pick, so an upgrade never takes capacity they start on or reserve.
    pub(crate) fn upgrade(
        &mut self,
        now: Time,
        tl: &mut Timeline,
        out: &mut Cycle,
    ) -> Result<(), ScheduleError> {
        let mut candidates: Vec<(f64, JobId)> = self
            .running()
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|id| self.upgrade_target(id, now, tl).map(|(_, gain)| (gain, id)))
            .collect();
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, id) in candidates {
            self.try_upgrade(id, now, tl, out)?;
        }
        if self.config.upgrade_by_preemption && self.config.preemption {
            let moved: std::collections::HashSet<JobId> = out.started.iter().map(|s| s.job).collect();
            let running: Vec<JobId> = self.running().filter(|id| !moved.contains(id)).collect();
            for id in running {
                if self.jobs[id as usize].run.is_some() {
                    self.upgrade_over(id, now, tl, out)?;
                }
            }
        }
        Ok(())
    }

    /// Moves a running job to a faster option by evicting jobs its queue's order puts well behind there, when that
    /// ends it sooner despite the work it loses.
    fn upgrade_over(
        &mut self,
        id: JobId,
        now: Time,
        tl: &mut Timeline,
        out: &mut Cycle,
    ) -> Result<(), ScheduleError> {
        let e = &self.jobs[id as usize];
        let Some(r) = e.run.as_ref() else { return Ok(()) };
        if !e.job.preemptible || r.started >= now || e.job.checkpoint_s.is_none() {
            return Ok(());
        }
        let rate = e.job.work.rate(r.model);
        let mut moved = e.clone();
        moved.remaining = (e.remaining - saved_work(&e.job, rate, r.working_from, now)).max(0.0);
        moved.status.preemptions += 1;
        let Ok(mut options) = self.options(&moved, now) else { return Ok(()) };
        let left = (r.est_end - now).max(0.0);
        let enough = MIN_GAIN_S.max(MIN_GAIN_SHARE * left);
        let here = (r.pool, r.model);
        options.retain(|o| (o.pool, o.model) != here && left - o.duration >= enough);
        options.sort_by(|a, b| a.duration.total_cmp(&b.duration));
        for o in options {
            // Only victims near their checkpoints: an upgrade is not worth anyone's lost work.
            let victims = self.victims_for(id, &o, now, false);
            if victims.is_empty() || victims.iter().any(|v| !self.near_checkpoint(*v, now)) {
                continue;
            }
            let saved = self.jobs[id as usize].clone();
            let (pool, charged, end) = (r.pool, r.charged.clone(), r.est_end.max(now + 1.0));
            self.evict(id)?;
            self.requeue(id, now, tl);
            out.preempted.push(id);
            if self.try_preempt(id, std::slice::from_ref(&o), now, tl, out)? {
                return Ok(());
            }
            out.preempted.pop();
            self.jobs[id as usize] = saved;
            self.restore(id)?;
            tl.add(pool, &charged, now, end);
            return Ok(());
        }
        Ok(())
    }

    /// The fastest other option that is free now for the job's remaining work (after losing what it did since its
    /// last checkpoint and paying a restart) and gains enough, with the gain in seconds.
    fn upgrade_target(&self, id: JobId, now: Time, tl: &Timeline) -> Option<(RunOption, f64)> {
        let e = &self.jobs[id as usize];
        let r = e.run.as_ref()?;
        if !e.job.preemptible || r.started >= now || e.job.checkpoint_s.is_none() {
            return None;
        }
        let rate = e.job.work.rate(r.model);
        let mut moved = e.clone();
        moved.remaining = (e.remaining - saved_work(&e.job, rate, r.working_from, now)).max(0.0);
        moved.status.preemptions += 1;
        let options = self.options(&moved, now).ok()?;
        let left = (r.est_end - now).max(0.0);
        let enough = MIN_GAIN_S.max(MIN_GAIN_SHARE * left);
        options
            .into_iter()
            .filter(|o| (o.pool, o.model) != (r.pool, r.model))
            .filter(|o| left - o.duration >= enough && tl.fits(o.pool, &o.req, now, o.duration))
            .min_by(|a, b| a.duration.total_cmp(&b.duration))
            .map(|o| {
                let gain = left - o.duration;
                (o, gain)
            })
    }

    /// Evicts the job and places it on its upgrade target if its queue's quota (without its current charge) and
    /// the nodes allow; restores it otherwise.
    fn try_upgrade(
        &mut self,
        id: JobId,
        now: Time,
        tl: &mut Timeline,
        out: &mut Cycle,
    ) -> Result<(), ScheduleError> {
        let Some((o, _)) = self.upgrade_target(id, now, tl) else { return Ok(()) };
        self.evict(id)?;
        let queue = self.jobs[id as usize].job.queue;
        let gang = self.gang_for(id, &o);
        let placed = if self.quotas.fits(queue, &o.req, now).is_ok() {
            self.placer.try_place_in(&mut self.snap, &gang, Some(o.pool))?
        } else {
            None
        };
        match placed {
            Some(p) => {
                self.requeue(id, now, tl);
                out.preempted.push(id);
                let start = self.start_with(id, &o, p, now)?;
                tl.add(o.pool, &o.req, now, start.est_end);
                out.started.push(start);
            }
            None => self.restore(id)?,
        }
        Ok(())
    }
}
