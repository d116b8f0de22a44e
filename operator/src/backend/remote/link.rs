//! The link to one remote cluster: watches of its Nodes and of the pods this operator made there (renamed into the
//! federation's names as they arrive), and a heartbeat that says whether it answers. A cut link keeps what was last
//! seen, so the jobs running there keep their place.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use haiyun_api::ComputeJob;
use haiyun_api::pool::Autonomy;
use haiyun_scheduler::model::Time;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::grant::{self, Grant};
use super::{CLUSTER_LABEL, ORIGIN_LABEL, node_name, remote_name};
use crate::backend::kubernetes::fence::{Clock as NodeClock, NodeFences};

/// How often a link is checked, and how long it may go unanswered before it counts as down.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Between heartbeats (each waits at most this long for an answer).
    pub heartbeat: Duration,
    /// Unanswered this long, the cluster is down (unplaceable).
    pub grace: Duration,
    /// With policy `fenced`: the margin added for the clocks of the operator and the fence holder (and the holder's
    /// watch delay) before a fenced cluster's jobs are placed elsewhere.
    pub skew: Duration,
}

/// Whether a remote cluster answers, as its link last saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Not answered yet since the link was made.
    Connecting,
    /// Answering.
    Up,
    /// Not answering for longer than the grace, with the last error.
    Down(String),
}

#[derive(Debug)]
struct State {
    health: Health,
    last_ok: Option<Instant>,
    /// When it first stopped answering (unix seconds), while it does not answer.
    since: Option<Time>,
    /// When the fence Lease there was last renewed (or the link made).
    renewed: Instant,
    /// With autonomy: the capacity lease granted there, as last written (or read).
    grant: Option<Grant>,
}

/// One remote cluster's link; dropping it stops its watches.
pub struct Link {
    /// The pool it serves.
    pub pool: String,
    /// The kubeconfig text it was made from (a rotated Secret makes a new link).
    pub source: String,
    /// The client, to apply decisions there.
    pub client: Client,
    fence: Option<Duration>,
    namespaces: Arc<Mutex<std::collections::HashSet<String>>>,
    nodes: Store<Node>,
    pods: Store<Pod>,
    foreign: Store<Pod>,
    services: Store<Service>,
    /// The node fence Leases of its nodes' holders, and when each was last seen renewed.
    node_fences: (Store<Lease>, Arc<Mutex<NodeClock>>),
    skew: Duration,
    /// With autonomy: the site's own ComputeJobs.
    site_jobs: Option<Store<ComputeJob>>,
    autonomy: Option<Autonomy>,
    state: Arc<Mutex<State>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("pool", &self.pool).finish_non_exhaustive()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What a link shows one cycle.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Whether it answers.
    pub health: Health,
    /// When it first stopped answering (unix seconds), while it does not.
    pub since: Option<Time>,
    /// Whether its Nodes and pods have been listed at least once (else nothing of it is known).
    pub listed: bool,
    /// Its Nodes, named `<pool>/<node>`.
    pub nodes: Vec<Arc<Node>>,
    /// Our pods there, bound to `<pool>/<node>` and labelled with the pool.
    pub pods: Vec<Arc<Pod>>,
    /// The other pods there that have not ended (other schedulers' work holds its nodes too), renamed alike.
    pub foreign: Vec<Arc<Pod>>,
    /// Our Services there (a job's headless Service).
    pub services: Vec<Arc<Service>>,
    /// With policy `fenced`: the fence timeout, and how long ago the fence Lease there was last renewed.
    pub fence: Option<(Duration, Duration)>,
    /// Its nodes' fence holders' Leases, while it answers (a cut hides their renewals, which may go on).
    pub fences: NodeFences,
    /// Namespaces known to exist there (shared by every cycle's view of this link).
    pub namespaces: Arc<Mutex<std::collections::HashSet<String>>>,
    /// With autonomy: what the pool asks, and the capacity lease granted there as last written.
    pub autonomy: Option<(Autonomy, Option<Grant>)>,
    /// With autonomy: the site's own ComputeJobs (their usage is charged to the slice's queue).
    pub site_jobs: Vec<Arc<ComputeJob>>,
}

fn spawn<K>(
    api: Api<K>,
    config: watcher::Config,
    pool: String,
    changed: Arc<Notify>,
    rename: fn(&str, &mut K),
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let p = pool.clone();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(move |o: &mut K| rename(&p, o))
        .reflect(writer)
        .touched_objects();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => changed.notify_one(),
                Err(e) => {
                    tracing::debug!(%pool, kind = %K::kind(&Default::default()), error = %e, "remote watch failed; retrying")
                }
            }
        }
    });
    (store, task)
}

