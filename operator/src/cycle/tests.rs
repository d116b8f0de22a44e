//! The index and the backends without an API server: objects in, the core's world out, checked through what a
//! cycle decides.

use std::collections::BTreeMap;
use std::sync::Arc;

use haiyun_api::fixtures;
use haiyun_api::job::JobPhase;
use haiyun_api::{ComputeJob, ComputePool, Dataset, Queue, QuotaRequest};
use haiyun_scheduler::model::Health;
use haiyun_scheduler::schedule::SchedulerConfig;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use serde_json::json;

use crate::backend::kubernetes::KubernetesBackend;
use crate::backend::remote::grant::{Clock, Grant};
use crate::backend::slurm::{SlurmBackend, SlurmPools, SlurmViews};
use crate::backend::{BackendKind, Backends, Inputs, PoolBackend};
use crate::fleet::{FleetView, GpuState, GpuView};
use crate::index::{Cache, Claims, JobState, Overlay, World, build};
use crate::plan::{Action, plan};

const NOW: f64 = 1_800_000_000.0;

fn node(name: &str, gpus: u32, cordoned: bool) -> Arc<Node> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": { "name": name, "labels": { "pool": "a", "haiyun.io/gpu-model": "H100" } },
            "spec": { "unschedulable": cordoned },
            "status": {
                "allocatable": { "cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": gpus.to_string() },
                "conditions": [{ "type": "Ready", "status": "True" }]
            }
        }))
        .unwrap(),
    )
}

fn pool() -> Arc<ComputePool> {
    Arc::new(fixtures::pool("a").kubernetes(&[("pool", "a")]).build())
}

fn queue(name: &str) -> Arc<Queue> {
    Arc::new(fixtures::queue(name).quota("nvidia.com/gpu:h100", "64").build())
}

fn job(name: &str, queue: &str, gpus: u32, age_s: i64) -> ComputeJob {
    fixtures::job("ns", name)
        .queue(queue)
        .gpus(gpus)
        .stored(&format!("uid-{name}"), NOW as i64 - age_s)
        .build()
}

/// `job` running on `node` with GPUs `gpus`, and its pod.
fn running(mut j: ComputeJob, node: &str, gpus: &[u32]) -> (Arc<ComputeJob>, Arc<Pod>) {
    let pod_name = format!("{}-w-0", j.metadata.name.clone().unwrap());
    j.status = Some(
        serde_json::from_value(json!({
            "phase": "Running",
            "startTime": jiff::Timestamp::from_second(NOW as i64 - 60).unwrap().to_string(),
            "placement": { "pool": "a", "gpuModel": "h100",
                           "tasks": [{ "pod": pod_name, "node": node, "gpus": gpus, "gpuMilli": 1000 }] }
        }))
        .unwrap(),
    );
    let uid = j.metadata.uid.clone().unwrap();
    let pod = pod(
        &pod_name,
        node,
        Some(gpus),
        "haiyun",
        &[("haiyun.io/job-uid", &uid), ("haiyun.io/run", "0")],
        false,
    );
    (Arc::new(j), pod)
}

fn pod(
    name: &str,
    node: &str,
    gpus: Option<&[u32]>,
    scheduler: &str,
    labels: &[(&str, &str)],
    deleting: bool,
) -> Arc<Pod> {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let count = gpus.map_or(4, <[u32]>::len);
    let mut v = json!({
        "metadata": { "name": name, "namespace": "ns", "uid": format!("pod-{name}"), "labels": labels },
        "spec": { "nodeName": node, "schedulerName": scheduler, "containers": [{ "name": "c",
            "resources": { "limits": { "nvidia.com/gpu": count.to_string() } } }] },
        "status": { "phase": "Running" }
    });
    if let Some(g) = gpus {
        let list: Vec<String> = g.iter().map(u32::to_string).collect();
        v["metadata"]["annotations"] = json!({ "haiyun.io/gpus": list.join(",") });
    }
    if deleting {
        v["metadata"]["deletionTimestamp"] =
            json!(jiff::Timestamp::from_second(NOW as i64).unwrap().to_string());
    }
    Arc::new(serde_json::from_value(v).unwrap())
}

fn admitted(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Admit { job, .. } => job.metadata.name.clone(),
            _ => None,
        })
        .collect()
}

/// What the operator reads: the cluster's objects, the agents' reports and the Slurm pools' views.
#[derive(Debug, Default)]
struct Objects {
    pools: Vec<Arc<ComputePool>>,
    queues: Vec<Arc<Queue>>,
    jobs: Vec<Arc<ComputeJob>>,
    requests: Vec<Arc<QuotaRequest>>,
    datasets: Vec<Arc<Dataset>>,
    nodes: Vec<Arc<Node>>,
    pods: Vec<Arc<Pod>>,
    batch_jobs: Vec<Arc<k8s_openapi::api::batch::v1::Job>>,
    slices: Vec<Arc<k8s_openapi::api::resource::v1::ResourceSlice>>,
    resource_claims: Vec<Arc<k8s_openapi::api::resource::v1::ResourceClaim>>,
    grants: Vec<Arc<k8s_openapi::api::coordination::v1::Lease>>,
    /// The node fences as the shell would time them from their Leases.
    fences: crate::backend::kubernetes::fence::NodeFences,
    volumes: Vec<Arc<k8s_openapi::api::core::v1::PersistentVolume>>,
    claims: Vec<Arc<k8s_openapi::api::core::v1::PersistentVolumeClaim>>,
    fleet: Arc<FleetView>,
    slurm: Arc<SlurmViews>,
}

/// The world the operator's backends build from `given`, and what a cycle plans in it.
fn cycle(given: &Objects) -> (World, Vec<Action>) {
    cycle_with(given, &Overlay::default())
}

/// As `cycle`, with what the operator decided but cannot see in its caches yet.
fn cycle_with(given: &Objects, overlay: &Overlay) -> (World, Vec<Action>) {
    let objects = crate::index::Objects {
        pools: given.pools.clone(),
        queues: given.queues.clone(),
        jobs: given.jobs.clone(),
        requests: given.requests.clone(),
        datasets: given.datasets.clone(),
        nodes: given.nodes.clone(),
        pods: given.pods.clone(),
        batch_jobs: given.batch_jobs.clone(),
        slices: given.slices.clone(),
        resource_claims: given.resource_claims.clone(),
        grants: given.grants.clone(),
        node_fences: Vec::new(),
        volumes: given.volumes.clone(),
        claims: given.claims.clone(),
    };
    let grants = Clock::default().live(&given.grants, std::time::Instant::now());
    let backends = Backends::new(vec![
        Arc::new(KubernetesBackend::offline().with_leases(grants, given.fences.clone()))
            as Arc<dyn PoolBackend>,
        Arc::new(SlurmBackend::new(SlurmPools::default(), given.slurm.clone())),
    ]);
    let federation = |claims: &Claims, models| {
        backends.federation(
            &objects.pools,
            &Inputs { objects: &objects, fleet: &given.fleet, claims },
            models,
        )
    };
    let mut cache = Cache::default();
    let mut world =
        build(&objects, overlay, &mut cache, &federation, SchedulerConfig::default(), NOW).unwrap();
    let kinds: BTreeMap<String, BackendKind> = objects
        .pools
        .iter()
        .filter_map(|p| Some((kube::ResourceExt::name_any(p.as_ref()), BackendKind::of(p)?)))
        .collect();
    let actions = plan(&mut world, &kinds, NOW).unwrap();
    (world, actions)
}

#[test]
fn a_job_on_a_cordoned_node_keeps_its_place_and_the_node_takes_nothing_new() {
    let (a, a_pod) = running(job("a", "q", 4, 100), "n0", &[0, 1, 2, 3]);
    let b = Arc::new(job("b", "q", 1, 10));
    let objects = Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        jobs: vec![a, b],
        nodes: vec![node("n0", 8, true)],
        pods: vec![a_pod],
        ..Default::default()
    };
    let (world, actions) = cycle(&objects);
    assert!(matches!(world.jobs[0].state, JobState::Placed(_)), "{:?}", world.jobs[0].state);
    assert!(admitted(&actions).is_empty(), "nothing new on a cordoned node: {actions:?}");
    let gpus = &world.scheduler.snapshot().cluster().nodes[0].gpus;
    assert!(gpus.iter().all(|g| g.health == Health::Unknown));
}

#[test]
fn a_terminating_pod_no_placement_covers_still_holds_its_gpus() {
    let mut evicted = job("old", "q", 8, 100);
    evicted.status = Some(serde_json::from_value(json!({ "phase": "Preempted", "preemptions": 1 })).unwrap());
    let leftover = pod(
        "old-w-0",
        "n0",
        Some(&[0, 1, 2, 3, 4, 5, 6, 7]),
        "haiyun",
        &[("haiyun.io/job-uid", "uid-old"), ("haiyun.io/run", "0")],
        true,
    );
    let objects = Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        jobs: vec![Arc::new(evicted), Arc::new(job("new", "q", 8, 10))],
        nodes: vec![node("n0", 8, false)],
        pods: vec![leftover],
        ..Default::default()
    };
    let (_, actions) = cycle(&objects);
    assert!(admitted(&actions).is_empty(), "the GPUs are still held by a terminating pod: {actions:?}");
    let objects = Objects { pods: Vec::new(), ..objects };
    let (_, actions) = cycle(&objects);
    assert_eq!(admitted(&actions), vec!["old".to_string()], "once it is gone the older job starts again");
}

