//! The demo's clock: Unix seconds that run `speed` times faster than the wall clock from the moment it starts.

use std::time::Instant;

/// A compressed clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    epoch: f64,
    speed: f64,
}

impl Clock {
    /// A clock that starts now and runs `speed` times faster than real time.
    pub fn new(speed: f64) -> Self {
        Clock { start: Instant::now(), epoch: haiyun_operator::time::now(), speed }
    }

    /// Demo time, Unix seconds.
    pub fn now(&self) -> f64 {
        self.epoch + self.start.elapsed().as_secs_f64() * self.speed
    }

    /// Demo seconds since the start.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * self.speed
    }

    /// Real seconds since the start.
    pub fn real(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}
