//! Which runs the ledger opens and closes as jobs start, end, are preempted, lose a node, restart or are deleted.

use std::sync::Arc;

use haiyun_api::fixtures;
use haiyun_api::{ComputeJob, ComputePool};
use serde_json::json;

use super::*;
use crate::index::Objects;

const T0: f64 = 1_800_000_000.0;

fn at(t: f64) -> String {
    crate::time::rfc3339(t)
}

fn pool() -> Arc<ComputePool> {
    let mut p = fixtures::pool("a").site("xian").kubernetes(&[("pool", "a")]).value();
    p["spec"]["cost"] = json!({ "gpuHour": { "H100": 2.0 }, "coreHour": 0.01 });
    Arc::new(serde_json::from_value(p).unwrap())
}

/// A job of 2 tasks of 2 GPUs and 8 cores, with `status`.
fn job(name: &str, status: serde_json::Value) -> Arc<ComputeJob> {
    let mut j = fixtures::job("ns", name)
        .queue("q")
        .replicas(2)
        .gpus(2)
        .resources("8", "64Gi")
        .stored(&format!("uid-{name}"), T0 as i64 - 100)
        .build();
    j.spec.submitted_by = Some("alice".into());
    j.spec.datasets = vec!["census".into()];
    j.status = Some(serde_json::from_value(status).unwrap());
    Arc::new(j)
}

fn placement() -> serde_json::Value {
    json!({ "pool": "a", "gpuModel": "H100", "tasks": [
        { "pod": "p0", "node": "n1", "gpus": [0, 1], "gpuMilli": 1000 },
        { "pod": "p1", "node": "n2", "gpus": [0, 1], "gpuMilli": 1000 } ] })
}

fn running(name: &str, preemptions: u32, joules: f64) -> Arc<ComputeJob> {
    job(
        name,
        json!({ "phase": "Running", "placement": placement(), "startTime": at(T0), "preemptions": preemptions,
            "energy": { "joules": joules } }),
    )
}

fn objects(jobs: Vec<Arc<ComputeJob>>) -> Objects {
    Objects { pools: vec![pool()], jobs, ..Default::default() }
}

fn closes(ops: &[Op]) -> Vec<&Close> {
    ops.iter().filter_map(|o| if let Op::Close(c) = o { Some(c) } else { None }).collect()
}

#[test]
fn a_running_job_opens_one_run_with_who_where_what_and_its_price_once() {
    let mut open = Book::default();
    let ops = reconcile(&objects(vec![running("train", 0, 500.0)]), &mut open, T0 + 10.0);
    let [Op::Open(r)] = ops.as_slice() else { panic!("{ops:?}") };
    assert_eq!((r.uid.as_str(), r.run, r.job.as_str()), ("uid-train", 0, "ns/train"));
    assert_eq!((r.queue.as_str(), r.submitter.as_str(), r.site.as_str()), ("q", "alice", "xian"));
    assert_eq!((r.nodes.as_str(), r.gpu_model.as_str()), ("n1,n2", "H100"));
    assert_eq!((r.gpus, r.cpu_cores, r.memory_gib), (4.0, 16.0, 128.0));
    assert_eq!(r.datasets, vec!["census".to_string()]);
    // 4 H100 at 2.0 and 16 cores at 0.01 per hour.
    assert!((r.cost_per_hour - 8.16).abs() < 1e-9, "{}", r.cost_per_hour);
    assert_eq!((r.start, r.energy_start), (T0, 500.0));
    // Nothing changed: nothing to record.
    assert!(reconcile(&objects(vec![running("train", 0, 900.0)]), &mut open, T0 + 20.0).is_empty());
}

#[test]
fn a_finished_run_closes_at_its_completion_time_with_the_energy_it_added() {
    let mut open = Book::default();
    reconcile(&objects(vec![running("train", 0, 500.0)]), &mut open, T0 + 10.0);
    let done = job(
        "train",
        json!({ "phase": "Succeeded", "placement": placement(), "startTime": at(T0),
            "completionTime": at(T0 + 3600.0), "energy": { "joules": 2500.0 } }),
    );
    let ops = reconcile(&objects(vec![done]), &mut open, T0 + 3605.0);
    let [c] = closes(&ops)[..] else { panic!("{ops:?}") };
    assert_eq!((c.end, c.outcome.as_str(), c.energy_joules), (T0 + 3600.0, "Succeeded", 2000.0));
    assert!(open.open.is_empty());
    assert_eq!(open.closed_gpu_seconds["q"], 4.0 * 3600.0);
}

#[test]
fn a_preemption_closes_the_run_and_the_next_placement_opens_the_next_one() {
    let mut open = Book::default();
    reconcile(&objects(vec![running("train", 0, 0.0)]), &mut open, T0 + 10.0);
    let waiting = job("train", json!({ "phase": "Preempted", "preemptions": 1 }));
    let ops = reconcile(&objects(vec![waiting]), &mut open, T0 + 60.0);
    let [c] = closes(&ops)[..] else { panic!("{ops:?}") };
    assert_eq!((c.run, c.end, c.outcome.as_str()), (0, T0 + 60.0, "Preempted"));
    let ops = reconcile(&objects(vec![running("train", 1, 0.0)]), &mut open, T0 + 70.0);
    assert!(matches!(ops.as_slice(), [Op::Open(r)] if r.run == 1), "{ops:?}");
}

