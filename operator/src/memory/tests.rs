//! The cluster in memory through the operator's one cycle and the simulated backend: admission onto simulated nodes, runs
//! that end at their runtime, data that stays in cleared pools, preemption that keeps checkpointed work, quota
//! requests, agents' health, and the operator itself refusing simulated pools.

use std::sync::Arc;

use haiyun_api::fixtures;
use haiyun_api::job::JobPhase;
use haiyun_api::{ComputeJob, ComputePool, Dataset, Queue, QuotaRequest};
use haiyun_scheduler::schedule::SchedulerConfig;
use serde_json::json;

use super::MemoryCluster;
use crate::decision::DecisionLog;
use crate::fleet::FleetView;

const T0: f64 = 1_800_000_000.0;

fn pool(name: &str, clearance: &str, nodes: u32, gpus: u32) -> ComputePool {
    fixtures::pool(name).site(name).clearance(clearance).simulated(nodes, gpus, "h100").build()
}

fn queue(gpus: u32) -> Queue {
    let q = fixtures::queue("q").quota("nvidia.com/gpu:h100", &gpus.to_string());
    q.quota("cpu", "1000").quota("memory", "10Ti").build()
}

fn job(name: &str, gpus: u32, runtime: &str, extra: serde_json::Value) -> ComputeJob {
    fixtures::job("ns", name).gpus(gpus).resources("4", "16Gi").runtime(runtime).spec(extra).build()
}

fn cluster(pools: &[ComputePool], quota: u32) -> MemoryCluster {
    let mut c = MemoryCluster::new(SchedulerConfig::default(), DecisionLog::open(None).unwrap());
    for p in pools {
        c.add_pool(p.clone(), T0).unwrap();
    }
    c.add_queue(queue(quota), T0).unwrap();
    c
}

fn cycle(c: &mut MemoryCluster, t: f64) -> crate::dashboard::Snapshot {
    c.cycle(Arc::new(FleetView::default()), T0 + t).unwrap()
}

fn phase(c: &MemoryCluster, name: &str) -> JobPhase {
    c.jobs()[&format!("ns/{name}")].status.as_ref().map(|s| s.phase).unwrap_or_default()
}

#[test]
fn a_job_runs_on_simulated_nodes_for_its_runtime_then_succeeds() {
    let mut c = cluster(&[pool("p", "public", 2, 8)], 16);
    c.submit(job("a", 8, "10m", json!({})), Some(300.0), T0).unwrap();
    cycle(&mut c, 0.0);
    let st = c.jobs()["ns/a"].status.clone().unwrap();
    assert_eq!(st.phase, JobPhase::Admitted);
    let p = st.placement.unwrap();
    assert_eq!(p.pool, "p");
    assert!(p.tasks[0].node.starts_with("p-0"), "{:?}", p.tasks);
    assert_eq!(p.tasks[0].gpus.len(), 8);
    let snap = cycle(&mut c, 1.0);
    assert_eq!(phase(&c, "a"), JobPhase::Running);
    let allocated: f64 = snap.nodes.iter().flat_map(|n| &n.gpus).map(|g| g.allocated).sum();
    assert_eq!(allocated, 8.0);
    // Its real work (300 s) is done before its estimate (600 s).
    cycle(&mut c, 299.0);
    assert_eq!(phase(&c, "a"), JobPhase::Running);
    cycle(&mut c, 301.0);
    cycle(&mut c, 302.0);
    let st = c.jobs()["ns/a"].status.clone().unwrap();
    assert_eq!(st.phase, JobPhase::Succeeded);
    assert!((st.gpu_hours - 8.0 * 300.0 / 3600.0).abs() < 0.05, "{}", st.gpu_hours);
    let snap = cycle(&mut c, 303.0);
    assert_eq!(snap.nodes.iter().flat_map(|n| &n.gpus).map(|g| g.allocated).sum::<f64>(), 0.0);
    assert_eq!(c.queues()["q"].status.as_ref().unwrap().admitted, 0);
}

