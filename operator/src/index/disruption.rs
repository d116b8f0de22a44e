//! Disruptions: a running job lost a pod it did not end itself (the taint-eviction controller evicted it after the
//! node's grace period, someone deleted or evicted it). The gang runs again as a new run once every such pod is
//! confirmed gone, and that does not count toward `maxRestarts`.

use std::collections::BTreeMap;
use std::sync::Arc;

use haiyun_api::{JOB_UID_LABEL, RUN_LABEL};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

/// A disruption of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disruption {
    /// What happened, for people (the first disrupted pod, its node and the reason Kubernetes gave).
    pub why: String,
    /// Whether every disrupted pod is confirmed gone: deleted, ended, or on a fenced node. Until then its
    /// containers may still run on an unreachable node, so the gang is not run anywhere else.
    pub confirmed: bool,
}

/// Whether the pod is being taken away: deleted, or marked a disruption target by Kubernetes.
fn taken(p: &Pod) -> Option<String> {
    let cond = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "DisruptionTarget" && c.status == "True"));
    match (cond, &p.metadata.deletion_timestamp) {
        (Some(c), _) => Some(format!(
            "{}{}",
            c.reason.as_deref().unwrap_or("DisruptionTarget"),
            c.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
        )),
        (None, Some(_)) => Some("deleted".into()),
        (None, None) => None,
    }
}

fn ended(p: &Pod) -> bool {
    matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// The disruption of run `run` of job `uid`, which has `tasks` tasks, if any: a pod of the run is being taken away,
/// or (once all its pods ran) one is missing. `fenced` lists nodes known gone for good.
pub fn of_run(
    pods: &[Arc<Pod>],
    uid: &str,
    run: u32,
    tasks: usize,
    was_running: bool,
    fenced: &BTreeMap<String, String>,
) -> Option<Disruption> {
    let run = run.to_string();
    let ours: Vec<&Pod> = pods
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| {
            p.labels().get(JOB_UID_LABEL).is_some_and(|u| u == uid) && p.labels().get(RUN_LABEL) == Some(&run)
        })
        .collect();
    let node_of = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
    let succeeded = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded");
    let taken: Vec<(&Pod, String)> =
        ours.iter().filter(|p| !succeeded(p)).filter_map(|p| taken(p).map(|why| (*p, why))).collect();
    if let Some((first, reason)) = taken.first() {
        let node = node_of(first);
        let confirmed = taken.iter().all(|(p, _)| ended(p) || fenced.contains_key(&node_of(p)));
        let wait = if confirmed {
            String::new()
        } else {
            format!(
                "; waiting until it is confirmed gone (its kubelet stops it, or node {node} is fenced with the \
                 out-of-service taint or deleted)"
            )
        };
        return Some(Disruption {
            why: format!("pod {} on node {node} was disrupted ({reason}){wait}", first.name_any()),
            confirmed,
        });
    }
    let live = ours.len();
    (was_running && live < tasks).then(|| Disruption {
        why: format!("{} of its {tasks} pods are gone (deleted or evicted)", tasks - live),
        confirmed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(name: &str, node: &str, run: u32, extra: Value) -> Arc<Pod> {
        let mut v = json!({
            "metadata": { "name": name, "labels": { JOB_UID_LABEL: "u", RUN_LABEL: run.to_string() } },
            "spec": { "nodeName": node, "containers": [] },
            "status": { "phase": "Running" }
        });
        if let Some(o) = extra.as_object() {
            for (k, x) in o {
                match k.as_str() {
                    "deletionTimestamp" => v["metadata"][k] = x.clone(),
                    _ => v["status"][k] = x.clone(),
                }
            }
        }
        Arc::new(serde_json::from_value(v).expect("pod"))
    }

    fn evicted() -> Value {
        json!({ "deletionTimestamp": "2026-12-02T00:00:00Z", "conditions": [{ "type": "DisruptionTarget",
            "status": "True", "reason": "DeletionByTaintManager", "message": "Taint manager: deleting due to NoExecute taint" }] })
    }

    #[test]
    fn an_evicted_pod_on_an_unreachable_node_is_waited_for_until_its_node_is_fenced() {
        let pods = vec![pod("j-w-0", "a", 0, json!({})), pod("j-w-1", "b", 0, evicted())];
        let d = of_run(&pods, "u", 0, 2, true, &BTreeMap::new()).expect("disrupted");
        assert!(!d.confirmed);
        assert!(
            d.why.contains("j-w-1") && d.why.contains("DeletionByTaintManager") && d.why.contains("node b"),
            "{}",
            d.why
        );
        let fenced = BTreeMap::from([("b".to_string(), "is fenced".to_string())]);
        assert!(of_run(&pods, "u", 0, 2, true, &fenced).expect("disrupted").confirmed);
    }

    #[test]
    fn a_disrupted_pod_its_kubelet_ended_or_a_vanished_pod_is_confirmed_gone() {
        let mut stopped = evicted();
        stopped["phase"] = json!("Failed");
        let pods = vec![pod("j-w-0", "a", 0, json!({})), pod("j-w-1", "b", 0, stopped)];
        assert!(of_run(&pods, "u", 0, 2, true, &BTreeMap::new()).expect("disrupted").confirmed);
        let one_left = vec![pod("j-w-0", "a", 0, json!({}))];
        let d = of_run(&one_left, "u", 0, 2, true, &BTreeMap::new()).expect("disrupted");
        assert!(d.confirmed && d.why.contains("1 of its 2 pods are gone"), "{}", d.why);
    }

    #[test]
    fn pods_still_being_made_or_of_another_run_are_no_disruption() {
        let one_left = vec![pod("j-w-0", "a", 0, json!({}))];
        assert_eq!(of_run(&one_left, "u", 0, 2, false, &BTreeMap::new()), None, "admitted, still binding");
        let old_run = vec![
            pod("j-w-0", "a", 0, evicted()),
            pod("j-w-0", "a", 1, json!({})),
            pod("j-w-1", "b", 1, json!({})),
        ];
        assert_eq!(of_run(&old_run, "u", 1, 2, true, &BTreeMap::new()), None);
    }
}
