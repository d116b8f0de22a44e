//! Edge autonomy on testenv: a federation (the local control plane) and an edge site (a remote one, reached through a
//! relay the test cuts) that runs its own Haiyun. The federation grants the site a capacity lease; the site places its
//! own jobs only within it, also while the link is cut, until the grant lapses; the federation places nothing on the
//! granted GPUs; after the link heals the site's GPU-hours appear in the federation's queue.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use haiyun_api::{ComputeJob, ComputePool, JOB_UID_LABEL, Queue, fixtures};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use support::remote::{Relay, remotes, secret, wait_pool_ready};
use support::{Env, create_in, delete_haiyun_objects, install_crds, job, queue, wait_for};

const LONG: Duration = Duration::from_secs(90);
/// Fast links: a heartbeat every 500 ms, down after 3 s unanswered, Secrets read every second.
const FAST: [&str; 6] =
    ["--remote-heartbeat-ms", "500", "--remote-grace-seconds", "3", "--remote-sync-ms", "1000"];
/// Seconds a grant stays good at the site without a renewal.
const LEASE_SECONDS: u32 = 20;

async fn phase(client: &Client, name: &str) -> String {
    let jobs: Api<ComputeJob> = Api::namespaced(client.clone(), "default");
    jobs.get(name).await.ok().and_then(|j| j.status).map(|s| format!("{:?}", s.phase)).unwrap_or_default()
}

async fn wait_phase(client: &Client, name: &str, want: &str, limit: Duration) {
    wait_for(&format!("site job {name} {want}"), limit, || async {
        (phase(client, name).await == want).then_some(())
    })
    .await;
}

/// GPUs of the site's live pods per node, split into the federation's (of an origin) and the site's own.
async fn gpus_by_node(site: &Client) -> BTreeMap<String, (u32, u32)> {
    let pods: Api<Pod> = Api::all(site.clone());
    let mut out: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for p in pods.list(&ListParams::default().labels(JOB_UID_LABEL)).await.unwrap() {
        let phase = p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
        if phase == "Succeeded" || phase == "Failed" || p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let gpus: u32 = p
            .spec
            .as_ref()
            .unwrap()
            .containers
            .iter()
            .filter_map(|c| {
                c.resources.as_ref()?.limits.as_ref()?.get("nvidia.com/gpu")?.0.parse::<u32>().ok()
            })
            .sum();
        let e = out.entry(node).or_default();
        if p.labels().contains_key("haiyun.io/origin") {
            e.0 += gpus;
        } else {
            e.1 += gpus;
        }
    }
    out
}

