//! Jobs already running when a scheduler is built: kept where an earlier decision put them.

use super::{Entry, JobStatus, Phase, Run, ScheduleError, Scheduler};
use crate::model::{Job, JobId, ModelId, PoolId, Time};
use crate::placer::Placement;
use crate::queue::Resources;

impl Scheduler {
    /// Records `job` as running since `started` with `placement` (task for task) in `pool` on `model`, as an
    /// earlier decision placed it, e.g. one an operator read back after a restart. The work done since
    /// `started` is taken off at `model`'s rate. Fails, changing nothing, when the placement does not fit the
    /// snapshot (two jobs on one GPU is a broken invariant) or does not match the job's tasks.
    pub fn adopt(
        &mut self,
        job: Job,
        placement: Placement,
        pool: PoolId,
        model: Option<ModelId>,
        started: Time,
        now: Time,
    ) -> Result<JobId, ScheduleError> {
        self.check_submission(&job)?;
        if placement.tasks.len() != job.gang.tasks.len() {
            return Err(ScheduleError::PlacementMismatch {
                job: job.name,
                tasks: job.gang.tasks.len(),
                placed: placement.tasks.len(),
            });
        }
        let charged = Resources::of_gang(&job.gang, model);
        self.placer.assume(&mut self.snap, &placement)?;
        if let Err(e) = self.quotas.charge(job.queue, job.user, &charged) {
            self.placer.forget(&mut self.snap, &placement)?;
            return Err(e.into());
        }
        let rate = job.work.rate(model);
        let remaining = (job.work.total - (now - started).max(0.0) * rate).max(0.0);
        let est_end = now + if rate > 0.0 { remaining / rate } else { 0.0 };
        let status = JobStatus {
            phase: Phase::Running,
            estimated_start: Some(started),
            estimated_end: Some(est_end),
            ..JobStatus::default()
        };
        let run = Run { placement, pool, model, charged, started, working_from: now, est_end };
        Ok(self.push(Entry { job, remaining, run: Some(run), status }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Gang, Work};
    use crate::queue::{Flavor, QueueSpec, Quotas};
    use crate::schedule::SchedulerConfig;
    use crate::snapshot::TaskPlacement;
    use crate::testing::{node, task};

    fn scheduler() -> Scheduler {
        let mut models = crate::model::GpuModels::default();
        models.intern("H100");
        let pool = crate::model::Pool {
            name: "p".into(),
            kind: crate::model::PoolKind::Ai,
            site: String::new(),
            clearance: crate::model::Classification::Public,
        };
        let nodes = vec![node().name("n0").gpus(8, 0).build(), node().name("n1").gpus(8, 0).build()];
        let cluster =
            crate::model::Cluster { models, pools: vec![pool], nodes, node_sets: Default::default() };
        let mut quotas = Quotas::default();
        quotas.add(QueueSpec::new("q", Resources::default().with(Flavor::Gpu(0), 16_000))).unwrap();
        Scheduler::new(cluster, quotas, SchedulerConfig::default(), None).unwrap()
    }

    fn job(name: &str, gpus: u32) -> Job {
        Job {
            name: name.into(),
            queue: 0,
            priority: 0,
            submitted: 0.0,
            gang: Gang::single(task().gpus(gpus, 1000).build()),
            work: Work::seconds(100.0),
            datasets: Vec::new(),
            pools: Vec::new(),
            preemptible: true,
            checkpoint_s: None,
            user: None,
        }
    }

    fn on(node: u32, gpus: u32, j: &Job) -> Placement {
        Placement { tasks: vec![TaskPlacement { node, gpus, spec: j.gang.tasks[0] }] }
    }

    #[test]
    fn an_adopted_job_holds_its_gpus_and_quota_and_has_done_its_work_so_far() {
        let mut s = scheduler();
        let j = job("a", 4);
        let id = s.adopt(j.clone(), on(0, 0b1111, &j), 0, Some(0), 10.0, 40.0).unwrap();
        assert_eq!(s.quotas().usage(0).get(Flavor::Gpu(0)), 4000);
        assert_eq!(s.remaining(id), Some(70.0));
        assert_eq!(s.status(id).unwrap().estimated_end, Some(110.0));
        assert_eq!(s.snapshot().allocated(0)[..4], [1000, 1000, 1000, 1000]);
    }

    #[test]
    fn adopting_a_placement_that_overlaps_another_fails_and_changes_nothing() {
        let mut s = scheduler();
        let a = job("a", 4);
        s.adopt(a.clone(), on(0, 0b1111, &a), 0, Some(0), 0.0, 0.0).unwrap();
        let b = job("b", 4);
        let err = s.adopt(b.clone(), on(0, 0b1_1000, &b), 0, Some(0), 0.0, 0.0).unwrap_err();
        assert!(matches!(err, ScheduleError::Snapshot(_)), "{err}");
        assert_eq!(s.quotas().usage(0).get(Flavor::Gpu(0)), 4000);
        assert_eq!(s.len(), 1);
        assert_eq!(s.snapshot().allocated(0)[4], 0);
    }

    #[test]
    fn adopting_a_placement_with_the_wrong_number_of_tasks_is_refused() {
        let mut s = scheduler();
        let a = job("a", 4);
        let err = s.adopt(a, Placement { tasks: Vec::new() }, 0, Some(0), 0.0, 0.0).unwrap_err();
        assert!(matches!(err, ScheduleError::PlacementMismatch { .. }));
    }
}
