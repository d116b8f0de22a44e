//! Capacity leases for edge autonomy: the federation grants an edge site's cluster some of its GPUs, node by node, as a
//! Lease there (the queue charged, an epoch, a duration its heartbeat renews). The site-local Haiyun places only within
//! live grants, cut off or not; the federation places nothing on the granted GPUs. A grant changes only while the link
//! is up, with a new epoch.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::DeleteParams;
use kube::{Api, Client, ResourceExt};

use super::ORIGIN_LABEL;
use super::fence::{self, NAMESPACE, Watch};

/// Label of every grant Lease (the site-local Haiyun watches those).
pub const GRANT_LABEL: &str = "haiyun.io/grant";
/// Annotation naming the federation's queue the site's usage is charged to.
const QUEUE_ANNOTATION: &str = "haiyun.io/grant-queue";
/// Annotation with the GPUs granted per node of the site: `node-a=4,node-b=2`.
const NODES_ANNOTATION: &str = "haiyun.io/grant-nodes";

/// Why a grant could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// A grant Lease that does not say what it grants.
    #[error("grant Lease {NAMESPACE}/{name}: {what}")]
    Malformed {
        /// The Lease.
        name: String,
        /// What is wrong.
        what: String,
    },
    /// An API call failed.
    #[error("failed to {action} grant Lease {NAMESPACE}/{name}: {source}")]
    Api {
        /// What was being done.
        action: &'static str,
        /// The Lease.
        name: String,
        /// The cause.
        source: kube::Error,
    },
}

/// What one capacity lease grants.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grant {
    /// The federation's queue the site's usage is charged to.
    pub queue: String,
    /// Grows each time the grant changes.
    pub epoch: u32,
    /// GPUs granted per node (the site's own node names).
    pub nodes: BTreeMap<String, u32>,
    /// Seconds it stays good at the site without a renewal.
    pub seconds: u32,
}

impl Grant {
    /// GPUs granted in all.
    pub fn gpus(&self) -> u32 {
        self.nodes.values().sum()
    }

    /// The grant a Lease carries.
    pub fn parse(lease: &Lease) -> Result<Grant, GrantError> {
        let name = lease.name_any();
        let bad = |what: String| GrantError::Malformed { name: name.clone(), what };
        let a = lease.annotations();
        let queue = a.get(QUEUE_ANNOTATION).cloned().ok_or_else(|| bad(format!("no {QUEUE_ANNOTATION}")))?;
        let mut nodes = BTreeMap::new();
        for part in a.get(NODES_ANNOTATION).map(String::as_str).unwrap_or("").split(',') {
            if part.is_empty() {
                continue;
            }
            let parsed =
                part.split_once('=').and_then(|(n, g)| Some((n.to_string(), g.parse::<u32>().ok()?)));
            let (node, gpus) =
                parsed.ok_or_else(|| bad(format!("{NODES_ANNOTATION} part {part:?} is not node=gpus")))?;
            nodes.insert(node, gpus);
        }
        let spec = lease.spec.clone().unwrap_or_default();
        Ok(Grant {
            queue,
            epoch: spec.lease_transitions.unwrap_or(0).max(0) as u32,
            nodes,
            seconds: spec.lease_duration_seconds.unwrap_or(0).max(0) as u32,
        })
    }

    /// The Lease `name` that carries it, renewed now by `origin`.
    pub fn lease(&self, name: &str, origin: &str) -> Lease {
        let mut lease = Lease::default();
        lease.metadata.name = Some(name.into());
        lease.metadata.labels = Some(
            [(ORIGIN_LABEL.to_string(), origin.to_string()), (GRANT_LABEL.to_string(), "true".to_string())]
                .into(),
        );
        let nodes: Vec<String> = self.nodes.iter().map(|(n, g)| format!("{n}={g}")).collect();
        lease.metadata.annotations = Some(
            [
                (QUEUE_ANNOTATION.to_string(), self.queue.clone()),
                (NODES_ANNOTATION.to_string(), nodes.join(",")),
            ]
            .into(),
        );
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(origin.into()),
            lease_duration_seconds: Some(self.seconds.try_into().unwrap_or(i32::MAX)),
            lease_transitions: Some(self.epoch.try_into().unwrap_or(i32::MAX)),
            renew_time: Some(MicroTime(jiff::Timestamp::now())),
            ..LeaseSpec::default()
        });
        lease
    }
}

