//! Node agents streaming to the operator over loopback, on a real API server (testenv) with kwok GPU nodes: an XID
//! makes a GPU unplaceable within 5 s and work goes elsewhere, a reset brings it back, a 60-second cut of the link
//! loses nothing and evicts nothing, and a token for one node cannot speak for another, in this cluster or in a remote
//! pool's (whose API server reviews its agents' tokens).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use haiyun_agent::link::LinkConfig;
use haiyun_agent::probe::fake::{FakeProbe, FaultFile, FileFaultProbe};
use haiyun_agent::serve::Options;
use haiyun_api::{ComputeJob, ComputePool, Queue};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::Api;
use kube::api::PostParams;
use support::{Env, OperatorProcess, job, pool, queue, wait_for};

const LONG: Duration = Duration::from_secs(60);

/// An agent running in this process with the `dgx-h100` fake, streaming to `endpoint` with `token`.
struct Agent {
    metrics: SocketAddr,
    faults: PathBuf,
}

impl Agent {
    async fn start(env: &Env, node: &str, endpoint: String, token: &str) -> Agent {
        // A remote pool's node (`<pool>/<node>`) makes one file name.
        let file = node.replace('/', "_");
        let faults = env.dir.join(format!("faults-{file}"));
        std::fs::write(&faults, "").unwrap();
        let token_file = env.dir.join(format!("token-{file}-{}", token.len()));
        std::fs::write(&token_file, token).unwrap();
        let probe = FileFaultProbe {
            probe: FakeProbe::profile("dgx-h100").unwrap(),
            faults: FaultFile::new(&faults),
        };
        let link = LinkConfig {
            endpoint,
            node: node.into(),
            token_file: Some(token_file),
            buffer: 600,
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(2),
            quiet: false,
        };
        let opts = Options {
            node: node.into(),
            interval: Duration::from_secs(1),
            addr: "127.0.0.1:0".parse().unwrap(),
            link: Some(link),
            pod_resources: None,
        };
        let (metrics, _task) = haiyun_agent::serve::run(Box::new(probe), opts).await.unwrap();
        Agent { metrics, faults }
    }

    fn fault(&self, line: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.faults).unwrap();
        writeln!(f, "{line}").unwrap();
    }

    async fn metric(&self, name: &str) -> Option<f64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.metrics).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").await.ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).await.ok()?;
        text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }
}

/// A TCP relay between agents and the operator that can be cut (connections dropped, new ones refused).
struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, k) = (cut.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: the link is cut
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                k.lock().unwrap().push(task.abort_handle());
            }
        });
        Relay { addr, cut, conns }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        if cut {
            for c in self.conns.lock().unwrap().drain(..) {
                c.abort();
            }
        }
    }
}

async fn condition(env: &Env, node: &str, kind: &str) -> Option<(String, String)> {
    condition_in(&env.client, node, kind).await
}

async fn condition_in(client: &kube::Client, node: &str, kind: &str) -> Option<(String, String)> {
    let n = Api::<Node>::all(client.clone()).get(node).await.ok()?;
    let c = n.status?.conditions?.into_iter().find(|c| c.type_ == kind)?;
    Some((c.status, c.message.unwrap_or_default()))
}

fn placed_nodes(j: &ComputeJob) -> Vec<String> {
    j.status
        .as_ref()
        .and_then(|s| s.placement.as_ref())
        .map(|p| p.tasks.iter().map(|t| t.node.clone()).collect())
        .unwrap_or_default()
}

fn tokens(env: &Env, nodes: &[String]) -> String {
    let path = env.dir.join("agent-tokens");
    let text: String = nodes.iter().map(|n| format!("{n} token-of-{n}\n")).collect();
    std::fs::write(&path, text).unwrap();
    format!("file:{}", path.display())
}

fn endpoint(op: &OperatorProcess) -> String {
    format!("http://127.0.0.1:{}", op.telemetry_port)
}

