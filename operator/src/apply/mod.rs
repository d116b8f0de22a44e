//! The applier: carries out a cycle's actions against the API server and the pools' backends, one object at a time,
//! many objects at once, under one client-side rate limit; it is the only writer of statuses.

pub mod write;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use haiyun_api::job::JobPhase;
use haiyun_api::{ComputeJob, ComputeJobStatus};
use k8s_openapi::api::batch::v1::Job as BatchJob;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::Semaphore;

use crate::backend::kubernetes::{batch, pods};
use crate::backend::{BackendError, BackendKind, Backends};
use crate::decision::{Decision, DecisionLog};
use crate::index::{Outcome, StepKind};
use crate::metrics::Metrics;
use crate::plan::Action;

/// Per object: a lock that orders its actions, and how many are queued or running.
type Locks = Arc<Mutex<HashMap<String, (Arc<tokio::sync::Mutex<()>>, usize)>>>;

/// Carries out actions; cheap to clone.
#[derive(Clone)]
pub struct Applier {
    client: Client,
    recorder: Recorder,
    locks: Locks,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    outcomes: tokio::sync::mpsc::UnboundedSender<Outcome>,
    log: DecisionLog,
}

/// Why an action failed (the next cycle plans it again).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A write to Haiyun's own objects failed.
    #[error(transparent)]
    Write(#[from] write::WriteError),
    /// A plain pod's step failed.
    #[error(transparent)]
    Pod(#[from] pods::PodError),
    /// The pool's backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier").finish_non_exhaustive()
    }
}

/// A future that completes when a cycle's evictions are done.
type Gate = Shared<BoxFuture<'static, ()>>;

/// What the applier needs besides the client.
pub struct Parts {
    /// Publishes events on jobs.
    pub recorder: Recorder,
    /// API operations in flight at once.
    pub concurrency: usize,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Where outcomes go (the loop's overlay).
    pub outcomes: tokio::sync::mpsc::UnboundedSender<Outcome>,
    /// Where `place` lines go once an admission or binding succeeded.
    pub log: DecisionLog,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts").field("concurrency", &self.concurrency).finish_non_exhaustive()
    }
}

impl Applier {
    /// An applier writing through `client`.
    pub fn new(client: Client, parts: Parts) -> Self {
        Applier {
            client,
            recorder: parts.recorder,
            locks: Arc::default(),
            permits: Arc::new(Semaphore::new(parts.concurrency.max(1))),
            metrics: parts.metrics,
            outcomes: parts.outcomes,
            log: parts.log,
        }
    }

