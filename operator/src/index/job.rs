//! ComputeJobs as the core's jobs, or the reason one cannot be queued yet.

use std::collections::BTreeMap;

use haiyun_api::job::{JobKind, Topology as ApiTopology};
use haiyun_api::{ComputeJob, quantity};
use haiyun_scheduler::model::{
    Cluster, DatasetId, Gang, Job, ModelSet, PoolId, PoolKind, QueueId, TaskSpec, Time, Topology, Work,
};
use kube::ResourceExt;

use super::cluster::model_id;
use super::queue::admits;

/// Run time assumed when a job gives no estimate.
pub const DEFAULT_RUNTIME_S: f64 = 3600.0;
/// Time limit of a batch job without a runtime estimate, minutes.
const DEFAULT_LIMIT_MIN: u32 = 60;

/// Why a job cannot be queued yet; it is kept and retried on every change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobProblem {
    /// Its queue does not exist (or is invalid).
    #[error("queue {queue:?} does not exist{detail}; the job starts once it does")]
    NoQueue {
        /// The queue.
        queue: String,
        /// Why, when the queue exists but is invalid.
        detail: String,
    },
    /// Its namespace may not use the queue.
    #[error("namespace {namespace:?} may not submit to queue {queue:?} (see the queue's spec.namespaces)")]
    Namespace {
        /// The namespace.
        namespace: String,
        /// The queue.
        queue: String,
    },
    /// A dataset it reads does not exist.
    #[error("dataset {0:?} does not exist; create the Dataset or fix spec.datasets")]
    NoDataset(String),
    /// A dataset it reads does not let its namespace or queue read it.
    #[error(
        "spec.datasets: namespace {namespace:?} (queue {queue:?}) may not read dataset {dataset:?} (its spec.access); ask its owner to add one of them"
    )]
    DataAccess {
        /// The dataset.
        dataset: String,
        /// The job's namespace.
        namespace: String,
        /// The job's queue.
        queue: String,
    },
    /// A volume of its pods mounts a dataset's storage that it does not name.
    #[error(
        "{at}: volume {volume:?} mounts {what}, which holds dataset {dataset:?}; name the dataset (a ComputeJob's spec.datasets, a batch Job's haiyun.io/datasets annotation; a plain pod cannot) and its clearance and access apply"
    )]
    DataStorage {
        /// Where the volume is declared.
        at: String,
        /// The volume's name in the pod.
        volume: String,
        /// What the volume is.
        what: String,
        /// The dataset it holds.
        dataset: String,
    },
    /// No pool matches its kinds and sites.
    #[error("no ComputePool matches spec.poolKinds {kinds:?} and spec.sites {sites:?}")]
    NoPool {
        /// Kinds asked for.
        kinds: Vec<String>,
        /// Sites asked for.
        sites: Vec<String>,
    },
    /// A pod template asks for nodes no allowed pool has.
    #[error("{field}: {message}")]
    NoNode {
        /// The field.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// An older job of its namespace carries the same idempotency key.
    #[error(
        "spec.idempotencyKey: job {0} was submitted with the same key; this one is a duplicate and does not run"
    )]
    Duplicate(String),
    /// A malformed field the schema could not catch.
    #[error("{field}: {message}")]
    Field {
        /// The field.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl JobProblem {
    /// The phase to report it under.
    pub fn phase(&self) -> &'static str {
        match self {
            JobProblem::NoQueue { .. } | JobProblem::Namespace { .. } | JobProblem::Duplicate(_) => "queue",
            JobProblem::NoDataset(_) => "data-clearance",
            JobProblem::DataAccess { .. } | JobProblem::DataStorage { .. } => "data-access",
            JobProblem::NoPool { .. } | JobProblem::NoNode { .. } => "placement",
            JobProblem::Field { .. } => "validation",
        }
    }
}

/// What a job may reference: queues, datasets and the federation.
#[derive(Debug)]
pub struct Refs<'a> {
    /// Queue ids by name.
    pub queues: &'a BTreeMap<String, QueueId>,
    /// Queues that exist but are invalid, with why.
    pub invalid_queues: &'a BTreeMap<String, String>,
    /// Namespaces allowed per queue (empty: all).
    pub namespaces: &'a BTreeMap<String, Vec<String>>,
    /// Dataset ids by name.
    pub datasets: &'a BTreeMap<String, DatasetId>,
    /// Who may read each dataset that says (datasets without `spec.access` are absent: anyone may).
    pub access: &'a BTreeMap<String, haiyun_api::dataset::DataAccess>,
    /// Pools that run batch scripts.
    pub scripts: &'a std::collections::BTreeSet<PoolId>,
    /// The longest time limit per pool, minutes, where one is set.
    pub time_limits: &'a BTreeMap<PoolId, u32>,
    /// Queues whose inference jobs may be preempted.
    pub preempt_inference: &'a std::collections::BTreeSet<String>,
    /// Datasets' storage and the claims bound to it.
    pub storage: &'a super::storage::Storage,
}

