//! The fleet of node agents as the operator knows it: each node's GPUs, their health, when its agent last spoke,
//! and what was lost or replayed. The telemetry server writes it; each scheduling cycle reads a view of it.

pub mod auth;
pub mod conditions;
pub mod server;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use haiyun_api::agent as pb;
use tokio::sync::Notify;

/// A GPU's health as its agent last reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuState {
    /// It may take work.
    Healthy,
    /// It failed.
    Unhealthy,
    /// Its agent cannot tell.
    Unknown,
}

/// One GPU in a node's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuView {
    /// Health.
    pub state: GpuState,
    /// Why, when not healthy.
    pub reason: String,
    /// Its UUID, when the inventory named it.
    pub uuid: String,
    /// Utilisation in the last sample, percent.
    pub utilization: Option<u32>,
    /// The GPUs of its node it has an NVLink to, by index, as the inventory reported them.
    pub nvlink_peers: Vec<u32>,
    /// Its energy counter in the last sample, millijoules since the driver loaded.
    pub energy_mj: Option<u64>,
    /// Its power draw (milliwatts), where the agent reports one: energy where there is no counter.
    pub power_mw: Option<u32>,
}

/// What the scheduler and the node conditions need of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    /// Silent past the grace period: its GPUs are not placed on (running work stays).
    pub stale: bool,
    /// Seconds since its agent last spoke.
    pub silent_seconds: f64,
    /// Per GPU index.
    pub gpus: BTreeMap<u32, GpuView>,
    /// The last gap in its reports, seconds (0 when none).
    pub last_gap_seconds: f64,
    /// Samples that never arrived.
    pub lost: u64,
    /// Samples that arrived late, replayed from the agent's buffer.
    pub replayed: u64,
}

/// Every node's view, by node name.
pub type FleetView = HashMap<String, NodeView>;

#[derive(Debug)]
struct Entry {
    boot: u64,
    last_seq: u64,
    /// No sample of this boot has arrived yet: the first one sets where the sequence stands (after an operator
    /// restart the agent's earlier samples went to the previous leader, and are not lost).
    fresh: bool,
    last_seen: Instant,
    /// The stream that speaks for the node now (a newer stream replaces an older one).
    stream: u64,
    connected: bool,
    /// When the current stream opened, Unix ms: samples taken before it are replays.
    opened_unix_ms: i64,
    uuids: BTreeMap<u32, String>,
    peers: BTreeMap<u32, Vec<u32>>,
    health: BTreeMap<u32, (GpuState, String)>,
    utilization: BTreeMap<u32, u32>,
    energy: BTreeMap<u32, u64>,
    power: BTreeMap<u32, u32>,
    samples: u64,
    replayed: u64,
    lost: u64,
    dropped_by_agent: u64,
    last_gap: Duration,
}

/// The shared book.
#[derive(Debug)]
pub struct Fleet {
    nodes: Mutex<HashMap<String, Entry>>,
    grace: Duration,
    streams: std::sync::atomic::AtomicU64,
    /// Woken when a GPU's health changes, so the scheduling loop runs a cycle.
    pub changed: Arc<Notify>,
}

fn state(h: pb::HealthState) -> GpuState {
    match h {
        pb::HealthState::Healthy => GpuState::Healthy,
        pb::HealthState::Unhealthy => GpuState::Unhealthy,
        pb::HealthState::Unknown | pb::HealthState::Unspecified => GpuState::Unknown,
    }
}

