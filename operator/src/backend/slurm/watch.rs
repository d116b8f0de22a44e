//! What each Slurm pool looks like, polled from slurmrestd: its nodes, the jobs it lists (by our idempotency key),
//! and whether it answers. A pool that does not answer is unavailable; it comes back by itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use haiyun_api::ComputePool;
use haiyun_api::pool::SlurmBackend;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use tokio::sync::Notify;

use super::{Credential, SlurmClient, SlurmJob, SlurmNode};

/// A pool as last polled.
#[derive(Debug, Clone, PartialEq)]
pub struct SlurmView {
    /// Whether the pool answered its last poll.
    pub available: Availability,
    /// Its nodes (in its partition).
    pub nodes: Vec<SlurmNode>,
    /// Jobs Slurm lists, by the key in their comment (only ours carry one).
    pub jobs: HashMap<String, SlurmJob>,
    /// Older jobs carrying a key a newer job carries too (a submission made twice): they are cancelled.
    pub extra: Vec<SlurmJob>,
    /// The partition's longest time limit, minutes (`None`: unlimited).
    pub time_limit_min: Option<u32>,
}

/// Whether a Slurm pool answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// It answered the last poll.
    Answering,
    /// It cannot be used now, with why (unreachable, no credential, refused…).
    Down(String),
}

impl Availability {
    /// Whether it answers.
    pub fn is_up(&self) -> bool {
        matches!(self, Availability::Answering)
    }
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

/// The Slurm pools: clients and views, shared by the poller, the cycle (through a frozen view) and the applier,
/// with what this process submitted and what Slurm refused.
#[derive(Clone, Default)]
pub struct SlurmPools {
    views: Arc<Mutex<SlurmViews>>,
    clients: Arc<Mutex<HashMap<String, (SlurmClient, SlurmBackend)>>>,
    /// Jobs whose submission was refused: when to try again, and how many refusals so far.
    refused: Arc<Mutex<HashMap<String, (Instant, u32)>>>,
    /// Slurm jobs this process submitted, by key, with when (a run is submitted once).
    submitted: Arc<Mutex<HashMap<String, (u32, Instant)>>>,
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
    /// The backend for one cycle: these pools, seen as they are now.
    pub fn backend(&self) -> super::SlurmBackend {
        super::SlurmBackend::new(self.clone(), Arc::new(self.views()))
    }

    /// When this process submitted the run `key`, if it did.
    pub fn submitted_at(&self, key: &str) -> Option<Instant> {
        self.submitted.lock().unwrap_or_else(|p| p.into_inner()).get(key).map(|s| s.1)
    }

    /// When the job `uid` may be submitted again after refusals, and how many there were.
    pub fn refused(&self, uid: &str) -> Option<(Instant, u32)> {
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).get(uid).copied()
    }

    /// Records a refusal of the job `uid`: the next try waits 2 s, doubling to a minute. Returns refusals so far.
    pub fn refuse(&self, uid: &str) -> u32 {
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        let n = refused.get(uid).map_or(0, |r| r.1) + 1;
        let wait = Duration::from_secs(1 << n.min(6)).min(Duration::from_secs(60));
        refused.insert(uid.to_string(), (Instant::now() + wait, n));
        n
    }

    /// Records an accepted submission of run `key` of the job `uid` as Slurm job `id` (at most `keep` are kept).
    pub fn accepted(&self, uid: &str, key: &str, id: u32, keep: usize) {
        self.forgive(uid);
        let mut submitted = self.submitted.lock().unwrap_or_else(|p| p.into_inner());
        if submitted.len() >= keep {
            submitted.clear();
        }
        submitted.insert(key.to_string(), (id, Instant::now()));
    }

    /// Forgets the refusals of the job `uid`.
    pub fn forgive(&self, uid: &str) {
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
    }

