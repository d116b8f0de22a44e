//! The link to the operator: one gRPC stream that carries every sample; samples stay in a bounded buffer until the
//! operator acknowledges them, are replayed after a reconnect, and the oldest are dropped (and counted) when the
//! link is down longer than the buffer holds. Reconnects back off exponentially with jitter.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use haiyun_api::agent as pb;
use haiyun_api::agent::telemetry_client::TelemetryClient;
use pb::agent_message::Body;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Endpoint;

use crate::sampler::Round;

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The endpoint is not a URL.
    #[error("--operator {0:?} is not a URL: write e.g. http://haiyun-telemetry.haiyun-system:9090")]
    Endpoint(String),
    /// The token file could not be read.
    #[error(
        "failed to read the token file {path}: {source} (mount the projected token or pass --token-file)"
    )]
    Token {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The token is not a valid header value.
    #[error("the token in {0} is not a valid header value")]
    BadToken(PathBuf),
    /// The connection failed.
    #[error("failed to connect to the operator: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The operator refused or ended the stream.
    #[error("the operator refused the stream: {0}")]
    Refused(#[from] tonic::Status),
    /// Connecting took too long.
    #[error("connecting to the operator timed out")]
    Timeout,
}

/// How the link behaves.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// The operator's telemetry endpoint.
    pub endpoint: String,
    /// This node.
    pub node: String,
    /// A file holding the bearer token (read on every connect: projected tokens rotate).
    pub token_file: Option<PathBuf>,
    /// Samples kept while the link is down.
    pub buffer: usize,
    /// First reconnect delay.
    pub backoff_base: Duration,
    /// Longest reconnect delay.
    pub backoff_cap: Duration,
    /// Keep link errors off stderr (they still reach `/metrics`); for many agents in one process (the demo).
    pub quiet: bool,
}

/// What the link has done, for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Whether a stream is open.
    pub up: AtomicBool,
    /// Whether link errors stay off stderr (from [`LinkConfig::quiet`]).
    pub quiet: AtomicBool,
    /// Samples waiting for an acknowledgement.
    pub buffered: AtomicU64,
    /// Samples dropped because the buffer was full.
    pub dropped: AtomicU64,
    /// Samples acknowledged.
    pub acked: AtomicU64,
    /// Connections opened.
    pub connects: AtomicU64,
    /// The last failure, for the log.
    pub last_error: std::sync::Mutex<String>,
}

/// A small random source for jitter and boot ids (no cryptographic use).
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
        h.write_u32(std::process::id());
        Rng(h.finish() | 1)
    }

    /// splitmix64.
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The delay before reconnect attempt `attempt` (1, 2, …): exponential up to the cap, then a random point in its
/// upper half, so agents cut off together do not come back together.
pub fn backoff(base: Duration, cap: Duration, attempt: u32, random: u64) -> Duration {
    let full = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(cap);
    let half = full / 2;
    let span = full.saturating_sub(half).as_millis().max(1) as u64;
    half + Duration::from_millis(random % span)
}

/// Samples kept until acknowledged.
#[derive(Debug)]
struct Buffer {
    samples: VecDeque<pb::Sample>,
    cap: usize,
    dropped: u64,
}

impl Buffer {
    fn push(&mut self, s: pb::Sample) {
        if self.samples.len() >= self.cap {
            self.samples.pop_front();
            self.dropped += 1;
        }
        self.samples.push_back(s);
    }

    fn ack(&mut self, seq: u64) -> u64 {
        let before = self.samples.len();
        while self.samples.front().is_some_and(|s| s.seq <= seq) {
            self.samples.pop_front();
        }
        (before - self.samples.len()) as u64
    }
}

