//! The placer: filters and scores nodes for each task and places gangs all-or-nothing.

mod cache;
mod gang;
mod rejection;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use rejection::{ReasonCount, Rejection, RejectionCode, Shortfall, explain};

use crate::model::{NodeId, TaskSpec};
use crate::plugin::{Policy, Scored, check_node};
use crate::snapshot::{Snapshot, SnapshotError, TaskPlacement, UnionIter};
use cache::ScoreCache;

/// How many feasible nodes to score per task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodesToScore {
    /// Every feasible node (benchmarks that reproduce published results).
    All,
    /// Like kube-scheduler: at least 100 nodes, else `max(5%, 50% − nodes/125)` of them.
    #[default]
    Adaptive,
    /// At most this many feasible nodes.
    AtMost(usize),
}

impl NodesToScore {
    fn limit(self, nodes: usize) -> usize {
        match self {
            NodesToScore::All => usize::MAX,
            NodesToScore::AtMost(n) => n.max(1),
            NodesToScore::Adaptive => {
                let pct = (50i64 - nodes as i64 / 125).max(5) as usize;
                (nodes * pct / 100).max(100)
            }
        }
    }
}

/// Placer settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PlacerConfig {
    /// How many feasible nodes to score per task.
    pub nodes_to_score: NodesToScore,
}

/// Where a gang's tasks landed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Placement {
    /// One entry per task, in the gang's task order.
    pub tasks: Vec<TaskPlacement>,
}

/// A gang placed, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every task has a node; the snapshot already holds them.
    Placed(Placement),
    /// No task was placed.
    Rejected(Rejection),
}

