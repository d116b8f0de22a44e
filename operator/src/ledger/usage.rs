//! Usage reports over the ledger: what to group by, the window, the rows (like Slurm's `sreport`), and the running
//! totals `/metrics` exports as counters.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a report groups runs by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum By {
    /// The job's queue.
    Queue,
    /// The job's namespace.
    Namespace,
    /// Who submitted the job.
    User,
    /// The pool it ran in.
    Pool,
    /// The pool's site.
    Site,
    /// The GPU model.
    Model,
    /// Each dataset it read (a run that read two counts for both).
    Dataset,
}

/// Why a report's parameters are wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// Unknown grouping.
    #[error("by={0}: expected one of queue, namespace, user, pool, site, model, dataset")]
    By(String),
    /// A time that does not parse.
    #[error("{field}={value}: expected an RFC 3339 time (2026-12-01T00:00:00Z) or a date (2026-12-01)")]
    Time {
        /// `from` or `to`.
        field: &'static str,
        /// What was given.
        value: String,
    },
    /// An empty window.
    #[error("from must be before to")]
    Window,
}

impl std::str::FromStr for By {
    type Err = UsageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "queue" => By::Queue,
            "namespace" => By::Namespace,
            "user" => By::User,
            "pool" => By::Pool,
            "site" => By::Site,
            "model" => By::Model,
            "dataset" => By::Dataset,
            other => return Err(UsageError::By(other.into())),
        })
    }
}

/// A report: group by `by`, runs clipped to `[from, to)` (unix seconds; open ends: all time, now).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// The grouping.
    pub by: By,
    /// The window's start.
    pub from: Option<f64>,
    /// The window's end.
    pub to: Option<f64>,
}

impl Usage {
    /// A report from the query parameters `by`, `from` and `to` (RFC 3339 times or dates).
    pub fn parse(by: Option<&str>, from: Option<&str>, to: Option<&str>) -> Result<Self, UsageError> {
        let by = by.unwrap_or("queue").parse()?;
        let from = from.map(|v| time("from", v)).transpose()?;
        let to = to.map(|v| time("to", v)).transpose()?;
        if let (Some(f), Some(t)) = (from, to)
            && f >= t
        {
            return Err(UsageError::Window);
        }
        Ok(Usage { by, from, to })
    }
}

/// An RFC 3339 time or a date (its midnight, UTC) as unix seconds.
fn time(field: &'static str, value: &str) -> Result<f64, UsageError> {
    let date = format!("{value}T00:00:00Z");
    crate::time::parse(value)
        .or_else(|| crate::time::parse(&date))
        .ok_or_else(|| UsageError::Time { field, value: value.into() })
}

/// One row of a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    /// The group (a queue, a user, …; empty where runs have none, e.g. no submitter stamped).
    pub key: String,
    /// Runs that overlap the window.
    pub runs: i64,
    /// GPU-seconds inside the window.
    pub gpu_seconds: f64,
    /// CPU core-seconds inside the window.
    pub cpu_core_seconds: f64,
    /// Memory GiB-seconds inside the window.
    pub memory_gib_seconds: f64,
    /// Joules inside the window (a closed run's energy spread evenly over it; open runs count once closed).
    pub energy_joules: f64,
    /// Cost inside the window, from each pool's `spec.cost`.
    pub cost: f64,
}

/// `(queue, pool, GPU model)`.
pub type TotalKey = (String, String, String);

/// What runs used, per queue, pool and GPU model: GPU-seconds, joules and cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// The sums by key.
    pub by_key: BTreeMap<TotalKey, [f64; 3]>,
}

impl Totals {
    /// Adds to `key`.
    pub fn add(&mut self, key: TotalKey, gpu_seconds: f64, joules: f64, cost: f64) {
        let e = self.by_key.entry(key).or_default();
        e[0] += gpu_seconds;
        e[1] += joules;
        e[2] += cost;
    }
}