/// A job of queue `q` asking all 8 GPUs of a node at priority 10, made 10 s ago.
fn urgent() -> ComputeJob {
    fixtures::job("ns", "urgent")
        .queue("q")
        .gpus(8)
        .spec(json!({ "priority": 10 }))
        .stored("uid-urgent", NOW as i64 - 10)
        .build()
}

#[test]
fn a_preemptor_is_bound_only_once_the_pods_of_its_victim_have_left_their_gpus() {
    let (low, low_pod) = running(job("low", "q", 8, 100), "n0", &[0, 1, 2, 3, 4, 5, 6, 7]);
    let urgent = urgent();
    let objects = Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        jobs: vec![low, Arc::new(urgent.clone())],
        nodes: vec![node("n0", 8, false)],
        pods: vec![low_pod],
        ..Default::default()
    };
    // The cycle that preempts admits the preemptor on the victim's node without making its pods: the kubelet would
    // refuse them while the victim's still run.
    let (_, actions) = cycle(&objects);
    assert!(actions.iter().any(|a| matches!(a, Action::Evict { job, .. } if job.name_any() == "low")));
    let dispatch = actions.iter().find_map(|a| match a {
        Action::Admit { job, dispatch, .. } if job.name_any() == "urgent" => Some(*dispatch),
        _ => None,
    });
    assert_eq!(dispatch, Some(false), "{actions:?}");

    // Next cycle: the victim waits again, its pod terminating; the preemptor, admitted, is not bound yet and says why.
    let mut low = job("low", "q", 8, 100);
    low.status = Some(serde_json::from_value(json!({ "phase": "Preempted", "preemptions": 1 })).unwrap());
    let mut urgent = urgent;
    urgent.status = Some(
        serde_json::from_value(json!({ "phase": "Admitted",
            "startTime": jiff::Timestamp::from_second(NOW as i64 - 1).unwrap().to_string(),
            "placement": { "pool": "a", "gpuModel": "h100",
                "tasks": [{ "pod": "urgent-w-0", "node": "n0", "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "gpuMilli": 1000 }] } }))
        .unwrap(),
    );
    let leaving = pod(
        "low-w-0",
        "n0",
        Some(&[0, 1, 2, 3, 4, 5, 6, 7]),
        "haiyun",
        &[("haiyun.io/job-uid", "uid-low"), ("haiyun.io/run", "0")],
        true,
    );
    let objects = Objects { jobs: vec![Arc::new(low), Arc::new(urgent)], pods: vec![leaving], ..objects };
    let (_, actions) = cycle(&objects);
    let binds = |actions: &[Action]| actions.iter().filter(|a| matches!(a, Action::Bind { .. })).count();
    assert_eq!(binds(&actions), 0, "{actions:?}");
    let why = actions.iter().find_map(|a| match a {
        Action::Status { job, status } if job.name_any() == "urgent" => Some(status.pending_reasons.clone()),
        _ => None,
    });
    let why = why.unwrap_or_default();
    assert_eq!(why.len(), 1, "{actions:?}");
    assert_eq!(why[0].message, "admitted; its pods are bound on n0 once pod ns/low-w-0 leaves it");
    assert!(admitted(&actions).is_empty(), "nothing else takes the GPUs: {actions:?}");

    // The pod is gone: the preemptor's pods are made and bound.
    let objects = Objects { pods: Vec::new(), ..objects };
    let (_, actions) = cycle(&objects);
    assert_eq!(binds(&actions), 1, "{actions:?}");
}

#[test]
fn a_job_whose_admission_is_still_being_applied_is_not_preempted_until_the_cache_shows_it() {
    // The applier has not written low's admission yet: the cache shows it waiting, the overlay where it was placed.
    let low = job("low", "q", 8, 100);
    let (shown, low_pod) = running(low.clone(), "n0", &[0, 1, 2, 3, 4, 5, 6, 7]);
    let placement = shown.status.as_ref().and_then(|s| s.placement.clone()).unwrap();
    let mut overlay = Overlay::default();
    overlay.assumed.insert("uid-low".into(), crate::index::Assumed { placement, started: NOW - 5.0 });
    let objects = Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        jobs: vec![Arc::new(low), Arc::new(urgent())],
        nodes: vec![node("n0", 8, false)],
        ..Default::default()
    };
    // Evicting it now would run after its admission, which makes its pods on the GPUs this cycle gave the preemptor.
    let (_, actions) = cycle_with(&objects, &overlay);
    assert!(!actions.iter().any(|a| matches!(a, Action::Evict { .. })), "{actions:?}");
    assert!(admitted(&actions).is_empty(), "{actions:?}");

    // Once the cache shows the admission, low may be preempted as any running job.
    let objects = Objects { jobs: vec![shown, objects.jobs[1].clone()], pods: vec![low_pod], ..objects };
    let (_, actions) = cycle(&objects);
    assert!(
        actions.iter().any(|a| matches!(a, Action::Evict { job, .. } if job.name_any() == "low")),
        "{actions:?}"
    );
    assert_eq!(admitted(&actions), ["urgent"]);
}

/// A plain pod of queue `q` asking 8 GPUs at `priority`, bound to `node` with all its GPUs if given.
fn plain(name: &str, node: Option<&str>, priority: i32, deleting: bool) -> Arc<Pod> {
    let mut v = json!({
        "metadata": { "name": name, "namespace": "ns", "uid": format!("pod-{name}"),
                      "labels": { "haiyun.io/queue": "q" } },
        "spec": { "schedulerName": "haiyun", "priority": priority, "containers": [{ "name": "c",
            "resources": { "limits": { "nvidia.com/gpu": "8" } } }] },
        "status": { "phase": "Pending" }
    });
    if let Some(n) = node {
        v["spec"]["nodeName"] = json!(n);
        v["status"]["phase"] = json!("Running");
        v["metadata"]["annotations"] = json!({ "haiyun.io/gpus": "0,1,2,3,4,5,6,7" });
    }
    if deleting {
        v["metadata"]["deletionTimestamp"] =
            json!(jiff::Timestamp::from_second(NOW as i64).unwrap().to_string());
    }
    Arc::new(serde_json::from_value(v).unwrap())
}

#[test]
fn a_plain_pod_that_preempts_keeps_its_place_and_is_bound_once_its_victim_has_left() {
    let objects = Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        nodes: vec![node("n0", 8, false)],
        pods: vec![plain("low", Some("n0"), 0, false), plain("urgent", None, 10, false)],
        ..Default::default()
    };
    let (_, actions) = cycle(&objects);
    let names = |actions: &[Action]| -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::EvictPod { pod } => Some(format!("evict {}", pod.name_any())),
                Action::HoldPod { pod, node, .. } => Some(format!("hold {} on {node}", pod.name_any())),
                Action::BindPod { pod, node, .. } => Some(format!("bind {} on {node}", pod.name_any())),
                Action::PodWaits { pod, message } => Some(format!("{}: {message}", pod.name_any())),
                _ => None,
            })
            .collect()
    };
    assert_eq!(names(&actions), ["evict low", "hold urgent on n0"]);

    // Next cycle: the victim is terminating; the place stays kept, and the pod says why it is not bound yet.
    let mut overlay = Overlay::default();
    overlay.binding.insert("pod-urgent".into(), ("n0".into(), (0..8).collect(), NOW));
    overlay.held.insert("pod-urgent".into());
    let objects = Objects {
        pods: vec![plain("low", Some("n0"), 0, true), plain("urgent", None, 10, false)],
        ..objects
    };
    let (_, actions) = cycle_with(&objects, &overlay);
    assert_eq!(names(&actions), ["urgent: placed on n0; bound once pod ns/low leaves it"]);

    // It is gone: the pod is bound where it was kept.
    let objects = Objects { pods: vec![plain("urgent", None, 10, false)], ..objects };
    let (_, actions) = cycle_with(&objects, &overlay);
    assert_eq!(names(&actions), ["bind urgent on n0"]);
}

#[test]
fn a_running_job_whose_queue_is_gone_is_held_where_it_runs() {
    let (a, a_pod) = running(job("a", "gone", 8, 100), "n0", &[0, 1, 2, 3, 4, 5, 6, 7]);
    let objects = Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        jobs: vec![a, Arc::new(job("b", "q", 8, 10))],
        nodes: vec![node("n0", 8, false)],
        pods: vec![a_pod],
        ..Default::default()
    };
    let (world, actions) = cycle(&objects);
    assert!(matches!(world.jobs[0].state, JobState::Held(_)), "{:?}", world.jobs[0].state);
    assert!(admitted(&actions).is_empty(), "its GPUs stay taken: {actions:?}");
    let status = actions.iter().find_map(|a| match a {
        Action::Status { job, status } if job.metadata.name.as_deref() == Some("a") => {
            Some((**status).clone())
        }
        _ => None,
    });
    let status = status.expect("a status that says what is wrong");
    assert_eq!(status.phase, JobPhase::Running);
    assert!(status.placement.is_some());
    assert!(
        status.pending_reasons[0].message.contains("\"gone\" does not exist"),
        "{:?}",
        status.pending_reasons
    );
}

#[test]
fn another_schedulers_pod_takes_gpus_from_the_top_but_never_ones_ours_hold() {
    let (a, a_pod) = running(job("a", "q", 4, 100), "n0", &[4, 5, 6, 7]);
    let foreign = pod("theirs", "n0", None, "default-scheduler", &[], false);
    let objects = Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        jobs: vec![a, Arc::new(job("b", "q", 1, 10))],
        nodes: vec![node("n0", 8, false)],
        pods: vec![a_pod, foreign],
        ..Default::default()
    };
    let (world, actions) = cycle(&objects);
    assert!(matches!(world.jobs[0].state, JobState::Placed(_)), "ours is adopted on GPUs 4-7");
    let gpus = &world.scheduler.snapshot().cluster().nodes[0].gpus;
    let unknown: Vec<usize> = (0..8).filter(|j| gpus[*j].health == Health::Unknown).collect();
    assert_eq!(unknown, vec![0, 1, 2, 3], "the foreign pod's four GPUs are the ones ours do not hold");
    assert!(admitted(&actions).is_empty(), "the node is full: {actions:?}");
}

