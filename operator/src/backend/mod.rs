//! Pool backends: they apply the scheduler's decisions to a pool and report back.

pub mod kubernetes;
pub mod simulated;
pub mod slurm;