#[tokio::test]
async fn an_xid_79_makes_its_gpu_unplaceable_within_5_s_work_goes_elsewhere_a_reset_brings_it_back_and_a_job_on_it_runs_again()
 {
    let Some(env) = Env::start("xid").await else { return };
    let nodes = env.nodes("g", 2, 8, "H100").await;
    let (a, b) = (&nodes[0], &nodes[1]);
    env.create::<ComputePool>(pool(&env, "xid-pool", "g", "public")).await.unwrap();
    env.create::<Queue>(queue("xid-q", "nvidia.com/gpu:h100", 16)).await.unwrap();
    let auth = tokens(&env, &nodes);
    let op = env.operator("only", &["--agent-auth", &auth]);
    wait_for("the operator to lead", LONG, || async {
        (op.metric("haiyun_leader").await? == 1.0).then_some(())
    })
    .await;
    let agent_a = Agent::start(&env, a, endpoint(&op), &format!("token-of-{a}")).await;
    let _agent_b = Agent::start(&env, b, endpoint(&op), &format!("token-of-{b}")).await;
    for n in [a, b] {
        wait_for(&format!("{n} reported healthy"), LONG, || async {
            let (status, msg) = condition(&env, n, "HaiyunGPUHealthy").await?;
            (status == "True" && msg == "8 GPUs healthy").then_some(())
        })
        .await;
    }

    // The driver reports XID 79 on a's GPU 3: within 5 s the node says which GPU and why.
    let seen = Instant::now();
    agent_a.fault("xid 3 79");
    let (_, msg) = wait_for("the XID on the node", Duration::from_secs(5), || async {
        condition(&env, a, "HaiyunGPUHealthy").await.filter(|(s, _)| s == "False")
    })
    .await;
    let took = seen.elapsed();
    assert!(msg.contains("GPU 3 (GPU-fake-h100-03) unhealthy: XID 79"), "{msg}");
    eprintln!("XID 79 to node condition: {took:?}");

    // An 8-GPU job cannot use a (7 healthy GPUs): it goes to b. A second one waits for a's GPU.
    env.create::<ComputeJob>(job("first", "xid-q", 1, 8, "10m")).await.unwrap();
    let first = env.wait_phase("default", "first", "Running", LONG).await;
    assert_eq!(placed_nodes(&first), vec![b.clone()], "the job went elsewhere");
    env.create::<ComputeJob>(job("second", "xid-q", 1, 8, "10m")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = env.job("default", "second").await;
    assert!(placed_nodes(&second).is_empty(), "nothing is placed on a failed GPU: {:?}", second.status);

    // The GPU is reset: the cause clears, the GPU returns and the waiting job lands on it.
    agent_a.fault("reset 3");
    let second = env.wait_phase("default", "second", "Running", LONG).await;
    assert_eq!(placed_nodes(&second), vec![a.clone()]);
    wait_for("a's condition healthy again", Duration::from_secs(5), || async {
        condition(&env, a, "HaiyunGPUHealthy").await.filter(|(s, _)| s == "True")
    })
    .await;
    assert_eq!(op.metric("haiyun_agents_connected").await, Some(2.0));

    // XID 79 under the running job: within 10 s it is evicted to run again (not counted as a restart), and with no
    // other 8 healthy GPUs free it waits.
    let seen = Instant::now();
    agent_a.fault("xid 5 79");
    let failure = wait_for("the job on the failed GPU evicted", Duration::from_secs(10), || async {
        let st = env.job("default", "second").await.status?;
        st.last_failure.filter(|f| f.reason == "GPUFailed").map(|f| (f, st.preemptions, st.restarts))
    })
    .await;
    eprintln!("XID 79 under a running job to its eviction: {:?}", seen.elapsed());
    assert!(
        failure.0.message.contains("GPU 5 on node") && failure.0.message.contains("XID 79"),
        "{:?}",
        failure.0
    );
    assert_eq!((failure.1, failure.2), (1, 0), "a GPU fault is not the job's failure");
}

#[tokio::test]
async fn a_60_second_cut_loses_no_sample_reports_the_gap_and_evicts_nothing() {
    let Some(env) = Env::start("cut").await else { return };
    let nodes = env.nodes("g", 1, 8, "H100").await;
    let a = &nodes[0];
    env.create::<ComputePool>(pool(&env, "cut-pool", "g", "public")).await.unwrap();
    env.create::<Queue>(queue("cut-q", "nvidia.com/gpu:h100", 8)).await.unwrap();
    let auth = tokens(&env, &nodes);
    let op = env.operator("only", &["--agent-auth", &auth, "--agent-grace-seconds", "90"]);
    wait_for("the operator to lead", LONG, || async {
        (op.metric("haiyun_leader").await? == 1.0).then_some(())
    })
    .await;
    let relay = Relay::start(format!("127.0.0.1:{}", op.telemetry_port).parse().unwrap()).await;
    let agent = Agent::start(&env, a, format!("http://{}", relay.addr), &format!("token-of-{a}")).await;
    env.create::<ComputeJob>(job("train", "cut-q", 1, 8, "10m")).await.unwrap();
    let before = env.wait_phase("default", "train", "Running", LONG).await;
    wait_for("the agent's link up", LONG, || async {
        (agent.metric("haiyun_agent_link_up").await? == 1.0).then_some(())
    })
    .await;

    relay.set_cut(true);
    let cut = Instant::now();
    let stale = format!("haiyun_node_agent_stale{{node=\"{a}\"}}");
    while cut.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(op.metric(&stale).await, Some(0.0), "not stale within the grace period");
        let j = env.job("default", "train").await;
        assert_eq!(placed_nodes(&j), placed_nodes(&before), "nothing is evicted during the cut");
    }
    let buffered = agent.metric("haiyun_agent_buffered_samples").await.unwrap();
    assert!(buffered >= 55.0, "the agent kept the samples of the cut: {buffered}");
    relay.set_cut(false);

    wait_for("the buffer to drain", LONG, || async {
        (agent.metric("haiyun_agent_buffered_samples").await? == 0.0).then_some(())
    })
    .await;
    let node = |m: &str| format!("{m}{{node=\"{a}\"}}");
    assert_eq!(agent.metric("haiyun_agent_dropped_samples_total").await, Some(0.0));
    assert_eq!(op.metric(&node("haiyun_node_agent_samples_lost_total")).await, Some(0.0), "no sample lost");
    let replayed = op.metric(&node("haiyun_node_agent_samples_replayed_total")).await.unwrap();
    assert!(replayed >= 55.0, "the cut's samples were replayed: {replayed}");
    let gap = op.metric(&node("haiyun_node_agent_last_gap_seconds")).await.unwrap();
    assert!((55.0..90.0).contains(&gap), "the gap is reported: {gap}");
    let after = env.job("default", "train").await;
    assert_eq!(placed_nodes(&after), placed_nodes(&before));
    assert!(
        !env.decisions().iter().any(|d| d["action"] == "evict" || d["action"] == "preempt"),
        "the decision log shows no eviction"
    );
    assert_eq!(condition(&env, a, "HaiyunAgentReporting").await.unwrap().0, "True");
}

