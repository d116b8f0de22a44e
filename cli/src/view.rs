//! What the CLI prints: tables of jobs, pools, queues and quota requests, a job's explanation, and `top`.

use std::fmt::Write;

use haiyun_api::{ComputeJob, ComputePool, Queue, QuotaRequest};
use kube::ResourceExt;

/// Renders rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn phase(j: &ComputeJob) -> String {
    j.status.as_ref().map_or("New".into(), |s| format!("{:?}", s.phase))
}

/// `haiyun get jobs`.
pub fn jobs(jobs: &[ComputeJob]) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let st = j.status.clone().unwrap_or_default();
            let gpus: u32 = j.spec.task_groups.iter().map(|g| g.replicas * g.gpus).sum();
            vec![
                j.name_any(),
                j.spec.queue.clone(),
                phase(j),
                gpus.to_string(),
                st.placement.map(|p| p.pool).unwrap_or_default(),
                st.estimated_start.unwrap_or_default(),
                st.pending_reasons.first().map(|r| r.message.clone()).unwrap_or_default(),
            ]
        })
        .collect();
    table(&["NAME", "QUEUE", "PHASE", "GPUS", "POOL", "EST. START", "REASON"], &rows)
}

/// `haiyun get pools`.
pub fn pools(pools: &[ComputePool]) -> String {
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            let st = p.status.clone().unwrap_or_default();
            let ready = st.conditions.iter().find(|c| c.type_ == "Ready");
            vec![
                p.name_any(),
                format!("{:?}", p.spec.kind).to_lowercase(),
                p.spec.backend.name().into(),
                p.spec.site.clone(),
                st.nodes.to_string(),
                st.gpus.to_string(),
                st.allocated_gpus.to_string(),
                ready.map_or(
                    "-".into(),
                    |c| if c.status == "True" { "yes".into() } else { c.message.clone() },
                ),
            ]
        })
        .collect();
    table(&["NAME", "KIND", "BACKEND", "SITE", "NODES", "GPUS", "ALLOCATED", "READY"], &rows)
}

/// `haiyun get queues`.
pub fn queues(queues: &[Queue]) -> String {
    let rows: Vec<Vec<String>> = queues
        .iter()
        .map(|q| {
            let st = q.status.clone().unwrap_or_default();
            let usage: Vec<String> = st
                .usage
                .iter()
                .map(|u| {
                    let borrowed = if u.borrowed == "0" {
                        String::new()
                    } else {
                        format!(" (+{} borrowed)", u.borrowed)
                    };
                    format!("{} {}/{}{borrowed}", u.flavor, u.used, u.quota)
                })
                .collect();
            vec![
                q.name_any(),
                q.spec.cohort.clone().unwrap_or_default(),
                st.pending.to_string(),
                st.admitted.to_string(),
                format!("{:.2}", st.gpu_hours),
                usage.join(", "),
            ]
        })
        .collect();
    table(&["NAME", "COHORT", "PENDING", "ADMITTED", "GPU-HOURS", "USAGE (USED/QUOTA)"], &rows)
}

/// `haiyun quota list`.
pub fn requests(requests: &[QuotaRequest]) -> String {
    let rows: Vec<Vec<String>> = requests
        .iter()
        .map(|r| {
            vec![
                r.name_any(),
                r.spec.queue.clone(),
                r.spec.flavor.clone(),
                r.spec.amount.clone(),
                r.spec.start.clone(),
                r.spec.end.clone(),
                r.status.as_ref().map_or("Pending".into(), |s| format!("{:?}", s.state)),
            ]
        })
        .collect();
    table(&["NAME", "QUEUE", "FLAVOR", "AMOUNT", "START", "END", "STATE"], &rows)
}

/// `haiyun explain JOB`: where it stands, what stops it phase by phase, what would help, and when it may start.
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
        let _ = writeln!(out, "Blocked at {}: {}", r.phase, r.message);
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
        if !detail.is_empty() {
            let _ = writeln!(out, "  shortfall: {}", detail.join(", "));
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
    out
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
                       "pendingReasons": [{"phase": "quota", "message": "team-a has 8 of 16 H100 left",
                                           "flavor": "nvidia.com/gpu:h100", "needed": "16", "left": "8",
                                           "cohortCanLend": "0"}]}
        }))
        .unwrap();
        let text = explain(&j);
        assert!(text.contains("Job ml/big in queue team-a: Queued"), "{text}");
        assert!(text.contains("Blocked at quota: team-a has 8 of 16 H100 left"), "{text}");
        assert!(text.contains("shortfall: flavor nvidia.com/gpu:h100, needs 16, 8 left, cohort can lend 0"));
        assert!(text.contains("To start sooner: a QuotaRequest"));
        assert!(text.contains("Estimated start: 2026-11-26T14:00:00Z"));
    }
}
