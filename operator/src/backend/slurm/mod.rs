//! The Slurm backend: a pool that is a Slurm cluster reached through slurmrestd.

pub mod client;
pub mod jwt;
pub mod submission;
pub mod watch;

/// The finalizer on a ComputeJob with a Slurm job: deleting the ComputeJob cancels the Slurm job first.
pub const FINALIZER: &str = "haiyun.io/slurm-job";

pub use client::{Credential, SlurmClient, SlurmError, SlurmJob, SlurmNode, Submission};
pub use watch::{SlurmPools, SlurmView, SlurmViews};
