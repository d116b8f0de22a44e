//! Simulations over the core: time and arrivals are inputs, never read from a clock.

mod alloc;
mod jct;
mod replay;

pub use alloc::{AllocBuckets, round2};
pub use jct::{Decision, JobOutcome, SimError, SimRun, TaskLine, simulate};
pub use replay::{ReplayError, ReplayRun, replay_fgd};
