//! What the CLI prints: tables of jobs, pools, queues and quota requests, a job's explanation, and `top`.

use std::fmt::Write;

use haiyun_api::{ComputeJob, ComputePool, PendingReason, Queue, QuotaRequest};
use kube::ResourceExt;

/// Each column's width: its widest cell, header included.
pub fn widths(header: &[&str], rows: &[Vec<String>]) -> Vec<usize> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    widths
}

/// One row, each cell padded to its column's width (a wider cell pushes the rest right), with a newline.
pub fn line<S: AsRef<str>>(widths: &[usize], cells: &[S]) -> String {
    let padded: Vec<String> = cells
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{:<w$}", c.as_ref(), w = widths.get(i).copied().unwrap_or(0)))
        .collect();
    format!("{}\n", padded.join("  ").trim_end())
}

/// Renders rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let widths = widths(header, rows);
    let mut out = line(&widths, header);
    for r in rows {
        out.push_str(&line(&widths, r));
    }
    out
}

/// An object `get` lists: its kind, its table's columns and its row.
pub trait Tabular {
    /// The kind, as errors name it (e.g. `ComputeJob`).
    const KIND: &'static str;
    /// How `haiyun` calls a list of them (e.g. `jobs`), for hints.
    const PLURAL: &'static str;
    /// The table's header.
    const COLUMNS: &'static [&'static str];
    /// Its row.
    fn row(&self) -> Vec<String>;
}

/// The table of `items`.
pub fn rows<K: Tabular>(items: &[K]) -> String {
    let rows: Vec<Vec<String>> = items.iter().map(Tabular::row).collect();
    table(K::COLUMNS, &rows)
}

fn phase(j: &ComputeJob) -> String {
    j.status.as_ref().map_or("New".into(), |s| format!("{:?}", s.phase))
}

impl Tabular for ComputeJob {
    const KIND: &'static str = "ComputeJob";
    const PLURAL: &'static str = "jobs";
    const COLUMNS: &'static [&'static str] =
        &["NAME", "QUEUE", "PHASE", "GPUS", "POOL", "EST. START", "REASON"];

    fn row(&self) -> Vec<String> {
        let st = self.status.clone().unwrap_or_default();
        vec![
            self.name_any(),
            self.spec.queue.clone(),
            phase(self),
            gpus(self).to_string(),
            st.placement.map(|p| p.pool).unwrap_or_default(),
            st.estimated_start.unwrap_or_default(),
            st.pending_reasons.first().map(|r| r.message.clone()).unwrap_or_default(),
        ]
    }
}

/// GPUs a job asks for, all task groups together.
fn gpus(j: &ComputeJob) -> u32 {
    j.spec.task_groups.iter().map(|g| g.replicas * g.gpus).sum()
}

/// `haiyun get jobs`.
pub fn jobs(jobs: &[ComputeJob]) -> String {
    rows(jobs)
}

impl Tabular for ComputePool {
    const KIND: &'static str = "ComputePool";
    const PLURAL: &'static str = "pools";
    const COLUMNS: &'static [&'static str] =
        &["NAME", "KIND", "BACKEND", "SITE", "CLEARANCE", "NODES", "GPUS", "ALLOCATED", "READY"];

    fn row(&self) -> Vec<String> {
        let st = self.status.clone().unwrap_or_default();
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready");
        vec![
            self.name_any(),
            format!("{:?}", self.spec.kind).to_lowercase(),
            self.spec.backend.name().into(),
            self.spec.site.clone(),
            format!("{:?}", self.spec.clearance).to_lowercase(),
            st.nodes.to_string(),
            st.gpus.to_string(),
            st.allocated_gpus.to_string(),
            ready.map_or("-".into(), |c| if c.status == "True" { "yes".into() } else { c.message.clone() }),
        ]
    }
}

/// `haiyun get pools`.
pub fn pools(pools: &[ComputePool]) -> String {
    rows(pools)
}

