//! The operator's HTTP endpoints: `/metrics`, `/healthz`, `/readyz`, and the dashboard with its JSON, live stream and
//! history.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use std::convert::Infallible;

use crate::dashboard::Snapshot;
use crate::history::History;
use crate::metrics::Metrics;

type Board = tokio::sync::watch::Receiver<Arc<Snapshot>>;

/// Each new snapshot as a server-sent event `snapshot`, the current one first.
async fn events(State(board): State<Board>) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let stream = futures::stream::unfold((board, true), |(mut b, first)| async move {
        if !first && b.changed().await.is_err() {
            return None; // the operator is stopping
        }
        let snap = b.borrow_and_update().clone();
        let event = Event::default().event("snapshot").data(serde_json::to_string(&*snap).ok()?);
        Some((Ok(event), (b, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Binding the address failed.
    #[error("failed to listen on {addr}: {source} (choose another with --metrics-addr)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// The dashboard page: one file, no external assets (machines may have no internet).
const DASHBOARD: &str = include_str!("../assets/dashboard.html");

/// The utilisation history the dashboard charts.
pub type HistoryFeed = tokio::sync::watch::Receiver<Arc<History>>;

/// Serves the endpoints on `addr` until the process ends; returns once listening. The dashboard (`/`), its JSON
/// (`/api/v1/snapshot`), its live stream (`/api/v1/events`, server-sent events) read `board`; `/api/v1/history`
/// reads `history`.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    board: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    history: HistoryFeed,
) -> Result<SocketAddr, HttpError> {
    serve_with(addr, metrics, board, history, Router::new()).await
}

/// As [`serve`], with `extra` routes beside them (the demo's API).
pub async fn serve_with(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    board: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    history: HistoryFeed,
    extra: Router,
) -> Result<SocketAddr, HttpError> {
    let past = Router::new()
        .route(
            "/api/v1/history",
            get(|State(h): State<HistoryFeed>| async move {
                let json = serde_json::to_string(&**h.borrow()).unwrap_or_default();
                ([(axum::http::header::CONTENT_TYPE, "application/json")], json)
            }),
        )
        .with_state(history);
    let dashboard = Router::new()
        .route("/", get(|| async { axum::response::Html(DASHBOARD) }))
        .route(
            "/api/v1/snapshot",
            get(|State(b): State<Board>| async move {
                let snap = b.borrow().clone();
                let json = serde_json::to_string(&*snap).unwrap_or_default();
                ([(axum::http::header::CONTENT_TYPE, "application/json")], json)
            }),
        )
        .route("/api/v1/events", get(events))
        .with_state(board);
    let app = Router::new()
        .route("/metrics", get(|State(m): State<Arc<Metrics>>| async move { m.render() + &m.render_fleet() }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.is_ready() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "caches syncing")
                }
            }),
        )
        .with_state(metrics)
        .merge(dashboard)
        .merge(past)
        .merge(extra);
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|source| HttpError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(|source| HttpError::Bind { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(local)
}
