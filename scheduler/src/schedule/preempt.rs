//! Preemption: evict the fewest victims that lose least work, for priority, reclaim, fair share or queue order.
// Never a livelock: within a queue only strictly lower priorities are evicted, or equal ones the order puts
// behind by a 2x margin (two jobs cannot both have twice the other's remaining time); reclaim only evicts jobs of
// queues above their nominal quota in the flavor claimed, for a queue that stays within its own; fair share only
// takes from a queue borrowing that flavor whose borrowed share stays above the newcomer's own once it runs (so
// the victim could not take it back), and leaves it its nominal quota (or it would reclaim).

use super::cycle::Cycle;
use super::options::RunOption;
use super::{Phase, ScheduleError, Scheduler, Timeline, saved_work};
use crate::model::{JobId, QueueId, Time};
use crate::queue::WithinQueue;

/// A victim evicted for ordering must have at least this many times the newcomer's run time left.
const ORDER_MARGIN: f64 = 2.0;
/// …and lose at most this many seconds of run time since its last checkpoint.
pub(crate) const ORDER_MAX_LOSS_S: f64 = 300.0;

/// A possible victim with its sort key (see `Scheduler::candidates`), then its next preemption chance.
type Candidate = (usize, f64, i32, f64, Time, JobId, Option<Time>);

/// Why a newcomer of queue `queue` may take from other queues of its cohort tree.
#[derive(Debug, Clone, Copy)]
struct Claim {
    queue: QueueId,
    /// It stays within its own nominal quota: it reclaims what it lent.
    reclaim: bool,
    /// Its borrowed share once it runs.
    share: f64,
}

impl Scheduler {
    fn claim(&self, id: JobId, o: &RunOption, now: Time) -> Claim {
        let queue = self.jobs[id as usize].job.queue;
        Claim {
            queue,
            reclaim: self.quotas.within_nominal(queue, &o.req, now),
            share: self.quotas.borrowed_share(queue, &o.req, now),
        }
    }

    /// Whether the claim may evict jobs of queue `v` now: `v` borrows in the same cohort tree, in a flavor the claim
    /// asks for (a queue below its nominal quota of a GPU model lends none of it, whatever else it borrows), and
    /// either the newcomer reclaims lent quota or `v` borrows a larger share than the newcomer's queue will.
    fn takes_from(&self, c: Claim, o: &RunOption, v: QueueId, now: Time) -> bool {
        v != c.queue
            && self.quotas.same_tree(c.queue, v)
            && self.quotas.borrows_in(v, &o.req, now)
            && (c.reclaim
                || c.share < self.quotas.borrowed_share(v, &crate::queue::Resources::default(), now))
    }

    /// Running jobs that `id` may evict to run as option `o`, cheapest first. With `any_loss`, jobs that would
    /// lose too much work now count too (to find when the next chance comes).
    ///
    /// Jobs of other queues come first, from the queue farthest from the newcomer's in the cohort tree (lent quota
    /// comes back from other teams before a sub-cohort's own members), then the largest borrower.
    pub(crate) fn victims_for(&self, id: JobId, o: &RunOption, now: Time, any_loss: bool) -> Vec<JobId> {
        self.victims_in(id, o, now, any_loss, &self.victim_queues(id, o, now))
    }

