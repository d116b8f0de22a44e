//! What the CLI's integration tests share: the operator's test support and the demo as a child process.
#![allow(dead_code)]

#[path = "../../../operator/tests/support/mod.rs"]
pub mod support;

pub mod demo;
