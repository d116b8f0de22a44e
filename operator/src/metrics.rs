//! Prometheus metrics: cycle latency, pending and admitted jobs per queue, pool capacity and allocation by model.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Gauges set by each cycle.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    /// (queue) → pending jobs.
    pub pending: BTreeMap<String, u32>,
    /// (queue) → admitted jobs.
    pub admitted: BTreeMap<String, u32>,
    /// (pool, model) → GPUs.
    pub gpus: BTreeMap<(String, String), u32>,
    /// (pool, model) → allocated whole-GPU equivalents.
    pub allocated: BTreeMap<(String, String), f64>,
}

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// Every metric of the operator.
#[derive(Debug, Default)]
pub struct Metrics {
    cycles: Mutex<Histogram>,
    gauges: Mutex<Gauges>,
    bound: AtomicU64,
    errors: AtomicU64,
    leader: AtomicBool,
    ready: AtomicBool,
    fleet: std::sync::OnceLock<std::sync::Arc<crate::fleet::Fleet>>,
}

impl Metrics {
    /// Records one cycle's latency and the gauges it computed.
    pub fn observe_cycle(&self, seconds: f64, gauges: Gauges) {
        let mut h = self.cycles.lock().unwrap_or_else(|p| p.into_inner());
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
        *self.gauges.lock().unwrap_or_else(|p| p.into_inner()) = gauges;
    }

    /// Adds the fleet's figures (agents, staleness, unhealthy GPUs, gaps) to the exposition.
    pub fn add_fleet(&self, fleet: std::sync::Arc<crate::fleet::Fleet>) {
        let _ = self.fleet.set(fleet);
    }

    /// The fleet's figures, when there is a fleet.
    pub fn render_fleet(&self) -> String {
        self.fleet.get().map(|f| f.render()).unwrap_or_default()
    }

    /// Counts pods bound.
    pub fn count_bound(&self, n: usize) {
        self.bound.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts a failed action.
    pub fn count_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets whether this replica leads.
    pub fn set_leader(&self, v: bool) {
        self.leader.store(v, Ordering::Relaxed);
    }

    /// Whether this replica leads.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Sets whether the caches are synced.
    pub fn set_ready(&self, v: bool) {
        self.ready.store(v, Ordering::Relaxed);
    }

    /// Whether the caches are synced.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        {
            let h = self.cycles.lock().unwrap_or_else(|p| p.into_inner());
            s.push_str("# HELP haiyun_cycle_duration_seconds Latency of one scheduling cycle.\n");
            s.push_str("# TYPE haiyun_cycle_duration_seconds histogram\n");
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(s, "haiyun_cycle_duration_seconds_bucket{{le=\"{b}\"}} {}", h.counts[i]);
            }
            let _ = writeln!(s, "haiyun_cycle_duration_seconds_bucket{{le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(s, "haiyun_cycle_duration_seconds_sum {}", h.sum);
            let _ = writeln!(s, "haiyun_cycle_duration_seconds_count {}", h.count);
        }
        let g = self.gauges.lock().unwrap_or_else(|p| p.into_inner()).clone();
        gauge(
            &mut s,
            "haiyun_queue_pending_jobs",
            "Jobs waiting per queue.",
            g.pending.iter().map(|(q, v)| (format!("queue=\"{}\"", esc(q)), f64::from(*v))),
        );
        gauge(
            &mut s,
            "haiyun_queue_admitted_jobs",
            "Jobs admitted per queue.",
            g.admitted.iter().map(|(q, v)| (format!("queue=\"{}\"", esc(q)), f64::from(*v))),
        );
        gauge(
            &mut s,
            "haiyun_pool_gpus",
            "GPUs per pool and model.",
            g.gpus
                .iter()
                .map(|((p, m), v)| (format!("pool=\"{}\",model=\"{}\"", esc(p), esc(m)), f64::from(*v))),
        );
        gauge(
            &mut s,
            "haiyun_pool_gpus_allocated",
            "Allocated whole-GPU equivalents per pool and model.",
            g.allocated.iter().map(|((p, m), v)| (format!("pool=\"{}\",model=\"{}\"", esc(p), esc(m)), *v)),
        );
        counter(
            &mut s,
            "haiyun_pods_bound_total",
            "Pods bound through the Binding subresource.",
            self.bound.load(Ordering::Relaxed),
        );
        counter(
            &mut s,
            "haiyun_action_errors_total",
            "Actions that failed and will be retried.",
            self.errors.load(Ordering::Relaxed),
        );
        gauge(
            &mut s,
            "haiyun_leader",
            "1 when this replica holds the lease.",
            std::iter::once((String::new(), f64::from(u8::from(self.is_leader())))),
        );
        s
    }
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn gauge(s: &mut String, name: &str, help: &str, values: impl Iterator<Item = (String, f64)>) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (labels, v) in values {
        if labels.is_empty() {
            let _ = writeln!(s, "{name} {v}");
        } else {
            let _ = writeln!(s, "{name}{{{labels}}} {v}");
        }
    }
}

fn counter(s: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_the_histogram_and_labelled_gauges() {
        let m = Metrics::default();
        let mut g = Gauges::default();
        g.pending.insert("team-a".into(), 3);
        g.gpus.insert(("ai".into(), "h100".into()), 32);
        m.observe_cycle(0.02, g);
        let text = m.render();
        assert!(text.contains("haiyun_cycle_duration_seconds_bucket{le=\"0.025\"} 1"), "{text}");
        assert!(text.contains("haiyun_cycle_duration_seconds_bucket{le=\"0.01\"} 0"));
        assert!(text.contains("haiyun_queue_pending_jobs{queue=\"team-a\"} 3"));
        assert!(text.contains("haiyun_pool_gpus{pool=\"ai\",model=\"h100\"} 32"));
    }
}