/// Which nodes, and which of their GPUs, a task may use.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Any node.
    All,
    /// Any node of one pool.
    Pool(crate::model::PoolId),
    /// Only these nodes.
    Nodes(&'a [NodeId]),
    /// Only these nodes' GPUs in this NVLink domain.
    Nvlink(&'a [NodeId], u32),
}

/// Filters and scores nodes with one policy; owns the policy's per-node state.
#[derive(Debug)]
pub struct Placer {
    policy: Policy,
    config: PlacerConfig,
    cache: ScoreCache,
    classes: HashMap<TaskSpec, u32>,
    next_start: usize,
    /// Feasible nodes scored for the task at hand.
    seen: usize,
    /// Those nodes with their scores and ranks, kept only for a policy that normalises over them.
    feasible: Vec<(NodeId, Scored, u32)>,
    /// Otherwise the best of them so far.
    best: Option<(NodeId, Scored, u32)>,
    scores: Vec<i64>,
}

impl Placer {
    /// A placer using `policy`.
    pub fn new(policy: Policy, config: PlacerConfig) -> Self {
        Placer {
            policy,
            config,
            cache: ScoreCache::default(),
            classes: HashMap::new(),
            next_start: 0,
            seen: 0,
            feasible: Vec::new(),
            best: None,
            scores: Vec::new(),
        }
    }

    /// The policy in use.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The best node for one task within `scope`, changing nothing; `None` when no node passes the filters.
    pub fn pick(&mut self, snap: &Snapshot, task: &TaskSpec, scope: Scope<'_>) -> Option<TaskPlacement> {
        self.pick_scored(snap, task, scope).map(|(p, _)| p)
    }

    /// Like [`Placer::pick`], with the winner's (normalised) score.
    pub fn pick_scored(
        &mut self,
        snap: &Snapshot,
        task: &TaskSpec,
        scope: Scope<'_>,
    ) -> Option<(TaskPlacement, i64)> {
        let limit = self.config.nodes_to_score.limit(snap.len());
        let cacheable = self.policy.cacheable() && !matches!(scope, Scope::Nvlink(..));
        let class = if cacheable { self.class(task, snap.len()) } else { 0 };
        self.seen = 0;
        self.feasible.clear();
        self.best = None;
        let mut last = 0;
        match scope {
            Scope::All | Scope::Pool(_) => {
                let pool = if let Scope::Pool(p) = scope { Some(p) } else { None };
                let sets = snap.index().candidate_sets(task.gpus, task.gpu_milli, task.models);
                for id in UnionIter::new(sets, self.next_start) {
                    last = id;
                    if pool.is_some_and(|p| snap.cluster().nodes.get(id as usize).is_none_or(|n| n.pool != p))
                    {
                        continue;
                    }
                    self.consider(snap, task, id, None, cacheable.then_some(class));
                    if self.seen >= limit {
                        break;
                    }
                }
            }
            Scope::Nodes(ids) | Scope::Nvlink(ids, _) => {
                let domain = if let Scope::Nvlink(_, d) = scope { Some(d) } else { None };
                for &id in ids {
                    self.consider(snap, task, id, domain, cacheable.then_some(class));
                }
            }
        }
        if limit != usize::MAX && self.seen >= limit {
            self.next_start = last as usize / 64 + 1;
        }
        self.choose(task)
    }

    fn consider(
        &mut self,
        snap: &Snapshot,
        task: &TaskSpec,
        id: NodeId,
        domain: Option<u32>,
        class: Option<u32>,
    ) {
        let Some(view) = snap.view(id) else { return };
        let usable = view.gpus_of(task.models) & domain.map_or(u32::MAX, |d| view.gpus_in_domain(d));
        if check_node(&view, task, usable).is_err() {
            return;
        }
        let scored = match class {
            Some(c) => match self.cache.get(id, view.version, c) {
                Some(s) => s,
                None => {
                    let s = self.policy.score(&view, task, usable);
                    self.cache.put(id, view.version, c, s);
                    s
                }
            },
            None => self.policy.score(&view, task, usable),
        };
        self.seen += 1;
        let candidate = (id, scored, view.rank);
        if self.policy.normalizes() {
            self.feasible.push(candidate);
        } else if self.best.is_none_or(|b| Self::beats(&candidate, &b)) {
            self.best = Some(candidate);
        }
    }

    /// Whether `a`, scored after `b`, wins over it: a higher score, then a lower rank; the later of equals.
    fn beats(a: &(NodeId, Scored, u32), b: &(NodeId, Scored, u32)) -> bool {
        a.1.score.cmp(&b.1.score).then_with(|| b.2.cmp(&a.2)).is_ge()
    }

    fn choose(&mut self, task: &TaskSpec) -> Option<(TaskPlacement, i64)> {
        if let Some((node, s, _)) = self.best {
            return Some((TaskPlacement { node, gpus: s.gpus, spec: *task }, s.score));
        }
        if self.feasible.len() <= 1 {
            return self
                .feasible
                .first()
                .map(|(node, s, _)| (TaskPlacement { node: *node, gpus: s.gpus, spec: *task }, s.score));
        }
        self.scores.clear();
        self.scores.extend(self.feasible.iter().map(|(_, s, _)| s.score));
        self.policy.normalize(&mut self.scores);
        self.feasible
            .iter()
            .zip(&self.scores)
            .max_by(|(a, sa), (b, sb)| sa.cmp(sb).then_with(|| b.2.cmp(&a.2)))
            .map(|((node, s, _), n)| (TaskPlacement { node: *node, gpus: s.gpus, spec: *task }, *n))
    }

    /// The task's shape as a small number for the score cache; past the cache's budget it starts afresh.
    fn class(&mut self, task: &TaskSpec, nodes: usize) -> u32 {
        if !self.classes.contains_key(task) && self.classes.len() >= ScoreCache::class_budget(nodes) {
            self.classes.clear();
            self.cache.clear();
        }
        let next = self.classes.len() as u32;
        *self.classes.entry(*task).or_insert(next)
    }

    /// Assumes one task into the snapshot and the policy's state.
    pub fn assume_task(&mut self, snap: &mut Snapshot, p: &TaskPlacement) -> Result<(), SnapshotError> {
        snap.assume(p)?;
        self.policy.reserve(p.node, &p.spec);
        Ok(())
    }

    /// Forgets one task in the snapshot and the policy's state.
    pub fn forget_task(&mut self, snap: &mut Snapshot, p: &TaskPlacement) -> Result<(), SnapshotError> {
        snap.forget(p)?;
        self.policy.unreserve(p.node, &p.spec);
        Ok(())
    }

    /// Assumes every task of a placement (e.g. one rebuilt from a running cluster).
    pub fn assume(&mut self, snap: &mut Snapshot, placement: &Placement) -> Result<(), SnapshotError> {
        for (i, t) in placement.tasks.iter().enumerate() {
            if let Err(e) = self.assume_task(snap, t) {
                for done in placement.tasks[..i].iter().rev() {
                    self.forget_task(snap, done)?;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Forgets every task of a placement (a gang finished or was preempted).
    pub fn forget(&mut self, snap: &mut Snapshot, placement: &Placement) -> Result<(), SnapshotError> {
        for t in placement.tasks.iter().rev() {
            self.forget_task(snap, t)?;
        }
        Ok(())
    }
}