fn agent_view(unhealthy: &[u32], stale: bool) -> crate::fleet::NodeView {
    use crate::fleet::{GpuState, GpuView};
    let gpus = (0..8)
        .map(|i| {
            let bad = unhealthy.contains(&i);
            let state = if bad { GpuState::Unhealthy } else { GpuState::Healthy };
            (
                i,
                GpuView {
                    state,
                    reason: if bad { "XID 79".into() } else { String::new() },
                    uuid: String::new(),
                    utilization: None,
                    nvlink_peers: Vec::new(),
                    energy_mj: None,
                    power_mw: None,
                },
            )
        })
        .collect();
    crate::fleet::NodeView { stale, silent_seconds: 0.0, gpus, last_gap_seconds: 0.0, lost: 0, replayed: 0 }
}

#[test]
fn gpus_follow_their_agent_a_failed_gpu_takes_no_work_and_the_job_on_it_runs_again_uncounted() {
    let (a, a_pod) = running(job("a", "q", 2, 100), "n0", &[0, 1]);
    let b = Arc::new(job("b", "q", 8, 10));
    let c = Arc::new(job("c", "q", 6, 5));
    let fleet = [("n0".to_string(), agent_view(&[1, 5], false)), ("n1".to_string(), agent_view(&[], true))];
    let objects = Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        jobs: vec![a, b, c],
        nodes: vec![node("n0", 8, false), node("n1", 8, false)],
        pods: vec![a_pod],
        fleet: Arc::new(fleet.into_iter().collect()),
        ..Default::default()
    };
    let (world, actions) = cycle(&objects);
    let JobState::NodeLost(why) = &world.jobs[0].state else { panic!("{:?}", world.jobs[0].state) };
    assert_eq!(why, "GPU 1 on node n0 failed (XID 79)");
    assert_eq!(crate::status::loss_reason(why), "GPUFailed");
    assert_eq!(
        lost_jobs(&actions).keys().cloned().collect::<Vec<_>>(),
        ["a"],
        "evicted to run again elsewhere"
    );
    let nodes = &world.scheduler.snapshot().cluster().nodes;
    assert_eq!(nodes[0].gpus[5].health, Health::Unhealthy);
    assert_eq!(nodes[0].gpus[2].health, Health::Healthy);
    assert!(nodes[1].gpus.iter().all(|g| g.health == Health::Unknown), "a stale node's GPUs are unknown");
    // This cycle starts nothing while a's pod still holds GPU 0; a stale agent evicts nothing.
    assert!(admitted(&actions).is_empty(), "{actions:?}");
    let mut fleet = (*objects.fleet).clone();
    fleet.insert("n0".into(), agent_view(&[5], false));
    let objects = Objects { fleet: Arc::new(fleet), ..objects };
    let (world, _) = cycle(&objects);
    assert!(matches!(world.jobs[0].state, JobState::Placed(_)), "a failed GPU no job uses evicts nothing");
}

#[test]
fn a_pool_whose_agents_are_all_silent_is_not_ready_and_says_why() {
    let fleet = [("n0".to_string(), agent_view(&[], true)), ("n1".to_string(), agent_view(&[3], true))];
    let objects = Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        nodes: vec![node("n0", 8, false), node("n1", 8, false)],
        fleet: Arc::new(fleet.into_iter().collect()),
        ..Default::default()
    };
    let (world, _) = cycle(&objects);
    let status = crate::report::pools(&world, NOW);
    let ready = &status.values().next().unwrap().conditions[0];
    assert_eq!(
        (ready.type_.as_str(), ready.status.as_str(), ready.reason.as_str()),
        ("Ready", "False", "NoPlaceableGPUs")
    );
    assert!(ready.message.contains("none of its 16 GPUs can take work: 16 unknown"), "{}", ready.message);
    // One agent back: the pool serves again.
    let fleet = [("n0".to_string(), agent_view(&[], false)), ("n1".to_string(), agent_view(&[3], true))];
    let objects = Objects { fleet: Arc::new(fleet.into_iter().collect()), ..objects };
    let (world, _) = cycle(&objects);
    let status = crate::report::pools(&world, NOW);
    assert_eq!(status.values().next().unwrap().conditions[0].status, "True");
}

fn slurm_view(time_limit_min: Option<u32>) -> crate::backend::slurm::SlurmView {
    let node = |name: &str| crate::backend::slurm::SlurmNode {
        name: name.into(),
        state: "idle".into(),
        cpus: 8,
        alloc_cpus: 0,
        memory_mib: 16_000,
        alloc_memory_mib: 0,
        gpu_type: Some("h100".into()),
        gpus: 8,
        gpus_used: 0,
        partitions: vec!["batch".into()],
        flags: Vec::new(),
    };
    crate::backend::slurm::SlurmView {
        available: crate::backend::slurm::Availability::Answering,
        nodes: vec![node("n1"), node("n2")],
        jobs: Default::default(),
        extra: Vec::new(),
        time_limit_min,
    }
}

fn slurm_pool() -> Arc<ComputePool> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputePool", "metadata": { "name": "hpc" },
            "spec": { "kind": "hpc", "backend": { "slurm": { "endpoint": "http://slurm", "partition": "batch",
                                                             "tokenSecret": "t", "user": "u" } } }
        }))
        .unwrap(),
    )
}

fn batch(name: &str, runtime: &str, age_s: i64) -> Arc<ComputeJob> {
    let mut j = job(name, "q", 8, age_s);
    j.spec.runtime_estimate = Some(runtime.into());
    j.spec.task_groups[0].script = Some("#!/bin/bash\ntrue\n".into());
    Arc::new(j)
}

