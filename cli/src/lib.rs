//! The `haiyun` command line: get (and watch), describe, explain, logs, submit, delete, quota, top and report against a
//! cluster running Haiyun's operator, shell completion, and `demo`, a whole federation in one process.

pub mod app;
pub mod audit;
pub mod cluster;
pub mod demo;
pub mod description;
pub mod logs;
pub mod quota;
pub mod submission;
pub mod usage;
pub mod view;
pub mod watch;
