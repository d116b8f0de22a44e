//! The demo's stand-in for the Kubernetes API: the paths and shapes the CLI's client uses for Haiyun's objects
//! (list, get, create; a merge patch of a QuotaRequest's decision), so `haiyun` works against the demo unchanged.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use haiyun_api::quota::Decision;
use haiyun_api::{ComputeJob, QuotaRequest};
use haiyun_operator::memory::{MemoryCluster, MemoryError};
use serde::Serialize;
use serde_json::json;

use super::clock::Clock;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The cluster.
    pub cluster: Arc<Mutex<MemoryCluster>>,
    /// The demo's clock.
    pub clock: Clock,
}

const GROUP: &str = "/apis/haiyun.io/v1alpha1";

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()});
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn ok<T: Serialize>(v: &T) -> Response {
    match serde_json::to_string(v) {
        Ok(s) => ([(header::CONTENT_TYPE, "application/json")], s).into_response(),
        Err(e) => status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()),
    }
}

fn list<T: Serialize>(kind: &str, items: Vec<T>) -> Response {
    ok(&json!({"apiVersion": "haiyun.io/v1alpha1", "kind": format!("{kind}List"),
        "metadata": {"resourceVersion": "1"}, "items": items}))
}

fn refused(e: MemoryError) -> Response {
    match e {
        MemoryError::NotFound { .. } => status(StatusCode::NOT_FOUND, "NotFound", e.to_string()),
        MemoryError::Exists { .. } => status(StatusCode::CONFLICT, "AlreadyExists", e.to_string()),
        _ => status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e.to_string()),
    }
}

fn not_found(kind: &str, name: &str) -> Response {
    status(StatusCode::NOT_FOUND, "NotFound", format!("{kind} {name:?} not found"))
}

/// A refusal: status code, reason and message.
type Refusal = (StatusCode, &'static str, String);

/// Reads a posted object of the path's namespace.
fn posted<T: serde::de::DeserializeOwned + kube::Resource>(ns: &str, body: &[u8]) -> Result<T, Refusal> {
    let mut o: T = serde_json::from_slice(body).map_err(|e| {
        (StatusCode::UNPROCESSABLE_ENTITY, "Invalid", format!("the object is not valid: {e}"))
    })?;
    match o.meta().namespace.as_deref() {
        Some(n) if n != ns => Err((
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("the namespace of the object ({n}) does not match the namespace of the request ({ns})"),
        )),
        _ => {
            o.meta_mut().namespace = Some(ns.into());
            Ok(o)
        }
    }
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, MemoryCluster> {
    s.cluster.lock().unwrap_or_else(|p| p.into_inner())
}

async fn jobs(State(s): State<Shared>, Path(ns): Path<String>) -> Response {
    let c = lock(&s);
    list("ComputeJob", c.jobs().values().filter(|j| j.metadata.namespace.as_deref() == Some(&ns)).collect())
}

async fn job(State(s): State<Shared>, Path((ns, name)): Path<(String, String)>) -> Response {
    match lock(&s).jobs().get(&format!("{ns}/{name}")) {
        Some(j) => ok(j),
        None => not_found("computejobs.haiyun.io", &name),
    }
}

/// Stores a posted object of the path's namespace with `add`, answering 201 with it as stored.
fn create<K>(
    s: &Shared,
    ns: &str,
    body: &[u8],
    add: impl FnOnce(&mut MemoryCluster, K, f64) -> Result<K, MemoryError>,
) -> Response
where
    K: serde::de::DeserializeOwned + kube::Resource + Serialize,
{
    let o: K = match posted(ns, body) {
        Ok(o) => o,
        Err((c, r, m)) => return status(c, r, m),
    };
    let now = s.clock.now();
    match add(&mut lock(s), o, now) {
        Ok(o) => (StatusCode::CREATED, ok(&o)).into_response(),
        Err(e) => refused(e),
    }
}

async fn create_job(State(s): State<Shared>, Path(ns): Path<String>, body: Bytes) -> Response {
    create(&s, &ns, &body, |c, j: ComputeJob, now| c.submit(j, None, now))
}

async fn requests(State(s): State<Shared>, Path(ns): Path<String>) -> Response {
    let c = lock(&s);
    list(
        "QuotaRequest",
        c.requests().values().filter(|r| r.metadata.namespace.as_deref() == Some(&ns)).collect(),
    )
}

async fn request(State(s): State<Shared>, Path((ns, name)): Path<(String, String)>) -> Response {
    match lock(&s).requests().get(&format!("{ns}/{name}")) {
        Some(r) => ok(r),
        None => not_found("quotarequests.haiyun.io", &name),
    }
}

async fn create_request(State(s): State<Shared>, Path(ns): Path<String>, body: Bytes) -> Response {
    create(&s, &ns, &body, |c, r: QuotaRequest, now| c.add_request(r, now))
}

/// A merge patch of `spec.decision`, the one change an administrator makes to a QuotaRequest.
async fn decide(State(s): State<Shared>, Path((ns, name)): Path<(String, String)>, body: Bytes) -> Response {
    let patch: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return status(StatusCode::BAD_REQUEST, "BadRequest", format!("the patch is not JSON: {e}"));
        }
    };
    let decision = patch.pointer("/spec/decision").cloned().map(serde_json::from_value::<Decision>);
    match decision {
        // The demo has no users: every decision is the demo administrator's.
        Some(Ok(d)) => match lock(&s).decide(&ns, &name, d, "demo-admin") {
            Ok(r) => ok(&r),
            Err(e) => refused(e),
        },
        _ => status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "the demo accepts one change to a QuotaRequest: spec.decision (Approved or Denied)".into(),
        ),
    }
}

