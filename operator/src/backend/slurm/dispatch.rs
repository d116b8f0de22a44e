//! Applying decisions to a Slurm pool: one batch job per run (submitted once, whatever the retries), cancelled on
//! eviction, on release and when it is an orphan; refusals are retried with backoff, not at the cycle's pace.

use std::time::{Duration, Instant};

use haiyun_api::ComputeJob;
use kube::ResourceExt;

use super::submission::{SubmissionError, submission};
use super::watch::{key, parse_key};
use super::{SlurmError, SlurmPools};
use crate::backend::Orphan;

/// A submission not listed by Slurm this long after it was accepted is looked for again (and made again if lost).
const LOST_AFTER: Duration = Duration::from_secs(30);
/// Submissions remembered at most (the poller's view and the lookup still guard against a second one).
const REMEMBERED: usize = 100_000;

/// Why a step on a Slurm pool failed (the next cycle plans it again).
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// A Slurm call failed.
    #[error(transparent)]
    Slurm(#[from] SlurmError),
    /// The job cannot be submitted to Slurm as it is.
    #[error(transparent)]
    Submission(#[from] SubmissionError),
    /// The pool has not been reached yet.
    #[error("Slurm pool {0} has not been reached yet")]
    NoSlurm(String),
    /// Slurm refused this job's submission recently; it is tried again later.
    #[error("Slurm refused the submission {0} times; trying again in a while")]
    Backoff(u32),
    /// Slurm refused the submission (the `n`th refusal in a row).
    #[error("{source}")]
    Refused {
        /// Refusals in a row.
        n: u32,
        /// Slurm's answer.
        source: SlurmError,
    },
}

impl DispatchError {
    /// A warning worth an event on the job: a refusal that will not pass by itself, at the 1st, 2nd, 4th… time.
    pub fn event(&self) -> Option<(&'static str, String)> {
        match self {
            DispatchError::Refused { n, source } if !source.is_transient() && n.is_power_of_two() => {
                Some(("SlurmRefused", source.to_string()))
            }
            _ => None,
        }
    }
}

/// Makes the admitted job's run exist in Slurm as one batch job. `fresh`: this process has just admitted the run,
/// so no earlier submission of it can exist. Returns the tasks submitted (0 when already there).
pub async fn dispatch(pools: &SlurmPools, job: &ComputeJob, fresh: bool) -> Result<usize, DispatchError> {
    let Some(p) = job.status.as_ref().and_then(|s| s.placement.as_ref()) else { return Ok(0) };
    let uid = job.uid().unwrap_or_default();
    let run = job.run();
    let key = key(&uid, run);
    let seen = pools.lists(&p.pool, &key);
    let recent = pools.submitted_at(&key).map(|at| at.elapsed());
    if seen || recent.is_some_and(|age| age < LOST_AFTER) {
        return Ok(0);
    }
    // Submitted long ago and still not listed: Slurm may have lost it (slurmctld killed right after the
    // submission). Look for the key, then submit again if it is not there.
    let fresh = fresh && recent.is_none();
    if let Some((at, n)) = pools.refused(&uid) {
        if Instant::now() < at {
            return Err(DispatchError::Backoff(n));
        }
    }
    let first =
        p.tasks.first().and_then(|t| t.node.strip_prefix(&format!("{}/", p.pool))).unwrap_or_default();
    let (client, spec, gpu_type) =
        pools.target(&p.pool, first).ok_or_else(|| DispatchError::NoSlurm(p.pool.clone()))?;
    let sub = submission(job, p, &spec, gpu_type)?;
    // Any job with this run's key was submitted after the run was admitted.
    let since = job
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_deref())
        .and_then(crate::time::parse)
        .map(|t| t as i64 - 60);
    let id = match client.submit_once(&sub, 3, since, !fresh).await {
        Ok(id) => id,
        Err(source) => {
            let n = pools.refuse(&uid);
            return Err(DispatchError::Refused { n, source });
        }
    };
    pools.accepted(&uid, &sub.key, id, REMEMBERED);
    tracing::info!(job = %crate::index::job::key(job), slurm_job = id, key = %sub.key, "submitted to Slurm");
    Ok(p.tasks.len())
}

/// Cancels the run the job's status placed; returns what was done.
pub async fn evict(pools: &SlurmPools, job: &ComputeJob) -> Result<String, DispatchError> {
    let Some(pool) = job.status.as_ref().and_then(|s| s.placement.as_ref()).map(|p| p.pool.clone()) else {
        return Ok("nothing to stop".into());
    };
    let client = pools.client(&pool).ok_or_else(|| DispatchError::NoSlurm(pool.clone()))?;
    let run = job.run();
    if let Some(j) = client.find(&key(&job.uid().unwrap_or_default(), run)).await? {
        client.cancel(j.id).await?;
    }
    Ok("its Slurm job is cancelled".into())
}

/// Cancels a Slurm job of ours that no placement covers.
pub async fn collect(pools: &SlurmPools, orphan: &Orphan) -> Result<usize, DispatchError> {
    let Orphan::Batch { pool, id, key, .. } = orphan else { return Ok(0) };
    let client = pools.client(pool).ok_or_else(|| DispatchError::NoSlurm(pool.clone()))?;
    client.cancel(*id).await?;
    tracing::info!(%pool, slurm_job = id, %key, "cancelled a Slurm job whose run is over");
    Ok(1)
}

/// Cancels every Slurm job of a ComputeJob being deleted.
pub async fn release(pools: &SlurmPools, job: &ComputeJob) -> Result<(), DispatchError> {
    let uid = job.uid().unwrap_or_default();
    for (pool, view) in pools.views() {
        for (k, j) in &view.jobs {
            let mine = parse_key(k).is_some_and(|(u, _)| u == uid);
            if mine && super::nodes::active(j) {
                let client = pools.client(&pool).ok_or_else(|| DispatchError::NoSlurm(pool.clone()))?;
                client.cancel(j.id).await?;
                tracing::info!(job = %crate::index::job::key(job), slurm_job = j.id, "cancelled: the job is deleted");
            }
        }
    }
    pools.forgive(&uid);
    Ok(())
}
