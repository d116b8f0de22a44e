//! Queues and approved QuotaRequests as the core's quota book.

use std::collections::BTreeMap;

use haiyun_api::queue::{Ordering, WithinQueue};
use haiyun_api::quota::{Decision, RequestState};
use haiyun_api::{Queue, QuotaRequest, quantity};
use haiyun_scheduler::model::{GpuModels, QueueId};
use haiyun_scheduler::queue::{self as core, Flavor, Grant, QueueSpec, Quotas, Resources};
use kube::ResourceExt;

use super::cluster::model_id;

/// Why a flavor or amount could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// A flavor name the core does not know.
    #[error("failed to read flavor {0:?}: use cpu, memory or nvidia.com/gpu:<model>")]
    Flavor(String),
    /// Too many GPU models.
    #[error("failed to read flavor {0:?}: more than 64 GPU models are in use")]
    TooManyModels(String),
    /// A malformed quantity.
    #[error("failed to read {field}: {source}")]
    Quantity {
        /// The field.
        field: String,
        /// The cause.
        source: quantity::QuantityError,
    },
    /// A per-user limit of nothing.
    #[error("{0} must be more than 0 (remove the entry to leave the flavor unlimited)")]
    ZeroLimit(String),
    /// A quota request names a queue that does not exist.
    #[error("queue {0:?} does not exist")]
    NoQueue(String),
    /// A quota request's namespace may not use its queue.
    #[error("namespace {namespace:?} may not use queue {queue:?} (see its spec.namespaces)")]
    Namespace {
        /// The request's namespace.
        namespace: String,
        /// The queue.
        queue: String,
    },
    /// A quota request's window is malformed.
    #[error("{0} is not an RFC 3339 time")]
    Time(&'static str),
    /// A request undecided by an administrator whose queue is in no cohort.
    #[error("the queue is in no cohort; an administrator must approve (spec.decision: Approved)")]
    NoCohort,
    /// A request undecided by an administrator that its cohort cannot lend now.
    #[error("the cohort has too little unlent; an administrator must approve (spec.decision: Approved)")]
    TooLittleUnlent,
}

/// A flavor name (`cpu`, `memory`, `nvidia.com/gpu:<model>`) as the core's flavor.
pub fn flavor(models: &mut GpuModels, name: &str) -> Result<Flavor, QueueError> {
    match name {
        "cpu" => Ok(Flavor::Cpu),
        "memory" => Ok(Flavor::Memory),
        _ => {
            let model = name.strip_prefix("nvidia.com/gpu:").filter(|m| !m.is_empty());
            let model = model.ok_or_else(|| QueueError::Flavor(name.into()))?;
            model_id(models, model).map(Flavor::Gpu).ok_or_else(|| QueueError::TooManyModels(name.into()))
        }
    }
}

/// An amount in the flavor's core units: milli-cores, MiB, or milli-GPUs.
pub fn amount(f: Flavor, field: &str, q: &str) -> Result<u64, QueueError> {
    let err = |source| QueueError::Quantity { field: field.into(), source };
    match f {
        Flavor::Cpu | Flavor::Gpu(_) => quantity::milli(q).map_err(err),
        Flavor::Memory => quantity::mib(q).map_err(err),
    }
}

/// A Queue as the core's queue spec.
pub fn queue_spec(q: &Queue, models: &mut GpuModels) -> Result<QueueSpec, QueueError> {
    let mut spec = QueueSpec::new(&q.name_any(), Resources::default());
    spec.cohort = q.spec.cohort.clone();
    spec.weight = q.spec.weight;
    spec.ordering = match q.spec.ordering {
        Ordering::Fifo => core::Ordering::Fifo,
        Ordering::ShortestFirst => core::Ordering::ShortestFirst,
    };
    spec.within_queue = match q.spec.within_queue {
        WithinQueue::Never => core::WithinQueue::Never,
        WithinQueue::LowerPriority => core::WithinQueue::LowerPriority,
        WithinQueue::LowerOrLaterInOrder => core::WithinQueue::LowerOrLaterInOrder,
    };
    for (i, l) in q.spec.user_limit.iter().enumerate() {
        let f = flavor(models, &l.flavor)?;
        let field = format!("spec.userLimit[{i}].max");
        let v = amount(f, &field, &l.max)?;
        if v == 0 {
            return Err(QueueError::ZeroLimit(field));
        }
        spec.user_limit.get_or_insert_with(Resources::default).set(f, v);
    }
    for (i, r) in q.spec.resources.iter().enumerate() {
        let f = flavor(models, &r.flavor)?;
        spec.nominal.set(f, amount(f, &format!("spec.resources[{i}].nominal"), &r.nominal)?);
        if let Some(b) = &r.borrowing_limit {
            let v = amount(f, &format!("spec.resources[{i}].borrowingLimit"), b)?;
            spec.borrowing_limit.get_or_insert_with(|| unlimited(&q.spec.resources, models)).set(f, v);
        }
        if let Some(l) = &r.lending_limit {
            let v = amount(f, &format!("spec.resources[{i}].lendingLimit"), l)?;
            spec.lending_limit.get_or_insert_with(|| unlimited(&q.spec.resources, models)).set(f, v);
        }
    }
    Ok(spec)
}

