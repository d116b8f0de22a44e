//! The decision log: one JSON object per line for every place, preempt, finish, reject and quota decision — the
//! audit trail, each line chained to the one before by its hash (see [`crate::audit`]).

use std::io::Write;
use std::sync::{Arc, Mutex};

use haiyun_api::ComputeJob;
use haiyun_api::job::Placement;
use serde::Serialize;

/// One task of a placement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskLine {
    /// The pod.
    pub pod: String,
    /// The node.
    pub node: String,
    /// GPU ids (`<node>/<index>`).
    pub gpus: Vec<String>,
    /// Thousandths of each GPU (1000: whole).
    pub gpu_milli: u32,
    /// CPU request (quantity), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory request (quantity), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// RFC 3339 time.
    pub time: String,
    /// `place`, `preempt`, `finish`, `reject` or `quota` (a QuotaRequest approved or denied).
    pub event: &'static str,
    /// `namespace/name` (of the QuotaRequest for `quota`).
    pub job: String,
    /// Its queue.
    pub queue: String,
    /// Who submitted it (its `spec.submittedBy`; empty where no policy stamps it).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub submitter: String,
    /// The pool (empty for reject).
    pub pool: String,
    /// GPU model (empty: CPU only or not placed).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gpu_model: String,
    /// Tasks (place only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskLine>,
    /// Datasets it reads.
    pub datasets: Vec<String>,
    /// Outcome or reason (finish: Succeeded/Failed; reject: why; quota: the verdict and what it grants).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Who decided (quota: the approving or denying user, `administrator` or `auto`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub by: String,
}

/// A request's verdict: `Approved` (whether its window has opened or closed), `Denied`, or none while it waits.
fn verdict(state: &haiyun_api::quota::RequestState) -> Option<&'static str> {
    use haiyun_api::quota::RequestState;
    match state {
        RequestState::Pending => None,
        RequestState::Denied => Some("Denied"),
        RequestState::Approved | RequestState::Active | RequestState::Expired => Some("Approved"),
    }
}

impl TaskLine {
    /// The line of a plain pod bound to `node` with `gpus`.
    pub fn of_pod(pod: &k8s_openapi::api::core::v1::Pod, node: &str, gpus: &[u32]) -> Self {
        let (cpu, mem, _) = crate::index::pod::pod_requests(pod);
        TaskLine {
            pod: kube::ResourceExt::name_any(pod),
            node: node.into(),
            gpus: gpus.iter().map(|j| format!("{node}/{j}")).collect(),
            gpu_milli: if gpus.is_empty() { 0 } else { 1000 },
            cpu: (cpu > 0).then(|| format!("{cpu}m")),
            memory: (mem > 0).then(|| format!("{mem}Mi")),
        }
    }
}

impl Decision {
    /// A line for a plain pod.
    pub fn for_pod(event: &'static str, pod: &k8s_openapi::api::core::v1::Pod, time: String) -> Self {
        Decision {
            time,
            event,
            job: crate::index::pod::key(pod),
            queue: kube::ResourceExt::labels(pod).get(haiyun_api::QUEUE_LABEL).cloned().unwrap_or_default(),
            submitter: String::new(),
            pool: String::new(),
            gpu_model: String::new(),
            tasks: Vec::new(),
            datasets: Vec::new(),
            detail: String::new(),
            by: String::new(),
        }
    }

    /// A line for `job` with `placement` (may be empty).
    pub fn new(event: &'static str, job: &ComputeJob, placement: Option<&Placement>, time: String) -> Self {
        let tasks = placement.map_or_else(Vec::new, |p| {
            p.tasks
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let g = job.spec.group_of_task(i).map(|(_, g)| g);
                    TaskLine {
                        pod: t.pod.clone(),
                        node: t.node.clone(),
                        gpus: t.gpus.iter().map(|j| format!("{}/{j}", t.node)).collect(),
                        gpu_milli: t.gpu_milli,
                        cpu: g.and_then(|g| g.cpu.clone()),
                        memory: g.and_then(|g| g.memory.clone()),
                    }
                })
                .collect()
        });
        Decision {
            time,
            event,
            job: crate::index::job::key(job),
            queue: job.spec.queue.clone(),
            submitter: job.spec.submitted_by.clone().unwrap_or_default(),
            pool: placement.map(|p| p.pool.clone()).unwrap_or_default(),
            gpu_model: placement.map(|p| p.gpu_model.clone()).unwrap_or_default(),
            tasks: if event == "place" { tasks } else { Vec::new() },
            datasets: job.spec.datasets.clone(),
            detail: String::new(),
            by: String::new(),
        }
    }

    /// The `quota` line of a QuotaRequest whose verdict `status` gives, if it is a decision its stored status has
    /// not recorded yet (approved or denied; the window opening or closing is not a decision).
    pub fn for_quota(
        request: &haiyun_api::QuotaRequest,
        status: &haiyun_api::QuotaRequestStatus,
        time: String,
    ) -> Option<Self> {
        let new = verdict(&status.state)?;
        if request.status.as_ref().and_then(|s| verdict(&s.state)) == Some(new) {
            return None;
        }
        let s = &request.spec;
        let by = match new {
            "Denied" => s.decided_by.clone().unwrap_or_else(|| "administrator".into()),
            _ => status.approved_by.clone(),
        };
        Some(Decision {
            time,
            event: "quota",
            job: format!(
                "{}/{}",
                kube::ResourceExt::namespace(request).unwrap_or_default(),
                kube::ResourceExt::name_any(request)
            ),
            queue: s.queue.clone(),
            submitter: String::new(),
            pool: String::new(),
            gpu_model: String::new(),
            tasks: Vec::new(),
            datasets: Vec::new(),
            detail: format!("{new}: {} {} from {} to {}", s.amount, s.flavor, s.start, s.end),
            by,
        })
    }

    /// With a detail.
    pub fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = d.into();
        self
    }

    /// The `place` line of an admission or a plain pod's binding, written once it has succeeded.
    pub fn placed(action: &crate::plan::Action, time: String) -> Option<Self> {
        use crate::plan::Action;
        match action {
            Action::Admit { job, placement, .. } => Some(Decision::new("place", job, Some(placement), time)),
            Action::BindPod { pod, pool, node, gpus } => {
                let mut line = Decision::for_pod("place", pod, time);
                line.pool.clone_from(pool);
                line.tasks = vec![TaskLine::of_pod(pod, node, gpus)];
                Some(line)
            }
            _ => None,
        }
    }
}

