//! GPUs through Haiyun's DRA driver on real nodes (testenv's kubelet and containerd, the driver on a fake probe):
//! the container gets exactly the GPUs Haiyun placed, shares of one GPU get their limits and cannot over-commit it,
//! a 4-GPU NVLink-domain task lands inside one domain, and a GPU that fails under a job sends the job elsewhere.
//! A MIG instance is a flavor of its own, and a plain pod asking `nvidia.com/gpu` gets a device from kube-scheduler
//! that Haiyun then places around. Needs `testenv up --real-nodes 2 --real-node-prefix gpu-node --agent
//! fake:hgx-h100-2x4,fake:a100-mig --with-scheduler` and `HAIYUN_TEST_DRA_KUBECONFIG` (scripts/test.sh starts one).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use haiyun_api::{ComputeJob, ComputePool, Queue, fixtures};
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::api::{Api, ListParams, LogParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::{Env, queue, wait_for};

const LONG: Duration = Duration::from_secs(120);
/// The node of 8 H100 in two NVLink domains.
const H100_NODE: &str = "gpu-node-0";
/// The node of 4 A100, two of them in MIG mode.
const MIG_NODE: &str = "gpu-node-1";

fn image() -> String {
    std::env::var("TESTENV_BUSYBOX_IMAGE").unwrap_or_else(|_| "localhost/testenv/busybox:latest".into())
}

/// A job of one task of `gpus` GPUs printing what its container was given, then sleeping.
fn gpu_job(name: &str, gpus: u32, sleep: u32) -> Value {
    let script = format!(
        "echo \"uuids=$NVIDIA_VISIBLE_DEVICES share=${{CUDA_MPS_ACTIVE_THREAD_PERCENTAGE:-none}} \
         mem=${{CUDA_MPS_PINNED_DEVICE_MEM_LIMIT:-none}}\"; sleep {sleep}"
    );
    let template = json!({ "spec": { "terminationGracePeriodSeconds": 1, "containers": [{
        "name": "main", "image": image(), "imagePullPolicy": "Never", "command": ["sh", "-c", script] }] } });
    fixtures::job("default", name)
        .queue("gpu-q")
        .group_name("w")
        .gpus(gpus)
        .runtime("5m")
        .template(template)
        .value()
}

fn share_job(name: &str, fraction: f64) -> Value {
    let mut j = gpu_job(name, 1, 300);
    j["spec"]["taskGroups"][0]["gpuFraction"] = json!(fraction);
    j
}

/// By device slot, each device's (UUID, NVLink domain, model) as the ResourceSlice of `node` says.
async fn devices(env: &Env, node: &str) -> BTreeMap<u32, (String, String, String)> {
    let slices: Api<ResourceSlice> = Api::all(env.client.clone());
    let s = slices.get(&format!("{node}-gpu.haiyun.io")).await.unwrap();
    let mut out = BTreeMap::new();
    for d in s.spec.devices.unwrap_or_default() {
        let a = d.attributes.unwrap_or_default();
        let i = a["index"].int.unwrap() as u32;
        let text = |k: &str| a[k].string.clone().unwrap();
        out.insert(i, (text("uuid"), text("nvlinkDomain"), text("model")));
    }
    out
}

/// The H100 node's pool and a queue for it.
async fn setup(env: &Env) -> (String, BTreeMap<u32, (String, String, String)>) {
    let pool =
        fixtures::pool("gpus").site("lab").kubernetes(&[("kubernetes.io/hostname", H100_NODE)]).value();
    env.create::<ComputePool>(pool).await.unwrap();
    env.create::<Queue>(queue("gpu-q", "nvidia.com/gpu:h100", 16)).await.unwrap();
    (H100_NODE.to_string(), devices(env, H100_NODE).await)
}

/// The line the task printed, once it has.
async fn said(env: &Env, pod: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    wait_for(&format!("{pod} to print its GPUs"), LONG, || async {
        let out = pods.logs(pod, &LogParams::default()).await.ok()?;
        out.lines().find(|l| l.starts_with("uuids=")).map(str::to_string)
    })
    .await
}

/// The GPU indices a running job was placed on.
async fn placed(env: &Env, name: &str) -> Vec<u32> {
    let j = env.wait_phase("default", name, "Running", LONG).await;
    j.status.unwrap().placement.unwrap().tasks[0].gpus.clone()
}

fn uuids_of(line: &str) -> BTreeSet<String> {
    let list = line.trim_start_matches("uuids=").split_whitespace().next().unwrap_or_default();
    list.split(',').filter(|u| !u.is_empty()).map(str::to_string).collect()
}

/// What a plain HTTP GET of `/metrics` at `addr` answers, or None.
async fn metrics(addr: std::net::SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

/// Appends a line to a fake probe's fault file (the probe applies each line once, in order).
fn append(path: &str, line: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path).unwrap();
    writeln!(f, "{line}").unwrap();
}

#[tokio::test]
async fn a_task_sees_exactly_the_gpus_haiyun_placed_and_an_nvlink_domain_task_stays_inside_one_domain() {
    let Some(env) = Env::start_dra("exact").await else { return };
    let (_, gpus) = setup(&env).await;
    assert_eq!(gpus.len(), 8);
    let domains: BTreeSet<&String> = gpus.values().map(|(_, d, _)| d).collect();
    assert_eq!(domains.len(), 2, "the driver reports the probe's two NVLink domains: {gpus:?}");
    let _op = env.operator("only", &[]);
    env.create::<ComputeJob>(gpu_job("pair", 2, 300)).await.unwrap();
    let pair = placed(&env, "pair").await;
    let seen = uuids_of(&said(&env, "pair-w-0").await);
    let want: BTreeSet<String> = pair.iter().map(|i| gpus[i].0.clone()).collect();
    assert_eq!(seen, want, "the container's GPUs are the ones placed ({pair:?})");
    // The pod asks no extended resource: its GPUs come from its claim, allocated by Haiyun.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let pod = pods.get("pair-w-0").await.unwrap();
    let res = pod.spec.unwrap().containers[0].resources.clone().unwrap();
    assert!(!res.requests.unwrap_or_default().contains_key("nvidia.com/gpu"));
    let claims: Api<ResourceClaim> = Api::namespaced(env.client.clone(), "default");
    let claim = claims.get("pair-w-0-gpus").await.unwrap();
    assert_eq!(claim.status.unwrap().reserved_for.unwrap()[0].name, "pair-w-0");

    // The node's agent, reading the kubelet's PodResources socket, labels the pair's GPUs with their pod.
    if let Ok(dir) = std::env::var("TESTENV_DRA_DIR") {
        let opts = haiyun_agent::serve::Options {
            node: H100_NODE.into(),
            interval: Duration::from_millis(500),
            addr: "127.0.0.1:0".parse().unwrap(),
            link: None,
            pod_resources: Some(format!("{dir}/real/{H100_NODE}/kubelet/pod-resources/kubelet.sock").into()),
        };
        let probe = haiyun_agent::probe::fake::FakeProbe::profile("hgx-h100-2x4").unwrap();
        let (addr, task) = haiyun_agent::serve::run(Box::new(probe), opts).await.unwrap();
        let line = wait_for("the pair's GPUs labelled with their pod", LONG, || async {
            let text = metrics(addr).await?;
            let held: BTreeSet<u32> = text
                .lines()
                .filter(|l| l.starts_with("DCGM_FI_DEV_GPU_UTIL{") && l.contains(r#"pod="pair-w-0""#))
                .filter_map(|l| l.split("gpu=\"").nth(1)?.split('"').next()?.parse().ok())
                .collect();
            (held == pair.iter().copied().collect::<BTreeSet<u32>>()).then_some(text)
        })
        .await;
        assert!(line.contains(r#"container="main",namespace="default",pod="pair-w-0""#));
        task.abort();
    }

    // Four GPUs in one NVLink domain: the domain the pair uses has two left, so the other one.
    let mut ring = gpu_job("ring", 4, 300);
    ring["spec"]["topology"] = json!("nvlink-domain");
    env.create::<ComputeJob>(ring).await.unwrap();
    let ring = placed(&env, "ring").await;
    let ring_domains: BTreeSet<&String> = ring.iter().map(|i| &gpus[i].1).collect();
    assert_eq!(ring_domains.len(), 1, "4 GPUs {ring:?} in one domain ({gpus:?})");
    assert!(ring.iter().all(|i| !pair.contains(i)));
    let seen = uuids_of(&said(&env, "ring-w-0").await);
    assert_eq!(seen, ring.iter().map(|i| gpus[i].0.clone()).collect::<BTreeSet<_>>());
}

#[tokio::test]
async fn two_half_gpu_tasks_share_one_device_with_their_limits_and_a_third_share_cannot_over_commit_it() {
    let Some(env) = Env::start_dra("shares").await else { return };
    let (node, gpus) = setup(&env).await;
    let _op = env.operator("only", &[]);
    // Seven GPUs taken: the halves must share the last one.
    env.create::<ComputeJob>(gpu_job("filler", 7, 300)).await.unwrap();
    let filler = placed(&env, "filler").await;
    let last = (0..8).find(|i| !filler.contains(i)).unwrap();
    env.create::<ComputeJob>(share_job("half-a", 0.5)).await.unwrap();
    env.create::<ComputeJob>(share_job("half-b", 0.5)).await.unwrap();
    assert_eq!(placed(&env, "half-a").await, vec![last]);
    assert_eq!(placed(&env, "half-b").await, vec![last]);
    for pod in ["half-a-w-0", "half-b-w-0"] {
        let line = said(&env, pod).await;
        assert_eq!(uuids_of(&line), BTreeSet::from([gpus[&last].0.clone()]), "{line}");
        // 50% of the threads and of 80 GiB.
        assert!(line.contains("share=50 mem=0=40960M"), "{line}");
    }
    // A third half waits: Haiyun never places past a whole GPU.
    env.create::<ComputeJob>(share_job("half-c", 0.5)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c = env.job("default", "half-c").await;
    assert!(c.status.as_ref().and_then(|s| s.placement.as_ref()).is_none(), "{:?}", c.status);

    // And the node refuses one made by hand around Haiyun: the driver will not prepare a third half of that GPU.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "sneaky"},
        "spec": {"schedulerName": "nobody", "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
          "resourceClaims": [{"name": "g", "resourceClaimName": "sneaky"}],
          "containers": [{"name": "c", "image": image(), "imagePullPolicy": "Never", "command": ["true"],
                          "resources": {"claims": [{"name": "g"}]}}]}
    }))
    .unwrap();
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    let claims: Api<ResourceClaim> = Api::namespaced(env.client.clone(), "default");
    let claim: ResourceClaim = serde_json::from_value(json!({
        "metadata": {"name": "sneaky"},
        "spec": {"devices": {"requests": [{"name": "gpus", "exactly": {
            "deviceClassName": "gpu.haiyun.io", "allocationMode": "ExactCount", "count": 1,
            "capacity": {"requests": {"cores": "50"}}}}]}}
    }))
    .unwrap();
    let claim = claims.create(&PostParams::default(), &claim).await.unwrap();
    let status = json!({"status": {
        "allocation": {"devices": {"results": [{"request": "gpus", "driver": "gpu.haiyun.io", "pool": node,
            "device": format!("gpu-{last}"), "consumedCapacity": {"cores": "50"},
            "shareID": claim.metadata.uid.clone().unwrap()}]}},
        "reservedFor": [{"resource": "pods", "name": "sneaky", "uid": pod.metadata.uid.clone().unwrap()}]}});
    claims.patch_status("sneaky", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "sneaky"},
                         "target": {"kind": "Node", "name": node}});
    let binding: k8s_openapi::api::core::v1::Binding = serde_json::from_value(binding).unwrap();
    pods.create_subresource::<k8s_openapi::api::core::v1::Binding, Value>(
        "binding",
        "sneaky",
        &PostParams::default(),
        &binding,
    )
    .await
    .unwrap();
    let events: Api<Event> = Api::namespaced(env.client.clone(), "default");
    let refusal = wait_for("the kubelet to report the driver's refusal", LONG, || async {
        let list = events.list(&ListParams::default().fields("involvedObject.name=sneaky")).await.ok()?;
        list.items.into_iter().filter_map(|e| e.message).find(|m| m.contains("may not pass 100%"))
    })
    .await;
    assert!(refusal.contains(&format!("gpu-{last}")), "{refusal}");
    let p = pods.get("sneaky").await.unwrap();
    assert_ne!(p.status.and_then(|s| s.phase).as_deref(), Some("Succeeded"), "it never ran");
    pods.delete("sneaky", &Default::default()).await.unwrap();
    claims.delete("sneaky", &Default::default()).await.unwrap();
}

#[tokio::test]
async fn a_gpu_that_fails_under_a_running_job_is_tainted_and_the_job_runs_again_on_other_gpus() {
    let Some(env) = Env::start_dra("xid").await else { return };
    let Ok(dir) = std::env::var("TESTENV_DRA_DIR") else {
        assert!(std::env::var_os("HAIYUN_REQUIRE_DRA").is_none(), "TESTENV_DRA_DIR is not set");
        return;
    };
    let (node, _) = setup(&env).await;
    let _op = env.operator("only", &[]);
    env.create::<ComputeJob>(gpu_job("victim", 2, 300)).await.unwrap();
    let first = placed(&env, "victim").await;
    said(&env, "victim-w-0").await;
    let bad = first[0];
    // XID 79 (fallen off the bus) on one of its GPUs, as the node's driver sees it.
    let faults = format!("{dir}/real/{node}/faults");
    let t0 = std::time::Instant::now();
    append(&faults, &format!("xid {bad} 79"));
    let slices: Api<ResourceSlice> = Api::all(env.client.clone());
    wait_for("the GPU tainted in the slice", LONG, || async {
        let s = slices.get(&format!("{node}-gpu.haiyun.io")).await.ok()?;
        let d = s.spec.devices?.into_iter().find(|d| d.name == format!("gpu-{bad}"))?;
        d.taints.filter(|t| t.iter().any(|t| t.key == "gpu.haiyun.io/unhealthy")).map(|_| ())
    })
    .await;
    let requeued = wait_for("the job requeued", LONG, || async {
        let j = env.job("default", "victim").await;
        let st = j.status?;
        (st.preemptions >= 1).then_some(st)
    })
    .await;
    let decided = t0.elapsed();
    let failure = requeued.last_failure.unwrap();
    assert_eq!(failure.reason, "GPUFailed", "{failure:?}");
    assert!(decided < Duration::from_secs(10), "requeued {decided:?} after the XID");
    eprintln!("requeue decision {:.1} s after the XID", decided.as_secs_f64());
    let again = env.wait_phase("default", "victim", "Running", LONG).await;
    let second = again.status.unwrap().placement.unwrap().tasks[0].gpus.clone();
    assert!(!second.contains(&bad), "never on the failed GPU until a reset: {second:?}");
    append(&faults, &format!("reset {bad}"));
}

#[tokio::test]
async fn a_mig_instance_is_a_flavor_a_queue_holds_quota_for_and_the_task_sees_that_instance() {
    let Some(env) = Env::start_dra("mig").await else { return };
    let pool = fixtures::pool("mig").site("lab").kubernetes(&[("kubernetes.io/hostname", MIG_NODE)]).value();
    env.create::<ComputePool>(pool).await.unwrap();
    // Quota for the MIG flavor only: the node's whole A100s are not this queue's.
    env.create::<Queue>(queue("mig-q", "nvidia.com/gpu:a100-1g.10gb", 3)).await.unwrap();
    let slots = devices(&env, MIG_NODE).await;
    let mig: BTreeSet<u32> = slots.iter().filter(|(_, d)| d.2 == "A100-1g.10gb").map(|(i, _)| *i).collect();
    assert_eq!(mig.len(), 14, "two A100 in MIG mode, seven 1g.10gb each: {slots:?}");
    let _op = env.operator("only", &[]);
    let mut jobs = Vec::new();
    for name in ["slice-a", "slice-b", "slice-c", "slice-d"] {
        let mut j = gpu_job(name, 1, 300);
        j["spec"]["queue"] = json!("mig-q");
        j["spec"]["taskGroups"][0]["gpuModels"] = json!([{ "model": "a100-1g.10gb" }]);
        env.create::<ComputeJob>(j).await.unwrap();
        jobs.push(name);
    }
    let mut used = BTreeSet::new();
    for name in &jobs[..3] {
        let at = placed(&env, name).await;
        assert_eq!(at.len(), 1);
        assert!(mig.contains(&at[0]), "{name} on slot {at:?}, a MIG instance");
        used.insert(at[0]);
        let seen = uuids_of(&said(&env, &format!("{name}-w-0")).await);
        assert_eq!(seen, BTreeSet::from([slots[&at[0]].0.clone()]), "{name} sees its instance's MIG UUID");
        assert!(slots[&at[0]].0.starts_with("MIG-"));
    }
    assert_eq!(used.len(), 3, "three different instances");
    // The fourth is over the queue's MIG quota of 3 and waits, though instances are free.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let d = env.job("default", "slice-d").await;
    assert!(d.status.as_ref().and_then(|s| s.placement.as_ref()).is_none(), "{:?}", d.status);
}

#[tokio::test]
async fn a_plain_pod_asking_nvidia_gpu_gets_a_device_from_kube_scheduler_and_haiyun_places_around_it() {
    let Some(env) = Env::start_dra("plain").await else { return };
    let (node, gpus) = setup(&env).await;
    // A pod of another scheduler (kube-scheduler maps nvidia.com/gpu to the driver's DeviceClass).
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let plain: Pod = serde_json::from_value(json!({
        "metadata": {"name": "plain"},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
          "nodeSelector": {"kubernetes.io/hostname": node},
          "containers": [{"name": "c", "image": image(), "imagePullPolicy": "Never",
            "command": ["sh", "-c", "echo \"uuids=$NVIDIA_VISIBLE_DEVICES\"; sleep 300"],
            "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &plain).await.unwrap();
    let seen = uuids_of(&said(&env, "plain").await);
    assert_eq!(seen.len(), 1, "the plain pod got one GPU: {seen:?}");
    let slot = *gpus.iter().find(|(_, d)| seen.contains(&d.0)).expect("one of the node's GPUs").0;
    let _op = env.operator("only", &[]);
    // Eight GPUs do not fit beside it; seven do, and never on its GPU.
    env.create::<ComputeJob>(gpu_job("eight", 8, 300)).await.unwrap();
    env.create::<ComputeJob>(gpu_job("seven", 7, 300)).await.unwrap();
    let seven = placed(&env, "seven").await;
    assert!(!seven.contains(&slot), "{seven:?} avoids the plain pod's GPU {slot}");
    let seen7 = uuids_of(&said(&env, "seven-w-0").await);
    assert!(!seen7.iter().any(|u| seen.contains(u)));
    let eight = env.job("default", "eight").await;
    assert!(eight.status.as_ref().and_then(|s| s.placement.as_ref()).is_none(), "{:?}", eight.status);
    // Gone with its claim before the next test counts the node's GPUs.
    pods.delete("plain", &Default::default()).await.unwrap();
    let claims: Api<ResourceClaim> = Api::namespaced(env.client.clone(), "default");
    wait_for("the plain pod and its claim gone", LONG, || async {
        let pod_gone = pods.get_opt("plain").await.ok()?.is_none();
        let list = claims.list(&ListParams::default()).await.ok()?;
        let claim_gone =
            !list.items.iter().any(|c| c.metadata.name.as_deref().is_some_and(|n| n.starts_with("plain-")));
        (pod_gone && claim_gone).then_some(())
    })
    .await;
}
