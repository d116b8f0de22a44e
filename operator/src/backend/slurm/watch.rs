//! What each Slurm pool looks like, polled from slurmrestd: its nodes, the jobs it lists (by our idempotency key),
//! and whether it answers. A pool that does not answer is unavailable; it comes back by itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haiyun_api::ComputePool;
use haiyun_api::pool::SlurmBackend;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use tokio::sync::Notify;

use super::{Credential, SlurmClient, SlurmJob, SlurmNode};

/// A pool as last polled.
#[derive(Debug, Clone, PartialEq)]
pub struct SlurmView {
    /// `Err(why)` when the pool cannot be used now.
    pub available: Result<(), String>,
    /// Its nodes (in its partition).
    pub nodes: Vec<SlurmNode>,
    /// Jobs Slurm lists, by the key in their comment (only ours carry one).
    pub jobs: HashMap<String, SlurmJob>,
    /// Older jobs carrying a key a newer job carries too (a submission made twice): they are cancelled.
    pub extra: Vec<SlurmJob>,
    /// The partition's longest time limit, minutes (`None`: unlimited).
    pub time_limit_min: Option<u32>,
}

/// Every Slurm pool's view, by pool name.
pub type SlurmViews = BTreeMap<String, SlurmView>;

/// The idempotency key of a job's run: `haiyun:<uid>:<run>`.
pub fn key(uid: &str, run: u32) -> String {
    format!("haiyun:{uid}:{run}")
}

/// The job uid and run a key names.
pub fn parse_key(key: &str) -> Option<(&str, u32)> {
    let rest = key.strip_prefix("haiyun:")?;
    let (uid, run) = rest.rsplit_once(':')?;
    Some((uid, run.parse().ok()?))
}

struct Pool {
    spec: SlurmBackend,
    client: SlurmClient,
    /// The view of the last poll that worked: kept while the pool does not answer, so running jobs keep their place.
    last: Option<SlurmView>,
    jobs: HashMap<u32, SlurmJob>,
    last_update: i64,
    polls: u64,
}

/// The Slurm pools: clients and views, shared by the poller, the index and the applier.
#[derive(Clone, Default)]
pub struct SlurmPools {
    views: Arc<Mutex<SlurmViews>>,
    clients: Arc<Mutex<HashMap<String, (SlurmClient, SlurmBackend)>>>,
}

impl std::fmt::Debug for SlurmPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlurmPools").finish_non_exhaustive()
    }
}

/// Why a pool's client could not be made.
async fn credential(secrets: &Api<Secret>, spec: &SlurmBackend) -> Result<Credential, String> {
    let s = secrets.get(&spec.token_secret).await.map_err(|e| {
        format!(
            "failed to read Secret {:?} for the Slurm token: {e} (create it with key token or jwt_key)",
            spec.token_secret
        )
    })?;
    let data = s.data.unwrap_or_default();
    if let Some(k) = data.get("jwt_key") {
        return Ok(Credential::Key(k.0.clone()));
    }
    match data.get("token") {
        Some(t) => Ok(Credential::Token(String::from_utf8_lossy(&t.0).trim().to_string())),
        None => Err(format!("Secret {:?} has neither key token nor jwt_key", spec.token_secret)),
    }
}

