//! The Helm chart: it lints, renders, applies to a real API server, and its admission policy lets only users
//! allowed to approve on a Queue decide QuotaRequests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::Env;
use support::tools::{root, run};

fn helm() -> Option<PathBuf> {
    support::tools::helm("HAIYUN_REQUIRE_TESTENV")
}

fn kubectl(env: &Env) -> Command {
    support::tools::kubectl(&env.kubeconfig)
}

fn render(helm: &Path, extra: &[&str]) -> (bool, String) {
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
    // The usage ledger: SQLite takes one replica on its volume, recreated on upgrade; PostgreSQL any number.
    let (ok, out) = render(&helm, &["--set", "ledger.url=sqlite:///var/lib/haiyun/ledger.db"]);
    assert!(!ok && out.contains("set replicas: 1"), "a SQLite ledger with two replicas was accepted:\n{out}");
    let sqlite = ["--set", "ledger.url=sqlite:///var/lib/haiyun/ledger.db", "--set", "replicas=1"];
    let (ok, out) = render(&helm, &sqlite);
    assert!(ok && out.contains("- --ledger=sqlite:///var/lib/haiyun/ledger.db"), "{out}");
    assert!(out.contains("type: Recreate") && out.contains("mountPath: /var/lib/haiyun"), "{out}");
    let (ok, out) = render(&helm, &["--set", "ledger.urlSecret.name=ledger-db"]);
    assert!(ok && out.contains("name: HAIYUN_LEDGER") && out.contains("type: RollingUpdate"), "{out}");
    let audit = [
        "--set",
        "operator.decisionLog=/var/log/haiyun/decisions.jsonl",
        "--set",
        "operator.decisionLogClaim=audit",
    ];
    let (ok, out) = render(&helm, &audit);
    assert!(
        ok && out.contains("claimName: \"audit\"") && out.contains("mountPath: /var/log/haiyun"),
        "{out}"
    );
    let (ok, out) = render(&helm, &["--set", "ledger.url=mysql://db/x"]);
    assert!(!ok && out.contains("ledger"), "a MySQL ledger was accepted:\n{out}");
    let (ok, out) = render(&helm, &["--set", "fairShare.usageHalfLife=a week"]);
    assert!(!ok && out.contains("usageHalfLife"), "a half-life that is no duration was accepted:\n{out}");
    let (ok, out) = render(&helm, &["--set", "fairShare.usageHalfLife=7d"]);
    assert!(ok && out.contains("HAIYUN_USAGE_HALF_LIFE") && out.contains("\"7d\""), "{out}");
    // The node fence holders: a DaemonSet of the operator's image on every node, with the runtime's socket and a Role
    // for their Leases only.
    let (ok, out) = render(&helm, &["--set", "nodeFence.enabled=true", "--set", "nodeFence.seconds=0"]);
    assert!(!ok && out.contains("seconds"), "a fence timeout of 0 was accepted:\n{out}");
    let (ok, out) =
        render(&helm, &["--set", "nodeFence.enabled=true", "--set", "nodeFence.criSocket=crio.sock"]);
    assert!(!ok && out.contains("criSocket"), "a relative CRI socket path was accepted:\n{out}");
    let (ok, out) = render(&helm, &["--set", "nodeFence.enabled=true", "--set", "nodeFence.seconds=30"]);
    assert!(
        ok && out.contains("- node-fence") && out.contains("- --seconds=30") && out.contains("type: Socket"),
        "{out}"
    );
    assert!(
        out.contains("path: /run/containerd/containerd.sock")
            && out.contains("verbs: [get, create, patch, delete]")
    );
    let (ok, out) = render(&helm, &["--set", "otlp.endpoint=collector:4318"]);
    assert!(!ok && out.contains("otlp"), "an OTLP endpoint without a scheme was accepted:\n{out}");
    let (ok, out) = render(&helm, &["--set", "otlp.endpoint=http://collector.obs:4318"]);
    assert!(
        ok && out.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && out.contains("http://collector.obs:4318"),
        "{out}"
    );
}

fn numbers_as_floats(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Number(n) => serde_json::json!(n.as_f64()),
        Value::Array(a) => Value::Array(a.into_iter().map(numbers_as_floats).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, numbers_as_floats(v))).collect()),
        v => v,
    }
}

