//! The JCT protocol's rules (`shared/benchmarks/JCT-PROTOCOL.md`): what the replay runs under and what the
//! independent checker holds it to, so that neither reads the other's constants.

/// Seconds of run time between checkpoints.
pub const CHECKPOINT_S: f64 = 1800.0;
/// Seconds a preempted job pays to restart.
pub const RESTART_S: f64 = 60.0;
