//! The `haiyun` command line: get (and watch), describe, explain, logs, submit, delete, quota and top against a
//! cluster running Haiyun's operator, shell completion, and `demo`, a whole federation in one process.

pub mod app;
pub mod cluster;
pub mod demo;
pub mod description;
pub mod logs;
pub mod quota;
pub mod submission;
pub mod view;
pub mod watch;
