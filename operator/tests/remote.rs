//! Remote Kubernetes clusters as pools, on testenv: the local control plane and two more (kwok), one reached through
//! a TCP relay the test cuts. A queue spans all three; every gang runs in one cluster and no job ever has live pods
//! in two; pods' phases flow back; the collector deletes what a deleted job left remotely; a bad kubeconfig is a
//! condition and a rotated Secret takes effect without a restart; a cut cluster takes nothing new and keeps its jobs
//! (policy hold), across an operator SIGKILL, and is reconciled after the link heals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use haiyun_api::fixtures;
use haiyun_api::{ComputeJob, ComputePool, JOB_UID_LABEL, Queue};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use support::remote::{Relay, remotes, secret};
use support::{Env, job, pool, queue, wait_for};

const LONG: Duration = Duration::from_secs(90);
/// Fast links for tests: a heartbeat every 500 ms, down after 3 s unanswered, Secrets read every second.
const FAST: [&str; 6] =
    ["--remote-heartbeat-ms", "500", "--remote-grace-seconds", "3", "--remote-sync-ms", "1000"];

fn origin(env: &Env) -> String {
    haiyun_operator::backend::remote::links::origin(&env.lease(), "default")
}

/// A pool of the remote cluster behind Secret `secret`, over the nodes of `group` made there by this test.
fn remote_pool(env: &Env, name: &str, secret: &str, group: &str) -> serde_json::Value {
    let selector = [("haiyun.io/test", env.name.as_str()), ("haiyun.io/group", group)];
    fixtures::pool(name).site(name).remote(secret, &selector).value()
}

/// The Ready condition of a pool: (status, reason, message).
async fn ready(env: &Env, name: &str) -> Option<(String, String, String)> {
    support::remote::pool_ready(&env.client, name).await
}

async fn wait_ready(env: &Env, name: &str, status: &str, reason: &str, limit: Duration) -> String {
    support::remote::wait_pool_ready(&env.client, name, status, reason, limit).await
}

/// The pool a job's status places it in.
fn pool_of(j: &ComputeJob) -> Option<String> {
    j.status.as_ref()?.placement.as_ref().map(|p| p.pool.clone())
}

