//! The Slurm backend: a pool that is a Slurm cluster reached through slurmrestd.

pub mod client;
pub mod jwt;
pub mod submission;
pub mod watch;

pub use client::{Credential, SlurmClient, SlurmError, SlurmJob, SlurmNode, Submission};
pub use watch::{SlurmPools, SlurmView, SlurmViews};