#[test]
fn sensitive_data_runs_only_in_the_pool_cleared_for_it() {
    let mut c = cluster(&[pool("open", "public", 4, 8), pool("vault", "core", 1, 8)], 64);
    let d: Dataset = serde_json::from_value(json!({
        "apiVersion": "haiyun.io/v1alpha1", "kind": "Dataset", "metadata": {"name": "census"},
        "spec": {"size": "1Ti", "classification": "sensitive", "replicas": ["vault"]}
    }))
    .unwrap();
    c.add_dataset(d, T0).unwrap();
    for i in 0..3 {
        c.submit(job(&format!("s{i}"), 8, "1h", json!({"datasets": ["census"]})), None, T0).unwrap();
    }
    cycle(&mut c, 0.0);
    let placed: Vec<String> = c
        .jobs()
        .values()
        .filter_map(|j| j.status.as_ref()?.placement.as_ref().map(|p| p.pool.clone()))
        .collect();
    assert_eq!(placed, ["vault"], "only one fits in the cleared pool; the others wait");
    let waiting = &c.jobs()["ns/s1"].status.as_ref().unwrap();
    assert_eq!(waiting.phase, JobPhase::Queued);
    assert!(waiting.estimated_start.is_some());
}

#[test]
fn a_higher_priority_job_preempts_and_the_victim_keeps_its_checkpointed_work() {
    let mut c = cluster(&[pool("p", "public", 1, 8)], 8);
    c.submit(job("low", 8, "2h", json!({"checkpointSeconds": 600})), Some(3600.0), T0).unwrap();
    cycle(&mut c, 0.0);
    cycle(&mut c, 1.0);
    assert_eq!(phase(&c, "low"), JobPhase::Running);
    c.submit(job("high", 8, "10m", json!({"priority": 100})), Some(600.0), T0 + 1300.0).unwrap();
    cycle(&mut c, 1300.0);
    assert_eq!(phase(&c, "low"), JobPhase::Preempted);
    assert!(c.jobs()["ns/low"].status.as_ref().unwrap().preemptions == 1);
    cycle(&mut c, 1301.0);
    assert!(matches!(phase(&c, "high"), JobPhase::Admitted | JobPhase::Running));
    // `high` ends at 1901; `low` restarts with 3600 - 1200 (two checkpoints) = 2400 s left.
    for t in [1902.0, 1903.0, 1904.0] {
        cycle(&mut c, t);
    }
    assert_eq!(phase(&c, "high"), JobPhase::Succeeded);
    assert!(matches!(phase(&c, "low"), JobPhase::Admitted | JobPhase::Running));
    let restarted = 1903.0;
    cycle(&mut c, restarted + 2390.0);
    assert_ne!(phase(&c, "low"), JobPhase::Succeeded);
    for t in [2420.0, 2421.0, 2422.0] {
        cycle(&mut c, restarted + t);
    }
    assert_eq!(phase(&c, "low"), JobPhase::Succeeded);
}

#[test]
fn an_approved_quota_request_raises_the_queue_and_names_are_checked() {
    let mut c = cluster(&[pool("p", "public", 2, 8)], 8);
    c.submit(job("a", 8, "1h", json!({})), None, T0).unwrap();
    c.submit(job("b", 8, "1h", json!({})), None, T0).unwrap();
    cycle(&mut c, 0.0);
    assert_eq!(phase(&c, "b"), JobPhase::Queued);
    let r: QuotaRequest = serde_json::from_value(json!({
        "apiVersion": "haiyun.io/v1alpha1", "kind": "QuotaRequest", "metadata": {"name": "more", "namespace": "ns"},
        "spec": {"queue": "q", "flavor": "nvidia.com/gpu:h100", "amount": "8",
                 "start": jiff::Timestamp::from_second(T0 as i64).unwrap().to_string(),
                 "end": jiff::Timestamp::from_second(T0 as i64 + 7200).unwrap().to_string()}
    }))
    .unwrap();
    c.add_request(r.clone(), T0).unwrap();
    assert!(c.add_request(r, T0).unwrap_err().to_string().contains("already exists"));
    assert!(c.decide("ns", "ghost", haiyun_api::quota::Decision::Approved, "boss").is_err());
    c.decide("ns", "more", haiyun_api::quota::Decision::Approved, "boss").unwrap();
    let again = c.decide("ns", "more", haiyun_api::quota::Decision::Denied, "other");
    assert!(again.unwrap_err().to_string().contains("cannot be changed"));
    cycle(&mut c, 10.0);
    // Who decided is who approved it.
    let st = c.requests()["ns/more"].status.clone().unwrap();
    assert_eq!((st.approved_by.as_str(), format!("{:?}", st.state).as_str()), ("boss", "Active"));
    cycle(&mut c, 11.0);
    assert!(matches!(phase(&c, "b"), JobPhase::Admitted | JobPhase::Running));
    let usage = &c.queues()["q"].status.as_ref().unwrap().usage;
    let h100 = usage.iter().find(|u| u.flavor == "nvidia.com/gpu:h100").unwrap();
    assert_eq!((h100.used.as_str(), h100.quota.as_str()), ("16", "16"));
    let nameless = job("", 1, "1h", json!({}));
    assert!(c.submit(nameless, None, T0).unwrap_err().to_string().contains("metadata.name"));
}

