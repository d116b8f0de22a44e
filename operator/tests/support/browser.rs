//! A real browser on the dashboard (headless Chromium driven by `browser/dashboard.mjs`), and plain HTTP reads.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::{Read, Write};
use std::time::Duration;

pub fn get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

/// Runs `browser/dashboard.mjs` against `url`; skipped (saying so) when the browser tooling is not installed,
/// unless `HAIYUN_REQUIRE_BROWSER` is set. The screenshot goes to `target/test-artifacts/<shot>`; with `churn`, the
/// pools' numbers must change too, not just the time; with `usage`, the usage ledger's table must have rows.
pub fn browse(url: &str, pools: &str, queues: &str, job: &str, shot: &str, churn: bool, usage: bool) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("browser/dashboard.mjs");
    let ready = root.join("browser/node_modules/playwright-core").exists()
        && std::path::Path::new(&std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()))
            .exists();
    if !ready {
        assert!(
            std::env::var_os("HAIYUN_REQUIRE_BROWSER").is_none(),
            "HAIYUN_REQUIRE_BROWSER is set but Chromium or browser/node_modules is missing"
        );
        eprintln!("skipped the browser check: install Debian's chromium and run npm ci in browser/");
        return;
    }
    let artifacts = root.join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join(shot);
    let out = std::process::Command::new("node")
        .arg(&script)
        .args([url, pools, queues, job, shot.to_str().unwrap(), if churn { "churn" } else { "" }])
        .arg(if usage { "usage" } else { "" })
        .output()
        .unwrap();
    let say = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    assert!(out.status.success(), "browser check failed: {} {}", say(&out.stderr), say(&out.stdout));
    assert!(shot.exists(), "a screenshot at {}", shot.display());
    eprintln!("{}", say(&out.stdout));
}
