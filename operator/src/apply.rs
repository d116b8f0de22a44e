//! The applier: carries out the loop's actions against the API server, one job at a time, many jobs at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use haiyun_api::job::JobPhase;
use haiyun_api::{ComputeJob, ComputeJobStatus};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::Semaphore;

use crate::backend::kubernetes as k8s;
use crate::backend::slurm::submission::{SubmissionError, submission};
use crate::backend::slurm::{FINALIZER, SlurmError, SlurmPools};
use crate::index::{Outcome, StepKind};
use crate::metrics::Metrics;
use crate::plan::Action;

/// Per job uid: a lock that orders its actions, and how many are queued or running.
type JobLocks = Arc<Mutex<HashMap<String, (Arc<tokio::sync::Mutex<()>>, usize)>>>;

/// Carries out actions; cheap to clone.
#[derive(Clone)]
pub struct Applier {
    client: Client,
    recorder: Recorder,
    locks: JobLocks,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    limiter: Arc<crate::limit::Limiter>,
    outcomes: tokio::sync::mpsc::UnboundedSender<Outcome>,
    slurm: SlurmPools,
    /// Jobs whose Slurm submission was refused: when to try again, and how many refusals so far.
    refused: Arc<Mutex<HashMap<String, (std::time::Instant, u32)>>>,
    /// Slurm jobs this process submitted, by key, with when (a run is submitted once).
    submitted: Arc<Mutex<HashMap<String, (u32, std::time::Instant)>>>,
}

