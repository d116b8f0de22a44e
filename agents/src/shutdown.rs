//! The stop request: SIGTERM (what the kubelet sends a container) or Ctrl-C.

/// Returns when the process is asked to stop. A process that is PID 1 in its container ignores SIGTERM unless it
/// handles it, and would be killed only after the pod's grace period.
pub async fn requested() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
