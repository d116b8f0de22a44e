//! Pool backends: each kind of pool is one `PoolBackend` (in the spirit of kube-scheduler's Bind extension point).
//! A backend contributes its pools' nodes and the runs it records to the federation, says whether a pool is
//! reachable, names what runs there without a placement, and applies the cycle's decisions to its pools.

pub mod kubernetes;
pub mod remote;
pub mod simulated;
pub mod slurm;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::future::BoxFuture;
use haiyun_api::ComputeJob;
use haiyun_api::ComputePool;
use haiyun_scheduler::model::{GpuModels, PoolId};

use crate::fleet::FleetView;
use crate::index::{Claims, Federation, Objects};

/// The kinds of pool backend, as a ComputePool's `spec.backend` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendKind {
    /// In-process simulated nodes (`haiyun demo`).
    Simulated,
    /// Nodes of this Kubernetes cluster.
    Kubernetes,
    /// Nodes of another Kubernetes cluster, reached with a kubeconfig.
    RemoteKubernetes,
    /// A Slurm cluster reached through slurmrestd.
    Slurm,
}

impl BackendKind {
    /// The backend a pool's spec asks for.
    pub fn of(pool: &ComputePool) -> Option<BackendKind> {
        let b = &pool.spec.backend;
        if b.slurm.is_some() {
            Some(BackendKind::Slurm)
        } else if b.kubernetes.is_some() {
            Some(BackendKind::Kubernetes)
        } else if b.remote_kubernetes.is_some() {
            Some(BackendKind::RemoteKubernetes)
        } else if b.simulated.is_some() {
            Some(BackendKind::Simulated)
        } else {
            None
        }
    }

    /// Why a pool of this kind takes no work in a process that does not serve it.
    pub fn not_served(self) -> &'static str {
        match self {
            BackendKind::Simulated => {
                "simulated pools are served only by `haiyun demo`; use backend.kubernetes, backend.remoteKubernetes or backend.slurm"
            }
            BackendKind::Kubernetes => "Kubernetes pools are served only by the operator in a cluster",
            BackendKind::RemoteKubernetes => "remote Kubernetes pools are served only by the operator",
            BackendKind::Slurm => "Slurm pools are served only by the operator",
        }
    }
}

/// What a backend reads when it contributes nodes: the cluster's objects, the agents' reports, and what our own
/// placements hold.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Everything the operator watches.
    pub objects: &'a Objects,
    /// What the node agents report.
    pub fleet: &'a FleetView,
    /// What our placements hold, node by node and pod by pod.
    pub claims: &'a Claims,
}

/// What a cycle knows of the jobs that may own things in a pool.
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// Jobs (uid) that hold a placement, or whose work the applier is busy with.
    pub placed: HashSet<String>,
    /// Every job's current run (uid → run).
    pub runs: HashMap<String, u32>,
}

/// Something running in a pool that no placement covers any more; collecting it deletes or cancels it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Orphan {
    /// Pods of a job (by uid) in a namespace.
    Pods {
        /// Their namespace.
        namespace: String,
        /// The job's uid.
        uid: String,
    },
    /// A pod of ours being deleted on a node its fence holder fenced: its kubelet cannot end it (its containers are stopped),
    /// so it is removed from the API server at once, as Kubernetes does on an out-of-service node.
    Stranded {
        /// The pool of the remote cluster it is in; `None`: this cluster.
        cluster: Option<String>,
        /// Its namespace.
        namespace: String,
        /// The pod.
        pod: String,
        /// The pod's own uid (one made since under its name is not it).
        pod_uid: String,
        /// Its job's uid.
        uid: String,
    },
    /// Our pods (and, with no run, the Service) of a job in a remote cluster.
    Remote {
        /// The pool of that cluster.
        pool: String,
        /// Their namespace.
        namespace: String,
        /// The job's uid.
        uid: String,
        /// Only the pods of this run (an old one); `None`: everything of the job (it is gone).
        run: Option<String>,
    },
    /// A batch job the backend keeps (Slurm), by its id there and its run key.
    Batch {
        /// The pool.
        pool: String,
        /// The backend's id for it.
        id: u32,
        /// Its run's key (`haiyun:<uid>:<run>`).
        key: String,
        /// The job's uid.
        uid: String,
    },
}

impl Orphan {
    /// The uid of the job it belonged to.
    pub fn uid(&self) -> &str {
        match self {
            Orphan::Pods { uid, .. }
            | Orphan::Stranded { uid, .. }
            | Orphan::Remote { uid, .. }
            | Orphan::Batch { uid, .. } => uid,
        }
    }

    /// The uid its collection is serialized on: its job's, but a stranded pod's own (its job's new run may be
    /// dispatching meanwhile, and that dispatch waits for this pod to go).
    pub fn lock(&self) -> &str {
        match self {
            Orphan::Stranded { pod_uid, .. } => pod_uid,
            _ => self.uid(),
        }
    }
}

/// Why a pool cannot take work now: a condition reason and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The `Ready` condition's reason.
    pub reason: &'static str,
    /// Why, for people.
    pub message: String,
}

impl Refusal {
    /// A refusal with this reason.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Refusal { reason, message: message.into() }
    }
}

impl From<String> for Refusal {
    fn from(message: String) -> Self {
        Refusal { reason: "BackendUnavailable", message }
    }
}

