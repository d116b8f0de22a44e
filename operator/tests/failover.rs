//! The operator under failure on a real API server: SIGKILL during binding, restarts, and two replicas where only
//! the leader binds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use haiyun_api::{ComputeJob, ComputePool, GPUS_ANNOTATION, JOB_NAME_LABEL, Queue};
use haiyun_scheduler::rng::SplitMix64;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use support::{Env, job, pool, queue, wait_for};

/// What a pod watch saw: GPUs held twice, and each pod name's distinct pod objects that were bound.
#[derive(Default)]
struct Seen {
    /// (node, gpu) → pod uid holding it.
    held: HashMap<(String, u32), String>,
    /// pod uid → what it holds.
    holds: HashMap<String, Vec<(String, u32)>>,
    conflicts: Vec<String>,
    bound: BTreeMap<String, BTreeSet<String>>,
}

impl Seen {
    fn release(&mut self, uid: &str) {
        for k in self.holds.remove(uid).unwrap_or_default() {
            if self.held.get(&k).map(String::as_str) == Some(uid) {
                self.held.remove(&k);
            }
        }
    }

    fn observe(&mut self, pod: &Pod, deleted: bool) {
        let uid = pod.uid().unwrap_or_default();
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else { return };
        if deleted || phase == "Succeeded" || phase == "Failed" {
            self.release(&uid);
            return;
        }
        if self.holds.contains_key(&uid) {
            return;
        }
        self.bound.entry(pod.name_any()).or_default().insert(uid.clone());
        let gpus: Vec<u32> = pod
            .annotations()
            .get(GPUS_ANNOTATION)
            .map(|s| s.split(',').filter_map(|g| g.parse().ok()).collect())
            .unwrap_or_default();
        let mut mine = Vec::new();
        for g in gpus {
            let key = (node.clone(), g);
            if let Some(other) = self.held.get(&key) {
                self.conflicts.push(format!("{node}/{g}: pod {} while {other} holds it", pod.name_any()));
            }
            self.held.insert(key.clone(), uid.clone());
            mine.push(key);
        }
        self.holds.insert(uid, mine);
    }
}

fn watch_pods(env: &Env) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let api: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let s = seen.clone();
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default().labels(JOB_NAME_LABEL));
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            let Ok(ev) = ev else { continue };
            let mut s = s.lock().unwrap();
            match ev {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => s.observe(&p, false),
                watcher::Event::Delete(p) => s.observe(&p, true),
                _ => {}
            }
        }
    });
    seen
}

