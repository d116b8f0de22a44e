//! The operator's shell around the cycle: on every change and on a timer it reads the watch caches, the agents'
//! reports and the backends, runs one cycle, and hands its actions to the applier. It never waits on the API
//! server.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use haiyun_scheduler::schedule::SchedulerConfig;
use kube::ResourceExt;

use crate::apply::Applier;
use crate::backend::kubernetes::KubernetesBackend;
use crate::backend::remote::Remotes;
use crate::backend::slurm::SlurmPools;
use crate::backend::{Backends, PoolBackend};
use crate::cycle::{self, Memory};
use crate::decision::DecisionLog;
use crate::fleet::{Fleet, FleetView};
use crate::metrics::Metrics;
use crate::time::now;
use crate::watch::Stores;

/// The loop's settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Core settings.
    pub scheduler: SchedulerConfig,
    /// Cycle at least this often.
    pub interval: Duration,
    /// Wait this long after a change to batch the next ones.
    pub debounce: Duration,
    /// Margin for clock skew and watch delay before the jobs of a node its fence holder fenced run elsewhere.
    pub skew: Duration,
}

/// Where a cycle's results go besides the applier.
#[derive(Debug)]
pub struct Sinks {
    /// The decision log.
    pub log: DecisionLog,
    /// Counters and gauges.
    pub metrics: Arc<Metrics>,
    /// The dashboard's latest snapshot.
    pub board: crate::dashboard::Board,
    /// The usage ledger, when one is configured (empty until it connects: no cycle runs before, so that no run
    /// starts and ends unrecorded).
    pub ledger: Option<crate::ledger::api::Slot>,
}

/// The scheduling loop.
#[derive(Debug)]
pub struct Engine {
    stores: Stores,
    applier: Applier,
    config: EngineConfig,
    memory: Memory,
    sinks: Sinks,
    outcomes: tokio::sync::mpsc::UnboundedReceiver<crate::index::Outcome>,
    fleet: Arc<Fleet>,
    kubernetes: KubernetesBackend,
    slurm: SlurmPools,
    remotes: Remotes,
    grants: crate::backend::remote::grant::Clock,
    node_fences: crate::backend::kubernetes::fence::Clock,
}

impl Engine {
    /// A loop over `stores`, applying through `applier` to this cluster (`client`), the Slurm pools and the remote clusters.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stores: Stores,
        applier: Applier,
        config: EngineConfig,
        sinks: Sinks,
        outcomes: tokio::sync::mpsc::UnboundedReceiver<crate::index::Outcome>,
        fleet: Arc<Fleet>,
        client: kube::Client,
        (slurm, remotes): (SlurmPools, Remotes),
    ) -> Self {
        Engine {
            stores,
            applier,
            config,
            memory: Memory::default(),
            sinks,
            outcomes,
            fleet,
            kubernetes: KubernetesBackend::new(client),
            slurm,
            remotes,
            grants: Default::default(),
            node_fences: Default::default(),
        }
    }

    /// Runs cycles until `stop` turns true, then waits (at most `drain`) for the writes in flight to end, so that
    /// whoever leads next reads a cluster this replica no longer changes. It must run on a multi-thread runtime:
    /// each cycle runs in `block_in_place` (which panics on a current-thread one), so the lease and the watches go
    /// on while a long cycle decides.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>, drain: Duration) {
        while !*stop.borrow() {
            tokio::select! {
                _ = tokio::time::timeout(self.config.interval, self.stores.changed.notified()) => {}
                _ = stop.changed() => break,
            }
            tokio::time::sleep(self.config.debounce).await;
            if *stop.borrow() {
                break;
            }
            // A first cycle over 100 000 jobs takes seconds: off the runtime's workers, so that lease renewals and
            // the applier's writes go on meanwhile.
            tokio::task::block_in_place(|| self.cycle_once());
        }
        let deadline = tokio::time::Instant::now() + drain;
        while !self.applier.idle() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !self.applier.idle() {
            tracing::warn!(objects = ?self.applier.busy(), "stopping with writes still in flight");
        }
        if let Some(l) = self.sinks.ledger.as_ref().and_then(|s| s.get()) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !l.flush(left.max(Duration::from_secs(1))).await {
                tracing::warn!("stopping with usage records not written; the next leader reconciles them");
            }
        }
    }

    /// One cycle: read everything, run the cycle, log, publish and hand out the actions.
    pub fn cycle_once(&mut self) {
        let span = tracing::info_span!(
            "scheduling_cycle",
            jobs = tracing::field::Empty,
            actions = tracing::field::Empty
        );
        let _entered = span.enter();
        let mut objects = self.stores.objects();
        let remote = self.remotes.backend();
        remote.merge(&mut objects);
        let fleet: FleetView = self.fleet.view();
        while let Ok(o) = self.outcomes.try_recv() {
            self.memory.overlay.record(&o);
        }
        let live: HashSet<String> = objects.jobs.iter().filter_map(|j| j.uid()).collect();
        self.slurm.forget_gone(&live);
        let at = Instant::now();
        let fences = crate::backend::kubernetes::fence::NodeFences {
            silences: self.node_fences.silences(&objects.node_fences, at, str::to_string),
            skew: self.config.skew,
        };
        let backends = Arc::new(Backends::new(vec![
            Arc::new(
                self.kubernetes
                    .with_leases(self.grants.live(&objects.grants, at), fences)
                    .with_seen(crate::backend::kubernetes::pods::Seen::of(&objects.slices, &objects.pods)),
            ) as Arc<dyn PoolBackend>,
            Arc::new(self.slurm.backend()),
            Arc::new(remote),
        ]));
        if let Some(slot) = &self.sinks.ledger
            && self.memory.runs.is_none()
        {
            self.memory.runs = slot.get().and_then(|l| l.take_open());
            if self.memory.runs.is_none() {
                tracing::info!("waiting for the usage ledger before scheduling");
                return;
            }
        }
        let busy = self.applier.busy();
        let started = Instant::now();
        let input = cycle::Input {
            objects: &objects,
            fleet: &fleet,
            backends: &backends,
            busy: &busy,
            config: self.config.scheduler,
            now: now(),
        };
        let at = input.now;
        let out = match cycle::run(&input, &mut self.memory) {
            Ok(out) => out,
            Err(e) => {
                tracing::error!(error = %e, "scheduling cycle failed; retrying next cycle");
                return;
            }
        };
        // Counted before the cycle is: a reader that sees the cycle also sees what it decided.
        self.sinks.metrics.count_actions(out.actions.iter().map(crate::plan::Action::kind));
        self.sinks.metrics.observe_cycle(started.elapsed().as_secs_f64(), out.gauges);
        span.record("jobs", out.jobs);
        span.record("actions", out.actions.len());
        for d in &out.decisions {
            self.sinks.log.write(d);
        }
        if let Some(l) = self.sinks.ledger.as_ref().and_then(|s| s.get()) {
            l.record(out.ledger);
            self.sinks.metrics.set_usage(&l.totals(at));
        }
        self.sinks.board.send_replace(Arc::new(out.snapshot));
        self.applier.apply(out.actions, &backends);
    }
}