    /// Forgets refusals of jobs that are gone.
    pub fn forget_gone(&self, live: &std::collections::HashSet<String>) {
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).retain(|uid, _| live.contains(uid));
    }

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
                .map(|(n, v)| (n.clone(), v.available.is_up()))
                .collect();
            for p in pools.state() {
                let Some(spec) = p.spec.backend.slurm.clone() else { continue };
                let name = p.name_any();
                let view = self.poll(&secrets, &mut state, &name, spec).await;
                let was = before.get(&name).copied();
                match (&view.available, was) {
                    (Availability::Answering, Some(false) | None) => {
                        tracing::info!(pool = %name, nodes = view.nodes.len(), "Slurm pool available")
                    }
                    (Availability::Down(why), Some(true) | None) => {
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

    /// One poll of a pool: its client (made again when its spec changed or its token was refused), then its nodes,
    /// time limit and jobs. A pool that stops answering keeps its last view, marked down.
    async fn poll(
        &self,
        secrets: &Api<Secret>,
        state: &mut HashMap<String, Pool>,
        name: &str,
        spec: SlurmBackend,
    ) -> SlurmView {
        if state.get(name).is_none_or(|p| p.spec != spec) {
            match connect(secrets, &spec).await {
                Ok(client) => {
                    self.clients
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(name.to_string(), (client.clone(), spec.clone()));
                    state.insert(name.into(), Pool::new(spec.clone(), client));
                }
                Err(why) => return SlurmView::down(why),
            }
        }
        let Some(pool) = state.get_mut(name) else { return SlurmView::down("no client".into()) };
        match pool.read(&spec).await {
            Ok(view) => view,
            Err(e) => {
                let view = match &pool.last {
                    Some(last) => SlurmView { available: Availability::Down(e.to_string()), ..last.clone() },
                    None => SlurmView::down(e.to_string()),
                };
                if matches!(e, super::SlurmError::Unauthorized { .. }) {
                    state.remove(name); // read the Secret again: the token may have been rotated
                }
                view
            }
        }
    }
}

/// A client for a pool, with its credential from its Secret.
async fn connect(secrets: &Api<Secret>, spec: &SlurmBackend) -> Result<SlurmClient, String> {
    let cred = credential(secrets, spec).await?;
    let client = SlurmClient::new(&spec.endpoint, &spec.user, cred).map_err(|e| e.to_string())?;
    Ok(client.with_timeout(Duration::from_secs(10)))
}

impl SlurmView {
    /// The view of a pool that cannot be used, with why.
    fn down(why: String) -> Self {
        SlurmView {
            available: Availability::Down(why),
            nodes: Vec::new(),
            jobs: HashMap::new(),
            extra: Vec::new(),
            time_limit_min: None,
        }
    }
}

impl Pool {
    fn new(spec: SlurmBackend, client: SlurmClient) -> Self {
        Pool { spec, client, last: None, jobs: HashMap::new(), last_update: 0, polls: 0 }
    }

    /// Reads the pool's nodes, time limit and jobs (those changed since the last poll; every 30th poll lists all,
    /// so jobs Slurm forgot are dropped), and remembers the view.
    async fn read(&mut self, spec: &SlurmBackend) -> Result<SlurmView, super::SlurmError> {
        let nodes = self.client.nodes().await?;
        let time_limit_min = self.client.time_limit(&spec.partition).await?;
        let full = self.polls % 30 == 0;
        let since = (!full).then_some(self.last_update - 5);
        let now = crate::time::now_ms() / 1000;
        let jobs = self.client.jobs(since).await?;
        if full {
            self.jobs.clear();
        }
        for j in jobs {
            self.jobs.insert(j.id, j);
        }
        self.last_update = now;
        self.polls += 1;
        let nodes: Vec<SlurmNode> =
            nodes.into_iter().filter(|n| n.partitions.contains(&spec.partition)).collect();
        if nodes.is_empty() {
            return Ok(SlurmView::down(format!("partition {:?} has no nodes", spec.partition)));
        }
        let (jobs, extra) = self.ours(spec);
        let view = SlurmView { available: Availability::Answering, nodes, jobs, extra, time_limit_min };
        self.last = Some(view.clone());
        Ok(view)
    }

    /// Our jobs (a key in the comment, in this pool's partition, run as this pool's user) by key; where Slurm lists
    /// a key twice, the newest job speaks for it and older copies are extra (cancelled while they run).
    fn ours(&self, spec: &SlurmBackend) -> (HashMap<String, SlurmJob>, Vec<SlurmJob>) {
        let mut ours: Vec<&SlurmJob> = self
            .jobs
            .values()
            .filter(|j| parse_key(&j.comment).is_some())
            .filter(|j| j.partition == spec.partition && (j.user.is_empty() || j.user == spec.user))
            .collect();
        ours.sort_by_key(|j| std::cmp::Reverse(j.id));
        let mut jobs: HashMap<String, SlurmJob> = HashMap::new();
        let mut extra = Vec::new();
        for j in ours {
            if jobs.contains_key(&j.comment) {
                extra.push(j.clone());
            } else {
                jobs.insert(j.comment.clone(), j.clone());
            }
        }
        (jobs, extra)
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
