//! What a ComputeJob's pod templates and keys ask beyond its resources: a template's `nodeSelector` narrows the
//! pools it may run in to those with a node that has the labels (none: it waits, naming the selector), and a job
//! whose `idempotencyKey` an older job of its namespace already carries is a duplicate and does not run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use haiyun_api::ComputeJob;
use haiyun_scheduler::model::PoolId;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;

use super::job::JobProblem;
use super::{Converted, Federation};

/// A label selector, as a template writes it.
type Selector = BTreeMap<String, String>;

/// The pools that have a node matching each selector asked for so far (computed once per cycle and selector).
#[derive(Debug, Default)]
pub struct Selectors {
    pools: HashMap<Selector, BTreeSet<PoolId>>,
}

impl Selectors {
    fn pools(&mut self, sel: &Selector, nodes: &[Arc<Node>], fed: &Federation) -> &BTreeSet<PoolId> {
        self.pools.entry(sel.clone()).or_insert_with(|| {
            nodes
                .iter()
                .filter(|n| sel.iter().all(|(k, v)| n.labels().get(k) == Some(v)))
                .filter_map(|n| fed.node_ids.get(&n.name_any()))
                .map(|id| fed.cluster.nodes[*id as usize].pool)
                .collect()
        })
    }
}

/// The `nodeSelector` of task group `i`'s template, if it sets one.
fn selector(cj: &ComputeJob, i: usize) -> Option<Selector> {
    let t = cj.spec.task_groups.get(i)?.template.as_ref()?;
    let sel = t.get("spec")?.get("nodeSelector")?.as_object()?;
    let out: Selector = sel.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect();
    (!out.is_empty()).then_some(out)
}

/// Narrows a converted job to the pools where every group's `nodeSelector` matches a node, or says which selector
/// no node of an allowed pool has.
pub fn narrow(
    cj: &ComputeJob,
    conv: Converted,
    nodes: &[Arc<Node>],
    fed: &Federation,
    memo: &mut Selectors,
) -> Converted {
    let Some(Ok(mut job)) = conv else { return conv };
    for i in 0..cj.spec.task_groups.len() {
        let Some(sel) = selector(cj, i) else { continue };
        let matching = memo.pools(&sel, nodes, fed);
        let allowed: Vec<PoolId> = if job.pools.is_empty() {
            matching.iter().copied().collect()
        } else {
            job.pools.iter().copied().filter(|p| matching.contains(p)).collect()
        };
        if allowed.is_empty() {
            let labels: Vec<String> = sel.iter().map(|(k, v)| format!("{k}={v}")).collect();
            return Some(Err(JobProblem::NoNode {
                field: format!("spec.taskGroups[{i}].template.spec.nodeSelector"),
                message: format!(
                    "no node of a pool the job may use has the labels {}: label a node, or change the selector",
                    labels.join(",")
                ),
            }));
        }
        job.pools = allowed;
    }
    Some(Ok(job))
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
