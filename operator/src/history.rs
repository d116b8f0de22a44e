//! Utilisation over time per pool and GPU model: a sample per interval from the dashboard's snapshot, the last hours
//! kept, and kept in a ConfigMap by the leader so that the replica that leads next shows what this one saw.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde::{Deserialize, Serialize};

use crate::dashboard::Snapshot;

/// The ConfigMap key the history is kept under.
const KEY: &str = "history.json";
/// A ConfigMap holds at most 1 MiB; the oldest samples go first past this.
const MAX_BYTES: usize = 900 * 1024;

/// Why the history could not be read or kept.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The API call failed.
    #[error("failed to {action} ConfigMap {name}: {source}")]
    Api {
        /// What.
        action: &'static str,
        /// The ConfigMap.
        name: String,
        /// The cause.
        source: kube::Error,
    },
    /// The ConfigMap holds something else.
    #[error("ConfigMap {name} key {KEY} is not a history ({why}); it is replaced at the next sample")]
    Decode {
        /// The ConfigMap.
        name: String,
        /// The parse error.
        why: String,
    },
}

/// GPUs of one pool and model at one time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// GPUs.
    pub gpus: u32,
    /// GPUs allocated (fractions add up).
    pub allocated: f64,
    /// Mean utilisation (%) of the GPUs whose agents report it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization: Option<f64>,
}

/// Every pool and model at one time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the epoch.
    pub at: i64,
    /// By `pool/model`.
    pub cells: BTreeMap<String, Cell>,
}

/// The samples of the last `keep` intervals, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    /// Seconds between samples.
    pub interval_seconds: u64,
    /// The samples.
    pub samples: VecDeque<Sample>,
    /// The most it may take as JSON.
    #[serde(skip, default = "max_bytes")]
    max_bytes: usize,
}

fn max_bytes() -> usize {
    MAX_BYTES
}

impl History {
    /// An empty history of one sample per `interval`.
    pub fn new(interval: Duration) -> Self {
        History {
            interval_seconds: interval.as_secs().max(1),
            samples: VecDeque::new(),
            max_bytes: MAX_BYTES,
        }
    }

    /// Adds the sample of `snap` at `at` (seconds), then drops what is older than `span` or too big to keep; returns
    /// the history as JSON (what it measured its size by, and what a ConfigMap keeps).
    pub fn record(&mut self, snap: &Snapshot, at: i64, span: Duration) -> String {
        self.samples.push_back(sample(snap, at));
        let oldest = at - i64::try_from(span.as_secs()).unwrap_or(i64::MAX);
        while self.samples.front().is_some_and(|s| s.at < oldest) {
            self.samples.pop_front();
        }
        // Samples are about the same size: drop as many of the oldest as the excess takes, then check again.
        loop {
            let json = self.to_json();
            let size = json.len();
            if size <= self.max_bytes || self.samples.len() <= 1 {
                return json;
            }
            let each = (size / self.samples.len()).max(1);
            let excess = (size - self.max_bytes).div_ceil(each).clamp(1, self.samples.len() - 1);
            self.samples.drain(..excess);
        }
    }

    /// Keeps what `older` saw before this history's first sample (a new leader's first samples follow the old one's).
    pub fn extend_back(&mut self, older: History) {
        let first = self.samples.front().map_or(i64::MAX, |s| s.at);
        for s in older.samples.into_iter().rev().filter(|s| s.at < first) {
            self.samples.push_front(s);
        }
    }

    fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One sample: each node's GPUs summed into its pool and model.
pub fn sample(snap: &Snapshot, at: i64) -> Sample {
    let mut cells: BTreeMap<String, (Cell, u32, f64)> = BTreeMap::new();
    for node in &snap.nodes {
        let key = format!("{}/{}", node.pool, node.model);
        let (cell, reporting, sum) =
            cells.entry(key).or_insert_with(|| (Cell { gpus: 0, allocated: 0.0, utilization: None }, 0, 0.0));
        for g in &node.gpus {
            cell.gpus += 1;
            cell.allocated += g.allocated;
            if let Some(u) = g.utilization {
                *reporting += 1;
                *sum += f64::from(u);
            }
        }
    }
    let cells = cells
        .into_iter()
        .map(|(k, (mut cell, reporting, sum))| {
            cell.allocated = (cell.allocated * 1000.0).round() / 1000.0;
            cell.utilization = (reporting > 0).then(|| (sum / f64::from(reporting) * 10.0).round() / 10.0);
            (k, cell)
        })
        .collect();
    Sample { at, cells }
}

/// Where the leader keeps the history: a ConfigMap in its namespace.
#[derive(Debug, Clone)]
pub struct Store {
    api: Api<ConfigMap>,
    name: String,
}

impl Store {
    /// ConfigMap `name` in `namespace`.
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        Store { api: Api::namespaced(client, namespace), name: name.into() }
    }

    /// The history kept there, if any.
    pub async fn load(&self) -> Result<Option<History>, HistoryError> {
        let name = self.name.clone();
        let cm = self.api.get_opt(&self.name).await.map_err(|source| HistoryError::Api {
            action: "read",
            name: name.clone(),
            source,
        })?;
        let Some(text) = cm.and_then(|c| c.data).and_then(|mut d| d.remove(KEY)) else { return Ok(None) };
        serde_json::from_str(&text).map(Some).map_err(|e| HistoryError::Decode { name, why: e.to_string() })
    }

