//! Status of Queues, ComputePools and QuotaRequests from the world: usage, capacity, and quota requests' states.

use std::collections::BTreeMap;
use std::sync::Arc;

use haiyun_api::pool::GpuCount;
use haiyun_api::queue::FlavorUsage;
use haiyun_api::quota::{Decision, RequestState};
use haiyun_api::{ComputePoolStatus, QueueStatus, QuotaRequest, QuotaRequestStatus, condition};
use haiyun_scheduler::model::{Health, Time};
use haiyun_scheduler::queue::Flavor;
use kube::ResourceExt;

use crate::index::{JobState, World, queue as iq};
use crate::time::rfc3339;

/// Jobs (ComputeJobs and plain pods) waiting and admitted, per queue name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobCounts {
    /// Waiting (or not queued yet).
    pub pending: BTreeMap<String, u32>,
    /// Admitted or running.
    pub admitted: BTreeMap<String, u32>,
}

/// Counts the world's jobs per queue.
pub fn job_counts(world: &World) -> JobCounts {
    let mut c = JobCounts::default();
    let jobs = world.jobs.iter().map(|t| (t.job.spec.queue.clone(), &t.state));
    let pods = world
        .pods
        .iter()
        .map(|t| (t.pod.labels().get(haiyun_api::QUEUE_LABEL).cloned().unwrap_or_default(), &t.state));
    for (queue, state) in jobs.chain(pods) {
        match state {
            JobState::Waiting(_) | JobState::Problem(_) | JobState::Backoff { .. } => {
                *c.pending.entry(queue).or_default() += 1
            }
            JobState::Placed(_) => *c.admitted.entry(queue).or_default() += 1,
            _ => {}
        }
    }
    c
}

/// Each valid or invalid queue's status, by name. Its GPU-hours are those of the runs the usage ledger closed
/// (`ledger`: GPU-seconds by queue) when there is one, else those of the finished jobs still in the cluster.
pub fn queues(
    world: &World,
    counts: &JobCounts,
    now: Time,
    generation: &BTreeMap<String, i64>,
    ledger: Option<&BTreeMap<String, f64>>,
) -> BTreeMap<String, QueueStatus> {
    let mut out = BTreeMap::new();
    let q = world.scheduler.quotas();
    let models = &world.scheduler.snapshot().cluster().models;
    let (pending, admitted) = (&counts.pending, &counts.admitted);
    let stamp = rfc3339(now);
    let mut gpu_hours: BTreeMap<&str, f64> = BTreeMap::new();
    match ledger {
        Some(seconds) => {
            for (queue, s) in seconds {
                gpu_hours.insert(queue.as_str(), (s / 3600.0 * 1000.0).round() / 1000.0);
            }
        }
        None => {
            for t in &world.jobs {
                if let Some(st) = t.job.status.as_ref().filter(|s| s.completion_time.is_some()) {
                    *gpu_hours.entry(t.job.spec.queue.as_str()).or_default() += st.gpu_hours;
                }
            }
        }
    }
    for (queue, hours) in &world.federation.site_gpu_hours {
        *gpu_hours.entry(queue.as_str()).or_default() += hours;
    }
    for (name, id) in &world.queues {
        let usage = q.usage(*id);
        let mut flavors: Vec<Flavor> =
            q.spec(*id).map(|s| s.nominal.flavors().map(|(f, _)| f).collect()).unwrap_or_default();
        for (f, _) in usage.flavors() {
            if !flavors.contains(&f) {
                flavors.push(f);
            }
        }
        flavors.sort();
        let usage = flavors
            .into_iter()
            .map(|f| {
                let used = usage.get(f);
                let quota = q.nominal(*id, f, now);
                FlavorUsage {
                    flavor: f.describe(models),
                    used: quantity(f, used),
                    quota: quantity(f, quota),
                    borrowed: quantity(f, used.saturating_sub(quota)),
                }
            })
            .collect();
        let generation_ = generation.get(name).copied().unwrap_or(0);
        out.insert(
            name.clone(),
            QueueStatus {
                pending: pending.get(name).copied().unwrap_or(0),
                admitted: admitted.get(name).copied().unwrap_or(0),
                usage,
                gpu_hours: gpu_hours.get(name.as_str()).copied().unwrap_or(0.0),
                site_gpu_hours: world.federation.site_gpu_hours.get(name).copied().unwrap_or(0.0),
                conditions: vec![condition::Condition::new("Ready", true, "Valid", "", generation_, &stamp)],
            },
        );
    }
    for (name, why) in &world.invalid_queues {
        let generation_ = generation.get(name).copied().unwrap_or(0);
        out.insert(
            name.clone(),
            QueueStatus {
                pending: pending.get(name).copied().unwrap_or(0),
                conditions: vec![condition::Condition::new(
                    "Ready",
                    false,
                    "InvalidSpec",
                    why.clone(),
                    generation_,
                    &stamp,
                )],
                ..Default::default()
            },
        );
    }
    out
}

