//! The Slurm backend: a pool that is a Slurm cluster reached through slurmrestd.

pub mod client;
pub mod dispatch;
pub mod jwt;
pub mod nodes;
pub mod submission;
pub mod watch;

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use haiyun_api::{ComputeJob, ComputePool};
use haiyun_scheduler::model::PoolId;
use kube::ResourceExt;

pub use client::{Credential, SlurmClient, SlurmError, SlurmJob, SlurmNode, Submission};
pub use dispatch::DispatchError;
pub use watch::{Availability, SlurmPools, SlurmView, SlurmViews};

use super::{BackendError, BackendKind, Inputs, Live, Orphan, PoolBackend};
use crate::index::{Federation, Objects};

/// The finalizer on a ComputeJob with a Slurm job: deleting the ComputeJob cancels the Slurm job first.
pub const FINALIZER: &str = "haiyun.io/slurm-job";

/// The Slurm pools for one cycle: what the poller last saw (frozen), and the live clients to apply decisions.
#[derive(Debug, Clone)]
pub struct SlurmBackend {
    pools: SlurmPools,
    views: Arc<SlurmViews>,
}

impl SlurmBackend {
    /// The backend over `pools` as seen in `views`.
    pub fn new(pools: SlurmPools, views: Arc<SlurmViews>) -> Self {
        SlurmBackend { pools, views }
    }
}

impl PoolBackend for SlurmBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Slurm
    }

    /// A pool that does not answer stays, with its last known nodes taking nothing new, so the jobs running
    /// there keep their place.
    fn reachable(&self, pool: &ComputePool) -> Result<(), super::Refusal> {
        match self.views.get(&pool.name_any()).map(|v| &v.available) {
            Some(Availability::Answering) => Ok(()),
            Some(Availability::Down(why)) => Err(format!("its Slurm cluster does not answer: {why}").into()),
            None => Err(String::from("its Slurm cluster has not been reached yet").into()),
        }
    }

    fn contribute(&self, pools: &[(PoolId, &ComputePool)], inputs: &Inputs<'_>, fed: &mut Federation) {
        nodes::contribute(pools, &self.views, inputs.claims, fed);
    }

    fn orphans(&self, _objects: &Objects, live: &Live) -> Vec<Orphan> {
        nodes::orphans(&self.views, live)
    }

    fn finalizer(&self) -> Option<&'static str> {
        Some(FINALIZER)
    }

    fn dispatch<'a>(
        &'a self,
        job: &'a ComputeJob,
        fresh: bool,
    ) -> BoxFuture<'a, Result<usize, BackendError>> {
        async move { Ok(dispatch::dispatch(&self.pools, job, fresh).await?) }.boxed()
    }

    fn evict<'a>(&'a self, job: &'a ComputeJob) -> BoxFuture<'a, Result<String, BackendError>> {
        async move { Ok(dispatch::evict(&self.pools, job).await?) }.boxed()
    }

    fn collect<'a>(&'a self, orphan: &'a Orphan) -> BoxFuture<'a, Result<usize, BackendError>> {
        async move { Ok(dispatch::collect(&self.pools, orphan).await?) }.boxed()
    }

    fn release<'a>(&'a self, job: &'a ComputeJob) -> BoxFuture<'a, Result<(), BackendError>> {
        async move { Ok(dispatch::release(&self.pools, job).await?) }.boxed()
    }
}