#[tokio::test]
async fn twenty_sigkills_during_binding_lose_no_job_or_ledger_run_bind_no_pod_twice_and_keep_quota_usage_exact()
 {
    let Some(env) = Env::start("crash").await else { return };
    env.nodes("a", 4, 8, "H100").await;
    env.create::<ComputePool>(pool(&env, "crash-pool", "a", "public")).await.unwrap();
    env.create::<Queue>(queue("crash-q", "nvidia.com/gpu:h100", 1000)).await.unwrap();
    let seen = watch_pods(&env);
    let mut rng = SplitMix64::new(20);
    let jobs = 40;
    let submitter = {
        let client = env.client.clone();
        let shapes: Vec<(u32, u32, u64)> = (0..jobs)
            .map(|_| {
                (1 + (rng.next_u64() % 2) as u32, 2 + 2 * (rng.next_u64() % 2) as u32, 1 + rng.next_u64() % 3)
            })
            .collect();
        tokio::spawn(async move {
            let api: Api<kube::core::DynamicObject> =
                Api::namespaced_with(client, "default", &kube::core::ApiResource::erase::<ComputeJob>(&()));
            for (i, (replicas, gpus, secs)) in shapes.into_iter().enumerate() {
                let obj = serde_json::from_value(job(
                    &format!("j{i:02}"),
                    "crash-q",
                    replicas,
                    gpus,
                    &format!("{secs}s"),
                ))
                .unwrap();
                api.create(&Default::default(), &obj).await.unwrap();
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    let ledger = format!("sqlite://{}", env.dir.join("ledger.db").display());
    let with_ledger = ["--ledger", ledger.as_str()];
    for _ in 0..20 {
        let mut op = env.operator("crashy", &with_ledger);
        tokio::time::sleep(Duration::from_millis(400 + rng.next_u64() % 1200)).await;
        op.kill();
    }
    submitter.await.unwrap();
    let placed_while_crashing = env.decisions().iter().filter(|d| d["event"] == "place").count();
    assert!(
        placed_while_crashing >= 10,
        "the kills did not interleave with binding: {placed_while_crashing} placed"
    );
    let _op = env.operator("crashy", &with_ledger);
    let api: Api<ComputeJob> = Api::namespaced(env.client.clone(), "default");
    wait_for("every job to succeed", Duration::from_secs(180), || async {
        let list = api.list(&Default::default()).await.ok()?;
        let done = list
            .items
            .iter()
            .filter(|j| j.status.as_ref().is_some_and(|s| format!("{:?}", s.phase) == "Succeeded"))
            .count();
        (done == jobs).then_some(())
    })
    .await;
    let expected: usize = api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|j| j.spec.task_groups[0].replicas as usize)
        .sum();
    {
        let s = seen.lock().unwrap();
        assert!(s.conflicts.is_empty(), "GPUs held by two pods at once: {:?}", s.conflicts);
        let twice: Vec<_> = s.bound.iter().filter(|(_, uids)| uids.len() > 1).collect();
        assert!(twice.is_empty(), "pods bound more than once: {twice:?}");
        assert_eq!(s.bound.len(), expected, "every task ran exactly once");
    }

    ledger_matches_the_decision_log(&env, &ledger, jobs).await;

    // Quota usage the operator reports equals what the API says is admitted, across one more kill.
    for i in 0..3 {
        let obj = job(&format!("long{i}"), "crash-q", 1, 8, "60s");
        env.create::<ComputeJob>(obj).await.unwrap();
    }
    drop(_op);
    let _op = env.operator("crashy", &with_ledger);
    let queues: Api<Queue> = Api::all(env.client.clone());
    wait_for("queue usage to match the admitted jobs", Duration::from_secs(60), || async {
        let list = api.list(&Default::default()).await.ok()?;
        let admitted: usize = list
            .items
            .iter()
            .filter(|j| {
                j.status
                    .as_ref()
                    .is_some_and(|s| matches!(format!("{:?}", s.phase).as_str(), "Admitted" | "Running"))
            })
            .flat_map(|j| {
                j.status.as_ref().unwrap().placement.as_ref().unwrap().tasks.iter().map(|t| t.gpus.len())
            })
            .sum();
        let used = queues.get("crash-q").await.ok()?.status?.usage.first()?.used.clone();
        (admitted == 24 && used == "24").then_some(())
    })
    .await;
}

/// Every run of the decision log is in the usage ledger with the same GPU-seconds. Both kinds of line are written
/// before the status they stand for, so a kill while that write is in flight may leave one the next operator writes
/// again: a run is the last `place` line before its end, and ends at the last `finish` or `preempt` after it.
async fn ledger_matches_the_decision_log(env: &Env, url: &str, jobs: usize) {
    use haiyun_operator::ledger::store::Store;
    use haiyun_operator::ledger::usage::{By, Usage};
    let store = Store::open(url).await.unwrap();
    wait_for("the ledger to close every run", Duration::from_secs(30), || async {
        store.open_runs().await.ok()?.is_empty().then_some(())
    })
    .await;
    let time = |d: &serde_json::Value| d["time"].as_str().and_then(haiyun_operator::time::parse).unwrap();
    let mut runs: BTreeMap<String, Vec<(f64, f64, Option<f64>)>> = BTreeMap::new();
    for d in env.decisions().iter().filter(|d| d["queue"] == "crash-q") {
        let job = d["job"].as_str().unwrap().to_string();
        match d["event"].as_str().unwrap() {
            "place" => {
                let gpus: f64 = d["tasks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| {
                        t["gpus"].as_array().unwrap().len() as f64 * t["gpu_milli"].as_f64().unwrap() / 1000.0
                    })
                    .sum();
                let job = runs.entry(job).or_default();
                if job.last().is_some_and(|r| r.2.is_none()) {
                    job.pop(); // placed again: the earlier line's status write did not land
                }
                job.push((time(d), gpus, None));
            }
            "finish" | "preempt" => {
                if let Some(last) = runs.get_mut(&job).and_then(|r| r.last_mut()) {
                    last.2 = Some(time(d));
                }
            }
            _ => {}
        }
    }
    assert_eq!(runs.len(), jobs, "every job has a place line");
    let logged_runs: usize = runs.values().map(Vec::len).sum();
    let logged: f64 = runs.values().flatten().map(|(start, gpus, end)| gpus * (end.unwrap() - start)).sum();
    let now = haiyun_operator::time::now();
    let rows = store.usage(&Usage { by: By::Queue, from: None, to: None }, now).await.unwrap();
    let row = rows.iter().find(|r| r.key == "crash-q").unwrap();
    eprintln!(
        "ledger: {} runs, {:.3} GPU-seconds; decision log: {logged_runs} runs, {logged:.3}",
        row.runs, row.gpu_seconds
    );
    assert_eq!(row.runs as usize, logged_runs, "the ledger holds every run of the log");
    assert!((row.gpu_seconds - logged).abs() < 1e-6 * logged.max(1.0), "{} vs {logged}", row.gpu_seconds);
}

#[tokio::test]
async fn of_two_replicas_only_the_leader_binds_and_the_other_takes_over_when_it_dies() {
    let Some(env) = Env::start("leader").await else { return };
    env.nodes("a", 2, 8, "H100").await;
    env.create::<ComputePool>(pool(&env, "leader-pool", "a", "public")).await.unwrap();
    env.create::<Queue>(queue("leader-q", "nvidia.com/gpu:h100", 64)).await.unwrap();
    let mut a = env.operator("a", &[]);
    let mut b = env.operator("b", &[]);
    let leader = wait_for("one leader", Duration::from_secs(30), || async {
        let (la, lb) = (a.metric("haiyun_leader").await?, b.metric("haiyun_leader").await?);
        match (la, lb) {
            (1.0, 0.0) => Some('a'),
            (0.0, 1.0) => Some('b'),
            _ => None,
        }
    })
    .await;
    for i in 0..3 {
        env.create::<ComputeJob>(job(&format!("l{i}"), "leader-q", 1, 4, "1s")).await.unwrap();
    }
    for i in 0..3 {
        env.wait_phase("default", &format!("l{i}"), "Succeeded", Duration::from_secs(60)).await;
    }
    let (lead, standby) = if leader == 'a' { (&a, &b) } else { (&b, &a) };
    assert!(lead.metric("haiyun_pods_bound_total").await.unwrap() >= 3.0);
    assert_eq!(standby.metric("haiyun_pods_bound_total").await, Some(0.0), "the standby bound a pod");

    // The leader dies; the standby takes the lease and schedules.
    if leader == 'a' {
        a.kill();
    } else {
        b.kill();
    }
    let survivor = if leader == 'a' { &b } else { &a };
    env.create::<ComputeJob>(job("after", "leader-q", 1, 4, "1s")).await.unwrap();
    env.wait_phase("default", "after", "Succeeded", Duration::from_secs(60)).await;
    assert_eq!(survivor.metric("haiyun_leader").await, Some(1.0));
}
