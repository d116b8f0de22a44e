//! One scheduling cycle: order the pending jobs, then for each in turn admit, place or reserve, and explain.

use serde::{Deserialize, Serialize};

use super::options::RunOption;
use super::{Entry, Hint, PendingReason, Phase, Run, ScheduleError, Scheduler, Timeline};
use crate::model::{JobId, ModelId, ModelSet, PoolId, Time};
use crate::placer::{Outcome, Placement};
use crate::queue::{Flavor, Ordering};

/// A job the cycle started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Start {
    /// The job.
    pub job: JobId,
    /// Where its tasks run.
    pub placement: Placement,
    /// The pool.
    pub pool: PoolId,
    /// The GPU model (`None`: CPU-only).
    pub model: Option<ModelId>,
    /// When it should end.
    pub est_end: Time,
}

/// What one cycle decided.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cycle {
    /// Jobs started, in decision order.
    pub started: Vec<Start>,
    /// Jobs preempted (back to pending), in decision order.
    pub preempted: Vec<JobId>,
}

/// GPU-seconds of priority a job gains per second it waits in a shortest-first queue.
pub const SHORTEST_FIRST_AGING: f64 = 0.15;

/// An option's outlook: when it could start and finish.
#[derive(Debug, Clone, Copy)]
struct Outlook {
    index: usize,
    start: Time,
    finish: Time,
}

impl Scheduler {
    /// Runs one cycle at `now`.
    pub fn cycle(&mut self, now: Time) -> Result<Cycle, ScheduleError> {
        self.quotas.expire(now);
        self.index_running(now);
        let mut order = self.order(now);
        let mut tl = self.timeline(now);
        let mut out = Cycle::default();
        let mut horizon = now;
        // Without backfill, order is strict within each queue: once a job of a queue waits, later ones wait too.
        let mut blocked: std::collections::HashSet<u32> = std::collections::HashSet::new();
        // With backfill, jobs that fit their queue's nominal quota go before jobs that would borrow (Kueue's order):
        // a borrower started ahead of them would only be reclaimed by them at the next cycle.
        let mut deferred = Vec::new();
        let mut rank = 0;
        for pass in 0..2 {
            let list = if pass == 0 { std::mem::take(&mut order) } else { std::mem::take(&mut deferred) };
            for id in list {
                if self.jobs[id as usize].status.phase != Phase::Pending {
                    continue;
                }
                if pass == 0 && self.config.backfill && self.only_borrows(id, now) {
                    deferred.push(id);
                    continue;
                }
                self.nominal_only = pass == 0 && self.config.backfill;
                rank += 1;
                if rank > self.config.backfill_depth {
                    if !(self.config.backfill && self.start_if_free(id, now, &mut tl, &mut out)?) {
                        let st = &mut self.jobs[id as usize].status;
                        st.estimated_start = Some(horizon);
                        st.reasons = vec![PendingReason::BeyondBackfillDepth];
                    }
                    continue;
                }
                let queue = self.jobs[id as usize].job.queue;
                let may_start = self.config.backfill || !blocked.contains(&queue);
                let start = self.consider(id, now, may_start, &mut tl, &mut out)?;
                if let Some(s) = start {
                    horizon = horizon.max(s);
                }
                let runnable = !matches!(
                    self.jobs[id as usize].status.reasons.as_slice(),
                    [PendingReason::DataClearance { .. }]
                        | [PendingReason::NoAllowedPool { .. }]
                        | [PendingReason::NoUsableModel]
                );
                if runnable && start.is_none_or(|s| s > now) {
                    blocked.insert(queue);
                }
            }
        }
        self.nominal_only = false;
        if self.config.upgrades && self.config.backfill {
            let before = out.preempted.len();
            self.upgrade(now, &mut tl, &mut out)?;
            // Jobs an upgrade evicted get their turn now, after everyone else, rather than at the next event.
            let evicted: Vec<JobId> = out.preempted[before..].to_vec();
            for id in evicted {
                if self.jobs[id as usize].status.phase == Phase::Pending {
                    self.consider(id, now, true, &mut tl, &mut out)?;
                }
            }
        }
        Ok(out)
    }

