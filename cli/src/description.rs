//! What `haiyun describe job` prints: the job's spec and status, its pods and its events, as kubectl describe does.

use std::fmt::Write;

use haiyun_api::ComputeJob;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;

use crate::view::{table, without_phase};

/// Restarts a job gets when `spec.maxRestarts` is not set (the API's default).
const DEFAULT_MAX_RESTARTS: u32 = 3;

/// `haiyun describe job NAME`: spec, status, conditions, reasons, pods and events (oldest first), at `now`.
pub fn job(j: &ComputeJob, pods: &[Pod], events: &[Event], now: Timestamp) -> String {
    let mut out = String::new();
    let spec = &j.spec;
    let created = j.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let mut fields = vec![
        ("Name", j.name_any()),
        ("Namespace", j.namespace().unwrap_or_default()),
        ("Queue", spec.queue.clone()),
        ("Kind", kebab(&spec.kind)),
        ("Priority", spec.priority.map_or("-".into(), |p| p.to_string())),
        ("Preemptible", yes_no(spec.preemptible)),
        ("Runtime estimate", spec.runtime_estimate.clone().unwrap_or_else(|| "-".into())),
        ("Created", created.map_or("-".into(), |t| format!("{t} ({} ago)", age(t, now)))),
    ];
    let lists = [
        ("Topology", vec![kebab(&spec.topology)]),
        ("Pool kinds", spec.pool_kinds.iter().map(kebab).collect()),
        ("Sites", spec.sites.clone()),
        ("Datasets", spec.datasets.clone()),
    ];
    for (key, values) in lists {
        if !values.is_empty() && values != ["any"] {
            fields.push((key, values.join(", ")));
        }
    }
    if let Some(b) = &spec.batch_job {
        fields.push(("Batch Job", format!("job.batch/{b}")));
    }
    fields_block(&mut out, "", &fields);
    let groups: Vec<Vec<String>> = spec
        .task_groups
        .iter()
        .map(|g| {
            let models: Vec<String> = g
                .gpu_models
                .iter()
                .map(|m| match m.throughput {
                    Some(t) => format!("{} (x{t})", m.model),
                    None => m.model.clone(),
                })
                .collect();
            let gpus = g.gpu_fraction.map_or(g.gpus.to_string(), |f| format!("{f} of 1"));
            vec![
                g.name.clone(),
                g.replicas.to_string(),
                gpus,
                g.cpu.clone().unwrap_or_else(|| "-".into()),
                g.memory.clone().unwrap_or_else(|| "-".into()),
                if models.is_empty() { "any".into() } else { models.join(", ") },
            ]
        })
        .collect();
    let total: u32 = spec.task_groups.iter().map(|g| g.replicas * g.gpus).sum();
    let _ = writeln!(out, "Task groups ({total} GPU{} in all):", if total == 1 { "" } else { "s" });
    section(&mut out, &["NAME", "TASKS", "GPUS/TASK", "CPU", "MEMORY", "GPU MODELS"], &groups);
    status(&mut out, j, now);
    let _ = writeln!(out, "Pods:");
    let pods: Vec<Vec<String>> = pods.iter().map(|p| pod_row(p, now)).collect();
    section(&mut out, &["NAME", "NODE", "PHASE", "RESTARTS", "AGE"], &pods);
    let _ = writeln!(out, "Events:");
    let mut events: Vec<&Event> = events.iter().collect();
    events.sort_by_key(|e| first_seen(e));
    let events: Vec<Vec<String>> = events.iter().map(|e| event_row(e, now)).collect();
    section(&mut out, &["AGE", "TYPE", "REASON", "NOTE"], &events);
    out
}