/// The grant as the federation's pool status shows it: GPUs per site node, and the epoch.
async fn granted(env: &Env) -> Option<(BTreeMap<String, u32>, u32)> {
    let pools: Api<ComputePool> = Api::all(env.client.clone());
    let lease = pools.get("edge").await.ok()?.status?.capacity_lease?;
    Some((lease.nodes, lease.epoch))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_site_places_its_own_jobs_within_its_capacity_lease_through_a_cut_and_its_usage_merges_back()
{
    let Some(env) = Env::start("edge").await else { return };
    let Some(rs) = remotes(1).await else { return };
    let site = &rs[0];
    site.clean().await;
    install_crds(&site.client).await;
    delete_haiyun_objects(&site.client).await;
    let relay = Relay::start(site.addr).await;
    let nodes = site.nodes(&env, "edge", 2, 8, "H100").await;
    let selector = [("haiyun.io/test", env.name.as_str()), ("haiyun.io/group", "edge")];

    // The CRD refuses a lease of no GPUs, naming the field.
    let bad = fixtures::pool("bad").remote("edge-kubeconfig", &selector).autonomy("slice", 0, 60).value();
    let refused = env.create::<ComputePool>(bad).await.unwrap_err();
    assert!(refused.contains("autonomy.gpus must be at least 1"), "{refused}");

    // The federation: a queue of its own and the slice's queue; the edge cluster as a pool granting 4 GPUs.
    env.create::<Queue>(queue("main", "nvidia.com/gpu:h100", 32)).await.unwrap();
    env.create::<Queue>(queue("slice", "nvidia.com/gpu:h100", 0)).await.unwrap();
    secret(&env, "edge-kubeconfig", &site.kubeconfig_via(relay.addr)).await;
    let edge = fixtures::pool("edge").site("edge").remote("edge-kubeconfig", &selector);
    env.create::<ComputePool>(edge.autonomy("slice", 4, LEASE_SECONDS).value()).await.unwrap();
    // The site: its own Haiyun with a granted pool over the same nodes.
    create_in::<Queue>(&site.client, queue("local", "nvidia.com/gpu:h100", 16)).await.unwrap();
    let own = fixtures::pool("own").site("edge").kubernetes(&selector).granted().value();
    create_in::<ComputePool>(&site.client, own).await.unwrap();
    let _fed = env.operator("federation", &FAST);
    let site_op = env.operator_in("site", &site.kubeconfig, &[]);

    // The grant: 4 GPUs on the freest node, written at the site and shown in the pool's status.
    let (grant, epoch) = wait_for("the capacity lease granted", LONG, || async {
        granted(&env).await.filter(|(n, _)| n.values().sum::<u32>() == 4)
    })
    .await;
    assert_eq!(grant, BTreeMap::from([(nodes[0].clone(), 4)]), "whole free nodes first, by name");
    wait_pool_ready(&site.client, "own", "True", "Serving", LONG).await;

    // The federation fills what is not granted: 8 on one node, 4 beside the grant; a fifth GPU has no room.
    env.create::<ComputeJob>(job("wide", "main", 1, 8, "10m")).await.unwrap();
    env.wait_phase("default", "wide", "Running", LONG).await;
    env.create::<ComputeJob>(job("beside", "main", 1, 4, "10m")).await.unwrap();
    env.wait_phase("default", "beside", "Running", LONG).await;
    env.create::<ComputeJob>(job("no-room", "main", 1, 1, "1m")).await.unwrap();
    // The site runs its own job on the granted GPUs; one more GPU waits for them.
    create_in::<ComputeJob>(&site.client, job("s-first", "local", 1, 4, "8s")).await.unwrap();
    wait_phase(&site.client, "s-first", "Running", LONG).await;
    create_in::<ComputeJob>(&site.client, job("s-next", "local", 1, 1, "4s")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(phase(&env.client, "no-room").await, "Queued", "the granted GPUs are not the federation's");
    assert_eq!(phase(&site.client, "s-next").await, "Queued", "the site never goes beyond its grant");
    let used = gpus_by_node(&site.client).await;
    assert_eq!(used.get(&nodes[0]), Some(&(4, 4)), "{used:?}");
    assert_eq!(used.get(&nodes[1]), Some(&(8, 0)), "{used:?}");

    // Cut: the federation's pool is unreachable; the site goes on within its grant (a job submitted during the cut
    // runs too).
    relay.cut();
    let cut_at = Instant::now();
    wait_pool_ready(&env.client, "edge", "False", "Unreachable", Duration::from_secs(30)).await;
    create_in::<ComputeJob>(&site.client, job("s-cut", "local", 1, 2, "4s")).await.unwrap();
    wait_phase(&site.client, "s-first", "Succeeded", LONG).await;
    wait_phase(&site.client, "s-next", "Succeeded", LONG).await;
    wait_phase(&site.client, "s-cut", "Succeeded", LONG).await;
    let ran_cut_off = cut_at.elapsed();
    for (node, (_, own)) in gpus_by_node(&site.client).await {
        assert!(own <= grant.get(&node).copied().unwrap_or(0), "site pods beyond the grant on {node}");
    }

    // Unrenewed for its duration, the grant lapses at the site: nothing new starts, and the pool says why.
    let why = wait_pool_ready(&site.client, "own", "False", "NoCapacityLease", LONG).await;
    let lapsed_after = cut_at.elapsed();
    assert!(why.contains("lapsed"), "{why}");
    // Renewed every sixth of its duration: the last renewal came at most that long before the cut.
    let earliest = Duration::from_secs(u64::from(LEASE_SECONDS - LEASE_SECONDS / 6 - 1));
    assert!(lapsed_after >= earliest, "lapsed {lapsed_after:?} after the cut");
    create_in::<ComputeJob>(&site.client, job("s-late", "local", 1, 1, "3s")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(phase(&site.client, "s-late").await, "Queued");

    // Heal: the federation renews the same grant (same epoch), the site runs what waited, and the site's GPU-hours
    // are charged to the slice's queue, recomputed from the site's jobs.
    relay.heal();
    wait_pool_ready(&site.client, "own", "True", "Serving", LONG).await;
    wait_phase(&site.client, "s-late", "Succeeded", LONG).await;
    let (after, epoch_after) = granted(&env).await.unwrap();
    assert_eq!((after, epoch_after), (grant.clone(), epoch), "an unchanged grant keeps its epoch");
    let site_jobs: Api<ComputeJob> = Api::namespaced(site.client.clone(), "default");
    let expected: f64 = site_jobs
        .list(&ListParams::default())
        .await
        .unwrap()
        .iter()
        .filter_map(|j| Some(j.status.as_ref()?.gpu_hours))
        .sum();
    assert!(expected > 0.0);
    let charged = wait_for("the site's GPU-hours in the slice's queue", LONG, || async {
        let q = Api::<Queue>::all(env.client.clone()).get("slice").await.ok()?;
        let st = q.status?;
        ((st.site_gpu_hours - expected).abs() < 1e-9).then_some(st.gpu_hours)
    })
    .await;
    assert!((charged - expected).abs() < 1e-9, "the slice ran nothing in the federation itself: {charged}");
    let sites: BTreeSet<String> = gpus_by_node(&site.client).await.keys().cloned().collect();
    assert!(sites.iter().all(|n| nodes.contains(n)));
    eprintln!(
        "site ran cut off for {:.1} s within its grant; the grant lapsed {:.1} s after the cut ({LEASE_SECONDS} s lease)",
        ran_cut_off.as_secs_f64(),
        lapsed_after.as_secs_f64()
    );
    assert!(!site_op.log_text().contains("panicked"), "{}", site_op.log_text());
}
