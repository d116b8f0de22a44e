//! The command-line tools tests drive: helm (from testenv's build) and kubectl.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where testenv keeps its binaries: `$TESTENV_BIN`, else `$XDG_CACHE_HOME/haiyun/testenv-bin`, else
/// `~/.cache/haiyun/testenv-bin` (as `testenv/testenv` decides).
pub fn testenv_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TESTENV_BIN") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
    cache.join("haiyun/testenv-bin")
}

/// helm from testenv's build, or `$HELM`; `None` (skip) when absent, unless the environment variable `require`
/// is set.
pub fn helm(require: &str) -> Option<PathBuf> {
    let path = std::env::var_os("HELM").map(PathBuf::from).unwrap_or_else(|| testenv_bin().join("helm"));
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os(require).is_none(),
        "helm is required: `testenv/testenv build` builds it into $TESTENV_BIN (default ~/.cache/haiyun/testenv-bin)"
    );
    eprintln!("skipped: no helm at {} (testenv/testenv build makes it)", path.display());
    None
}

/// Runs `cmd` (with `stdin`); returns whether it succeeded and its stdout then stderr.
pub fn run(cmd: &mut Command, stdin: Option<&str>) -> (bool, String) {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// kubectl (`$KUBECTL`, else the one on PATH) for the cluster of `kubeconfig`.
pub fn kubectl(kubeconfig: &Path) -> Command {
    let mut c = Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()));
    c.env("KUBECONFIG", kubeconfig);
    c
}