/// Where lines go: a file (appended, each line chained to the one before) or nowhere, and, with an OTLP endpoint, an
/// OpenTelemetry log record per line (the line as written, chain and all, as its body). Clones write to the same
/// file, a line at a time.
#[derive(Debug, Default, Clone)]
pub struct DecisionLog {
    out: Option<Arc<Mutex<Chain>>>,
    export: Option<opentelemetry_sdk::logs::SdkLogger>,
}

/// The file and where its chain stands, as of `len` bytes (another process that appended since is read first).
#[derive(Debug)]
struct Chain {
    file: std::fs::File,
    head: crate::audit::Head,
    len: u64,
}

/// Why the log could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum DecisionLogError {
    /// Opening failed.
    #[error("failed to open the decision log {path}: {source}")]
    Open {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Its last line could not be read to continue the chain.
    #[error("the decision log {path} cannot be continued: {source} (move it aside to start a new chain)")]
    Chain {
        /// The path.
        path: String,
        /// The cause.
        source: crate::audit::AuditError,
    },
}

/// A line as written: its place in the chain, then the decision.
#[derive(Serialize)]
struct Chained<'a> {
    seq: u64,
    prev: &'a str,
    #[serde(flatten)]
    decision: &'a Decision,
}

impl DecisionLog {
    /// Appends to `path` (None: discard), continuing the chain of what it holds.
    pub fn open(path: Option<&str>) -> Result<Self, DecisionLogError> {
        let Some(p) = path else { return Ok(DecisionLog::default()) };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(p)
            .map_err(|source| DecisionLogError::Open { path: p.into(), source })?;
        let head = crate::audit::resume(&mut f)
            .map_err(|source| DecisionLogError::Chain { path: p.into(), source })?;
        let len = f.metadata().map_err(|source| DecisionLogError::Open { path: p.into(), source })?.len();
        Ok(DecisionLog { out: Some(Arc::new(Mutex::new(Chain { file: f, head, len }))), export: None })
    }

    /// Also exports every line as an OpenTelemetry log record through `logger`.
    pub fn exporting(mut self, logger: Option<opentelemetry_sdk::logs::SdkLogger>) -> Self {
        self.export = logger;
        self
    }

    /// Exports one line (the event `haiyun.decision`, its body the line, its event, job and queue as attributes).
    fn export(&self, d: &Decision, line: &str) {
        use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, Severity};
        let Some(logger) = &self.export else { return };
        let mut record = logger.create_log_record();
        record.set_event_name("haiyun.decision");
        record.set_timestamp(std::time::SystemTime::now());
        record.set_severity_number(Severity::Info);
        record.set_severity_text("INFO");
        record.set_body(AnyValue::from(line.to_string()));
        record.add_attribute("haiyun.event", d.event);
        record.add_attribute("haiyun.job", d.job.clone());
        record.add_attribute("haiyun.queue", d.queue.clone());
        logger.emit(record);
    }

    /// Writes one line; a failed write is logged, never fatal (the chain goes on from the last line written). A
    /// replica that leads after another appended to the same file continues that one's chain.
    pub fn write(&self, d: &Decision) {
        let Some(out) = self.out.as_ref() else {
            // No file, so no chain: the decision alone.
            if self.export.is_some()
                && let Ok(body) = serde_json::to_string(d)
            {
                self.export(d, &body);
            }
            return;
        };
        let mut c = out.lock().unwrap_or_else(|p| p.into_inner());
        let len = c.file.metadata().map(|m| m.len()).unwrap_or(c.len);
        if len != c.len {
            match crate::audit::resume(&mut c.file) {
                Ok(head) => c.head = head,
                Err(e) => tracing::warn!(error = %e, "failed to read the decision log's last line"),
            }
        }
        let chained = Chained { seq: c.head.seq + 1, prev: &c.head.hash, decision: d };
        match serde_json::to_string(&chained) {
            Ok(body) => {
                let (line, next) = crate::audit::seal(&body, &c.head);
                // One write of the whole line, so that appends of two processes never interleave within a line.
                match c.file.write_all(format!("{line}\n").as_bytes()) {
                    Ok(()) => {
                        c.head = next;
                        c.len = c.file.metadata().map(|m| m.len()).unwrap_or(0);
                        self.export(d, &line);
                    }
                    Err(e) => tracing::warn!(error = %e, "failed to write the decision log"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "failed to serialise a decision"),
        }
    }
}