#[test]
fn batch_jobs_go_to_slurm_pools_that_allow_their_time_and_pod_jobs_never_do() {
    let objects = Objects {
        pools: vec![pool(), slurm_pool()],
        queues: vec![queue("q")],
        jobs: vec![Arc::new(job("pods", "q", 8, 30)), batch("short", "10m", 20), batch("long", "2h", 10)],
        nodes: vec![],
        slurm: Arc::new([("hpc".to_string(), slurm_view(Some(60)))].into_iter().collect()),
        ..Default::default()
    };
    let (world, actions) = cycle(&objects);
    let admitted: Vec<(String, String)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Admit { job, placement, .. } => Some((job.name_any(), placement.tasks[0].node.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(admitted.len(), 1, "{actions:?}");
    assert_eq!(admitted[0].0, "short");
    assert!(admitted[0].1.starts_with("hpc/n"), "{admitted:?}");
    let problem = |name: &str| match &world.jobs.iter().find(|t| t.job.name_any() == name).unwrap().state {
        JobState::Problem(p) => p.to_string(),
        other => format!("{other:?}"),
    };
    // The pool "a" has no nodes here, so the pod job waits, though the Slurm pool has 16 free GPUs: it is never
    // offered the Slurm pool.
    let pods = &world.jobs.iter().find(|t| t.job.name_any() == "pods").unwrap().state;
    let JobState::Waiting(id) = pods else { panic!("{pods:?}") };
    let phase = world.scheduler.status(*id).map(|s| s.phase);
    assert_ne!(phase, Some(haiyun_scheduler::schedule::Phase::Running), "the pod job was placed");
    assert!(problem("long").contains("time limit"), "{}", problem("long"));
}

/// A batch job running on `hpc/n1` with all 8 GPUs, as its status records it.
fn running_in_slurm(name: &str) -> ComputeJob {
    let mut j = (*batch(name, "10m", 10)).clone();
    j.status = Some(
        serde_json::from_value(json!({
            "phase": "Running",
            "placement": { "pool": "hpc", "gpuModel": "h100",
                           "tasks": [{ "pod": "", "node": "hpc/n1", "gpus": [0,1,2,3,4,5,6,7], "gpuMilli": 1000 }] }
        }))
        .unwrap(),
    );
    j
}

#[test]
fn a_running_slurm_job_is_held_while_its_pool_has_not_been_reached() {
    let j = running_in_slurm("running");
    let objects = Objects {
        pools: vec![slurm_pool()],
        queues: vec![queue("q")],
        jobs: vec![Arc::new(j)],
        ..Default::default()
    };
    let (world, actions) = cycle(&objects);
    assert!(matches!(world.jobs[0].state, JobState::Held(_)), "{:?}", world.jobs[0].state);
    assert!(!actions.iter().any(|a| matches!(a, Action::Evict { .. })), "{actions:?}");
    let failed = actions.iter().any(
        |a| matches!(a, Action::Status { status, .. } if status.phase == haiyun_api::job::JobPhase::Failed),
    );
    assert!(!failed, "never failed for a pool that does not answer: {actions:?}");
}

#[test]
fn a_running_slurm_job_its_reachable_slurm_no_longer_lists_is_lost_not_run_twice() {
    let j = running_in_slurm("gone");
    let objects = Objects {
        pools: vec![slurm_pool()],
        queues: vec![queue("q")],
        jobs: vec![Arc::new(j)],
        slurm: Arc::new([("hpc".to_string(), slurm_view(None))].into_iter().collect()),
        ..Default::default()
    };
    let (world, actions) = cycle(&objects);
    assert!(matches!(world.jobs[0].state, JobState::Lost(_)), "{:?}", world.jobs[0].state);
    assert!(!actions.iter().any(|a| matches!(a, Action::Bind { .. })), "never submitted again: {actions:?}");
}

#[test]
fn a_cycle_with_nothing_new_converts_nothing_again_and_decides_as_a_rebuilt_index_would() {
    let (a, a_pod) = running(job("a", "q", 4, 100), "n0", &[0, 1, 2, 3]);
    let waiting: Vec<Arc<ComputeJob>> =
        (0..6).map(|i| Arc::new(job(&format!("w{i}"), "q", 4, 50 - i))).collect();
    let mut jobs = vec![a];
    jobs.extend(waiting);
    let objects = crate::index::Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        jobs,
        nodes: vec![node("n0", 8, false), node("n1", 8, false)],
        pods: vec![a_pod],
        ..Default::default()
    };
    let backends = Backends::new(vec![Arc::new(KubernetesBackend::offline()) as Arc<dyn PoolBackend>]);
    let fleet = FleetView::default();
    let busy = Default::default();
    let run = |memory: &mut crate::cycle::Memory, now: f64| {
        let input = crate::cycle::Input {
            objects: &objects,
            fleet: &fleet,
            backends: &backends,
            busy: &busy,
            config: SchedulerConfig::default(),
            now,
        };
        let out = crate::cycle::run(&input, memory).unwrap();
        let actions: Vec<String> =
            out.actions.iter().map(|a| format!("{} {:?}", a.key(), std::mem::discriminant(a))).collect();
        (actions, serde_json::to_string(&out.snapshot).unwrap())
    };
    let mut kept = crate::cycle::Memory::default();
    run(&mut kept, NOW);
    let after_first = kept.index().work_done();
    assert_eq!(after_first, (7, 1), "the first cycle converts every job and builds the book once");
    for t in 1..4 {
        let now = NOW + f64::from(t);
        // A rebuilt index with the same overlay (the first cycle's admissions, assumed).
        let mut fresh = crate::cycle::Memory { overlay: kept.overlay.clone(), ..Default::default() };
        let incremental = run(&mut kept, now);
        assert_eq!(kept.index().work_done(), after_first, "nothing new: nothing converted again");
        assert_eq!(incremental, run(&mut fresh, now), "the kept index decides as a rebuilt one at {now}");
    }
}

#[test]
fn the_kept_index_converts_a_changed_job_again_and_everything_when_its_queues_change() {
    let mut objects = crate::index::Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        jobs: (0..3).map(|i| Arc::new(job(&format!("j{i}"), "q", 1, 10 - i))).collect(),
        nodes: vec![node("n0", 8, false)],
        ..Default::default()
    };
    let backends = Backends::new(vec![Arc::new(KubernetesBackend::offline()) as Arc<dyn PoolBackend>]);
    let fleet = FleetView::default();
    let busy = Default::default();
    let mut memory = crate::cycle::Memory::default();
    let mut cycle = |objects: &crate::index::Objects| {
        let input = crate::cycle::Input {
            objects,
            fleet: &fleet,
            backends: &backends,
            busy: &busy,
            config: SchedulerConfig::default(),
            now: NOW,
        };
        crate::cycle::run(&input, &mut memory).unwrap();
        memory.index().work_done()
    };
    assert_eq!(cycle(&objects), (3, 1));
    let mut changed = (*objects.jobs[1]).clone();
    changed.metadata.generation = Some(2);
    changed.spec.task_groups[0].gpus = 2;
    objects.jobs[1] = Arc::new(changed);
    assert_eq!(cycle(&objects), (4, 1), "only the edited job is converted again");
    let mut q = (*objects.queues[0]).clone();
    q.metadata.generation = Some(2);
    q.spec.namespaces = vec!["ns".into()];
    objects.queues[0] = Arc::new(q);
    assert_eq!(cycle(&objects), (7, 2), "a queue's change rebuilds the book and converts every job again");
}

/// `job` whose only pod ended: with `exit` 0 it succeeded, else it failed with that exit code.
fn ended(j: ComputeJob, exit: i32) -> (Arc<ComputeJob>, Arc<Pod>) {
    let (j, pod) = running(j, "n0", &[0]);
    let mut pod = (*pod).clone();
    pod.status = Some(
        serde_json::from_value(json!({
            "phase": if exit == 0 { "Succeeded" } else { "Failed" },
            "containerStatuses": [{ "name": "c", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": { "terminated": { "exitCode": exit, "reason": if exit == 0 { "Completed" } else { "Error" } } } }]
        }))
        .unwrap(),
    );
    (j, Arc::new(pod))
}

fn status_of<'a>(actions: &'a [Action], name: &str) -> &'a haiyun_api::ComputeJobStatus {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Status { job, status } if job.name_any() == name => Some(status),
            _ => None,
        })
        .unwrap()
}

#[test]
fn a_failed_task_restarts_the_gang_with_backoff_and_the_exit_code_in_status_until_max_restarts() {
    let (j, pod) = ended(job("f", "q", 1, 100), 1);
    let objects = Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        jobs: vec![j],
        nodes: vec![node("n0", 8, false)],
        pods: vec![pod],
        ..Default::default()
    };
    let (_, actions) = cycle(&objects);
    let st = status_of(&actions, "f");
    assert_eq!((st.phase, st.restarts, st.placement.is_none()), (JobPhase::Queued, 1, true));
    let failure = st.last_failure.as_ref().unwrap();
    assert_eq!(
        (failure.exit_code, failure.reason.as_str(), failure.pod.as_str()),
        (Some(1), "Error", "f-w-0")
    );
    let after = crate::time::parse(st.restart_after.as_deref().unwrap()).unwrap();
    assert_eq!(after - NOW, 10.0, "the first restart waits 10 s");
    assert!(st.pending_reasons[0].message.contains("exited with code 1"), "{:?}", st.pending_reasons);

    // During the backoff the job waits, holding nothing; after it, it runs again as run 1.
    let mut waiting = (*objects.jobs[0]).clone();
    waiting.status = Some(st.clone());
    let objects = Objects { jobs: vec![Arc::new(waiting.clone())], pods: Vec::new(), ..objects };
    let (world, actions) = cycle(&objects);
    assert!(matches!(world.jobs[0].state, JobState::Backoff { .. }), "{:?}", world.jobs[0].state);
    assert!(admitted(&actions).is_empty());
    waiting.status.as_mut().unwrap().restart_after = Some(crate::time::rfc3339(NOW - 1.0));
    let objects = Objects { jobs: vec![Arc::new(waiting.clone())], ..objects };
    let (_, actions) = cycle(&objects);
    assert_eq!(admitted(&actions), vec!["f"]);
    assert_eq!(waiting.run(), 1, "a restart is a new run");
}

#[test]
fn a_task_that_fails_past_max_restarts_fails_the_job_with_its_exit_code_and_a_success_succeeds() {
    let mut j = job("g", "q", 1, 100);
    j.spec.max_restarts = Some(0);
    let (j, pod) = ended(j, 3);
    let (ok, ok_pod) = ended(job("h", "q", 1, 90), 0);
    let objects = Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        jobs: vec![j, ok],
        nodes: vec![node("n0", 8, false)],
        pods: vec![pod, ok_pod],
        ..Default::default()
    };
    let (_, actions) = cycle(&objects);
    let st = status_of(&actions, "g");
    assert_eq!((st.phase, st.restarts), (JobPhase::Failed, 0));
    assert_eq!(st.last_failure.as_ref().and_then(|f| f.exit_code), Some(3));
    let st = status_of(&actions, "h");
    assert_eq!((st.phase, st.last_failure.is_none()), (JobPhase::Succeeded, true));
}

#[test]
fn a_finish_is_logged_with_the_status_write_that_records_it_not_while_the_job_is_busy() {
    let mut j = job("g", "q", 1, 100);
    j.spec.max_restarts = Some(0);
    let (j, pod) = ended(j, 3);
    let objects = crate::index::Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        jobs: vec![j],
        nodes: vec![node("n0", 8, false)],
        pods: vec![pod],
        ..Default::default()
    };
    let backends = Backends::new(vec![Arc::new(KubernetesBackend::offline()) as Arc<dyn PoolBackend>]);
    let fleet = FleetView::default();
    let run = |memory: &mut crate::cycle::Memory, busy: &std::collections::HashSet<String>| {
        let input = crate::cycle::Input {
            objects: &objects,
            fleet: &fleet,
            backends: &backends,
            busy,
            config: SchedulerConfig::default(),
            now: NOW,
        };
        let out = crate::cycle::run(&input, memory).unwrap();
        let statuses = out.actions.iter().filter(|a| matches!(a, Action::Status { .. })).count();
        let lines: Vec<(&str, String)> = out.decisions.iter().map(|d| (d.event, d.detail.clone())).collect();
        (statuses, lines)
    };
    let mut memory = crate::cycle::Memory::default();
    // An earlier write of g is still being applied: the Failed status waits, and so does its line.
    let (statuses, lines) = run(&mut memory, &["uid-g".to_string()].into_iter().collect());
    assert_eq!((statuses, lines.len()), (0, 0), "{lines:?}");
    let (statuses, lines) = run(&mut memory, &Default::default());
    assert_eq!(statuses, 1);
    assert_eq!(lines, [("finish", "Failed".to_string())]);
}

