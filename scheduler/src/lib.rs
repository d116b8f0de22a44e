//! Haiyun's scheduling core: a pure, deterministic decision engine for heterogeneous compute federations.
// No IO, no clock, no unseeded randomness: the same snapshot and seed always give the same decisions.

pub mod model;
pub mod placer;
pub mod plugin;
pub mod queue;
pub mod rng;
pub mod schedule;
pub mod sim;
pub mod snapshot;
pub mod trace;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use model::{Cluster, Gang, TaskSpec, Topology};
pub use placer::{Outcome, Placement, Placer, PlacerConfig, Rejection};
pub use plugin::{Policy, PolicyName};
pub use snapshot::Snapshot;
