//! The simulated backend: Haiyun's objects held in memory, run through the operator's own index, plan and reports,
//! with a simulated kubelet that runs each admitted task for its runtime. `haiyun demo` serves its pools with it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use haiyun_api::job::{JobPhase, Placement as ApiPlacement};
use haiyun_api::{ComputeJob, ComputePool, Dataset, JOB_UID_LABEL, Queue, QuotaRequest};
use haiyun_scheduler::model::Time;
use haiyun_scheduler::schedule::SchedulerConfig;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time as MetaTime};
use kube::{Resource, ResourceExt};

use crate::dashboard::Snapshot;
use crate::decision::{Decision, DecisionLog};
use crate::fleet::FleetView;
use crate::index::{self, Objects, Overlay};
use crate::plan::{self, Action};
use crate::report;
use crate::time::rfc3339;

/// Why the simulated cluster refused a change.
#[derive(Debug, thiserror::Error)]
pub enum SimulatedError {
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
    /// The world could not be built.
    #[error(transparent)]
    Index(#[from] index::IndexError),
    /// The cycle broke an invariant.
    #[error("scheduling cycle failed: {0}")]
    Cycle(#[from] haiyun_scheduler::schedule::ScheduleError),
    /// A pod could not be made from its job.
    #[error(transparent)]
    Pod(#[from] super::kubernetes::BackendError),
}

/// Finished jobs kept (the oldest are forgotten first).
const KEEP_FINISHED: usize = 2000;

/// One run of a job on the simulated kubelet.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// When it started.
    since: Time,
    /// When its work is done.
    ends: Time,
    /// Work per second where it runs.
    rate: f64,
}

/// Haiyun's objects in memory, and the pods the simulated kubelet runs.
#[derive(Debug)]
pub struct SimulatedCluster {
    pools: BTreeMap<String, ComputePool>,
    queues: BTreeMap<String, Queue>,
    datasets: BTreeMap<String, Dataset>,
    requests: BTreeMap<String, QuotaRequest>,
    jobs: BTreeMap<String, ComputeJob>,
    pods: BTreeMap<String, Pod>,
    /// Work (seconds at throughput 1) each job really needs, by uid; the estimate when unset.
    work: HashMap<String, f64>,
    runs: HashMap<String, Run>,
    config: SchedulerConfig,
    log: DecisionLog,
    next_uid: u64,
}

/// `namespace/name`, or `name` for cluster-scoped objects.
fn key<K: Resource>(o: &K) -> String {
    match o.meta().namespace.as_deref() {
        Some(ns) => format!("{ns}/{}", o.meta().name.as_deref().unwrap_or_default()),
        None => o.meta().name.clone().unwrap_or_default(),
    }
}

fn timestamp(t: Time) -> Option<MetaTime> {
    jiff::Timestamp::from_millisecond((t * 1000.0) as i64).ok().map(MetaTime)
}

impl SimulatedCluster {
    /// An empty cluster scheduling with `config`, logging decisions to `log`.
    pub fn new(config: SchedulerConfig, log: DecisionLog) -> Self {
        SimulatedCluster {
            pools: BTreeMap::new(),
            queues: BTreeMap::new(),
            datasets: BTreeMap::new(),
            requests: BTreeMap::new(),
            jobs: BTreeMap::new(),
            pods: BTreeMap::new(),
            work: HashMap::new(),
            runs: HashMap::new(),
            config,
            log,
            next_uid: 0,
        }
    }

    /// Fills what the API server would: uid, creation time, generation; refuses a missing or taken name.
    fn admit_meta<K: Resource>(
        &mut self,
        o: &mut K,
        kind: &'static str,
        taken: bool,
        now: Time,
    ) -> Result<(), SimulatedError> {
        let name = o.meta().name.clone().filter(|n| !n.is_empty()).ok_or(SimulatedError::NoName { kind })?;
        if taken {
            return Err(SimulatedError::Exists { kind, name });
        }
        self.next_uid += 1;
        let m: &mut ObjectMeta = o.meta_mut();
        m.uid = Some(format!("00000000-0000-4000-8000-{:012x}", self.next_uid));
        m.creation_timestamp = timestamp(now);
        m.generation = Some(1);
        m.resource_version = Some(self.next_uid.to_string());
        Ok(())
    }

    /// Adds a ComputePool.
    pub fn add_pool(&mut self, mut p: ComputePool, now: Time) -> Result<(), SimulatedError> {
        let taken = self.pools.contains_key(&key(&p));
        self.admit_meta(&mut p, "ComputePool", taken, now)?;
        self.pools.insert(key(&p), p);
        Ok(())
    }

    /// Adds a Queue.
    pub fn add_queue(&mut self, mut q: Queue, now: Time) -> Result<(), SimulatedError> {
        let taken = self.queues.contains_key(&key(&q));
        self.admit_meta(&mut q, "Queue", taken, now)?;
        self.queues.insert(key(&q), q);
        Ok(())
    }

    /// Adds a Dataset.
    pub fn add_dataset(&mut self, mut d: Dataset, now: Time) -> Result<(), SimulatedError> {
        let taken = self.datasets.contains_key(&key(&d));
        self.admit_meta(&mut d, "Dataset", taken, now)?;
        self.datasets.insert(key(&d), d);
        Ok(())
    }

    /// Adds a QuotaRequest (namespaced); returns it as stored.
    pub fn add_request(&mut self, mut r: QuotaRequest, now: Time) -> Result<QuotaRequest, SimulatedError> {
        let taken = self.requests.contains_key(&key(&r));
        self.admit_meta(&mut r, "QuotaRequest", taken, now)?;
        self.requests.insert(key(&r), r.clone());
        Ok(r)
    }

    /// Sets a QuotaRequest's decision, as an administrator would.
    pub fn decide(
        &mut self,
        namespace: &str,
        name: &str,
        decision: haiyun_api::quota::Decision,
    ) -> Result<QuotaRequest, SimulatedError> {
        let r = self
            .requests
            .get_mut(&format!("{namespace}/{name}"))
            .ok_or_else(|| SimulatedError::NotFound { kind: "QuotaRequest", name: name.into() })?;
        r.spec.decision = Some(decision);
        r.metadata.generation = Some(r.metadata.generation.unwrap_or(0) + 1);
        Ok(r.clone())
    }

    /// Submits a ComputeJob that really needs `work` seconds at throughput 1 (default: its estimate).
    pub fn submit(
        &mut self,
        mut j: ComputeJob,
        work: Option<f64>,
        now: Time,
    ) -> Result<ComputeJob, SimulatedError> {
        let taken = self.jobs.contains_key(&key(&j));
        self.admit_meta(&mut j, "ComputeJob", taken, now)?;
        if let Some(w) = work {
            self.work.insert(j.uid().unwrap_or_default(), w);
        }
        self.jobs.insert(key(&j), j.clone());
        Ok(j)
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

    /// Everything as the index reads it, with the agents' reports.
    pub fn objects(&self, fleet: Arc<FleetView>) -> Objects {
        Objects {
            pools: self.pools.values().cloned().map(Arc::new).collect(),
            queues: self.queues.values().cloned().map(Arc::new).collect(),
            jobs: self.jobs.values().cloned().map(Arc::new).collect(),
            requests: self.requests.values().cloned().map(Arc::new).collect(),
            datasets: self.datasets.values().cloned().map(Arc::new).collect(),
            nodes: Vec::new(),
            pods: self.pods.values().cloned().map(Arc::new).collect(),
            fleet,
            slurm: Arc::default(),
            simulated: true,
        }
    }

    /// One cycle at `now`: the kubelet finishes the tasks whose work is done, then the operator's index, plan and
    /// reports run and their actions apply; returns the dashboard's snapshot.
    pub fn cycle(&mut self, fleet: Arc<FleetView>, now: Time) -> Result<Snapshot, SimulatedError> {
        self.finish_due(now);
        let objects = self.objects(fleet);
        let mut world = index::build(&objects, &Overlay::default(), self.config, now)?;
        let actions = plan::plan(&mut world, now)?;
        for a in actions {
            self.apply(a, now)?;
        }
        let counts = report::job_counts(&world);
        let pools = report::pools(&world, now);
        let gens: BTreeMap<String, i64> =
            self.queues.iter().map(|(k, q)| (k.clone(), q.metadata.generation.unwrap_or(0))).collect();
        let queues = report::queues(&world, &counts, now, &gens);
        let requests = report::requests(&world, &objects.requests, now);
        let snap = crate::dashboard::snapshot(
            &world,
            &objects,
            &pools,
            &queues,
            &requests,
            &objects.fleet,
            rfc3339(now),
        );
        for (k, st) in pools {
            if let Some(p) = self.pools.get_mut(&k) {
                p.status = Some(st);
            }
        }
        for (k, st) in queues {
            if let Some(q) = self.queues.get_mut(&k) {
                q.status = Some(st);
            }
        }
        for (k, st) in requests {
            if let Some(r) = self.requests.get_mut(&k) {
                r.status = Some(st);
            }
        }
        self.prune();
        Ok(snap)
    }

    /// Forgets the pods of finished jobs, and all but the latest finished jobs, so a long demo stays small.
    fn prune(&mut self) {
        let done = |j: &ComputeJob| {
            j.status.as_ref().is_some_and(|s| matches!(s.phase, JobPhase::Succeeded | JobPhase::Failed))
        };
        let finished: std::collections::HashSet<String> =
            self.jobs.values().filter(|j| done(j)).filter_map(|j| j.uid()).collect();
        self.pods.retain(|_, p| p.labels().get(JOB_UID_LABEL).is_none_or(|u| !finished.contains(u)));
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
                if let Some(uid) = self.jobs.remove(&k).and_then(|j| j.uid()) {
                    self.work.remove(&uid);
                }
            }
        }
    }

    /// Marks the pods of runs whose work is done Succeeded.
    fn finish_due(&mut self, now: Time) {
        let due: Vec<String> =
            self.runs.iter().filter(|(_, r)| r.ends <= now).map(|(uid, _)| uid.clone()).collect();
        for uid in due {
            self.runs.remove(&uid);
            self.work.insert(uid.clone(), 0.0);
            for p in self.pods.values_mut().filter(|p| p.labels().get(JOB_UID_LABEL) == Some(&uid)) {
                p.status.get_or_insert_with(PodStatus::default).phase = Some("Succeeded".into());
            }
        }
    }

    fn apply(&mut self, action: Action, now: Time) -> Result<(), SimulatedError> {
        let stamp = rfc3339(now);
        match action {
            Action::Admit { job, placement } => {
                self.log.write(&Decision::new("place", &job, Some(&placement), stamp));
                let status = super::kubernetes::admitted_status(&job, &placement, now);
                if let Some(j) = self.jobs.get_mut(&key(job.as_ref())) {
                    j.status = Some(status);
                    let admitted = j.clone();
                    self.start(&admitted, &placement, now)?;
                }
            }
            Action::Bind { job } => {
                let placement = job.status.as_ref().and_then(|s| s.placement.clone());
                if let Some(p) = placement.filter(|_| !self.runs.contains_key(&job.uid().unwrap_or_default()))
                {
                    self.start(&job, &p, now)?;
                }
            }
            Action::Evict { job } => {
                let placement = job.status.as_ref().and_then(|s| s.placement.as_ref());
                self.log.write(&Decision::new("preempt", &job, placement, stamp.clone()));
                self.stop(&job, now);
                if let Some(j) = self.jobs.get_mut(&key(job.as_ref())) {
                    let mut st = j.status.clone().unwrap_or_default();
                    st.phase = JobPhase::Preempted;
                    st.placement = None;
                    st.preemptions += 1;
                    st.start_time = None;
                    st.derive_conditions(j.metadata.generation.unwrap_or(0), &stamp);
                    j.status = Some(st);
                }
            }
            Action::Status { job, status } => {
                let ended = matches!(status.phase, JobPhase::Succeeded | JobPhase::Failed);
                let old = job.status.as_ref().map(|s| s.phase);
                if ended && old != Some(status.phase) {
                    let d = Decision::new("finish", &job, status.placement.as_ref(), stamp);
                    self.log.write(&d.detail(format!("{:?}", status.phase)));
                }
                if let Some(j) = self.jobs.get_mut(&key(job.as_ref())) {
                    j.status = Some(status);
                }
            }
            Action::Collect { uid, .. } => {
                self.pods.retain(|_, p| p.labels().get(JOB_UID_LABEL) != Some(&uid));
                self.runs.remove(&uid);
            }
            // Simulated pools hold no plain pods and no Slurm jobs, and jobs here have no finalizers.
            Action::BindPod { .. }
            | Action::EvictPod { .. }
            | Action::PodWaits { .. }
            | Action::CancelSlurm { .. }
            | Action::Release { .. } => {}
        }
        Ok(())
    }

    /// Creates the run's pods, bound and running, and sets when its work is done.
    fn start(&mut self, job: &ComputeJob, p: &ApiPlacement, now: Time) -> Result<(), SimulatedError> {
        let uid = job.uid().unwrap_or_default();
        let run = job.status.as_ref().map_or(0, |s| s.preemptions).to_string();
        self.pods.retain(|_, pod| pod.labels().get(JOB_UID_LABEL) != Some(&uid));
        for (i, task) in p.tasks.iter().enumerate() {
            let mut pod = super::kubernetes::pod_for(job, i, task, &run)?;
            pod.metadata.uid = Some(format!("{uid}-{i}"));
            pod.metadata.creation_timestamp = timestamp(now);
            if let Some(spec) = pod.spec.as_mut() {
                spec.node_name = Some(task.node.clone());
            }
            pod.status = Some(PodStatus { phase: Some("Running".into()), ..Default::default() });
            self.pods.insert(key(&pod), pod);
        }
        let rate = job
            .spec
            .task_groups
            .iter()
            .flat_map(|g| &g.gpu_models)
            .find(|c| c.model.eq_ignore_ascii_case(&p.gpu_model))
            .and_then(|c| c.throughput)
            .filter(|t| *t > 0.0)
            .unwrap_or(1.0);
        let left = self.work_left(job);
        self.runs.insert(uid, Run { since: now, ends: now + left / rate, rate });
        Ok(())
    }

    /// Work the job still needs, seconds at throughput 1.
    fn work_left(&self, job: &ComputeJob) -> f64 {
        let uid = job.uid().unwrap_or_default();
        self.work.get(&uid).copied().unwrap_or_else(|| {
            let est = job.spec.runtime_estimate.as_deref().and_then(haiyun_api::quantity::seconds);
            est.map_or(index::job::DEFAULT_RUNTIME_S, |s| s as f64)
        })
    }

    /// Stops a run: its pods go, and the work up to its last checkpoint is kept.
    fn stop(&mut self, job: &ComputeJob, now: Time) {
        let uid = job.uid().unwrap_or_default();
        self.pods.retain(|_, p| p.labels().get(JOB_UID_LABEL) != Some(&uid));
        if let Some(r) = self.runs.remove(&uid) {
            let ran = (now - r.since).max(0.0);
            let saved = match job.spec.checkpoint_seconds {
                Some(c) if c > 0 => (ran / f64::from(c)).floor() * f64::from(c) * r.rate,
                _ => 0.0,
            };
            let left = (self.work_left(job) - saved).max(1.0);
            self.work.insert(uid, left);
        }
    }
}

#[cfg(test)]
mod tests;