impl Tabular for Queue {
    const KIND: &'static str = "Queue";
    const PLURAL: &'static str = "queues";
    const COLUMNS: &'static [&'static str] =
        &["NAME", "COHORT", "PENDING", "ADMITTED", "GPU-HOURS", "USAGE (USED/QUOTA)"];

    fn row(&self) -> Vec<String> {
        let st = self.status.clone().unwrap_or_default();
        let usage: Vec<String> = st
            .usage
            .iter()
            .map(|u| {
                let borrowed =
                    if u.borrowed == "0" { String::new() } else { format!(" (+{} borrowed)", u.borrowed) };
                format!("{} {}/{}{borrowed}", u.flavor, u.used, u.quota)
            })
            .collect();
        vec![
            self.name_any(),
            self.spec.cohort.clone().unwrap_or_default(),
            st.pending.to_string(),
            st.admitted.to_string(),
            format!("{:.2}", st.gpu_hours),
            usage.join(", "),
        ]
    }
}

/// `haiyun get queues`.
pub fn queues(queues: &[Queue]) -> String {
    rows(queues)
}

impl Tabular for QuotaRequest {
    const KIND: &'static str = "QuotaRequest";
    const PLURAL: &'static str = "quota";
    const COLUMNS: &'static [&'static str] =
        &["NAME", "QUEUE", "FLAVOR", "AMOUNT", "START", "END", "STATE", "APPROVED BY"];

    fn row(&self) -> Vec<String> {
        vec![
            self.name_any(),
            self.spec.queue.clone(),
            self.spec.flavor.clone(),
            self.spec.amount.clone(),
            self.spec.start.clone(),
            self.spec.end.clone(),
            self.status.as_ref().map_or("Pending".into(), |s| format!("{:?}", s.state)),
            self.status.as_ref().map(|s| s.approved_by.clone()).unwrap_or_default(),
        ]
    }
}

/// `haiyun quota list`.
pub fn requests(requests: &[QuotaRequest]) -> String {
    rows(requests)
}

/// `haiyun explain JOB`: where it stands, what stops it phase by phase, what would help, when it may start, and the
/// commands that show or fix what is missing.
pub fn explain(j: &ComputeJob) -> String {
    let mut out = String::new();
    let st = j.status.clone().unwrap_or_default();
    let _ = writeln!(
        out,
        "Job {}/{} in queue {}: {}",
        j.namespace().unwrap_or_default(),
        j.name_any(),
        j.spec.queue,
        phase(j)
    );
    if let Some(p) = &st.placement {
        let nodes: Vec<&str> = p.tasks.iter().map(|t| t.node.as_str()).collect();
        let _ = writeln!(out, "Placed in pool {} ({}) on {}", p.pool, p.gpu_model, nodes.join(", "));
    }
    if st.pending_reasons.is_empty() && st.placement.is_none() {
        let _ = writeln!(out, "No reason recorded yet: the operator has not looked at it (is it running?).");
    }
    for r in &st.pending_reasons {
        let _ = writeln!(out, "Blocked at {}: {}", r.phase, without_phase(&r.phase, &r.message));
        if let Some(s) = shortfall_line(r) {
            let _ = writeln!(out, "  shortfall: {s}");
        }
    }
    for h in &st.hints {
        let _ = writeln!(out, "To start sooner: {h}");
    }
    match &st.estimated_start {
        Some(t) if st.placement.is_none() => {
            let _ = writeln!(out, "Estimated start: {t}");
        }
        None if st.placement.is_none() => {
            let _ = writeln!(out, "Estimated start: unknown (nothing running now frees what it needs)");
        }
        _ => {}
    }
    for s in suggestions(j) {
        let _ = writeln!(out, "Run: {}  # {}", s.command, s.why);
    }
    out
}

/// A reason's sentence without the phase it starts with: the operator writes "quota: queue a needs …" at phase
/// `quota`, and "data clearance: …" at phase `data-clearance`.
pub fn without_phase<'a>(phase: &str, message: &'a str) -> &'a str {
    let spaced = phase.replace('-', " ");
    let first = phase.split('-').next().unwrap_or(phase);
    [phase, spaced.as_str(), first]
        .into_iter()
        .find_map(|p| message.strip_prefix(p)?.strip_prefix(": "))
        .unwrap_or(message)
}

/// A reason's numbers in one line: flavor, need, what is left (or free now), what the cohort could lend.
fn shortfall_line(r: &PendingReason) -> Option<String> {
    let mut detail = Vec::new();
    if let Some(f) = &r.flavor {
        detail.push(format!("flavor {f}"));
    }
    if let Some(n) = &r.needed {
        detail.push(format!("needs {n}"));
    }
    if let Some(l) = &r.left {
        // Quota has some left; a reserved pool has some free now that jobs ahead will take.
        detail.push(format!("{l} {}", if r.phase == "reservation" { "free now" } else { "left" }));
    }
    if let Some(c) = &r.cohort_can_lend {
        detail.push(format!("cohort can lend {c}"));
    }
    (!detail.is_empty()).then(|| detail.join(", "))
}