impl Refs<'_> {
    /// Whether `namespace` may submit to `queue`.
    pub fn admits(&self, queue: &str, namespace: &str) -> bool {
        admits(self.namespaces.get(queue).map_or(&[][..], |a| a.as_slice()), namespace)
    }
}

fn field(field: &str, message: impl ToString) -> JobProblem {
    JobProblem::Field { field: field.into(), message: message.to_string() }
}

/// The core's job for a ComputeJob.
pub fn core_job(cj: &ComputeJob, refs: &Refs<'_>, cluster: &mut Cluster) -> Result<Job, JobProblem> {
    let s = &cj.spec;
    let queue = match refs.queues.get(&s.queue) {
        Some(q) => *q,
        None => {
            let detail = refs.invalid_queues.get(&s.queue).map(|e| format!(" as a valid queue ({e})"));
            return Err(JobProblem::NoQueue { queue: s.queue.clone(), detail: detail.unwrap_or_default() });
        }
    };
    let namespace = cj.namespace().unwrap_or_default();
    if !refs.admits(&s.queue, &namespace) {
        return Err(JobProblem::Namespace { namespace, queue: s.queue.clone() });
    }
    let mut groups = Vec::new();
    let mut throughput: Vec<(u8, f64)> = Vec::new();
    for (i, g) in s.task_groups.iter().enumerate() {
        let at = |f: &str| format!("spec.taskGroups[{i}].{f}");
        let cpu = g.cpu.as_deref().map(quantity::milli).transpose().map_err(|e| field(&at("cpu"), e))?;
        let mem = g.memory.as_deref().map(quantity::mib).transpose().map_err(|e| field(&at("memory"), e))?;
        let mut models = ModelSet::ANY;
        if !g.gpu_models.is_empty() {
            models = ModelSet::NONE;
            for (j, c) in g.gpu_models.iter().enumerate() {
                let id = model_id(&mut cluster.models, &c.model).ok_or_else(|| {
                    field(&at(&format!("gpuModels[{j}]")), "more than 64 GPU models are in use")
                })?;
                models.insert(id);
                if let Some(t) = c.throughput {
                    if !(t > 0.0 && t.is_finite()) {
                        return Err(field(
                            &at(&format!("gpuModels[{j}].throughput")),
                            "must be greater than 0",
                        ));
                    }
                    throughput.retain(|(m, _)| *m != id);
                    throughput.push((id, t));
                }
            }
        }
        let (gpus, milli) = match g.gpu_fraction {
            Some(f) => (1, (f * 1000.0).round().clamp(1.0, 999.0) as u32),
            None => (g.gpus, 1000),
        };
        let spec = TaskSpec {
            cpu_milli: cpu.unwrap_or(0),
            memory_mib: mem.unwrap_or(0),
            gpus,
            gpu_milli: milli,
            models,
            nodes: Default::default(),
        };
        groups.push((spec, g.replicas));
    }
    let topology = match s.topology {
        ApiTopology::Any => Topology::Any,
        ApiTopology::SameNode => Topology::SameNode,
        ApiTopology::NvlinkDomain => Topology::NvlinkDomain,
        ApiTopology::Rack => Topology::Rack,
        ApiTopology::Pool => Topology::Pool,
    };
    let gang = Gang::from_groups(&groups, topology).map_err(|e| field("spec.taskGroups", e))?;
    let datasets = s
        .datasets
        .iter()
        .map(|d| refs.datasets.get(d).copied().ok_or_else(|| JobProblem::NoDataset(d.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    let namespace = cj.namespace().unwrap_or_default();
    if let Some((d, _)) = s
        .datasets
        .iter()
        .filter_map(|d| Some((d, refs.access.get(d)?)))
        .find(|(_, a)| !a.allows(&namespace, &s.queue))
    {
        return Err(JobProblem::DataAccess { dataset: d.clone(), namespace, queue: s.queue.clone() });
    }
    for (group, g) in s.task_groups.iter().enumerate() {
        let at = format!("spec.taskGroups[{group}].template.spec.volumes");
        let volumes = super::storage::template_volumes(g.template.as_ref()).map_err(|e| field(&at, e))?;
        if let Some(u) = refs.storage.unnamed(&namespace, &volumes, &s.datasets) {
            let (volume, what, dataset) = (u.volume, u.holding.what, u.holding.dataset);
            return Err(JobProblem::DataStorage { at, volume, what, dataset });
        }
    }
    let pools = allowed_pools(cj, cluster, refs)?;
    let runtime = match &s.runtime_estimate {
        Some(r) => quantity::seconds(r)
            .ok_or_else(|| field("spec.runtimeEstimate", "write a duration such as 90m or 1h30m"))?
            as f64,
        None => DEFAULT_RUNTIME_S,
    };
    Ok(Job {
        name: key(cj),
        queue,
        priority: s.priority.unwrap_or(0),
        submitted: submitted(cj),
        gang,
        work: Work { total: runtime.max(1.0), throughput, default: 1.0 },
        datasets,
        pools,
        // Serving is never evicted for other work, unless its queue says so.
        preemptible: s.preemptible
            && (s.kind != JobKind::Inference || refs.preempt_inference.contains(&s.queue)),
        checkpoint_s: s.checkpoint_seconds.map(f64::from),
        user: None,
    })
}

/// The time limit a batch job asks for: twice its runtime estimate, in minutes (an hour without one).
pub fn time_limit_min(job: &ComputeJob) -> u32 {
    job.spec
        .runtime_estimate
        .as_deref()
        .and_then(quantity::seconds)
        .map_or(DEFAULT_LIMIT_MIN, |s| u32::try_from((s * 2).div_ceil(60)).unwrap_or(u32::MAX).max(1))
}

/// Pools matching the job's kinds and sites that can run it (empty: any). A pool that runs batch scripts runs a
/// job of one task group with a script; any other pool runs any job whose groups are not scripts alone.
fn allowed_pools(cj: &ComputeJob, cluster: &Cluster, refs: &Refs) -> Result<Vec<PoolId>, JobProblem> {
    let s = &cj.spec;
    let scripted = s.task_groups.iter().all(|g| g.script.is_some());
    let as_batch = scripted && s.task_groups.len() == 1;
    let as_pods = !scripted || s.task_groups.iter().all(|g| g.template.is_some());
    let limit = time_limit_min(cj);
    let fits = |p: &PoolId| refs.time_limits.get(p).is_none_or(|max| limit <= *max);
    // An HPC batch job that names no pool kinds runs in supercomputing pools, or where batch scripts run.
    let hpc_only = s.kind == JobKind::HpcBatch && s.pool_kinds.is_empty();
    let hpc = |p: &PoolId| {
        refs.scripts.contains(p) || cluster.pools.get(*p as usize).is_some_and(|x| x.kind == PoolKind::Hpc)
    };
    let runs = |p: &PoolId| {
        let runs = if refs.scripts.contains(p) { as_batch && fits(p) } else { as_pods };
        runs && (!hpc_only || hpc(p))
    };
    if s.pool_kinds.is_empty() && s.sites.is_empty() && (0..cluster.pools.len() as PoolId).all(|p| runs(&p)) {
        return Ok(Vec::new());
    }
    let kinds: Vec<&str> = s.pool_kinds.iter().map(|k| super::cluster::pool_kind(*k).as_str()).collect();
    let pools: Vec<PoolId> = (0..cluster.pools.len() as PoolId)
        .filter(|p| {
            let pool = &cluster.pools[*p as usize];
            (kinds.is_empty() || kinds.contains(&pool.kind.as_str()))
                && (s.sites.is_empty() || s.sites.contains(&pool.site))
                && runs(p)
        })
        .collect();
    if pools.is_empty() && s.pool_kinds.is_empty() && s.sites.is_empty() {
        let what = if hpc_only && !(0..cluster.pools.len() as PoolId).any(|p| hpc(&p)) {
            "kind hpc-batch runs in pools of kind hpc or pools that run batch scripts, and there is none: add one, or \
             name spec.poolKinds"
        } else if as_batch && !refs.scripts.is_empty() {
            "no Slurm pool allows its time limit (twice spec.runtimeEstimate): shorten the estimate"
        } else if as_batch {
            "no pool runs batch scripts: add a ComputePool with backend.slurm"
        } else if scripted {
            "a job of several script groups runs nowhere: a Slurm pool takes one group, a Kubernetes pool needs templates"
        } else {
            "no available pool runs pod templates"
        };
        return Err(field("spec.taskGroups", what));
    }
    if pools.is_empty() {
        return Err(JobProblem::NoPool {
            kinds: kinds.iter().map(|k| k.to_string()).collect(),
            sites: s.sites.clone(),
        });
    }
    Ok(pools)
}

/// Whether the job waits out its backoff after a failed run: why, and until when (unix seconds).
pub fn backoff(cj: &ComputeJob, now: Time) -> Option<(String, Time)> {
    let st = cj.status.as_ref()?;
    let until = st.restart_after.as_deref().and_then(crate::time::parse)?;
    (until > now).then(|| {
        let why =
            st.last_failure.as_ref().map_or_else(|| "its last run failed".to_string(), |f| f.message.clone());
        (why, until)
    })
}

/// Whether the job is done (Succeeded or Failed).
pub fn is_terminal(cj: &ComputeJob) -> bool {
    cj.status.as_ref().is_some_and(|s| {
        matches!(s.phase, haiyun_api::job::JobPhase::Succeeded | haiyun_api::job::JobPhase::Failed)
    })
}

/// `namespace/name`.
pub fn key(cj: &ComputeJob) -> String {
    format!("{}/{}", cj.namespace().unwrap_or_default(), cj.name_any())
}

/// When it was created, in unix seconds.
pub fn submitted(cj: &ComputeJob) -> Time {
    crate::time::of_meta(cj.metadata.creation_timestamp.as_ref())
}

/// When it was admitted (from its status), in unix seconds.
pub fn started(cj: &ComputeJob) -> Option<Time> {
    cj.status.as_ref()?.start_time.as_deref().and_then(crate::time::parse)
}