#[test]
fn a_template_node_selector_narrows_the_pools_and_one_no_node_has_waits_naming_the_selector() {
    let labelled = |name: &str, pool: &str, zone: &str| {
        let mut n = (*node(name, 8, false)).clone();
        let labels = n.metadata.labels.get_or_insert_with(Default::default);
        labels.insert("pool".into(), pool.into());
        labels.insert("zone".into(), zone.into());
        Arc::new(n)
    };
    let pool_b = Arc::new(fixtures::pool("b").kubernetes(&[("pool", "b")]).build());
    let with_selector = |name: &str, zone: &str, age: i64| {
        let template =
            json!({ "spec": { "nodeSelector": { "zone": zone }, "containers": [{ "name": "c" }] } });
        let mut j = fixtures::job("ns", name).queue("q").gpus(8).template(template);
        j = j.stored(&format!("uid-{name}"), NOW as i64 - age);
        Arc::new(j.build())
    };
    let objects = Objects {
        pools: vec![pool(), pool_b],
        queues: vec![queue("q")],
        jobs: vec![with_selector("east", "east", 20), with_selector("mars", "mars", 10)],
        nodes: vec![labelled("n0", "a", "west"), labelled("n1", "b", "east")],
        ..Default::default()
    };
    let (_, actions) = cycle(&objects);
    let placed = actions.iter().find_map(|a| match a {
        Action::Admit { job, placement, .. } if job.name_any() == "east" => Some(placement.clone()),
        _ => None,
    });
    assert_eq!(placed.map(|p| (p.pool, p.tasks[0].node.clone())), Some(("b".into(), "n1".into())));
    let st = status_of(&actions, "mars");
    assert_eq!(st.pending_reasons[0].phase, "placement");
    let why = &st.pending_reasons[0].message;
    assert!(why.contains("nodeSelector") && why.contains("zone=mars"), "{why}");
}

#[test]
fn inside_one_pool_a_template_runs_only_on_the_nodes_its_selector_affinity_and_tolerations_accept() {
    let shaped = |name: &str, zone: &str, taint: Option<&str>| {
        let mut n = (*node(name, 8, false)).clone();
        n.metadata.labels.get_or_insert_with(Default::default).insert("zone".into(), zone.into());
        if let Some(t) = taint {
            n.spec.get_or_insert_with(Default::default).taints = Some(vec![
                serde_json::from_value(json!({"key": t, "value": "x", "effect": "NoSchedule"})).unwrap(),
            ]);
        }
        Arc::new(n)
    };
    let with = |name: &str, spec: serde_json::Value, age: i64| {
        let mut template = json!({ "spec": { "containers": [{ "name": "c" }] } });
        for (k, v) in spec.as_object().unwrap() {
            template["spec"][k] = v.clone();
        }
        let j = fixtures::job("ns", name).queue("q").gpus(8).template(template);
        Arc::new(j.stored(&format!("uid-{name}"), NOW as i64 - age).build())
    };
    let east = json!({ "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{ "matchExpressions": [{ "key": "zone", "operator": "In", "values": ["east"] }] }] } } } });
    let objects = Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        jobs: vec![
            with("east-1", east.clone(), 50),
            with("east-2", east, 40),
            with("plain", json!({}), 30),
            with("tolerant", json!({ "tolerations": [{ "key": "dedicated", "operator": "Exists" }] }), 20),
        ],
        nodes: vec![
            shaped("n-west", "west", None),
            shaped("n-east", "east", None),
            shaped("n-tainted", "east", Some("dedicated")),
        ],
        ..Default::default()
    };
    let (_, actions) = cycle(&objects);
    let node_of = |name: &str| {
        actions.iter().find_map(|a| match a {
            Action::Admit { job, placement, .. } if job.name_any() == name => {
                Some(placement.tasks[0].node.clone())
            }
            _ => None,
        })
    };
    assert_eq!(node_of("east-1").as_deref(), Some("n-east"), "the only untainted east node");
    assert_eq!(
        node_of("plain").as_deref(),
        Some("n-west"),
        "a job with no toleration stays off the tainted node"
    );
    assert_eq!(
        node_of("tolerant").as_deref(),
        Some("n-tainted"),
        "the only node left, and it tolerates its taint"
    );
    assert_eq!(node_of("east-2"), None);
    let st = status_of(&actions, "east-2");
    let why = &st.pending_reasons[0].message;
    assert!(
        why.contains("required nodeAffinity"),
        "the reason names what keeps it off the other nodes: {why}"
    );
}

#[test]
fn a_job_repeating_an_older_jobs_idempotency_key_is_a_duplicate_and_does_not_run() {
    let keyed = |name: &str, key: &str, age: i64| {
        let mut j = job(name, "q", 1, age);
        j.spec.idempotency_key = Some(key.into());
        Arc::new(j)
    };
    let objects = Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        jobs: vec![
            keyed("first", "train-42", 30),
            keyed("retry", "train-42", 20),
            keyed("other", "train-43", 10),
        ],
        nodes: vec![node("n0", 8, false)],
        ..Default::default()
    };
    let (_, actions) = cycle(&objects);
    let mut started = admitted(&actions);
    started.sort();
    assert_eq!(started, vec!["first", "other"]);
    let why = &status_of(&actions, "retry").pending_reasons[0].message;
    assert!(why.contains("job first") && why.contains("duplicate"), "{why}");
}

/// The jobs evicted as lost, with why.
fn lost_jobs(actions: &[Action]) -> BTreeMap<String, String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Evict { job, lost: Some(why), .. } => Some((job.name_any(), why.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_job_on_a_fenced_or_deleted_node_is_evicted_to_run_again_and_one_on_a_not_ready_node_keeps_its_place() {
    let (a, a_pod) = running(job("a", "q", 4, 100), "gone", &[0, 1, 2, 3]);
    let (b, b_pod) = running(job("b", "q", 4, 90), "fenced", &[0, 1, 2, 3]);
    let (c, c_pod) = running(job("c", "q", 4, 80), "sick", &[0, 1, 2, 3]);
    let mut fenced = (*node("fenced", 8, false)).clone();
    fenced.spec.get_or_insert_with(Default::default).taints = Some(vec![k8s_openapi::api::core::v1::Taint {
        key: "node.kubernetes.io/out-of-service".into(),
        value: Some("nodeshutdown".into()),
        effect: "NoExecute".into(),
        time_added: None,
    }]);
    let mut sick = (*node("sick", 8, false)).clone();
    sick.status.as_mut().unwrap().conditions =
        Some(vec![serde_json::from_value(json!({"type": "Ready", "status": "Unknown"})).unwrap()]);
    let objects = Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        jobs: vec![a, b, c],
        nodes: vec![Arc::new(fenced), Arc::new(sick), node("n0", 8, false)],
        pods: vec![a_pod, b_pod, c_pod],
        ..Default::default()
    };
    let (world, actions) = cycle(&objects);
    let lost = lost_jobs(&actions);
    assert_eq!(lost.keys().cloned().collect::<Vec<_>>(), vec!["a", "b"]);
    assert!(lost["a"].contains("node gone was deleted"), "{lost:?}");
    assert!(lost["b"].contains("out-of-service"), "{lost:?}");
    let c = world.jobs.iter().find(|t| t.job.name_any() == "c").unwrap();
    assert!(matches!(c.state, JobState::Placed(_)), "a not-ready node is not a lost one: {:?}", c.state);
    assert!(!actions.iter().any(|a| matches!(a, Action::Evict { job, .. } if job.name_any() == "c")));
}

#[test]
fn a_job_on_a_cut_off_node_its_fence_holder_fenced_runs_again_and_one_whose_kubelet_answers_keeps_its_place()
{
    use crate::backend::kubernetes::fence::{NodeFences, Silence};
    let (a, a_pod) = running(job("a", "q", 4, 100), "cut", &[0, 1, 2, 3]);
    let (b, b_pod) = running(job("b", "q", 4, 90), "quiet", &[0, 1, 2, 3]);
    let (c, c_pod) = running(job("c", "q", 4, 80), "slow", &[0, 1, 2, 3]);
    let not_ready = |name: &str| {
        let mut n = (*node(name, 8, false)).clone();
        n.status.as_mut().unwrap().conditions =
            Some(vec![serde_json::from_value(json!({"type": "Ready", "status": "Unknown"})).unwrap()]);
        Arc::new(n)
    };
    let s = std::time::Duration::from_secs;
    // Timeout 10 s; the pods' grace is 30 s (Kubernetes' default); margin 2 s: fenced after 42 s of silence.
    let silences = BTreeMap::from([
        ("cut".to_string(), Silence { timeout: s(10), silent: s(42) }),
        // Its kubelet still answers: a holder that cannot renew is not a node that is cut off.
        ("quiet".to_string(), Silence { timeout: s(10), silent: s(99) }),
        ("slow".to_string(), Silence { timeout: s(10), silent: s(41) }),
    ]);
    let given = Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        jobs: vec![a, b, c],
        nodes: vec![not_ready("cut"), node("quiet", 8, false), not_ready("slow"), node("n0", 8, false)],
        pods: vec![a_pod, b_pod, c_pod],
        fences: NodeFences { silences, skew: s(2) },
        ..Default::default()
    };
    let (_, actions) = cycle(&given);
    let lost = lost_jobs(&actions);
    assert_eq!(lost.keys().cloned().collect::<Vec<_>>(), vec!["a"], "{lost:?}");
    assert!(lost["a"].contains("node cut is cut off and fenced") && lost["a"].contains("42 s"), "{lost:?}");
}