/// The status part: phase, placement, times, counts, conditions, reasons and hints.
fn status(out: &mut String, j: &ComputeJob, now: Timestamp) {
    let st = j.status.clone().unwrap_or_default();
    let mut fields = vec![("Phase", j.status.as_ref().map_or("New".into(), |s| format!("{:?}", s.phase)))];
    if let Some(p) = &st.placement {
        let mut nodes: Vec<&str> = p.tasks.iter().map(|t| t.node.as_str()).collect();
        nodes.dedup();
        let model = if p.gpu_model.is_empty() { "CPU only" } else { p.gpu_model.as_str() };
        fields.push(("Placement", format!("pool {} ({model}) on {}", p.pool, nodes.join(", "))));
    }
    // Once placed, the estimate is history: Started says when.
    let estimate = if st.placement.is_none() { &st.estimated_start } else { &None };
    let times = [
        ("Estimated start", estimate),
        ("Started", &st.start_time),
        ("Finished", &st.completion_time),
        ("Restart after", &st.restart_after),
    ];
    for (key, t) in times {
        if let Some(t) = t {
            fields.push((key, t.clone()));
        }
    }
    let max = j.spec.max_restarts.unwrap_or(DEFAULT_MAX_RESTARTS);
    fields.push(("Restarts", format!("{} (of at most {max})", st.restarts)));
    fields.push(("Preemptions", st.preemptions.to_string()));
    fields.push(("GPU-hours", format!("{:.2}", st.gpu_hours)));
    if let Some(e) = &st.energy {
        fields.push(("Energy", format!("{:.3} kWh ({:.0} J)", e.joules / 3.6e6, e.joules)));
    }
    if let Some(f) = &st.last_failure {
        let code = f.exit_code.map(|c| format!(", exit code {c}")).unwrap_or_default();
        let when = if f.time.is_empty() { String::new() } else { format!(" at {}", f.time) };
        fields.push(("Last failure", format!("{} in pod {}{code}{when}: {}", f.reason, f.pod, f.message)));
    }
    let _ = writeln!(out, "Status:");
    fields_block(out, "  ", &fields);
    let _ = writeln!(out, "Conditions:");
    let conditions: Vec<Vec<String>> = st
        .conditions
        .iter()
        .map(|c| {
            let since = c.last_transition_time.parse::<Timestamp>().map_or("-".into(), |t| age(t, now));
            vec![c.type_.clone(), c.status.clone(), c.reason.clone(), since, c.message.clone()]
        })
        .collect();
    section(out, &["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"], &conditions);
    if !st.pending_reasons.is_empty() {
        let _ = writeln!(out, "Pending reasons:");
        for r in &st.pending_reasons {
            let _ = writeln!(out, "  {}: {}", r.phase, without_phase(&r.phase, &r.message));
        }
    }
    if !st.hints.is_empty() {
        let _ = writeln!(out, "Hints:");
        for h in &st.hints {
            let _ = writeln!(out, "  {h}");
        }
    }
}

/// Where values start in `Key:  value` lines, at every level (as kubectl lines them up).
const VALUE_COLUMN: usize = 20;

/// `Key:  value` lines, the values in one column.
fn fields_block(out: &mut String, indent: &str, fields: &[(&str, String)]) {
    let width = VALUE_COLUMN.saturating_sub(indent.len() + 2);
    for (k, v) in fields {
        let key = format!("{k}:");
        let _ = writeln!(out, "{}", format!("{indent}{key:<width$}  {v}").trim_end());
    }
}

/// A table indented under its heading, or `<none>`.
fn section(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    if rows.is_empty() {
        let _ = writeln!(out, "  <none>");
        return;
    }
    for l in table(header, rows).lines() {
        let _ = writeln!(out, "  {l}");
    }
}

/// A pod's row: name, node, phase (or why its container waits, or Terminating), restarts and age.
fn pod_row(p: &Pod, now: Timestamp) -> Vec<String> {
    let st = p.status.as_ref();
    let containers = st.and_then(|s| s.container_statuses.as_deref()).unwrap_or_default();
    let waiting = containers.iter().find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone());
    let terminated = containers.iter().find_map(|c| c.state.as_ref()?.terminated.as_ref()?.reason.clone());
    let phase = if p.metadata.deletion_timestamp.is_some() {
        "Terminating".to_string()
    } else {
        waiting
            .or(terminated)
            .or_else(|| st.and_then(|s| s.phase.clone()))
            .unwrap_or_else(|| "Pending".into())
    };
    let restarts: i32 = containers.iter().map(|c| c.restart_count).sum();
    let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_else(|| "-".into());
    let created = p.metadata.creation_timestamp.as_ref().map_or("-".into(), |t| age(t.0, now));
    vec![p.name_any(), node, phase, restarts.to_string(), created]
}

