//! Time-windowed quota grants: +N of a flavor for a queue between two times, lapsing by themselves.

use serde::{Deserialize, Serialize};

use super::resources::Flavor;
use crate::model::{QueueId, Time};

/// An approved quota request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    /// The queue whose nominal quota it raises.
    pub queue: QueueId,
    /// Which flavor.
    pub flavor: Flavor,
    /// How much (flavor units: milli-cores, MiB or milli-GPUs).
    pub amount: u64,
    /// When it starts counting.
    pub start: Time,
    /// When it lapses.
    pub end: Time,
}

impl Grant {
    /// Whether it counts at `now` (`start <= now < end`).
    pub fn active(&self, now: Time) -> bool {
        self.start <= now && now < self.end
    }
}