#[test]
fn a_running_job_that_lost_a_pod_runs_again_once_the_pod_is_confirmed_gone_and_waits_while_it_may_still_run()
{
    let evicted = |p: &Arc<Pod>, phase: &str| {
        let mut p = (**p).clone();
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::from_second(NOW as i64).unwrap(),
        ));
        p.status = Some(
            serde_json::from_value(json!({ "phase": phase, "conditions": [{ "type": "DisruptionTarget",
                "status": "True", "reason": "DeletionByTaintManager" }] }))
            .unwrap(),
        );
        Arc::new(p)
    };
    let (waits, waits_pod) = running(job("waits", "q", 2, 100), "n0", &[0, 1]);
    let (stopped, stopped_pod) = running(job("stopped", "q", 2, 90), "n0", &[2, 3]);
    let (vanished, _) = running(job("vanished", "q", 2, 80), "n0", &[4, 5]);
    let next = Arc::new(job("next", "q", 4, 10));
    let objects = Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        jobs: vec![waits, stopped, vanished, next],
        nodes: vec![node("n0", 8, false)],
        pods: vec![evicted(&waits_pod, "Running"), evicted(&stopped_pod, "Failed")],
        ..Default::default()
    };
    let (world, actions) = cycle(&objects);
    let lost = lost_jobs(&actions);
    assert_eq!(lost.keys().cloned().collect::<Vec<_>>(), vec!["stopped", "vanished"]);
    assert!(lost["stopped"].contains("DeletionByTaintManager"), "{lost:?}");
    assert!(lost["vanished"].contains("1 of its 1 pods are gone"), "{lost:?}");
    let w = world.jobs.iter().find(|t| t.job.name_any() == "waits").unwrap();
    assert!(matches!(w.state, JobState::Placed(_)), "it may still run on its node: {:?}", w.state);
    assert!(w.disrupted.as_deref().is_some_and(|d| d.contains("confirmed gone")), "{:?}", w.disrupted);
    let touched = |name: &str| {
        actions.iter().any(|a| match a {
            Action::Bind { job, .. } | Action::Evict { job, .. } => job.name_any() == name,
            Action::Status { job, status } => job.name_any() == name && status.restarts > 0,
            _ => false,
        })
    };
    assert!(!touched("waits"), "no pod re-made, no eviction, no restart counted while it may still run");
    assert!(admitted(&actions).is_empty(), "the lost jobs' pods still hold GPUs 2-5 this cycle: {actions:?}");
    assert!(!actions.iter().any(|a| matches!(a, Action::Status { status, .. } if status.restarts > 0)));
}

#[test]
fn an_inference_job_is_preempted_only_where_its_queue_allows_and_an_hpc_batch_job_runs_only_in_hpc_pools() {
    let mut serve = job("serve", "q", 8, 100);
    serve.spec.kind = haiyun_api::job::JobKind::Inference;
    let (serve, serve_pod) = running(serve, "n0", &[0, 1, 2, 3, 4, 5, 6, 7]);
    let mut urgent = job("urgent", "q", 8, 10);
    urgent.spec.priority = Some(100);
    let mut sim = job("sim", "q", 1, 5);
    sim.spec.kind = haiyun_api::job::JobKind::HpcBatch;
    let mut objects = Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        jobs: vec![serve, Arc::new(urgent), Arc::new(sim)],
        nodes: vec![node("n0", 8, false)],
        pods: vec![serve_pod],
        ..Default::default()
    };
    let (_, actions) = cycle(&objects);
    assert!(!actions.iter().any(|a| matches!(a, Action::Evict { .. })), "{actions:?}");
    let why = &status_of(&actions, "sim").pending_reasons[0].message;
    assert!(why.contains("hpc-batch"), "pool a is not of kind hpc: {why}");
    // Unless its queue says so.
    let mut q = (*queue("q")).clone();
    q.spec.preempt_inference = true;
    objects.queues = vec![Arc::new(q)];
    let (_, actions) = cycle(&objects);
    assert!(actions.iter().any(|a| matches!(a, Action::Evict { job, .. } if job.name_any() == "serve")));
}

#[test]
fn a_batch_job_is_mirrored_its_failed_pods_are_replaced_in_their_slots_and_it_ends_when_the_job_does() {
    let batch_job = |name: &str, conditions: serde_json::Value| -> Arc<k8s_openapi::api::batch::v1::Job> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": { "name": name, "namespace": "ns", "uid": format!("job-{name}"),
                              "labels": { "haiyun.io/queue": "q" } },
                "spec": { "parallelism": 1, "completions": 1, "completionMode": "Indexed", "template": { "spec": {
                    "schedulerName": "haiyun", "containers": [{ "name": "c" }] } } },
                "status": { "conditions": conditions }
            }))
            .unwrap(),
        )
    };
    // "fresh" has no ComputeJob yet; "train" has one, running, whose first pod failed and was replaced.
    let mut mirrored = job("train", "q", 1, 100);
    mirrored.spec.batch_job = Some("train".into());
    let (mirrored, _) = running(mirrored, "n0", &[0]);
    let uid = mirrored.metadata.uid.clone().unwrap();
    let labels = [("haiyun.io/job-uid", uid.as_str()), ("haiyun.io/run", "0")];
    let mut failed = (*pod("train-0-a", "n0", Some(&[0]), "haiyun", &labels, false)).clone();
    failed.status = Some(serde_json::from_value(json!({ "phase": "Failed" })).unwrap());
    let mut replacement = (*pod("train-0-b", "n0", None, "haiyun", &labels, false)).clone();
    replacement.spec.as_mut().unwrap().node_name = None;
    replacement.status = Some(serde_json::from_value(json!({ "phase": "Pending" })).unwrap());
    let mut objects = Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        jobs: vec![mirrored],
        nodes: vec![node("n0", 8, false)],
        pods: vec![Arc::new(failed), Arc::new(replacement)],
        batch_jobs: vec![batch_job("fresh", json!([])), batch_job("train", json!([]))],
        ..Default::default()
    };
    let (_, actions) = cycle(&objects);
    let unmirrored = crate::backend::kubernetes::batch::unmirrored(&objects.batch_jobs, &objects.jobs);
    let names: Vec<String> = unmirrored.iter().map(|j| j.name_any()).collect();
    assert_eq!(names, ["fresh"], "one ComputeJob per Job");
    assert!(actions.iter().any(|a| matches!(a, Action::Bind { job, .. } if job.name_any() == "train")));
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Status { job, .. } if job.name_any() == "train")),
        "a failed pod of a Job is its Job controller's to replace: {actions:?}"
    );
    objects.batch_jobs[1] = batch_job("train", json!([{ "type": "Complete", "status": "True" }]));
    let (_, actions) = cycle(&objects);
    assert_eq!(status_of(&actions, "train").phase, JobPhase::Succeeded, "it ends when its Job completes");
}

#[test]
fn nvlink_domains_come_from_the_agents_links_and_a_label_overrides_them() {
    // Four GPUs in two NVLink pairs, {0, 1} and {2, 3}, as the agent's inventory reports them.
    let paired = || linked_view((0..4u32).map(|i| (i, vec![if i % 2 == 0 { i + 1 } else { i - 1 }], None)));
    let (a, a_pod) = running(job("a", "q", 1, 100), "n0", &[0]);
    let (b, b_pod) = running(job("b", "q", 1, 90), "n0", &[2]);
    let mut linked = job("linked", "q", 2, 10);
    linked.spec.topology = haiyun_api::job::Topology::NvlinkDomain;
    let mut objects = Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        jobs: vec![a, b, Arc::new(linked)],
        nodes: vec![node("n0", 4, false)],
        pods: vec![a_pod, b_pod],
        fleet: Arc::new([("n0".to_string(), paired())].into_iter().collect()),
        ..Default::default()
    };
    let (world, actions) = cycle(&objects);
    let domains: Vec<u32> =
        world.scheduler.snapshot().cluster().nodes[0].gpus.iter().map(|g| g.nvlink_domain).collect();
    assert_eq!(
        (domains[0] == domains[1], domains[1] == domains[2], domains[2] == domains[3]),
        (true, false, true)
    );
    assert!(admitted(&actions).is_empty(), "GPUs 1 and 3 are free but not linked: {actions:?}");
    // An administrator's label puts the whole node in one domain (e.g. an NVSwitch the probe does not see).
    let mut labelled = (*node("n0", 4, false)).clone();
    labelled
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("haiyun.io/nvlink-domain".into(), "nvs".into());
    objects.nodes = vec![Arc::new(labelled)];
    let (_, actions) = cycle(&objects);
    assert_eq!(admitted(&actions), ["linked"]);
}

/// A node's agent view of healthy GPUs, each with its NVLink peers and energy counter.
fn linked_view(gpus: impl IntoIterator<Item = (u32, Vec<u32>, Option<u64>)>) -> crate::fleet::NodeView {
    let gpus = gpus
        .into_iter()
        .map(|(i, nvlink_peers, energy_mj)| {
            let v = GpuView {
                state: GpuState::Healthy,
                reason: String::new(),
                uuid: format!("GPU-{i}"),
                utilization: None,
                nvlink_peers,
                energy_mj,
                power_mw: None,
            };
            (i, v)
        })
        .collect();
    crate::fleet::NodeView {
        stale: false,
        silent_seconds: 0.0,
        gpus,
        last_gap_seconds: 0.0,
        lost: 0,
        replayed: 0,
    }
}

