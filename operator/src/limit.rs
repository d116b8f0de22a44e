//! A client-side rate limit on API requests (token bucket: `qps` per second, bursts of up to `burst`), as Kubernetes
//! clients have, so the operator can be held to the same budget as another scheduler: a tower layer on the client,
//! so every request counts (reads and writes, events, the start of each watch).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
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

    /// Whether it limits at all.
    pub fn limits(&self) -> bool {
        self.qps > 0.0
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

/// Holds every request of a client's service to a [`Limiter`].
#[derive(Debug, Clone)]
pub struct LimitLayer {
    limiter: Arc<Limiter>,
}

impl LimitLayer {
    /// A layer taking one token of `limiter` per request.
    pub fn new(limiter: Limiter) -> Self {
        LimitLayer { limiter: Arc::new(limiter) }
    }
}

impl<S> tower::Layer<S> for LimitLayer {
    type Service = Limited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Limited { inner, limiter: self.limiter.clone(), permit: None, granted: false }
    }
}

type Permit = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A service that is ready only once its limiter grants the next request a token.
pub struct Limited<S> {
    inner: S,
    limiter: Arc<Limiter>,
    permit: Option<Permit>,
    granted: bool,
}

impl<S> std::fmt::Debug for Limited<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limited").field("limiter", &self.limiter).field("granted", &self.granted).finish()
    }
}

impl<S, R> tower::Service<R> for Limited<S>
where
    S: tower::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if !self.granted {
            let limiter = self.limiter.clone();
            let permit = self.permit.get_or_insert_with(|| Box::pin(async move { limiter.take(1).await }));
            if permit.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.permit = None;
            self.granted = true;
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.granted = false;
        self.inner.call(request)
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

    #[tokio::test(start_paused = true)]
    async fn a_limited_service_takes_a_token_for_every_request() {
        use tower::{Layer, Service, ServiceExt};
        let mut svc = LimitLayer::new(Limiter::new(10.0, 2))
            .layer(tower::service_fn(|x: u32| async move { Ok::<u32, std::convert::Infallible>(x + 1) }));
        let start = Instant::now();
        for i in 0..12u32 {
            assert_eq!(svc.ready().await.unwrap().call(i).await.unwrap(), i + 1);
        }
        let waited = start.elapsed().as_secs_f64();
        assert!(
            (waited - 1.0).abs() < 0.01,
            "2 in the burst, then 10 at 10 qps take a second, took {waited}"
        );
    }

    #[tokio::test]
    async fn no_limit_never_waits() {
        let l = Limiter::new(0.0, 1);
        let start = Instant::now();
        l.take(1_000_000).await;
        assert!(start.elapsed() < Duration::from_millis(50));
    }
}
