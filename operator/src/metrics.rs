//! Prometheus metrics: cycle latency, pending and admitted jobs per queue, pool capacity and allocation by model,
//! and usage (GPU-seconds, energy, cost) per queue, pool and model from the ledger.

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
    /// Actions the cycles handed to the applier, by kind.
    actions: Mutex<BTreeMap<&'static str, u64>>,
    leader: AtomicBool,
    ready: AtomicBool,
    fleet: std::sync::OnceLock<std::sync::Arc<crate::fleet::Fleet>>,
    usage: Mutex<crate::ledger::usage::Totals>,
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

    /// Counts the actions a cycle handed to the applier, by kind.
    pub fn count_actions(&self, kinds: impl IntoIterator<Item = &'static str>) {
        let mut d = self.actions.lock().unwrap_or_else(|p| p.into_inner());
        for k in kinds {
            *d.entry(k).or_default() += 1;
        }
    }

    /// Adds the fleet's figures (agents, staleness, unhealthy GPUs, gaps) to the exposition.
    pub fn add_fleet(&self, fleet: std::sync::Arc<crate::fleet::Fleet>) {
        let _ = self.fleet.set(fleet);
    }

    /// The fleet's figures, when there is a fleet.
    pub fn render_fleet(&self) -> String {
        self.fleet.get().map(|f| f.render()).unwrap_or_default()
    }

    /// Sets the usage counters from the ledger's totals; a counter never goes down (a run that closes a little
    /// before the last sample of its open run keeps the higher figure).
    pub fn set_usage(&self, totals: &crate::ledger::usage::Totals) {
        let mut u = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        for (key, v) in &totals.by_key {
            let e = u.by_key.entry(key.clone()).or_default();
            for (old, new) in e.iter_mut().zip(v) {
                *old = old.max(*new);
            }
        }
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
        {
            let d = self.actions.lock().unwrap_or_else(|p| p.into_inner());
            s.push_str("# HELP haiyun_actions_total Actions the cycles handed to the applier, by kind (admit: jobs placed).\n");
            s.push_str("# TYPE haiyun_actions_total counter\n");
            for (kind, n) in d.iter() {
                let _ = writeln!(s, "haiyun_actions_total{{action=\"{kind}\"}} {n}");
            }
        }
        counter(
            &mut s,
            "haiyun_action_errors_total",
            "Actions that failed and will be retried.",
            self.errors.load(Ordering::Relaxed),
        );
        let u = self.usage.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (i, (name, help)) in [
            (
                "haiyun_usage_gpu_seconds_total",
                "GPU-seconds used per queue, pool and GPU model (the usage ledger).",
            ),
            (
                "haiyun_usage_energy_joules_total",
                "Joules used per queue, pool and GPU model (runs that ended).",
            ),
            ("haiyun_usage_cost_total", "Cost per queue, pool and GPU model, from each pool's spec.cost."),
        ]
        .into_iter()
        .enumerate()
        {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((q, p, m), v) in &u.by_key {
                let _ = writeln!(
                    s,
                    "{name}{{queue=\"{}\",pool=\"{}\",model=\"{}\"}} {}",
                    esc(q),
                    esc(p),
                    esc(m),
                    v[i]
                );
            }
        }
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

    #[test]
    fn actions_are_counted_by_kind_across_cycles() {
        let m = Metrics::default();
        m.count_actions(["admit", "admit", "evict"]);
        m.count_actions(["admit"]);
        let text = m.render();
        assert!(text.contains("# TYPE haiyun_actions_total counter"), "{text}");
        assert!(text.contains("haiyun_actions_total{action=\"admit\"} 3\n"), "{text}");
        assert!(text.contains("haiyun_actions_total{action=\"evict\"} 1\n"), "{text}");
        assert!(!text.contains("action=\"bind\""), "{text}");
    }

    #[test]
    fn usage_counters_are_labelled_by_queue_pool_and_model_and_never_go_down() {
        let m = Metrics::default();
        let key = ("team-a".to_string(), "ai".to_string(), "h100".to_string());
        let mut t = crate::ledger::usage::Totals::default();
        t.add(key.clone(), 3600.0, 0.0, 2.5);
        m.set_usage(&t);
        // The run closed a little before the last open sample: its closed figure is lower, and energy arrives.
        let mut t = crate::ledger::usage::Totals::default();
        t.add(key, 3599.0, 1800.0, 2.4);
        m.set_usage(&t);
        let text = m.render();
        let labels = "{queue=\"team-a\",pool=\"ai\",model=\"h100\"}";
        assert!(text.contains(&format!("haiyun_usage_gpu_seconds_total{labels} 3600\n")), "{text}");
        assert!(text.contains(&format!("haiyun_usage_energy_joules_total{labels} 1800\n")), "{text}");
        assert!(text.contains(&format!("haiyun_usage_cost_total{labels} 2.5\n")), "{text}");
        assert!(text.contains("# TYPE haiyun_usage_cost_total counter"));
    }
}
