//! Haiyun's objects held in memory, and the shell that runs the operator's one cycle over them and applies its
//! actions at once: `haiyun demo` serves its API from it, and its pools through the simulated backend.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures::FutureExt;
use haiyun_api::job::JobPhase;
use haiyun_api::{ComputeJob, ComputePool, Dataset, Queue, QuotaRequest};
use haiyun_scheduler::model::Time;
use haiyun_scheduler::schedule::SchedulerConfig;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::backend::simulated::SimulatedBackend;
use crate::backend::{BackendError, Backends, PoolBackend};
use crate::cycle::{self, Memory};
use crate::dashboard::Snapshot;
use crate::decision::{Decision, DecisionLog};
use crate::fleet::FleetView;
use crate::index::Objects;
use crate::plan::Action;
use crate::status::StatusWrite;
use crate::time::rfc3339;

/// Why the cluster in memory refused a change, or a cycle failed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// An object without a name.
    #[error("{kind} has no metadata.name: give it one")]
    NoName {
        /// Its kind.
        kind: &'static str,
    },
    /// A name taken.
    #[error("{kind} {name:?} already exists: choose another name")]
    Exists {
        /// Its kind.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// No such object.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// Its kind.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The cycle failed.
    #[error(transparent)]
    Cycle(#[from] cycle::CycleError),
    /// The simulated backend could not apply an action.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A simulated step did not finish at once (it never waits on anything).
    #[error("a simulated step did not complete at once")]
    Pending,
    /// A change the API server would refuse.
    #[error("{0}")]
    Refused(String),
}

/// Finished jobs kept (the oldest are forgotten first).
const KEEP_FINISHED: usize = 2000;

/// Haiyun's objects in memory, and the pods the simulated kubelet runs.
#[derive(Debug)]
pub struct MemoryCluster {
    pools: BTreeMap<String, ComputePool>,
    queues: BTreeMap<String, Queue>,
    datasets: BTreeMap<String, Dataset>,
    requests: BTreeMap<String, QuotaRequest>,
    jobs: BTreeMap<String, ComputeJob>,
    backend: SimulatedBackend,
    memory: Memory,
    config: SchedulerConfig,
    log: DecisionLog,
    ledger: Option<crate::ledger::Ledger>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    next_uid: u64,
}

/// `namespace/name`, or `name` for cluster-scoped objects.
fn key<K: Resource>(o: &K) -> String {
    match o.meta().namespace.as_deref() {
        Some(ns) => format!("{ns}/{}", o.meta().name.as_deref().unwrap_or_default()),
        None => o.meta().name.clone().unwrap_or_default(),
    }
}

impl MemoryCluster {
    /// An empty cluster scheduling with `config`, logging decisions to `log`.
    pub fn new(config: SchedulerConfig, log: DecisionLog) -> Self {
        MemoryCluster {
            pools: BTreeMap::new(),
            queues: BTreeMap::new(),
            datasets: BTreeMap::new(),
            requests: BTreeMap::new(),
            jobs: BTreeMap::new(),
            backend: SimulatedBackend::default(),
            memory: Memory::default(),
            config,
            log,
            ledger: None,
            metrics: None,
            next_uid: 0,
        }
    }

    /// Records each cycle's latency, gauges and the ledger's usage in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Records every run in `ledger` from the next cycle on.
    pub fn with_ledger(mut self, ledger: crate::ledger::Ledger) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Fills what the API server would: uid, creation time, generation; refuses a missing or taken name.
    fn admit_meta<K: Resource>(
        &mut self,
        o: &mut K,
        kind: &'static str,
        taken: bool,
        now: Time,
    ) -> Result<(), MemoryError> {
        let name = o.meta().name.clone().filter(|n| !n.is_empty()).ok_or(MemoryError::NoName { kind })?;
        if taken {
            return Err(MemoryError::Exists { kind, name });
        }
        self.next_uid += 1;
        let m: &mut ObjectMeta = o.meta_mut();
        m.uid = Some(format!("00000000-0000-4000-8000-{:012x}", self.next_uid));
        m.creation_timestamp = crate::time::meta(now);
        m.generation = Some(1);
        m.resource_version = Some(self.next_uid.to_string());
        Ok(())
    }

    /// Adds a ComputePool.
    pub fn add_pool(&mut self, mut p: ComputePool, now: Time) -> Result<(), MemoryError> {
        let taken = self.pools.contains_key(&key(&p));
        self.admit_meta(&mut p, "ComputePool", taken, now)?;
        self.pools.insert(key(&p), p);
        Ok(())
    }

    /// Adds a Queue.
    pub fn add_queue(&mut self, mut q: Queue, now: Time) -> Result<(), MemoryError> {
        let taken = self.queues.contains_key(&key(&q));
        self.admit_meta(&mut q, "Queue", taken, now)?;
        self.queues.insert(key(&q), q);
        Ok(())
    }

    /// Adds a Dataset.
    pub fn add_dataset(&mut self, mut d: Dataset, now: Time) -> Result<(), MemoryError> {
        let taken = self.datasets.contains_key(&key(&d));
        self.admit_meta(&mut d, "Dataset", taken, now)?;
        self.datasets.insert(key(&d), d);
        Ok(())
    }

    /// Adds a QuotaRequest (namespaced); returns it as stored.
    pub fn add_request(&mut self, mut r: QuotaRequest, now: Time) -> Result<QuotaRequest, MemoryError> {
        let taken = self.requests.contains_key(&key(&r));
        self.admit_meta(&mut r, "QuotaRequest", taken, now)?;
        self.requests.insert(key(&r), r.clone());
        Ok(r)
    }

    /// Sets a QuotaRequest's decision as administrator `by` would, stamping who decided (as the chart's admission
    /// policy does on a cluster); a decision already made stands.
    pub fn decide(
        &mut self,
        namespace: &str,
        name: &str,
        decision: haiyun_api::quota::Decision,
        by: &str,
    ) -> Result<QuotaRequest, MemoryError> {
        let r = self
            .requests
            .get_mut(&format!("{namespace}/{name}"))
            .ok_or_else(|| MemoryError::NotFound { kind: "QuotaRequest", name: name.into() })?;
        if r.spec.decision.is_some_and(|d| d != decision) {
            return Err(MemoryError::Refused(format!(
                "QuotaRequest {name}: spec.decision cannot be changed once made; create a new request"
            )));
        }
        r.spec.decision = Some(decision);
        r.spec.decided_by = Some(by.to_string());
        r.metadata.generation = Some(r.metadata.generation.unwrap_or(0) + 1);
        Ok(r.clone())
    }

    /// Submits a ComputeJob that really needs `work` seconds at throughput 1 (default: its estimate).
    pub fn submit(
        &mut self,
        mut j: ComputeJob,
        work: Option<f64>,
        now: Time,
    ) -> Result<ComputeJob, MemoryError> {
        let taken = self.jobs.contains_key(&key(&j));
        self.admit_meta(&mut j, "ComputeJob", taken, now)?;
        if let Some(w) = work {
            self.backend.kubelet().set_work(&j.uid().unwrap_or_default(), w);
        }
        self.jobs.insert(key(&j), j.clone());
        Ok(j)
    }

    /// The simulated backend serving its pools (clones share its kubelet).
    pub fn backend(&self) -> SimulatedBackend {
        self.backend.clone()
    }

    /// ComputeJobs, by `namespace/name`.
    pub fn jobs(&self) -> &BTreeMap<String, ComputeJob> {
        &self.jobs
    }

    /// ComputePools, by name.
    pub fn pools(&self) -> &BTreeMap<String, ComputePool> {
        &self.pools
    }

    /// Queues, by name.
    pub fn queues(&self) -> &BTreeMap<String, Queue> {
        &self.queues
    }

    /// QuotaRequests, by `namespace/name`.
    pub fn requests(&self) -> &BTreeMap<String, QuotaRequest> {
        &self.requests
    }

    /// Everything as the index reads it.
    pub fn objects(&self) -> Objects {
        Objects {
            pools: self.pools.values().cloned().map(Arc::new).collect(),
            queues: self.queues.values().cloned().map(Arc::new).collect(),
            jobs: self.jobs.values().cloned().map(Arc::new).collect(),
            requests: self.requests.values().cloned().map(Arc::new).collect(),
            datasets: self.datasets.values().cloned().map(Arc::new).collect(),
            nodes: Vec::new(),
            pods: self.backend.pods().into_iter().map(Arc::new).collect(),
            batch_jobs: Vec::new(),
            slices: Vec::new(),
            resource_claims: Vec::new(),
            grants: Vec::new(),
            node_fences: Vec::new(),
            // The demo's simulated pods mount no volumes.
            volumes: Vec::new(),
            claims: Vec::new(),
        }
    }

    /// One cycle at `now`: the kubelet finishes the tasks whose work is done, then the operator's cycle runs and
    /// its actions apply; returns the dashboard's snapshot.
    pub fn cycle(&mut self, fleet: Arc<FleetView>, now: Time) -> Result<Snapshot, MemoryError> {
        self.backend.kubelet().tick(now);
        let objects = self.objects();
        let backends = Backends::new(vec![Arc::new(self.backend.clone()) as Arc<dyn PoolBackend>]);
        let input = cycle::Input {
            objects: &objects,
            fleet: &fleet,
            backends: &backends,
            busy: &HashSet::new(),
            config: self.config,
            now,
        };
        if self.memory.runs.is_none() {
            self.memory.runs = self.ledger.as_ref().and_then(|l| l.take_open());
        }
        let started = std::time::Instant::now();
        let out = cycle::run(&input, &mut self.memory)?;
        if let Some(m) = &self.metrics {
            m.count_actions(out.actions.iter().map(crate::plan::Action::kind));
            m.observe_cycle(started.elapsed().as_secs_f64(), out.gauges.clone());
        }
        for d in &out.decisions {
            self.log.write(d);
        }
        if let Some(l) = &self.ledger {
            l.record(out.ledger);
            if let Some(m) = &self.metrics {
                m.set_usage(&l.totals(now));
            }
        }
        for a in out.actions {
            self.apply(a, now)?;
        }
        self.prune();
        Ok(out.snapshot)
    }

    /// Forgets the pods of finished jobs, and all but the latest finished jobs, so a long demo stays small.
    fn prune(&mut self) {
        let done = |j: &ComputeJob| {
            j.status.as_ref().is_some_and(|s| matches!(s.phase, JobPhase::Succeeded | JobPhase::Failed))
        };
        let finished: HashSet<String> =
            self.jobs.values().filter(|j| done(j)).filter_map(|j| j.uid()).collect();
        if finished.len() > KEEP_FINISHED {
            let mut ended: Vec<(String, String)> = self
                .jobs
                .iter()
                .filter(|(_, j)| done(j))
                .map(|(k, j)| {
                    (j.status.as_ref().and_then(|s| s.completion_time.clone()).unwrap_or_default(), k.clone())
                })
                .collect();
            ended.sort();
            for (_, k) in ended.into_iter().take(finished.len() - KEEP_FINISHED) {
                self.jobs.remove(&k);
            }
        }
        let live: HashSet<String> = self.jobs.values().filter_map(|j| j.uid()).collect();
        self.backend.kubelet().prune(&finished, &live);
    }

    /// Applies an action at once: statuses in memory, work through the simulated backend.
    fn apply(&mut self, action: Action, now: Time) -> Result<(), MemoryError> {
        let backend = self.backend.clone();
        let done = |f: futures::future::BoxFuture<'_, Result<usize, BackendError>>| {
            f.now_or_never().ok_or(MemoryError::Pending)?.map_err(MemoryError::from)
        };
        match &action {
            Action::Admit { job, placement, dispatch, .. } => {
                let status = crate::status::admitted(job, placement, now);
                if let Some(j) = self.jobs.get_mut(&key(job.as_ref())) {
                    j.status = Some(status);
                    let admitted = j.clone();
                    if *dispatch {
                        done(backend.dispatch(&admitted, true))?;
                    }
                    if let Some(line) = Decision::placed(&action, rfc3339(now)) {
                        self.log.write(&line);
                    }
                }
            }
            Action::Bind { job, .. } => {
                done(backend.dispatch(job, false))?;
            }
            Action::Evict { job, lost, .. } => {
                backend.evict(job).now_or_never().ok_or(MemoryError::Pending)??;
                if let Some(j) = self.jobs.get_mut(&key(job.as_ref())) {
                    j.status = Some(match lost {
                        Some(why) => crate::status::node_lost(j, why, now),
                        None => crate::status::preempted(j, now),
                    });
                }
            }
            Action::Status { job, status } => {
                if let Some(j) = self.jobs.get_mut(&key(job.as_ref())) {
                    j.status = Some((**status).clone());
                }
            }
            Action::Collect { orphan, .. } => {
                done(backend.collect(orphan))?;
            }
            Action::WriteStatus(w) => self.write_status(w.clone()),
            // Simulated pools hold no plain pods or batch/v1 Jobs, and jobs here have no finalizers.
            Action::BindPod { .. }
            | Action::HoldPod { .. }
            | Action::EvictPod { .. }
            | Action::PodWaits { .. }
            | Action::Mirror { .. }
            | Action::Release { .. } => {}
        }
        Ok(())
    }

    fn write_status(&mut self, w: StatusWrite) {
        match w {
            StatusWrite::Queue { name, status } => {
                if let Some(q) = self.queues.get_mut(&name) {
                    q.status = Some(status);
                }
            }
            StatusWrite::Pool { name, status } => {
                if let Some(p) = self.pools.get_mut(&name) {
                    p.status = Some(status);
                }
            }
            StatusWrite::Request { namespace, name, status } => {
                if let Some(r) = self.requests.get_mut(&format!("{namespace}/{name}")) {
                    r.status = Some(status);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