    /// Those of `victims_for` in `queues` (its `victim_queues`, worked out already).
    fn victims_in(&self, id: JobId, o: &RunOption, now: Time, any_loss: bool, queues: &[u32]) -> Vec<JobId> {
        let mut c = self.candidates_in(id, o, now, any_loss, queues);
        c.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then(a.1.total_cmp(&b.1))
                .then(a.2.cmp(&b.2))
                .then(a.3.total_cmp(&b.3))
                .then(a.4.total_cmp(&b.4))
                .then(a.5.cmp(&b.5))
        });
        c.into_iter().map(|x| x.5).collect()
    }

    /// The queues whose running jobs in the option's pool `id` may evict: its own, and those it may take from.
    /// Queues with nothing running there have no victims: their quota is not looked at. Only the newcomer's cohort
    /// tree is walked (`takes_from` needs one), in ascending order.
    pub(crate) fn victim_queues(&self, id: JobId, o: &RunOption, now: Time) -> Vec<u32> {
        let own = self.jobs[id as usize].job.queue;
        let claim = self.claim(id, o, now);
        let alone = [own];
        let tree = match self.quotas.cohort_of(own) {
            [] => &alone[..],
            t => t,
        };
        tree.iter()
            .copied()
            .filter(|q| {
                !self.standings.of(*q, o.pool).is_empty() && (*q == own || self.takes_from(claim, o, *q, now))
            })
            .collect()
    }

    /// The running jobs `victims_for` returns, unordered, each with its sort key: closeness of its queue to the
    /// newcomer's, its queue's borrowed share (negated), priority, work lost, start (negated). Debug builds check
    /// what is worked out from kept figures against it.
    #[cfg(debug_assertions)]
    fn candidates(&self, id: JobId, o: &RunOption, now: Time, any_loss: bool) -> Vec<Candidate> {
        self.candidates_in(id, o, now, any_loss, &self.victim_queues(id, o, now))
    }

    /// Those of `candidates` in `queues` (a part of `victim_queues`).
    fn candidates_in(
        &self,
        id: JobId,
        o: &RunOption,
        now: Time,
        any_loss: bool,
        queues: &[u32],
    ) -> Vec<Candidate> {
        let job = &self.jobs[id as usize].job;
        let claim = self.claim(id, o, now);
        let policy = self.quotas.spec(job.queue).map_or(WithinQueue::Never, |s| s.within_queue);
        let newcomer = {
            let e = &self.jobs[id as usize];
            super::cycle::best_runtime(e, e.remaining, self.present)
        };
        let none = crate::queue::Resources::default();
        // Per queue, not per job: how close it is to the newcomer's and the share it borrows.
        let rank = |q: u32| {
            if q == job.queue {
                (usize::MAX, 0.0)
            } else {
                (self.quotas.kinship(job.queue, q), -self.quotas.borrowed_share(q, &none, now))
            }
        };
        queues
            .iter()
            .flat_map(|q| {
                let r = rank(*q);
                self.standings.of(*q, o.pool).iter().map(move |s| (*q, r, s))
            })
            .filter(|(_, _, s)| s.id != id)
            .filter_map(|(q, (closeness, share), s)| {
                let s = self.standing_now(s, now).filter(|s| s.pool == o.pool)?;
                let near = any_loss || s.near;
                let same = q == job.queue && policy != WithinQueue::Never;
                let lower = same && s.priority < job.priority;
                let later = same
                    && policy == WithinQueue::LowerOrLaterInOrder
                    && s.priority == job.priority
                    && s.left_s >= ORDER_MARGIN * newcomer
                    && near;
                let other = q != job.queue;
                // Reclaiming lent quota may cost any work; taking for fair share only work near a checkpoint.
                if !(lower || later || (other && (claim.reclaim || near))) {
                    return None;
                }
                Some((closeness, share, s.priority, s.lost, -s.started, s.id, s.chance))
            })
            .collect()
    }

    /// Tries each option: evicts candidates one by one until the job fits; commits only if it then starts.
    /// `queues` holds each option's `victim_queues`, worked out before (an attempt that fails undoes its evictions,
    /// so they stay right for the next option, and for the job's next preemption chance).
    pub(crate) fn try_preempt(
        &mut self,
        id: JobId,
        options: &[RunOption],
        queues: &[Vec<u32>],
        now: Time,
        tl: &mut Timeline,
        out: &mut Cycle,
    ) -> Result<bool, ScheduleError> {
        debug_assert_eq!(options.len(), queues.len(), "one list of victim queues per option");
        for (o, queues) in options.iter().zip(queues) {
            debug_assert_eq!(*queues, self.victim_queues(id, o, now), "an option's victim queues went stale");
            let candidates = self.victims_in(id, o, now, false, queues);
            let mut evicted: Vec<JobId> = Vec::new();
            let claim = self.claim(id, o, now);
            let (queue, user) = (claim.queue, self.jobs[id as usize].job.user);
            let borrowed = self.quotas.borrowed_in(queue, &o.req, &crate::queue::Resources::default(), now);
            for v in candidates {
                let vq = self.jobs[v as usize].job.queue;
                // Each eviction lowers the victim queue's share: take from it only while it still may be taken from.
                if vq != queue && !self.takes_from(claim, o, vq, now) {
                    continue;
                }
                // Fair share divides what is borrowed: a victim's queue left below its nominal quota would take it
                // back at once by reclaim, which outranks fair share.
                if vq != queue && !claim.reclaim && !self.keeps_nominal_without(v, o, now) {
                    continue;
                }
                self.evict(v)?;
                evicted.push(v);
                if self.quotas.fits(queue, user, &o.req, now).is_err() {
                    continue;
                }
                // Displacing its own queue's jobs never makes a queue borrow more: what it borrowed so could be
                // reclaimed by a queue whose jobs it displaced in turn, and round again.
                let own = evicted.iter().any(|x| self.jobs[*x as usize].job.queue == queue);
                if own && self.quotas.borrowed_in(queue, &o.req, &o.req, now) > borrowed {
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

    /// Whether the queue of running job `v` keeps its nominal quota of the option's flavors without it.
    fn keeps_nominal_without(&self, v: JobId, o: &RunOption, now: Time) -> bool {
        let e = &self.jobs[v as usize];
        e.run.as_ref().is_some_and(|r| self.quotas.keeps_nominal(e.job.queue, &o.req, &r.charged, now))
    }

    /// Whether a running job would lose at most `ORDER_MAX_LOSS_S` of run time if evicted now.
    pub(crate) fn near_checkpoint(&self, v: JobId, now: Time) -> bool {
        let e = &self.jobs[v as usize];
        let Some(r) = e.run.as_ref() else { return false };
        let rate = e.job.work.rate(r.model);
        let done = (now - r.working_from).max(0.0) * rate;
        done - saved_work(&e.job, rate, r.working_from, now) <= ORDER_MAX_LOSS_S * rate
    }

    /// The next time one of the job's possible victims reaches a checkpoint (and so could be evicted cheaply);
    /// `queues` holds each option's `victim_queues`.
    pub(crate) fn next_preemption_chance(
        &self,
        id: JobId,
        options: &[RunOption],
        queues: &[Vec<u32>],
        now: Time,
    ) -> Option<Time> {
        // The earliest of them: their order does not matter. Every running job of another queue counts when any
        // loss does, so such a queue's earliest chance in the pool, kept since the cycle's start, stands for its
        // jobs while none of their runs changed.
        let own = self.jobs[id as usize].job.queue;
        let chance = options
            .iter()
            .zip(queues)
            .flat_map(|(o, queues)| {
                let (kept, read): (Vec<u32>, Vec<u32>) = queues
                    .iter()
                    .partition(|q| **q != own && self.standings.unchanged(**q, o.pool, now).is_some());
                let kept = kept.into_iter().filter_map(|q| self.standings.list(q, o.pool)?.earliest);
                let read = self.candidates_in(id, o, now, true, &read).into_iter().filter_map(|c| c.6);
                kept.chain(read).collect::<Vec<_>>()
            })
            .filter(|t| *t > now)
            .min_by(|a, b| a.total_cmp(b));
        // Checked against every candidate in debug builds (every test).
        #[cfg(debug_assertions)]
        {
            let all = options
                .iter()
                .flat_map(|o| self.candidates(id, o, now, true))
                .filter_map(|c| c.6)
                .filter(|t| *t > now)
                .min_by(|a, b| a.total_cmp(b));
            assert_eq!(chance, all, "a kept earliest preemption chance went stale");
        }
        chance
    }

    /// What a running job holds: its placement, the quota it is charged, and its queue.
    fn held(
        &self,
        v: JobId,
    ) -> Option<(crate::placer::Placement, crate::queue::Resources, QueueId, Option<u32>)> {
        let e = &self.jobs[v as usize];
        e.run.as_ref().map(|r| (r.placement.clone(), r.charged.clone(), e.job.queue, e.job.user))
    }

    /// Frees a running job's nodes and quota (its run record stays until it is requeued or restored).
    pub(crate) fn evict(&mut self, v: JobId) -> Result<(), ScheduleError> {
        if let Some((placement, charged, queue, user)) = self.held(v) {
            self.placer.forget(&mut self.snap, &placement)?;
            self.quotas.release(queue, user, &charged)?;
        }
        Ok(())
    }

    /// Gives an evicted job its place back if its nodes and its queue's quota still have room.
    fn try_restore(&mut self, v: JobId, now: Time) -> Result<bool, ScheduleError> {
        let Some((placement, charged, queue, user)) = self.held(v) else { return Ok(false) };
        if self.quotas.fits(queue, user, &charged, now).is_err() {
            return Ok(false);
        }
        match self.placer.assume(&mut self.snap, &placement) {
            Ok(()) => {
                self.quotas.charge(queue, user, &charged)?;
                Ok(true)
            }
            Err(crate::snapshot::SnapshotError::OverCommit { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Undoes an eviction whose resources nobody took in between.
    pub(crate) fn restore(&mut self, v: JobId) -> Result<(), ScheduleError> {
        if let Some((placement, charged, queue, user)) = self.held(v) {
            self.placer.assume(&mut self.snap, &placement)?;
            self.quotas.charge(queue, user, &charged)?;
        }
        Ok(())
    }

    /// Turns an evicted job back into a pending one that keeps the work up to its last checkpoint.
    pub(crate) fn requeue(&mut self, v: JobId, now: Time, tl: &mut Timeline) {
        let taken = self.take_run(v);
        let e = &mut self.jobs[v as usize];
        if let Some(r) = taken {
            // Its nodes stay free: gangs that found no room in its pool may fit now. (An eviction undone leaves
            // the remembered rejections true.)
            self.unplaceable.retain(|(p, _), _| *p != r.pool);
            let rate = e.job.work.rate(r.model);
            e.remaining = (e.remaining - saved_work(&e.job, rate, r.working_from, now)).max(0.0);
            tl.remove(r.pool, &r.charged, now, r.est_end.max(now + 1.0));
            self.quotas.record_run(e.job.queue, &r.charged, r.started, now);
        }
        e.status.phase = Phase::Pending;
        e.status.preemptions += 1;
        e.status.estimated_start = None;
        e.status.estimated_end = None;
    }
}