/// When an event was first seen.
fn first_seen(e: &Event) -> Option<Timestamp> {
    e.event_time
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.deprecated_first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// An event's row: age (of its last occurrence, with how often it happened), type, reason and note.
fn event_row(e: &Event, now: Timestamp) -> Vec<String> {
    let last = e
        .series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or_else(|| e.deprecated_last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| first_seen(e));
    let count = e.series.as_ref().map_or(e.deprecated_count.unwrap_or(1), |s| s.count);
    let mut when = last.map_or("-".into(), |t| age(t, now));
    if count > 1 {
        let _ = write!(when, " (x{count})");
    }
    vec![
        when,
        e.type_.clone().unwrap_or_default(),
        e.reason.clone().unwrap_or_default(),
        e.note.clone().unwrap_or_default().replace('\n', " "),
    ]
}

/// How long ago, as kubectl says it: 45s, 12m, 5h, 3d.
pub fn age(t: Timestamp, now: Timestamp) -> String {
    let s = (now.as_second() - t.as_second()).max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

/// An API enum as the manifest spells it (`hpc-batch`, `same-node`).
fn kebab<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn describe_shows_spec_status_pods_and_events_oldest_first() {
        let j: ComputeJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputeJob",
            "metadata": {"name": "train", "namespace": "ml", "creationTimestamp": "2026-01-01T10:00:00Z"},
            "spec": {"queue": "team-a", "priority": 5, "runtimeEstimate": "2h", "datasets": ["imagenet"],
                     "taskGroups": [{"name": "worker", "replicas": 2, "gpus": 8,
                                     "gpuModels": [{"model": "h100"}, {"model": "a100", "throughput": 0.6}]}]},
            "status": {"phase": "Running", "restarts": 1, "preemptions": 2, "gpuHours": 3.5,
                       "energy": {"joules": 7200000.0},
                       "placement": {"pool": "p1", "gpuModel": "h100", "tasks": [
                           {"pod": "train-worker-0", "node": "n1"}, {"pod": "train-worker-1", "node": "n2"}]},
                       "conditions": [{"type": "Admitted", "status": "True", "reason": "Admitted",
                                       "lastTransitionTime": "2026-01-01T10:01:00Z"}]}
        }))
        .unwrap();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "train-worker-0", "creationTimestamp": "2026-01-01T10:02:00Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "main"}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "main", "restartCount": 1, "ready": true,
                       "image": "i", "imageID": "", "state": {"running": {}}}]}
        }))
        .unwrap();
        let event = |name: &str, time: &str, reason: &str, note: &str| -> Event {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name}, "eventTime": time, "type": "Normal", "reason": reason, "note": note,
                "regarding": {"kind": "ComputeJob", "name": "train"}
            }))
            .unwrap()
        };
        let events = [
            event("b", "2026-01-01T10:03:00.000000Z", "Running", "every pod is running"),
            event("a", "2026-01-01T10:01:00.000000Z", "Admitted", "placed in pool p1"),
        ];
        let text = job(&j, &[pod], &events, at("2026-01-01T10:05:00Z"));
        for want in [
            "Name:               train",
            "Queue:              team-a",
            "Created:            2026-01-01T10:00:00Z (5m ago)",
            "Datasets:           imagenet",
            "Task groups (16 GPUs in all):",
            "worker  2      8          -    -       h100, a100 (x0.6)",
            "  Phase:            Running",
            "  Placement:        pool p1 (h100) on n1, n2",
            "  Restarts:         1 (of at most 3)",
            "  Preemptions:      2",
            "  GPU-hours:        3.50",
            "  Energy:           2.000 kWh (7200000 J)",
            "Admitted  True    Admitted  4m",
            "train-worker-0  n1    Running  1         3m",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let admitted = text.find("Admitted  placed in pool p1").unwrap();
        let running = text.find("Running   every pod is running").unwrap();
        assert!(admitted < running, "events oldest first:\n{text}");
    }

    #[test]
    fn a_job_with_nothing_yet_says_none_and_ages_read_like_kubectl() {
        let j: ComputeJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputeJob", "metadata": {"name": "new"},
            "spec": {"queue": "q", "taskGroups": [{"name": "w", "replicas": 1, "gpus": 1}]}
        }))
        .unwrap();
        let text = job(&j, &[], &[], at("2026-01-01T00:00:00Z"));
        assert!(text.contains("  Phase:            New"), "{text}");
        assert!(text.contains("Pods:\n  <none>\nEvents:\n  <none>\n"), "{text}");
        let now = at("2026-01-03T00:00:00Z");
        let ago = |s: i64| age(Timestamp::from_second(now.as_second() - s).unwrap(), now);
        assert_eq!([ago(5), ago(600), ago(3 * 3600), ago(3 * 86400)], ["5s", "10m", "3h", "3d"]);
    }
}