#[test]
fn the_operator_refuses_simulated_pools_it_cannot_serve() {
    let mut c = cluster(&[pool("p", "public", 1, 8)], 8);
    c.submit(job("a", 8, "1h", json!({})), None, T0).unwrap();
    let objects = c.objects();
    // The operator serves Kubernetes and Slurm pools, never simulated ones.
    let operator = crate::backend::Backends::new(vec![
        Arc::new(crate::backend::kubernetes::KubernetesBackend::offline())
            as Arc<dyn crate::backend::PoolBackend>,
        Arc::new(crate::backend::slurm::SlurmPools::default().backend()),
    ]);
    let input = crate::cycle::Input {
        objects: &objects,
        fleet: &FleetView::default(),
        backends: &operator,
        busy: &Default::default(),
        config: SchedulerConfig::default(),
        now: T0,
    };
    let out = crate::cycle::run(&input, &mut Default::default()).unwrap();
    let why = out.snapshot.pools.iter().find(|p| p.name == "p").and_then(|p| p.unavailable.clone()).unwrap();
    assert!(why.contains("only by `haiyun demo`"), "{why}");
    assert!(out.snapshot.nodes.is_empty());
}

#[test]
fn a_cut_link_holds_its_pools_jobs_takes_nothing_new_and_reports_what_ended_meanwhile_after_the_heal() {
    let mut c = cluster(&[pool("edge", "public", 1, 8), pool("dc", "public", 1, 8)], 16);
    c.submit(job("a", 4, "10m", json!({})), Some(120.0), T0).unwrap();
    cycle(&mut c, 0.0);
    cycle(&mut c, 1.0);
    let placed = |c: &MemoryCluster, n: &str| {
        c.jobs()[&format!("ns/{n}")].status.as_ref().and_then(|s| s.placement.clone()).map(|p| p.pool)
    };
    let edge_first = placed(&c, "a").as_deref() == Some("edge");
    let (cut, other) = if edge_first { ("edge", "dc") } else { ("dc", "edge") };
    assert_eq!(phase(&c, "a"), JobPhase::Running);
    assert!(c.backend().set_link(cut, true, T0 + 2.0));
    let snap = cycle(&mut c, 3.0);
    let row = snap.pools.iter().find(|p| p.name == cut).unwrap();
    assert!(row.unavailable.as_deref().unwrap_or_default().contains("policy hold"), "{row:?}");
    assert_eq!(c.pools()[cut].status.as_ref().and_then(|s| s.unreachable_since.clone()), Some(rfc(2.0)));
    // New work goes to the other pool even where the cut one has room.
    c.submit(job("b", 4, "10m", json!({})), Some(60.0), T0 + 3.0).unwrap();
    cycle(&mut c, 4.0);
    assert_eq!(placed(&c, "b").as_deref(), Some(other));
    // The site runs "a" to its end during the cut; the operator, cut off, still sees it running and holds it.
    for t in [130.0, 200.0] {
        cycle(&mut c, t);
        assert_eq!(phase(&c, "a"), JobPhase::Running, "held at {t}");
        assert_eq!(placed(&c, "a").as_deref(), Some(cut));
    }
    // Back: it is recorded as it ended, without a restart.
    assert!(c.backend().set_link(cut, false, T0 + 201.0));
    cycle(&mut c, 202.0);
    cycle(&mut c, 203.0);
    let st = c.jobs()["ns/a"].status.clone().unwrap();
    assert_eq!((st.phase, st.restarts), (JobPhase::Succeeded, 0));
    assert!(c.pools()[cut].status.as_ref().unwrap().unreachable_since.is_none());
}

fn rfc(t: f64) -> String {
    crate::time::rfc3339(T0 + t)
}
