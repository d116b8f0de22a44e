//! `haiyun-bench cycle`: full scheduling cycles at scale, and admissions per second on Kueue's scale-test shape; each
//! cycle after the first follows a few arrivals and finishes, and the first is set against placing the same jobs with
//! the placer alone in the same run.

use std::time::Instant;

use haiyun_scheduler::model::{Cluster, Gang, Job, ModelSet, Work};
use haiyun_scheduler::placer::Placer;
use haiyun_scheduler::plugin::{Policy, TypicalPods};
use haiyun_scheduler::queue::{Flavor, QueueSpec, Quotas, Resources};
use haiyun_scheduler::rng::SplitMix64;
use haiyun_scheduler::schedule::{Cycle, ScheduleError, Scheduler, SchedulerConfig};
use haiyun_scheduler::snapshot::Snapshot;
use haiyun_scheduler::testing::{synthetic_federation, synthetic_workload};
use serde::Serialize;

use crate::scale::rss_mib;

/// Places the gangs the cycle started, in its order and as it restricted them to their GPU model, with the placer
/// alone on a fresh snapshot of the same federation (the scheduler's own policy); seconds.
fn baseline(sched: &Scheduler, c: &Cycle, seed: u64) -> Result<f64, ScheduleError> {
    let cluster = sched.snapshot().cluster().clone();
    let gangs: Vec<Gang> = c
        .started
        .iter()
        .filter_map(|s| {
            let mut g = sched.job(s.job)?.gang.clone();
            if let Some(m) = s.model {
                g.tasks.iter_mut().filter(|t| !t.is_cpu_only()).for_each(|t| t.models = ModelSet::one(m));
            }
            Some(g)
        })
        .collect();
    let typical = TypicalPods::default();
    let mut snap = Snapshot::new(cluster)?;
    let config = SchedulerConfig::default();
    let policy = Policy::new(config.policy, seed, Some(&typical)).map_err(ScheduleError::from)?;
    let mut placer = Placer::new(policy, config.placer);
    let start = Instant::now();
    for g in &gangs {
        let _ = placer.place(&mut snap, g)?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct CycleReport {
    /// Nodes.
    pub nodes: usize,
    /// Pending jobs submitted.
    pub jobs: usize,
    /// Queues.
    pub queues: usize,
    /// Cohorts.
    pub cohorts: usize,
    /// Jobs that arrive, and running jobs that finish, before each cycle after the first.
    pub arrivals_per_cycle: usize,
    /// Latency of each cycle run, seconds.
    pub cycle_s: Vec<f64>,
    /// Placing the jobs the first cycle admitted, in its order, with the placer alone (as `haiyun-bench scale` does)
    /// on a fresh snapshot, seconds.
    pub baseline_place_s: f64,
    /// The first cycle over that baseline.
    pub first_over_baseline: f64,
    /// The mean later cycle over the first.
    pub later_over_first: f64,
    /// Jobs admitted by each cycle.
    pub admitted: Vec<usize>,
    /// Jobs each cycle preempted.
    pub preempted: Vec<usize>,
    /// Admitted jobs per second of cycle time, over all cycles.
    pub admissions_per_s: f64,
    /// Resident memory before building the scheduler, MiB.
    pub rss_before_mib: f64,
    /// Resident memory after the cycles, MiB.
    pub rss_after_mib: f64,
    /// Peak resident memory, MiB.
    pub rss_peak_mib: f64,
}

/// Builds `queues` queues in `cohorts` cohorts sharing the federation's capacity evenly (nominal = capacity /
/// queues per flavor), and `jobs` jobs spread over them with run times of 10 min to 10 h.
pub fn setup(
    nodes: usize,
    jobs: usize,
    queues: usize,
    cohorts: usize,
    seed: u64,
) -> Result<(Scheduler, Vec<Job>), ScheduleError> {
    let (queues, cohorts) = (queues.max(1), cohorts.max(1));
    let cluster: Cluster = synthetic_federation(nodes, seed);
    let mut total = Resources::default();
    for n in &cluster.nodes {
        total.set(Flavor::Cpu, total.get(Flavor::Cpu) + n.cpu_milli);
        total.set(Flavor::Memory, total.get(Flavor::Memory) + n.memory_mib);
        for g in &n.gpus {
            total.set(Flavor::Gpu(g.model), total.get(Flavor::Gpu(g.model)) + 1000);
        }
    }
    let share = Resources(total.0.iter().map(|v| v / queues as u64).collect());
    let mut quotas = Quotas::default();
    for q in 0..queues {
        let mut spec = QueueSpec::new(&format!("queue-{q:03}"), share.clone());
        spec.cohort = Some(format!("cohort-{:02}", q % cohorts));
        quotas.add(spec)?;
    }
    let sched = Scheduler::new(cluster, quotas, SchedulerConfig::default(), None)?;
    let mut rng = SplitMix64::new(seed);
    let list = synthetic_workload(jobs + jobs / 10 + 1, seed)
        .into_iter()
        .cycle()
        .take(jobs)
        .enumerate()
        .map(|(i, gang)| Job {
            name: format!("job-{i:06}"),
            queue: (i % queues) as u32,
            priority: (rng.below(3)) as i32,
            submitted: i as f64 * 0.001,
            gang,
            work: Work::seconds(600.0 + rng.below(35_400) as f64),
            datasets: Vec::new(),
            pools: Vec::new(),
            preemptible: true,
            checkpoint_s: Some(1800.0),
            user: None,
        })
        .collect();
    Ok((sched, list))
}

/// What a run is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Nodes (8 GPUs each).
    pub nodes: usize,
    /// Pending jobs at the start.
    pub jobs: usize,
    /// Queues.
    pub queues: usize,
    /// Cohorts.
    pub cohorts: usize,
    /// Cycles to run.
    pub cycles: usize,
    /// Jobs that arrive and running jobs that finish before each cycle after the first.
    pub arrivals: usize,
    /// Seed.
    pub seed: u64,
}

/// Submits the pending jobs and runs the first cycle; before each later one (a second apart), `arrivals` new jobs
/// arrive and as many running jobs finish. Times each cycle, and the placer alone on the first cycle's jobs.
pub fn run(shape: Shape) -> Result<CycleReport, ScheduleError> {
    let Shape { nodes, jobs, queues, cohorts, cycles, arrivals, seed } = shape;
    let (rss_before, _) = rss_mib();
    let later = arrivals * cycles.saturating_sub(1);
    let (mut sched, mut list) = setup(nodes, jobs + later, queues, cohorts, seed)?;
    let mut arriving = list.split_off(jobs.min(list.len())).into_iter();
    let n = list.len();
    for j in list {
        sched.submit(j)?;
    }
    let (mut cycle_s, mut admitted, mut preempted) = (Vec::new(), Vec::new(), Vec::new());
    let mut baseline_place_s = 0.0;
    let mut now = 200.0;
    for i in 0..cycles {
        if i > 0 {
            now += 1.0;
            for j in arriving.by_ref().take(arrivals) {
                sched.submit(Job { submitted: now, ..j })?;
            }
            let done: Vec<u32> = sched.running().take(arrivals).collect();
            for id in done {
                sched.finish(id, now)?;
            }
        }
        let start = Instant::now();
        let c = sched.cycle(now)?;
        cycle_s.push(start.elapsed().as_secs_f64());
        admitted.push(c.started.len());
        preempted.push(c.preempted.len());
        if i == 0 {
            baseline_place_s = baseline(&sched, &c, seed)?;
        }
    }
    let (rss_after, peak) = rss_mib();
    let total_s: f64 = cycle_s.iter().sum();
    let first = cycle_s.first().copied().unwrap_or(0.0);
    let rest = &cycle_s[cycle_s.len().min(1)..];
    let later_mean = if rest.is_empty() { 0.0 } else { rest.iter().sum::<f64>() / rest.len() as f64 };
    Ok(CycleReport {
        nodes,
        jobs: n,
        queues,
        cohorts,
        arrivals_per_cycle: arrivals,
        admissions_per_s: admitted.iter().sum::<usize>() as f64 / total_s.max(1e-9),
        first_over_baseline: first / baseline_place_s.max(1e-9),
        later_over_first: later_mean / first.max(1e-9),
        baseline_place_s,
        cycle_s,
        admitted,
        preempted,
        rss_before_mib: rss_before,
        rss_after_mib: rss_after,
        rss_peak_mib: peak,
    })
}
