//! The Helm chart: it lints, renders, applies to a real API server, and its admission policy lets only users
//! allowed to approve on a Queue decide QuotaRequests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use support::Env;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where testenv keeps its binaries: `$TESTENV_BIN`, else `$XDG_CACHE_HOME/haiyun/testenv-bin`, else
/// `~/.cache/haiyun/testenv-bin` (as `testenv/testenv` decides).
fn testenv_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TESTENV_BIN") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
    cache.join("haiyun/testenv-bin")
}

/// helm from testenv's build, or `$HELM`; `None` (skip) when absent and testenv is not required.
fn helm() -> Option<PathBuf> {
    let path = std::env::var_os("HELM").map(PathBuf::from).unwrap_or_else(|| testenv_bin().join("helm"));
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("HAIYUN_REQUIRE_TESTENV").is_none(),
        "helm is required: `testenv/testenv build` builds it into $TESTENV_BIN (default ~/.cache/haiyun/testenv-bin)"
    );
    eprintln!("skipped: no helm at {} (testenv/testenv build makes it)", path.display());
    None
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> (bool, String) {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn kubectl(env: &Env) -> Command {
    let mut c = Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()));
    c.env("KUBECONFIG", &env.kubeconfig);
    c
}

fn render(helm: &PathBuf, extra: &[&str]) -> (bool, String) {
    let chart = root().join("charts/haiyun");
    run(
        Command::new(helm)
            .args(["template", "haiyun", chart.to_str().unwrap(), "--namespace", "haiyun-system"])
            .args(["--kube-version", "v1.36.0"])
            .args(extra),
        None,
    )
}

#[test]
fn the_chart_lints_and_its_schema_refuses_bad_values() {
    let Some(helm) = helm() else { return };
    let chart = root().join("charts/haiyun");
    let (ok, out) = run(Command::new(&helm).args(["lint", "--strict", chart.to_str().unwrap()]), None);
    assert!(ok, "helm lint failed:\n{out}");
    let (ok, out) = render(&helm, &["--set", "replicas=0"]);
    assert!(!ok && out.contains("replicas"), "replicas=0 was accepted:\n{out}");
    let (ok, out) = render(&helm, &["--set", "image.pullPolicy=Sometimes"]);
    assert!(!ok && out.contains("pullPolicy"), "a bad pullPolicy was accepted:\n{out}");
    let (ok, out) = render(&helm, &["--set", "serviceMonitor.force=true"]);
    assert!(ok && out.contains("kind: ServiceMonitor"), "no ServiceMonitor when forced:\n{out}");
    let (ok, out) = render(&helm, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("replicas: 2") && out.contains("- --lease-seconds=15"), "{out}");
    assert!(!out.contains("kind: ServiceMonitor"), "a ServiceMonitor without its CRD would not apply");
    // The agent DaemonSet proves its node with a projected token for the agent audience; the telemetry Service
    // reaches only the leader; the operator may review tokens and write node conditions.
    assert!(out.contains("kind: DaemonSet") && out.contains("audience: haiyun.io/agent"), "{out}");
    assert!(out.contains("haiyun.io/leader: \"true\""), "{out}");
    assert!(out.contains("resources: [tokenreviews]") && out.contains("resources: [nodes/status]"), "{out}");
    assert!(out.contains("- --agent-service-account=haiyun-system/haiyun-agent"), "{out}");
    let (ok, out) = render(&helm, &["--set", "agent.probe=gpu"]);
    assert!(!ok && out.contains("probe"), "a bad probe was accepted:\n{out}");
    let (ok, out) = render(&helm, &["--set", "agent.enabled=false"]);
    assert!(ok && !out.contains("kind: DaemonSet"), "{out}");
}

#[tokio::test]
async fn the_rendered_chart_applies_and_only_approvers_decide_quota_requests() {
    let Some(env) = Env::start("chart").await else { return };
    let Some(helm) = helm() else { return };
    let (ok, rendered) = render(&helm, &["--include-crds"]);
    assert!(ok, "{rendered}");
    let _ = run(kubectl(&env).args(["create", "namespace", "haiyun-system"]), None);
    let (ok, out) =
        run(kubectl(&env).args(["apply", "--server-side", "--force-conflicts", "-f", "-"]), Some(&rendered));
    assert!(ok, "applying the chart failed:\n{out}");
    for what in [
        "deployment.apps/haiyun-operator",
        "daemonset.apps/haiyun-agent",
        "service/haiyun-operator-telemetry",
        "validatingadmissionpolicy.admissionregistration.k8s.io/haiyun-quota-approval",
    ] {
        assert!(out.contains(what), "{what} not applied:\n{out}");
    }
    let bind = |args: &[&str]| {
        let (ok, out) = run(kubectl(&env).args(args), None);
        assert!(ok || out.contains("already exists"), "{out}");
    };
    bind(&[
        "create",
        "rolebinding",
        "chart-trainer",
        "--clusterrole=haiyun-user",
        "--user=trainer",
        "-n",
        "default",
    ]);
    bind(&[
        "create",
        "clusterrolebinding",
        "chart-boss",
        "--clusterrole=haiyun-quota-approver",
        "--user=boss",
    ]);
    let request = |decision: &str| {
        format!(
            "apiVersion: haiyun.io/v1alpha1\nkind: QuotaRequest\nmetadata: {{name: ask, namespace: default}}\n\
             spec: {{queue: team-a, flavor: \"nvidia.com/gpu:h100\", amount: \"8\", start: \"2026-11-26T09:00:00Z\", \
             end: \"2026-11-26T12:00:00Z\"{decision}}}\n"
        )
    };
    // The policy may take a moment to be enforced after it is created.
    support::wait_for(
        "the policy to refuse a trainer's own approval",
        std::time::Duration::from_secs(30),
        || async {
            let (ok, out) = run(
                kubectl(&env).args(["--as=trainer", "create", "-f", "-"]),
                Some(&request(", decision: Approved")),
            );
            if ok {
                let _ = run(kubectl(&env).args(["delete", "quotarequest", "ask", "-n", "default"]), None);
                return None;
            }
            assert!(out.contains("spec.decision") && out.contains("verb approve on queue team-a"), "{out}");
            Some(())
        },
    )
    .await;
    let (ok, out) = run(kubectl(&env).args(["--as=trainer", "create", "-f", "-"]), Some(&request("")));
    assert!(ok, "a trainer may ask:\n{out}");
    let patch = [
        "patch",
        "quotarequest",
        "ask",
        "-n",
        "default",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"decision":"Approved"}}"#,
    ];
    let (ok, out) = run(kubectl(&env).arg("--as=trainer").args(patch), None);
    assert!(!ok && out.contains("verb approve"), "a trainer approved their own request:\n{out}");
    let (ok, out) = run(kubectl(&env).arg("--as=boss").args(patch), None);
    assert!(ok, "an approver may approve:\n{out}");
    let (ok, out) = run(
        kubectl(&env).arg("--as=boss").args([
            "patch",
            "quotarequest",
            "ask",
            "-n",
            "default",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"decision":"Denied"}}"#,
        ]),
        None,
    );
    assert!(!ok && out.contains("cannot be changed"), "a decision was changed:\n{out}");
}