#[tokio::test]
async fn in_a_cluster_a_projected_token_proves_its_node_and_a_forged_identity_is_refused() {
    let Some(env) = Env::start("ident").await else { return };
    let nodes = env.nodes("g", 2, 8, "H100").await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let sas: Api<ServiceAccount> = Api::namespaced(env.client.clone(), "default");
    let sa: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "haiyun-agent"}})).unwrap();
    let _ = sas.create(&PostParams::default(), &sa).await;
    // The agent's pod on node a, and a token bound to it for the agent audience.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "haiyun-agent-a"},
        "spec": {"nodeName": a, "serviceAccountName": "haiyun-agent",
                 "containers": [{"name": "agent", "image": "example.invalid/haiyun-agent:1"}]}
    }))
    .unwrap();
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    let request: k8s_openapi::api::authentication::v1::TokenRequest = serde_json::from_value(serde_json::json!({
        "spec": {"audiences": [haiyun_api::agent::TOKEN_AUDIENCE], "expirationSeconds": 3600,
                 "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "haiyun-agent-a", "uid": pod.metadata.uid}}
    }))
    .unwrap();
    let token = sas.create_token_request("haiyun-agent", &PostParams::default(), &request).await.unwrap();
    let token = token.status.unwrap().token.expect("a token");

    let op = env.operator(
        "only",
        &["--agent-auth", "tokenreview", "--agent-service-account", "default/haiyun-agent"],
    );
    wait_for("the operator to lead", LONG, || async {
        (op.metric("haiyun_leader").await? == 1.0).then_some(())
    })
    .await;
    let honest = Agent::start(&env, a, endpoint(&op), &token).await;
    let forger = Agent::start(&env, b, endpoint(&op), &token).await;
    wait_for("a's agent accepted", LONG, || async {
        condition(&env, a, "HaiyunGPUHealthy").await.filter(|(s, _)| s == "True")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(honest.metric("haiyun_agent_link_up").await, Some(1.0));
    assert_eq!(forger.metric("haiyun_agent_link_up").await, Some(0.0), "node a's token cannot speak for b");
    assert_eq!(forger.metric("haiyun_agent_connects_total").await, Some(0.0));
    assert!(condition(&env, b, "HaiyunGPUHealthy").await.is_none(), "nothing was recorded for b");
    assert_eq!(op.metric("haiyun_agents_connected").await, Some(1.0));
    let log = op.log_text();
    assert!(log.contains("refused an agent") && log.contains(&format!("belongs to node {a}")), "{log}");
}

/// A token of service account `default/haiyun-agent` in the cluster behind `client`, bound to a pod on `node`.
async fn bound_token(client: &kube::Client, node: &str) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let sa: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "haiyun-agent"}})).unwrap();
    let _ = sas.create(&PostParams::default(), &sa).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let name = format!("haiyun-agent-{node}");
    let _ = pods.delete(&name, &kube::api::DeleteParams::default().grace_period(0)).await;
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "serviceAccountName": "haiyun-agent",
                 "containers": [{"name": "agent", "image": "example.invalid/haiyun-agent:1"}]}
    }))
    .unwrap();
    let pod = wait_for("the agent's pod made", LONG, || async {
        pods.create(&PostParams::default(), &pod).await.ok()
    })
    .await;
    let request: k8s_openapi::api::authentication::v1::TokenRequest = serde_json::from_value(serde_json::json!({
        "spec": {"audiences": [haiyun_api::agent::TOKEN_AUDIENCE], "expirationSeconds": 3600,
                 "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": name, "uid": pod.metadata.uid}}
    }))
    .unwrap();
    let token = sas.create_token_request("haiyun-agent", &PostParams::default(), &request).await.unwrap();
    token.status.unwrap().token.expect("a token")
}