struct Stream {
    tx: mpsc::Sender<pb::AgentMessage>,
    acks: tonic::Streaming<pb::OperatorMessage>,
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn message(body: Body) -> pb::AgentMessage {
    pb::AgentMessage { body: Some(body) }
}

async fn open(
    cfg: &LinkConfig,
    hello: pb::Hello,
    inventory: Option<&pb::Inventory>,
    buffer: &Buffer,
) -> Result<Stream, LinkError> {
    let endpoint = Endpoint::from_shared(cfg.endpoint.clone())
        .map_err(|_| LinkError::Endpoint(cfg.endpoint.clone()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_keepalive(Some(Duration::from_secs(20)))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let channel = endpoint.connect().await?;
    let (tx, rx) = mpsc::channel(buffer.cap + 64);
    let _ = tx.try_send(message(Body::Hello(hello)));
    if let Some(inv) = inventory {
        let _ = tx.try_send(message(Body::Inventory(inv.clone())));
    }
    for s in &buffer.samples {
        let _ = tx.try_send(message(Body::Sample(s.clone())));
    }
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(path) = &cfg.token_file {
        let token = std::fs::read_to_string(path)
            .map_err(|source| LinkError::Token { path: path.clone(), source })?;
        let value =
            format!("Bearer {}", token.trim()).parse().map_err(|_| LinkError::BadToken(path.clone()))?;
        request.metadata_mut().insert("authorization", value);
    }
    let acks = TelemetryClient::new(channel).stream(request).await?.into_inner();
    Ok(Stream { tx, acks })
}

/// Streams every round from `rounds` to the operator until `rounds` closes.
pub async fn run(cfg: LinkConfig, mut rounds: mpsc::Receiver<Round>, stats: Arc<LinkStats>) {
    stats.quiet.store(cfg.quiet, Ordering::Relaxed);
    let mut rng = Rng::new();
    let boot = rng.next();
    let mut buffer = Buffer { samples: VecDeque::new(), cap: cfg.buffer.max(1), dropped: 0 };
    let mut seq = 0u64;
    let mut inventory: Option<pb::Inventory> = None;
    let mut stream: Option<Stream> = None;
    let mut retry = Retry { attempt: 0, at: Instant::now() };
    loop {
        let next = match &mut stream {
            None => tokio::select! {
                r = rounds.recv() => Some(r),
                () = tokio::time::sleep_until(retry.at) => None,
            },
            Some(s) => tokio::select! {
                r = rounds.recv() => Some(r),
                ack = s.acks.message() => {
                    match ack {
                        Ok(Some(m)) => {
                            stats.acked.fetch_add(buffer.ack(m.acked_seq), Ordering::Relaxed);
                            retry.attempt = 0;
                        }
                        Ok(None) => drop_stream(&mut stream, &stats, "the operator closed the stream".into()),
                        Err(e) => drop_stream(&mut stream, &stats, format!("the stream failed: {e}")),
                    }
                    if stream.is_none() {
                        retry.fail(&cfg, &mut rng);
                    }
                    stats.buffered.store(buffer.samples.len() as u64, Ordering::Relaxed);
                    continue;
                }
            },
        };
        match next {
            Some(None) => return,
            Some(Some(round)) => {
                seq += 1;
                let inv = crate::wire::inventory(&round.inventory);
                let changed = !round.inventory.is_empty() && inventory.as_ref() != Some(&inv);
                if changed {
                    inventory = Some(inv.clone());
                }
                let sample = crate::wire::sample(&round, seq, unix_ms());
                buffer.push(sample.clone());
                stats.dropped.store(buffer.dropped, Ordering::Relaxed);
                if let Some(s) = &stream {
                    let sent = (!changed || s.tx.try_send(message(Body::Inventory(inv))).is_ok())
                        && s.tx.try_send(message(Body::Sample(sample))).is_ok();
                    if !sent {
                        drop_stream(&mut stream, &stats, "the operator is not reading the stream".into());
                        retry.fail(&cfg, &mut rng);
                    }
                }
            }
            None => {
                let hello = pb::Hello {
                    node: cfg.node.clone(),
                    boot,
                    version: env!("CARGO_PKG_VERSION").into(),
                    dropped: buffer.dropped,
                };
                match tokio::time::timeout(
                    Duration::from_secs(10),
                    open(&cfg, hello, inventory.as_ref(), &buffer),
                )
                .await
                .unwrap_or(Err(LinkError::Timeout))
                {
                    Ok(s) => {
                        stream = Some(s);
                        stats.up.store(true, Ordering::Relaxed);
                        stats.connects.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        note(&stats, e.to_string());
                        retry.fail(&cfg, &mut rng);
                    }
                }
            }
        }
        stats.buffered.store(buffer.samples.len() as u64, Ordering::Relaxed);
    }
}

/// When to try to connect again.
struct Retry {
    /// Failures since the last acknowledgement.
    attempt: u32,
    /// The next try.
    at: Instant,
}

impl Retry {
    /// Counts a failure and schedules the next try after a jittered backoff.
    fn fail(&mut self, cfg: &LinkConfig, rng: &mut Rng) {
        self.attempt += 1;
        self.at = Instant::now() + backoff(cfg.backoff_base, cfg.backoff_cap, self.attempt, rng.next());
    }
}

fn note(stats: &LinkStats, why: String) {
    let mut last = stats.last_error.lock().unwrap_or_else(|p| p.into_inner());
    if *last != why && !stats.quiet.load(Ordering::Relaxed) {
        eprintln!("warning: {why}; retrying with backoff");
    }
    *last = why;
}

fn drop_stream(stream: &mut Option<Stream>, stats: &LinkStats, why: String) {
    *stream = None;
    stats.up.store(false, Ordering::Relaxed);
    note(stats, why);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_in_the_upper_half() {
        let (base, cap) = (Duration::from_millis(500), Duration::from_secs(30));
        let mut rng = Rng::new();
        for attempt in 1..12 {
            let full = (base * (1 << (attempt - 1))).min(cap);
            for _ in 0..50 {
                let d = backoff(base, cap, attempt, rng.next());
                assert!(
                    d >= full / 2 && d <= full,
                    "attempt {attempt}: {d:?} outside [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
        let spread: std::collections::BTreeSet<_> =
            (0..20).map(|_| backoff(base, cap, 8, rng.next())).collect();
        assert!(spread.len() > 10, "jittered: {spread:?}");
    }

    #[test]
    fn the_buffer_keeps_the_newest_samples_drops_and_counts_the_oldest_and_forgets_what_is_acked() {
        let mut b = Buffer { samples: VecDeque::new(), cap: 3, dropped: 0 };
        for seq in 1..=5 {
            b.push(pb::Sample { seq, ..Default::default() });
        }
        assert_eq!(b.samples.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(b.dropped, 2);
        assert_eq!(b.ack(4), 2);
        assert_eq!(b.samples.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![5]);
    }
}
