//! The `haiyun` command line.
fn main() {}