/// The grant Lease of pool `pool` of the federation `origin` in the site's cluster.
pub fn name(pool: &str, origin: &str) -> String {
    format!("{pool}.{origin}")
}

/// The GPUs to grant per node: what `current` grants, shrunk from the last nodes (by name) when more than `want`, or
/// grown on `free` GPUs (not used, not granted) when less, nodes with the most free first, so a site gets whole nodes
/// where it can.
pub fn choose(
    current: &BTreeMap<String, u32>,
    want: u32,
    free: &BTreeMap<String, u32>,
) -> BTreeMap<String, u32> {
    let mut out = current.clone();
    let mut total: u32 = out.values().sum();
    let names: Vec<String> = out.keys().rev().cloned().collect();
    for n in names {
        if total <= want {
            break;
        }
        let g = out.get(&n).copied().unwrap_or(0);
        let cut = g.min(total - want);
        total -= cut;
        if cut == g {
            out.remove(&n);
        } else {
            out.insert(n, g - cut);
        }
    }
    let mut spare: Vec<(&String, u32)> = free.iter().filter(|(_, g)| **g > 0).map(|(n, g)| (n, *g)).collect();
    spare.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    for (n, g) in spare {
        if total >= want {
            break;
        }
        let add = g.min(want - total);
        *out.entry(n.clone()).or_insert(0) += add;
        total += add;
    }
    out
}

/// Reads the grant `name` in the site's cluster, if there is one.
pub async fn read(client: &Client, name: &str) -> Result<Option<Grant>, GrantError> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let err = |source| GrantError::Api { action: "read", name: name.into(), source };
    leases.get_opt(name).await.map_err(err)?.map(|l| Grant::parse(&l)).transpose()
}

/// Writes (or renews) the grant `name` of `origin` in the site's cluster.
pub async fn write(client: &Client, name: &str, origin: &str, grant: &Grant) -> Result<(), GrantError> {
    fence::apply(client, &grant.lease(name, origin)).await.map_err(|source| GrantError::Api {
        action: "write",
        name: name.into(),
        source,
    })
}

/// Takes the grant `name` back (the pool no longer asks for autonomy).
pub async fn remove(client: &Client, name: &str) -> Result<(), GrantError> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    match leases.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(GrantError::Api { action: "delete", name: name.into(), source }),
    }
}

/// The grants a site holds now.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// GPUs granted per node, over every live grant.
    pub nodes: BTreeMap<String, u32>,
    /// The live grants, by Lease name.
    pub live: BTreeMap<String, Grant>,
    /// Grants that lapsed (or cannot be read), with why.
    pub lapsed: BTreeMap<String, String>,
}

/// The site side: when each grant Lease was last seen renewed, on this process's monotonic clock (the clocks of the
/// federation and the site are never compared).
#[derive(Debug, Default)]
pub struct Clock {
    seen: HashMap<String, Watch>,
}

