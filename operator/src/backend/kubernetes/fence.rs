//! Node fences: a node's fence holder (`haiyun-operator node-fence`, `guard.rs`) renews a Lease and stops Haiyun's
//! pods on its node once it has gone its timeout without renewing it. The operator times each such Lease on its own monotonic clock, and
//! counts a NotReady node fenced once the Lease's duration, the termination grace of our pods there and a clock-skew
//! margin have passed since it last saw a renewal: what ran there may then run elsewhere.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use haiyun_api::JOB_UID_LABEL;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;

use crate::backend::Orphan;
use crate::backend::remote::fence::Watch;

/// Label of every node fence Lease; its `holderIdentity` names the node.
pub const LABEL: &str = "haiyun.io/node-fence";

/// How long a node's fence Lease has gone unrenewed, as this process saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Silence {
    /// The Lease's duration: the holder's fence timeout.
    pub timeout: Duration,
    /// Time since this process last saw it renewed.
    pub silent: Duration,
}

/// The node fences of one cluster, frozen for a cycle.
#[derive(Debug, Clone, Default)]
pub struct NodeFences {
    /// Each fenced node's silence, by its name in the federation.
    pub silences: BTreeMap<String, Silence>,
    /// Margin for clock skew and watch delay.
    pub skew: Duration,
}

impl NodeFences {
    /// Why `node` counts as fenced by its holder, if it does: it is not Ready, and its Lease has not been renewed
    /// for the holder's timeout, the longest termination grace of our pods among `pods` there, and the margin.
    pub fn fenced(&self, node: &Node, pods: &[Arc<Pod>]) -> Option<String> {
        let name = node.name_any();
        let s = self.silences.get(&name)?;
        if ready(node) {
            return None;
        }
        let grace = longest_grace(
            pods.iter()
                .filter(|p| p.labels().contains_key(JOB_UID_LABEL))
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str())),
        );
        let limit = s.timeout + Duration::from_secs(grace) + self.skew;
        (s.silent >= limit).then(|| {
            format!(
                "is cut off and fenced: its fence holder has not renewed its Lease for {} s, and stops our pods there \
                 after {} s without a renewal (their grace {grace} s, margin {} s)",
                s.silent.as_secs(),
                s.timeout.as_secs(),
                self.skew.as_secs()
            )
        })
    }
}

/// Our pods being deleted (evicted, or of a job gone) on `nodes` that their holder fenced: what to remove from the API
/// server of `cluster` (a remote pool's; `None`: this one).
pub fn stranded(
    nodes: &[Arc<Node>],
    pods: &[Arc<Pod>],
    fences: &NodeFences,
    cluster: Option<&str>,
) -> Vec<Orphan> {
    if fences.silences.is_empty() {
        return Vec::new();
    }
    let fenced: BTreeSet<String> =
        nodes.iter().filter(|n| fences.fenced(n, pods).is_some()).map(|n| n.name_any()).collect();
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some())
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some_and(|n| fenced.contains(n)))
        .filter_map(|p| {
            Some(Orphan::Stranded {
                cluster: cluster.map(str::to_string),
                namespace: p.namespace().unwrap_or_default(),
                pod: p.name_any(),
                pod_uid: p.uid().unwrap_or_default(),
                uid: p.labels().get(JOB_UID_LABEL)?.clone(),
            })
        })
        .collect()
}

/// The longest termination grace among `pods`, in seconds (Kubernetes' 30 where a pod names none; 0 for no pod): how
/// long a fence holder's stop of them may take.
pub fn longest_grace<'a>(pods: impl Iterator<Item = &'a Arc<Pod>>) -> u64 {
    pods.filter_map(|p| p.spec.as_ref().map(|s| s.termination_grace_period_seconds.unwrap_or(30)))
        .max()
        .unwrap_or(0)
        .max(0) as u64
}

/// Whether the node's Ready condition is True.
fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// When each node fence Lease was last seen renewed, on this process's monotonic clock (the holders' clocks are
/// never read).
#[derive(Debug, Default)]
pub struct Clock {
    seen: HashMap<String, Watch>,
}

