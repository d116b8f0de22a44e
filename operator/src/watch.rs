//! Watches every object the index reads, into in-memory stores; any change wakes the scheduling loop.

use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use haiyun_api::{ComputeJob, ComputePool, Dataset, Queue, QuotaRequest};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::index::Objects;

/// The stores, one per kind.
#[derive(Clone)]
pub struct Stores {
    pools: Store<ComputePool>,
    queues: Store<Queue>,
    jobs: Store<ComputeJob>,
    requests: Store<QuotaRequest>,
    datasets: Store<Dataset>,
    nodes: Store<Node>,
    pods: Store<Pod>,
    batch_jobs: Store<Job>,
    slices: Store<ResourceSlice>,
    resource_claims: Store<ResourceClaim>,
    grants: Store<Lease>,
    node_fences: Store<Lease>,
    volumes: Store<PersistentVolume>,
    claims: Store<PersistentVolumeClaim>,
    /// Fires on every change.
    pub changed: Arc<Notify>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

/// Drops what no reader of a store needs but every object carries: its managed fields, often a third of an object
/// and more; a store of 100 000 ComputeJobs holds them all.
fn lean<K: Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}

/// A Node without its managed fields and its list of pulled images (a real node's grows with every image).
fn lean_node(n: &mut Node) {
    lean(n);
    if let Some(s) = n.status.as_mut() {
        s.images = None;
    }
}

fn spawn<K>(api: Api<K>, config: watcher::Config, changed: Arc<Notify>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    spawn_trimmed(api, config, changed, lean::<K>)
}

fn spawn_trimmed<K>(api: Api<K>, config: watcher::Config, changed: Arc<Notify>, trim: fn(&mut K)) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().modify(trim).reflect(writer).touched_objects();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => changed.notify_one(),
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&Default::default()), error = %e, "watch failed; retrying")
                }
            }
        }
    });
    store
}

impl Stores {
    /// Starts watching everything.
    pub fn start(client: &Client) -> Self {
        let changed = Arc::new(Notify::new());
        let c = || changed.clone();
        let any = watcher::Config::default;
        Stores {
            pools: spawn(Api::all(client.clone()), any(), c()),
            queues: spawn(Api::all(client.clone()), any(), c()),
            jobs: spawn(Api::all(client.clone()), any(), c()),
            requests: spawn(Api::all(client.clone()), any(), c()),
            datasets: spawn(Api::all(client.clone()), any(), c()),
            nodes: spawn_trimmed(Api::all(client.clone()), any(), c(), lean_node),
            pods: spawn(Api::all(client.clone()), any(), c()),
            // Only Jobs that name a queue: the rest are kube-scheduler's.
            batch_jobs: spawn(Api::all(client.clone()), any().labels(haiyun_api::QUEUE_LABEL), c()),
            // Only Haiyun's driver's slices.
            slices: spawn(
                Api::all(client.clone()),
                any().fields(&format!("spec.driver={}", crate::backend::kubernetes::claims::DRIVER)),
                c(),
            ),
            resource_claims: spawn(Api::all(client.clone()), any(), c()),
            // Capacity leases a federation grants this cluster (an edge site's).
            grants: spawn(
                Api::namespaced(client.clone(), crate::backend::remote::fence::NAMESPACE),
                any().labels(crate::backend::remote::grant::GRANT_LABEL),
                c(),
            ),
            // Node agents' fence Leases, wherever the agents run.
            node_fences: spawn(
                Api::all(client.clone()),
                any().labels(crate::backend::kubernetes::fence::LABEL),
                c(),
            ),
            volumes: spawn(Api::all(client.clone()), any(), c()),
            claims: spawn(Api::all(client.clone()), any(), c()),
            changed,
        }
    }

    /// The ComputePool store (the Slurm poller reads it).
    pub fn pools(&self) -> Store<ComputePool> {
        self.pools.clone()
    }

    /// Waits until every store has listed once.
    pub async fn ready(&self) {
        let _ = futures::join!(
            self.pools.wait_until_ready(),
            self.queues.wait_until_ready(),
            self.jobs.wait_until_ready(),
            self.requests.wait_until_ready(),
            self.datasets.wait_until_ready(),
            self.nodes.wait_until_ready(),
            self.pods.wait_until_ready(),
            self.batch_jobs.wait_until_ready(),
            self.volumes.wait_until_ready(),
            self.claims.wait_until_ready(),
            // A cluster that does not serve resource.k8s.io/v1 never lists slices: its GPUs are extended resources.
            tokio::time::timeout(std::time::Duration::from_secs(10), self.slices.wait_until_ready()),
            tokio::time::timeout(std::time::Duration::from_secs(10), self.resource_claims.wait_until_ready()),
        );
    }

    /// A consistent-enough copy of everything (each store is read once).
    pub fn objects(&self) -> Objects {
        Objects {
            pools: self.pools.state(),
            queues: self.queues.state(),
            jobs: self.jobs.state(),
            requests: self.requests.state(),
            datasets: self.datasets.state(),
            nodes: self.nodes.state(),
            pods: self.pods.state(),
            batch_jobs: self.batch_jobs.state(),
            slices: self.slices.state(),
            resource_claims: self.resource_claims.state(),
            grants: self.grants.state(),
            node_fences: self.node_fences.state(),
            volumes: self.volumes.state(),
            claims: self.claims.state(),
        }
    }
}