async fn pools(State(s): State<Shared>) -> Response {
    list("ComputePool", lock(&s).pools().values().collect())
}

async fn queues(State(s): State<Shared>) -> Response {
    list("Queue", lock(&s).queues().values().collect())
}

/// The routes, under `/apis/haiyun.io/v1alpha1`.
pub fn routes(shared: Shared) -> Router {
    Router::new()
        .route(&format!("{GROUP}/namespaces/{{ns}}/computejobs"), get(jobs).post(create_job))
        .route(&format!("{GROUP}/namespaces/{{ns}}/computejobs/{{name}}"), get(job))
        .route(&format!("{GROUP}/namespaces/{{ns}}/quotarequests"), get(requests).post(create_request))
        .route(&format!("{GROUP}/namespaces/{{ns}}/quotarequests/{{name}}"), get(request).patch(decide))
        .route(&format!("{GROUP}/computepools"), get(pools))
        .route(&format!("{GROUP}/queues"), get(queues))
        .with_state(shared)
}

/// A kubeconfig that points the CLI (or kubectl) at the demo.
pub fn kubeconfig(addr: std::net::SocketAddr, namespace: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: haiyun-demo\n  cluster:\n    server: http://{addr}\n\
         contexts:\n- name: haiyun-demo\n  context:\n    cluster: haiyun-demo\n    user: demo\n    namespace: {namespace}\n\
         current-context: haiyun-demo\nusers:\n- name: demo\n  user: {{}}\n"
    )
}

/// The ledger's report at `/api/v1/usage`, and at the path `haiyun report` asks the API server's service proxy for
/// (the chart's dashboard Service), so the CLI reads the demo's usage unchanged.
pub fn usage_routes(ledger: haiyun_operator::ledger::Ledger, clock: Clock) -> Router {
    use haiyun_operator::ledger::api;
    let slot: api::Slot = Default::default();
    let _ = slot.set(ledger);
    let now: api::Now = Arc::new(move || clock.now());
    let direct = api::routes(slot.clone(), true, now.clone());
    let proxied = api::routes(slot, true, now);
    direct.nest("/api/v1/namespaces/haiyun-system/services/haiyun-operator-dashboard:http/proxy", proxied)
}
