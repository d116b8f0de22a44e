//! The operator on a real API server (testenv) with kwok GPU nodes: admission, binding, status, events, the
//! decision log, quota and data clearance. Tests run one at a time (they share the control plane).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use haiyun_api::{ComputeJob, ComputePool, Dataset, Queue, QuotaRequest};
use serde_json::json;
use support::{Env, job, pool, queue, wait_for};

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_4x8_gpu_training_job_is_bound_all_or_nothing_runs_and_succeeds_with_status_events_and_log() {
    let Some(env) = Env::start("gang").await else { return };
    let nodes = env.nodes("a", 4, 8, "H100").await;
    env.create::<ComputePool>(pool(&env, "gang-pool", "a", "public")).await.unwrap();
    env.create::<Queue>(queue("gang-q", "nvidia.com/gpu:h100", 64)).await.unwrap();
    let _op = env.operator("only", &[]);
    env.create::<ComputeJob>(job("first", "gang-q", 4, 8, "4s")).await.unwrap();
    env.create::<ComputeJob>(job("second", "gang-q", 4, 8, "2s")).await.unwrap();

    // While the first runs, the second (which needs the same 32 GPUs) has no pod bound: all or nothing.
    let first = env.wait_phase("default", "first", "Running", LONG).await;
    let second_bound = |pods: &[k8s_openapi::api::core::v1::Pod]| {
        pods.iter().filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()).count()
    };
    for _ in 0..5 {
        let n = second_bound(&env.pods_of("default", "second").await);
        assert!(n == 0 || n == 4, "the second gang is partly bound: {n} of 4 pods");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let placement = first.status.as_ref().unwrap().placement.clone().unwrap();
    assert_eq!(placement.pool, "gang-pool");
    assert_eq!(placement.gpu_model, "h100");
    assert_eq!(placement.tasks.len(), 4);
    let mut used: Vec<&str> = placement.tasks.iter().map(|t| t.node.as_str()).collect();
    used.sort();
    assert_eq!(used, nodes.iter().map(String::as_str).collect::<Vec<_>>(), "one 8-GPU worker per node");
    assert!(placement.tasks.iter().all(|t| t.gpus == (0..8).collect::<Vec<u32>>()));
    for pod in env.pods_of("default", "first").await {
        let spec = pod.spec.unwrap();
        assert_eq!(spec.scheduler_name.as_deref(), Some("haiyun"));
        let task = placement.tasks.iter().find(|t| Some(&t.pod) == pod.metadata.name.as_ref()).unwrap();
        assert_eq!(spec.node_name.as_ref(), Some(&task.node), "bound where the status says");
    }

    let done = env.wait_phase("default", "first", "Succeeded", LONG).await;
    let st = done.status.unwrap();
    assert!(st.gpu_hours > 0.0);
    assert!(
        st.conditions.iter().any(|c| c.type_ == "Finished" && c.status == "True" && c.reason == "Succeeded")
    );
    assert!(st.conditions.iter().all(|c| c.observed_generation == 1));
    env.wait_phase("default", "second", "Succeeded", LONG).await;
    let reasons = env.event_reasons("default", "first").await;
    for r in ["Admitted", "Running", "Succeeded"] {
        assert!(reasons.iter().any(|x| x == r), "no {r} event in {reasons:?}");
    }
    let log = env.decisions();
    let of = |event: &str| log.iter().filter(|d| d["job"] == "default/first" && d["event"] == event).count();
    assert_eq!((of("place"), of("finish")), (1, 1), "decision log: {log:?}");
    let place = log.iter().find(|d| d["job"] == "default/first" && d["event"] == "place").unwrap();
    assert_eq!(place["queue"], "gang-q");
    assert_eq!(place["pool"], "gang-pool");
    assert_eq!(place["tasks"].as_array().unwrap().len(), 4);
    assert_eq!(place["tasks"][0]["gpus"].as_array().unwrap().len(), 8);
}