impl Clock {
    /// The grants among `leases` that are live at `now`: renewed within their duration, as seen here. A site-local
    /// Haiyun that starts during a cut counts a grant's duration from its own start.
    pub fn live(&mut self, leases: &[Arc<Lease>], now: Instant) -> Grants {
        let mut out = Grants::default();
        self.seen.retain(|name, _| leases.iter().any(|l| l.name_any() == *name));
        for lease in leases {
            let name = lease.name_any();
            let overdue = self.seen.entry(name.clone()).or_default().overdue(lease, now);
            match Grant::parse(lease) {
                Err(e) => {
                    out.lapsed.insert(name, e.to_string());
                }
                Ok(g) if overdue => {
                    let why = format!(
                        "capacity lease {name} (epoch {}, {} GPUs) lapsed: not renewed for {} s",
                        g.epoch,
                        g.gpus(),
                        Duration::from_secs(u64::from(g.seconds)).as_secs()
                    );
                    out.lapsed.insert(name, why);
                }
                Ok(g) => {
                    for (n, gpus) in &g.nodes {
                        *out.nodes.entry(n.clone()).or_insert(0) += gpus;
                    }
                    out.live.insert(name, g);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(n, g)| (n.to_string(), *g)).collect()
    }

    #[test]
    fn a_grant_grows_on_the_freest_nodes_and_shrinks_from_the_last_keeping_what_it_has() {
        // Fresh: whole free nodes first.
        let free = m(&[("a", 3), ("b", 8), ("c", 8)]);
        assert_eq!(choose(&BTreeMap::new(), 10, &free), m(&[("b", 8), ("c", 2)]));
        // Kept as it is when it already grants what is wanted.
        assert_eq!(choose(&m(&[("a", 2), ("c", 4)]), 6, &free), m(&[("a", 2), ("c", 4)]));
        // Grown: the current grant stays, the rest comes from free GPUs.
        assert_eq!(choose(&m(&[("a", 2)]), 6, &free), m(&[("a", 2), ("b", 4)]));
        // Shrunk from the last node by name.
        assert_eq!(choose(&m(&[("a", 2), ("c", 4)]), 3, &free), m(&[("a", 2), ("c", 1)]));
        assert_eq!(choose(&m(&[("a", 2), ("c", 4)]), 1, &free), m(&[("a", 1)]));
        // Fewer free GPUs than wanted: grants what there is.
        assert_eq!(choose(&BTreeMap::new(), 40, &free), free);
    }

    #[test]
    fn a_grant_survives_its_lease_and_a_malformed_one_says_what_is_wrong() {
        let g = Grant { queue: "edge".into(), epoch: 3, nodes: m(&[("n1", 4), ("n2", 2)]), seconds: 60 };
        let lease = g.lease("edge.haiyun.ns", "haiyun.ns");
        assert_eq!(Grant::parse(&lease).unwrap(), g);
        assert_eq!(g.gpus(), 6);
        let mut bad = lease.clone();
        bad.metadata.annotations.as_mut().unwrap().insert(NODES_ANNOTATION.into(), "n1=four".into());
        let e = Grant::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("\"n1=four\" is not node=gpus"), "{e}");
    }

    #[test]
    fn a_site_holds_a_grant_until_it_goes_unrenewed_for_its_duration_on_the_sites_clock() {
        let g = Grant { queue: "edge".into(), epoch: 1, nodes: m(&[("n1", 4)]), seconds: 10 };
        let lease = Arc::new(g.lease("edge.x", "x"));
        let mut clock = Clock::default();
        let t0 = Instant::now();
        let live = clock.live(std::slice::from_ref(&lease), t0);
        assert_eq!(live.nodes, m(&[("n1", 4)]));
        let live = clock.live(std::slice::from_ref(&lease), t0 + Duration::from_secs(9));
        assert_eq!(live.live.len(), 1);
        let lapsed = clock.live(std::slice::from_ref(&lease), t0 + Duration::from_secs(10));
        assert!(lapsed.nodes.is_empty());
        assert!(lapsed.lapsed["edge.x"].contains("not renewed for 10 s"), "{:?}", lapsed.lapsed);
        // A renewal (a new renew time) makes it live again.
        let mut renewed = (*lease).clone();
        renewed.spec.as_mut().unwrap().renew_time =
            Some(MicroTime(jiff::Timestamp::now() + jiff::SignedDuration::from_secs(1)));
        let live = clock.live(&[Arc::new(renewed)], t0 + Duration::from_secs(11));
        assert_eq!(live.nodes, m(&[("n1", 4)]));
    }
}
