//! The simulated backend: pools of nodes their spec describes, served in process (`haiyun demo`), where a
//! simulated kubelet runs each admitted task for its real work.

pub mod kubelet;
pub mod nodes;

use std::sync::{Arc, Mutex, MutexGuard};

use futures::FutureExt;
use futures::future::BoxFuture;
use haiyun_api::{ComputeJob, ComputePool};
use haiyun_scheduler::model::PoolId;
use kube::ResourceExt;

pub use kubelet::{Kubelet, KubeletError};

use super::{BackendError, BackendKind, Inputs, Live, Orphan, PoolBackend};
use crate::index::{Federation, Objects};

/// Simulated pools and their kubelet (cheap to clone: clones share the kubelet).
#[derive(Debug, Clone, Default)]
pub struct SimulatedBackend {
    kubelet: Arc<Mutex<Kubelet>>,
}

impl SimulatedBackend {
    /// The kubelet, to read its pods or move its clock.
    pub fn kubelet(&self) -> MutexGuard<'_, Kubelet> {
        self.kubelet.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl PoolBackend for SimulatedBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Simulated
    }

    fn reachable(&self, _pool: &ComputePool) -> Result<(), super::Refusal> {
        Ok(())
    }

    fn contribute(&self, pools: &[(PoolId, &ComputePool)], inputs: &Inputs<'_>, fed: &mut Federation) {
        nodes::contribute(pools, inputs, fed);
    }

    /// The simulated kubelet deletes a job's pods with its run: nothing is left behind.
    fn orphans(&self, _objects: &Objects, _live: &Live) -> Vec<Orphan> {
        Vec::new()
    }

    fn dispatch<'a>(
        &'a self,
        job: &'a ComputeJob,
        fresh: bool,
    ) -> BoxFuture<'a, Result<usize, BackendError>> {
        let result = (|| {
            let placement = job.status.as_ref().and_then(|s| s.placement.as_ref());
            let mut k = self.kubelet();
            match placement {
                Some(p) if fresh || !k.running(&job.uid().unwrap_or_default()) => Ok(k.start(job, p)?),
                _ => Ok(0),
            }
        })();
        async move { result }.boxed()
    }

    fn evict<'a>(&'a self, job: &'a ComputeJob) -> BoxFuture<'a, Result<String, BackendError>> {
        let n = self.kubelet().stop(job);
        async move { Ok(format!("{n} pods deleted")) }.boxed()
    }

    fn collect<'a>(&'a self, orphan: &'a Orphan) -> BoxFuture<'a, Result<usize, BackendError>> {
        let n = self.kubelet().remove(orphan.uid());
        async move { Ok(n) }.boxed()
    }

    fn release<'a>(&'a self, _job: &'a ComputeJob) -> BoxFuture<'a, Result<(), BackendError>> {
        async { Ok(()) }.boxed()
    }
}
