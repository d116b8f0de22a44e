//! Haiyun's node agent: GPU probes, health, and (as issue 6 goes on) telemetry streaming to the operator.

pub mod dcgm;
pub mod health;
pub mod probe;
pub mod report;
pub mod sampler;
pub mod serve;