    /// Whether the job could start now only by borrowing: no way it could run keeps its queue within its nominal
    /// quota, and some way fits the quota with what its cohort lends.
    fn only_borrows(&self, id: JobId, now: Time) -> bool {
        let e = &self.jobs[id as usize];
        !self.any_ask(e, |r| self.quotas.within_nominal(e.job.queue, r, now)) && self.fits_quota(e, now)
    }

    /// Whether some way the job could run fits its queue's quota now (within the nominal quota or borrowing).
    fn fits_quota(&self, e: &Entry, now: Time) -> bool {
        self.any_ask(e, |r| self.quotas.fits(e.job.queue, e.job.user, r, now).is_ok())
    }

    /// Whether `f` holds for what some way the job could run asks of its queue's quota: one request per GPU model
    /// it may use and the federation has (its CPU alone for a CPU-only job); every option's request is one of them.
    /// Asked of every waiting job each cycle: one request is rewritten for each model rather than built anew.
    fn any_ask(&self, e: &Entry, mut f: impl FnMut(&crate::queue::Resources) -> bool) -> bool {
        if e.job.gang.tasks.iter().all(|t| t.is_cpu_only()) {
            return f(&crate::queue::Resources::of_gang(&e.job.gang, None));
        }
        let models = ModelSet(Self::allowed_models(e).0 & self.present.0);
        let Some(last) = models.iter().max() else { return false };
        let mut r = crate::queue::Resources::of_gang(&e.job.gang, Some(last));
        let gpus = r.get(Flavor::Gpu(last));
        r.set(Flavor::Gpu(last), 0);
        for m in models.iter() {
            r.set(Flavor::Gpu(m), gpus);
            if f(&r) {
                return true;
            }
            r.set(Flavor::Gpu(m), 0);
        }
        false
    }

