//! An independent replay of a JCT decision log under the protocol's rules (GPUs, pools, checkpoints, restarts).

use std::collections::HashMap;

use haiyun_scheduler::sim::Decision;
use haiyun_scheduler::trace::{GavelJob, Throughputs};

use crate::protocol::{CHECKPOINT_S, RESTART_S};

/// A rule the log broke.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CheckError {
    /// A GPU given to a job while another holds it.
    #[error(
        "failed to replay the decision log at t={t}: GPU {gpu} given to job {job} while job {holder} holds it"
    )]
    GpuHeldTwice {
        /// When.
        t: f64,
        /// The GPU.
        gpu: String,
        /// The job placed.
        job: String,
        /// The job holding it.
        holder: String,
    },
    /// A job placed where its throughput is zero.
    #[error(
        "failed to replay the decision log at t={t}: job {job} placed in pool {pool}, where it cannot run"
    )]
    CannotRun {
        /// When.
        t: f64,
        /// The job.
        job: String,
        /// The pool.
        pool: String,
    },
    /// A job that finished sooner than physics allows.
    #[error(
        "failed to replay the decision log: job {job} finished after {done:.0} of {total:.0} steps' worth of run time"
    )]
    TooFast {
        /// The job.
        job: String,
        /// Steps its run time allows.
        done: f64,
        /// Steps it needs.
        total: f64,
    },
    /// An event for a job the list does not have, or out of order.
    #[error("failed to replay the decision log at t={t}: {what}")]
    Malformed {
        /// When.
        t: f64,
        /// What is wrong.
        what: String,
    },
}

/// Replays `log` against the job list and throughput table: no GPU held by two jobs, each placement takes the job's
/// GPU count from nodes of the named pool where the job can run, and no job finishes before its steps are done when
/// a preempted run keeps only the work up to its last checkpoint and every restart first pays its restart time.
pub fn check_log(log: &[Decision], jobs: &[GavelJob], thr: &Throughputs) -> Result<(), CheckError> {
    let by_name: HashMap<&str, &GavelJob> = jobs.iter().map(|j| (j.id.as_str(), j)).collect();
    let mut holder: HashMap<String, String> = HashMap::new();
    let mut running: HashMap<String, (f64, String, Vec<String>)> = HashMap::new();
    let mut steps: HashMap<String, f64> = HashMap::new();
    let mut runs: HashMap<String, u32> = HashMap::new();
    let mut last = f64::NEG_INFINITY;
    for d in log {
        if d.t < last {
            return Err(CheckError::Malformed { t: d.t, what: "events out of time order".into() });
        }
        last = d.t;
        let job = by_name
            .get(d.job.as_str())
            .ok_or_else(|| CheckError::Malformed { t: d.t, what: format!("unknown job {}", d.job) })?;
        match d.event.as_str() {
            "place" => {
                if thr.get(&job.job_type, job.gpus, &d.pool) <= 0.0 {
                    return Err(CheckError::CannotRun { t: d.t, job: d.job.clone(), pool: d.pool.clone() });
                }
                let gpus: Vec<String> = d.tasks.iter().flat_map(|t| t.gpus.clone()).collect();
                let outside = d.tasks.iter().any(|t| !t.node.starts_with(&format!("{}-", d.pool)));
                if gpus.len() != job.gpus as usize || outside {
                    return Err(CheckError::Malformed {
                        t: d.t,
                        what: format!(
                            "job {} placed on {} GPUs (needs {}) or outside pool {}",
                            d.job,
                            gpus.len(),
                            job.gpus,
                            d.pool
                        ),
                    });
                }
                for g in &gpus {
                    if let Some(h) = holder.get(g) {
                        return Err(CheckError::GpuHeldTwice {
                            t: d.t,
                            gpu: g.clone(),
                            job: d.job.clone(),
                            holder: h.clone(),
                        });
                    }
                    holder.insert(g.clone(), d.job.clone());
                }
                running.insert(d.job.clone(), (d.t, d.pool.clone(), gpus));
            }
            "preempt" | "finish" => {
                let (start, pool, gpus) = running.remove(&d.job).ok_or_else(|| CheckError::Malformed {
                    t: d.t,
                    what: format!("job {} is not running", d.job),
                })?;
                for g in gpus {
                    holder.remove(&g);
                }
                let n = runs.entry(d.job.clone()).or_default();
                let restart = if *n > 0 { RESTART_S } else { 0.0 };
                *n += 1;
                let ran = (d.t - start - restart).max(0.0);
                let kept =
                    if d.event == "finish" { ran } else { (ran / CHECKPOINT_S).floor() * CHECKPOINT_S };
                *steps.entry(d.job.clone()).or_default() += kept * thr.get(&job.job_type, job.gpus, &pool);
                if d.event == "finish" {
                    let done = steps.get(&d.job).copied().unwrap_or(0.0);
                    if done < job.total_steps * (1.0 - 1e-9) {
                        return Err(CheckError::TooFast { job: d.job.clone(), done, total: job.total_steps });
                    }
                }
            }
            other => return Err(CheckError::Malformed { t: d.t, what: format!("unknown event {other}") }),
        }
    }
    Ok(())
}
