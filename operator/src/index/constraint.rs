//! What a ComputeJob's pod templates and keys ask beyond its resources: each template's nodeSelector, required node
//! affinity and tolerations limit its tasks to the nodes that pass them (a node set of the core; none in a pool the
//! job may use: it waits, naming what refuses), and a job whose `idempotencyKey` an older job of its namespace
//! already carries is a duplicate and does not run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use haiyun_api::ComputeJob;
use haiyun_scheduler::model::{Cluster, NodeSet, NodeSetId, PoolId};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;

use super::job::JobProblem;
use super::node_filter::{FilterError, NodeFilter, Refusal};
use super::{Converted, Federation};

/// The nodes that pass one filter.
#[derive(Debug, Clone)]
struct Eligible {
    /// The core's node set (`ANY` when every node passes).
    set: NodeSetId,
    /// Pools with a node that passes.
    pools: BTreeSet<PoolId>,
    /// Kubernetes nodes each part refused, by pool, with one example taint.
    refused: BTreeMap<PoolId, BTreeMap<Refusal, u32>>,
    /// A taint that kept the template off a node (for the explanation).
    taint: Option<String>,
}

/// The nodes each distinct filter allows, computed once per cycle and filter; node sets go into the cluster.
#[derive(Debug, Default)]
pub struct Selectors {
    eligible: HashMap<String, Eligible>,
}

impl Selectors {
    fn eligible(
        &mut self,
        f: &NodeFilter,
        nodes: &[Arc<Node>],
        fed: &Federation,
        cluster: &mut Cluster,
    ) -> &Eligible {
        self.eligible.entry(f.key()).or_insert_with(|| {
            let by_name: HashMap<String, &Node> = nodes.iter().map(|n| (n.name_any(), n.as_ref())).collect();
            let mut members = Vec::new();
            let mut pools = BTreeSet::new();
            let mut refused: BTreeMap<PoolId, BTreeMap<Refusal, u32>> = BTreeMap::new();
            let mut taint = None;
            for (id, n) in fed.cluster.nodes.iter().enumerate() {
                let verdict = match by_name.get(&n.name) {
                    Some(k) => f.refusal(k),
                    // A node of another backend (Slurm, simulated) has no labels or taints to judge.
                    None if f.selects() => Some(Refusal::Selector),
                    None => None,
                };
                match verdict {
                    None => {
                        members.push(id as u32);
                        pools.insert(n.pool);
                    }
                    Some(r) => {
                        *refused.entry(n.pool).or_default().entry(r).or_default() += 1;
                        if r == Refusal::Taint && taint.is_none() {
                            taint = by_name.get(&n.name).and_then(|k| f.untolerated(k)).map(|t| {
                                format!(
                                    "{}={}:{} on {}",
                                    t.key,
                                    t.value.as_deref().unwrap_or(""),
                                    t.effect,
                                    n.name
                                )
                            });
                        }
                    }
                }
            }
            let set = if members.len() == fed.cluster.nodes.len() {
                NodeSetId::ANY
            } else {
                let parts: BTreeSet<Refusal> = refused.values().flat_map(|m| m.keys().copied()).collect();
                let parts: Vec<Refusal> = parts.into_iter().collect();
                cluster.node_sets.add(NodeSet::new(f.describe(&parts), members))
            };
            Eligible { set, pools, refused, taint }
        })
    }
}

/// Limits each task group of a converted job to the nodes its template accepts, narrowing its pools to those with
/// such a node, or says what refuses every node of the pools it may use.
pub fn narrow(
    cj: &ComputeJob,
    conv: Converted,
    nodes: &[Arc<Node>],
    fed: &Federation,
    cluster: &mut Cluster,
    memo: &mut Selectors,
) -> Converted {
    let Some(Ok(mut job)) = conv else { return conv };
    let mut first = 0usize;
    for (i, g) in cj.spec.task_groups.iter().enumerate() {
        let tasks = first..first + g.replicas as usize;
        first = tasks.end;
        let at = format!("spec.taskGroups[{i}].template");
        let f = match NodeFilter::of(g.template.as_ref(), &at) {
            Ok(f) => f,
            Err(FilterError::Malformed { field, message }) => {
                return Some(Err(JobProblem::Field { field, message }));
            }
        };
        let e = memo.eligible(&f, nodes, fed, cluster);
        if e.set.is_any() {
            continue;
        }
        let allowed: Vec<PoolId> = if job.pools.is_empty() {
            e.pools.iter().copied().collect()
        } else {
            job.pools.iter().copied().filter(|p| e.pools.contains(p)).collect()
        };
        if allowed.is_empty() {
            return Some(Err(refused_everywhere(&f, e, &job.pools, &at)));
        }
        job.pools = allowed;
        for t in job.gang.tasks.get_mut(tasks).into_iter().flatten() {
            t.nodes = e.set;
        }
    }
    Some(Ok(job))
}

/// Why no node of `pools` (empty: any) passes `f`: the parts that refuse, by how many nodes, and how to fix it.
fn refused_everywhere(f: &NodeFilter, e: &Eligible, pools: &[PoolId], at: &str) -> JobProblem {
    let mut counts: BTreeMap<Refusal, u32> = BTreeMap::new();
    for (pool, by) in &e.refused {
        if pools.is_empty() || pools.contains(pool) {
            for (r, n) in by {
                *counts.entry(*r).or_default() += n;
            }
        }
    }
    let worst = counts.iter().max_by_key(|(r, n)| (**n, std::cmp::Reverse(**r))).map(|(r, _)| *r);
    let field = match worst {
        Some(Refusal::Affinity) => format!("{at}.spec.affinity.nodeAffinity"),
        Some(Refusal::Taint) => format!("{at}.spec.tolerations"),
        _ => format!("{at}.spec.nodeSelector"),
    };
    let parts: Vec<String> = counts
        .iter()
        .map(|(r, n)| {
            let what = f.describe(&[*r]);
            match (r, &e.taint) {
                (Refusal::Taint, Some(t)) => format!("{what} refuse {n} (e.g. {t})"),
                _ => format!("{what} refuses {n}"),
            }
        })
        .collect();
    let message = if parts.is_empty() {
        "no node of a pool the job may use accepts this template: add nodes to such a pool".to_string()
    } else {
        format!(
            "no node of a pool the job may use accepts this template ({} nodes): label or untaint a node, or change \
             the template",
            parts.join("; ")
        )
    };
    JobProblem::NoNode { field, message }
}

/// Jobs (by uid) that repeat an older job's `idempotencyKey` in the same namespace, with that job's name; `jobs`
/// are in submission order.
pub fn duplicates(jobs: &[(Arc<ComputeJob>, Converted)]) -> HashMap<String, String> {
    let mut first: HashMap<(String, String), String> = HashMap::new();
    let mut out = HashMap::new();
    for (cj, _) in jobs {
        let Some(key) = cj.spec.idempotency_key.clone().filter(|k| !k.is_empty()) else { continue };
        let ns = cj.namespace().unwrap_or_default();
        match first.get(&(ns.clone(), key.clone())) {
            Some(older) => {
                out.insert(cj.uid().unwrap_or_default(), older.clone());
            }
            None => {
                first.insert((ns, key), cj.name_any());
            }
        }
    }
    out
}