/// A command that shows or fixes what keeps a job waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suggestion {
    /// The command line, ready to run.
    pub command: String,
    /// What it does for this job.
    pub why: String,
}

/// The commands that would help a waiting job, in the order of its reasons, none twice: a quota request for what
/// it lacks when quota stops it; what it asks for and what the pools offer when no pool fits or is cleared for its
/// data; the queues when its queue is the problem; its last failure when it waits to restart.
pub fn suggestions(j: &ComputeJob) -> Vec<Suggestion> {
    let name = j.name_any();
    let ns = namespace_flag(j);
    let describe =
        |why: &str| Suggestion { command: format!("haiyun describe job {name}{ns}"), why: why.into() };
    let pools = |why: &str| Suggestion { command: "haiyun get pools".into(), why: why.into() };
    let mut out: Vec<Suggestion> = Vec::new();
    let reasons = j.status.as_ref().map(|s| s.pending_reasons.as_slice()).unwrap_or_default();
    for r in reasons {
        let more = match r.phase.as_str() {
            "quota" => quota_request(j, r, &ns).into_iter().collect(),
            "data-clearance" => vec![
                describe("shows the datasets it reads"),
                pools("shows each pool's clearance: a replica of its data in a cleared pool lets it run"),
            ],
            "placement" | "placement-unresolvable" => vec![
                describe("shows what it asks for: GPUs per task, GPU models, pool kinds and sites"),
                pools("shows what each pool offers: kind, site, clearance, GPUs and how many are allocated"),
            ],
            "queue" => vec![Suggestion {
                command: "haiyun get queues".into(),
                why: format!("lists the queues; its queue is {}", j.spec.queue),
            }],
            "restart" => vec![describe("shows its last failure, restarts and pods")],
            _ => Vec::new(),
        };
        for s in more {
            if !out.iter().any(|o| o.command == s.command) {
                out.push(s);
            }
        }
    }
    // A job that takes several GPU models waits at the quota of each: a request for any one of them is enough.
    let requests = out.iter().filter(|s| s.command.starts_with("haiyun quota request")).count();
    if requests > 1 {
        for s in out.iter_mut().filter(|s| s.command.starts_with("haiyun quota request")) {
            s.why.push_str(&format!(" (any one of these {requests} requests is enough)"));
        }
    }
    out
}

/// ` -n NS` for commands about a job outside the default namespace (nothing for one in it).
pub fn namespace_flag(j: &ComputeJob) -> String {
    match j.namespace() {
        Some(n) if n != "default" => format!(" -n {n}"),
        _ => String::new(),
    }
}

/// `haiyun quota request` for what a job lacks of the flavor its quota reason names, for its runtime estimate.
fn quota_request(j: &ComputeJob, r: &PendingReason, ns: &str) -> Option<Suggestion> {
    let flavor = r.flavor.as_deref()?;
    let amount = shortfall(flavor, r.needed.as_deref()?, r.left.as_deref())?;
    let hours = j
        .spec
        .runtime_estimate
        .as_deref()
        .and_then(haiyun_api::quantity::seconds)
        .map(|s| format!(" --hours {}", s.div_ceil(3600).max(1)))
        .unwrap_or_default();
    let queue = &j.spec.queue;
    Some(Suggestion {
        command: format!(
            "haiyun quota request --queue {queue} --flavor {flavor} --amount {amount}{hours}{ns}"
        ),
        why: format!(
            "asks queue {queue} for the {amount} {flavor} it lacks; an approver then runs haiyun quota approve"
        ),
    })
}

/// What a job lacks as a `--amount`: what it needs less what is left (all it needs when nothing is said to be
/// left, or when what is left should have been enough); GPUs and cores as numbers, memory in Gi.
fn shortfall(flavor: &str, needed: &str, left: Option<&str>) -> Option<String> {
    // The operator writes amounts for people: "8", "0.50", "12 cores", "64 GiB".
    let number = |s: &str| s.split_whitespace().next()?.parse::<f64>().ok().filter(|v| v.is_finite());
    let needed = number(needed)?;
    let left = left.and_then(number).unwrap_or(0.0);
    let lacks = if needed - left > 0.0 { needed - left } else { needed };
    if lacks <= 0.0 {
        return None;
    }
    let mut text = format!("{lacks:.2}").trim_end_matches('0').trim_end_matches('.').to_string();
    if flavor == "memory" {
        text.push_str("Gi");
    }
    Some(text)
}

