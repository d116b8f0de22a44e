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
        // Whether a running job has a faster option at all depends on its own run alone, which nothing below
        // changes but its own move: the jobs without one are left out of both passes after one look.
        let mut hopeful = Vec::new();
        let mut candidates: Vec<(f64, JobId)> = Vec::new();
        for id in 0..self.jobs.len() as JobId {
            // Most jobs are known to gain nothing yet (or not to run): only this compact list is read for them.
            if self.gains_nothing.get(id as usize).is_some_and(|(from, until)| *from <= now && now < *until) {
                debug_assert!(
                    self.faster_options(id, now).is_none_or(|(o, _)| o.is_empty()),
                    "job {id} was remembered as gaining nothing from a move, but it could"
                );
                continue;
            }
            if let Some(until) = self.gains_nothing_until(id, now) {
                if let Some(g) = self.gains_nothing.get_mut(id as usize) {
                    *g = (now, until);
                }
                continue;
            }
            let Some((options, left)) = self.faster_options(id, now).filter(|(o, _)| !o.is_empty()) else {
                continue;
            };
            hopeful.push(id);
            if let Some((_, gain)) = first_free(options, left, now, tl) {
                candidates.push((gain, id));
            }
        }
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, id) in candidates {
            self.try_upgrade(id, now, tl, out)?;
        }
        if self.config.upgrade_by_preemption && self.config.preemption {
            let moved: std::collections::HashSet<JobId> = out.started.iter().map(|s| s.job).collect();
            for id in hopeful.into_iter().filter(|id| !moved.contains(id)) {
                if self.jobs[id as usize].run.is_some() {
                    self.upgrade_over(id, now, tl, out)?;
                }
            }
        }
        Ok(())
    }

    /// Until when job `id` surely gains nothing by moving (`None`: it might now). A job that does not run, or may
    /// not move, for as long as its run lasts (a change of run forgets this). Otherwise while even its fastest model
    /// after a restart would not gain enough (most running jobs): until its next checkpoint, as the work it would
    /// redo stays the same until then and its time left only shrinks, faster than the gain it needs.
    fn gains_nothing_until(&self, id: JobId, now: Time) -> Option<Time> {
        let e = &self.jobs[id as usize];
        let Some(r) = e.run.as_ref() else { return Some(f64::INFINITY) };
        if r.started >= now {
            return None;
        }
        let Some(c) = e.job.checkpoint_s.filter(|_| e.job.preemptible) else { return Some(f64::INFINITY) };
        let rate = e.job.work.rate(r.model);
        let remaining = (e.remaining - saved_work(&e.job, rate, r.working_from, now)).max(0.0);
        let left = (r.est_end - now).max(0.0);
        let enough = MIN_GAIN_S.max(MIN_GAIN_SHARE * left);
        let fastest = super::cycle::best_runtime(e, remaining, self.present);
        if left - (self.config.restart_s + fastest) >= enough {
            return None;
        }
        if c <= 0.0 {
            return Some(f64::INFINITY);
        }
        // The next checkpoint counts from the instant `saved_work` sees it; a millisecond early, for rounding.
        let ran = (now - r.working_from - super::CHECKPOINT_SLACK_S).max(0.0);
        Some(r.working_from + super::CHECKPOINT_SLACK_S + ((ran / c).floor() + 1.0) * c - 1e-3)
    }

    /// The other options a running job could move to for its remaining work (after losing what it did since its
    /// last checkpoint and paying a restart) that end it enough sooner, fastest first, with the time it has left
    /// where it runs; `None` for a job that may not move.
    fn faster_options(&self, id: JobId, now: Time) -> Option<(Vec<RunOption>, f64)> {
        let e = &self.jobs[id as usize];
        let r = e.run.as_ref()?;
        if !e.job.preemptible || r.started >= now || e.job.checkpoint_s.is_none() {
            return None;
        }
        let rate = e.job.work.rate(r.model);
        let remaining = (e.remaining - saved_work(&e.job, rate, r.working_from, now)).max(0.0);
        let left = (r.est_end - now).max(0.0);
        let enough = MIN_GAIN_S.max(MIN_GAIN_SHARE * left);
        // Even its fastest model after a restart would not gain enough: no option can (most running jobs).
        if self.gains_nothing_until(id, now).is_some() {
            return Some((Vec::new(), left));
        }
        // Only options that gain enough are worth their quota check; most running jobs have none.
        let gains = |pool, model, duration| (pool, model) != (r.pool, r.model) && left - duration >= enough;
        let mut options = self.options_where(e, (remaining, true), now, gains).unwrap_or_default();
        options.sort_by(|a, b| a.duration.total_cmp(&b.duration));
        Some((options, left))
    }

    /// Moves a running job to the fastest option whose GPUs are held by jobs its queue's order puts well behind,
    /// all near their checkpoints (an upgrade is not worth anyone's lost work), by evicting them.
    fn upgrade_over(
        &mut self,
        id: JobId,
        now: Time,
        tl: &mut Timeline,
        out: &mut Cycle,
    ) -> Result<(), ScheduleError> {
        let Some((options, _)) = self.faster_options(id, now) else { return Ok(()) };
        let Some(o) = options.into_iter().find(|o| {
            let victims = self.victims_for(id, o, now, false);
            !victims.is_empty() && victims.iter().all(|v| self.near_checkpoint(*v, now))
        }) else {
            return Ok(());
        };
        let saved = self.jobs[id as usize].clone();
        let Some(r) = saved.run.as_ref() else { return Ok(()) };
        let (pool, charged, end) = (r.pool, r.charged.clone(), r.est_end.max(now + 1.0));
        self.evict(id)?;
        self.requeue(id, now, tl);
        out.preempted.push(id);
        let queues = [self.victim_queues(id, &o, now)];
        if !self.try_preempt(id, std::slice::from_ref(&o), &queues, now, tl, out)? {
            out.preempted.pop();
            self.set_run(id, saved.run.clone());
            self.jobs[id as usize] = saved;
            self.restore(id)?;
            tl.add(pool, &charged, now, end);
        }
        Ok(())
    }

    /// The fastest other option that is free now and gains enough, with the gain in seconds.
    fn upgrade_target(&self, id: JobId, now: Time, tl: &Timeline) -> Option<(RunOption, f64)> {
        let (options, left) = self.faster_options(id, now)?;
        first_free(options, left, now, tl)
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
        let (queue, user) = (self.jobs[id as usize].job.queue, self.jobs[id as usize].job.user);
        let gang = self.gang_for(id, &o);
        let placed = if self.quotas.fits(queue, user, &o.req, now).is_ok() {
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

/// The first of `options` (fastest first) that is free now, with its gain over the `left` seconds of the current run.
fn first_free(options: Vec<RunOption>, left: f64, now: Time, tl: &Timeline) -> Option<(RunOption, f64)> {
    let o = options.into_iter().find(|o| tl.fits(o.pool, &o.req, now, o.duration))?;
    let gain = left - o.duration;
    Some((o, gain))
}