/// A limit of "no limit" for every flavor the queue names, so that setting one flavor limits only that one.
fn unlimited(resources: &[haiyun_api::queue::FlavorQuota], models: &mut GpuModels) -> Resources {
    let mut r = Resources::default();
    for q in resources {
        if let Ok(f) = flavor(models, &q.flavor) {
            r.set(f, u64::MAX / 4);
        }
    }
    r
}

/// The quota book, and the queues that could not be read (by name, with why).
#[derive(Debug, Clone, Default)]
pub struct Book {
    /// Quotas of every valid queue.
    pub quotas: Quotas,
    /// Queue id by name.
    pub ids: BTreeMap<String, QueueId>,
    /// Queues refused, with the reason.
    pub invalid: BTreeMap<String, String>,
}

/// Builds the quota book from Queues (sorted by name) and the grants of approved QuotaRequests.
pub fn book(queues: &[&Queue], requests: &[&QuotaRequest], models: &mut GpuModels) -> Book {
    let mut b = Book::default();
    let mut sorted: Vec<&&Queue> = queues.iter().collect();
    sorted.sort_by_key(|q| q.name_any());
    for q in sorted {
        let name = q.name_any();
        match queue_spec(q, models)
            .map_err(|e| e.to_string())
            .and_then(|s| b.quotas.add(s).map_err(|e| e.to_string()))
        {
            Ok(id) => {
                b.ids.insert(name, id);
            }
            Err(e) => {
                b.invalid.insert(name, e);
            }
        }
    }
    let namespaces: BTreeMap<String, Vec<String>> =
        queues.iter().map(|q| (q.name_any(), q.spec.namespaces.clone())).collect();
    for r in requests {
        if let Ok(Some(g)) = grant(r, &b.ids, &namespaces, models) {
            b.quotas.grant(g);
        }
    }
    b
}

/// Whether a request's quota counts: approved by an administrator, or approved automatically by the operator.
pub fn approved(r: &QuotaRequest) -> bool {
    match r.spec.decision {
        Some(Decision::Approved) => true,
        Some(Decision::Denied) => false,
        None => r.status.as_ref().is_some_and(|s| {
            matches!(s.state, RequestState::Approved | RequestState::Active | RequestState::Expired)
        }),
    }
}

/// Whether a queue that lets `allowed` namespaces submit (empty: all) admits `namespace`: the one rule for jobs,
/// pods and quota requests.
pub fn admits(allowed: &[String], namespace: &str) -> bool {
    allowed.is_empty() || allowed.iter().any(|a| a == namespace)
}

/// The grant an approved request makes (`None` when not approved).
pub fn grant(
    r: &QuotaRequest,
    ids: &BTreeMap<String, QueueId>,
    namespaces: &BTreeMap<String, Vec<String>>,
    models: &mut GpuModels,
) -> Result<Option<Grant>, QueueError> {
    if !approved(r) {
        return Ok(None);
    }
    let queue = *ids.get(&r.spec.queue).ok_or_else(|| QueueError::NoQueue(r.spec.queue.clone()))?;
    let namespace = r.namespace().unwrap_or_default();
    if !admits(namespaces.get(&r.spec.queue).map_or(&[][..], |a| a.as_slice()), &namespace) {
        return Err(QueueError::Namespace { namespace, queue: r.spec.queue.clone() });
    }
    let f = flavor(models, &r.spec.flavor)?;
    let amount = amount(f, "spec.amount", &r.spec.amount)?;
    let start = crate::time::parse(&r.spec.start).ok_or(QueueError::Time("spec.start"))?;
    let end = crate::time::parse(&r.spec.end).ok_or(QueueError::Time("spec.end"))?;
    Ok(Some(Grant { queue, flavor: f, amount, start, end }))
}
