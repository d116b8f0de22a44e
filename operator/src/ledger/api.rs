//! The ledger over HTTP: `GET /api/v1/usage?by=queue&from=…&to=…`, which `haiyun report` reads through the API
//! server's service proxy (or from the demo directly).

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use super::Ledger;
use super::usage::{Usage, UsageRow};

/// The ledger once connected (empty: none configured, or not connected yet).
pub type Slot = Arc<OnceLock<Ledger>>;

/// The clock reports clip open runs at.
pub type Now = Arc<dyn Fn() -> f64 + Send + Sync>;

/// A report as served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The grouping.
    pub by: super::usage::By,
    /// The window's start (RFC 3339; absent: all time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The window's end (RFC 3339; the report's time when not given or later).
    pub to: String,
    /// One row per key.
    pub rows: Vec<UsageRow>,
}

/// The query parameters.
#[derive(Debug, Default, Deserialize)]
struct Params {
    by: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

#[derive(Clone)]
struct Shared {
    slot: Slot,
    configured: bool,
    now: Now,
}

/// The routes; `configured` says whether a ledger was asked for (else the answer says how to turn it on).
pub fn routes(slot: Slot, configured: bool, now: Now) -> Router {
    Router::new().route("/api/v1/usage", get(usage)).with_state(Shared { slot, configured, now })
}

/// An error as a Kubernetes `Status`, so that a client reading through the API server's service proxy (kube's, the
/// CLI's) gets its message and code.
fn error(code: StatusCode, message: String) -> Response {
    let reason = if code == StatusCode::BAD_REQUEST { "BadRequest" } else { "ServiceUnavailable" };
    let body = serde_json::json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16() });
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn usage(State(s): State<Shared>, Query(p): Query<Params>) -> Response {
    let query = match Usage::parse(p.by.as_deref(), p.from.as_deref(), p.to.as_deref()) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let Some(ledger) = s.slot.get() else {
        let why = if s.configured {
            "the usage ledger is not connected yet (see the operator's log)"
        } else {
            "no usage ledger: start the operator with --ledger (the chart's ledger.url)"
        };
        return error(StatusCode::SERVICE_UNAVAILABLE, why.into());
    };
    let now = (s.now)();
    match ledger.store().usage(&query, now).await {
        Ok(rows) => {
            let report = Report {
                by: query.by,
                from: query.from.map(crate::time::rfc3339),
                to: crate::time::rfc3339(query.to.unwrap_or(now).min(now)),
                rows,
            };
            match serde_json::to_string(&report) {
                Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
