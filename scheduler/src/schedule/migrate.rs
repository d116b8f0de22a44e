//! Upgrades: after pending jobs have had their pick, a running job moves to a faster GPU type that is free now
//! when it would finish sooner even after losing the work since its last checkpoint and paying the restart.

use super::cycle::Cycle;
use super::{ScheduleError, Scheduler, Timeline, saved_work};
use crate::model::{JobId, Time};

/// An upgrade must bring the finish forward by at least this many seconds…
const MIN_GAIN_S: f64 = 600.0;
/// …and by at least this share of the time the job has left.
const MIN_GAIN_SHARE: f64 = 0.05;

impl Scheduler {
    /// Moves running jobs to faster free capacity where that ends them sooner, biggest gain first.
    pub(crate) fn upgrade(
        &mut self,
        now: Time,
        tl: &mut Timeline,
        out: &mut Cycle,
    ) -> Result<(), ScheduleError> {
        let mut candidates: Vec<(f64, JobId)> = Vec::new();
        for id in self.running().collect::<Vec<_>>() {
            let e = &self.jobs[id as usize];
            let Some(r) = &e.run else { continue };
            if !e.job.preemptible || r.started >= now || e.job.checkpoint_s.is_none() {
                continue;
            }
            let rate = e.job.work.rate(r.model);
            let saved = saved_work(&e.job, rate, r.working_from, now);
            let mut moved = e.clone();
            moved.remaining = (e.remaining - saved).max(0.0);
            moved.status.preemptions += 1;
            let Ok(options) = self.options(&moved, now) else { continue };
            let left = (r.est_end - now).max(0.0);
            let enough = MIN_GAIN_S.max(MIN_GAIN_SHARE * left);
            let best = options
                .iter()
                .filter(|o| (o.pool, o.model) != (r.pool, r.model) && o.quota.is_ok())
                .filter(|o| left - o.duration >= enough && tl.fits(o.pool, &o.req, now, o.duration))
                .map(|o| o.duration)
                .fold(f64::INFINITY, f64::min);
            let gain = left - best;
            if gain >= MIN_GAIN_S.max(MIN_GAIN_SHARE * left) {
                candidates.push((gain, id));
            }
        }
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, id) in candidates {
            self.try_upgrade(id, now, tl, out)?;
        }
        Ok(())
    }

    fn try_upgrade(
        &mut self,
        id: JobId,
        now: Time,
        tl: &mut Timeline,
        out: &mut Cycle,
    ) -> Result<(), ScheduleError> {
        let e = &self.jobs[id as usize];
        let Some(r) = e.run.clone() else { return Ok(()) };
        let rate = e.job.work.rate(r.model);
        let mut moved = e.clone();
        moved.remaining = (e.remaining - saved_work(&e.job, rate, r.working_from, now)).max(0.0);
        moved.status.preemptions += 1;
        let Ok(options) = self.options(&moved, now) else { return Ok(()) };
        let left = (r.est_end - now).max(0.0);
        let mut best: Option<&super::options::RunOption> = None;
        for o in options.iter().filter(|o| (o.pool, o.model) != (r.pool, r.model)) {
            if left - o.duration >= MIN_GAIN_S.max(MIN_GAIN_SHARE * left)
                && tl.fits(o.pool, &o.req, now, o.duration)
                && best.is_none_or(|b| o.duration < b.duration)
            {
                best = Some(o);
            }
        }
        let Some(o) = best.cloned() else { return Ok(()) };
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