/// A remote Node as the federation names it: `<pool>/<node>`, labelled with its pool.
fn rename_node(pool: &str, n: &mut Node) {
    n.metadata.managed_fields = None;
    n.metadata.name = Some(node_name(pool, n.metadata.name.as_deref().unwrap_or_default()));
    n.metadata.labels.get_or_insert_with(Default::default).insert(CLUSTER_LABEL.into(), pool.into());
}

/// A site's ComputeJob as kept: without its field managers.
fn trim_job(_pool: &str, j: &mut ComputeJob) {
    j.metadata.managed_fields = None;
}

/// A remote Service as kept: without its field managers.
fn trim_service(_pool: &str, s: &mut Service) {
    s.metadata.managed_fields = None;
}

/// A node fence Lease as kept: without its field managers.
fn trim_lease(_pool: &str, l: &mut Lease) {
    l.metadata.managed_fields = None;
}

/// A remote pod as the federation sees it: bound to `<pool>/<node>`, labelled with its pool.
fn rename_pod(pool: &str, p: &mut Pod) {
    p.metadata.managed_fields = None;
    if let Some(spec) = p.spec.as_mut() {
        if let Some(n) = spec.node_name.as_mut() {
            *n = node_name(pool, n);
        }
    }
    p.metadata.labels.get_or_insert_with(Default::default).insert(CLUSTER_LABEL.into(), pool.into());
}

/// What a link is made for.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// The pool it serves.
    pub pool: &'a str,
    /// What it is made from (a change makes a new link).
    pub source: String,
    /// Labels of the Nodes that are the pool's.
    pub selector: &'a std::collections::BTreeMap<String, String>,
    /// The origin label of this operator's objects.
    pub origin: &'a str,
    /// When a cut began before this link (from the pool's status).
    pub since: Option<Time>,
    /// With policy `fenced`: the fence timeout; the heartbeat then renews the fence Lease there.
    pub fence: Option<Duration>,
    /// A capacity lease for the site; the heartbeat then keeps its grant there.
    pub autonomy: Option<Autonomy>,
    /// Where warnings about our pods there go (to be copied onto their jobs).
    pub warnings: tokio::sync::mpsc::UnboundedSender<super::events::Copied>,
}

impl Link {
    /// Starts watching the cluster behind `client` for the target pool: its Nodes matching the selector and the pods
    /// labelled with the origin (and, for what they hold, the others that have not ended).
    pub fn start(t: Target<'_>, client: Client, timing: Timing, changed: Arc<Notify>) -> Link {
        let pool = t.pool;
        let labels: Vec<String> = t.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut node_config = watcher::Config::default();
        if !labels.is_empty() {
            node_config = node_config.labels(&labels.join(","));
        }
        let (nodes, t1) =
            spawn(Api::all(client.clone()), node_config, pool.into(), changed.clone(), rename_node);
        let pod_config = watcher::Config::default().labels(&format!("{ORIGIN_LABEL}={}", t.origin));
        let (pods, t2) =
            spawn(Api::all(client.clone()), pod_config, pool.into(), changed.clone(), rename_pod);
        let foreign_config = watcher::Config::default()
            .labels(&format!("!{ORIGIN_LABEL}"))
            .fields("status.phase!=Succeeded,status.phase!=Failed");
        let (foreign, t4) =
            spawn(Api::all(client.clone()), foreign_config, pool.into(), changed.clone(), rename_pod);
        let ours = watcher::Config::default().labels(&format!("{ORIGIN_LABEL}={}", t.origin));
        let (services, t5) =
            spawn(Api::all(client.clone()), ours, pool.into(), changed.clone(), trim_service);
        let fence_config = watcher::Config::default().labels(crate::backend::kubernetes::fence::LABEL);
        let (leases, t6) =
            spawn(Api::all(client.clone()), fence_config, pool.into(), changed.clone(), trim_lease);
        let state = Arc::new(Mutex::new(State {
            health: Health::Connecting,
            last_ok: None,
            since: t.since,
            // Until this link renews the fence Lease, count from its start: an earlier operator may have renewed it
            // until then, never later.
            renewed: Instant::now(),
            grant: None,
        }));
        let mut tasks = vec![t1, t2, t4, t5, t6];
        tasks.push(super::events::watch(client.clone(), pods.clone(), pool.into(), t.warnings.clone()));
        let site_jobs = t.autonomy.as_ref().map(|_| {
            let (store, task) = spawn(
                Api::all(client.clone()),
                watcher::Config::default(),
                pool.into(),
                changed.clone(),
                trim_job,
            );
            tasks.push(task);
            store
        });
        let granter = Granter {
            name: grant::name(pool, t.origin),
            autonomy: t.autonomy.clone(),
            nodes: nodes.clone(),
            pods: pods.clone(),
            foreign: foreign.clone(),
            loaded: false,
            written: None,
        };
        let beat = Beat { pool: pool.into(), origin: t.origin.into(), fence: t.fence, timing, granter };
        tasks.push(tokio::spawn(heartbeat(beat, client.clone(), state.clone(), changed)));
        Link {
            pool: pool.into(),
            source: t.source,
            client,
            fence: t.fence,
            namespaces: Arc::default(),
            nodes,
            pods,
            foreign,
            services,
            node_fences: (leases, Arc::default()),
            skew: timing.skew,
            site_jobs,
            autonomy: t.autonomy,
            state,
            tasks,
        }
    }

