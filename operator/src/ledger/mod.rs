//! The usage ledger: one record per run of every job (preempted, failed and finished runs alike, on every backend)
//! in SQLite or PostgreSQL, so that who used what, where and at what cost outlives the operator, failover and the
//! job. The cycle says what to open and close ([`runs::reconcile`]); this shell writes it in order, off the loop.

pub mod api;
pub mod runs;
pub mod store;
pub mod usage;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runs::{Book, Op, Run, RunKey};
use store::{Store, StoreError};
use usage::Totals;

/// What the shell knows of the ledger: the runs it holds open and what the closed ones used.
#[derive(Debug, Default)]
struct State {
    /// The open runs and closed sums as loaded (taken once by the cycle's memory).
    loaded: Option<Book>,
    /// The open runs now (for the counters).
    open: BTreeMap<RunKey, Run>,
    /// What the closed runs used.
    closed: Totals,
    /// Ops handed out and not written yet.
    pending: usize,
}

/// A handle on the ledger; clones share it.
#[derive(Debug, Clone)]
pub struct Ledger {
    store: Store,
    state: Arc<Mutex<State>>,
    writes: tokio::sync::mpsc::UnboundedSender<Vec<Op>>,
}

impl Ledger {
    /// Connects to `url`, loads the open runs, the closed totals and (with a half-life of past usage, seconds) the
    /// decayed usage of the runs that ended within 20 half-lives, and starts the writer.
    pub async fn open(url: &str, half_life: Option<f64>) -> Result<Self, StoreError> {
        let store = Store::open(url).await?;
        let open = store.open_runs().await?;
        let closed = store.totals().await?;
        let mut closed_gpu_seconds = BTreeMap::new();
        for ((queue, _, _), v) in &closed.by_key {
            *closed_gpu_seconds.entry(queue.clone()).or_default() += v[0];
        }
        let mut book = Book { open: open.clone(), closed_gpu_seconds, half_life, past: BTreeMap::new() };
        if let Some(h) = half_life {
            for (run, end) in store.ended_since(crate::time::now() - 20.0 * h).await? {
                book.add_past(&run, end);
            }
        }
        let state = State { loaded: Some(book), open, closed, pending: 0 };
        let (writes, rx) = tokio::sync::mpsc::unbounded_channel();
        let ledger = Ledger { store, state: Arc::new(Mutex::new(state)), writes };
        tokio::spawn(write(ledger.store.clone(), ledger.state.clone(), rx));
        Ok(ledger)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The open runs and closed sums as loaded, once: the cycle reconciles against them from then on.
    pub fn take_open(&self) -> Option<Book> {
        self.state().loaded.take()
    }

    /// Records `ops` (written in order, retried until the database takes them).
    pub fn record(&self, ops: Vec<Op>) {
        if ops.is_empty() {
            return;
        }
        {
            let mut s = self.state();
            for op in &ops {
                match op {
                    Op::Open(r) => {
                        s.open.insert((r.uid.clone(), r.run), (**r).clone());
                    }
                    Op::Close(c) => {
                        if let Some(r) = s.open.remove(&(c.uid.clone(), c.run)) {
                            let secs = (c.end - r.start).max(0.0);
                            let key = (r.queue, r.pool, r.gpu_model);
                            s.closed.add(
                                key,
                                r.gpus * secs,
                                c.energy_joules,
                                r.cost_per_hour * secs / 3600.0,
                            );
                        }
                    }
                }
            }
            s.pending += ops.len();
        }
        if self.writes.send(ops).is_err() {
            tracing::error!("the ledger's writer stopped; usage is no longer recorded");
        }
    }

    /// What runs used up to `now`: the closed ones, and the open ones so far (energy counts once a run closes).
    pub fn totals(&self, now: f64) -> Totals {
        let s = self.state();
        let mut t = s.closed.clone();
        for r in s.open.values() {
            let secs = (now - r.start).max(0.0);
            t.add(
                (r.queue.clone(), r.pool.clone(), r.gpu_model.clone()),
                r.gpus * secs,
                0.0,
                r.cost_per_hour * secs / 3600.0,
            );
        }
        t
    }

    /// The database behind it (for reports).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Waits (at most `limit`) until everything recorded is written.
    pub async fn flush(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.state().pending > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

/// The writer: batches in order; a batch the database refuses is tried again a second later, and the ones after it
/// wait for it.
async fn write(
    store: Store,
    state: Arc<Mutex<State>>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Vec<Op>>,
) {
    while let Some(mut ops) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            ops.extend(more);
        }
        let mut delay = Duration::from_millis(200);
        while let Err(e) = store.apply(&ops).await {
            tracing::warn!(error = %e, ops = ops.len(), "failed to write the usage ledger; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        s.pending = s.pending.saturating_sub(ops.len());
    }
}
