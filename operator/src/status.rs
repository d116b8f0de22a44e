//! Status edits every shell makes alike: a job admitted or preempted, and the Queue, ComputePool and QuotaRequest
//! statuses a cycle writes where they changed (condition transition times kept).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use haiyun_api::job::{JobPhase, Placement as ApiPlacement};
use haiyun_api::{
    ComputeJob, ComputeJobStatus, ComputePool, ComputePoolStatus, Queue, QueueStatus, QuotaRequest,
    QuotaRequestStatus,
};
use haiyun_scheduler::model::Time;
use kube::ResourceExt;
use kube::core::object::HasStatus;

use crate::time::rfc3339;

/// The status of a job just admitted with `placement` at `now`.
pub fn admitted(job: &ComputeJob, placement: &ApiPlacement, now: Time) -> ComputeJobStatus {
    let mut st = job.status.clone().unwrap_or_default();
    st.phase = JobPhase::Admitted;
    st.placement = Some(placement.clone());
    st.pending_reasons.clear();
    st.hints.clear();
    st.estimated_start = Some(rfc3339(now));
    st.start_time = Some(rfc3339(now));
    st.completion_time = None;
    st.observed_generation = job.metadata.generation.unwrap_or(0);
    st.derive_conditions(st.observed_generation, &rfc3339(now));
    st
}

/// The status of a job preempted at `now`: it waits again, one run later, without a placement.
pub fn preempted(job: &ComputeJob, now: Time) -> ComputeJobStatus {
    let mut st = job.status.clone().unwrap_or_default();
    st.phase = JobPhase::Preempted;
    st.placement = None;
    st.preemptions += 1;
    st.start_time = None;
    st.derive_conditions(job.metadata.generation.unwrap_or(0), &rfc3339(now));
    st
}

/// The reason of a loss of hardware under a job: `GPUFailed` for a failed GPU, else `NodeLost`.
pub fn loss_reason(why: &str) -> &'static str {
    if why.starts_with("GPU ") { "GPUFailed" } else { "NodeLost" }
}

/// The status of a job whose run lost a node or a GPU at `now` (`why`): it waits again as a new run, like a
/// preempted one; such a loss does not count against `spec.maxRestarts`.
pub fn node_lost(job: &ComputeJob, why: &str, now: Time) -> ComputeJobStatus {
    let mut st = preempted(job, now);
    st.last_failure = Some(haiyun_api::job::Failure {
        reason: loss_reason(why).into(),
        message: why.to_string(),
        time: rfc3339(now),
        ..Default::default()
    });
    st
}

/// Restarts of a failed gang when the job does not set `spec.maxRestarts`.
pub const DEFAULT_MAX_RESTARTS: u32 = 3;
/// The first restart's backoff, seconds (it doubles with each restart).
const RESTART_BACKOFF_S: f64 = 10.0;
/// The longest backoff, seconds.
const MAX_BACKOFF_S: f64 = 300.0;

/// Whether a job whose run failed may run again (it has restarts left).
pub fn may_restart(job: &ComputeJob) -> bool {
    let restarts = job.status.as_ref().map_or(0, |s| s.restarts);
    restarts < job.spec.max_restarts.unwrap_or(DEFAULT_MAX_RESTARTS)
}

/// The status of a gang restarted after a failed run (its `last_failure` says why): one more restart, no placement,
/// and a backoff of 10 s doubling per restart up to 5 minutes. Its pods are collected; the next run gets new ones.
pub fn restarting(mut st: ComputeJobStatus, now: Time) -> ComputeJobStatus {
    st.restarts += 1;
    let exp = st.restarts.saturating_sub(1).min(10) as i32;
    let until = now + (RESTART_BACKOFF_S * 2f64.powi(exp)).min(MAX_BACKOFF_S);
    st.phase = JobPhase::Queued;
    st.placement = None;
    st.start_time = None;
    st.restart_after = Some(rfc3339(until));
    st.estimated_start = st.restart_after.clone();
    let why = st.last_failure.as_ref().map_or_else(String::new, |f| f.message.clone());
    st.pending_reasons = vec![haiyun_api::PendingReason {
        phase: "restart".into(),
        message: format!("restart {} after a failure ({why}); not before {}", st.restarts, rfc3339(until)),
        ..Default::default()
    }];
    st
}