impl Clock {
    /// The silence of each node among `leases` at `now`, keyed by `name(holder)`. A Lease first seen now counts as
    /// just renewed: an operator that starts waits a full timeout. Of two Leases naming one node, the one nearer its
    /// lapse counts.
    pub fn silences(
        &mut self,
        leases: &[Arc<Lease>],
        now: Instant,
        name: impl Fn(&str) -> String,
    ) -> BTreeMap<String, Silence> {
        let key = |l: &Lease| format!("{}/{}", l.namespace().unwrap_or_default(), l.name_any());
        self.seen.retain(|k, _| leases.iter().any(|l| key(l) == *k));
        let mut out = BTreeMap::new();
        for lease in leases {
            let spec = lease.spec.as_ref();
            let Some(holder) = spec.and_then(|s| s.holder_identity.as_deref()).filter(|h| !h.is_empty())
            else {
                continue;
            };
            let timeout =
                Duration::from_secs(spec.and_then(|s| s.lease_duration_seconds).unwrap_or(60).max(1) as u64);
            let silent = self.seen.entry(key(lease)).or_default().silent(lease, now);
            let new = Silence { timeout, silent };
            // Two Leases naming one node (two holders, or one left behind): each holder stops our pods there on its
            // own, so the one nearest its lapse counts.
            let over = |s: &Silence| s.silent.as_secs_f64() - s.timeout.as_secs_f64();
            match out.entry(name(holder)) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(new);
                }
                std::collections::btree_map::Entry::Occupied(mut e) if over(&new) > over(e.get()) => {
                    e.insert(new);
                }
                std::collections::btree_map::Entry::Occupied(_) => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lease(holder: &str, renewed: &str) -> Arc<Lease> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": { "name": format!("node-fence.{holder}"), "namespace": "haiyun-system" },
                "spec": { "holderIdentity": holder, "leaseDurationSeconds": 10, "renewTime": renewed }
            }))
            .expect("lease"),
        )
    }

    fn node(name: &str, ready: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": { "name": name },
            "status": { "conditions": [{ "type": "Ready", "status": ready }] }
        }))
        .expect("node")
    }

    fn pod(node: &str, grace: i64) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": { "name": format!("p-{node}"), "uid": format!("pod-{node}"), "namespace": "ns",
                              "labels": { JOB_UID_LABEL: "u" } },
                "spec": { "nodeName": node, "terminationGracePeriodSeconds": grace, "containers": [] }
            }))
            .expect("pod"),
        )
    }

    fn deleting(p: &Arc<Pod>) -> Arc<Pod> {
        let mut p = (**p).clone();
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).expect("time"),
        ));
        Arc::new(p)
    }

    #[test]
    fn only_our_pods_being_deleted_on_a_fenced_node_are_removed_at_once() {
        let s = Duration::from_secs;
        let fences = NodeFences {
            silences: BTreeMap::from([
                ("n1".to_string(), Silence { timeout: s(10), silent: s(20) }),
                ("n2".to_string(), Silence { timeout: s(10), silent: s(1) }),
            ]),
            skew: s(2),
        };
        let nodes = vec![Arc::new(node("n1", "Unknown")), Arc::new(node("n2", "Unknown"))];
        let running = pod("n1", 5);
        assert!(
            stranded(&nodes, std::slice::from_ref(&running), &fences, None).is_empty(),
            "not being deleted"
        );
        let pods = vec![deleting(&running), deleting(&pod("n2", 5))];
        let out = stranded(&nodes, &pods, &fences, Some("far"));
        assert_eq!(
            out,
            vec![Orphan::Stranded {
                cluster: Some("far".into()),
                namespace: "ns".into(),
                pod: "p-n1".into(),
                pod_uid: "pod-n1".into(),
                uid: "u".into()
            }],
            "the pod on the node still within its fence timeout waits for its kubelet"
        );
    }

    #[test]
    fn a_lease_is_timed_from_when_this_process_saw_it_renewed() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut clock = Clock::default();
        let same = |h: &str| h.to_string();
        let first = clock.silences(&[lease("n1", "2026-12-03T10:00:00.000000Z")], t0, same);
        assert_eq!(first["n1"], Silence { timeout: s(10), silent: s(0) }, "first seen counts as renewed");
        let later = clock.silences(&[lease("n1", "2026-12-03T10:00:00.000000Z")], t0 + s(7), same);
        assert_eq!(later["n1"].silent, s(7));
        let renewed = clock.silences(&[lease("n1", "2026-12-03T10:00:02.000000Z")], t0 + s(8), same);
        assert_eq!(renewed["n1"].silent, s(0), "a renewal restarts the clock, whatever time it names");
        let remote =
            clock.silences(&[lease("n1", "2026-12-03T10:00:02.000000Z")], t0 + s(9), |h| format!("far/{h}"));
        assert_eq!(
            remote["far/n1"].silent,
            s(1),
            "a remote cluster's node is named as the federation names it"
        );
    }

    #[test]
    fn a_node_is_fenced_only_when_not_ready_and_silent_past_timeout_grace_and_margin() {
        let s = Duration::from_secs;
        let fences = |silent| NodeFences {
            silences: BTreeMap::from([("n1".to_string(), Silence { timeout: s(10), silent })]),
            skew: s(2),
        };
        let pods = vec![pod("n1", 5), pod("n2", 60)];
        // 10 s timeout + 5 s grace of our pod there (not the other node's 60) + 2 s margin.
        assert_eq!(fences(s(16)).fenced(&node("n1", "Unknown"), &pods), None);
        let why = fences(s(17)).fenced(&node("n1", "Unknown"), &pods).expect("fenced");
        assert!(why.contains("not renewed its Lease for 17 s") && why.contains("grace 5 s"), "{why}");
        assert_eq!(
            fences(s(99)).fenced(&node("n1", "True"), &pods),
            None,
            "a Ready node's kubelet still answers"
        );
        assert_eq!(fences(s(99)).fenced(&node("n3", "Unknown"), &pods), None, "no fence holder there");
    }
}
