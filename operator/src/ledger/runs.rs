//! Runs from the cluster's objects, with no IO: which runs are live now, and what the ledger must open and close so
//! that it matches them (level-triggered, so a restart, a failover or a lost write only delays a record).

use std::collections::{BTreeMap, HashMap, HashSet};

use haiyun_api::job::JobPhase;
use haiyun_api::{ComputeJob, ComputePool};
use haiyun_scheduler::model::Time;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::index::Objects;

/// A run: `(job uid, run number)`.
pub type RunKey = (String, u32);

/// One run of one job, as opened in the ledger: who, where, with what, from when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// The job's uid.
    pub uid: String,
    /// Its run number (each preemption and each restart starts a new one).
    pub run: u32,
    /// `namespace/name`.
    pub job: String,
    /// Its namespace.
    pub namespace: String,
    /// Its queue.
    pub queue: String,
    /// Who submitted it (`spec.submittedBy`, stamped by the API server; empty where no policy stamps it).
    pub submitter: String,
    /// The pool it runs in.
    pub pool: String,
    /// The pool's site.
    pub site: String,
    /// Its nodes, comma-separated.
    pub nodes: String,
    /// Its GPU model (empty: CPU only).
    pub gpu_model: String,
    /// GPUs it holds (fractions count as such).
    pub gpus: f64,
    /// CPU cores it requested.
    pub cpu_cores: f64,
    /// Memory it requested, GiB.
    pub memory_gib: f64,
    /// Datasets it reads.
    pub datasets: Vec<String>,
    /// What an hour of it costs (`spec.cost` of its pool: per GPU-hour of its model, per core-hour).
    pub cost_per_hour: f64,
    /// When it started, unix seconds.
    pub start: Time,
    /// The job's energy (joules, over all its runs) when the run started: the run used what it adds.
    pub energy_start: f64,
}

/// The end of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Close {
    /// The job's uid.
    pub uid: String,
    /// The run number.
    pub run: u32,
    /// When it ended, unix seconds.
    pub end: Time,
    /// How: Succeeded, Failed, Preempted, NodeLost, GPUFailed or Deleted.
    pub outcome: String,
    /// Joules its GPUs used (the agents' energy counters).
    pub energy_joules: f64,
}

/// What the ledger must record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// A run started.
    Open(Box<Run>),
    /// A run ended.
    Close(Close),
}

/// What the cycle keeps of the ledger: the runs it holds open, the GPU-seconds of the closed ones per queue (for the
/// queues' `gpuHours`, which then outlive the jobs), and their decayed usage per queue (for fair share).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Book {
    /// The open runs.
    pub open: BTreeMap<RunKey, Run>,
    /// GPU-seconds of closed runs by queue.
    pub closed_gpu_seconds: BTreeMap<String, f64>,
    /// Half-life of past usage, seconds (`None`: `past` stays empty).
    pub half_life: Option<f64>,
    /// Closed runs' usage by queue, decayed by `half_life`.
    pub past: BTreeMap<String, Past>,
}

/// A queue's past usage: resource-seconds per flavor (`nvidia.com/gpu:<model>` in GPU-seconds, `cpu` in
/// core-seconds, `memory` in GiB-seconds) as they stood at `at`, halving every half-life.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Past {
    /// When `amounts` were last brought up to date.
    pub at: Time,
    /// Decayed resource-seconds by flavor.
    pub amounts: BTreeMap<String, f64>,
}

impl Book {
    /// Adds a run that ended at `end` to its queue's past usage (nothing without a half-life).
    pub fn add_past(&mut self, run: &Run, end: Time) {
        let Some(h) = self.half_life else { return };
        let seconds = haiyun_scheduler::queue::decayed_seconds(run.start, end, h);
        let mut amounts = vec![("cpu".to_string(), run.cpu_cores), ("memory".to_string(), run.memory_gib)];
        if !run.gpu_model.is_empty() {
            amounts.push((format!("nvidia.com/gpu:{}", run.gpu_model.to_lowercase()), run.gpus));
        }
        let past = self.past.entry(run.queue.clone()).or_default();
        let (mine, theirs) = haiyun_scheduler::queue::align(past.at, end, h);
        past.amounts.values_mut().for_each(|v| *v *= mine);
        for (flavor, amount) in amounts.into_iter().filter(|(_, a)| *a > 0.0) {
            *past.amounts.entry(flavor).or_default() += amount * seconds * theirs;
        }
        past.at = past.at.max(end);
    }
}

/// The run `job` has live, if any: admitted or running with a placement.
fn live_key(job: &ComputeJob) -> Option<(&str, u32)> {
    let st = job.status.as_ref()?;
    let live = matches!(st.phase, JobPhase::Admitted | JobPhase::Running) && st.placement.is_some();
    live.then(|| Some((job.metadata.uid.as_deref()?, job.run()))).flatten()
}