#[tokio::test]
async fn quota_blocks_a_job_with_the_queue_and_shortfall_an_approved_request_starts_it_and_expiry_lowers_it()
{
    let Some(env) = Env::start("quota").await else { return };
    env.nodes("a", 2, 8, "H100").await;
    env.create::<ComputePool>(pool(&env, "quota-pool", "a", "public")).await.unwrap();
    env.create::<Queue>(queue("team-q", "nvidia.com/gpu:h100", 8)).await.unwrap();
    let _op = env.operator("only", &[]);
    env.create::<ComputeJob>(job("big", "team-q", 2, 8, "3s")).await.unwrap();

    let api = kube::Api::<ComputeJob>::namespaced(env.client.clone(), "default");
    let blocked = wait_for("a quota reason on job big", LONG, || async {
        let j = api.get("big").await.ok()?;
        let r = j.status?.pending_reasons.into_iter().find(|r| r.phase == "quota")?;
        Some(r)
    })
    .await;
    assert_eq!(blocked.flavor.as_deref(), Some("nvidia.com/gpu:h100"));
    assert_eq!((blocked.needed.as_deref(), blocked.left.as_deref()), (Some("16"), Some("8")));
    assert!(blocked.message.contains("queue team-q needs 16"), "{}", blocked.message);

    let now = jiff::Timestamp::now();
    let end = now + jiff::SignedDuration::from_secs(20);
    let request = json!({
        "apiVersion": "haiyun.io/v1alpha1",
        "kind": "QuotaRequest",
        "metadata": { "name": "more", "namespace": "default" },
        "spec": {
            "queue": "team-q", "flavor": "nvidia.com/gpu:h100", "amount": "8",
            "start": (now - jiff::SignedDuration::from_secs(60)).to_string(), "end": end.to_string(),
            "reason": "deadline", "decision": "Approved"
        }
    });
    env.create::<QuotaRequest>(request).await.unwrap();
    env.wait_phase("default", "big", "Running", LONG).await;
    let queues = kube::Api::<Queue>::all(env.client.clone());
    let raised = queues.get("team-q").await.unwrap().status.unwrap();
    assert_eq!(raised.usage[0].quota, "16");
    env.wait_phase("default", "big", "Succeeded", LONG).await;

    // After the window the quota is back to 8 and the same request waits again.
    wait_for("the grant to lapse", LONG, || async {
        let q = queues.get("team-q").await.ok()?.status?;
        (q.usage.first()?.quota == "8").then_some(())
    })
    .await;
    let reqs = kube::Api::<QuotaRequest>::namespaced(env.client.clone(), "default");
    wait_for("the request to read Expired", LONG, || async {
        let s = reqs.get("more").await.ok()?.status?;
        (format!("{:?}", s.state) == "Expired").then_some(())
    })
    .await;
    env.create::<ComputeJob>(job("again", "team-q", 2, 8, "3s")).await.unwrap();
    wait_for("job again to wait on quota", LONG, || async {
        let j = api.get("again").await.ok()?;
        j.status?.pending_reasons.iter().any(|r| r.phase == "quota").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_job_reading_core_data_never_lands_in_a_pool_cleared_lower_and_says_why_it_waits() {
    let Some(env) = Env::start("data").await else { return };
    env.nodes("low", 2, 8, "H100").await;
    let secure = env.nodes("high", 1, 8, "H100").await;
    env.create::<ComputePool>(pool(&env, "open-pool", "low", "internal")).await.unwrap();
    env.create::<Queue>(queue("data-q", "nvidia.com/gpu:h100", 64)).await.unwrap();
    let dataset = json!({
        "apiVersion": "haiyun.io/v1alpha1",
        "kind": "Dataset",
        "metadata": { "name": "census" },
        "spec": { "size": "200Gi", "classification": "core", "replicas": ["secure-pool"], "owner": "stats" }
    });
    env.create::<Dataset>(dataset).await.unwrap();
    let _op = env.operator("only", &[]);
    let mut reader = job("reader", "data-q", 1, 4, "2s");
    reader["spec"]["datasets"] = json!(["census"]);
    env.create::<ComputeJob>(reader).await.unwrap();

    let api = kube::Api::<ComputeJob>::namespaced(env.client.clone(), "default");
    let why = wait_for("a data-clearance reason", LONG, || async {
        let j = api.get("reader").await.ok()?;
        j.status?.pending_reasons.into_iter().find(|r| r.phase == "data-clearance")
    })
    .await;
    assert!(why.message.contains("core"), "{}", why.message);
    assert!(env.pods_of("default", "reader").await.is_empty(), "no pod while no pool is cleared");

    env.create::<ComputePool>(pool(&env, "secure-pool", "high", "core")).await.unwrap();
    let done = env.wait_phase("default", "reader", "Succeeded", LONG).await;
    let p = done.status.unwrap().placement.unwrap();
    assert_eq!(p.pool, "secure-pool");
    assert_eq!(p.tasks[0].node, secure[0]);
    let place =
        env.decisions().into_iter().find(|d| d["job"] == "default/reader" && d["event"] == "place").unwrap();
    assert_eq!(place["datasets"], json!(["census"]), "the audit trail names the data read");
}

#[tokio::test]
async fn a_job_naming_a_missing_queue_is_kept_says_so_and_starts_once_the_queue_appears() {
    let Some(env) = Env::start("noqueue").await else { return };
    env.nodes("a", 1, 8, "H100").await;
    env.create::<ComputePool>(pool(&env, "nq-pool", "a", "public")).await.unwrap();
    let _op = env.operator("only", &[]);
    env.create::<ComputeJob>(job("early", "later-q", 1, 2, "2s")).await.unwrap();
    let api = kube::Api::<ComputeJob>::namespaced(env.client.clone(), "default");
    let why = wait_for("a queue reason", LONG, || async {
        let j = api.get("early").await.ok()?;
        let st = j.status?;
        (format!("{:?}", st.phase) == "Pending").then_some(())?;
        st.pending_reasons.into_iter().find(|r| r.phase == "queue")
    })
    .await;
    assert!(why.message.contains("later-q") && why.message.contains("does not exist"), "{}", why.message);
    // The event follows the status write that carries the reason: wait for it rather than race it.
    wait_for("a NotQueued event", Duration::from_secs(20), || async {
        env.event_reasons("default", "early").await.iter().any(|r| r == "NotQueued").then_some(())
    })
    .await;
    env.create::<Queue>(queue("later-q", "nvidia.com/gpu:h100", 8)).await.unwrap();
    env.wait_phase("default", "early", "Succeeded", LONG).await;
}

#[tokio::test]
async fn bad_manifests_are_refused_by_the_api_server_with_messages_that_name_the_field() {
    let Some(env) = Env::start("cel").await else { return };
    let group = |name: &str, extra: serde_json::Value| {
        let mut g = json!({ "name": name, "replicas": 1, "gpus": 1 });
        for (k, v) in extra.as_object().unwrap() {
            g[k] = v.clone();
        }
        g
    };
    let cj = |spec: serde_json::Value| {
        json!({ "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputeJob",
                "metadata": { "name": "bad", "namespace": "default" }, "spec": spec })
    };
    let cases: Vec<(&str, serde_json::Value, Vec<&str>)> = vec![
        (
            "missing queue",
            cj(json!({ "taskGroups": [group("w", json!({}))] })),
            vec!["spec.queue", "Required"],
        ),
        ("no task groups", cj(json!({ "queue": "q", "taskGroups": [] })), vec!["spec.taskGroups"]),
        (
            "negative GPUs",
            cj(json!({ "queue": "q", "taskGroups": [group("w", json!({ "gpus": -1 }))] })),
            vec!["spec.taskGroups[0].gpus", "greater than or equal to 0"],
        ),
        (
            "fraction of several GPUs",
            cj(json!({ "queue": "q", "taskGroups": [group("w", json!({ "gpus": 2, "gpuFraction": 0.5 }))] })),
            vec!["spec.taskGroups[0].gpuFraction", "set gpus to 1"],
        ),
        (
            "fraction above one",
            cj(json!({ "queue": "q", "taskGroups": [group("w", json!({ "gpuFraction": 1.5 }))] })),
            vec!["spec.taskGroups[0].gpuFraction", "between 0 and 1"],
        ),
        (
            "minAvailable (elastic gangs are not built)",
            cj(
                json!({ "queue": "q", "minAvailable": 1, "taskGroups": [group("w", json!({ "replicas": 2 }))] }),
            ),
            vec!["spec.minAvailable", "not supported"],
        ),
        (
            "two groups with one name",
            cj(json!({ "queue": "q", "taskGroups": [group("w", json!({})), group("w", json!({}))] })),
            vec!["spec.taskGroups[1]", "Duplicate value"],
        ),
        (
            "bad run time",
            cj(json!({ "queue": "q", "runtimeEstimate": "soon", "taskGroups": [group("w", json!({}))] })),
            vec!["spec.runtimeEstimate", "90m"],
        ),
    ];
    let named = |name: &str| {
        json!({ "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputeJob",
                "metadata": { "name": name, "namespace": "default" },
                "spec": { "queue": "q", "taskGroups": [group("worker", json!({ "replicas": 10 }))] } })
    };
    let cases: Vec<(&str, serde_json::Value, Vec<&str>)> = cases
        .into_iter()
        .chain([
            ("a name too long for its pods' hostnames", named(&"a".repeat(55)), vec!["63 characters"]),
            ("a name that is no DNS label", named("9lives"), vec!["DNS label that starts with a letter"]),
        ])
        .collect();
    env.create::<ComputeJob>(named(&"a".repeat(54)))
        .await
        .expect("a name whose hostnames fit in 63 characters");
    for (name, obj, want) in cases {
        let err = env.create::<ComputeJob>(obj).await.expect_err(name);
        for w in want {
            assert!(err.contains(w), "{name}: {w:?} not in {err}");
        }
    }
    let window = json!({ "apiVersion": "haiyun.io/v1alpha1", "kind": "QuotaRequest",
        "metadata": { "name": "backwards", "namespace": "default" },
        "spec": { "queue": "q", "flavor": "nvidia.com/gpu:h100", "amount": "8",
                  "start": "2026-11-26T12:00:00Z", "end": "2026-11-26T09:00:00Z" } });
    let err = env.create::<QuotaRequest>(window).await.unwrap_err();
    assert!(err.contains("spec.end") && err.contains("end must be after start"), "{err}");
    let flavor = json!({ "apiVersion": "haiyun.io/v1alpha1", "kind": "Queue", "metadata": { "name": "bad-q" },
        "spec": { "resources": [{ "flavor": "gpus", "nominal": "8" }] } });
    let err = env.create::<Queue>(flavor).await.unwrap_err();
    assert!(err.contains("spec.resources[0].flavor") && err.contains("nvidia.com/gpu:<model>"), "{err}");
    let path = json!({ "apiVersion": "haiyun.io/v1alpha1", "kind": "Queue", "metadata": { "name": "bad-path" },
        "spec": { "cohort": "research//vision", "resources": [] } });
    let err = env.create::<Queue>(path).await.unwrap_err();
    assert!(err.contains("spec.cohort") && err.contains("e.g. research/vision"), "{err}");
    let limit = json!({ "apiVersion": "haiyun.io/v1alpha1", "kind": "Queue", "metadata": { "name": "bad-limit" },
        "spec": { "userLimit": [{ "flavor": "gpu", "max": "2" }], "resources": [] } });
    let err = env.create::<Queue>(limit).await.unwrap_err();
    assert!(err.contains("spec.userLimit[0].flavor") && err.contains("nvidia.com/gpu:<model>"), "{err}");
    // hostPath stays out of job namespaces through Pod Security (the README's recipe): a dataset's files on a node's
    // disk cannot be mounted around its storage identity.
    let ns = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "cel-baseline",
        "labels": { "pod-security.kubernetes.io/enforce": "baseline" } } });
    // (It may be there from an earlier run on the same control plane.)
    let _ = env.create::<k8s_openapi::api::core::v1::Namespace>(ns).await;
    let host = json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "host", "namespace": "cel-baseline" },
        "spec": { "schedulerName": "haiyun", "containers": [{ "name": "c", "image": "x" }],
                  "volumes": [{ "name": "d", "hostPath": { "path": "/exports/census" } }] } });
    let err = env.create::<k8s_openapi::api::core::v1::Pod>(host).await.unwrap_err();
    assert!(err.contains("hostPath") && err.contains("baseline"), "{err}");
    let two = json!({ "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputePool", "metadata": { "name": "bad-p" },
        "spec": { "kind": "ai", "backend": { "kubernetes": {}, "simulated": { "nodes": [] } } } });
    let err = env.create::<ComputePool>(two).await.unwrap_err();
    assert!(err.contains("spec.backend") && err.contains("exactly one"), "{err}");
}

