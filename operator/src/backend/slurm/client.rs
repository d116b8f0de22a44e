//! A typed client for slurmrestd (`/slurm/v0.0.38`): nodes, jobs, submit and cancel. Both of slurmrestd's error
//! shapes become [`SlurmError`]; the token never appears in a log or an error.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::jwt;

/// The OpenAPI plugin the client speaks.
pub const API: &str = "/slurm/v0.0.38";

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SlurmError {
    /// slurmrestd refused the credentials.
    #[error("slurmrestd refused the credentials for user {user} (HTTP 401): check the pool's token Secret")]
    Unauthorized {
        /// The user.
        user: String,
    },
    /// slurmrestd or slurmctld refused the call.
    #[error("slurmrestd answered HTTP {status} to {call}: {}", describe(errors))]
    Refused {
        /// The call.
        call: String,
        /// The HTTP status.
        status: u16,
        /// Slurm's errors: (code, message).
        errors: Vec<(i64, String)>,
    },
    /// The endpoint could not be reached, or the call timed out.
    #[error("failed to reach slurmrestd for {call}: {why}")]
    Unreachable {
        /// The call.
        call: String,
        /// What happened.
        why: String,
    },
    /// An answer that is not what v0.0.38 sends.
    #[error("failed to read slurmrestd's answer to {call}: {why}")]
    Decode {
        /// The call.
        call: String,
        /// What was wrong.
        why: String,
    },
}

fn describe(errors: &[(i64, String)]) -> String {
    if errors.is_empty() {
        return "no error given".into();
    }
    errors.iter().map(|(c, m)| format!("{m} (error {c})")).collect::<Vec<_>>().join("; ")
}

impl SlurmError {
    /// Whether the call may have had an effect and may succeed later (a 5xx or a lost answer).
    pub fn is_transient(&self) -> bool {
        match self {
            SlurmError::Unreachable { .. } => true,
            SlurmError::Refused { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// How the client proves who it is.
#[derive(Clone)]
pub enum Credential {
    /// A token minted elsewhere (`scontrol token`).
    Token(String),
    /// The cluster's JWT signing key: a short-lived token is minted per call.
    Key(Vec<u8>),
}

/// One node as Slurm reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct SlurmNode {
    /// Name.
    pub name: String,
    /// State (`idle`, `mixed`, `allocated`, `down`, `drained`, …).
    pub state: String,
    /// CPUs.
    pub cpus: u32,
    /// CPUs allocated.
    pub alloc_cpus: u32,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Memory allocated, MiB.
    pub alloc_memory_mib: u64,
    /// GPU type from GRES (`h100`), if typed.
    pub gpu_type: Option<String>,
    /// GPUs.
    pub gpus: u32,
    /// GPUs in use.
    pub gpus_used: u32,
    /// Partitions.
    pub partitions: Vec<String>,
    /// State flags (`DRAIN`, `MAINTENANCE`, …).
    pub flags: Vec<String>,
}

impl SlurmNode {
    /// Whether Slurm would start new work on it: up, and neither draining nor held for maintenance or reboot.
    pub fn usable(&self) -> bool {
        let s = self.state.to_lowercase();
        let up = ["idle", "mixed", "allocated"].iter().any(|ok| s == *ok);
        let held =
            ["DRAIN", "DRAINING", "DRAINED", "MAINTENANCE", "REBOOT_REQUESTED", "REBOOT_ISSUED", "FAIL"];
        up && !self.flags.iter().any(|f| held.contains(&f.to_uppercase().as_str()))
    }
}

/// One job as Slurm reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct SlurmJob {
    /// Id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// State (`PENDING`, `RUNNING`, `COMPLETED`, …).
    pub state: String,
    /// Why it is in that state.
    pub reason: String,
    /// The comment (our idempotency key).
    pub comment: String,
    /// The partition.
    pub partition: String,
    /// Its nodes (Slurm's hostlist, e.g. `n[1-2]`).
    pub nodes: String,
    /// Start, Unix seconds (0 when not started).
    pub start_time: i64,
    /// End, Unix seconds (the expected end while running).
    pub end_time: i64,
    /// When Slurm last changed it.
    pub update_time: i64,
    /// GPUs per node it holds, from its GRES detail.
    pub gpus: u32,
    /// The user it runs as.
    pub user: String,
}

/// What to submit.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    /// Job name.
    pub name: String,
    /// The batch script.
    pub script: String,
    /// Partition.
    pub partition: String,
    /// Nodes, and the node list when the scheduler chose them.
    pub nodes: u32,
    /// Exactly these nodes (Slurm's `nodelist`), when chosen.
    pub node_list: Vec<String>,
    /// GPUs per node and their type.
    pub gpus_per_node: u32,
    /// The GPU type (GRES type), when constrained.
    pub gpu_type: Option<String>,
    /// CPUs per node.
    pub cpus_per_node: u32,
    /// Memory per node, MiB.
    pub memory_per_node_mib: u64,
    /// Time limit, minutes.
    pub time_limit_min: u32,
    /// The idempotency key, carried in `comment`.
    pub key: String,
    /// Working directory.
    pub cwd: String,
    /// Environment (slurmrestd requires one).
    pub environment: BTreeMap<String, String>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::Token(_) => "Token(redacted)",
            Credential::Key(_) => "Key(redacted)",
        })
    }
}