/// A core amount as a Kubernetes quantity people can read: cores ("500m" below one, else "239.97"), memory ("16Gi",
/// "861.4Gi" or "512Mi"), GPUs ("8" or "0.5").
pub fn quantity(f: Flavor, v: u64) -> String {
    let trim = |s: String| s.trim_end_matches('0').trim_end_matches('.').to_string();
    match f {
        Flavor::Cpu | Flavor::Gpu(_) if v % 1000 == 0 => (v / 1000).to_string(),
        Flavor::Cpu if v < 1000 => format!("{v}m"),
        Flavor::Cpu => trim(format!("{:.2}", v as f64 / 1000.0)),
        Flavor::Gpu(_) => format!("{}", v as f64 / 1000.0),
        Flavor::Memory if v % 1024 == 0 => format!("{}Gi", v / 1024),
        Flavor::Memory if v < 1024 => format!("{v}Mi"),
        Flavor::Memory => trim(format!("{:.1}", v as f64 / 1024.0)) + "Gi",
    }
}

/// Each pool's status, by name.
pub fn pools(world: &World, now: Time) -> BTreeMap<String, ComputePoolStatus> {
    let snap = world.scheduler.snapshot();
    let c = snap.cluster();
    let stamp = rfc3339(now);
    let mut out: BTreeMap<String, ComputePoolStatus> = BTreeMap::new();
    for name in &world.federation.pool_names {
        let ready = condition::Condition::new("Ready", true, "Serving", "", 0, &stamp);
        out.insert(name.clone(), ComputePoolStatus { conditions: vec![ready], ..Default::default() });
    }
    let mut unknown: BTreeMap<String, u32> = BTreeMap::new();
    for (id, node) in c.nodes.iter().enumerate() {
        let Some(name) = world.federation.pool_names.get(node.pool as usize) else { continue };
        let Some(st) = out.get_mut(name) else { continue };
        st.nodes += 1;
        let alloc = snap.allocated(id as u32);
        for (j, g) in node.gpus.iter().enumerate() {
            let model = c.models.name(g.model).to_string();
            let used = f64::from(alloc.get(j).copied().unwrap_or(0)) / 1000.0;
            st.gpus += 1;
            st.allocated_gpus += u32::from(used > 0.0);
            let entry = match st.by_model.iter_mut().position(|m| m.model == model) {
                Some(i) => &mut st.by_model[i],
                None => {
                    st.by_model.push(GpuCount { model, ..Default::default() });
                    let last = st.by_model.len() - 1;
                    &mut st.by_model[last]
                }
            };
            entry.total += 1;
            entry.healthy += u32::from(g.health.is_placeable());
            if g.health == Health::Unknown {
                *unknown.entry(name.clone()).or_insert(0) += 1;
            }
            entry.allocated += used;
        }
    }
    for (name, st) in out.iter_mut() {
        if let Some(why) = no_placeable_gpus(&st.by_model, unknown.get(name).copied().unwrap_or(0)) {
            st.conditions =
                vec![condition::Condition::new("Ready", false, "NoPlaceableGPUs", why, 0, &stamp)];
        }
    }
    let fed = &world.federation;
    for (name, why) in &fed.unavailable {
        let reason = fed.reasons.get(name).copied().unwrap_or("BackendUnavailable");
        let c = condition::Condition::new("Ready", false, reason, why.clone(), 0, &stamp);
        // A pool whose cluster does not answer keeps showing the nodes it last had (its jobs run on there).
        let mut st = out.remove(name).unwrap_or_default();
        st.conditions = vec![c];
        st.unreachable_since = fed.unreachable_since.get(name).map(|t| rfc3339(*t));
        out.insert(name.clone(), st);
    }
    for (name, lease) in &fed.capacity_leases {
        if let Some(st) = out.get_mut(name) {
            st.capacity_lease = Some(lease.clone());
        }
    }
    out
}

/// Why a pool with GPUs can take no GPU work, when none of them is healthy: an edge pool whose link is down has every
/// GPU unknown, and says so rather than "ready".
fn no_placeable_gpus(by_model: &[GpuCount], unknown: u32) -> Option<String> {
    let total: u32 = by_model.iter().map(|m| m.total).sum();
    let healthy: u32 = by_model.iter().map(|m| m.healthy).sum();
    if total == 0 || healthy > 0 {
        return None;
    }
    let failed = total - unknown;
    let mut parts = Vec::new();
    if unknown > 0 {
        parts.push(format!(
            "{unknown} unknown (their nodes' agents are silent: a cut link or stopped agents)"
        ));
    }
    if failed > 0 {
        parts.push(format!("{failed} failed"));
    }
    Some(format!("none of its {total} GPUs can take work: {}", parts.join(", ")))
}