/// `haiyun top`: capacity and allocation by pool and GPU model, then queue usage.
pub fn top(pools: &[ComputePool], qs: &[Queue]) -> String {
    let mut rows = Vec::new();
    for p in pools {
        let st = p.status.clone().unwrap_or_default();
        for m in &st.by_model {
            let share = if m.total > 0 { 100.0 * m.allocated / f64::from(m.total) } else { 0.0 };
            rows.push(vec![
                p.name_any(),
                format!("{:?}", p.spec.kind).to_lowercase(),
                m.model.clone(),
                m.total.to_string(),
                m.healthy.to_string(),
                format!("{:.1}", m.allocated),
                format!("{share:.0}%"),
            ]);
        }
        if st.by_model.is_empty() {
            let why = st
                .conditions
                .iter()
                .find(|c| c.status != "True")
                .map(|c| c.message.clone())
                .unwrap_or_default();
            rows.push(vec![
                p.name_any(),
                format!("{:?}", p.spec.kind).to_lowercase(),
                "-".into(),
                "0".into(),
                "0".into(),
                "0".into(),
                why,
            ]);
        }
    }
    let mut out = table(&["POOL", "KIND", "MODEL", "GPUS", "HEALTHY", "ALLOCATED", "USE"], &rows);
    out.push('\n');
    out.push_str(&queues(queues_sorted(qs).as_slice()));
    out
}