    /// Past the backfill depth: starts the job on the first option that fits now without touching any
    /// reservation, and reserves nothing otherwise.
    fn start_if_free(
        &mut self,
        id: JobId,
        now: Time,
        tl: &mut Timeline,
        out: &mut Cycle,
    ) -> Result<bool, ScheduleError> {
        // A job no way of which fits its quota now has no option that could start: they are not worked out.
        if !self.fits_quota(&self.jobs[id as usize], now) {
            return Ok(false);
        }
        // Most options are gang shapes already known to find no nodes in their pool: they are left out before their
        // request and quota are worked out, and before the timeline's walk.
        let e = &self.jobs[id as usize];
        let known =
            |p: PoolId, m: Option<ModelId>, _| self.unplaceable.contains_key(&(p, Self::gang_of(e, m)));
        let restarted = e.status.preemptions > 0;
        let Ok(options) = self.options_where(e, (e.remaining, restarted), now, |p, m, d| !known(p, m, d))
        else {
            return Ok(false);
        };
        for o in options.iter().filter(|o| o.quota.is_ok()) {
            if !tl.fits(o.pool, &o.req, now, o.duration) {
                continue;
            }
            if let Ok(start) = self.try_start(id, o, now, false)? {
                tl.add(o.pool, &o.req, now, now + o.duration);
                out.started.push(start);
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Pending jobs in cycle order: priority, then the queue's fair-share rank, then the queue's own ordering.
    fn order(&self, now: Time) -> Vec<JobId> {
        let present = self.present;
        let live =
            self.jobs.iter().filter_map(|e| e.run.as_ref().map(|r| (e.job.queue, &r.charged, r.started)));
        let shares = self.quotas.fair_ranks(now, live);
        let mut keyed: Vec<(i32, u32, f64, Time, JobId)> = self
            .pending()
            .map(|id| {
                let e = &self.jobs[id as usize];
                let q = e.job.queue;
                let share = shares.get(q as usize).copied().unwrap_or(u32::MAX);
                let own = match self.quotas.spec(q).map(|s| s.ordering) {
                    Some(Ordering::ShortestFirst) => {
                        let width: f64 = e.job.gang.tasks.iter().map(|t| f64::from(t.gpus.max(1))).sum();
                        width * best_runtime(e, e.remaining, present)
                            - SHORTEST_FIRST_AGING * (now - e.job.submitted).max(0.0)
                    }
                    _ => e.job.submitted,
                };
                (-e.job.priority, share, own, e.job.submitted, id)
            })
            .collect();
        keyed.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then(a.1.cmp(&b.1))
                .then(a.2.total_cmp(&b.2))
                .then(a.3.total_cmp(&b.3))
                .then(a.4.cmp(&b.4))
        });
        keyed.into_iter().map(|k| k.4).collect()
    }

    /// Capacity per (pool, flavor) and the usage of running jobs until their estimated end.
    fn timeline(&self, now: Time) -> Timeline {
        let mut tl = Timeline::at(now);
        for ((p, f), v) in &self.capacity {
            tl.set_capacity(*p, *f, *v);
        }
        tl.add_held(&self.holdings, now);
        // The holdings must say what every running job does: checked against them all in debug builds (every test).
        #[cfg(debug_assertions)]
        {
            let mut all = Timeline::at(now);
            all.add_all(
                self.jobs
                    .iter()
                    .filter_map(|e| e.run.as_ref())
                    .map(|r| (r.pool, &r.charged, now, r.est_end.max(now + 1.0))),
            );
            assert!(tl.same_usage(&all), "the running jobs' holdings drifted from their runs");
        }
        tl
    }

    /// Considers one pending job: starts it, preempts for it, or reserves its earliest start. Returns its
    /// (estimated) start.
    fn consider(
        &mut self,
        id: JobId,
        now: Time,
        may_start: bool,
        tl: &mut Timeline,
        out: &mut Cycle,
    ) -> Result<Option<Time>, ScheduleError> {
        let options = match self.options(&self.jobs[id as usize], now) {
            Ok(o) => o,
            Err(reason) => {
                let st = &mut self.jobs[id as usize].status;
                st.estimated_start = None;
                st.reasons = vec![reason];
                return Ok(None);
            }
        };
        let mut reasons = Vec::new();
        let mut outlooks = self.outlooks(id, &options, now, tl, &mut reasons);
        outlooks.sort_by(|a, b| a.finish.total_cmp(&b.finish).then(a.start.total_cmp(&b.start)));
        let fastest = outlooks.first().copied();
        self.prefer_starting_now(&mut outlooks, now, self.jobs[id as usize].status.preemptions > 0);
        if may_start && self.start_now(id, &options, &outlooks, fastest, now, tl, out, &mut reasons)? {
            return Ok(Some(now));
        }
        if !may_start {
            self.say_faster_later(&options, &outlooks, now, &mut reasons);
        }
        // The queues each option may take from, for the attempt to preempt and for the next chance to.
        let queues: Vec<Vec<u32>> = if self.config.preemption {
            options.iter().map(|o| self.victim_queues(id, o, now)).collect()
        } else {
            Vec::new()
        };
        if may_start && self.config.preemption && self.try_preempt(id, &options, &queues, now, tl, out)? {
            return Ok(Some(now));
        }
        let start = self.reserve(id, &options, &outlooks, &queues, now, tl);
        let hints = self.hints(id, start, now, tl);
        let st = &mut self.jobs[id as usize].status;
        st.estimated_start = start;
        st.estimated_end = None;
        st.reasons = reasons;
        st.hints = hints;
        Ok(start)
    }

    /// When each option could start and finish, with why those that cannot start now wait (quota, reservation).
    fn outlooks(
        &self,
        id: JobId,
        options: &[RunOption],
        now: Time,
        tl: &Timeline,
        reasons: &mut Vec<PendingReason>,
    ) -> Vec<Outlook> {
        let mut outlooks = Vec::new();
        for (index, o) in options.iter().enumerate() {
            if let Err(shortfall) = &o.quota {
                reasons.push(PendingReason::Quota { model: o.model, shortfall: shortfall.clone() });
                let later = self.quota_free_at(id, o, now);
                if let Some(start) = later.and_then(|t| tl.earliest(o.pool, &o.req, t, o.duration)) {
                    outlooks.push(Outlook { index, start, finish: start + o.duration });
                }
                continue;
            }
            if let Some(start) = tl.earliest(o.pool, &o.req, now, o.duration) {
                if start > now {
                    let flavor = o.model.map_or(Flavor::Cpu, Flavor::Gpu);
                    reasons.push(PendingReason::Reservation {
                        pool: o.pool,
                        model: o.model,
                        flavor,
                        needed: o.req.get(flavor),
                        free_now: tl.free_now(o.pool, flavor),
                        wait_s: start - now,
                    });
                }
                outlooks.push(Outlook { index, start, finish: start + o.duration });
            }
        }
        outlooks
    }

    /// Starts the job now with the option that finishes first, if that option can start now; before settling for
    /// a slower option it makes room on the one that finishes first when jobs the order puts well behind hold it
    /// and are near their checkpoints. Returns whether it started (or preempted to start).
    #[allow(clippy::too_many_arguments)]
    fn start_now(
        &mut self,
        id: JobId,
        options: &[RunOption],
        outlooks: &[Outlook],
        fastest: Option<Outlook>,
        now: Time,
        tl: &mut Timeline,
        out: &mut Cycle,
        reasons: &mut Vec<PendingReason>,
    ) -> Result<bool, ScheduleError> {
        let Some(best) = outlooks.first().copied() else { return Ok(false) };
        let slower = fastest.filter(|f| f.index != best.index && f.start > now);
        if let Some(f) = slower.filter(|_| self.config.preemption && self.config.preempt_for_speed) {
            let o = std::slice::from_ref(&options[f.index]);
            if self.try_preempt(id, o, &[self.victim_queues(id, &o[0], now)], now, tl, out)? {
                return Ok(true);
            }
        }
        if best.start <= now {
            let o = &options[best.index];
            match self.try_start(id, o, now, true)? {
                Ok(start) => {
                    tl.add(o.pool, &o.req, now, now + o.duration);
                    out.started.push(start);
                    return Ok(true);
                }
                Err(rejection) => {
                    reasons.push(PendingReason::Placement { pool: o.pool, model: o.model, rejection })
                }
            }
        } else {
            self.say_faster_later(options, outlooks, now, reasons);
        }
        Ok(false)
    }

    /// When the option that finishes first starts later while another could start now: says how much waiting
    /// saves.
    fn say_faster_later(
        &self,
        options: &[RunOption],
        outlooks: &[Outlook],
        now: Time,
        reasons: &mut Vec<PendingReason>,
    ) {
        let Some(best) = outlooks.first().filter(|b| b.start > now) else { return };
        if let Some(now_opt) = outlooks.iter().find(|x| x.start <= now) {
            reasons.push(PendingReason::FasterLater {
                model: options[best.index].model,
                saves_s: now_opt.finish - best.finish,
            });
        }
    }

    /// Reserves the job's estimated start on the timeline (the first option that starts later, else the best one
    /// a second from now), or an earlier preemption chance; returns that start.
    fn reserve(
        &mut self,
        id: JobId,
        options: &[RunOption],
        outlooks: &[Outlook],
        queues: &[Vec<u32>],
        now: Time,
        tl: &mut Timeline,
    ) -> Option<Time> {
        // A job limited to a node set that found no place while its pool had the capacity reserves nothing: the
        // pool-wide timeline cannot tell its nodes from the rest and would hold the whole pool for it.
        let limited = self.jobs[id as usize].job.gang.tasks.iter().any(|t| !t.nodes.is_any());
        let later = outlooks.iter().find(|x| x.start > now);
        let chosen = if limited { later.copied() } else { later.or(outlooks.first()).copied() };
        let start = chosen.map(|x| {
            let o = &options[x.index];
            let start = if x.start <= now {
                tl.earliest(o.pool, &o.req, now + 1.0, o.duration).unwrap_or(now + 1.0)
            } else {
                x.start
            };
            tl.add(o.pool, &o.req, start, start + o.duration);
            start
        });
        let chance =
            if self.config.preemption { self.next_preemption_chance(id, options, queues, now) } else { None };
        match (start, chance) {
            (Some(s), Some(c)) => Some(s.min(c)),
            (s, c) => s.or(c),
        }
    }

    /// With upgrades on, an option that can start now goes first when it finishes within `1 + start_now_slack`
    /// times the best option's time from now (for a job that was `evicted`, whenever it can start now): the job
    /// starts at once and moves up when faster capacity frees.
    fn prefer_starting_now(&self, outlooks: &mut Vec<Outlook>, now: Time, evicted: bool) {
        let Some(best) = outlooks.first().copied() else { return };
        if !self.config.upgrades || best.start <= now {
            return;
        }
        // An evicted job ranks behind the jobs that evicted it, so its wait for the faster option is the least
        // reliable of estimates: it resumes on whatever is free, and an upgrade brings it back.
        let limit =
            if evicted { f64::INFINITY } else { (best.finish - now) * (1.0 + self.config.start_now_slack) };
        if let Some(i) = outlooks.iter().position(|x| x.start <= now && x.finish - now <= limit) {
            let x = outlooks.remove(i);
            outlooks.insert(0, x);
        }
    }

    /// Places the job's gang for option `o` and charges its queue; the placer's rejection otherwise (explained
    /// only when `explained`). A gang shape that found no nodes in a pool is not tried there again this cycle: its
    /// rejection is remembered until something is evicted.
    fn try_start(
        &mut self,
        id: JobId,
        o: &RunOption,
        now: Time,
        explained: bool,
    ) -> Result<Result<Start, crate::placer::Rejection>, ScheduleError> {
        let key = (o.pool, self.gang_for(id, o));
        if let Some(r) = self.unplaceable.get(&key).filter(|r| !explained || r.nodes > 0) {
            return Ok(Err(r.clone()));
        }
        let outcome = if explained {
            self.placer.place_in(&mut self.snap, &key.1, Some(o.pool))?
        } else {
            match self.placer.try_place_in(&mut self.snap, &key.1, Some(o.pool))? {
                Some(p) => Outcome::Placed(p),
                None => Outcome::Rejected(crate::placer::Rejection::unexplained(0)),
            }
        };
        match outcome {
            Outcome::Placed(p) => Ok(Ok(self.start_with(id, o, p, now)?)),
            Outcome::Rejected(r) => {
                self.unplaceable.insert(key, r.clone());
                Ok(Err(r))
            }
        }
    }

    /// The job's gang restricted to the option's GPU model.
    pub(crate) fn gang_for(&self, id: JobId, o: &RunOption) -> crate::model::Gang {
        Self::gang_of(&self.jobs[id as usize], o.model)
    }

    /// A job's gang restricted to GPU model `model` (as it is for `None`).
    fn gang_of(e: &Entry, model: Option<ModelId>) -> crate::model::Gang {
        let mut gang = e.job.gang.clone();
        if let Some(m) = model {
            gang.tasks.iter_mut().filter(|t| !t.is_cpu_only()).for_each(|t| t.models = ModelSet::one(m));
        }
        gang
    }

    /// Records a job as running with `placement` (already assumed in the snapshot) and charges its queue.
    pub(crate) fn start_with(
        &mut self,
        id: JobId,
        o: &RunOption,
        placement: Placement,
        now: Time,
    ) -> Result<Start, ScheduleError> {
        let e = &self.jobs[id as usize];
        self.quotas.charge(e.job.queue, e.job.user, &o.req)?;
        let est_end = now + o.duration;
        self.set_run(
            id,
            Some(Run {
                placement: placement.clone(),
                pool: o.pool,
                model: o.model,
                charged: o.req.clone(),
                started: now,
                working_from: now + o.setup,
                est_end,
            }),
        );
        let e = &mut self.jobs[id as usize];
        e.status.phase = Phase::Running;
        e.status.estimated_start = Some(now);
        e.status.estimated_end = Some(est_end);
        e.status.reasons.clear();
        e.status.hints.clear();
        Ok(Start { job: id, placement, pool: o.pool, model: o.model, est_end })
    }

    /// When enough of the queue's running work ends for option `o` to fit its quota (None: never by itself).
    fn quota_free_at(&self, id: JobId, o: &RunOption, now: Time) -> Option<Time> {
        let e = &self.jobs[id as usize];
        let Err(short) = &o.quota else { return Some(now) };
        let missing = short.needed.saturating_sub(short.left + short.cohort_can_lend);
        let members = self.members.get(e.job.queue as usize).map_or(&[][..], Vec::as_slice);
        let mut ends: Vec<(Time, u64)> = members
            .iter()
            .filter_map(|x| self.jobs[*x as usize].run.as_ref())
            .map(|r| (r.est_end.max(now), r.charged.get(short.flavor)))
            .collect();
        ends.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut freed = 0u64;
        for (t, v) in ends {
            freed += v;
            if freed >= missing {
                return Some(t);
            }
        }
        None
    }

    /// GPU models the job does not allow that would let it start at least a minute earlier.
    fn hints(&self, id: JobId, start: Option<Time>, now: Time, tl: &Timeline) -> Vec<Hint> {
        let e: &Entry = &self.jobs[id as usize];
        let allowed = Self::allowed_models(e);
        if allowed.is_any() || e.job.gang.tasks.iter().all(|t| t.is_cpu_only()) {
            return Vec::new();
        }
        // No other model can start it a minute earlier than a start within a minute from now.
        let Some(current) = start.filter(|s| *s - now >= 60.0) else { return Vec::new() };
        let pools = self.cleared_pools(e);
        let models = &self.pool_models;
        let mut hints: Vec<Hint> = Vec::new();
        for p in pools {
            for m in ModelSet(models.get(p as usize).map_or(0, |s| s.0) & !allowed.0).iter() {
                // A model's first hint is its hint; the earliest-start search is the cost, so it goes last.
                if hints.iter().any(|h| matches!(h, Hint::AcceptModel { model, .. } if *model == m)) {
                    continue;
                }
                let req = crate::queue::Resources::of_gang(&e.job.gang, Some(m));
                if self.quotas.fits(e.job.queue, e.job.user, &req, now).is_err() {
                    continue;
                }
                let run = e.job.work.runtime(e.remaining, Some(m));
                if let Some(t) = tl.earliest(p, &req, now, run).filter(|t| current - t >= 60.0) {
                    hints.push(Hint::AcceptModel { model: m, earlier_by_s: current - t });
                }
            }
        }
        hints
    }
}

/// The job's shortest runtime for `remaining` work over the models present (its CPU-only runtime for CPU-only jobs).
pub(crate) fn best_runtime(e: &Entry, remaining: f64, present: ModelSet) -> f64 {
    if e.job.gang.tasks.iter().all(|t| t.is_cpu_only()) {
        return e.job.work.runtime(remaining, None);
    }
    let allowed = Scheduler::allowed_models(e);
    ModelSet(allowed.0 & present.0)
        .iter()
        .map(|m| e.job.work.runtime(remaining, Some(m)))
        .fold(f64::INFINITY, f64::min)
}
