//! Remote clusters for federation tests: the extra testenv control planes `scripts/test.sh` starts (their
//! kubeconfigs in `HAIYUN_TEST_REMOTE_KUBECONFIGS`), kwok nodes made there, kubeconfig Secrets for the operator, and a
//! TCP relay a test cuts and heals like a WAN link.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{Env, wait_for};

/// One remote cluster.
pub struct Remote {
    pub client: Client,
    /// Its kubeconfig (credentials inline).
    pub kubeconfig: String,
    /// Its API server's address.
    pub addr: SocketAddr,
}

/// The remote clusters of this run; `None` (the test is skipped) when none run, unless `HAIYUN_REQUIRE_REMOTES`.
pub async fn remotes(want: usize) -> Option<Vec<Remote>> {
    let Some(list) = std::env::var_os("HAIYUN_TEST_REMOTE_KUBECONFIGS") else {
        assert!(
            std::env::var_os("HAIYUN_REQUIRE_REMOTES").is_none(),
            "HAIYUN_REQUIRE_REMOTES is set but HAIYUN_TEST_REMOTE_KUBECONFIGS is not"
        );
        eprintln!(
            "skipped: HAIYUN_TEST_REMOTE_KUBECONFIGS is not set (scripts/test.sh starts the remote clusters)"
        );
        return None;
    };
    let mut out = Vec::new();
    for path in list.to_string_lossy().split(',').filter(|p| !p.is_empty()) {
        let text = std::fs::read_to_string(path).unwrap();
        let kc = Kubeconfig::from_yaml(&text).unwrap();
        let server = kc.clusters[0].cluster.as_ref().unwrap().server.clone().unwrap();
        let host = server.trim_start_matches("https://").trim_end_matches('/');
        let addr: SocketAddr = tokio::net::lookup_host(host).await.unwrap().next().unwrap();
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap();
        out.push(Remote { client: Client::try_from(config).unwrap(), kubeconfig: text, addr });
    }
    assert!(
        out.len() >= want,
        "these tests need {want} remote clusters, HAIYUN_TEST_REMOTE_KUBECONFIGS names {}",
        out.len()
    );
    Some(out)
}

impl Remote {
    /// Its kubeconfig with the API server reached at `addr` instead (through a relay).
    pub fn kubeconfig_via(&self, addr: SocketAddr) -> String {
        self.kubeconfig.replace(&format!("https://{}", self.addr), &format!("https://{addr}"))
    }

    /// Deletes what earlier tests left here: their nodes and every pod of a Haiyun origin.
    pub async fn clean(&self) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        for n in nodes.list(&ListParams::default().labels("haiyun.io/test")).await.unwrap() {
            let _ = nodes.delete(&n.name_any(), &DeleteParams::default()).await;
        }
        let pods: Api<Pod> = Api::all(self.client.clone());
        for p in pods.list(&ListParams::default().labels("haiyun.io/origin")).await.unwrap() {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &p.namespace().unwrap_or_default());
            let _ = api.delete(&p.name_any(), &DeleteParams::default().grace_period(0)).await;
        }
    }

    /// Creates kwok nodes here as `Env::nodes` does there.
    pub async fn nodes(&self, env: &Env, group: &str, count: usize, gpus: u32, model: &str) -> Vec<String> {
        super::kwok_nodes(&self.client, &env.name, group, count, gpus, model).await
    }

    /// Our pods here (any origin), by namespace `default`.
    pub async fn pods(&self, origin: &str) -> Vec<Pod> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), "default");
        api.list(&ListParams::default().labels(&format!("haiyun.io/origin={origin}")))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    }
}

/// A client from kubeconfig text.
pub async fn client_of(kubeconfig: &str) -> Client {
    let kc = Kubeconfig::from_yaml(kubeconfig).unwrap();
    Client::try_from(Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap())
        .unwrap()
}

/// Deletes every job's pod in `default` (tests of other binaries leave theirs for a look).
pub async fn delete_job_pods(client: &Client) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let lp = ListParams::default().labels(haiyun_api::JOB_UID_LABEL);
    for p in pods.list(&lp).await.unwrap() {
        let _ = pods.delete(&p.name_any(), &DeleteParams::default().grace_period(0)).await;
    }
    wait_for("earlier jobs' pods gone", Duration::from_secs(60), || async {
        pods.list(&lp).await.ok().filter(|l| l.items.is_empty()).map(|_| ())
    })
    .await;
}

/// Writes Secret `name` (in `default`, the test operators' namespace) with key `kubeconfig`.
pub async fn secret(env: &Env, name: &str, kubeconfig: &str) {
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), "default");
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "stringData": {"kubeconfig": kubeconfig}
    }))
    .unwrap();
    let _ = secrets.delete(name, &DeleteParams::default()).await;
    wait_for(&format!("Secret {name} written"), Duration::from_secs(10), || async {
        secrets.create(&PostParams::default(), &s).await.ok().map(|_| ())
    })
    .await;
}

/// A TCP relay to a remote API server that the test can cut (connections are dropped, new ones are accepted and
/// never answered, as over a dead WAN link) and heal.
pub struct Relay {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// A relay on a free loopback port to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let live: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (c, l) = (cut.clone(), live.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                let task = if c.load(Ordering::SeqCst) {
                    // A dead link: the connection is held and never answered.
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        drop(inbound);
                    })
                } else {
                    tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    })
                };
                let mut live = l.lock().unwrap();
                live.retain(|t| !t.is_finished());
                live.push(task);
            }
        });
        Relay { addr, cut, live, accept }
    }

    /// Cuts the link: every connection through it is dropped and new ones go unanswered.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.drop_all();
    }

    /// Heals it: new connections go through again (the unanswered ones are dropped).
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.drop_all();
    }

    fn drop_all(&self) {
        for t in self.live.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.drop_all();
    }
}

/// The Ready condition of a pool in the cluster behind `client`: (status, reason, message).
pub async fn pool_ready(client: &Client, name: &str) -> Option<(String, String, String)> {
    let pools: Api<haiyun_api::ComputePool> = Api::all(client.clone());
    let c = pools.get(name).await.ok()?.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
    Some((c.status, c.reason, c.message))
}

/// Waits until a pool there is Ready=`status` with `reason`; returns the condition's message.
pub async fn wait_pool_ready(
    client: &Client,
    name: &str,
    status: &str,
    reason: &str,
    limit: Duration,
) -> String {
    wait_for(&format!("pool {name} Ready={status} ({reason})"), limit, || async {
        let (s, r, m) = pool_ready(client, name).await?;
        (s == status && r == reason).then_some(m)
    })
    .await
}