/// The client.
#[derive(Clone)]
pub struct SlurmClient {
    http: reqwest::Client,
    base: String,
    user: String,
    credential: Credential,
}

impl std::fmt::Debug for SlurmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlurmClient")
            .field("base", &self.base)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

fn gres_gpus(gres: &str) -> (Option<String>, u32) {
    // "gpu:h100:8", "gpu:8", "gpu:h100:2(IDX:0-1)", "(null)", "gpu:h100:8(S:0),tmpfs:1"
    for item in gres.split(',') {
        let item = item.split('(').next().unwrap_or("");
        let parts: Vec<&str> = item.split(':').collect();
        match parts.as_slice() {
            ["gpu", n] => return (None, n.parse().unwrap_or(0)),
            ["gpu", t, n] => return (Some(t.to_string()), n.parse().unwrap_or(0)),
            _ => {}
        }
    }
    (None, 0)
}

/// An HTTP client whose calls give up after `timeout` (connecting after at most 5 s).
fn http(timeout: Duration) -> Result<reqwest::Client, SlurmError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .build()
        .map_err(|e| SlurmError::Unreachable { call: "setup".into(), why: e.to_string() })
}

fn unix_now() -> i64 {
    crate::time::now_ms() / 1000
}

#[derive(Deserialize)]
struct RawNode {
    name: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    cpus: u32,
    #[serde(default)]
    alloc_cpus: u32,
    #[serde(default)]
    real_memory: u64,
    #[serde(default)]
    alloc_memory: u64,
    #[serde(default)]
    gres: String,
    #[serde(default)]
    gres_used: String,
    #[serde(default)]
    partitions: Vec<String>,
    #[serde(default)]
    state_flags: Vec<String>,
}

#[derive(Deserialize)]
struct RawJob {
    job_id: u32,
    #[serde(default)]
    name: String,
    #[serde(default)]
    job_state: String,
    #[serde(default)]
    state_reason: String,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    partition: String,
    #[serde(default)]
    nodes: String,
    #[serde(default)]
    start_time: i64,
    #[serde(default)]
    end_time: i64,
    #[serde(default)]
    last_sched_evaluation: i64,
    #[serde(default)]
    gres_detail: Vec<String>,
    #[serde(default)]
    user_name: String,
}