fn plain_pod(name: &str, queue: Option<&str>, gpus: u32) -> serde_json::Value {
    let mut labels = json!({});
    if let Some(q) = queue {
        labels["haiyun.io/queue"] = json!(q);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": "default", "labels": labels,
                      "annotations": { "haiyun.io/duration": "60s" } },
        "spec": {
            "schedulerName": "haiyun",
            "containers": [{ "name": "main", "image": "example.invalid/x:1",
                "resources": { "limits": { "nvidia.com/gpu": gpus.to_string() } } }]
        }
    })
}

#[tokio::test]
async fn plain_pods_naming_haiyun_are_bound_with_their_gpus_and_told_why_when_they_wait() {
    let Some(env) = Env::start("plain").await else { return };
    env.nodes("a", 1, 8, "H100").await;
    env.create::<ComputePool>(pool(&env, "plain-pool", "a", "public")).await.unwrap();
    env.create::<Queue>(queue("plain-q", "nvidia.com/gpu:h100", 8)).await.unwrap();
    let _op = env.operator("only", &[]);
    type Pod = k8s_openapi::api::core::v1::Pod;
    for i in 0..2 {
        env.create::<Pod>(plain_pod(&format!("p{i}"), Some("plain-q"), 4)).await.unwrap();
    }
    let pods = kube::Api::<Pod>::namespaced(env.client.clone(), "default");
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..2 {
        let p = wait_for("a plain pod bound", LONG, || async {
            let p = pods.get(&format!("p{i}")).await.ok()?;
            p.spec.as_ref()?.node_name.as_ref()?;
            Some(p)
        })
        .await;
        let gpus = p.metadata.annotations.unwrap()["haiyun.io/gpus"].clone();
        assert_eq!(gpus.split(',').count(), 4, "{gpus}");
        for g in gpus.split(',') {
            assert!(seen.insert(g.to_string()), "GPU {g} given twice");
        }
    }
    // Once both hold the queue's 8 GPUs, a third waits on quota; a pod without a queue says what it lacks.
    env.create::<Pod>(plain_pod("over", Some("plain-q"), 4)).await.unwrap();
    env.create::<Pod>(plain_pod("orphan", None, 1)).await.unwrap();
    let why = |name: &'static str| {
        let pods = pods.clone();
        async move {
            let p = pods.get(name).await.ok()?;
            assert!(p.spec.as_ref()?.node_name.is_none(), "{name} was bound");
            let c = p.status?.conditions?.into_iter().find(|c| c.type_ == "PodScheduled")?;
            (c.status == "False").then_some(c.message?)
        }
    };
    let over = wait_for("the third pod to say why", LONG, || why("over")).await;
    assert!(over.starts_with("quota: queue plain-q needs 4"), "{over}");
    let orphan = wait_for("the pod without a queue to say why", LONG, || why("orphan")).await;
    assert!(orphan.contains("haiyun.io/queue"), "{orphan}");
    let log = env.decisions();
    assert_eq!(log.iter().filter(|d| d["event"] == "place" && d["queue"] == "plain-q").count(), 2, "{log:?}");
}

