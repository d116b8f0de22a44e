//! A job's status: phase, why it waits, what would help, and when it should start.

use serde::{Deserialize, Serialize};

use crate::model::{Classification, ModelId, PoolId, Time};
use crate::placer::Rejection;
use crate::queue::{Flavor, QuotaShortfall};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Phase {
    /// Waiting.
    #[default]
    Pending,
    /// Placed and running.
    Running,
    /// Done.
    Finished,
}

/// One reason a job did not start in a cycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub enum PendingReason {
    /// Its queue's quota (with what the cohort can lend) is short.
    Quota {
        /// The GPU model option this applies to (`None`: CPU-only).
        model: Option<ModelId>,
        /// The shortfall.
        shortfall: QuotaShortfall,
    },
    /// Higher jobs hold reservations on the capacity it would need before it could finish.
    Reservation {
        /// The pool.
        pool: PoolId,
        /// The GPU model option.
        model: Option<ModelId>,
        /// The flavor it waits for (the model's GPUs, or CPU).
        flavor: Flavor,
        /// How much of it the job needs.
        needed: u64,
        /// How much of it is free in the pool now (reservations of jobs ahead not counted).
        free_now: u64,
        /// Seconds until it may start.
        wait_s: f64,
    },
    /// No node can hold it now.
    Placement {
        /// The pool.
        pool: PoolId,
        /// The GPU model option.
        model: Option<ModelId>,
        /// What the placer said.
        rejection: Rejection,
    },
    /// Starting it now would finish later than waiting for a faster option.
    FasterLater {
        /// The model it waits for.
        model: Option<ModelId>,
        /// Seconds sooner it finishes by waiting.
        saves_s: f64,
    },
    /// No pool is cleared for the data it reads.
    DataClearance {
        /// The most sensitive classification among its datasets.
        needs: Classification,
    },
    /// None of the pools it allows (by kind or site) is cleared for its data and has nodes.
    NoAllowedPool {
        /// The most sensitive classification among its datasets.
        needs: Classification,
    },
    /// It cannot run on any GPU model it allows (no throughput, or no such GPUs in cleared pools).
    NoUsableModel,
    /// Past the backfill depth: its estimate is a rough one.
    BeyondBackfillDepth,
}

/// Something the user could change to start sooner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "hint", rename_all = "kebab-case")]
pub enum Hint {
    /// Allowing another GPU model would start it earlier.
    AcceptModel {
        /// The model.
        model: ModelId,
        /// Seconds earlier it would start.
        earlier_by_s: f64,
    },
}

/// Status the scheduler keeps for a job.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JobStatus {
    /// Phase.
    pub phase: Phase,
    /// When it should start (pending) or started (running).
    pub estimated_start: Option<Time>,
    /// Estimated end of the current run.
    pub estimated_end: Option<Time>,
    /// Why it waits, from the last cycle.
    pub reasons: Vec<PendingReason>,
    /// What would help.
    pub hints: Vec<Hint>,
    /// Times it was preempted.
    pub preemptions: u32,
}
