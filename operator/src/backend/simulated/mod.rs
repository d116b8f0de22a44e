//! The simulated backend: pools of nodes their spec describes, served in process (`haiyun demo`), where a
//! simulated kubelet runs each admitted task for its real work. A pool's link can be cut, as a remote cluster's
//! is: it then takes nothing new, the cycle sees its pods as they were at the cut while the site runs on, and its
//! jobs keep their place (policy `hold`) until the link is back.

pub mod kubelet;
pub mod nodes;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::FutureExt;
use futures::future::BoxFuture;
use haiyun_api::{ComputeJob, ComputePool};
use haiyun_scheduler::model::{PoolId, Time};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

pub use kubelet::{Kubelet, KubeletError};

use super::{BackendError, BackendKind, Inputs, Live, Orphan, PoolBackend};
use crate::index::{Federation, Objects};

/// A pool whose link is cut: since when, and its pods as they were then.
#[derive(Debug, Clone)]
struct Cut {
    since: Time,
    pods: Vec<Pod>,
}

/// Simulated pools and their kubelet (cheap to clone: clones share the kubelet and the links).
#[derive(Debug, Clone, Default)]
pub struct SimulatedBackend {
    kubelet: Arc<Mutex<Kubelet>>,
    cuts: Arc<Mutex<BTreeMap<String, Cut>>>,
}

/// Whether a pod runs on a node of `pool` (named `<pool>-NN`).
fn in_pool(pod: &Pod, pool: &str) -> bool {
    let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or_default();
    node.strip_prefix(pool)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

impl SimulatedBackend {
    /// The kubelet, to read its pods or move its clock.
    pub fn kubelet(&self) -> MutexGuard<'_, Kubelet> {
        self.kubelet.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cuts(&self) -> MutexGuard<'_, BTreeMap<String, Cut>> {
        self.cuts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cuts the link to `pool` at `now` (its pods as they are now are what the cycle sees until it is back), or
    /// brings it back; returns whether that changed anything.
    pub fn set_link(&self, pool: &str, down: bool, now: Time) -> bool {
        let mut cuts = self.cuts();
        match (down, cuts.contains_key(pool)) {
            (true, false) => {
                let pods = self.kubelet().pods().filter(|p| in_pool(p, pool)).cloned().collect();
                cuts.insert(pool.to_string(), Cut { since: now, pods });
                true
            }
            (false, true) => {
                cuts.remove(pool);
                true
            }
            _ => false,
        }
    }

    /// The pods as the operator sees them: the kubelet's, but those of a cut pool as they were at the cut.
    pub fn pods(&self) -> Vec<Pod> {
        let cuts = self.cuts();
        let mut out: Vec<Pod> =
            self.kubelet().pods().filter(|p| !cuts.keys().any(|pool| in_pool(p, pool))).cloned().collect();
        out.extend(cuts.values().flat_map(|c| c.pods.iter().cloned()));
        out
    }
}

impl PoolBackend for SimulatedBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Simulated
    }

    fn reachable(&self, pool: &ComputePool) -> Result<(), super::Refusal> {
        match self.cuts().get(&pool.name_any()) {
            None => Ok(()),
            Some(c) => Err(super::Refusal::new(
                "Unreachable",
                format!(
                    "its link is down since {}: it takes nothing new and its running jobs keep their place (policy \
                     hold)",
                    crate::time::rfc3339(c.since)
                ),
            )),
        }
    }

    fn contribute(&self, pools: &[(PoolId, &ComputePool)], inputs: &Inputs<'_>, fed: &mut Federation) {
        let cuts = self.cuts();
        for (pool, c) in cuts.iter() {
            fed.unreachable_since.insert(pool.clone(), c.since);
        }
        let cut: BTreeSet<String> = cuts.keys().cloned().collect();
        drop(cuts);
        nodes::contribute_linked(pools, inputs, &cut, fed);
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
            // A cut pool cannot be reached: the next cycle tries again.
            if placement.is_some_and(|p| self.cuts().contains_key(&p.pool)) {
                return Ok(0);
            }
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
