//! `haiyun-bench cycle`: full scheduling cycles at scale, and admissions per second on Kueue's scale-test shape.

use std::time::Instant;

use haiyun_scheduler::model::{Cluster, Job, Work};
use haiyun_scheduler::queue::{Flavor, QueueSpec, Quotas, Resources};
use haiyun_scheduler::rng::SplitMix64;
use haiyun_scheduler::schedule::{ScheduleError, Scheduler, SchedulerConfig};
use haiyun_scheduler::testing::{synthetic_federation, synthetic_workload};
use serde::Serialize;

use crate::scale::rss_mib;

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
    /// Latency of each cycle run, seconds.
    pub cycle_s: Vec<f64>,
    /// Jobs admitted by each cycle.
    pub admitted: Vec<usize>,
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
/// queues per flavor), and `jobs` pending jobs spread over them with run times of 10 min to 10 h.
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
    let list = synthetic_workload(jobs + jobs / 10, seed)
        .into_iter()
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

/// Submits every job, then runs `cycles` cycles at one instant, timing each.
pub fn run(
    nodes: usize,
    jobs: usize,
    queues: usize,
    cohorts: usize,
    cycles: usize,
    seed: u64,
) -> Result<CycleReport, ScheduleError> {
    let (rss_before, _) = rss_mib();
    let (mut sched, list) = setup(nodes, jobs, queues, cohorts, seed)?;
    let n = list.len();
    for j in list {
        sched.submit(j)?;
    }
    let (mut cycle_s, mut admitted) = (Vec::new(), Vec::new());
    for _ in 0..cycles {
        let start = Instant::now();
        let c = sched.cycle(200.0)?;
        cycle_s.push(start.elapsed().as_secs_f64());
        admitted.push(c.started.len());
    }
    let (rss_after, peak) = rss_mib();
    let total_s: f64 = cycle_s.iter().sum();
    Ok(CycleReport {
        nodes,
        jobs: n,
        queues,
        cohorts,
        admissions_per_s: admitted.iter().sum::<usize>() as f64 / total_s.max(1e-9),
        cycle_s,
        admitted,
        rss_before_mib: rss_before,
        rss_after_mib: rss_after,
        rss_peak_mib: peak,
    })
}