/// Live (not ended, not terminating) pods of each job uid, by cluster name.
async fn live_pods(clusters: &[(&str, Api<Pod>)], label: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, api) in clusters {
        let Ok(list) = api.list(&ListParams::default().labels(label)).await else { continue };
        for p in list.items {
            let phase = p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
            if p.metadata.deletion_timestamp.is_some() || phase == "Succeeded" || phase == "Failed" {
                continue;
            }
            if let Some(uid) = p.labels().get(JOB_UID_LABEL) {
                out.entry(uid.clone()).or_default().insert(name.to_string());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_spans_three_clusters_with_every_gang_in_one_and_status_flowing_back() {
    let Some(env) = Env::start("federation").await else { return };
    let Some(rs) = remotes(2).await else { return };
    for r in &rs {
        r.clean().await;
    }
    env.nodes("local", 2, 8, "H100").await;
    rs[0].nodes(&env, "east", 2, 8, "H100").await;
    rs[1].nodes(&env, "west", 2, 8, "H100").await;
    env.create::<Queue>(queue("fed-q", "nvidia.com/gpu:h100", 48)).await.unwrap();
    env.create::<ComputePool>(pool(&env, "local", "local", "public")).await.unwrap();

    // Malformed remote pools are refused by the API server, naming the field.
    let mut two = remote_pool(&env, "two", "s", "east");
    two["spec"]["backend"]["kubernetes"] = serde_json::json!({});
    let e = env.create::<ComputePool>(two).await.unwrap_err();
    assert!(e.contains("set exactly one of backend.kubernetes, backend.remoteKubernetes"), "{e}");
    let e = env.create::<ComputePool>(remote_pool(&env, "nameless", "", "east")).await.unwrap_err();
    assert!(e.contains("secretName") && e.contains("the Secret holding the kubeconfig"), "{e}");

    // A kubeconfig that skips TLS verification is refused, naming the field; fixing the Secret links the cluster
    // without a restart.
    let insecure =
        rs[0].kubeconfig.replace("certificate-authority-data:", "insecure-skip-tls-verify: true\n    x-ca:");
    secret(&env, "east-kubeconfig", &insecure).await;
    secret(&env, "west-kubeconfig", &rs[1].kubeconfig).await;
    env.create::<ComputePool>(remote_pool(&env, "east", "east-kubeconfig", "east")).await.unwrap();
    env.create::<ComputePool>(remote_pool(&env, "west", "west-kubeconfig", "west")).await.unwrap();
    let op = env.operator("fed", &FAST);
    let why = wait_ready(&env, "east", "False", "BadKubeConfig", LONG).await;
    assert!(why.contains("insecure-skip-tls-verify") && why.contains("east-kubeconfig"), "{why}");
    secret(&env, "east-kubeconfig", &rs[0].kubeconfig).await;
    wait_ready(&env, "east", "True", "Serving", LONG).await;
    wait_ready(&env, "west", "True", "Serving", LONG).await;

    // An outside watcher lists every cluster every 500 ms: no job may have live pods in two clusters, ever.
    let seen_twice: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let clusters = vec![
            ("local", Api::<Pod>::namespaced(env.client.clone(), "default")),
            ("east", Api::<Pod>::namespaced(rs[0].client.clone(), "default")),
            ("west", Api::<Pod>::namespaced(rs[1].client.clone(), "default")),
        ];
        let (seen_twice, stop) = (seen_twice.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen: BTreeSet<String> = BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for (uid, where_) in live_pods(&clusters, JOB_UID_LABEL).await {
                    if where_.len() > 1 {
                        seen_twice.lock().unwrap().push(format!("{uid} in {where_:?}"));
                    }
                    seen.insert(uid);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            seen
        })
    };

    // Three gangs of 2 × 8 GPUs: each fills one cluster's two nodes, so they must go one to each cluster.
    let gangs = ["gang-a", "gang-b", "gang-c"];
    for g in gangs {
        env.create::<ComputeJob>(job(g, "fed-q", 2, 8, "6s")).await.unwrap();
    }
    let mut pools = BTreeSet::new();
    for g in gangs {
        let j = env.wait_phase("default", g, "Running", LONG).await;
        let placement = j.status.as_ref().unwrap().placement.clone().unwrap();
        let nodes: BTreeSet<&str> = placement.tasks.iter().map(|t| t.node.as_str()).collect();
        assert_eq!(nodes.len(), 2, "{g} is a gang of two full nodes: {nodes:?}");
        if placement.pool != "local" {
            assert!(nodes.iter().all(|n| n.starts_with(&format!("{}/", placement.pool))), "{g}: {nodes:?}");
        }
        pools.insert(placement.pool);
    }
    assert_eq!(pools, BTreeSet::from(["east".to_string(), "local".into(), "west".into()]));

    // Remote pods carry the origin, the job's uid and its run (the epoch); no owner (the job is not there).
    let remote_pods = rs[0].pods(&origin(&env)).await;
    assert_eq!(remote_pods.len(), 2, "the east gang's two pods are in the east cluster");
    for p in &remote_pods {
        assert!(p.labels().contains_key(JOB_UID_LABEL) && p.labels().contains_key(haiyun_api::RUN_LABEL));
        assert!(p.owner_references().is_empty());
    }
    // Their phases flow back: each gang ends Succeeded when its pods do, wherever it ran.
    for g in gangs {
        env.wait_phase("default", g, "Succeeded", LONG).await;
    }

    // More jobs than fit at once flow through all clusters under the one queue.
    for i in 0..6 {
        env.create::<ComputeJob>(job(&format!("small-{i}"), "fed-q", 1, 8, "3s")).await.unwrap();
    }
    for i in 0..6 {
        env.wait_phase("default", &format!("small-{i}"), "Succeeded", LONG).await;
    }

    // A job deleted while it runs remotely leaves nothing there: the collector deletes its pods and Service.
    env.create::<ComputeJob>(job("doomed", "fed-q", 2, 8, "10m")).await.unwrap();
    env.create::<ComputeJob>(job("doomed-local", "fed-q", 2, 8, "10m")).await.unwrap();
    env.create::<ComputeJob>(job("doomed-2", "fed-q", 2, 8, "10m")).await.unwrap();
    let mut remote_doomed = None;
    for name in ["doomed", "doomed-local", "doomed-2"] {
        let j = env.wait_phase("default", name, "Running", LONG).await;
        if pool_of(&j).as_deref() == Some("east") {
            remote_doomed = Some(name);
        }
    }
    let doomed = remote_doomed.expect("one of three full-cluster jobs runs in east");
    let jobs: Api<ComputeJob> = Api::namespaced(env.client.clone(), "default");
    jobs.delete(doomed, &DeleteParams::default()).await.unwrap();
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(rs[0].client.clone(), "default");
    wait_for("the deleted job's remote pods and Service collected", Duration::from_secs(30), || async {
        let pods = rs[0].pods(&origin(&env)).await;
        let mut left = pods
            .iter()
            .filter(|p| p.labels().get(haiyun_api::JOB_NAME_LABEL).map(String::as_str) == Some(doomed));
        let svc = services.get_opt(doomed).await.ok()?;
        (left.all(|p| p.metadata.deletion_timestamp.is_some()) && svc.is_none()).then_some(())
    })
    .await;

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    // The watcher looked while they ran: it saw every gang's pods live.
    let seen = watcher.await.unwrap();
    for g in gangs {
        let uid = env.job("default", g).await.metadata.uid.unwrap();
        assert!(seen.contains(&uid), "the watcher never saw {g}'s pods live");
    }
    let twice = seen_twice.lock().unwrap().clone();
    assert!(twice.is_empty(), "jobs with live pods in two clusters: {twice:?}");
    assert!(!op.log_text().contains("panicked"), "{}", op.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_cluster_takes_nothing_new_keeps_its_jobs_and_is_reconciled_after_the_link_heals() {
    let Some(env) = Env::start("cut-link").await else { return };
    let Some(rs) = remotes(2).await else { return };
    for r in &rs {
        r.clean().await;
    }
    let relay = Relay::start(rs[0].addr).await;
    rs[0].nodes(&env, "edge", 2, 8, "H100").await;
    rs[1].nodes(&env, "dc", 2, 8, "H100").await;
    env.create::<Queue>(queue("cut-q", "nvidia.com/gpu:h100", 32)).await.unwrap();
    secret(&env, "edge-kubeconfig", &rs[0].kubeconfig_via(relay.addr)).await;
    secret(&env, "dc-kubeconfig", &rs[1].kubeconfig).await;
    env.create::<ComputePool>(remote_pool(&env, "edge", "edge-kubeconfig", "edge")).await.unwrap();
    let mut op = env.operator("cut-1", &FAST);
    wait_ready(&env, "edge", "True", "Serving", LONG).await;

    // The edge cluster runs a long job, one that ends during the cut, and one deleted during the cut. The cut lasts
    // 16 s more after the operator's restart here; HAIYUN_TEST_CUT_SECONDS=600 gives the full 10 minutes.
    let cut_s: u64 = std::env::var("HAIYUN_TEST_CUT_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    env.create::<ComputeJob>(job("long", "cut-q", 1, 8, &format!("{}s", cut_s + 600))).await.unwrap();
    env.create::<ComputeJob>(job("short", "cut-q", 1, 4, "15s")).await.unwrap();
    env.create::<ComputeJob>(job("dropped", "cut-q", 1, 4, &format!("{}s", cut_s + 600))).await.unwrap();
    for name in ["long", "short", "dropped"] {
        let j = env.wait_phase("default", name, "Running", LONG).await;
        assert_eq!(pool_of(&j).as_deref(), Some("edge"));
    }
    env.create::<ComputePool>(remote_pool(&env, "dc", "dc-kubeconfig", "dc")).await.unwrap();
    wait_ready(&env, "dc", "True", "Serving", LONG).await;

    // Cut: within 30 s the pool is unplaceable, and says since when.
    let cut_at = Instant::now();
    relay.cut();
    let why = wait_ready(&env, "edge", "False", "Unreachable", Duration::from_secs(30)).await;
    let unplaceable = cut_at.elapsed();
    assert!(why.contains("policy hold"), "{why}");
    let pools: Api<ComputePool> = Api::all(env.client.clone());
    let since = pools.get("edge").await.unwrap().status.unwrap().unreachable_since.expect("unreachableSince");
    eprintln!("edge unplaceable {:.1} s after the cut (since {since})", unplaceable.as_secs_f64());

    // Other clusters keep flowing: new work goes to dc, none to the cut edge.
    env.create::<ComputeJob>(job("during", "cut-q", 2, 8, "5s")).await.unwrap();
    let j = env.wait_phase("default", "during", "Running", LONG).await;
    assert_eq!(pool_of(&j).as_deref(), Some("dc"));
    let jobs: Api<ComputeJob> = Api::namespaced(env.client.clone(), "default");
    jobs.delete("dropped", &DeleteParams::default()).await.unwrap();

    // The operator dies mid-cut; the next one keeps the time of first loss.
    op.kill();
    let op2 = env.operator("cut-2", &FAST);
    env.wait_phase("default", "during", "Succeeded", LONG).await;
    wait_ready(&env, "edge", "False", "Unreachable", LONG).await;
    let after = pools.get("edge").await.unwrap().status.unwrap().unreachable_since;
    assert_eq!(after.as_deref(), Some(since.as_str()), "the restarted operator kept the cut's start");
    // Held through the cut: nothing was evicted, restarted or placed again.
    tokio::time::sleep(Duration::from_secs(cut_s)).await;
    for name in ["long", "short"] {
        let j = env.job("default", name).await;
        let st = j.status.as_ref().unwrap();
        assert_eq!(format!("{:?}", st.phase), "Running", "{name} is held while its cluster is cut");
        assert_eq!(st.restarts, 0, "{name}");
        assert_eq!(pool_of(&j).as_deref(), Some("edge"));
    }

    // Heal: converged within 60 s. The job that ended during the cut is recorded Succeeded, the long one runs on,
    // and the deleted job's pods are collected.
    let healed_at = Instant::now();
    relay.heal();
    wait_ready(&env, "edge", "True", "Serving", Duration::from_secs(60)).await;
    env.wait_phase("default", "short", "Succeeded", Duration::from_secs(60)).await;
    wait_for("the deleted job's edge pods collected", Duration::from_secs(60), || async {
        let pods = rs[0].pods(&origin(&env)).await;
        let left: Vec<_> = pods
            .iter()
            .filter(|p| p.labels().get(haiyun_api::JOB_NAME_LABEL).map(String::as_str) == Some("dropped"))
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        left.is_empty().then_some(())
    })
    .await;
    eprintln!("converged {:.1} s after the link healed", healed_at.elapsed().as_secs_f64());
    let long = env.job("default", "long").await;
    assert_eq!(format!("{:?}", long.status.as_ref().unwrap().phase), "Running");
    assert_eq!(long.status.as_ref().unwrap().restarts, 0);
    let pools_now = pools.get("edge").await.unwrap().status.unwrap();
    assert!(pools_now.unreachable_since.is_none());
    let reasons = env.event_reasons("default", "long").await;
    assert!(!reasons.iter().any(|r| r == "Preempted" || r == "NodeLost" || r == "Restarting"), "{reasons:?}");

    // The queue's books equal a recomputation from the jobs: only "long" (8 GPUs) holds quota now.
    wait_for("queue usage equal to the running jobs'", Duration::from_secs(30), || async {
        let q = Api::<Queue>::all(env.client.clone()).get("cut-q").await.ok()?;
        let st = q.status?;
        let gpus = st.usage.iter().filter(|u| u.flavor.starts_with("nvidia.com/gpu"));
        let used: f64 = gpus.map(|u| u.used.parse::<f64>().unwrap_or(-1.0)).sum();
        (used == 8.0 && st.admitted == 1).then_some(())
    })
    .await;
    assert!(!op2.log_text().contains("panicked"), "{}", op2.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_in_a_remote_cluster_of_real_nodes_rendezvous_there_and_its_exit_code_flows_back() {
    let Some(path) = std::env::var_os("HAIYUN_TEST_REAL_KUBECONFIG") else {
        assert!(
            std::env::var_os("HAIYUN_REQUIRE_REAL_NODES").is_none(),
            "HAIYUN_TEST_REAL_KUBECONFIG is not set"
        );
        eprintln!("skipped: no real nodes (scripts/test.sh starts them as root)");
        return;
    };
    let Some(env) = Env::start("remote-real").await else { return };
    let real = std::fs::read_to_string(path).unwrap();
    // The real cluster is clean of earlier tests' jobs and pods: they would hold its GPUs.
    let real_env = support::remote::client_of(&real).await;
    support::remote::delete_job_pods(&real_env).await;
    secret(&env, "lab-kubeconfig", &real).await;
    let lab =
        fixtures::pool("lab").site("lab").remote("lab-kubeconfig", &[("testenv.io/real", "true")]).value();
    env.create::<ComputePool>(lab).await.unwrap();
    env.create::<Queue>(queue("lab-q", "nvidia.com/gpu:h100", 4)).await.unwrap();
    let _op = env.operator("only", &FAST);
    wait_ready(&env, "lab", "True", "Serving", LONG).await;

    // The training contract holds in the remote cluster: its headless Service, DNS names and environment.
    env.create::<ComputeJob>(support::real_job("allreduce", "lab-q", 2, 1, support::ALL_REDUCE))
        .await
        .unwrap();
    let done = wait_for("the remote all-reduce to end", Duration::from_secs(150), || async {
        let j = env.job("default", "allreduce").await;
        let phase = j.status.as_ref().map(|s| s.phase);
        matches!(phase, Some(haiyun_api::JobPhase::Succeeded | haiyun_api::JobPhase::Failed)).then_some(j)
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(real_env.clone(), "default");
    let out0 = pods.logs("allreduce-worker-0", &Default::default()).await.unwrap_or_default();
    let out1 = pods.logs("allreduce-worker-1", &Default::default()).await.unwrap_or_default();
    assert_eq!(
        done.status.as_ref().map(|s| s.phase),
        Some(haiyun_api::JobPhase::Succeeded),
        "{:?}\nrank 0: {out0}\nrank 1: {out1}",
        done.status
    );
    assert_eq!(pool_of(&done).as_deref(), Some("lab"));
    assert!(out1.contains("rank 1 of 2 (world 2): sum 3 6 9"), "{out1}");

    // A task's exit code, decided by a real kubelet over there, is in the job's status here.
    let mut three = support::real_job("three", "lab-q", 1, 1, "exit 3");
    three["spec"]["maxRestarts"] = serde_json::json!(0);
    env.create::<ComputeJob>(three).await.unwrap();
    let failed = env.wait_phase("default", "three", "Failed", Duration::from_secs(120)).await;
    let failure = failed.status.unwrap().last_failure.unwrap();
    assert_eq!((failure.exit_code, failure.reason.as_str()), (Some(3), "Error"), "{failure:?}");

    // A kubelet's warning over there (an image that is not on its node) is copied onto the job here.
    let mut missing = support::real_job("missing", "lab-q", 1, 1, "true");
    missing["spec"]["taskGroups"][0]["template"]["spec"]["containers"][0]["image"] =
        serde_json::json!("localhost/testenv/missing:1");
    env.create::<ComputeJob>(missing).await.unwrap();
    let reasons = wait_for("the remote kubelet's warning on the job", Duration::from_secs(90), || async {
        let r = env.event_reasons("default", "missing").await;
        r.iter().any(|r| r == "RemoteErrImageNeverPull").then_some(r)
    })
    .await;
    eprintln!("copied: {reasons:?}");
    let jobs: Api<ComputeJob> = Api::namespaced(env.client.clone(), "default");
    jobs.delete("missing", &DeleteParams::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_link_evicts_nothing_and_dispatches_nothing_again() {
    let Some(env) = Env::start("flapping").await else { return };
    let Some(rs) = remotes(1).await else { return };
    rs[0].clean().await;
    let relay = Relay::start(rs[0].addr).await;
    rs[0].nodes(&env, "flap", 2, 8, "H100").await;
    env.create::<Queue>(queue("flap-q", "nvidia.com/gpu:h100", 16)).await.unwrap();
    secret(&env, "flap-kubeconfig", &rs[0].kubeconfig_via(relay.addr)).await;
    env.create::<ComputePool>(remote_pool(&env, "flap", "flap-kubeconfig", "flap")).await.unwrap();
    let op = env.operator("flap", &FAST);
    wait_ready(&env, "flap", "True", "Serving", LONG).await;
    env.create::<ComputeJob>(job("steady", "flap-q", 2, 8, "10m")).await.unwrap();
    let before = env.wait_phase("default", "steady", "Running", LONG).await;
    let pod_uids = |pods: Vec<Pod>| -> BTreeSet<String> { pods.iter().filter_map(|p| p.uid()).collect() };
    let first = pod_uids(rs[0].pods(&origin(&env)).await);
    assert_eq!(first.len(), 2);

    // Down 5 s in every 12 (scaled from 5 s in 30 with a 3 s grace): each cut makes the pool Unreachable.
    let mut cuts_seen = 0;
    for _ in 0..3 {
        relay.cut();
        let seen = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if ready(&env, "flap").await.is_some_and(|(s, r, _)| s == "False" && r == "Unreachable") {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        cuts_seen += usize::from(seen.is_ok());
        relay.heal();
        wait_ready(&env, "flap", "True", "Serving", Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert!(cuts_seen >= 2, "the pool was Unreachable in only {cuts_seen} of 3 cuts");

    let after = env.job("default", "steady").await;
    let (b, a) = (before.status.unwrap(), after.status.unwrap());
    assert_eq!(format!("{:?}", a.phase), "Running");
    assert_eq!((a.restarts, a.placement.clone()), (0, b.placement.clone()), "placed once, never again");
    assert_eq!(pod_uids(rs[0].pods(&origin(&env)).await), first, "the same two pods ran throughout");
    let reasons = env.event_reasons("default", "steady").await;
    assert!(!reasons.iter().any(|r| r == "Preempted" || r == "NodeLost" || r == "Restarting"), "{reasons:?}");
    assert!(!op.log_text().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_clusters_job_runs_elsewhere_only_after_its_fence_holder_deleted_the_old_pods() {
    let Some(env) = Env::start("fenced").await else { return };
    let Some(rs) = remotes(2).await else { return };
    for r in &rs {
        r.clean().await;
    }
    let relay = Relay::start(rs[0].addr).await;
    rs[0].nodes(&env, "short", 1, 8, "H100").await;
    rs[1].nodes(&env, "other", 1, 8, "H100").await;
    env.create::<Queue>(queue("fence-q", "nvidia.com/gpu:h100", 8)).await.unwrap();
    secret(&env, "short-kubeconfig", &rs[0].kubeconfig_via(relay.addr)).await;
    secret(&env, "other-kubeconfig", &rs[1].kubeconfig).await;
    let mut short = remote_pool(&env, "short", "short-kubeconfig", "short");
    short["spec"]["backend"]["remoteKubernetes"]["partitionPolicy"] = serde_json::json!("fenced");
    short["spec"]["backend"]["remoteKubernetes"]["fenceSeconds"] = serde_json::json!(5);
    env.create::<ComputePool>(short).await.unwrap();

    // The fence holder runs "inside" the short cluster: it reaches that API server directly, not through the relay.
    let kubeconfig = env.dir.join("short-direct.kubeconfig");
    std::fs::write(&kubeconfig, &rs[0].kubeconfig).unwrap();
    let holder_log = env.dir.join("fence-holder.log");
    let out = std::fs::File::create(&holder_log).unwrap();
    let mut holder = std::process::Command::new(env!("CARGO_BIN_EXE_haiyun-operator"))
        .args(["fence", "--origin", &origin(&env), "--interval-ms", "250", "--kubeconfig"])
        .arg(&kubeconfig)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut args = FAST.to_vec();
    args.extend(["--remote-skew-seconds", "2"]);
    let _op = env.operator("fenced", &args);
    wait_ready(&env, "short", "True", "Serving", LONG).await;

    let mut j = job("brief", "fence-q", 1, 8, "10m");
    j["spec"]["taskGroups"][0]["template"]["spec"]["terminationGracePeriodSeconds"] = serde_json::json!(1);
    env.create::<ComputeJob>(j).await.unwrap();
    let first = env.wait_phase("default", "brief", "Running", LONG).await;
    assert_eq!(pool_of(&first).as_deref(), Some("short"));
    env.create::<ComputePool>(remote_pool(&env, "other", "other-kubeconfig", "other")).await.unwrap();
    wait_ready(&env, "other", "True", "Serving", LONG).await;

    // An outside watcher, reaching both clusters directly, never sees the job live in both.
    let clusters = vec![
        ("short", Api::<Pod>::namespaced(rs[0].client.clone(), "default")),
        ("other", Api::<Pod>::namespaced(rs[1].client.clone(), "default")),
    ];
    let uid = first.uid().unwrap();
    let cut_at = Instant::now();
    relay.cut();
    let (gone, moved) = {
        let mut gone = None;
        loop {
            let live = live_pods(&clusters, &format!("{JOB_UID_LABEL}={uid}")).await;
            let here = live.get(&uid).cloned().unwrap_or_default();
            assert!(here.len() < 2, "the job is live in two clusters at once: {here:?}");
            if gone.is_none() && !here.contains("short") {
                gone = Some(cut_at.elapsed());
            }
            if here.contains("other") {
                break (gone.expect("its old pods went first"), cut_at.elapsed());
            }
            assert!(
                cut_at.elapsed() < Duration::from_secs(60),
                "the job did not move within 60 s of the cut"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    eprintln!(
        "cut → old pods deleted by the fence holder {:.1} s, → running in the other cluster {:.1} s",
        gone.as_secs_f64(),
        moved.as_secs_f64()
    );
    // Never before the fence timeout (5 s) plus the grace (1 s) plus the margin (2 s).
    assert!(moved >= Duration::from_secs(8), "moved after {moved:?}");
    let now = env.wait_phase("default", "brief", "Running", LONG).await;
    assert_eq!(pool_of(&now).as_deref(), Some("other"));
    assert!(std::fs::read_to_string(&holder_log).unwrap().contains("lapsed"));
    // The move is told: a NodeLost event and the job's last failure name the fence.
    let failure = now.status.as_ref().and_then(|s| s.last_failure.clone()).expect("last failure");
    assert!(failure.message.contains("policy fenced"), "{failure:?}");
    let reasons = env.event_reasons("default", "brief").await;
    assert!(reasons.iter().any(|r| r == "NodeLost"), "{reasons:?}");

    // After the heal the short cluster takes work again and nothing of the old run comes back.
    relay.heal();
    wait_ready(&env, "short", "True", "Serving", Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let live = live_pods(&clusters, &format!("{JOB_UID_LABEL}={uid}")).await;
    assert_eq!(live.get(&uid).cloned().unwrap_or_default(), BTreeSet::from(["other".to_string()]));
    let _ = holder.kill();
    let _ = holder.wait();
}