#[test]
fn the_chart_carries_the_crds_of_the_api_types_and_a_site_may_point_at_its_own_registry() {
    let Some(helm) = helm() else { return };
    let (ok, out) = render(&helm, &[]);
    assert!(ok, "{out}");
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&out)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .collect();
    let crds: Vec<&serde_json::Value> =
        docs.iter().filter(|d| d["kind"] == "CustomResourceDefinition").collect();
    let types = haiyun_api::crd::all();
    assert_eq!(crds.len(), types.len(), "one CRD per API type");
    for want in types {
        let want = serde_json::to_value(&want).unwrap();
        let got = crds.iter().find(|c| c["metadata"]["name"] == want["metadata"]["name"]).unwrap();
        // Rendered through the template, unchanged: the same schema, validations and printer columns (helm writes
        // 0.0 as 0; the API server reads both as the same number).
        assert_eq!(
            numbers_as_floats(got["spec"].clone()),
            numbers_as_floats(want["spec"].clone()),
            "{} changed on its way through the chart",
            want["metadata"]["name"]
        );
        assert_eq!(
            got["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "uninstall keeps the CRDs"
        );
        assert_eq!(got["metadata"]["labels"]["app.kubernetes.io/name"], "haiyun");
    }
    // Before Kubernetes 1.36 there is no MutatingAdmissionPolicy v1: the chart leaves it out (approvedBy then says
    // "administrator"); with it, decidedBy is stamped.
    assert!(!out.contains("kind: MutatingAdmissionPolicy"), "rendered for a cluster without the API");
    let (ok, with) =
        render(&helm, &["--api-versions", "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy"]);
    assert!(ok && with.contains("kind: MutatingAdmissionPolicyBinding"), "{with}");
    let (ok, out) = render(&helm, &["--set", "crds.install=false"]);
    assert!(ok && !out.contains("kind: CustomResourceDefinition"), "{out}");
    // The leader's dashboard, and helm uninstall's first step.
    let dashboard =
        docs.iter().find(|d| d["metadata"]["name"] == "haiyun-operator-dashboard").expect("dashboard");
    assert_eq!(dashboard["spec"]["selector"]["haiyun.io/leader"], "true");
    let hook =
        docs.iter().find(|d| d["kind"] == "Job" && d["metadata"]["name"] == "haiyun-operator-uninstall");
    let hook = hook.expect("the uninstall hook");
    assert_eq!(hook["metadata"]["annotations"]["helm.sh/hook"], "pre-delete");
    let images = |out: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.trim().strip_prefix("image: "))
            .map(|i| i.trim_matches('"').to_string())
            .collect()
    };
    assert!(
        images(&out).iter().all(|i| i.starts_with("ghcr.io/haiyun/haiyun-") && i.ends_with(":0.1.0")),
        "{out}"
    );
    let (ok, out) =
        render(&helm, &["--set", "imageRegistry=registry.example.com/ml", "--set", "image.tag=2.0"]);
    assert!(ok, "{out}");
    let all = images(&out);
    assert!(all.contains(&"registry.example.com/ml/haiyun-operator:2.0".to_string()), "{all:?}");
    assert!(all.contains(&"registry.example.com/ml/haiyun-agent:0.1.0".to_string()), "{all:?}");
    let (ok, out) = render(&helm, &["--set", "image.repository=mirror.example.com/haiyun/op"]);
    assert!(ok && images(&out).contains(&"mirror.example.com/haiyun/op:0.1.0".to_string()), "{out}");
}