    /// What it shows now.
    pub fn seen(&self) -> Seen {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let fences = if s.health == Health::Up {
            let mut clock = self.node_fences.1.lock().unwrap_or_else(|p| p.into_inner());
            let leases = self.node_fences.0.state();
            let pool = &self.pool;
            let silences = clock.silences(&leases, Instant::now(), |h| node_name(pool, h));
            NodeFences { silences, skew: self.skew }
        } else {
            NodeFences::default()
        };
        Seen {
            health: s.health.clone(),
            since: s.since,
            listed: self.nodes.wait_until_ready().now_or_never().is_some()
                && self.pods.wait_until_ready().now_or_never().is_some()
                && self.foreign.wait_until_ready().now_or_never().is_some(),
            nodes: self.nodes.state(),
            pods: self.pods.state(),
            foreign: self.foreign.state(),
            services: self.services.state(),
            fence: self.fence.map(|f| (f, s.renewed.elapsed())),
            fences,
            namespaces: self.namespaces.clone(),
            autonomy: self.autonomy.clone().map(|a| (a, s.grant.clone())),
            site_jobs: self.site_jobs.as_ref().map(Store::state).unwrap_or_default(),
        }
    }
}

/// What a heartbeat needs.
struct Beat {
    pool: String,
    origin: String,
    fence: Option<Duration>,
    timing: Timing,
    granter: Granter,
}

/// What keeps a site's capacity lease: the pool's ask and what the link sees of the site's GPUs.
struct Granter {
    name: String,
    autonomy: Option<Autonomy>,
    nodes: Store<Node>,
    pods: Store<Pod>,
    foreign: Store<Pod>,
    /// Whether the grant there has been read once (or, without autonomy, taken back).
    loaded: bool,
    /// When it was last written.
    written: Option<Instant>,
}