impl SlurmPools {
    /// Every pool's view now.
    pub fn views(&self) -> SlurmViews {
        self.views.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The client of a pool, once it has been reached.
    pub fn client(&self, pool: &str) -> Option<SlurmClient> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).get(pool).map(|c| c.0.clone())
    }

    /// Whether the last poll of `pool` listed a job carrying `key`.
    pub fn lists(&self, pool: &str, key: &str) -> bool {
        self.views
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(pool)
            .is_some_and(|v| v.jobs.contains_key(key))
    }

    /// Whether `pool` is a Slurm pool this operator polls.
    pub fn is_slurm(&self, pool: &str) -> bool {
        self.views.lock().unwrap_or_else(|p| p.into_inner()).contains_key(pool)
    }

    /// What a submission to `pool` on `node` needs: its client, its spec, and the node's GRES GPU type as Slurm
    /// spells it.
    pub fn target(&self, pool: &str, node: &str) -> Option<(SlurmClient, SlurmBackend, Option<String>)> {
        let (client, spec) = self.clients.lock().unwrap_or_else(|p| p.into_inner()).get(pool).cloned()?;
        let gpu_type = self
            .views
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(pool)
            .and_then(|v| v.nodes.iter().find(|n| n.name == node).and_then(|n| n.gpu_type.clone()));
        Some((client, spec, gpu_type))
    }

    /// Polls every Slurm pool every `interval`; wakes `changed` when a view changes.
    pub async fn run(
        self,
        client: kube::Client,
        namespace: String,
        pools: kube::runtime::reflector::Store<ComputePool>,
        changed: Arc<Notify>,
        interval: Duration,
    ) {
        let secrets: Api<Secret> = Api::namespaced(client, &namespace);
        let mut state: HashMap<String, Pool> = HashMap::new();
        loop {
            let mut views = SlurmViews::new();
            // Whether each pool answered last time, to log only changes.
            let before: HashMap<String, bool> = self
                .views
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(n, v)| (n.clone(), v.available.is_ok()))
                .collect();
            for p in pools.state() {
                let Some(spec) = p.spec.backend.slurm.clone() else { continue };
                let name = p.name_any();
                let view = self.poll(&secrets, &mut state, &name, spec).await;
                let was = before.get(&name).copied();
                match (&view.available, was) {
                    (Ok(()), Some(false) | None) => {
                        tracing::info!(pool = %name, nodes = view.nodes.len(), "Slurm pool available")
                    }
                    (Err(why), Some(true) | None) => {
                        tracing::warn!(pool = %name, %why, "Slurm pool unavailable")
                    }
                    _ => {}
                }
                views.insert(name, view);
            }
            state.retain(|name, _| views.contains_key(name));
            self.clients.lock().unwrap_or_else(|p| p.into_inner()).retain(|name, _| views.contains_key(name));
            let differs = {
                let mut v = self.views.lock().unwrap_or_else(|p| p.into_inner());
                let differs = *v != views;
                *v = views;
                differs
            };
            if differs {
                changed.notify_one();
            }
            tokio::time::sleep(interval).await;
        }
    }

    async fn poll(
        &self,
        secrets: &Api<Secret>,
        state: &mut HashMap<String, Pool>,
        name: &str,
        spec: SlurmBackend,
    ) -> SlurmView {
        let unavailable = |why: String| SlurmView {
            available: Err(why),
            nodes: Vec::new(),
            jobs: HashMap::new(),
            extra: Vec::new(),
            time_limit_min: None,
        };
        if state.get(name).is_none_or(|p| p.spec != spec) {
            let cred = match credential(secrets, &spec).await {
                Ok(c) => c,
                Err(why) => return unavailable(why),
            };
            let client = match SlurmClient::new(&spec.endpoint, &spec.user, cred) {
                Ok(c) => c.with_timeout(Duration::from_secs(10)),
                Err(e) => return unavailable(e.to_string()),
            };
            self.clients
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.to_string(), (client.clone(), spec.clone()));
            state.insert(
                name.into(),
                Pool {
                    spec: spec.clone(),
                    client,
                    last: None,
                    jobs: HashMap::new(),
                    last_update: 0,
                    polls: 0,
                },
            );
        }
        let Some(pool) = state.get_mut(name) else { return unavailable("no client".into()) };
        let stale = |pool: &Pool, why: String| match &pool.last {
            Some(last) => SlurmView { available: Err(why), ..last.clone() },
            None => unavailable(why),
        };
        let nodes = match pool.client.nodes().await {
            Ok(n) => n,
            Err(e) => {
                let view = stale(pool, e.to_string());
                if matches!(e, super::SlurmError::Unauthorized { .. }) {
                    state.remove(name); // read the Secret again: the token may have been rotated
                }
                return view;
            }
        };
        let time_limit_min = match pool.client.time_limit(&spec.partition).await {
            Ok(t) => t,
            Err(e) => {
                let view = stale(pool, e.to_string());
                if matches!(e, super::SlurmError::Unauthorized { .. }) {
                    state.remove(name); // read the Secret again: the token may have been rotated
                }
                return view;
            }
        };
        // Jobs changed since the last poll; every 30th poll lists all, so jobs Slurm forgot are dropped.
        let full = pool.polls % 30 == 0;
        let since = (!full).then_some(pool.last_update - 5);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        match pool.client.jobs(since).await {
            Ok(jobs) => {
                if full {
                    pool.jobs.clear();
                }
                for j in jobs {
                    pool.jobs.insert(j.id, j);
                }
                pool.last_update = now;
                pool.polls += 1;
            }
            Err(e) => {
                let view = stale(pool, e.to_string());
                if matches!(e, super::SlurmError::Unauthorized { .. }) {
                    state.remove(name); // read the Secret again: the token may have been rotated
                }
                return view;
            }
        }
        let nodes: Vec<SlurmNode> =
            nodes.into_iter().filter(|n| n.partitions.contains(&spec.partition)).collect();
        if nodes.is_empty() {
            return unavailable(format!("partition {:?} has no nodes", spec.partition));
        }
        // Ours: a key in the comment, in this pool's partition, run as this pool's user.
        let mut ours: Vec<&SlurmJob> = pool
            .jobs
            .values()
            .filter(|j| parse_key(&j.comment).is_some())
            .filter(|j| j.partition == spec.partition && (j.user.is_empty() || j.user == spec.user))
            .collect();
        ours.sort_by_key(|j| std::cmp::Reverse(j.id));
        let mut jobs: HashMap<String, SlurmJob> = HashMap::new();
        let mut extra = Vec::new();
        for j in ours {
            // A key Slurm lists twice: the newest job speaks for it; an older copy still running is cancelled.
            if jobs.contains_key(&j.comment) {
                extra.push(j.clone());
            } else {
                jobs.insert(j.comment.clone(), j.clone());
            }
        }
        let view = SlurmView { available: Ok(()), nodes, jobs, extra, time_limit_min };
        pool.last = Some(view.clone());
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_job_and_its_run() {
        let k = key("0b6c-uid", 2);
        assert_eq!(k, "haiyun:0b6c-uid:2");
        assert_eq!(parse_key(&k), Some(("0b6c-uid", 2)));
        assert_eq!(parse_key("someone else's comment"), None);
        assert_eq!(parse_key("haiyun:x:y"), None);
    }
}