/// Why a backend could not apply a decision (the next cycle plans it again).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A Kubernetes call failed.
    #[error(transparent)]
    Kubernetes(#[from] kubernetes::PodError),
    /// A Slurm call or submission failed.
    #[error(transparent)]
    Slurm(#[from] slurm::DispatchError),
    /// A step in a remote cluster failed.
    #[error(transparent)]
    Remote(#[from] remote::RemoteError),
    /// A simulated step failed.
    #[error(transparent)]
    Simulated(#[from] simulated::KubeletError),
    /// No backend of this kind runs in this process.
    #[error("{}", .0.not_served())]
    NotServed(BackendKind),
}

impl BackendError {
    /// What was refused for good, when retrying as it is cannot work (the job's run fails instead).
    pub fn refusal(&self) -> Option<String> {
        match self {
            BackendError::Kubernetes(e) => e.refusal(),
            _ => None,
        }
    }

    /// A warning event for the job, when the failure is worth telling its owner (reason, message).
    pub fn event(&self) -> Option<(&'static str, String)> {
        match self {
            BackendError::Slurm(e) => e.event(),
            _ => None,
        }
    }
}

/// One kind of pool. The first three methods are read by the cycle and do no IO (they read what the backend last
/// saw, frozen for the cycle); the others apply decisions and may fail and be retried by the next cycle.
pub trait PoolBackend: Send + Sync + std::fmt::Debug {
    /// The kind of pool it serves.
    fn kind(&self) -> BackendKind;

    /// Whether `pool` can take work now; `Err(why)` when it cannot (its jobs keep their place).
    fn reachable(&self, pool: &ComputePool) -> Result<(), Refusal>;

    /// Adds the nodes of its `pools` (already in the federation, with their ids) and the runs it records.
    fn contribute(&self, pools: &[(PoolId, &ComputePool)], inputs: &Inputs<'_>, fed: &mut Federation);

    /// What runs in its pools that no placement covers (of jobs gone, ended, evicted, or of an old run).
    fn orphans(&self, objects: &Objects, live: &Live) -> Vec<Orphan>;

    /// The finalizer it needs on a job whose work it holds (deleting the job releases that work first).
    fn finalizer(&self) -> Option<&'static str> {
        None
    }

    /// Makes the admitted job's work exist where its status places it; `fresh`: just admitted by this process, so
    /// no earlier dispatch of this run can exist. Returns how many tasks it started.
    fn dispatch<'a>(&'a self, job: &'a ComputeJob, fresh: bool)
    -> BoxFuture<'a, Result<usize, BackendError>>;

    /// Stops the run the job's status placed (the status already says it is preempted); returns what was done.
    fn evict<'a>(&'a self, job: &'a ComputeJob) -> BoxFuture<'a, Result<String, BackendError>>;

    /// Deletes or cancels an orphan; returns how many things it removed.
    fn collect<'a>(&'a self, orphan: &'a Orphan) -> BoxFuture<'a, Result<usize, BackendError>>;

    /// Lets a job being deleted go: stops whatever it still has in the pool.
    fn release<'a>(&'a self, job: &'a ComputeJob) -> BoxFuture<'a, Result<(), BackendError>>;
}

/// The backends a process serves, frozen for one cycle (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Backends {
    list: Vec<Arc<dyn PoolBackend>>,
}

impl Backends {
    /// These backends; the order decides which contributes nodes first (so node ids stay stable).
    pub fn new(mut list: Vec<Arc<dyn PoolBackend>>) -> Self {
        list.sort_by_key(|b| b.kind());
        Backends { list }
    }

    /// The backend of a kind, if this process serves it.
    pub fn get(&self, kind: BackendKind) -> Option<&Arc<dyn PoolBackend>> {
        self.list.iter().find(|b| b.kind() == kind)
    }

    /// Every backend, in contribution order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn PoolBackend>> {
        self.list.iter()
    }

    /// The federation on the model table `models`: every pool (by name) that a backend here serves, with its nodes;
    /// the others are refused with why.
    pub fn federation(
        &self,
        pools: &[Arc<ComputePool>],
        inputs: &Inputs<'_>,
        models: GpuModels,
    ) -> Federation {
        let mut fed = Federation::default();
        fed.cluster.models = models;
        let mut sorted: Vec<&Arc<ComputePool>> = pools.iter().collect();
        sorted.sort_by_key(|p| kube::ResourceExt::name_any(p.as_ref()));
        let mut by_kind: HashMap<BackendKind, Vec<(PoolId, &ComputePool)>> = HashMap::new();
        for p in sorted {
            let name = kube::ResourceExt::name_any(p.as_ref());
            let Some(kind) = BackendKind::of(p) else {
                fed.refuse(
                    &name,
                    "spec.backend names no backend: set kubernetes, remoteKubernetes, slurm or simulated",
                );
                continue;
            };
            let Some(backend) = self.get(kind) else {
                fed.refuse(&name, kind.not_served());
                continue;
            };
            let id = fed.add_pool(p);
            if let Err(r) = backend.reachable(p) {
                fed.refuse_because(&name, r.reason, r.message);
            }
            by_kind.entry(kind).or_default().push((id, p.as_ref()));
        }
        for b in &self.list {
            if let Some(pools) = by_kind.get(&b.kind()) {
                b.contribute(pools, inputs, &mut fed);
            }
        }
        fed
    }
}