impl Granter {
    /// GPUs neither used nor granted, by the site's own node names (Ready, schedulable nodes only).
    fn free(
        &self,
        current: &std::collections::BTreeMap<String, u32>,
    ) -> std::collections::BTreeMap<String, u32> {
        use crate::index::pod::{holds_resources, pod_requests};
        let mut used: std::collections::HashMap<String, (u32, u32)> = std::collections::HashMap::new();
        for p in self.pods.state().iter().chain(self.foreign.state().iter()) {
            let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) else { continue };
            if !holds_resources(p) {
                continue;
            }
            let g = pod_requests(p).2;
            let site =
                !p.labels().contains_key(ORIGIN_LABEL) && p.labels().contains_key(haiyun_api::JOB_UID_LABEL);
            let e = used.entry(remote_name(node).to_string()).or_default();
            e.0 += g;
            e.1 += if site { g } else { 0 };
        }
        let mut free = std::collections::BTreeMap::new();
        for n in self.nodes.state().iter().filter(|n| crate::backend::kubernetes::nodes::usable(n)) {
            let name = remote_name(&n.name_any()).to_string();
            let count = crate::backend::kubernetes::nodes::gpu_count(n);
            let (all, site) = used.get(&name).copied().unwrap_or_default();
            let held = current.get(&name).copied().unwrap_or(0).saturating_sub(site);
            free.insert(name, count.saturating_sub(all).saturating_sub(held));
        }
        free
    }

    /// Keeps the grant there as the pool asks (a change is a new epoch); renews it now and then. Returns it.
    async fn keep(
        &mut self,
        client: &Client,
        origin: &str,
        current: Option<Grant>,
    ) -> Result<Option<Grant>, grant::GrantError> {
        let Some(a) = self.autonomy.clone() else {
            if !self.loaded {
                grant::remove(client, &self.name).await?;
                self.loaded = true;
            }
            return Ok(None);
        };
        let mut current = current;
        if !self.loaded {
            current = grant::read(client, &self.name).await?;
            self.loaded = true;
        }
        let listed = self.nodes.wait_until_ready().now_or_never().is_some()
            && self.pods.wait_until_ready().now_or_never().is_some()
            && self.foreign.wait_until_ready().now_or_never().is_some();
        if !listed {
            return Ok(current);
        }
        let had = current.as_ref().map(|g| g.nodes.clone()).unwrap_or_default();
        let nodes = grant::choose(&had, a.gpus, &self.free(&had));
        let changed = current
            .as_ref()
            .is_none_or(|g| g.nodes != nodes || g.queue != a.queue || g.seconds != a.seconds());
        let renew_every = Duration::from_secs(u64::from(a.seconds() / 6).max(1));
        if !changed && self.written.is_some_and(|w| w.elapsed() < renew_every) {
            return Ok(current);
        }
        let epoch = current.as_ref().map_or(1, |g| g.epoch + u32::from(changed));
        let g = Grant { queue: a.queue.clone(), epoch, nodes, seconds: a.seconds() };
        grant::write(client, &self.name, origin, &g).await?;
        self.written = Some(Instant::now());
        if changed {
            tracing::info!(grant = %self.name, epoch, gpus = g.gpus(), nodes = ?g.nodes, "capacity lease granted to the site");
        }
        Ok(Some(g))
    }
}

/// Asks the API server its version every heartbeat (with policy `fenced`, renews the fence Lease instead): an answer
/// marks the cluster up; no answer for longer than the grace marks it down, from the first unanswered heartbeat on.
async fn heartbeat(mut beat: Beat, client: Client, state: Arc<Mutex<State>>, changed: Arc<Notify>) {
    let (pool, timing) = (beat.pool.clone(), beat.timing);
    let mut first_miss: Option<Time> = None;
    loop {
        let call = async {
            match beat.fence {
                Some(d) => super::fence::renew(&client, &beat.origin, d).await.map_err(|e| e.to_string()),
                None => client.apiserver_version().await.map(|_| ()).map_err(|e| e.to_string()),
            }
        };
        let answer = tokio::time::timeout(timing.heartbeat, call).await;
        let error = match answer {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(format!("no answer within {} ms", timing.heartbeat.as_millis())),
        };
        let now = Instant::now();
        let flipped = {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            let before = s.health.clone();
            match error {
                None => {
                    first_miss = None;
                    s.last_ok = Some(now);
                    s.renewed = now;
                    s.since = None;
                    s.health = Health::Up;
                }
                Some(why) => {
                    let miss = *first_miss.get_or_insert_with(crate::time::now);
                    let overdue = s.last_ok.is_none_or(|t| now.duration_since(t) >= timing.grace);
                    if overdue {
                        s.since.get_or_insert(miss);
                        s.health = Health::Down(why);
                    }
                }
            }
            std::mem::discriminant(&before) != std::mem::discriminant(&s.health)
        };
        if flipped {
            let h = state.lock().unwrap_or_else(|p| p.into_inner()).health.clone();
            tracing::info!(%pool, health = ?h, "remote cluster link changed");
            changed.notify_one();
        }
        let up = state.lock().unwrap_or_else(|p| p.into_inner()).health == Health::Up;
        if up {
            // The grant changes only while the cluster answers.
            let current = state.lock().unwrap_or_else(|p| p.into_inner()).grant.clone();
            let kept =
                tokio::time::timeout(timing.heartbeat, beat.granter.keep(&client, &beat.origin, current))
                    .await;
            match kept {
                Ok(Ok(g)) => {
                    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                    if s.grant != g {
                        s.grant = g;
                        changed.notify_one();
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(%pool, error = %e, "cannot keep the site's capacity lease; retrying")
                }
                Err(_) => tracing::debug!(%pool, "keeping the site's capacity lease timed out; retrying"),
            }
        }
        tokio::time::sleep(timing.heartbeat).await;
    }
}
