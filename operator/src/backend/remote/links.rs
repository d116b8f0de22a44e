//! The links to every remote pool's cluster, kept in step with the ComputePools and their Secrets: a new or rotated
//! kubeconfig makes a new link (no restart), a bad one is reported and links nothing, a pool gone drops its link.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haiyun_api::ComputePool;
use haiyun_api::pool::PartitionPolicy;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::events::Copied;

use super::kubeconfig::{self, KubeconfigError};
use super::link::{Link, Target, Timing};
use super::{RemoteBackend, View, recorded_since};

enum Entry {
    /// Its Secret or kubeconfig cannot be used (the text it was read from, and why).
    Bad(String, KubeconfigError),
    Linked(Box<Link>),
}

impl Entry {
    fn source(&self) -> &str {
        match self {
            Entry::Bad(s, _) => s,
            Entry::Linked(l) => &l.source,
        }
    }
}

/// The receiving end of the warnings, until the copier takes it.
type Copier = Arc<Mutex<Option<UnboundedReceiver<Copied>>>>;

/// Every remote pool's link, by pool name; shared by the keeper loop and each cycle (through a frozen view).
#[derive(Clone)]
pub struct Remotes {
    entries: Arc<Mutex<BTreeMap<String, Entry>>>,
    origin: String,
    timing: Timing,
    /// Warnings about our pods in remote clusters, to copy onto their jobs (the copier takes the receiver).
    warnings: (UnboundedSender<Copied>, Copier),
}

impl std::fmt::Debug for Remotes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remotes").field("origin", &self.origin).finish_non_exhaustive()
    }
}

/// The origin label value of an operator: its Lease's name and namespace (one federation per Lease).
pub fn origin(lease: &str, namespace: &str) -> String {
    let mut o: String = format!("{lease}.{namespace}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' })
        .collect();
    o.truncate(63);
    o.trim_end_matches(['-', '.']).to_string()
}

/// The kubeconfig text of a Secret, or why there is none.
async fn read(secrets: &Api<Secret>, name: &str) -> Result<String, KubeconfigError> {
    let s = secrets.get(name).await.map_err(|e| match &e {
        // Refused (missing, forbidden): the pool says why. Anything else is this API server not answering.
        kube::Error::Api(s) if s.code < 500 => {
            KubeconfigError::Secret { secret: name.into(), why: e.to_string() }
        }
        _ => KubeconfigError::LocalApi { secret: name.into(), why: e.to_string() },
    })?;
    let data = s.data.unwrap_or_default();
    let text = data.get("kubeconfig").ok_or_else(|| KubeconfigError::NoKey(name.into()))?;
    Ok(String::from_utf8_lossy(&text.0).into_owned())
}

impl Remotes {
    /// No links yet; `origin` labels what this operator makes remotely.
    pub fn new(origin: String, timing: Timing) -> Self {
        let (tx, rx) = super::events::channel();
        Remotes { entries: Arc::default(), origin, timing, warnings: (tx, Arc::new(Mutex::new(Some(rx)))) }
    }

    /// The client of pool `pool`'s cluster, while it is linked.
    pub fn client(&self, pool: &str) -> Option<Client> {
        match self.entries.lock().unwrap_or_else(|p| p.into_inner()).get(pool) {
            Some(Entry::Linked(l)) => Some(l.client.clone()),
            _ => None,
        }
    }

    /// The backend for one cycle: every remote pool as its link shows it now.
    pub fn backend(&self) -> RemoteBackend {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let views = entries
            .iter()
            .map(|(pool, e)| {
                let v = match e {
                    Entry::Bad(_, why) => View::Bad(why.to_string()),
                    Entry::Linked(l) => View::Linked(Box::new(l.seen()), l.client.clone()),
                };
                (pool.clone(), v)
            })
            .collect();
        RemoteBackend::new(views, self.origin.clone(), self.timing.skew)
    }

    /// Keeps the links in step with the pools (in `pools`) and their Secrets (in `namespace`), every `period`.
    pub async fn run(
        self,
        client: Client,
        namespace: String,
        pools: Store<ComputePool>,
        changed: Arc<Notify>,
        period: Duration,
    ) {
        let copier = self.warnings.1.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(rx) = copier {
            tokio::spawn(super::events::copy(client.clone(), rx));
        }
        let secrets: Api<Secret> = Api::namespaced(client, &namespace);
        let _ = pools.wait_until_ready().await;
        loop {
            self.sync(&secrets, &pools.state(), &changed).await;
            tokio::time::sleep(period).await;
        }
    }

    /// One pass: each remote pool's Secret read, and its link made again when its kubeconfig or selector changed.
    async fn sync(&self, secrets: &Api<Secret>, pools: &[Arc<ComputePool>], changed: &Arc<Notify>) {
        let mut wanted = BTreeMap::new();
        for p in pools {
            let Some(spec) = p.spec.backend.remote_kubernetes.as_ref() else { continue };
            let name = p.name_any();
            let text = match read(secrets, &spec.secret_name).await {
                Ok(t) => Ok(t),
                // The local API server did not answer: keep the link as it is.
                Err(KubeconfigError::LocalApi { .. }) => {
                    wanted.insert(name, None);
                    continue;
                }
                Err(e) => Err(e),
            };
            let fence = (spec.partition_policy == PartitionPolicy::Fenced)
                .then(|| Duration::from_secs(u64::from(spec.fence_seconds.unwrap_or(60))));
            let source = match &text {
                Ok(t) => format!("{t}\n{:?}\n{fence:?}\n{:?}", spec.node_selector, spec.autonomy),
                Err(e) => e.to_string(),
            };
            let same = self
                .entries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&name)
                .is_some_and(|e| e.source() == source);
            if same {
                wanted.insert(name, None);
                continue;
            }
            let entry = match text.and_then(|t| kubeconfig::check(&spec.secret_name, &t)) {
                Err(e) => Entry::Bad(source, e),
                Ok(kc) => match kubeconfig::client(&spec.secret_name, kc).await {
                    Err(e) => Entry::Bad(source, e),
                    Ok(c) => {
                        let target = Target {
                            pool: &name,
                            source,
                            selector: &spec.node_selector,
                            origin: &self.origin,
                            since: recorded_since(p),
                            fence,
                            autonomy: spec.autonomy.clone(),
                            warnings: self.warnings.0.clone(),
                        };
                        Entry::Linked(Box::new(Link::start(target, c, self.timing, changed.clone())))
                    }
                },
            };
            match &entry {
                Entry::Bad(_, why) => {
                    tracing::warn!(pool = %name, error = %why, "remote cluster's kubeconfig refused")
                }
                Entry::Linked(_) => tracing::info!(pool = %name, "linking remote cluster"),
            }
            wanted.insert(name, Some(entry));
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let before = entries.len();
        entries.retain(|pool, _| wanted.contains_key(pool));
        let mut touched = entries.len() != before;
        for (pool, e) in wanted {
            if let Some(e) = e {
                entries.insert(pool, e);
                touched = true;
            }
        }
        if touched {
            changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_is_a_valid_label_value_naming_lease_and_namespace() {
        assert_eq!(origin("haiyun-operator", "haiyun-system"), "haiyun-operator.haiyun-system");
        let long = origin(&"x".repeat(70), "ns");
        assert_eq!(long.len(), 63);
        assert_eq!(origin("a_b", "ns-"), "a-b.ns");
    }
}