/// The live run of `job`, if it has one.
fn run_of(job: &ComputeJob, pools: &HashMap<String, &ComputePool>, now: Time) -> Option<Run> {
    let st = job.status.as_ref()?;
    if !matches!(st.phase, JobPhase::Admitted | JobPhase::Running) {
        return None;
    }
    let placement = st.placement.as_ref()?;
    let (mut gpus, mut cpu, mut mem) = (0.0, 0.0, 0.0);
    let mut nodes: Vec<&str> = Vec::new();
    for (i, t) in placement.tasks.iter().enumerate() {
        gpus += t.gpus.len() as f64 * f64::from(t.gpu_milli) / 1000.0;
        if let Some((_, g)) = job.spec.group_of_task(i) {
            cpu += g.cpu.as_deref().and_then(|q| haiyun_api::quantity::parse(q).ok()).unwrap_or(0.0);
            mem += g.memory.as_deref().and_then(|q| haiyun_api::quantity::parse(q).ok()).unwrap_or(0.0);
        }
        if !nodes.contains(&t.node.as_str()) {
            nodes.push(&t.node);
        }
    }
    let pool = pools.get(&placement.pool);
    let cost = pool.and_then(|p| p.spec.cost.as_ref());
    // A model's price by its name as the pool's nodes give it, or in any case (`H100` and `h100` are one model).
    let cost_per_hour = cost.map_or(0.0, |c| {
        let model = &placement.gpu_model;
        let per_gpu = c
            .gpu_hour
            .get(model)
            .or_else(|| c.gpu_hour.iter().find(|(m, _)| m.eq_ignore_ascii_case(model)).map(|(_, v)| v));
        per_gpu.copied().unwrap_or(0.0) * gpus + c.core_hour * cpu
    });
    Some(Run {
        uid: job.uid()?,
        run: job.run(),
        job: crate::index::job::key(job),
        namespace: job.namespace().unwrap_or_default(),
        queue: job.spec.queue.clone(),
        submitter: job.spec.submitted_by.clone().unwrap_or_default(),
        pool: placement.pool.clone(),
        site: pool.map(|p| p.spec.site.clone()).unwrap_or_default(),
        nodes: nodes.join(","),
        gpu_model: placement.gpu_model.clone(),
        gpus,
        cpu_cores: cpu,
        memory_gib: mem / f64::from(1u32 << 30),
        datasets: job.spec.datasets.clone(),
        cost_per_hour,
        // As the status says (whole seconds, as the decision log's lines), even a moment ahead of this cycle.
        start: st.start_time.as_deref().and_then(crate::time::parse).unwrap_or(now),
        energy_start: st.energy.as_ref().map_or(0.0, |e| e.joules),
    })
}

/// What to record so that the ledger's open runs (`book.open`, updated here with its closed sums) match the runs live
/// in `objects` at `now`: the runs that ended are closed first, then the new ones opened.
pub fn reconcile(objects: &Objects, book: &mut Book, now: Time) -> Vec<Op> {
    // Every cycle: only the keys of the live runs; a record is built for a run that starts or ends, not for each.
    let live: HashSet<(&str, u32)> = objects.jobs.iter().filter_map(|j| live_key(j)).collect();
    let mut ops = Vec::new();
    let ended: Vec<RunKey> =
        book.open.keys().filter(|(u, r)| !live.contains(&(u.as_str(), *r))).cloned().collect();
    if !ended.is_empty() {
        let jobs: HashMap<&str, &ComputeJob> =
            objects.jobs.iter().filter_map(|j| Some((j.metadata.uid.as_deref()?, &**j))).collect();
        for key in ended {
            if let Some(run) = book.open.remove(&key) {
                let close = ending(jobs.get(key.0.as_str()).copied(), &run, now);
                *book.closed_gpu_seconds.entry(run.queue.clone()).or_default() +=
                    run.gpus * (close.end - run.start);
                book.add_past(&run, close.end);
                ops.push(Op::Close(close));
            }
        }
    }
    // Every open run is live now, so a live run is new exactly when there are more live runs than open ones.
    let open = &mut book.open;
    if live.len() > open.len() {
        let pools: HashMap<String, &ComputePool> =
            objects.pools.iter().map(|p| (p.name_any(), &**p)).collect();
        for job in &objects.jobs {
            let Some((uid, run)) = live_key(job) else { continue };
            let key = (uid.to_string(), run);
            if let std::collections::btree_map::Entry::Vacant(e) = open.entry(key)
                && let Some(r) = run_of(job, &pools, now)
            {
                ops.push(Op::Open(Box::new(r.clone())));
                e.insert(r);
            }
        }
    }
    ops
}

/// How and when `run` of `job` (None: deleted) ended, as far as its status tells; `now` where it does not.
fn ending(job: Option<&ComputeJob>, run: &Run, now: Time) -> Close {
    let close = |end: Time, outcome: &str, joules: f64| Close {
        uid: run.uid.clone(),
        run: run.run,
        end: end.max(run.start),
        outcome: outcome.into(),
        energy_joules: (joules - run.energy_start).max(0.0),
    };
    let Some(st) = job.and_then(|j| j.status.as_ref()) else {
        return close(now, "Deleted", run.energy_start);
    };
    let joules = st.energy.as_ref().map_or(run.energy_start, |e| e.joules);
    let at = |t: Option<&str>| t.and_then(crate::time::parse).filter(|t| *t >= run.start);
    // A failure or a loss recorded after the run started is what ended it.
    let failure = st.last_failure.as_ref().and_then(|f| Some((at(Some(&f.time))?, f.reason.as_str())));
    match st.phase {
        JobPhase::Succeeded => close(at(st.completion_time.as_deref()).unwrap_or(now), "Succeeded", joules),
        JobPhase::Failed => close(at(st.completion_time.as_deref()).unwrap_or(now), "Failed", joules),
        JobPhase::Preempted => match failure {
            Some((t, reason @ ("NodeLost" | "GPUFailed"))) => close(t, reason, joules),
            _ => close(now, "Preempted", joules),
        },
        // Waiting again after a failed run (a restart).
        _ => match failure {
            Some((t, _)) => close(t, "Failed", joules),
            None => close(now, "Preempted", joules),
        },
    }
}

#[cfg(test)]
mod tests;
