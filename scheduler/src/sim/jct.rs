//! A discrete-event simulation of jobs arriving, running and finishing, driven by the scheduler.
// Time is simulated: the scheduler is called at each arrival, finish and promised start.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{Cluster, Job, JobId, Time};
use crate::schedule::{ScheduleError, Scheduler};

/// One line of the decision log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Simulated seconds.
    pub t: Time,
    /// `place`, `preempt` or `finish`.
    pub event: String,
    /// Job name.
    pub job: String,
    /// Pool name.
    pub pool: String,
    /// GPU model name (absent for CPU-only jobs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Nodes and GPUs (on `place` only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskLine>,
}

/// One task of a placement in the decision log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskLine {
    /// Node name.
    pub node: String,
    /// GPU ids (`<node>/<index>`).
    pub gpus: Vec<String>,
}

/// What happened to one job.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JobOutcome {
    /// Job name.
    pub name: String,
    /// Arrival.
    pub arrival: Time,
    /// Estimated start as of the cycle at its arrival.
    pub estimate_at_submit: Option<Time>,
    /// First start.
    pub first_start: Option<Time>,
    /// Completion.
    pub completion: Option<Time>,
    /// Times preempted.
    pub preemptions: u32,
    /// GPU-seconds held (restarts and transfers included).
    pub gpu_seconds: f64,
}

/// A whole simulated run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SimRun {
    /// Per job, in submission order.
    pub jobs: Vec<JobOutcome>,
    /// The decision log, in time order.
    pub decisions: Vec<Decision>,
}

/// Why the simulation stopped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimError {
    /// The scheduler refused a call (a broken invariant).
    #[error("failed to simulate: {0}")]
    Schedule(#[from] ScheduleError),
}

fn place_line(cluster: &Cluster, s: &crate::schedule::Start, name: &str, t: Time) -> Decision {
    let tasks = s
        .placement
        .tasks
        .iter()
        .map(|tp| {
            let node = cluster.nodes.get(tp.node as usize).map_or("?", |n| n.name.as_str()).to_string();
            TaskLine { gpus: tp.gpu_ids().map(|g| format!("{node}/{}", g.index)).collect(), node }
        })
        .collect();
    Decision {
        t,
        event: "place".into(),
        job: name.into(),
        pool: cluster.pools.get(s.pool as usize).map_or("?", |p| p.name.as_str()).into(),
        model: s.model.map(|m| cluster.models.name(m).to_string()),
        tasks,
    }
}

/// Submits `jobs` at their `submitted` times and runs the scheduler until every job that can finish has.
pub fn simulate(mut sched: Scheduler, mut jobs: Vec<Job>) -> Result<SimRun, SimError> {
    jobs.sort_by(|a, b| a.submitted.total_cmp(&b.submitted));
    let cluster = sched.snapshot().cluster().clone();
    let mut run = SimRun::default();
    // Scheduler job id -> index in `run.jobs` (the scheduler may already hold jobs of its own).
    let mut slot: std::collections::HashMap<JobId, usize> = std::collections::HashMap::new();
    let mut ends: BTreeMap<JobId, (Time, Time, String, u32)> = BTreeMap::new();
    let mut next = 0usize;
    let mut last = f64::NEG_INFINITY;
    let eps = 1e-6;
    loop {
        let t_arrival = jobs.get(next).map(|j| j.submitted);
        let t_finish = ends.values().map(|e| e.1).min_by(|a, b| a.total_cmp(b));
        let t_wake = sched
            .pending()
            .filter_map(|id| sched.status(id).and_then(|s| s.estimated_start))
            .filter(|w| *w > last + eps)
            .min_by(|a, b| a.total_cmp(b));
        let Some(t) = [t_arrival, t_finish, t_wake].into_iter().flatten().min_by(|a, b| a.total_cmp(b))
        else {
            break;
        };
        last = t;
        let done: Vec<JobId> = ends.iter().filter(|(_, e)| e.1 <= t + eps).map(|(id, _)| *id).collect();
        for id in done {
            if let Some((start, end, pool, gpus)) = ends.remove(&id) {
                // Ends within the tolerance after `t` are taken at `t`, so the log stays in time order.
                let end = end.min(t);
                sched.finish(id, end)?;
                let o = &mut run.jobs[slot[&id]];
                o.completion = Some(end);
                o.gpu_seconds += (end - start) * f64::from(gpus);
                run.decisions.push(Decision {
                    t: end,
                    event: "finish".into(),
                    job: o.name.clone(),
                    pool,
                    model: None,
                    tasks: Vec::new(),
                });
            }
        }
        let mut arrived = Vec::new();
        while jobs.get(next).is_some_and(|j| j.submitted <= t + eps) {
            let j = jobs[next].clone();
            run.jobs.push(JobOutcome { name: j.name.clone(), arrival: j.submitted, ..JobOutcome::default() });
            let id = sched.submit(j)?;
            slot.insert(id, run.jobs.len() - 1);
            arrived.push(id);
            next += 1;
        }
        let cycle = sched.cycle(t)?;
        for v in &cycle.preempted {
            if let Some((start, _, pool, gpus)) = ends.remove(v) {
                let o = &mut run.jobs[slot[v]];
                o.preemptions += 1;
                o.gpu_seconds += (t - start) * f64::from(gpus);
                run.decisions.push(Decision {
                    t,
                    event: "preempt".into(),
                    job: o.name.clone(),
                    pool,
                    model: None,
                    tasks: Vec::new(),
                });
            }
        }
        for s in &cycle.started {
            let name = run.jobs[slot[&s.job]].name.clone();
            let line = place_line(&cluster, s, &name, t);
            let gpus: u32 = s.placement.tasks.iter().map(|tp| tp.gpus.count_ones()).sum();
            ends.insert(s.job, (t, s.est_end, line.pool.clone(), gpus));
            run.jobs[slot[&s.job]].first_start.get_or_insert(t);
            run.decisions.push(line);
        }
        for id in arrived {
            run.jobs[slot[&id]].estimate_at_submit = sched.status(id).and_then(|s| s.estimated_start);
        }
        if t_arrival.is_none() && ends.is_empty() && cycle.started.is_empty() {
            break;
        }
    }
    Ok(run)
}