/// Each QuotaRequest's status, by `namespace/name`: decided ones follow their window; undecided ones are approved
/// automatically when the rest of the queue's cohort has the amount unlent now.
pub fn requests(
    world: &World,
    requests: &[Arc<QuotaRequest>],
    now: Time,
) -> BTreeMap<String, QuotaRequestStatus> {
    let mut out = BTreeMap::new();
    let stamp = rfc3339(now);
    let mut models = world.federation.cluster.models.clone();
    // What this pass approved automatically, by cohort and flavor: later requests see that much less unlent.
    let mut granted: BTreeMap<(String, Flavor), u64> = BTreeMap::new();
    for r in requests {
        let key = format!("{}/{}", r.namespace().unwrap_or_default(), r.name_any());
        let old = r.status.clone().unwrap_or_default();
        let generation_ = r.metadata.generation.unwrap_or(0);
        let window = (crate::time::parse(&r.spec.start), crate::time::parse(&r.spec.end));
        let (state, by, why) = match (r.spec.decision, old.state) {
            (Some(Decision::Denied), _) => {
                (RequestState::Denied, String::new(), "denied by an administrator".to_string())
            }
            (Some(Decision::Approved), _) => {
                let by = r.spec.decided_by.clone().filter(|u| !u.is_empty());
                (
                    in_window(window, now),
                    by.unwrap_or_else(|| Approver::Administrator.to_string()),
                    String::new(),
                )
            }
            (None, RequestState::Pending) => match auto_approval(world, r, &mut models, &mut granted, now) {
                Ok(()) => (in_window(window, now), Approver::Auto.to_string(), String::new()),
                Err(why) => (RequestState::Pending, String::new(), why.to_string()),
            },
            (None, _) => (in_window(window, now), old.approved_by.clone(), String::new()),
        };
        let mut conditions = old.conditions.clone();
        let approved = !matches!(state, RequestState::Pending | RequestState::Denied);
        let reason = match state {
            RequestState::Denied => "Denied",
            RequestState::Pending => "AwaitingApproval",
            _ if r.spec.decision.is_none() && by == Approver::Auto.to_string() => "AutoApproved",
            _ => "Approved",
        };
        condition::set(
            &mut conditions,
            condition::Condition::new("Approved", approved, reason, why, generation_, &stamp),
        );
        let active = state == RequestState::Active;
        let areason = match state {
            RequestState::Active => "InWindow",
            RequestState::Expired => "WindowEnded",
            _ => "NotActive",
        };
        condition::set(
            &mut conditions,
            condition::Condition::new("Active", active, areason, "", generation_, &stamp),
        );
        out.insert(key, QuotaRequestStatus { state, approved_by: by, conditions });
    }
    out
}

fn in_window(w: (Option<Time>, Option<Time>), now: Time) -> RequestState {
    match w {
        (_, Some(end)) if now >= end => RequestState::Expired,
        (Some(start), _) if now >= start => RequestState::Active,
        _ => RequestState::Approved,
    }
}

/// Who approved a quota request, as its status says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Approver {
    /// An administrator set `spec.decision: Approved`.
    Administrator,
    /// The operator: the cohort had the amount unlent.
    Auto,
}

impl std::fmt::Display for Approver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Approver::Administrator => "administrator",
            Approver::Auto => "auto",
        })
    }
}

/// Whether the rest of the cohort has `amount` unlent now (less what this pass already granted); otherwise why
/// not. The reason names no amounts, so the status does not change as usage moves.
fn auto_approval(
    world: &World,
    r: &QuotaRequest,
    models: &mut haiyun_scheduler::model::GpuModels,
    granted: &mut BTreeMap<(String, Flavor), u64>,
    now: Time,
) -> Result<(), iq::QueueError> {
    let no_queue = || iq::QueueError::NoQueue(r.spec.queue.clone());
    let q = *world.queues.get(&r.spec.queue).ok_or_else(no_queue)?;
    let quotas = world.scheduler.quotas();
    let spec = quotas.spec(q).ok_or_else(no_queue)?;
    let namespace = r.namespace().unwrap_or_default();
    let allowed = world.queue_namespaces.get(&r.spec.queue).map_or(&[][..], |a| a.as_slice());
    if !iq::admits(allowed, &namespace) {
        return Err(iq::QueueError::Namespace { namespace, queue: r.spec.queue.clone() });
    }
    let f = iq::flavor(models, &r.spec.flavor)?;
    let amount = iq::amount(f, "spec.amount", &r.spec.amount)?;
    let cohort = spec.cohort.clone().ok_or(iq::QueueError::NoCohort)?;
    let used = granted.entry((cohort, f)).or_default();
    let unlent = quotas.unlent(q, f, now).saturating_sub(*used);
    if unlent >= amount {
        *used += amount;
        Ok(())
    } else {
        Err(iq::QueueError::TooLittleUnlent)
    }
}
