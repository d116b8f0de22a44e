//! `haiyun demo`: a whole federation in one process, without Kubernetes — simulated pools run through the operator's
//! own index, plan and reports, real agents on fake machines streaming over gRPC on loopback, five teams' queues,
//! a stream of jobs, the dashboard, and an API the CLI can use.

pub mod agents;
pub mod api;
pub mod chaos;
pub mod clock;
pub mod federation;
pub mod stream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haiyun_operator::dashboard::Snapshot;
use haiyun_operator::decision::DecisionLog;
use haiyun_operator::memory::{MemoryCluster, MemoryError};
use haiyun_scheduler::schedule::SchedulerConfig;

use crate::cluster::CliError;
use clock::Clock;

/// How the demo runs.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Where the dashboard and the demo's API listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Stop after this long, real time (e.g. `90s`, `10m`); default: until Ctrl-C.
    #[arg(long)]
    pub duration: Option<String>,
    /// Demo seconds per real second.
    #[arg(long, default_value_t = 60.0)]
    pub speed: f64,
    /// Jobs arriving per demo hour, on average.
    #[arg(long, default_value_t = 20.0)]
    pub jobs_per_hour: f64,
    /// Jobs submitted at the start.
    #[arg(long, default_value_t = 40)]
    pub initial_jobs: usize,
    /// Seed of the job stream and of what goes wrong.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The federation: ComputePools (simulated backends), Queues and Datasets in YAML; default: the built-in one.
    #[arg(long)]
    pub federation: Option<PathBuf>,
    /// Where to write the kubeconfig that points `haiyun` at the demo (default: a temporary directory).
    #[arg(long)]
    pub kubeconfig_out: Option<PathBuf>,
    /// Append the decision log (JSON lines) to this file.
    #[arg(long)]
    pub decision_log: Option<String>,
    /// The usage ledger: sqlite:///<file> or postgres://… (default: a SQLite file in the demo's temporary directory,
    /// gone when it stops). `haiyun report` reads it.
    #[arg(long)]
    pub ledger: Option<String>,
    /// Real seconds a node agent may be silent before its node is stale.
    #[arg(long, default_value_t = 10)]
    pub agent_grace_seconds: u64,
    /// Real milliseconds between scheduling cycles.
    #[arg(long, default_value_t = 1000)]
    pub tick_ms: u64,
}

impl DemoArgs {
    fn check(&self) -> Result<Option<Duration>, CliError> {
        if !(self.speed.is_finite() && self.speed > 0.0 && self.speed <= 100_000.0) {
            return Err(CliError::Input(format!(
                "--speed {}: give a number above 0 (at most 100000)",
                self.speed
            )));
        }
        if !(self.jobs_per_hour.is_finite() && self.jobs_per_hour >= 0.0) {
            return Err(CliError::Input(format!("--jobs-per-hour {}: give 0 or more", self.jobs_per_hour)));
        }
        if self.tick_ms == 0 {
            return Err(CliError::Input("--tick-ms 0: give at least 1".into()));
        }
        self.duration
            .as_deref()
            .map(|d| {
                haiyun_api::quantity::seconds(d).filter(|s| *s > 0).map(Duration::from_secs).ok_or_else(
                    || CliError::Input(format!("--duration {d:?}: write a duration such as 90s, 10m or 1h")),
                )
            })
            .transpose()
    }
}

/// Loads the federation and builds the simulated cluster at `now`.
fn build(args: &DemoArgs, now: f64) -> Result<(MemoryCluster, federation::Federation), CliError> {
    let fed = match &args.federation {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| CliError::Input(format!("--federation {}: {e}", p.display())))?;
            federation::parse(&text, &p.display().to_string())?
        }
        None => federation::parse(federation::DEFAULT, "the built-in federation")?,
    };
    if let Some(p) = fed.pools.iter().find(|p| p.spec.backend.simulated.is_none()) {
        return Err(CliError::Input(format!(
            "ComputePool {}: the demo runs simulated pools only; give it backend.simulated",
            p.metadata.name.as_deref().unwrap_or_default()
        )));
    }
    let log = DecisionLog::open(args.decision_log.as_deref()).map_err(|e| CliError::Start(e.to_string()))?;
    let mut cluster = MemoryCluster::new(SchedulerConfig::default(), log);
    let bad = |e: MemoryError| CliError::Input(e.to_string());
    for p in &fed.pools {
        cluster.add_pool(p.clone(), now).map_err(bad)?;
    }
    for q in &fed.queues {
        cluster.add_queue(q.clone(), now).map_err(bad)?;
    }
    for d in &fed.datasets {
        cluster.add_dataset(d.clone(), now).map_err(bad)?;
    }
    Ok((cluster, fed))
}

/// One progress line.
fn progress(clock: &Clock, s: &Snapshot) -> String {
    let (mut total, mut alloc, mut sick, mut unknown) = (0usize, 0.0f64, 0usize, 0usize);
    for g in s.nodes.iter().flat_map(|n| &n.gpus) {
        total += 1;
        alloc += g.allocated;
        sick += usize::from(g.health == "unhealthy");
        unknown += usize::from(g.health == "unknown");
    }
    let admitted: u32 = s.queues.values().map(|q| q.admitted).sum();
    let m = (clock.elapsed() / 60.0) as u64;
    format!(
        "[demo {:02}:{:02}] {admitted} jobs running, {} waiting; GPUs {alloc:.0}/{total} allocated, {sick} unhealthy, \
         {unknown} unknown",
        m / 60,
        m % 60,
        s.pending.len()
    )
}