/// A one-route OTLP/HTTP collector: it answers 200 to every POST and keeps the bodies.
fn collector() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            keep.lock().unwrap().push(body);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, bodies)
}

#[tokio::test]
async fn with_an_otlp_endpoint_every_scheduling_cycle_is_traced_and_every_audit_record_is_a_log() {
    let Some(env) = Env::start("otel").await else { return };
    env.nodes("a", 1, 8, "H100").await;
    env.create::<ComputePool>(pool(&env, "otel-pool", "a", "public")).await.unwrap();
    env.create::<Queue>(queue("otel-q", "nvidia.com/gpu:h100", 8)).await.unwrap();
    let (port, bodies) = collector();
    let endpoint = format!("http://127.0.0.1:{port}");
    let _op = env.operator("only", &["--otlp-endpoint", &endpoint]);
    let has = |needle: &'static [u8]| {
        let bodies = bodies.clone();
        move || {
            let got = bodies.lock().unwrap();
            let found = got.iter().any(|b| b.windows(needle.len()).any(|w| w == needle));
            async move { found.then_some(()) }
        }
    };
    wait_for("a cycle span at the collector", LONG, has(b"scheduling_cycle")).await;
    env.create::<ComputeJob>(job("otel-job", "otel-q", 1, 1, "30s")).await.unwrap();
    // The audit line as written to the file, hash chain and all, is the body of a log record.
    wait_for(
        "the job's place line as a log record",
        LONG,
        has(b"\"event\":\"place\",\"job\":\"default/otel-job\""),
    )
    .await;
    let line = env
        .decisions()
        .into_iter()
        .find(|d| d["event"] == "place" && d["job"] == "default/otel-job")
        .unwrap();
    let hash = line["hash"].as_str().unwrap().to_string();
    let got = bodies.lock().unwrap();
    assert!(
        got.iter().any(|b| b.windows(hash.len()).any(|w| w == hash.as_bytes())),
        "the record carries the chain"
    );
    assert!(got.iter().any(|b| b.windows(15).any(|w| w == b"haiyun.decision")), "the event is named");
    assert!(got.iter().any(|b| b.windows(15).any(|w| w == b"haiyun-operator")), "the service is named");
}

