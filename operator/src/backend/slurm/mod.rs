//! The Slurm backend: a pool that is a Slurm cluster reached through slurmrestd.

pub mod client;
pub mod jwt;

pub use client::{Credential, SlurmClient, SlurmError, SlurmJob, SlurmNode, Submission};
