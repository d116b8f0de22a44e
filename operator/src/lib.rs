//! Haiyun's Kubernetes operator: the index, the scheduling loop, the Kubernetes backend, leader election, metrics.

pub mod apply;
pub mod audit;
pub mod backend;
pub mod bench;
pub mod cycle;
pub mod dashboard;
pub mod decision;
pub mod energy;
pub mod engine;
pub mod fleet;
pub mod history;
pub mod http;
pub mod index;
pub mod lease;
pub mod ledger;
pub mod limit;
pub mod memory;
pub mod metrics;
pub mod plan;
pub mod report;
pub mod status;
pub mod telemetry;
pub mod time;
pub mod uninstall;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use haiyun_scheduler::schedule::SchedulerConfig;
use kube::runtime::events::{Recorder, Reporter};

/// How the operator runs.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// The kubeconfig (default: $KUBECONFIG, else ~/.kube/config, else the in-cluster config).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Namespace of the leader-election Lease (default: $POD_NAMESPACE, else `haiyun-system`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "haiyun-system")]
    pub namespace: String,
    /// This replica's identity in the Lease (default: $POD_NAME, else host name and process id).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Name of the Lease.
    #[arg(long, default_value = "haiyun-operator")]
    pub lease_name: String,
    /// Seconds a leader holds the Lease without renewing it.
    #[arg(long, default_value_t = 15)]
    pub lease_seconds: u64,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Seconds between samples of the dashboard's utilisation history.
    #[arg(long, default_value_t = 60)]
    pub history_interval_seconds: u64,
    /// Hours of utilisation history kept (in ConfigMap `<lease-name>-history`, so a new leader shows it too).
    #[arg(long, default_value_t = 6)]
    pub history_hours: u64,
    /// Append the decision log (JSON lines) to this file.
    #[arg(long)]
    pub decision_log: Option<String>,
    /// The usage ledger: `sqlite:///<file>` (one replica; the file on a persistent volume) or
    /// `postgres://<user>:<password>@<host>/<database>` (any number of replicas; the leader writes).
    #[arg(long, env = "HAIYUN_LEDGER")]
    pub ledger: Option<String>,
    /// Half-life of past usage in fair share (e.g. `7d`, `24h`): queues of equal priority are ordered by their decayed
    /// usage from the ledger over their weight (unset: by what they hold now).
    #[arg(long, env = "HAIYUN_USAGE_HALF_LIFE", value_parser = half_life)]
    pub usage_half_life: Option<f64>,
    /// Milliseconds between cycles when nothing changes.
    #[arg(long, default_value_t = 2000)]
    pub interval_ms: u64,
    /// Milliseconds to wait after a change before a cycle, to batch changes.
    #[arg(long, default_value_t = 50)]
    pub debounce_ms: u64,
    /// API operations in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Client-side limit on API requests per second (0: none), like kube-scheduler's --kube-api-qps: every request
    /// counts (reads, writes, events, the start of each watch).
    #[arg(long, default_value_t = 0.0)]
    pub kube_api_qps: f64,
    /// Burst above the limit.
    #[arg(long, default_value_t = 100)]
    pub kube_api_burst: u32,
    /// Send OpenTelemetry traces of scheduling cycles to this OTLP/HTTP endpoint (e.g. http://collector:4318).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Where node agents stream GPU telemetry (gRPC); only the leader listens.
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub telemetry_addr: SocketAddr,
    /// How agents prove their node: `tokenreview` (projected ServiceAccount tokens checked by the API server) or
    /// `file:<path>` (one `<node> <token>` per line, for agents outside a cluster).
    #[arg(long, default_value = "tokenreview")]
    pub agent_auth: String,
    /// The agents' ServiceAccount as `<namespace>/<name>` (with `tokenreview`).
    #[arg(long, default_value = "haiyun-system/haiyun-agent")]
    pub agent_service_account: String,
    /// Seconds a node's agent may be silent before the node is marked stale (its GPUs then take no new work;
    /// running work is never evicted for it).
    #[arg(long, default_value_t = 90)]
    pub agent_grace_seconds: u64,
    /// Milliseconds between polls of each Slurm pool (nodes, and jobs changed since the last poll).
    #[arg(long, default_value_t = 1000)]
    pub slurm_poll_ms: u64,
    /// Milliseconds between heartbeats to each remote cluster (each waits at most this long for an answer).
    #[arg(long, default_value_t = 2000)]
    pub remote_heartbeat_ms: u64,
    /// Seconds a remote cluster may go unanswered before its pool takes nothing new (its jobs keep their place).
    #[arg(long, default_value_t = 10)]
    pub remote_grace_seconds: u64,
    /// Seconds of margin for clock skew and watch delay before the jobs of a cut `fenced` cluster, or of a node its
    /// fence holder fenced, run elsewhere.
    #[arg(long, default_value_t = 5)]
    pub remote_skew_seconds: u64,
    /// Milliseconds between reads of the remote pools' kubeconfig Secrets (a rotated one takes effect then).
    #[arg(long, default_value_t = 5000)]
    pub remote_sync_ms: u64,
}