#[test]
fn a_running_job_accounts_its_gpus_energy_once_a_minute_from_the_agents_counters() {
    let (a, a_pod) = running(job("a", "q", 2, 100), "n0", &[0, 1]);
    // Each GPU of the node counts its own energy: GPU i has used i+1 times as much.
    let counters = |mj: u64| -> FleetView {
        let view = linked_view((0..4u32).map(|i| (i, Vec::new(), Some(mj * u64::from(i + 1)))));
        [("n0".to_string(), view)].into_iter().collect()
    };
    let objects = Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        jobs: vec![a],
        nodes: vec![node("n0", 4, false)],
        pods: vec![a_pod],
        fleet: Arc::new(counters(1_000_000)),
        ..Default::default()
    };
    let (world, mut actions) = cycle(&objects);
    crate::cycle::account_energy(&mut actions, &world, &objects.fleet, NOW);
    let first = actions.iter().find_map(|a| match a {
        Action::Status { status, .. } => status.energy.clone(),
        _ => None,
    });
    let first = first.expect("the first account starts the count");
    assert_eq!((first.joules, first.counters["n0/1"]), (0.0, 2_000_000));
    // A minute later its two GPUs used 1 kJ and 2 kJ; GPUs 2 and 3 are not its own.
    let mut st = objects.jobs[0].status.clone().unwrap();
    st.energy = Some(first);
    let mut j = (*objects.jobs[0]).clone();
    j.status = Some(st);
    let later = Objects { jobs: vec![Arc::new(j)], fleet: Arc::new(counters(2_000_000)), ..objects };
    let (world, mut actions) = cycle(&later);
    crate::cycle::account_energy(&mut actions, &world, &later.fleet, NOW + 30.0);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Status { .. })),
        "not due within the minute: {actions:?}"
    );
    crate::cycle::account_energy(&mut actions, &world, &later.fleet, NOW + 60.0);
    let e = actions.iter().find_map(|a| match a {
        Action::Status { status, .. } => status.energy.clone(),
        _ => None,
    });
    assert_eq!(e.map(|e| e.joules), Some(3000.0));
}

/// A pod of the federation (origin `fed`) on n1, holding 4 GPUs.
fn fed_pod(name: &str) -> Arc<Pod> {
    pod(name, "n1", None, "haiyun", &[("haiyun.io/origin", "fed"), ("haiyun.io/job-uid", "f")], false)
}

/// An edge site's own pool (`granted`) over nodes n0 and n1 of 8 GPUs, with a capacity lease of `grant` GPUs per node.
fn site(grant: &[(&str, u32)]) -> Objects {
    let pool = fixtures::pool("a").kubernetes(&[("pool", "a")]).granted().build();
    let grants = (!grant.is_empty()).then(|| {
        let nodes = grant.iter().map(|(n, g)| (n.to_string(), *g)).collect();
        let g = Grant { queue: "edge".into(), epoch: 1, nodes, seconds: 60 };
        Arc::new(g.lease("a.fed", "fed"))
    });
    Objects {
        pools: vec![Arc::new(pool)],
        queues: vec![queue("q")],
        nodes: vec![node("n0", 8, false), node("n1", 8, false)],
        grants: grants.into_iter().collect(),
        ..Default::default()
    }
}

#[test]
fn an_edge_sites_own_pool_places_only_within_its_capacity_lease() {
    // No grant: nothing starts, and the pool says why.
    let objects = Objects { jobs: vec![Arc::new(job("one", "q", 1, 10))], ..site(&[]) };
    let (world, actions) = cycle(&objects);
    assert!(admitted(&actions).is_empty(), "{actions:?}");
    assert!(
        world.federation.unavailable["a"].contains("no federation has granted"),
        "{:?}",
        world.federation
    );

    // 4 GPUs granted on n1: a job of 4 fits there, one of 5 does not (16 GPUs idle or not).
    let objects = Objects {
        jobs: vec![Arc::new(job("big", "q", 5, 20)), Arc::new(job("fits", "q", 4, 10))],
        ..site(&[("n1", 4)])
    };
    let (_, actions) = cycle(&objects);
    assert_eq!(admitted(&actions), vec!["fits".to_string()]);
    let nodes: Vec<&str> = actions
        .iter()
        .filter_map(|a| if let Action::Admit { placement, .. } = a { Some(placement) } else { None })
        .flat_map(|p| p.tasks.iter().map(|t| t.node.as_str()))
        .collect();
    assert_eq!(nodes, vec!["n1"], "only on the granted node");

    // The federation's pods on n1 leave the grant as it is; its GPUs beyond the grant are not the site's.
    let fed = fed_pod("fed-w-0");
    let objects =
        Objects { jobs: vec![Arc::new(job("fits", "q", 4, 10))], pods: vec![fed], ..site(&[("n1", 4)]) };
    assert_eq!(admitted(&cycle(&objects).1), vec!["fits".to_string()]);
    // But a federation pod on granted GPUs (it got there first) is never run beside.
    let fed = fed_pod("fed-w-0");
    let more = fed_pod("fed-w-1");
    let objects = Objects {
        jobs: vec![Arc::new(job("fits", "q", 4, 10))],
        pods: vec![fed, more],
        ..site(&[("n1", 4)])
    };
    assert!(admitted(&cycle(&objects).1).is_empty(), "8 GPUs of n1 are the federation's pods'");
}

#[test]
fn a_job_whose_namespace_and_queue_may_not_read_its_dataset_is_held_with_the_reason_and_others_run() {
    let dataset = |access: serde_json::Value| -> Arc<Dataset> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "haiyun.io/v1alpha1", "kind": "Dataset", "metadata": { "name": "census" },
                "spec": { "size": "1Ti", "classification": "public", "access": access }
            }))
            .unwrap(),
        )
    };
    let reader = |name: &str, queue: &str| {
        let mut j = job(name, queue, 1, 10);
        j.spec.datasets = vec!["census".into()];
        Arc::new(j)
    };
    // Namespace ns is not listed; queue "stats" is.
    let objects = Objects {
        pools: vec![pool()],
        queues: vec![queue("q"), queue("stats")],
        jobs: vec![reader("outsider", "q"), reader("statistician", "stats")],
        datasets: vec![dataset(json!({ "namespaces": ["research"], "queues": ["stats"] }))],
        nodes: vec![node("n0", 8, false)],
        ..Default::default()
    };
    let (world, actions) = cycle(&objects);
    assert_eq!(admitted(&actions), vec!["statistician".to_string()]);
    let outsider = world.jobs.iter().find(|t| t.job.metadata.name.as_deref() == Some("outsider")).unwrap();
    let JobState::Problem(p) = &outsider.state else { panic!("{:?}", outsider.state) };
    assert_eq!(p.phase(), "data-access");
    assert!(p.to_string().contains("namespace \"ns\" (queue \"q\") may not read dataset \"census\""), "{p}");
}

#[test]
fn a_queue_with_past_usage_in_the_ledger_yields_to_one_without_and_a_cycle_without_the_ledger_keeps_fifo() {
    let lab =
        |name: &str| Arc::new(fixtures::queue(name).quota("nvidia.com/gpu:h100", "8").cohort("lab").build());
    let objects = crate::index::Objects {
        pools: vec![pool()],
        queues: vec![lab("heavy"), lab("light")],
        // heavy's job is older: first in line but for its past.
        jobs: vec![Arc::new(job("h", "heavy", 8, 100)), Arc::new(job("l", "light", 8, 10))],
        nodes: vec![node("n0", 8, false)],
        ..Default::default()
    };
    let backends = Backends::new(vec![Arc::new(KubernetesBackend::offline()) as Arc<dyn PoolBackend>]);
    let (fleet, busy) = (FleetView::default(), Default::default());
    let config = SchedulerConfig { usage_half_life_s: Some(3600.0), ..SchedulerConfig::default() };
    let input = crate::cycle::Input {
        objects: &objects,
        fleet: &fleet,
        backends: &backends,
        busy: &busy,
        config,
        now: NOW,
    };
    // The ledger closed a run of heavy's: 8 H100s for two hours, ended a minute ago.
    let mut book = crate::ledger::runs::Book { half_life: Some(3600.0), ..Default::default() };
    let run: crate::ledger::runs::Run = serde_json::from_value(json!({
        "uid": "old", "run": 0, "job": "ns/old", "namespace": "ns", "queue": "heavy", "submitter": "", "pool": "a",
        "site": "", "nodes": "n0", "gpu_model": "H100", "gpus": 8.0, "cpu_cores": 8.0, "memory_gib": 64.0,
        "datasets": [], "cost_per_hour": 0.0, "start": NOW - 7260.0, "energy_start": 0.0
    }))
    .unwrap();
    book.add_past(&run, NOW - 60.0);
    let mut memory = crate::cycle::Memory { runs: Some(book), ..Default::default() };
    let out = crate::cycle::run(&input, &mut memory).unwrap();
    assert_eq!(admitted(&out.actions), vec!["l".to_string()], "light has no past usage: it goes first");
    let mut forgetful = crate::cycle::Memory::default();
    let out = crate::cycle::run(&input, &mut forgetful).unwrap();
    assert_eq!(admitted(&out.actions), vec!["h".to_string()], "no ledger, no past: first come, first served");
}