/// The status of a job whose run could not even start because the API server refused what it needs (its pods or
/// its Service) with `why`: it restarts like a failed run while it has restarts left, then fails; it holds nothing.
pub fn refused(job: &ComputeJob, why: &str, now: Time) -> ComputeJobStatus {
    let mut st = job.status.clone().unwrap_or_default();
    st.last_failure = Some(haiyun_api::job::Failure {
        reason: "Refused".into(),
        message: format!("the API server refused its pods: {why}"),
        time: rfc3339(now),
        ..Default::default()
    });
    if may_restart(job) {
        return restarting(st, now);
    }
    st.phase = JobPhase::Failed;
    st.placement = None;
    st.completion_time = Some(rfc3339(now));
    st.pending_reasons = vec![haiyun_api::PendingReason {
        phase: "placement-unresolvable".into(),
        message: st.last_failure.as_ref().map(|f| f.message.clone()).unwrap_or_default(),
        ..Default::default()
    }];
    st.derive_conditions(job.metadata.generation.unwrap_or(0), &rfc3339(now));
    st
}

/// A status to write on one of Haiyun's cluster objects.
#[derive(Debug, Clone, PartialEq)]
pub enum StatusWrite {
    /// A Queue's.
    Queue {
        /// The Queue.
        name: String,
        /// Its new status.
        status: QueueStatus,
    },
    /// A ComputePool's.
    Pool {
        /// The pool.
        name: String,
        /// Its new status.
        status: ComputePoolStatus,
    },
    /// A QuotaRequest's.
    Request {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Its new status.
        status: QuotaRequestStatus,
    },
}

impl StatusWrite {
    /// `Kind/namespace/name` of the object, unique among status writes.
    pub fn key(&self) -> String {
        match self {
            StatusWrite::Queue { name, .. } => format!("Queue/{name}"),
            StatusWrite::Pool { name, .. } => format!("ComputePool/{name}"),
            StatusWrite::Request { namespace, name, .. } => format!("QuotaRequest/{namespace}/{name}"),
        }
    }
}

/// Keeps a condition's transition time when its status did not change.
fn keep_transitions(old: &[haiyun_api::Condition], new: &mut [haiyun_api::Condition]) {
    for c in new.iter_mut() {
        if let Some(o) = old.iter().find(|o| o.type_ == c.type_ && o.status == c.status) {
            c.last_transition_time.clone_from(&o.last_transition_time);
            if o.reason == c.reason && o.message == c.message {
                c.observed_generation = c.observed_generation.max(o.observed_generation);
            }
        }
    }
}

/// Statuses that carry conditions.
trait Conditions {
    fn conditions(&self) -> &[haiyun_api::Condition];
    fn conditions_mut(&mut self) -> &mut [haiyun_api::Condition];
}

macro_rules! conditions {
    ($($t:ty),*) => {$(
        impl Conditions for $t {
            fn conditions(&self) -> &[haiyun_api::Condition] {
                &self.conditions
            }
            fn conditions_mut(&mut self) -> &mut [haiyun_api::Condition] {
                &mut self.conditions
            }
        }
    )*};
}
conditions!(QueueStatus, ComputePoolStatus, QuotaRequestStatus);

/// The new statuses (keyed `name`, or `namespace/name`) of `objects` that differ from their current ones, with
/// condition transition times kept, each as `write` makes it.
fn changed<K>(
    objects: &[Arc<K>],
    statuses: BTreeMap<String, K::Status>,
    write: impl Fn(&K, K::Status) -> StatusWrite,
) -> Vec<StatusWrite>
where
    K: HasStatus + kube::Resource,
    K::Status: Conditions + Clone + Default + PartialEq,
{
    let key = |o: &K| match o.namespace() {
        Some(ns) => format!("{ns}/{}", o.name_any()),
        None => o.name_any(),
    };
    let by_key: HashMap<String, &Arc<K>> = objects.iter().map(|o| (key(o), o)).collect();
    let mut out = Vec::new();
    for (k, mut st) in statuses {
        let Some(obj) = by_key.get(&k) else { continue };
        let old = obj.status().cloned().unwrap_or_default();
        keep_transitions(old.conditions(), st.conditions_mut());
        if old != st {
            out.push(write(obj, st));
        }
    }
    out
}

/// What a cycle writes of queues, pools and quota requests.
pub fn writes(
    queues: (&[Arc<Queue>], BTreeMap<String, QueueStatus>),
    pools: (&[Arc<ComputePool>], BTreeMap<String, ComputePoolStatus>),
    requests: (&[Arc<QuotaRequest>], BTreeMap<String, QuotaRequestStatus>),
) -> Vec<StatusWrite> {
    let mut out = changed(queues.0, queues.1, |q, status| StatusWrite::Queue { name: q.name_any(), status });
    out.extend(changed(pools.0, pools.1, |p, status| StatusWrite::Pool { name: p.name_any(), status }));
    out.extend(changed(requests.0, requests.1, |r, status| StatusWrite::Request {
        namespace: r.namespace().unwrap_or_default(),
        name: r.name_any(),
        status,
    }));
    out
}