impl Fleet {
    /// A book whose nodes go stale after `grace` of silence; `changed` is woken on every health change.
    pub fn new(grace: Duration, changed: Arc<Notify>) -> Self {
        Fleet { nodes: Mutex::new(HashMap::new()), grace, streams: 0.into(), changed }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A stream for `node` opened (its Hello arrived) at `now_unix_ms`; returns the stream's id. A new boot starts
    /// the sequence again; the same boot resumes it, and the silence since the last sample is recorded as a gap.
    pub fn hello(&self, node: &str, h: &pb::Hello, now_unix_ms: i64) -> u64 {
        let id = self.streams.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let mut nodes = self.lock();
        let now = Instant::now();
        let e = nodes.entry(node.to_string()).or_insert_with(|| Entry {
            boot: h.boot,
            last_seq: 0,
            fresh: true,
            last_seen: now,
            stream: id,
            connected: true,
            opened_unix_ms: now_unix_ms,
            uuids: BTreeMap::new(),
            peers: BTreeMap::new(),
            health: BTreeMap::new(),
            utilization: BTreeMap::new(),
            energy: BTreeMap::new(),
            power: BTreeMap::new(),
            samples: 0,
            replayed: 0,
            lost: 0,
            dropped_by_agent: h.dropped,
            last_gap: Duration::ZERO,
        });
        if e.boot != h.boot {
            e.boot = h.boot;
            e.last_seq = 0;
            e.fresh = true;
        } else if e.stream != id {
            e.last_gap = now.saturating_duration_since(e.last_seen);
            if e.last_gap > Duration::from_secs(5) {
                tracing::info!(node, gap_s = e.last_gap.as_secs_f64(), "agent reconnected after a gap");
            }
        }
        e.lost += h.dropped.saturating_sub(e.dropped_by_agent);
        e.dropped_by_agent = h.dropped;
        e.stream = id;
        e.connected = true;
        e.opened_unix_ms = now_unix_ms;
        e.last_seen = now;
        id
    }

    /// The node's inventory.
    pub fn inventory(&self, node: &str, stream: u64, inv: &pb::Inventory) {
        let mut nodes = self.lock();
        if let Some(e) = nodes.get_mut(node).filter(|e| e.stream == stream) {
            e.uuids = inv.gpus.iter().map(|g| (g.index, g.uuid.clone())).collect();
            e.peers = inv.gpus.iter().map(|g| (g.index, g.nvlink_peers.clone())).collect();
        }
    }

    /// A sample from `stream`; returns the sequence number to acknowledge (every sample up to it has arrived).
    pub fn sample(&self, node: &str, stream: u64, s: &pb::Sample) -> Option<u64> {
        let mut nodes = self.lock();
        let e = nodes.get_mut(node).filter(|e| e.stream == stream)?;
        e.last_seen = Instant::now();
        if s.seq <= e.last_seq {
            return Some(e.last_seq); // already here (replayed twice)
        }
        if e.fresh {
            e.fresh = false;
            e.last_seq = s.seq - 1;
        }
        e.lost += s.seq - e.last_seq - 1;
        e.last_seq = s.seq;
        e.samples += 1;
        if s.taken_unix_ms < e.opened_unix_ms {
            e.replayed += 1;
        }
        let health: BTreeMap<u32, (GpuState, String)> =
            s.gpus.iter().map(|r| (r.index, (state(r.health()), r.health_reason.clone()))).collect();
        let changed = health != e.health;
        e.health = health;
        e.utilization = s.gpus.iter().filter_map(|r| Some((r.index, r.utilization_gpu_pct?))).collect();
        e.energy = s.gpus.iter().filter_map(|r| Some((r.index, r.energy_mj?))).collect();
        e.power = s.gpus.iter().filter_map(|r| Some((r.index, r.power_mw?))).collect();
        drop(nodes);
        if changed {
            self.changed.notify_one();
        }
        Some(s.seq)
    }

    /// The stream ended.
    pub fn disconnected(&self, node: &str, stream: u64) {
        if let Some(e) = self.lock().get_mut(node).filter(|e| e.stream == stream) {
            e.connected = false;
        }
    }

    /// Every node's view now.
    pub fn view(&self) -> FleetView {
        let now = Instant::now();
        self.lock()
            .iter()
            .map(|(name, e)| {
                let silent = now.saturating_duration_since(e.last_seen);
                let gpus = e
                    .health
                    .iter()
                    .map(|(i, (state, reason))| {
                        let uuid = e.uuids.get(i).cloned().unwrap_or_default();
                        let utilization = e.utilization.get(i).copied();
                        let nvlink_peers = e.peers.get(i).cloned().unwrap_or_default();
                        (
                            *i,
                            GpuView {
                                state: *state,
                                reason: reason.clone(),
                                uuid,
                                utilization,
                                nvlink_peers,
                                energy_mj: e.energy.get(i).copied(),
                                power_mw: e.power.get(i).copied(),
                            },
                        )
                    })
                    .collect();
                let v = NodeView {
                    stale: silent > self.grace,
                    silent_seconds: silent.as_secs_f64(),
                    gpus,
                    last_gap_seconds: e.last_gap.as_secs_f64(),
                    lost: e.lost,
                    replayed: e.replayed,
                };
                (name.clone(), v)
            })
            .collect()
    }

    /// The grace period.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Prometheus text for the fleet.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let view = self.view();
        let mut names: Vec<&String> = view.keys().collect();
        names.sort();
        let (samples, connected) = {
            let nodes = self.lock();
            (nodes.values().map(|e| e.samples).sum::<u64>(), nodes.values().filter(|e| e.connected).count())
        };
        let _ = writeln!(s, "# HELP haiyun_agent_samples_total Samples received from node agents.");
        let _ =
            writeln!(s, "# TYPE haiyun_agent_samples_total counter\nhaiyun_agent_samples_total {samples}");
        let _ = writeln!(s, "# HELP haiyun_agents_connected Node agents with an open stream.");
        let _ = writeln!(s, "# TYPE haiyun_agents_connected gauge\nhaiyun_agents_connected {connected}");
        type Metric = (&'static str, &'static str, &'static str, fn(&NodeView) -> f64);
        let per_node: [Metric; 5] = [
            (
                "haiyun_node_agent_stale",
                "gauge",
                "1 when the node's agent is silent past the grace period.",
                |v| f64::from(u8::from(v.stale)),
            ),
            ("haiyun_node_gpus_unhealthy", "gauge", "GPUs the node's agent reports unhealthy.", |v| {
                v.gpus.values().filter(|g| g.state == GpuState::Unhealthy).count() as f64
            }),
            ("haiyun_node_agent_last_gap_seconds", "gauge", "The last gap in the agent's reports.", |v| {
                v.last_gap_seconds
            }),
            ("haiyun_node_agent_samples_lost_total", "counter", "Samples that never arrived.", |v| {
                v.lost as f64
            }),
            ("haiyun_node_agent_samples_replayed_total", "counter", "Samples replayed after a gap.", |v| {
                v.replayed as f64
            }),
        ];
        for (name, kind, help, read) in per_node {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for n in &names {
                let _ = writeln!(s, "{name}{{node=\"{}\"}} {}", n.replace('"', "\\\""), read(&view[*n]));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(index: u32, health: pb::HealthState, why: &str) -> pb::Reading {
        let mut r = pb::Reading { index, health_reason: why.into(), ..Default::default() };
        r.set_health(health);
        r
    }

    fn sample(seq: u64, taken: i64, bad: Option<u32>) -> pb::Sample {
        let gpus = (0..8)
            .map(|i| match bad {
                Some(b) if b == i => reading(i, pb::HealthState::Unhealthy, "XID 79"),
                _ => reading(i, pb::HealthState::Healthy, ""),
            })
            .collect();
        pb::Sample { seq, taken_unix_ms: taken, gpus, xids: Vec::new() }
    }

    #[test]
    fn samples_are_acknowledged_once_replays_are_counted_and_holes_are_lost() {
        let fleet = Fleet::new(Duration::from_secs(60), Arc::new(Notify::new()));
        let hello = pb::Hello { node: "a".into(), boot: 7, version: String::new(), dropped: 0 };
        let s1 = fleet.hello("a", &hello, 1_000);
        assert_eq!(fleet.sample("a", s1, &sample(1, 1_000, None)), Some(1));
        assert_eq!(fleet.sample("a", s1, &sample(2, 2_000, Some(3))), Some(2));
        let v = &fleet.view()["a"];
        assert_eq!(v.gpus[&3].state, GpuState::Unhealthy);
        assert_eq!(v.gpus[&3].reason, "XID 79");
        // The link drops; the agent reconnects and replays 3..=5, then 7 (6 fell out of its buffer).
        let s2 = fleet.hello("a", &hello, 9_000);
        assert_eq!(fleet.sample("a", s1, &sample(3, 3_000, None)), None, "the old stream no longer speaks");
        for seq in [2, 3, 4, 5, 7] {
            assert_eq!(fleet.sample("a", s2, &sample(seq, seq as i64 * 1_000, None)), Some(seq));
        }
        let v = &fleet.view()["a"];
        assert_eq!((v.replayed, v.lost), (4, 1), "3, 4, 5, 7 replayed; 6 lost; 2 was a duplicate");
        assert_eq!(v.gpus[&3].state, GpuState::Healthy);
        // A restarted agent (new boot) counts from 1 again.
        let s3 = fleet.hello("a", &pb::Hello { boot: 8, ..hello.clone() }, 10_000);
        assert_eq!(fleet.sample("a", s3, &sample(1, 10_000, None)), Some(1));
        // A new operator hears an agent mid-way (its earlier samples went to the previous leader): nothing is lost.
        let other = Fleet::new(Duration::from_secs(60), Arc::new(Notify::new()));
        let s = other.hello("a", &hello, 20_000);
        assert_eq!(other.sample("a", s, &sample(500, 20_000, None)), Some(500));
        assert_eq!(other.view()["a"].lost, 0);
    }

    #[test]
    fn a_silent_node_goes_stale_after_the_grace_period() {
        let fleet = Fleet::new(Duration::from_millis(50), Arc::new(Notify::new()));
        let s = fleet.hello("a", &pb::Hello { node: "a".into(), boot: 1, ..Default::default() }, 0);
        fleet.sample("a", s, &sample(1, 0, None));
        assert!(!fleet.view()["a"].stale);
        std::thread::sleep(Duration::from_millis(80));
        assert!(fleet.view()["a"].stale);
        assert!(fleet.render().contains("haiyun_node_agent_stale{node=\"a\"} 1"));
    }
}