#[test]
fn a_lost_node_a_failed_run_and_a_deleted_job_say_how_and_when_they_ended() {
    let mut open = Book::default();
    let jobs = vec![running("lost", 0, 0.0), running("broken", 0, 0.0), running("gone", 0, 0.0)];
    reconcile(&objects(jobs), &mut open, T0 + 10.0);
    let lost = job(
        "lost",
        json!({ "phase": "Preempted", "preemptions": 1,
            "lastFailure": { "reason": "NodeLost", "message": "node n1 lost", "time": at(T0 + 30.0) } }),
    );
    let broken = job(
        "broken",
        json!({ "phase": "Queued", "restarts": 1,
            "lastFailure": { "reason": "Error", "message": "exit 1", "time": at(T0 + 40.0) } }),
    );
    let ops = reconcile(&objects(vec![lost, broken]), &mut open, T0 + 50.0);
    let mut got: Vec<(&str, f64, &str)> =
        closes(&ops).iter().map(|c| (c.uid.as_str(), c.end - T0, c.outcome.as_str())).collect();
    got.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(
        got,
        vec![("uid-broken", 40.0, "Failed"), ("uid-gone", 50.0, "Deleted"), ("uid-lost", 30.0, "NodeLost")]
    );
}

#[test]
fn a_failure_older_than_the_run_is_not_what_ended_it() {
    let mut open = Book::default();
    reconcile(&objects(vec![running("train", 0, 0.0)]), &mut open, T0 + 10.0);
    // Preempted later; its last failure is from an earlier run.
    let waiting = job(
        "train",
        json!({ "phase": "Preempted", "preemptions": 1,
            "lastFailure": { "reason": "NodeLost", "message": "old", "time": at(T0 - 500.0) } }),
    );
    let ops = reconcile(&objects(vec![waiting]), &mut open, T0 + 60.0);
    let [c] = closes(&ops)[..] else { panic!("{ops:?}") };
    assert_eq!((c.end, c.outcome.as_str()), (T0 + 60.0, "Preempted"));
}

#[test]
fn runs_loaded_open_from_the_ledger_are_closed_or_kept_after_a_restart() {
    // What the ledger held open when the operator restarted: one run still going, one whose job finished meanwhile.
    let mut open = Book::default();
    reconcile(&objects(vec![running("a", 0, 0.0), running("b", 0, 0.0)]), &mut open, T0 + 10.0);
    let b = job(
        "b",
        json!({ "phase": "Failed", "placement": placement(), "startTime": at(T0), "completionTime": at(T0 + 20.0) }),
    );
    let ops = reconcile(&objects(vec![running("a", 0, 0.0), b]), &mut open, T0 + 300.0);
    assert!(
        matches!(closes(&ops)[..], [c] if c.uid == "uid-b" && c.end == T0 + 20.0 && c.outcome == "Failed")
    );
    assert_eq!(open.open.keys().cloned().collect::<Vec<_>>(), vec![("uid-a".to_string(), 0)]);
}

#[test]
fn a_closed_run_adds_its_decayed_usage_to_its_queue_and_older_usage_halves_each_half_life() {
    let h = 3600.0;
    let mut book = Book { half_life: Some(h), ..Book::default() };
    reconcile(&objects(vec![running("train", 0, 0.0)]), &mut book, T0 + 10.0);
    let done = job(
        "train",
        json!({ "phase": "Succeeded", "placement": placement(), "startTime": at(T0),
            "completionTime": at(T0 + 2.0 * h) }),
    );
    reconcile(&objects(vec![done]), &mut book, T0 + 2.0 * h + 5.0);
    // 4 GPUs for two half-lives: 4 × (1 - 1/4) × h / ln 2 GPU-seconds as of its end; 16 cores alike.
    let past = &book.past["q"];
    let expect = |n: f64| n * 0.75 * h / std::f64::consts::LN_2;
    assert_eq!(past.at, T0 + 2.0 * h);
    assert!((past.amounts["nvidia.com/gpu:h100"] - expect(4.0)).abs() < 1e-6, "{past:?}");
    assert!((past.amounts["cpu"] - expect(16.0)).abs() < 1e-6, "{past:?}");
    // A run ending one half-life later halves what was there before adding itself.
    let before = past.amounts["nvidia.com/gpu:h100"];
    // A zero-length run adds nothing of its own.
    let later = Run {
        uid: "x".into(),
        run: 0,
        job: "ns/x".into(),
        namespace: "ns".into(),
        queue: "q".into(),
        submitter: String::new(),
        pool: "a".into(),
        site: String::new(),
        nodes: String::new(),
        gpu_model: "H100".into(),
        gpus: 1.0,
        cpu_cores: 0.0,
        memory_gib: 0.0,
        datasets: Vec::new(),
        cost_per_hour: 0.0,
        start: T0 + 3.0 * h,
        energy_start: 0.0,
    };
    book.add_past(&later, T0 + 3.0 * h);
    assert!((book.past["q"].amounts["nvidia.com/gpu:h100"] - before / 2.0).abs() < 1e-6);
    let mut none = Book::default();
    none.add_past(&later, T0);
    assert!(none.past.is_empty(), "without a half-life nothing is kept");
}