    /// Objects whose actions are queued or running.
    pub fn busy(&self) -> HashSet<String> {
        self.locks.lock().map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    /// Whether no action is in flight or waiting.
    pub fn idle(&self) -> bool {
        self.locks.lock().map(|m| m.is_empty()).unwrap_or(false)
    }

    /// Carries out a cycle's actions through `backends`: evictions first, and the admissions and bindings of the
    /// same cycle only once they are done (their room must be free).
    pub fn apply(&self, actions: Vec<Action>, backends: &Arc<Backends>) {
        let (evictions, rest): (Vec<Action>, Vec<Action>) =
            actions.into_iter().partition(|a| matches!(a, Action::Evict { .. } | Action::EvictPod { .. }));
        let handles: Vec<_> = evictions.into_iter().map(|a| self.spawn(a, None, backends.clone())).collect();
        let gate =
            (!handles.is_empty()).then(|| futures::future::join_all(handles).map(|_| ()).boxed().shared());
        for a in rest {
            let g =
                matches!(a, Action::Admit { .. } | Action::BindPod { .. }).then(|| gate.clone()).flatten();
            self.spawn(a, g, backends.clone());
        }
    }

    /// Runs `action` after `gate`, after earlier actions on the same object; returns its handle.
    fn spawn(
        &self,
        action: Action,
        gate: Option<Gate>,
        backends: Arc<Backends>,
    ) -> tokio::task::JoinHandle<()> {
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
            me.run(action, &backends).await;
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

    async fn run(&self, action: Action, backends: &Backends) {
        let key = action.key();
        let result = self.step(&action, backends).await;
        let kind = match &action {
            Action::Admit { dispatch: true, .. } => StepKind::Admit,
            Action::Admit { dispatch: false, .. } => StepKind::Reserve,
            Action::Bind { .. } => StepKind::Bind,
            Action::Evict { .. } => StepKind::Evict,
            Action::BindPod { .. } => StepKind::BindPod,
            _ => StepKind::Other,
        };
        match &result {
            Ok(()) => {
                if let Action::BindPod { .. } = &action {
                    if let Some(line) = Decision::placed(&action, crate::time::rfc3339(crate::time::now())) {
                        self.log.write(&line);
                    }
                }
            }
            Err(e) => {
                self.metrics.count_error();
                tracing::warn!(object = %key, error = %e, "action failed; the next cycle retries it");
            }
        }
        let _ = self.outcomes.send(Outcome { uid: action.uid(), kind, ok: result.is_ok() });
    }

    async fn step(&self, action: &Action, backends: &Backends) -> Result<(), ApplyError> {
        let backend = |kind: BackendKind| backends.get(kind).ok_or(BackendError::NotServed(kind));
        match action {
            Action::Admit { job, placement, backend: kind, dispatch } => {
                let at = crate::time::now();
                let status = crate::status::admitted(job, placement, at);
                // The line goes first, at the run's start time: once the status is written the placement stands
                // (pods made later, after a restart, resume it), and a process killed while that write is in
                // flight never learns that the API server took it. So no run is missing from the trail; a write
                // that fails leaves a line the next placement of the job follows (a run is its last place line).
                if let Some(line) = Decision::placed(action, crate::time::rfc3339(at)) {
                    self.log.write(&line);
                }
                write::job_status(&self.client, job, &status).await?;
                let nodes: Vec<&str> = placement.tasks.iter().map(|t| t.node.as_str()).collect();
                let note = format!("placed in pool {} on {}", placement.pool, summarise(&nodes));
                let event = self.event(job, EventType::Normal, "Admitted", &note);
                if !dispatch {
                    event.await;
                    return Ok(()); // a later cycle binds it, once its nodes are free
                }
                let backend = backend(*kind)?;
                let mut admitted = job.as_ref().clone();
                admitted.status = Some(status);
                // The event goes out while the pods are made: neither waits for the other.
                let ((), made) = tokio::join!(event, self.dispatch(&admitted, backend.as_ref(), true));
                made
            }
            Action::Bind { job, backend: kind } => self.dispatch(job, backend(*kind)?.as_ref(), false).await,
            Action::Evict { job, backend: kind, lost } => {
                let now = crate::time::now();
                let st = match lost {
                    Some(why) => crate::status::node_lost(job, why, now),
                    None => crate::status::preempted(job, now),
                };
                write::job_status(&self.client, job, &st).await?;
                let done = backend(*kind)?.evict(job).await?;
                let (reason, note) = match lost {
                    Some(why) => {
                        (crate::status::loss_reason(why), format!("{why}; {done}; it is placed again"))
                    }
                    None => ("Preempted", format!("preempted; {done}; it waits again")),
                };
                self.event(job, EventType::Warning, reason, &note).await;
                Ok(())
            }
            Action::Status { job, status } => self.status(job, status).await,
            Action::BindPod { pod, node, gpus, .. } => {
                pods::bind_plain(&self.client, pod, node, gpus).await?;
                self.metrics.count_bound(1);
                Ok(())
            }
            Action::EvictPod { pod } => Ok(pods::delete_plain(&self.client, pod).await?),
            Action::HoldPod { .. } => Ok(()), // kept by the cycle, never handed out
            Action::PodWaits { pod, message } => Ok(pods::mark_waiting(&self.client, pod, message).await?),
            Action::Collect { backend: kind, orphan } => {
                backend(*kind)?.collect(orphan).await?;
                Ok(())
            }
            Action::Release { job, backend: kind } => {
                let b = backend(*kind)?;
                b.release(job).await?;
                if let Some(f) = b.finalizer() {
                    write::finalizer(&self.client, job, f, false).await?;
                }
                Ok(())
            }
            Action::WriteStatus(w) => Ok(write::object_status(&self.client, w).await?),
            Action::Mirror { job } => self.mirror(job).await,
        }
    }

    /// Makes the admitted job's work exist through its backend (with the backend's finalizer on the job first).
    async fn dispatch(
        &self,
        job: &ComputeJob,
        backend: &dyn crate::backend::PoolBackend,
        fresh: bool,
    ) -> Result<(), ApplyError> {
        if let Some(f) = backend.finalizer() {
            write::finalizer(&self.client, job, f, true).await?;
        }
        match backend.dispatch(job, fresh).await {
            Ok(n) => {
                self.metrics.count_bound(n);
                Ok(())
            }
            Err(e) => {
                if let Some((reason, note)) = e.event() {
                    self.event(job, EventType::Warning, reason, &note).await;
                }
                if let Some(why) = e.refusal() {
                    // Retrying cannot help: the run fails, its capacity is released, and the job restarts or fails.
                    let st = crate::status::refused(job, &why, crate::time::now());
                    write::job_status(&self.client, job, &st).await?;
                    let reason = if st.phase == JobPhase::Failed { "Failed" } else { "Restarting" };
                    let note = st.last_failure.as_ref().map(|f| f.message.clone()).unwrap_or_default();
                    self.event(job, EventType::Warning, reason, &note).await;
                }
                Err(e.into())
            }
        }
    }

    async fn status(&self, job: &ComputeJob, st: &ComputeJobStatus) -> Result<(), ApplyError> {
        write::job_status(&self.client, job, st).await?;
        let old = job.status.as_ref().map(|s| s.phase);
        if st.restarts > job.status.as_ref().map_or(0, |s| s.restarts) {
            self.event(job, EventType::Warning, "Restarting", &first_reason(st, "a task failed")).await;
            return Ok(());
        }
        if old != Some(st.phase) || old.is_none() {
            let (kind, reason, note) = match st.phase {
                JobPhase::Running => (EventType::Normal, "Running", "every pod is running".to_string()),
                JobPhase::Succeeded => {
                    (EventType::Normal, "Succeeded", format!("{} GPU-hours", st.gpu_hours))
                }
                JobPhase::Failed => {
                    let why = st.last_failure.as_ref().map(|f| f.message.clone());
                    (EventType::Warning, "Failed", why.unwrap_or_else(|| first_reason(st, "a pod failed")))
                }
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

    /// Makes the ComputeJob that queues a batch/v1 Job, or says on the Job why it cannot run as one gang.
    async fn mirror(&self, job: &BatchJob) -> Result<(), ApplyError> {
        let reference = job.object_ref(&());
        let (type_, reason, note) = match batch::mirror(job) {
            Ok(cj) => match write::create_job(&self.client, &cj).await {
                Ok(true) => (
                    EventType::Normal,
                    "Queued",
                    format!("queued in {} as ComputeJob {}", cj.spec.queue, cj.name_any()),
                ),
                Ok(false) => return Ok(()),
                // E.g. the chart's dataset access policy: the Job says why it never runs (each cycle tries again,
                // so that a fixed Dataset or Job takes effect).
                Err(e) => match e.refusal() {
                    Some(why) => (EventType::Warning, "Refused", why.to_string()),
                    None => return Err(e.into()),
                },
            },
            Err(why) => (EventType::Warning, "NotAGang", why),
        };
        let ev =
            Event { type_, reason: reason.into(), note: Some(note), action: reason.into(), secondary: None };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            tracing::debug!(error = %e, "failed to publish an event");
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
