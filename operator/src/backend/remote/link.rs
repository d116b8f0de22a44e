//! The link to one remote cluster: watches of its Nodes and of the pods this operator made there (renamed into the
//! federation's names as they arrive), and a heartbeat that says whether it answers. A cut link keeps what was last
//! seen, so the jobs running there keep their place.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use haiyun_scheduler::model::Time;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{CLUSTER_LABEL, ORIGIN_LABEL, node_name};

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
    /// Namespaces known to exist there (shared by every cycle's view of this link).
    pub namespaces: Arc<Mutex<std::collections::HashSet<String>>>,
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

/// A remote Service as kept: without its field managers.
fn trim_service(_pool: &str, s: &mut Service) {
    s.metadata.managed_fields = None;
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
        let state = Arc::new(Mutex::new(State {
            health: Health::Connecting,
            last_ok: None,
            since: t.since,
            // Until this link renews the fence Lease, count from its start: an earlier operator may have renewed it
            // until then, never later.
            renewed: Instant::now(),
        }));
        let beat = Beat { pool: pool.into(), origin: t.origin.into(), fence: t.fence, timing };
        let t3 = tokio::spawn(heartbeat(beat, client.clone(), state.clone(), changed));
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
            state,
            tasks: vec![t1, t2, t3, t4, t5],
        }
    }

    /// What it shows now.
    pub fn seen(&self) -> Seen {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
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
            namespaces: self.namespaces.clone(),
        }
    }
}

/// What a heartbeat needs.
struct Beat {
    pool: String,
    origin: String,
    fence: Option<Duration>,
    timing: Timing,
}

/// Asks the API server its version every heartbeat (with policy `fenced`, renews the fence Lease instead): an answer
/// marks the cluster up; no answer for longer than the grace marks it down, from the first unanswered heartbeat on.
async fn heartbeat(beat: Beat, client: Client, state: Arc<Mutex<State>>, changed: Arc<Notify>) {
    let (pool, timing) = (beat.pool.as_str(), beat.timing);
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
        tokio::time::sleep(timing.heartbeat).await;
    }
}