impl SlurmClient {
    /// A client for slurmrestd at `endpoint` (e.g. `http://slurm:6820`), calling as `user`.
    pub fn new(endpoint: &str, user: &str, credential: Credential) -> Result<Self, SlurmError> {
        let http = http(Duration::from_secs(30))?;
        Ok(SlurmClient {
            http,
            base: format!("{}{API}", endpoint.trim_end_matches('/')),
            user: user.into(),
            credential,
        })
    }

    /// Sets the per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        if let Ok(http) = http(timeout) {
            self.http = http;
        }
        self
    }

    fn token(&self) -> String {
        match &self.credential {
            Credential::Token(t) => t.clone(),
            Credential::Key(k) => jwt::mint(k, &self.user, unix_now(), 300),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, SlurmError> {
        let name = format!("{method} {path}");
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("X-SLURM-USER-NAME", &self.user)
            .header("X-SLURM-USER-TOKEN", self.token());
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| SlurmError::Unreachable { call: name.clone(), why: e.to_string() })?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| SlurmError::Unreachable { call: name.clone(), why: e.to_string() })?;
        if status == 401 {
            return Err(SlurmError::Unauthorized { user: self.user.clone() });
        }
        let value: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) if status >= 400 => {
                let msg = text.trim().chars().take(300).collect::<String>();
                return Err(SlurmError::Refused { call: name, status, errors: vec![(0, msg)] });
            }
            Err(e) => return Err(SlurmError::Decode { call: name, why: e.to_string() }),
        };
        let errors = errors_of(&value);
        if status >= 400 || !errors.is_empty() {
            return Err(SlurmError::Refused { call: name, status, errors });
        }
        Ok(value)
    }

    /// Checks that slurmrestd and slurmctld answer.
    pub async fn ping(&self) -> Result<(), SlurmError> {
        self.call(reqwest::Method::GET, "/ping", None).await.map(|_| ())
    }

    /// Every node.
    pub async fn nodes(&self) -> Result<Vec<SlurmNode>, SlurmError> {
        let v = self.call(reqwest::Method::GET, "/nodes", None).await?;
        let raw: Vec<RawNode> = serde_json::from_value(v.get("nodes").cloned().unwrap_or(Value::Null))
            .map_err(|e| SlurmError::Decode { call: "GET /nodes".into(), why: e.to_string() })?;
        Ok(raw
            .into_iter()
            .map(|n| {
                let (gpu_type, gpus) = gres_gpus(&n.gres);
                SlurmNode {
                    name: n.name,
                    state: n.state,
                    cpus: n.cpus,
                    alloc_cpus: n.alloc_cpus,
                    memory_mib: n.real_memory,
                    alloc_memory_mib: n.alloc_memory,
                    gpu_type,
                    gpus,
                    gpus_used: gres_gpus(&n.gres_used).1,
                    partitions: n.partitions,
                    flags: n.state_flags,
                }
            })
            .collect())
    }

    /// The longest time limit of `partition` in minutes (`None`: unlimited).
    pub async fn time_limit(&self, partition: &str) -> Result<Option<u32>, SlurmError> {
        let v = self.call(reqwest::Method::GET, "/partitions", None).await?;
        let part = v
            .get("partitions")
            .and_then(Value::as_array)
            .and_then(|ps| ps.iter().find(|p| p.get("name").and_then(Value::as_str) == Some(partition)))
            .ok_or_else(|| SlurmError::Refused {
                call: "GET /partitions".into(),
                status: 404,
                errors: vec![(0, format!("partition {partition:?} does not exist"))],
            })?;
        let limit = part.get("max_time_limit").and_then(Value::as_i64).unwrap_or(-1);
        Ok(u32::try_from(limit).ok())
    }

    /// Jobs changed since `since` (Unix seconds), or every job Slurm still lists.
    pub async fn jobs(&self, since: Option<i64>) -> Result<Vec<SlurmJob>, SlurmError> {
        let path = match since {
            Some(t) => format!("/jobs?update_time={t}"),
            None => "/jobs".into(),
        };
        let v = self.call(reqwest::Method::GET, &path, None).await?;
        let raw: Vec<RawJob> = serde_json::from_value(v.get("jobs").cloned().unwrap_or(Value::Null))
            .map_err(|e| SlurmError::Decode { call: format!("GET {path}"), why: e.to_string() })?;
        Ok(raw
            .into_iter()
            .map(|j| SlurmJob {
                id: j.job_id,
                name: j.name,
                state: j.job_state,
                reason: j.state_reason,
                comment: j.comment.unwrap_or_default(),
                partition: j.partition,
                nodes: j.nodes,
                start_time: j.start_time,
                end_time: j.end_time,
                update_time: j.last_sched_evaluation,
                gpus: j.gres_detail.first().map_or(0, |g| gres_gpus(g).1),
                user: j.user_name,
            })
            .collect())
    }

    /// Submits once; returns the job id. A transient failure may still have created the job: use
    /// [`SlurmClient::submit_once`] unless the caller looks for the key itself.
    pub async fn submit(&self, s: &Submission) -> Result<u32, SlurmError> {
        let mut job = json!({
            "name": s.name,
            "partition": s.partition,
            "nodes": s.nodes,
            "time_limit": s.time_limit_min,
            "comment": s.key,
            "current_working_directory": s.cwd,
            "environment": s.environment,
            "memory_per_node": s.memory_per_node_mib,
            "cpus_per_task": s.cpus_per_node.max(1),
            "tasks_per_node": 1,
        });
        if s.gpus_per_node > 0 {
            let gpus = match &s.gpu_type {
                Some(t) => format!("{t}:{}", s.gpus_per_node),
                None => s.gpus_per_node.to_string(),
            };
            job["gpus_per_node"] = json!(gpus);
        }
        if !s.node_list.is_empty() {
            // v0.0.38 disables `required_nodes`; `nodelist` takes Slurm's comma-separated list.
            job["nodelist"] = json!(s.node_list.join(","));
        }
        let v = self
            .call(reqwest::Method::POST, "/job/submit", Some(&json!({"script": s.script, "job": job})))
            .await?;
        v.get("job_id")
            .and_then(Value::as_u64)
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| SlurmError::Decode { call: "POST /job/submit".into(), why: "no job_id".into() })
    }

    /// The job carrying `key`, if Slurm lists one.
    pub async fn find(&self, key: &str) -> Result<Option<SlurmJob>, SlurmError> {
        self.find_since(key, None).await
    }

    /// The job carrying `key` among jobs changed since `since` (Unix seconds; `None`: all jobs).
    pub async fn find_since(&self, key: &str, since: Option<i64>) -> Result<Option<SlurmJob>, SlurmError> {
        Ok(self.jobs(since).await?.into_iter().filter(|j| j.comment == key).max_by_key(|j| j.id))
    }

    /// Submits unless a job with the key exists (looked up first when `look_first`: skip it only when no earlier
    /// attempt can have been made, e.g. right after this process admitted the run); after a transient failure it
    /// looks for the key again before retrying, so a submission Slurm made but did not confirm is never made twice.
    /// `since` bounds each lookup to jobs changed since then (a job with the key was submitted after the run was
    /// admitted).
    pub async fn submit_once(
        &self,
        s: &Submission,
        attempts: u32,
        since: Option<i64>,
        look_first: bool,
    ) -> Result<u32, SlurmError> {
        if look_first {
            if let Some(j) = self.find_since(&s.key, since).await? {
                return Ok(j.id);
            }
        }
        let mut last = None;
        for attempt in 0..attempts.max(1) {
            match self.submit(s).await {
                Ok(id) => return Ok(id),
                Err(e) if e.is_transient() => {
                    tracing::warn!(key = %s.key, attempt, error = %e, "submission not confirmed; checking for it");
                    tokio::time::sleep(Duration::from_millis(500 << attempt.min(4))).await;
                    // Post again only when a lookup worked and found nothing: a failed lookup could hide the job.
                    if let Some(j) = self.find_since(&s.key, since).await? {
                        return Ok(j.id);
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last
            .unwrap_or(SlurmError::Unreachable { call: "POST /job/submit".into(), why: "no attempt".into() }))
    }

    /// Cancels a job (a job already gone is not an error).
    pub async fn cancel(&self, id: u32) -> Result<(), SlurmError> {
        match self.call(reqwest::Method::DELETE, &format!("/job/{id}"), None).await {
            Ok(_) => Ok(()),
            Err(SlurmError::Refused { errors, .. })
                if errors.iter().any(|(c, _)| *c == 2017 || *c == 2021) =>
            {
                Ok(()) // invalid job id (gone) or already completing
            }
            Err(e) => Err(e),
        }
    }
}

/// Both error shapes: `{"error", "error_code"}` and `{"description", "error_number", "error"}`.
fn errors_of(v: &Value) -> Vec<(i64, String)> {
    let Some(list) = v.get("errors").and_then(Value::as_array) else { return Vec::new() };
    list.iter()
        .map(|e| {
            let code =
                e.get("error_code").or_else(|| e.get("error_number")).and_then(Value::as_i64).unwrap_or(0);
            let msg = match (
                e.get("description").and_then(Value::as_str),
                e.get("error").and_then(Value::as_str),
            ) {
                (Some(d), Some(m)) if !d.is_empty() => format!("{m}: {d}"),
                (_, Some(m)) => m.to_string(),
                (Some(d), None) => d.to_string(),
                (None, None) => e.to_string(),
            };
            (code, msg)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_error_shapes_read_as_code_and_message() {
        let a = json!({"errors": [{"error": "environment must be set", "error_code": 2127}]});
        assert_eq!(errors_of(&a), vec![(2127, "environment must be set".to_string())]);
        let b = json!({"errors": [{"description": "Unable to find JobId=9", "error_number": 2017,
                                    "error": "Invalid job id specified", "source": "slurm_load_job"}]});
        assert_eq!(
            errors_of(&b),
            vec![(2017, "Invalid job id specified: Unable to find JobId=9".to_string())]
        );
        assert!(errors_of(&json!({"errors": []})).is_empty());
        let e = SlurmError::Refused { call: "POST /job/submit".into(), status: 500, errors: errors_of(&a) };
        assert_eq!(
            e.to_string(),
            "slurmrestd answered HTTP 500 to POST /job/submit: environment must be set (error 2127)"
        );
        assert!(e.is_transient());
    }

    #[test]
    fn gres_strings_give_type_and_count() {
        assert_eq!(gres_gpus("gpu:h100:8"), (Some("h100".into()), 8));
        assert_eq!(gres_gpus("gpu:h100:2(IDX:0-1)"), (Some("h100".into()), 2));
        assert_eq!(gres_gpus("gpu:4"), (None, 4));
        assert_eq!(gres_gpus("tmpfs:1,gpu:a100:8(S:0-1)"), (Some("a100".into()), 8));
        assert_eq!(gres_gpus("(null)"), (None, 0));
    }

    #[test]
    fn a_draining_or_down_node_takes_no_new_work() {
        let node = |state: &str, flags: &[&str]| SlurmNode {
            name: "n1".into(),
            state: state.into(),
            cpus: 8,
            alloc_cpus: 0,
            memory_mib: 1,
            alloc_memory_mib: 0,
            gpu_type: None,
            gpus: 0,
            gpus_used: 0,
            partitions: Vec::new(),
            flags: flags.iter().map(|f| f.to_string()).collect(),
        };
        assert!(node("idle", &[]).usable() && node("mixed", &[]).usable());
        assert!(!node("idle", &["DRAIN"]).usable());
        assert!(!node("down", &[]).usable());
    }

    #[test]
    fn the_token_is_never_in_debug_output() {
        let c = SlurmClient::new("http://x", "alice", Credential::Token("s3cret".into())).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