/// A submission not listed by Slurm this long after it was accepted is looked for again (and made again if lost).
const LOST_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// Why an action failed (the next cycle plans it again).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A Kubernetes call failed.
    #[error(transparent)]
    Kubernetes(#[from] k8s::BackendError),
    /// A Slurm call failed.
    #[error(transparent)]
    Slurm(#[from] SlurmError),
    /// The job cannot be submitted to Slurm as it is.
    #[error(transparent)]
    Submission(#[from] SubmissionError),
    /// The Slurm pool has not been reached yet.
    #[error("Slurm pool {0} has not been reached yet")]
    NoSlurm(String),
    /// Slurm refused this job's submission recently; it is tried again later.
    #[error("Slurm refused the submission {0} times; trying again in a while")]
    Backoff(u32),
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier").finish_non_exhaustive()
    }
}

/// A future that completes when a cycle's evictions are done.
pub type Gate = Shared<BoxFuture<'static, ()>>;

impl Applier {
    /// An applier running at most `concurrency` API operations at once.
    pub fn new(
        client: Client,
        recorder: Recorder,
        concurrency: usize,
        metrics: Arc<Metrics>,
        limiter: crate::limit::Limiter,
        outcomes: tokio::sync::mpsc::UnboundedSender<Outcome>,
    ) -> Self {
        Applier {
            outcomes,
            limiter: Arc::new(limiter),
            client,
            recorder,
            locks: Arc::default(),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            metrics,
            slurm: SlurmPools::default(),
            refused: Arc::default(),
            submitted: Arc::default(),
        }
    }

    /// Dispatches jobs placed in Slurm pools through these clients.
    pub fn with_slurm(mut self, slurm: SlurmPools) -> Self {
        self.slurm = slurm;
        self
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Forgets refusals of jobs that are gone.
    pub fn forget_gone(&self, live: &std::collections::HashSet<String>) {
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).retain(|uid, _| live.contains(uid));
    }

    /// Whether work for the job `uid` is queued or running.
    pub fn busy(&self, uid: &str) -> bool {
        self.locks.lock().map(|m| m.contains_key(uid)).unwrap_or(false)
    }

    /// Runs `action` after `gate`, after earlier actions on the same job; returns its handle.
    pub fn spawn(&self, action: Action, gate: Option<Gate>) -> tokio::task::JoinHandle<()> {
        let uid = action.uid();
        let lock = {
            let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            let e = m.entry(uid.clone()).or_insert_with(|| (Arc::default(), 0));
            e.1 += 1;
            e.0.clone()
        };
        let me = self.clone();
        tokio::spawn(async move {
            if let Some(g) = gate {
                g.await;
            }
            let guard = lock.lock().await;
            let permit = me.permits.acquire().await;
            me.run(action).await;
            drop(permit);
            drop(guard);
            let mut m = me.locks.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = m.get_mut(&uid) {
                e.1 -= 1;
                if e.1 == 0 {
                    m.remove(&uid);
                }
            }
        })
    }

    /// A gate over handles.
    pub fn gate(handles: Vec<tokio::task::JoinHandle<()>>) -> Gate {
        futures::future::join_all(handles).map(|_| ()).boxed().shared()
    }

    async fn run(&self, action: Action) {
        let key = action.key();
        self.limiter.take(requests(&action)).await;
        let result = match &action {
            Action::Admit { job, placement } => self.admit(job, placement).await,
            Action::Bind { job } => self.bind(job).await,
            Action::Evict { job } => self.evict(job).await,
            Action::Status { job, status } => self.status(job, status).await,
            Action::BindPod { pod, node, gpus, .. } => k8s::bind_plain(&self.client, pod, node, gpus)
                .await
                .map(|()| self.metrics.count_bound(1))
                .map_err(ApplyError::from),
            Action::EvictPod { pod } => k8s::delete_plain(&self.client, pod).await.map_err(ApplyError::from),
            Action::PodWaits { pod, message } => {
                k8s::mark_waiting(&self.client, pod, message).await.map_err(ApplyError::from)
            }
            Action::Collect { namespace, uid } => {
                k8s::delete_pods(&self.client, namespace, uid).await.map_err(ApplyError::from).map(|n| {
                    if n > 0 {
                        tracing::info!(job_uid = %uid, pods = n, "deleted pods of a job without a placement");
                    }
                })
            }
            Action::Release { job } => self.release(job).await,
            Action::CancelSlurm { pool, id, key } => match self.slurm.client(pool) {
                Some(c) => c.cancel(*id).await.map_err(ApplyError::from).map(|()| {
                    tracing::info!(%pool, slurm_job = id, %key, "cancelled a Slurm job whose run is over");
                }),
                None => Err(ApplyError::NoSlurm(pool.clone())),
            },
        };
        let kind = match &action {
            Action::Admit { .. } => StepKind::Admit,
            Action::Bind { .. } => StepKind::Bind,
            Action::Evict { .. } => StepKind::Evict,
            Action::BindPod { .. } => StepKind::BindPod,
            _ => StepKind::Other,
        };
        if let Err(e) = &result {
            self.metrics.count_error();
            tracing::warn!(job = %key, error = %e, "action failed; the next cycle retries it");
        }
        let _ = self.outcomes.send(Outcome { uid: action.uid(), kind, ok: result.is_ok() });
    }

    async fn admit(
        &self,
        job: &ComputeJob,
        placement: &haiyun_api::job::Placement,
    ) -> Result<(), ApplyError> {
        let now = crate::time::now();
        let status = k8s::admitted_status(job, placement, now);
        k8s::write_status(&self.client, job, &status).await?;
        let nodes: Vec<&str> = placement.tasks.iter().map(|t| t.node.as_str()).collect();
        let note = format!("placed in pool {} on {}", placement.pool, summarise(&nodes));
        self.event(job, EventType::Normal, "Admitted", &note).await;
        let mut admitted = job.clone();
        admitted.status = Some(status);
        self.dispatch(&admitted, true).await
    }

    /// Resumes an admitted job's work (after a restart, or when it went missing).
    async fn bind(&self, job: &ComputeJob) -> Result<(), ApplyError> {
        self.dispatch(job, false).await
    }

    /// Makes the admitted job's work exist where its status places it: pods bound to their nodes, or one Slurm
    /// job (submitted once per run, whatever the retries). `fresh`: this process has just admitted the run, so no
    /// earlier submission of it can exist.
    async fn dispatch(&self, job: &ComputeJob, fresh: bool) -> Result<(), ApplyError> {
        let placement = job.status.as_ref().and_then(|s| s.placement.as_ref());
        let Some(p) = placement.filter(|p| self.slurm.is_slurm(&p.pool)) else {
            let n = k8s::ensure_pods(&self.client, job).await?;
            self.metrics.count_bound(n);
            return Ok(());
        };
        let uid = job.uid().unwrap_or_default();
        let run = job.status.as_ref().map_or(0, |s| s.preemptions);
        let key = crate::backend::slurm::watch::key(&uid, run);
        let seen = self.slurm.lists(&p.pool, &key);
        let recent =
            self.submitted.lock().unwrap_or_else(|p| p.into_inner()).get(&key).map(|s| s.1.elapsed());
        if seen || recent.is_some_and(|age| age < LOST_AFTER) {
            return Ok(());
        }
        // Submitted long ago and still not listed: Slurm may have lost it (slurmctld killed right after the
        // submission). Look for the key, then submit again if it is not there.
        let fresh = fresh && recent.is_none();
        if let Some((at, n)) = self.refused.lock().unwrap_or_else(|p| p.into_inner()).get(&uid).copied() {
            if std::time::Instant::now() < at {
                return Err(ApplyError::Backoff(n));
            }
        }
        let first =
            p.tasks.first().and_then(|t| t.node.strip_prefix(&format!("{}/", p.pool))).unwrap_or_default();
        let (client, spec, gpu_type) =
            self.slurm.target(&p.pool, first).ok_or_else(|| ApplyError::NoSlurm(p.pool.clone()))?;
        let sub = submission(job, p, &spec, gpu_type)?;
        k8s::set_finalizer(&self.client, job, FINALIZER, true).await?;
        // Any job with this run's key was submitted after the run was admitted.
        let since = job
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_deref())
            .and_then(crate::index::queue::unix)
            .map(|t| t as i64 - 60);
        let id = match client.submit_once(&sub, 3, since, !fresh).await {
            Ok(id) => id,
            Err(e) => {
                // A refusal is not retried at the cycle's pace: 2 s, doubling to a minute.
                let n = {
                    let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
                    let n = refused.get(&uid).map_or(0, |r| r.1) + 1;
                    let wait =
                        std::time::Duration::from_secs(1 << n.min(6)).min(std::time::Duration::from_secs(60));
                    refused.insert(uid, (std::time::Instant::now() + wait, n));
                    n
                };
                if !e.is_transient() && n.is_power_of_two() {
                    self.event(job, EventType::Warning, "SlurmRefused", &e.to_string()).await;
                }
                return Err(e.into());
            }
        };
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).remove(&uid);
        let mut submitted = self.submitted.lock().unwrap_or_else(|p| p.into_inner());
        if submitted.len() >= 100_000 {
            submitted.clear(); // the poller's view and the lookup still guard against a second submission
        }
        submitted.insert(sub.key.clone(), (id, std::time::Instant::now()));
        tracing::info!(job = %crate::index::job::key(job), slurm_job = id, key = %sub.key, "submitted to Slurm");
        self.metrics.count_bound(p.tasks.len());
        Ok(())
    }

    /// Cancels every Slurm job of a ComputeJob being deleted, then removes the finalizer.
    async fn release(&self, job: &ComputeJob) -> Result<(), ApplyError> {
        let uid = job.uid().unwrap_or_default();
        for (pool, view) in self.slurm.views() {
            for (key, j) in &view.jobs {
                let mine = crate::backend::slurm::watch::parse_key(key).is_some_and(|(u, _)| u == uid);
                if mine && crate::index::slurm::active(j) {
                    let client = self.slurm.client(&pool).ok_or_else(|| ApplyError::NoSlurm(pool.clone()))?;
                    client.cancel(j.id).await?;
                    tracing::info!(job = %crate::index::job::key(job), slurm_job = j.id, "cancelled: the job is deleted");
                }
            }
        }
        k8s::set_finalizer(&self.client, job, FINALIZER, false).await?;
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).remove(&uid);
        Ok(())
    }

    async fn evict(&self, job: &ComputeJob) -> Result<(), ApplyError> {
        let mut st = job.status.clone().unwrap_or_default();
        st.phase = JobPhase::Preempted;
        st.placement = None;
        st.preemptions += 1;
        st.start_time = None;
        st.derive_conditions(job.metadata.generation.unwrap_or(0), &crate::time::rfc3339(crate::time::now()));
        k8s::write_status(&self.client, job, &st).await?;
        let old = job.status.as_ref().and_then(|s| s.placement.as_ref()).map(|p| p.pool.clone());
        if let Some(pool) = old.filter(|p| self.slurm.is_slurm(p)) {
            let client = self.slurm.client(&pool).ok_or_else(|| ApplyError::NoSlurm(pool.clone()))?;
            let run = job.status.as_ref().map_or(0, |s| s.preemptions);
            let key = crate::backend::slurm::watch::key(&job.uid().unwrap_or_default(), run);
            if let Some(j) = client.find(&key).await? {
                client.cancel(j.id).await?;
            }
            self.event(
                job,
                EventType::Warning,
                "Preempted",
                "preempted; its Slurm job is cancelled; it waits again",
            )
            .await;
            return Ok(());
        }
        let n = k8s::delete_pods(
            &self.client,
            &job.namespace().unwrap_or_default(),
            &job.uid().unwrap_or_default(),
        )
        .await?;
        self.event(
            job,
            EventType::Warning,
            "Preempted",
            &format!("preempted; {n} pods deleted; it waits again"),
        )
        .await;
        Ok(())
    }

    async fn status(&self, job: &ComputeJob, st: &ComputeJobStatus) -> Result<(), ApplyError> {
        k8s::write_status(&self.client, job, st).await?;
        let old = job.status.as_ref().map(|s| s.phase);
        if old != Some(st.phase) || old.is_none() {
            let (kind, reason, note) = match st.phase {
                JobPhase::Running => (EventType::Normal, "Running", "every pod is running".to_string()),
                JobPhase::Succeeded => {
                    (EventType::Normal, "Succeeded", format!("{} GPU-hours", st.gpu_hours))
                }
                JobPhase::Failed => (EventType::Warning, "Failed", first_reason(st, "a pod failed")),
                JobPhase::Queued => (EventType::Normal, "Queued", first_reason(st, "waiting in its queue")),
                JobPhase::Pending => (EventType::Warning, "NotQueued", first_reason(st, "not queued")),
                _ => return Ok(()),
            };
            self.event(job, kind, reason, &note).await;
        } else if st.phase == JobPhase::Pending
            && job.status.as_ref().map(|s| &s.pending_reasons) != Some(&st.pending_reasons)
        {
            self.event(job, EventType::Warning, "NotQueued", &first_reason(st, "not queued")).await;
        }
        Ok(())
    }

    async fn event(&self, job: &ComputeJob, type_: EventType, reason: &str, note: &str) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: reason.into(),
            secondary: None,
        };
        let reference: ObjectReference = job.object_ref(&());
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            tracing::debug!(error = %e, "failed to publish an event");
        }
    }
}

/// Writes an action makes (a creation and a binding per pod, a status write, a deletion).
fn requests(a: &Action) -> u32 {
    let tasks = |job: &ComputeJob| job.spec.task_groups.iter().map(|g| g.replicas).sum::<u32>();
    match a {
        Action::Admit { job, .. } => 1 + 2 * tasks(job),
        Action::Bind { job } => 2 * tasks(job),
        Action::Evict { job } => 1 + tasks(job),
        Action::Status { .. }
        | Action::BindPod { .. }
        | Action::EvictPod { .. }
        | Action::PodWaits { .. }
        | Action::Collect { .. }
        | Action::CancelSlurm { .. }
        | Action::Release { .. } => 1,
    }
}

fn first_reason(st: &ComputeJobStatus, default: &str) -> String {
    st.pending_reasons.first().map_or_else(|| default.to_string(), |r| r.message.clone())
}

fn summarise(nodes: &[&str]) -> String {
    let mut uniq: Vec<&str> = nodes.to_vec();
    uniq.dedup();
    if uniq.len() <= 4 {
        uniq.join(", ")
    } else {
        format!("{} and {} more nodes", uniq[..3].join(", "), uniq.len() - 3)
    }
}