/// The label the leader puts on its own pod, so the telemetry Service reaches only the leader.
pub const LEADER_LABEL: &str = "haiyun.io/leader";

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No Kubernetes configuration.
    #[error("failed to configure a Kubernetes client (set KUBECONFIG or run in a cluster): {0}")]
    Config(#[source] kube::Error),
    /// Tracing could not be set up.
    #[error(transparent)]
    Telemetry(#[from] telemetry::TelemetryError),
    /// The async runtime could not start.
    #[error("failed to start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The HTTP server could not start.
    #[error(transparent)]
    Http(#[from] http::HttpError),
    /// The decision log could not be opened.
    #[error(transparent)]
    Log(#[from] decision::DecisionLogError),
    /// The scheduling loop stopped (a panic); exiting lets another replica lead.
    #[error("the scheduling loop stopped: {0}")]
    LoopEnded(String),
    /// The telemetry server could not start.
    #[error(transparent)]
    Fleet(#[from] fleet::server::ServerError),
    /// The agent authentication settings are wrong.
    #[error("--agent-auth: {0}")]
    AgentAuth(String),
    /// The lease was lost; another replica leads now.
    #[error("lost the leader lease {0}; exiting so that no two replicas bind")]
    LostLease(String),
}

/// Runs the operator (of release `version`) until it fails, loses the lease, or is told to stop (SIGTERM).
pub fn run(settings: Settings, version: &str) -> Result<(), RunError> {
    let telemetry = telemetry::init(settings.otlp_endpoint.as_deref())?;
    let rt = tokio::runtime::Runtime::new().map_err(RunError::Runtime)?;
    rt.block_on(serve(settings, version, telemetry.audit_logger()))
}

async fn serve(
    settings: Settings,
    version: &str,
    audit: Option<opentelemetry_sdk::logs::SdkLogger>,
) -> Result<(), RunError> {
    let stop = shutdown();
    tracing::info!(%version, "haiyun-operator starting");
    let limiter = limit::Limiter::new(settings.kube_api_qps, settings.kube_api_burst);
    let client = limited_client(settings.kubeconfig.as_deref(), limiter).await?;
    let identity = settings.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let remotes = remotes_for(&settings);
    let auth = agent_auth(&settings, &client, &remotes)?;
    let pod = std::env::var("POD_NAME").ok();
    if let Some(pod) = &pod {
        label_leader(&client, &settings.namespace, pod, false).await;
    }
    let metrics = Arc::new(metrics::Metrics::default());
    let (board, board_rx) = tokio::sync::watch::channel(Arc::new(dashboard::Snapshot::default()));
    let empty = history::History::new(Duration::from_secs(settings.history_interval_seconds.max(1)));
    let (past, past_rx) = tokio::sync::watch::channel(Arc::new(empty.clone()));
    let ledger: ledger::api::Slot = Default::default();
    let usage = ledger::api::routes(ledger.clone(), settings.ledger.is_some(), Arc::new(time::now));
    let addr =
        http::serve_with(settings.metrics_addr, metrics.clone(), board_rx.clone(), past_rx, usage).await?;
    tracing::info!(%addr, %identity, "serving the dashboard, /metrics, /healthz and /readyz");
    let log = decision::DecisionLog::open(settings.decision_log.as_deref())?.exporting(audit);
    let stores = watch::Stores::start(&client);
    stores.ready().await;
    metrics.set_ready(true);
    tracing::info!("caches synced");

    // The lease renews on a client of its own, so that a renewal never waits for a token behind a busy cycle's
    // writes in the shared limit.
    let lease_client =
        limited_client(settings.kubeconfig.as_deref(), limit::Limiter::new(LEASE_QPS, LEASE_BURST)).await?;
    let elector = lease::Elector::new(
        lease_client,
        &settings.namespace,
        &settings.lease_name,
        &identity,
        Duration::from_secs(settings.lease_seconds.max(3)),
    );
    let mut waiting = stop.clone();
    tokio::select! {
        () = lead(&elector, &settings) => {}
        _ = waiting.wait_for(|stop| *stop) => {
            tracing::info!("stopping (SIGTERM) while following");
            return Ok(());
        }
    }
    metrics.set_leader(true);
    tracing::info!(lease = %settings.lease_name, "became the leader");

    let fleet = Arc::new(fleet::Fleet::new(
        Duration::from_secs(settings.agent_grace_seconds.max(1)),
        stores.changed.clone(),
    ));
    metrics.add_fleet(fleet.clone());
    let at = fleet::server::serve(settings.telemetry_addr, fleet::server::Service::new(fleet.clone(), auth))
        .await?;
    tracing::info!(addr = %at, "serving agent telemetry");
    tokio::spawn(fleet::conditions::run(client.clone(), fleet.clone(), remotes.clone()));
    let store =
        history::Store::new(client.clone(), &settings.namespace, &format!("{}-history", settings.lease_name));
    let span = Duration::from_secs(settings.history_hours.max(1) * 3600);
    tokio::spawn(history::keep(empty, span, board_rx, past, Some(store)));
    if let Some(pod) = &pod {
        label_leader(&client, &settings.namespace, pod, true).await;
    }
    if let Some(url) = settings.ledger.clone() {
        tokio::spawn(connect_ledger(url, settings.usage_half_life, ledger.clone()));
    }
    let engine = engine_for(
        &settings,
        &client,
        &identity,
        (stores, remotes),
        fleet,
        engine::Sinks {
            log,
            metrics: metrics.clone(),
            board,
            ledger: settings.ledger.as_ref().map(|_| ledger),
        },
    );
    let loop_task = tokio::spawn(engine.run(stop.clone(), DRAIN));
    let ended = hold(&elector, &settings, loop_task, &stop).await;
    metrics.set_leader(false);
    if ended.is_ok() {
        if let Some(pod) = &pod {
            label_leader(&client, &settings.namespace, pod, false).await;
        }
        match elector.release().await {
            Ok(_) => tracing::info!(lease = %settings.lease_name, "stopped (SIGTERM) and gave the lease up"),
            Err(e) => tracing::warn!(error = %e, "stopped (SIGTERM); the lease expires on its own"),
        }
    }
    ended
}

/// Connects to the usage ledger at `url`, trying again every 5 s until it answers; the cycle records runs from then on
/// (the runs that started or ended before are reconciled then).
async fn connect_ledger(url: String, half_life: Option<f64>, slot: ledger::api::Slot) {
    loop {
        match ledger::Ledger::open(&url, half_life).await {
            Ok(l) => {
                tracing::info!("usage ledger connected");
                let _ = slot.set(l);
                return;
            }
            Err(e) => tracing::warn!(error = %e, "failed to open the usage ledger; retrying in 5 s"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// A half-life: a duration such as `7d`, `24h` or `90m`.
fn half_life(s: &str) -> Result<f64, String> {
    haiyun_api::quantity::seconds(s)
        .filter(|v| *v > 0)
        .map(|v| v as f64)
        .ok_or_else(|| format!("{s:?} is not a duration: write one such as 7d, 24h or 90m"))
}

/// How long a stopping leader waits for its writes in flight (the pod's grace period is 30 s by default).
const DRAIN: Duration = Duration::from_secs(10);
/// The lease client's own limit: a renewal every third of the lease, and a read before each.
const LEASE_QPS: f64 = 5.0;
const LEASE_BURST: u32 = 10;

/// Turns true on SIGTERM or Ctrl-C. A process that is PID 1 in its container is not stopped by SIGTERM without a
/// handler: without this the kubelet would wait out the grace period and kill a leader that still binds.
pub fn shutdown() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    tokio::spawn(async move {
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot catch SIGTERM; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        let _ = tx.send(true);
    });
    rx
}

/// A client from the kubeconfig at `path`, else the default configuration (`KUBECONFIG`, ~/.kube/config, or the
/// pod's service account in a cluster).
pub async fn client(path: Option<&std::path::Path>) -> Result<kube::Client, RunError> {
    limited_client(path, limit::Limiter::new(0.0, 1)).await
}

/// Like [`client`], with every request held to `limiter` (none when it has no rate).
pub async fn limited_client(
    path: Option<&std::path::Path>,
    limiter: limit::Limiter,
) -> Result<kube::Client, RunError> {
    let config = match path {
        None => kube::Config::infer().await.map_err(|e| RunError::Config(kube::Error::InferConfig(e)))?,
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| RunError::Config(e.into()))?;
            let options = kube::config::KubeConfigOptions::default();
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| RunError::Config(e.into()))?
        }
    };
    let builder = kube::client::ClientBuilder::try_from(config).map_err(RunError::Config)?;
    if !limiter.limits() {
        return Ok(builder.build());
    }
    Ok(builder.with_layer(&limit::LimitLayer::new(limiter)).build())
}

/// Waits until this replica holds the lease.
async fn lead(elector: &lease::Elector, settings: &Settings) {
    let period = Duration::from_secs(settings.lease_seconds.max(3)) / 3;
    loop {
        match tokio::time::timeout(period, elector.try_acquire()).await {
            Ok(Ok(true)) => return,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "leader election failed; retrying"),
            Err(_) => tracing::warn!("leader election timed out; retrying"),
        }
        tokio::time::sleep(period).await;
    }
}

/// The scheduling loop: the Slurm poller, the applier and the engine over this cluster and its Slurm pools.
fn engine_for(
    settings: &Settings,
    client: &kube::Client,
    identity: &str,
    (stores, remotes): (watch::Stores, backend::remote::Remotes),
    fleet: Arc<fleet::Fleet>,
    sinks: engine::Sinks,
) -> engine::Engine {
    let reporter = Reporter { controller: "haiyun-operator".into(), instance: Some(identity.to_string()) };
    let (outcomes, outcomes_rx) = tokio::sync::mpsc::unbounded_channel();
    let slurm = backend::slurm::SlurmPools::default();
    tokio::spawn(slurm.clone().run(
        client.clone(),
        settings.namespace.clone(),
        stores.pools(),
        stores.changed.clone(),
        Duration::from_millis(settings.slurm_poll_ms.max(100)),
    ));
    tokio::spawn(remotes.clone().run(
        client.clone(),
        settings.namespace.clone(),
        stores.pools(),
        stores.changed.clone(),
        Duration::from_millis(settings.remote_sync_ms.max(100)),
    ));
    let parts = apply::Parts {
        recorder: Recorder::new(client.clone(), reporter),
        concurrency: settings.concurrency,
        metrics: sinks.metrics.clone(),
        outcomes,
        log: sinks.log.clone(),
    };
    let applier = apply::Applier::new(client.clone(), parts);
    let config = engine::EngineConfig {
        scheduler: SchedulerConfig {
            usage_half_life_s: settings.usage_half_life,
            ..SchedulerConfig::default()
        },
        interval: Duration::from_millis(settings.interval_ms.max(10)),
        debounce: Duration::from_millis(settings.debounce_ms),
        skew: Duration::from_secs(settings.remote_skew_seconds),
    };
    engine::Engine::new(stores, applier, config, sinks, outcomes_rx, fleet, client.clone(), (slurm, remotes))
}

/// Renews the lease while the loop runs; returns why this replica stops leading (`Ok` when told to stop).
async fn hold(
    elector: &lease::Elector,
    settings: &Settings,
    mut loop_task: tokio::task::JoinHandle<()>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<(), RunError> {
    let period = Duration::from_secs(settings.lease_seconds.max(3)) / 3;
    let mut last_renew = tokio::time::Instant::now();
    let deadline = Duration::from_secs(settings.lease_seconds.max(3)) * 2 / 3;
    loop {
        tokio::select! {
            ended = &mut loop_task => {
                if ended.is_ok() && *stop.borrow() {
                    return Ok(());
                }
                return Err(RunError::LoopEnded(ended.err().map(|e| e.to_string()).unwrap_or_default()));
            }
            () = tokio::time::sleep(period) => {}
        }
        // A renewal that hangs must not outlive the lease: give up at the deadline.
        let left = deadline.saturating_sub(last_renew.elapsed());
        match tokio::time::timeout(left, elector.try_acquire()).await {
            Ok(Ok(true)) => last_renew = tokio::time::Instant::now(),
            Ok(Ok(false)) => break,
            Ok(Err(e)) => tracing::warn!(error = %e, "failed to renew the lease"),
            Err(_) => tracing::warn!("renewing the lease timed out"),
        }
        if last_renew.elapsed() >= deadline {
            break;
        }
    }
    loop_task.abort();
    Err(RunError::LostLease(settings.lease_name.clone()))
}

/// The links to the remote pools' clusters (none yet; the engine keeps them in step with the pools).
fn remotes_for(settings: &Settings) -> backend::remote::Remotes {
    let timing = backend::remote::Timing {
        heartbeat: Duration::from_millis(settings.remote_heartbeat_ms.max(100)),
        grace: Duration::from_secs(settings.remote_grace_seconds),
        skew: Duration::from_secs(settings.remote_skew_seconds),
    };
    let origin = backend::remote::links::origin(&settings.lease_name, &settings.namespace);
    backend::remote::Remotes::new(origin, timing)
}

/// How agents prove their node: TokenReview by the API server of the node's cluster (this one, or a remote pool's
/// for an agent that reports as `<pool>/<node>`), or a token file.
fn agent_auth(
    settings: &Settings,
    client: &kube::Client,
    remotes: &backend::remote::Remotes,
) -> Result<fleet::auth::Authenticator, RunError> {
    if let Some(path) = settings.agent_auth.strip_prefix("file:") {
        return fleet::auth::Authenticator::from_file(std::path::Path::new(path))
            .map_err(|e| RunError::AgentAuth(e.to_string()));
    }
    if settings.agent_auth != "tokenreview" {
        return Err(RunError::AgentAuth(format!(
            "{:?} is not a method: use tokenreview or file:<path>",
            settings.agent_auth
        )));
    }
    let Some((ns, name)) = settings.agent_service_account.split_once('/') else {
        return Err(RunError::AgentAuth(format!(
            "--agent-service-account {:?} is not <namespace>/<name>",
            settings.agent_service_account
        )));
    };
    Ok(fleet::auth::Authenticator::TokenReview {
        client: client.clone(),
        service_account: format!("system:serviceaccount:{ns}:{name}"),
        remotes: Some(remotes.clone()),
    })
}

/// Marks this replica's pod as the leader (or not), so the telemetry Service selects only the leader.
async fn label_leader(client: &kube::Client, namespace: &str, pod: &str, leader: bool) {
    let api: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({"metadata": {"labels": {LEADER_LABEL: leader.to_string()}}});
    let params = kube::api::PatchParams::default();
    if let Err(e) = api.patch(pod, &params, &kube::api::Patch::Merge(&patch)).await {
        tracing::warn!(%pod, error = %e, "failed to label this replica's pod; agents may not reach the leader");
    }
}