#[tokio::test]
async fn an_agent_in_a_remote_cluster_proves_its_node_there_and_its_gpu_health_drives_that_pools_capacity() {
    let Some(env) = Env::start("remote-ident").await else { return };
    let Some(rs) = support::remote::remotes(1).await else { return };
    let far = &rs[0];
    far.clean().await;
    let nodes = far.nodes(&env, "far", 2, 8, "H100").await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let token = bound_token(&far.client, a).await;
    support::remote::secret(&env, "far-kubeconfig", &far.kubeconfig).await;
    let selector = [("haiyun.io/test", env.name.as_str()), ("haiyun.io/group", "far")];
    let far_pool = haiyun_api::fixtures::pool("far").site("far").remote("far-kubeconfig", &selector).value();
    env.create::<ComputePool>(far_pool).await.unwrap();
    let op = env.operator(
        "only",
        &[
            "--agent-auth",
            "tokenreview",
            "--agent-service-account",
            "default/haiyun-agent",
            "--remote-sync-ms",
            "1000",
        ],
    );
    wait_for("the far pool linked", LONG, || async {
        let p = Api::<ComputePool>::all(env.client.clone()).get("far").await.ok()?;
        (p.status?.gpus == 16).then_some(())
    })
    .await;

    // The agent reports as far/<node>: the far cluster's API server reviews its token and names its node.
    let honest = Agent::start(&env, &format!("far/{a}"), endpoint(&op), &token).await;
    let forger = Agent::start(&env, &format!("far/{b}"), endpoint(&op), &token).await;
    // The token means nothing to this cluster's API server.
    let stranger = Agent::start(&env, a, endpoint(&op), &token).await;
    wait_for("a's health written on the far cluster's node", LONG, || async {
        condition_in(&far.client, a, "HaiyunGPUHealthy")
            .await
            .filter(|(s, m)| s == "True" && m == "8 GPUs healthy")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(honest.metric("haiyun_agent_link_up").await, Some(1.0));
    assert_eq!(forger.metric("haiyun_agent_link_up").await, Some(0.0), "a's token cannot speak for b");
    assert_eq!(
        stranger.metric("haiyun_agent_link_up").await,
        Some(0.0),
        "this cluster does not know the token"
    );
    assert!(condition_in(&far.client, b, "HaiyunGPUHealthy").await.is_none(), "nothing was recorded for b");
    let log = op.log_text();
    assert!(log.contains(&format!("belongs to node far/{a}")), "{log}");

    // An XID on a's GPU 3: the far pool has one healthy GPU fewer, and the far node says why.
    honest.fault("xid 3 79");
    let (_, msg) = wait_for("the XID on the far node", Duration::from_secs(10), || async {
        condition_in(&far.client, a, "HaiyunGPUHealthy").await.filter(|(s, _)| s == "False")
    })
    .await;
    assert!(msg.contains("GPU 3 (GPU-fake-h100-03) unhealthy: XID 79"), "{msg}");
    wait_for("the far pool's healthy GPUs", LONG, || async {
        let st = Api::<ComputePool>::all(env.client.clone()).get("far").await.ok()?.status?;
        let healthy: u32 = st.by_model.iter().map(|m| m.healthy).sum();
        (healthy == 15).then_some(())
    })
    .await;
}
