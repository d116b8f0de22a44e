//! What this operator decided but cannot see in its watch caches yet, and what the applier reported back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use haiyun_api::job::{JobPhase, Placement as ApiPlacement};
use haiyun_api::{ComputeJob, JOB_UID_LABEL};
use haiyun_scheduler::model::Time;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::job::is_terminal;

/// A placement this operator decided but may not yet see in its watch cache.
#[derive(Debug, Clone, PartialEq)]
pub struct Assumed {
    /// Where.
    pub placement: ApiPlacement,
    /// When it was decided (unix seconds).
    pub started: Time,
}

/// What this operator decided but may not yet see in its watch cache.
#[derive(Debug, Clone, Default)]
pub struct Overlay {
    /// Placements decided, by job uid.
    pub assumed: HashMap<String, Assumed>,
    /// Jobs being evicted, by uid, with the run evicted: that run's placement is not theirs any more, even where
    /// their status still shows it.
    pub evicting: HashMap<String, u32>,
    /// Plain pods being bound, by pod uid: node, GPU indices, when.
    pub binding: HashMap<String, (String, Vec<u32>, Time)>,
    /// Those of them whose place is only kept, not bound yet (the pods they replace are still leaving).
    pub held: HashSet<String>,
    /// Jobs whose pods this operator made and bound, by uid, until the cache shows them all.
    pub bound: HashSet<String>,
}

impl Overlay {
    /// Drops what the watch cache now shows: admissions recorded in status, evictions no longer admitted.
    pub fn settle(&mut self, jobs: &[Arc<ComputeJob>], pods: &[Arc<Pod>]) {
        if !self.binding.is_empty() {
            let unbound: HashSet<&str> = pods
                .iter()
                .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_none()))
                .filter_map(|p| p.metadata.uid.as_deref())
                .collect();
            self.binding.retain(|uid, _| unbound.contains(uid.as_str()));
        }
        let binding = &self.binding;
        self.held.retain(|uid| binding.contains_key(uid));
        // A quiet cluster has nothing assumed, evicting or bound: no need to index every job and pod.
        if self.assumed.is_empty() && self.evicting.is_empty() && self.bound.is_empty() {
            return;
        }
        let by_uid: HashMap<&str, &ComputeJob> =
            jobs.iter().map(|j| (j.metadata.uid.as_deref().unwrap_or_default(), j.as_ref())).collect();
        let mut with_pods: HashSet<(&str, &str)> = HashSet::new();
        let mut bound_pods: HashMap<&str, usize> = HashMap::new();
        for p in pods {
            if let Some(uid) = p.labels().get(JOB_UID_LABEL) {
                let run = p.labels().get(haiyun_api::RUN_LABEL).map_or("", String::as_str);
                with_pods.insert((uid.as_str(), run));
                if p.spec.as_ref().is_some_and(|s| s.node_name.is_some())
                    && p.metadata.deletion_timestamp.is_none()
                {
                    *bound_pods.entry(uid.as_str()).or_default() += 1;
                }
            }
        }
        self.assumed.retain(|uid, a| {
            by_uid.get(uid.as_str()).is_some_and(|j| {
                let st = j.status.as_ref();
                !st.is_some_and(|s| s.placement.as_ref() == Some(&a.placement) || is_terminal(j))
            })
        });
        // An eviction is over once the job's status has moved past the evicted run (or is no longer admitted) and
        // that run's pods are gone.
        self.evicting.retain(|uid, run| {
            let still = by_uid.get(uid.as_str()).is_some_and(|j| {
                j.run() == *run
                    && j.status
                        .as_ref()
                        .is_some_and(|s| matches!(s.phase, JobPhase::Admitted | JobPhase::Running))
            });
            still || with_pods.contains(&(uid.as_str(), run.to_string().as_str()))
        });
        // Pods we bound are ours to trust until the cache shows all of them.
        self.bound.retain(|uid| {
            by_uid.get(uid.as_str()).is_some_and(|j| {
                let tasks = j.status.as_ref().and_then(|s| s.placement.as_ref()).map_or(0, |p| p.tasks.len());
                !is_terminal(j) && bound_pods.get(uid.as_str()).copied().unwrap_or(0) < tasks
            })
        });
    }

    /// Takes in what the applier reports: a failed step is forgotten so the next cycle plans it again.
    pub fn record(&mut self, o: &Outcome) {
        match (o.kind, o.ok) {
            (StepKind::Admit | StepKind::Bind, true) => {
                self.bound.insert(o.uid.clone());
            }
            (StepKind::Admit | StepKind::Reserve, false) => {
                self.assumed.remove(&o.uid);
            }
            (StepKind::Evict, false) => {
                self.evicting.remove(&o.uid);
            }
            (StepKind::BindPod, false) => {
                self.binding.remove(&o.uid);
            }
            _ => {}
        }
    }
}

/// Which kind of step an outcome reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Admission (status, pods, bindings).
    Admit,
    /// Admission whose pods a later cycle makes (status only).
    Reserve,
    /// Resumed binding.
    Bind,
    /// Eviction.
    Evict,
    /// A plain pod's binding.
    BindPod,
    /// Anything else.
    Other,
}

/// What became of a step the applier ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The object's uid.
    pub uid: String,
    /// The step.
    pub kind: StepKind,
    /// Whether it succeeded.
    pub ok: bool,
}
