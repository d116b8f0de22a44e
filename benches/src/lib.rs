//! Haiyun's benchmarks: trace replays under published protocols and scale runs of the core.

pub mod check;
pub mod cycle;
pub mod fgd;
pub mod jct;
pub mod progress;
pub mod protocol;
pub mod scale;
pub mod study;
pub mod table;
