//! The `haiyun` command line: get, explain, submit, quota and top against a cluster running Haiyun's operator, and
//! `demo`, a whole federation in one process.

pub mod app;
pub mod cluster;
pub mod demo;
pub mod quota;
pub mod submission;
pub mod view;
