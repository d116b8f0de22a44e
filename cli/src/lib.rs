//! The `haiyun` command line: get, explain, submit, quota and top against a cluster running Haiyun's operator.

pub mod app;
pub mod cluster;
pub mod quota;
pub mod submission;
pub mod view;
