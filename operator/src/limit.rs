//! A client-side rate limit on API requests (token bucket: `qps` per second, bursts of up to `burst`), as Kubernetes
//! clients have, so the operator can be held to the same budget as another scheduler.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// A token bucket; unlimited when `qps` is 0.
#[derive(Debug)]
pub struct Limiter {
    qps: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Limiter {
    /// `qps` requests per second (0: no limit), bursts of `burst`.
    pub fn new(qps: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        // Anything but a positive finite rate means no limit.
        let qps = if qps.is_finite() && qps > 0.0 { qps.max(1e-3) } else { 0.0 };
        Limiter { qps, burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// Waits until `n` requests may be made.
    pub async fn take(&self, n: u32) {
        if self.qps <= 0.0 {
            return;
        }
        let wait = {
            let mut s = self.state.lock().await;
            let now = Instant::now();
            let refill = (now - s.1).as_secs_f64() * self.qps;
            s.0 = (s.0 + refill).min(self.burst) - f64::from(n);
            s.1 = now;
            if s.0 >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-s.0 / self.qps) }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_beyond_the_burst_wait_for_tokens() {
        let l = Limiter::new(10.0, 5);
        let start = Instant::now();
        l.take(5).await;
        assert!(start.elapsed() < Duration::from_millis(1), "the burst is free");
        l.take(10).await;
        let waited = start.elapsed().as_secs_f64();
        assert!((waited - 1.0).abs() < 0.01, "10 more at 10 qps take a second, took {waited}");
    }

    #[tokio::test]
    async fn no_limit_never_waits() {
        let l = Limiter::new(0.0, 1);
        let start = Instant::now();
        l.take(1_000_000).await;
        assert!(start.elapsed() < Duration::from_millis(50));
    }
}
