//! Haiyun's node agent: GPU probes, health, DCGM-named metrics, and the telemetry stream to the operator.

pub mod dcgm;
pub mod health;
pub mod holders;
pub mod link;
pub mod probe;
pub mod report;
pub mod sampler;
pub mod serve;
pub mod shutdown;
pub mod wire;