#[tokio::test]
async fn a_job_gets_a_headless_service_dns_names_restart_policy_never_and_torchruns_environment() {
    let Some(env) = Env::start("contract").await else { return };
    env.nodes("a", 2, 8, "H100").await;
    env.create::<ComputePool>(pool(&env, "contract-pool", "a", "public")).await.unwrap();
    env.create::<Queue>(queue("contract-q", "nvidia.com/gpu:h100", 16)).await.unwrap();
    let _op = env.operator("only", &[]);
    env.create::<ComputeJob>(job("ddp", "contract-q", 2, 4, "30s")).await.unwrap();
    let running = env.wait_phase("default", "ddp", "Running", LONG).await;
    let uid = running.metadata.uid.clone().unwrap();
    let services: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(env.client.clone(), "default");
    let svc = services.get("ddp").await.expect("the job's headless Service");
    let spec = svc.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(spec.publish_not_ready_addresses, Some(true));
    assert_eq!(spec.selector.unwrap()["haiyun.io/job-uid"], uid);
    assert_eq!(svc.metadata.owner_references.unwrap()[0].uid, uid, "the job owns its Service");
    let mut pods = env.pods_of("default", "ddp").await;
    pods.sort_by_key(|p| p.metadata.name.clone());
    assert_eq!(pods.len(), 2);
    for (rank, pod) in pods.iter().enumerate() {
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some(format!("ddp-worker-{rank}").as_str()));
        assert_eq!(spec.subdomain.as_deref(), Some("ddp"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let env_of = |name: &str| {
            spec.containers[0].env.iter().flatten().find(|e| e.name == name).and_then(|e| e.value.clone())
        };
        assert_eq!(env_of("MASTER_ADDR").as_deref(), Some("ddp-worker-0.ddp.default.svc"));
        assert_eq!(env_of("MASTER_PORT").as_deref(), Some("29500"));
        assert_eq!(env_of("WORLD_SIZE").as_deref(), Some("8"), "2 pods x 4 GPUs");
        assert_eq!(env_of("RANK"), Some(rank.to_string()));
        assert_eq!(env_of("PET_NPROC_PER_NODE").as_deref(), Some("4"));
        assert_eq!(env_of("HAIYUN_RESTART_ATTEMPT").as_deref(), Some("0"));
    }
}

#[tokio::test]
async fn a_job_whose_pods_the_api_server_refuses_says_why_releases_its_gpus_and_fails_after_its_restarts() {
    let Some(env) = Env::start("refused").await else { return };
    env.nodes("a", 1, 8, "H100").await;
    env.create::<ComputePool>(pool(&env, "refused-pool", "a", "public")).await.unwrap();
    env.create::<Queue>(queue("refused-q", "nvidia.com/gpu:h100", 8)).await.unwrap();
    let _op = env.operator("only", &[]);
    let mut bad = job("bad-template", "refused-q", 1, 8, "5s");
    // A container name the API server refuses (not a DNS label).
    bad["spec"]["taskGroups"][0]["template"]["spec"]["containers"][0]["name"] = json!("Not_A_Name");
    bad["spec"]["maxRestarts"] = json!(1);
    env.create::<ComputeJob>(bad).await.unwrap();
    let restarting = wait_for("the first refusal to restart the job", LONG, || async {
        let j = env.job("default", "bad-template").await;
        j.status.filter(|s| s.restarts == 1)
    })
    .await;
    assert!(restarting.placement.is_none(), "a refused run holds nothing");
    let failure = restarting.last_failure.clone().unwrap();
    assert_eq!(failure.reason, "Refused");
    assert!(failure.message.contains("Not_A_Name") || failure.message.contains("containers"), "{failure:?}");
    assert!(restarting.restart_after.is_some());
    // Another job can use the GPUs meanwhile.
    env.create::<ComputeJob>(job("good", "refused-q", 1, 8, "1s")).await.unwrap();
    env.wait_phase("default", "good", "Succeeded", LONG).await;
    let failed = env.wait_phase("default", "bad-template", "Failed", LONG).await;
    let st = failed.status.unwrap();
    assert_eq!((st.restarts, st.last_failure.unwrap().reason.as_str()), (1, "Refused"));
    let reasons = env.event_reasons("default", "bad-template").await;
    assert!(
        reasons.iter().any(|r| r == "Restarting") && reasons.iter().any(|r| r == "Failed"),
        "{reasons:?}"
    );
}
