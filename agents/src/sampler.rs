//! The sampler: probe calls block (NVML), so they run on a dedicated thread; a call that does not return within
//! its deadline turns every GPU's health to unknown (never healthy) until the probe answers again.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::health::{Health, HealthBook};
use crate::probe::{GpuInfo, GpuProbe, GpuSample, ProbeError, Xid};

/// One round of readings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Round {
    /// When it was taken (since the sampler started).
    pub at: Duration,
    /// The GPUs present.
    pub inventory: Vec<GpuInfo>,
    /// Their readings.
    pub samples: Vec<GpuSample>,
    /// XIDs since the last round.
    pub xids: Vec<Xid>,
    /// GPUs reset since the last round.
    pub resets: Vec<u32>,
    /// Per field, reads that failed so far.
    pub field_errors: BTreeMap<&'static str, u64>,
    /// Each GPU's health.
    pub health: BTreeMap<u32, Health>,
}

/// What one call of the probe gave.
#[derive(Debug)]
struct Reading {
    inventory: Vec<GpuInfo>,
    samples: Vec<GpuSample>,
    xids: Vec<Xid>,
    resets: Vec<u32>,
    field_errors: BTreeMap<&'static str, u64>,
}

fn read_probe(probe: &mut dyn GpuProbe) -> Result<Reading, ProbeError> {
    let inventory = probe.inventory()?;
    let samples = probe.sample()?;
    Ok(Reading {
        inventory,
        samples,
        xids: probe.xids(),
        resets: probe.resets(),
        field_errors: probe.field_errors(),
    })
}

/// Reads a probe every `interval` on its own thread; [`Sampler::read`] returns the next round, or one where every
/// known GPU is unknown when the probe is late by more than `deadline`.
#[derive(Debug)]
pub struct Sampler {
    rx: mpsc::Receiver<Result<Reading, ProbeError>>,
    book: HealthBook,
    known: Vec<u32>,
    deadline: Duration,
    started: Instant,
}

impl Sampler {
    /// Starts reading `probe` every `interval`.
    pub fn spawn(mut probe: Box<dyn GpuProbe>, interval: Duration, deadline: Duration) -> Self {
        let (tx, rx) = mpsc::sync_channel(1);
        thread::spawn(move || {
            loop {
                if tx.send(read_probe(probe.as_mut())).is_err() {
                    return;
                }
                thread::sleep(interval);
            }
        });
        Sampler { rx, book: HealthBook::default(), known: Vec::new(), deadline, started: Instant::now() }
    }

    /// The next round.
    pub fn read(&mut self) -> Round {
        let at = self.started.elapsed();
        match self.rx.recv_timeout(self.deadline) {
            Ok(Ok(r)) => {
                let health = self.book.update(&r.inventory, &r.samples, &r.xids, &r.resets);
                self.known = health.keys().copied().collect();
                let Reading { inventory, samples, xids, resets, field_errors } = r;
                Round { at, inventory, samples, xids, resets, field_errors, health }
            }
            Ok(Err(e)) => self.unknown(at, &format!("the probe failed: {e}")),
            Err(_) => self.unknown(at, &format!("the probe did not answer within {:?}", self.deadline)),
        }
    }

    fn unknown(&self, at: Duration, why: &str) -> Round {
        let health = self.known.iter().map(|i| (*i, Health::Unknown(why.into()))).collect();
        Round { at, health, ..Round::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::fake::FakeProbe;
    use std::sync::{Arc, Mutex};

    /// A fake whose calls can be made to hang.
    struct Hanging {
        inner: FakeProbe,
        hang: Arc<Mutex<bool>>,
    }

    impl GpuProbe for Hanging {
        fn inventory(&mut self) -> Result<Vec<GpuInfo>, ProbeError> {
            while *self.hang.lock().unwrap() {
                thread::sleep(Duration::from_millis(5));
            }
            self.inner.inventory()
        }
        fn sample(&mut self) -> Result<Vec<GpuSample>, ProbeError> {
            self.inner.sample()
        }
        fn xids(&mut self) -> Vec<Xid> {
            self.inner.xids()
        }
    }

    #[test]
    fn a_probe_that_hangs_makes_every_gpu_unknown_never_healthy_and_recovers_when_it_answers() {
        let hang = Arc::new(Mutex::new(false));
        let probe = Hanging { inner: FakeProbe::profile("t4-edge").unwrap(), hang: hang.clone() };
        let mut s = Sampler::spawn(Box::new(probe), Duration::from_millis(10), Duration::from_millis(200));
        assert_eq!(s.read().health[&0], Health::Healthy);
        *hang.lock().unwrap() = true;
        // Drain a round that may have been read before the hang.
        let mut seen_unknown = false;
        for _ in 0..3 {
            if matches!(s.read().health[&0], Health::Unknown(_)) {
                seen_unknown = true;
                break;
            }
        }
        assert!(seen_unknown, "a hung probe reads as unknown");
        *hang.lock().unwrap() = false;
        let mut back = false;
        for _ in 0..5 {
            if s.read().health[&0] == Health::Healthy {
                back = true;
                break;
            }
        }
        assert!(back, "it is healthy again once the probe answers");
    }
}
