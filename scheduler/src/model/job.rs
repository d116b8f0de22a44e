//! Jobs as the queueing half of the core sees them: a gang plus who asked, how urgent, how long, and what data.

use serde::{Deserialize, Serialize};

use super::gpu::ModelId;
use super::task::Gang;

/// Seconds of simulated or wall time, as the caller defines it; the core never reads a clock.
pub type Time = f64;

/// Index of a job in a scheduler.
pub type JobId = u32;

/// Index of a queue.
pub type QueueId = u32;

/// Index of a user (the caller numbers its users; the core only compares them).
pub type UserId = u32;

/// Index of a dataset.
pub type DatasetId = u32;

/// How long a job runs: `work` units at a throughput that depends on the GPU model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Work {
    /// Total work (steps, or seconds when the throughput is 1).
    pub total: f64,
    /// Throughput (work per second) of the whole gang by GPU model; a model not listed uses `default`.
    pub throughput: Vec<(ModelId, f64)>,
    /// Throughput on models not listed, and for CPU-only jobs (0: cannot run there).
    pub default: f64,
}

impl Work {
    /// A job that runs `seconds` wherever it lands.
    pub fn seconds(seconds: f64) -> Self {
        Work { total: seconds, throughput: Vec::new(), default: 1.0 }
    }

    /// Throughput on `model` (`None` for CPU-only placement).
    pub fn rate(&self, model: Option<ModelId>) -> f64 {
        model
            .and_then(|m| self.throughput.iter().find(|(id, _)| *id == m).map(|(_, r)| *r))
            .unwrap_or(self.default)
    }

    /// Seconds to do `remaining` work on `model`; infinite where it cannot run.
    pub fn runtime(&self, remaining: f64, model: Option<ModelId>) -> f64 {
        let r = self.rate(model);
        if r > 0.0 { remaining / r } else { f64::INFINITY }
    }
}

/// A job waiting to be, or being, scheduled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Caller's name for it (unique).
    pub name: String,
    /// The queue it was submitted to.
    pub queue: QueueId,
    /// Higher goes first; may preempt lower within its queue.
    pub priority: i32,
    /// When it was submitted.
    pub submitted: Time,
    /// Its tasks.
    pub gang: Gang,
    /// How long it runs.
    pub work: Work,
    /// Datasets it reads.
    pub datasets: Vec<DatasetId>,
    /// Pools it may run in (empty: any).
    #[serde(default)]
    pub pools: Vec<super::PoolId>,
    /// Whether it may be preempted.
    pub preemptible: bool,
    /// Seconds of run time between checkpoints (work since the last one is lost on preemption).
    pub checkpoint_s: Option<f64>,
    /// Who submitted it (`None`: nobody in particular, so no per-user limit applies).
    #[serde(default)]
    pub user: Option<UserId>,
}
