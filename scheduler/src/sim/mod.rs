//! Simulations over the core: time and arrivals are inputs, never read from a clock.

mod alloc;
mod replay;

pub use alloc::{AllocBuckets, round2};
pub use replay::{ReplayError, ReplayRun, replay_fgd};