#[test]
fn a_queue_user_limit_holds_one_submitter_and_a_job_without_one_counts_as_its_namespace() {
    let mut team: Queue = fixtures::queue("team").quota("nvidia.com/gpu:h100", "64").build();
    team.spec.user_limit =
        vec![haiyun_api::queue::FlavorLimit { flavor: "nvidia.com/gpu:h100".into(), max: "2".into() }];
    let by = |name: &str, who: Option<&str>, age: i64| {
        let mut j = job(name, "team", 1, age);
        j.spec.submitted_by = who.map(String::from);
        Arc::new(j)
    };
    let objects = Objects {
        pools: vec![pool()],
        queues: vec![Arc::new(team)],
        jobs: vec![
            by("alice-1", Some("alice"), 50),
            by("alice-2", Some("alice"), 49),
            by("alice-3", Some("alice"), 48),
            by("bob-1", Some("bob"), 47),
            by("anon-1", None, 46),
            by("anon-2", None, 45),
            by("anon-3", None, 44),
        ],
        nodes: vec![node("n0", 8, false)],
        ..Default::default()
    };
    let (world, actions) = cycle(&objects);
    let mut got = admitted(&actions);
    got.sort();
    assert_eq!(got, ["alice-1", "alice-2", "anon-1", "anon-2", "bob-1"]);
    let third = world.jobs.iter().find(|t| t.job.metadata.name.as_deref() == Some("alice-3")).unwrap();
    let JobState::Waiting(id) = third.state else { panic!("{:?}", third.state) };
    let why = world.scheduler.explain(id);
    assert!(
        why.iter().any(|l| l.contains(
            "user alice needs 1 nvidia.com/gpu:h100 in queue team, 0 left of the queue's per-user limit"
        )),
        "{why:?}"
    );
}

#[test]
fn a_job_mounting_a_datasets_volume_without_naming_it_is_held_by_the_volume_not_the_claims_name() {
    let census: Arc<Dataset> = Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "haiyun.io/v1alpha1", "kind": "Dataset", "metadata": { "name": "census" },
            "spec": { "size": "1Ti", "classification": "public",
                      "storage": { "nfs": [{ "server": "nas.example", "path": "/exports/census" }] } }
        }))
        .unwrap(),
    );
    let pv = Arc::new(
        serde_json::from_value(json!({ "metadata": { "name": "pv-0193" },
            "spec": { "nfs": { "server": "nas.example", "path": "/exports/census/2020" }, "capacity": { "storage": "1Ti" } } }))
        .unwrap(),
    );
    let claim = Arc::new(
        serde_json::from_value(json!({ "metadata": { "name": "scratch", "namespace": "ns" },
            "spec": { "volumeName": "pv-0193" } }))
        .unwrap(),
    );
    let mounting = |name: &str, named: bool| {
        let mut j = job(name, "q", 1, 10);
        j.spec.task_groups[0].template = Some(json!({ "spec": {
            "containers": [{ "name": "main", "image": "x" }],
            "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": "scratch" } }] } }));
        if named {
            j.spec.datasets = vec!["census".into()];
        }
        Arc::new(j)
    };
    let inline = pod("raw", "", None, "haiyun", &[("haiyun.io/queue", "q")], false);
    let mut inline = (*inline).clone();
    inline.spec.as_mut().unwrap().volumes = Some(vec![
        serde_json::from_value(json!({
        "name": "raw", "nfs": { "server": "nas.example", "path": "/exports/census" } }))
        .unwrap(),
    ]);
    let objects = Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        jobs: vec![mounting("hidden", false), mounting("honest", true)],
        pods: vec![Arc::new(inline)],
        datasets: vec![census],
        volumes: vec![pv],
        claims: vec![claim],
        nodes: vec![node("n0", 8, false)],
        ..Default::default()
    };
    let (world, actions) = cycle(&objects);
    assert_eq!(
        admitted(&actions),
        vec!["honest".to_string()],
        "naming the dataset lets its own checks decide"
    );
    let hidden = world.jobs.iter().find(|t| t.job.metadata.name.as_deref() == Some("hidden")).unwrap();
    let JobState::Problem(p) = &hidden.state else { panic!("{:?}", hidden.state) };
    assert_eq!(p.phase(), "data-access");
    assert!(
        p.to_string().starts_with(
            "spec.taskGroups[0].template.spec.volumes: volume \"data\" mounts PersistentVolume pv-0193 (NFS nas.example:/exports/census/2020), which holds dataset \"census\""
        ),
        "{p}"
    );
    let raw = world.pods.iter().find(|t| t.pod.metadata.name.as_deref() == Some("raw")).unwrap();
    let JobState::Problem(p) = &raw.state else { panic!("{:?}", raw.state) };
    assert!(
        p.to_string().contains("spec.volumes: volume \"raw\" mounts NFS nas.example:/exports/census"),
        "{p}"
    );
}

#[test]
fn a_quota_decision_is_an_audit_line_once_with_who_decided_and_the_window_opening_is_none() {
    let request = |name: &str,
                   decision: Option<&str>,
                   by: Option<&str>,
                   state: Option<&str>|
     -> Arc<QuotaRequest> {
        let mut v = json!({
            "apiVersion": "haiyun.io/v1alpha1", "kind": "QuotaRequest",
            "metadata": { "name": name, "namespace": "ns", "uid": format!("qr-{name}") },
            "spec": { "queue": "q", "flavor": "nvidia.com/gpu:h100", "amount": "8",
                      "start": crate::time::rfc3339(NOW - 10.0), "end": crate::time::rfc3339(NOW + 3600.0) }
        });
        if let Some(d) = decision {
            v["spec"]["decision"] = json!(d);
        }
        if let Some(b) = by {
            v["spec"]["decidedBy"] = json!(b);
        }
        if let Some(s) = state {
            v["status"] = json!({ "state": s, "approvedBy": by.unwrap_or_default() });
        }
        Arc::new(serde_json::from_value(v).unwrap())
    };
    let objects = crate::index::Objects {
        pools: vec![pool()],
        queues: vec![queue("q")],
        requests: vec![
            request("granted", Some("Approved"), Some("carol"), None),
            request("refused", Some("Denied"), Some("dave"), None),
            // Approved earlier; its window has opened since: no new decision.
            request("earlier", Some("Approved"), Some("carol"), Some("Approved")),
        ],
        nodes: vec![node("n0", 8, false)],
        ..Default::default()
    };
    let backends = Backends::new(vec![Arc::new(KubernetesBackend::offline()) as Arc<dyn PoolBackend>]);
    let (fleet, busy) = (FleetView::default(), Default::default());
    let input = crate::cycle::Input {
        objects: &objects,
        fleet: &fleet,
        backends: &backends,
        busy: &busy,
        config: SchedulerConfig::default(),
        now: NOW,
    };
    let mut memory = crate::cycle::Memory::default();
    let out = crate::cycle::run(&input, &mut memory).unwrap();
    let lines: Vec<(String, String, String)> = out
        .decisions
        .iter()
        .filter(|d| d.event == "quota")
        .map(|d| (d.job.clone(), d.by.clone(), d.detail.clone()))
        .collect();
    let window =
        format!("from {} to {}", crate::time::rfc3339(NOW - 10.0), crate::time::rfc3339(NOW + 3600.0));
    assert_eq!(
        lines,
        vec![
            ("ns/granted".into(), "carol".into(), format!("Approved: 8 nvidia.com/gpu:h100 {window}")),
            ("ns/refused".into(), "dave".into(), format!("Denied: 8 nvidia.com/gpu:h100 {window}")),
        ]
    );
    let again = crate::cycle::run(&input, &mut memory).unwrap();
    assert!(
        again.decisions.iter().all(|d| d.event != "quota"),
        "logged once, though the status is not written yet"
    );
}

#[test]
fn a_status_write_that_only_moves_counters_can_wait_and_a_quota_or_capacity_change_cannot() {
    use crate::status::StatusWrite;
    use haiyun_api::pool::{ComputePoolStatus, GpuCount};
    use haiyun_api::queue::{FlavorUsage, QueueStatus};
    let usage = |used: &str, quota: &str| FlavorUsage {
        flavor: "nvidia.com/gpu:h100".into(),
        used: used.into(),
        quota: quota.into(),
        borrowed: "0".into(),
    };
    let old_queue =
        QueueStatus { pending: 3, admitted: 1, usage: vec![usage("8", "64")], ..Default::default() };
    let mut q = (*queue("team")).clone();
    q.status = Some(old_queue.clone());
    let count = |allocated: f64| GpuCount { model: "H100".into(), total: 16, healthy: 16, allocated };
    let old_pool = ComputePoolStatus {
        nodes: 2,
        gpus: 16,
        allocated_gpus: 8,
        by_model: vec![count(8.0)],
        ..Default::default()
    };
    let mut p = (*pool()).clone();
    p.status = Some(old_pool.clone());
    let objects =
        crate::index::Objects { queues: vec![Arc::new(q)], pools: vec![Arc::new(p)], ..Default::default() };
    let queue_write = |status: QueueStatus| StatusWrite::Queue { name: "team".into(), status };
    let pool_write = |status: ComputePoolStatus| StatusWrite::Pool { name: "a".into(), status };

    let busier = QueueStatus { pending: 1, admitted: 3, usage: vec![usage("24", "64")], ..old_queue.clone() };
    assert!(super::counters_only(&queue_write(busier), &objects));
    let raised = QueueStatus { usage: vec![usage("8", "72")], ..old_queue.clone() };
    assert!(!super::counters_only(&queue_write(raised), &objects), "a raised quota is written at once");
    let fuller = ComputePoolStatus { allocated_gpus: 12, by_model: vec![count(12.0)], ..old_pool.clone() };
    assert!(super::counters_only(&pool_write(fuller), &objects));
    let smaller = ComputePoolStatus { nodes: 1, gpus: 8, ..old_pool.clone() };
    assert!(!super::counters_only(&pool_write(smaller), &objects), "lost capacity is written at once");
    let unknown = StatusWrite::Queue { name: "new".into(), status: old_queue };
    assert!(!super::counters_only(&unknown, &objects), "a queue never written before is written at once");
}