fn queues_sorted(q: &[Queue]) -> Vec<Queue> {
    let mut v = q.to_vec();
    v.sort_by_key(|q| q.name_any());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t =
            table(&["A", "LONGER"], &[vec!["wide-cell".into(), "x".into()], vec!["y".into(), "z".into()]]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "A          LONGER");
        assert_eq!(lines[1], "wide-cell  x");
        assert_eq!(lines[2], "y          z");
    }

    #[test]
    fn explain_names_the_blocking_phase_the_shortfall_and_the_estimated_start() {
        let j: ComputeJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputeJob",
            "metadata": {"name": "big", "namespace": "ml"},
            "spec": {"queue": "team-a", "taskGroups": [{"name": "w", "replicas": 2, "gpus": 8}]},
            "status": {"phase": "Queued", "estimatedStart": "2026-11-26T14:00:00Z",
                       "hints": ["a QuotaRequest for 8 nvidia.com/gpu:h100 on team-a"],
                       "pendingReasons": [{"phase": "quota", "message": "quota: team-a has 8 of 16 H100 left",
                                           "flavor": "nvidia.com/gpu:h100", "needed": "16", "left": "8",
                                           "cohortCanLend": "0"}]}
        }))
        .unwrap();
        let text = explain(&j);
        assert!(text.contains("Job ml/big in queue team-a: Queued"), "{text}");
        // The phase is said once, though the operator's sentence starts with it too.
        assert!(text.contains("Blocked at quota: team-a has 8 of 16 H100 left"), "{text}");
        assert!(!text.contains("quota: quota"), "{text}");
        assert!(text.contains("shortfall: flavor nvidia.com/gpu:h100, needs 16, 8 left, cohort can lend 0"));
        assert!(text.contains("To start sooner: a QuotaRequest"));
        assert!(text.contains("Estimated start: 2026-11-26T14:00:00Z"));
        // It ends with the command that asks for the 8 it lacks, for its runtime (none given: the default window).
        let last = text.lines().last().unwrap();
        assert!(
            last.starts_with(
                "Run: haiyun quota request --queue team-a --flavor nvidia.com/gpu:h100 --amount 8 -n ml  # "
            ),
            "{text}"
        );
    }

    fn waiting(reasons: serde_json::Value) -> ComputeJob {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputeJob",
            "metadata": {"name": "j", "namespace": "default"},
            "spec": {"queue": "q", "runtimeEstimate": "90m", "taskGroups": [{"name": "w", "replicas": 1, "gpus": 1}]},
            "status": {"phase": "Queued", "pendingReasons": reasons}
        }))
        .unwrap()
    }

    #[test]
    fn a_reason_loses_the_phase_it_starts_with_and_only_that() {
        assert_eq!(without_phase("quota", "quota: queue a needs 8"), "queue a needs 8");
        assert_eq!(
            without_phase("data-clearance", "data clearance: no pool is cleared"),
            "no pool is cleared"
        );
        assert_eq!(without_phase("placement-unresolvable", "placement: in pool p: x"), "in pool p: x");
        assert_eq!(without_phase("quota", "quotas are short"), "quotas are short");
        assert_eq!(without_phase("placement", "pools: none of the pools"), "pools: none of the pools");
    }

    #[test]
    fn a_quota_shortfall_becomes_a_request_for_what_is_missing_in_the_flavor_s_unit() {
        assert_eq!(shortfall("nvidia.com/gpu:h100", "16", Some("8")).as_deref(), Some("8"));
        assert_eq!(shortfall("nvidia.com/gpu:h100", "8", None).as_deref(), Some("8"));
        assert_eq!(shortfall("nvidia.com/gpu:h100", "8", Some("8")).as_deref(), Some("8"));
        assert_eq!(shortfall("nvidia.com/gpu:h100", "1", Some("0.50")).as_deref(), Some("0.5"));
        assert_eq!(shortfall("cpu", "12 cores", Some("2 cores")).as_deref(), Some("10"));
        assert_eq!(shortfall("memory", "64 GiB", Some("16 GiB")).as_deref(), Some("48Gi"));
        assert_eq!(shortfall("cpu", "lots", None), None);
        let j = waiting(serde_json::json!([{"phase": "quota", "message": "quota: queue q needs 4 …",
            "flavor": "nvidia.com/gpu:a100", "needed": "4", "left": "1"}]));
        let s = suggestions(&j);
        assert_eq!(s.len(), 1);
        // 90 minutes of runtime: a two-hour window; the namespace is the default one, so no -n.
        assert_eq!(
            s[0].command,
            "haiyun quota request --queue q --flavor nvidia.com/gpu:a100 --amount 3 --hours 2"
        );
    }

    #[test]
    fn a_job_short_of_quota_for_two_models_is_told_one_request_is_enough() {
        let j = waiting(serde_json::json!([
            {"phase": "quota", "message": "quota: queue q needs 8 nvidia.com/gpu:h100, 2 left",
             "flavor": "nvidia.com/gpu:h100", "needed": "8", "left": "2"},
            {"phase": "quota", "message": "quota: queue q needs 8 nvidia.com/gpu:a100, 0 left",
             "flavor": "nvidia.com/gpu:a100", "needed": "8", "left": "0"}
        ]));
        let s = suggestions(&j);
        assert_eq!(s.len(), 2);
        assert!(s[0].command.ends_with("--flavor nvidia.com/gpu:h100 --amount 6 --hours 2"), "{s:?}");
        assert!(s[1].command.ends_with("--flavor nvidia.com/gpu:a100 --amount 8 --hours 2"), "{s:?}");
        assert!(s.iter().all(|s| s.why.ends_with("(any one of these 2 requests is enough)")), "{s:?}");
    }

    #[test]
    fn data_pools_and_queues_suggest_the_commands_that_show_what_is_missing_once_each() {
        let j = waiting(serde_json::json!([
            {"phase": "data-clearance", "message": "data clearance: no pool is cleared for core data"},
            {"phase": "placement", "message": "pools: none of the pools it allows"},
            {"phase": "queue", "message": "queue q does not exist"},
            {"phase": "fairness", "message": "beyond the backfill depth"}
        ]));
        let commands: Vec<String> = suggestions(&j).into_iter().map(|s| s.command).collect();
        assert_eq!(commands, ["haiyun describe job j", "haiyun get pools", "haiyun get queues"]);
        let text = explain(&j);
        assert!(text.contains("Blocked at data-clearance: no pool is cleared for core data"), "{text}");
        assert!(text.contains("Run: haiyun get pools  # shows each pool's clearance"), "{text}");
    }

    #[test]
    fn a_row_after_the_table_lines_up_with_its_columns() {
        let w = widths(&["NAME", "PHASE"], &[vec!["short".into(), "Queued".into()]]);
        assert_eq!(line(&w, &["NAME", "PHASE"]), "NAME   PHASE\n");
        assert_eq!(line(&w, &["a", "Running"]), "a      Running\n");
        assert_eq!(line(&w, &["much-longer", "x"]), "much-longer  x\n");
    }
}