    /// Writes a history there, as `record` returned it (server-side apply).
    pub async fn save(&self, json: &str) -> Result<(), HistoryError> {
        let cm = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": self.name, "labels": {"app.kubernetes.io/name": "haiyun"}},
            "data": {KEY: json},
        });
        let params = PatchParams::apply(crate::apply::write::MANAGER).force();
        self.api
            .patch(&self.name, &params, &Patch::Apply(&cm))
            .await
            .map_err(|source| HistoryError::Api { action: "write", name: self.name.clone(), source })?;
        Ok(())
    }
}

/// Samples `board` every interval of `history` for as long as the task runs, publishing each new history on `out`
/// and keeping it in `store` (when given). Starts from what `store` holds, so a new leader goes on where the last one
/// stopped.
pub async fn keep(
    mut history: History,
    span: Duration,
    board: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    out: tokio::sync::watch::Sender<Arc<History>>,
    store: Option<Store>,
) {
    if let Some(store) = &store {
        match store.load().await {
            Ok(Some(older)) => history.extend_back(older),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "starting the utilisation history afresh"),
        }
    }
    out.send_replace(Arc::new(history.clone()));
    let mut tick = tokio::time::interval(Duration::from_secs(history.interval_seconds));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snap = board.borrow().clone();
        if snap.at.is_empty() {
            continue; // no cycle has run yet
        }
        let json = history.record(&snap, crate::time::now() as i64, span);
        out.send_replace(Arc::new(history.clone()));
        if let Some(store) = &store {
            if let Err(e) = store.save(&json).await {
                tracing::warn!(error = %e, "failed to keep the utilisation history");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::{GpuCell, NodeView};

    fn node(name: &str, pool: &str, model: &str, cells: &[(f64, Option<u32>)]) -> NodeView {
        NodeView {
            name: name.into(),
            pool: pool.into(),
            model: model.into(),
            gpus: cells
                .iter()
                .enumerate()
                .map(|(i, &(allocated, utilization))| GpuCell {
                    index: i as u32,
                    allocated,
                    health: "healthy".into(),
                    utilization,
                })
                .collect(),
        }
    }

    fn snap(nodes: Vec<NodeView>) -> Snapshot {
        Snapshot { at: "2026-12-02T10:00:00Z".into(), nodes, ..Default::default() }
    }

    #[test]
    fn a_sample_sums_each_pool_and_model_over_its_nodes() {
        let s = snap(vec![
            node("a", "lab", "H100", &[(1.0, Some(90)), (0.5, Some(30))]),
            node("b", "lab", "H100", &[(0.0, None), (1.0, Some(60))]),
            node("c", "lab", "A100", &[(0.0, None)]),
            node("d", "edge", "T4", &[(1.0, None)]),
        ]);
        let got = sample(&s, 100);
        assert_eq!(got.at, 100);
        assert_eq!(got.cells["lab/H100"], Cell { gpus: 4, allocated: 2.5, utilization: Some(60.0) });
        assert_eq!(got.cells["lab/A100"], Cell { gpus: 1, allocated: 0.0, utilization: None });
        assert_eq!(got.cells["edge/T4"].allocated, 1.0);
        assert_eq!(got.cells.len(), 3);
    }

    #[test]
    fn the_history_keeps_its_span_and_a_new_leader_goes_on_from_the_old_one() {
        let s = snap(vec![node("a", "lab", "H100", &[(1.0, Some(50))])]);
        let span = Duration::from_secs(300);
        let mut old = History::new(Duration::from_secs(60));
        for t in 0..10 {
            old.record(&s, t * 60, span);
        }
        let kept: Vec<i64> = old.samples.iter().map(|s| s.at).collect();
        assert_eq!(kept, vec![240, 300, 360, 420, 480, 540], "five minutes back from the last sample");
        let mut new = History::new(Duration::from_secs(60));
        new.record(&s, 590, span);
        new.extend_back(old.clone());
        let at: Vec<i64> = new.samples.iter().map(|s| s.at).collect();
        assert_eq!(at, vec![240, 300, 360, 420, 480, 540, 590]);
        // Round trip through the ConfigMap's JSON.
        let back: History = serde_json::from_str(&new.to_json()).unwrap();
        assert_eq!(back, new);
    }

    #[test]
    fn the_history_never_outgrows_a_configmap() {
        let nodes: Vec<NodeView> = (0..20)
            .map(|i| {
                node(&format!("n{i}"), &format!("pool-with-a-long-name-{i}"), "H100", &[(0.5, Some(40))])
            })
            .collect();
        let s = snap(nodes);
        let mut h = History::new(Duration::from_secs(60));
        h.max_bytes = 40 * 1024; // as MAX_BYTES, smaller
        let mut json = String::new();
        for t in 0..200 {
            json = h.record(&s, t * 60, Duration::from_secs(6 * 3600));
        }
        assert_eq!(json, h.to_json(), "record returns what a ConfigMap keeps");
        assert!(json.len() <= h.max_bytes, "{} bytes", json.len());
        assert!(h.samples.len() > 10 && h.samples.len() < 200, "the oldest went first: {}", h.samples.len());
        assert_eq!(h.samples.back().unwrap().at, 199 * 60);
    }
}
