//! `haiyun demo` as a child process, for the tests that use it whole: its dashboard port, its kubeconfig for the CLI,
//! its decision log and what it prints.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::support::browser::get;

/// The demo in a child process; killed on drop.
pub struct Demo {
    child: Child,
    pub port: u16,
    pub kubeconfig: PathBuf,
    pub decisions: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("haiyun-demo-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Demo {
    pub fn start(dir: &Path) -> Demo {
        let kubeconfig = dir.join("kubeconfig");
        let decisions = dir.join("decisions.jsonl");
        let mut child = Command::new(env!("CARGO_BIN_EXE_haiyun"))
            .args(["demo", "--addr", "127.0.0.1:0", "--speed", "120", "--duration", "10m"])
            .args(["--kubeconfig-out", kubeconfig.to_str().unwrap()])
            .args(["--decision-log", decisions.to_str().unwrap()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut port = None;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut line = String::new();
        while port.is_none() && out.read_line(&mut line).unwrap() > 0 {
            // "  dashboard:  http://127.0.0.1:PORT/"
            port = line.trim().strip_prefix("dashboard:").and_then(|u| {
                u.trim().trim_end_matches('/').rsplit(':').next().and_then(|p| p.parse::<u16>().ok())
            });
            lines.lock().unwrap().push(std::mem::take(&mut line));
        }
        let keep = lines.clone();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                keep.lock().unwrap().push(l);
            }
        });
        let port = port.expect("the demo prints its dashboard URL");
        Demo { child, port, kubeconfig, decisions, lines }
    }

    pub fn snapshot(&self) -> Value {
        serde_json::from_str(&get(self.port, "/api/v1/snapshot")).unwrap_or(Value::Null)
    }

    /// Polls the snapshot until `f` finds something.
    pub fn until<T>(&self, what: &str, limit: Duration, mut f: impl FnMut(&Value) -> Option<T>) -> T {
        let end = Instant::now() + limit;
        loop {
            if let Some(v) = f(&self.snapshot()) {
                return v;
            }
            assert!(Instant::now() < end, "timed out waiting for {what}; the demo said:\n{}", self.said());
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    pub fn said(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Runs `haiyun ARGS` against the demo; returns (exit code, stdout, stderr).
    pub fn haiyun(&self, args: &[&str]) -> (i32, String, String) {
        run(&[&["--kubeconfig", self.kubeconfig.to_str().unwrap()], args].concat())
    }
}

pub fn run(args: &[&str]) -> (i32, String, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_haiyun")).args(args).env_remove("KUBECONFIG").output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}