#[tokio::test]
async fn the_rendered_chart_applies_and_only_approvers_decide_quota_requests() {
    let Some(env) = Env::start("chart").await else { return };
    let Some(helm) = helm() else { return };
    // Hooks are helm's to run (on uninstall), not kubectl's; the API server is 1.36, whose discovery (which helm
    // template lacks) lists MutatingAdmissionPolicy v1.
    let (ok, rendered) = render(
        &helm,
        &["--no-hooks", "--api-versions", "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy"],
    );
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
            // The admission policies resolve the just-applied CRD's schema a moment after it changes.
            if out.contains("There can be a delay") {
                return None;
            }
            assert!(out.contains("spec.decision") && out.contains("verb approve on queue team-a"), "{out}");
            Some(())
        },
    )
    .await;
    let (ok, out) = run(kubectl(&env).args(["--as=trainer", "create", "-f", "-"]), Some(&request("")));
    assert!(ok, "a trainer may ask:\n{out}");
    // A merge patch of request `ask`'s spec, as `user`.
    let patch = |user: &str, spec: &str| {
        let body = format!(r#"{{"spec":{spec}}}"#);
        let args = ["patch", "quotarequest", "ask", "-n", "default", "--type", "merge", "-p", &body];
        run(kubectl(&env).arg(format!("--as={user}")).args(args), None)
    };
    let (ok, out) = patch("trainer", r#"{"decision":"Approved"}"#);
    assert!(!ok && out.contains("verb approve"), "a trainer approved their own request:\n{out}");
    let (ok, out) = patch("boss", r#"{"decision":"Approved"}"#);
    assert!(ok, "an approver may approve:\n{out}");
    // The API server stamped who decided (the MutatingAdmissionPolicy), and no one can change it.
    let (ok, out) = run(
        kubectl(&env).args([
            "get",
            "quotarequest",
            "ask",
            "-n",
            "default",
            "-o",
            "jsonpath={.spec.decidedBy}",
        ]),
        None,
    );
    assert!(ok && out.trim() == "boss", "decidedBy is {out:?}, not the approver");
    let (ok, out) = patch("boss", r#"{"decidedBy":"someone-else"}"#);
    assert!(!ok && out.contains("decidedBy cannot be changed"), "decidedBy was changed:\n{out}");
    // A trainer cannot claim a decider without a decision either.
    let forged = request("")
        .replace("end: \"2026-11-26T12:00:00Z\"", "end: \"2026-11-26T12:00:00Z\", decidedBy: boss");
    let forged = forged.replace("name: ask", "name: forged");
    let (ok, out) = run(kubectl(&env).args(["--as=trainer", "create", "-f", "-"]), Some(&forged));
    assert!(
        !ok && out.contains("decidedBy is stamped by the API server"),
        "a forged decidedBy was accepted:\n{out}"
    );
    let (ok, out) = patch("boss", r#"{"decision":"Denied"}"#);
    assert!(!ok && out.contains("cannot be changed"), "a decision was changed:\n{out}");

    // Who submitted a job is stamped from the request (a forged name is overwritten) and never changes.
    let job = "apiVersion: haiyun.io/v1alpha1\nkind: ComputeJob\nmetadata: {name: stamped, namespace: default}\n\
               spec: {queue: team-a, submittedBy: boss, taskGroups: [{name: w, replicas: 1}]}\n";
    let get = || {
        let args = ["get", "computejob", "stamped", "-n", "default", "-o", "jsonpath={.spec.submittedBy}"];
        run(kubectl(&env).args(args), None)
    };
    support::wait_for("the submitter to be stamped", std::time::Duration::from_secs(30), || async {
        let (ok, out) = run(kubectl(&env).args(["--as=trainer", "create", "-f", "-"]), Some(job));
        // The admission policies resolve the just-applied CRD's schema a moment after it changes.
        if !ok && out.contains("not declared in schema") {
            return None;
        }
        assert!(ok, "a trainer may submit a job:\n{out}");
        let (_, by) = get();
        if by.trim() == "trainer" {
            return Some(());
        }
        // Made before the policy took effect: made again.
        let _ = run(kubectl(&env).args(["delete", "computejob", "stamped", "-n", "default"]), None);
        None
    })
    .await;
    let body = r#"{"spec":{"submittedBy":"boss"}}"#;
    let args =
        ["--as=trainer", "patch", "computejob", "stamped", "-n", "default", "--type", "merge", "-p", body];
    let (ok, out) = run(kubectl(&env).args(args), None);
    assert!(!ok && out.contains("submittedBy is stamped at creation"), "submittedBy was changed:\n{out}");
    // A dataset's readers: a job from a namespace and queue it does not list is refused by the API server.
    let dataset = "apiVersion: haiyun.io/v1alpha1\nkind: Dataset\nmetadata: {name: chart-census}\n\
                   spec: {size: 1Ti, classification: core, access: {namespaces: [research]}}\n";
    let (ok, out) = run(kubectl(&env).args(["apply", "-f", "-"]), Some(dataset));
    assert!(ok, "{out}");
    let reader = "apiVersion: haiyun.io/v1alpha1\nkind: ComputeJob\nmetadata: {name: reader, namespace: default}\n\
                  spec: {queue: team-a, datasets: [chart-census], taskGroups: [{name: w, replicas: 1}]}\n";
    support::wait_for(
        "the dataset policy to refuse a reader",
        std::time::Duration::from_secs(30),
        || async {
            let (ok, out) = run(kubectl(&env).args(["--as=trainer", "create", "-f", "-"]), Some(reader));
            if ok {
                let _ = run(kubectl(&env).args(["delete", "computejob", "reader", "-n", "default"]), None);
                return None;
            }
            let refused = out.contains("namespace default (queue team-a) may not read dataset chart-census");
            refused.then_some(())
        },
    )
    .await;
    // A batch/v1 Job that reads the dataset by its annotation is refused alike: its ComputeJob is never made, and
    // the Job's events say why.
    let batch = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: batch-reader, namespace: default, \
                 labels: {haiyun.io/queue: team-a}, annotations: {haiyun.io/datasets: chart-census}}\n\
                 spec: {suspend: true, parallelism: 1, completions: 1, template: {spec: {schedulerName: haiyun, \
                 restartPolicy: Never, containers: [{name: c, image: x}]}}}\n";
    let (ok, out) = run(kubectl(&env).args(["create", "-f", "-"]), Some(batch));
    assert!(ok, "{out}");
    let _op = env.operator("batch", &[]);
    support::wait_for(
        "the batch Job to say why it does not run",
        std::time::Duration::from_secs(60),
        || async {
            let args = [
                "get",
                "events",
                "-n",
                "default",
                "--field-selector",
                "involvedObject.name=batch-reader",
                "-o",
                "json",
            ];
            let (_, out) = run(kubectl(&env).args(args), None);
            (out.contains("Refused") && out.contains("may not read dataset chart-census")).then_some(())
        },
    )
    .await;
    let (_, out) = run(kubectl(&env).args(["get", "computejob", "batch-reader", "-n", "default"]), None);
    assert!(out.contains("NotFound"), "the refused Job was queued:\n{out}");
    let body = r#"{"spec":{"submittedBy":null}}"#;
    let args =
        ["--as=trainer", "patch", "computejob", "stamped", "-n", "default", "--type", "merge", "-p", body];
    let (ok, out) = run(kubectl(&env).args(args), None);
    assert!(!ok && out.contains("cannot be added or removed"), "submittedBy was removed:\n{out}");
}