/// Runs the demo until `--duration` passes or Ctrl-C.
pub fn run(args: DemoArgs) -> Result<(), CliError> {
    let limit = args.check()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Start(format!("the runtime: {e}")))?;
    rt.block_on(serve(args, limit))
}

async fn serve(args: DemoArgs, limit: Option<Duration>) -> Result<(), CliError> {
    let clock = Clock::new(args.speed);
    let (cluster, fed) = build(&args, clock.now())?;
    let dir = std::env::temp_dir().join(format!("haiyun-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| CliError::Start(format!("{}: {e}", dir.display())))?;
    let url = args.ledger.clone().unwrap_or_else(|| format!("sqlite://{}", dir.join("ledger.db").display()));
    let ledger = haiyun_operator::ledger::Ledger::open(&url, None)
        .await
        .map_err(|e| CliError::Start(e.to_string()))?;
    let metrics = Arc::new(haiyun_operator::metrics::Metrics::default());
    let cluster = Arc::new(Mutex::new(cluster.with_ledger(ledger.clone()).with_metrics(metrics.clone())));
    let grace = Duration::from_secs(args.agent_grace_seconds.max(1));
    let agents = agents::start(&fed.pools, &dir, grace).await?;
    let (board, watch) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    let shared = api::Shared { cluster: cluster.clone(), clock };
    metrics.add_fleet(agents.fleet.clone());
    metrics.set_ready(true);
    metrics.set_leader(true); // the demo's one operator leads
    // The dashboard's utilisation chart: a sample every 10 s of real time, the last hour.
    let history = haiyun_operator::history::History::new(Duration::from_secs(10));
    let (past, past_rx) = tokio::sync::watch::channel(Arc::new(history.clone()));
    tokio::spawn(haiyun_operator::history::keep(
        history,
        Duration::from_secs(3600),
        watch.clone(),
        past,
        None,
    ));
    let routes = api::routes(shared).merge(api::usage_routes(ledger.clone(), clock));
    let at = haiyun_operator::http::serve_with(args.addr, metrics.clone(), watch, past_rx, routes)
        .await
        .map_err(|e| CliError::Start(e.to_string().replace("--metrics-addr", "--addr")))?;
    let kubeconfig = args.kubeconfig_out.clone().unwrap_or_else(|| dir.join("kubeconfig"));
    std::fs::write(&kubeconfig, api::kubeconfig(at, "llm"))
        .map_err(|e| CliError::Start(format!("{}: {e}", kubeconfig.display())))?;
    println!(
        "Haiyun demo: {} pools, {} queues, {} node agents",
        fed.pools.len(),
        fed.queues.len(),
        agents.nodes.len()
    );
    println!("  dashboard:  http://{at}/");
    println!("  CLI:        haiyun --kubeconfig {} -n llm get jobs", kubeconfig.display());
    println!("  time runs {}x faster than real time; Ctrl-C stops it", args.speed);
    // The first placements wait (up to 5 s) for every agent's first report, so no GPU starts out unknown.
    for _ in 0..50 {
        let view = agents.fleet.view();
        let reported = |(n, g): (&String, &u32)| view.get(n).is_some_and(|v| v.gpus.len() == *g as usize);
        if agents.nodes.iter().all(reported) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut stream = stream::Stream::new(args.seed);
    let mut chaos = chaos::Chaos::new(args.seed);
    let mut next = clock.now();
    let mut backlog = args.initial_jobs;
    let mut last_line = -10.0;
    let mut tick = tokio::time::interval(Duration::from_millis(args.tick_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        if limit.is_some_and(|l| clock.real() >= l.as_secs_f64()) {
            break;
        }
        let now = clock.now();
        let mut c = cluster.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if backlog > 0 {
                backlog -= 1;
            } else if args.jobs_per_hour > 0.0 && next <= now {
                next += stream.gap(args.jobs_per_hour);
            } else {
                break;
            }
            match stream.next_job() {
                Ok(a) => {
                    if let Err(e) = c.submit(a.job, Some(a.work), now) {
                        eprintln!("warning: the demo's job was refused: {e}");
                    }
                }
                Err(e) => eprintln!("warning: the demo made a job it cannot read: {e}"),
            }
        }
        for line in chaos.tick(clock.real() as u64, now, &agents, &c.backend()) {
            println!("  {line}");
        }
        let snap = match c.cycle(Arc::new(agents.fleet.view()), now) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("warning: {e}; retrying next cycle");
                continue;
            }
        };
        drop(c);
        if let Ok(mut m) = agents.machines.lock() {
            m.allocated = snap
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.gpus.iter().map(|g| g.allocated).collect()))
                .collect();
        }
        if clock.real() - last_line >= 10.0 {
            last_line = clock.real();
            println!("{}", progress(&clock, &snap));
        }
        board.send_replace(Arc::new(snap));
    }
    println!("demo stopped after {:.0} s", clock.real());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
