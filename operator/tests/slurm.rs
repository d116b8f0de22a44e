//! The Slurm client against a real Slurm 22.05 (`testenv/slurm/slurm-up.sh`, started by `.ci/run`): inventory,
//! submit → PENDING → RUNNING → COMPLETED, cancel, both error shapes, a submit answered 500 or timed out retried
//! without a duplicate, and slurmctld restarted under a running job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use haiyun_operator::backend::slurm::{Credential, SlurmClient, SlurmError, Submission};

mod support;

use support::slurm::{Slurm, slurm};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn job(s: &Slurm, name: &str, script: &str, gpus: u32) -> Submission {
    Submission {
        name: name.into(),
        script: script.into(),
        partition: "batch".into(),
        nodes: 1,
        node_list: Vec::new(),
        gpus_per_node: gpus,
        gpu_type: Some("h100".into()),
        cpus_per_node: 1,
        memory_per_node_mib: 100,
        time_limit_min: 5,
        key: format!("haiyun-test-{name}-{}", std::process::id()),
        cwd: s.jobs_dir.clone(),
        environment: BTreeMap::from([("PATH".to_string(), "/usr/bin:/bin".to_string())]),
    }
}

async fn wait_state(c: &SlurmClient, id: u32, want: &str, limit: Duration) -> Vec<String> {
    let start = Instant::now();
    let mut seen: Vec<String> = Vec::new();
    loop {
        let j = c.jobs(None).await.unwrap().into_iter().find(|j| j.id == id);
        let state = j.map(|j| j.state).unwrap_or_else(|| "GONE".into());
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        if state == want {
            return seen;
        }
        assert!(start.elapsed() < limit, "job {id} never reached {want}: {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn nodes_jobs_submit_and_cancel_work_against_a_real_slurm_with_a_minted_token() {
    let Some(s) = slurm() else { return };
    let _serial = SERIAL.lock().await;
    let c = SlurmClient::new(&s.url, &s.user, Credential::Key(s.key.clone())).unwrap();
    c.ping().await.unwrap();
    let nodes = c.nodes().await.unwrap();
    assert_eq!(nodes.len(), 4);
    assert!(nodes.iter().all(|n| n.gpus == 8 && n.gpu_type.as_deref() == Some("h100") && n.cpus == 8));
    assert!(nodes.iter().all(|n| n.partitions == vec!["batch".to_string()]));

    let sub = job(&s, "lifecycle", "#!/bin/bash\necho gpus=$CUDA_VISIBLE_DEVICES\nsleep 2\n", 2);
    let id = c.submit_once(&sub, 3, None, true).await.unwrap();
    let trail = wait_state(&c, id, "COMPLETED", Duration::from_secs(60)).await;
    assert!(trail.contains(&"RUNNING".to_string()), "{trail:?}");
    let out = std::fs::read_to_string(format!("{}/slurm-{id}.out", s.jobs_dir)).unwrap_or_default();
    assert!(out.contains("gpus=0,1"), "the job saw its 2 GPUs: {out:?}");
    assert_eq!(c.find(&sub.key).await.unwrap().map(|j| j.id), Some(id), "found by its key");
    assert_eq!(c.submit_once(&sub, 3, None, true).await.unwrap(), id, "the same key never submits twice");

    let long = job(&s, "to-cancel", "#!/bin/bash\nsleep 300\n", 1);
    let id = c.submit_once(&long, 3, None, true).await.unwrap();
    wait_state(&c, id, "RUNNING", Duration::from_secs(30)).await;
    c.cancel(id).await.unwrap();
    wait_state(&c, id, "CANCELLED", Duration::from_secs(30)).await;
    c.cancel(id).await.unwrap();
    c.cancel(999_999).await.unwrap();
}

#[tokio::test]
async fn refusals_name_slurms_reason_and_bad_credentials_say_so() {
    let Some(s) = slurm() else { return };
    let _serial = SERIAL.lock().await;
    let c = SlurmClient::new(&s.url, &s.user, Credential::Token(s.token.clone())).unwrap();
    let mut bad = job(&s, "bad-partition", "#!/bin/bash\ntrue\n", 0);
    bad.partition = "nope".into();
    let e = c.submit(&bad).await.unwrap_err();
    assert!(e.to_string().contains("Invalid partition name specified (error 2000)"), "{e}");
    let mut none = job(&s, "no-env", "#!/bin/bash\ntrue\n", 0);
    none.environment.clear();
    let e = c.submit(&none).await.unwrap_err();
    assert!(e.to_string().contains("environment must be set"), "{e}");
    let forged = SlurmClient::new(&s.url, &s.user, Credential::Key(b"not the key".to_vec())).unwrap();
    let e = forged.nodes().await.unwrap_err();
    assert!(!e.to_string().contains(&s.token));
    assert!(matches!(e, SlurmError::Unauthorized { .. } | SlurmError::Refused { .. }), "{e}");
    let down = SlurmClient::new("http://127.0.0.1:9", &s.user, Credential::Token(s.token.clone())).unwrap();
    let e = down.ping().await.unwrap_err();
    assert!(matches!(e, SlurmError::Unreachable { .. }) && e.is_transient(), "{e}");
}

/// A proxy in front of slurmrestd that passes every call through but answers the first `fail` submissions with
/// a 500 (after Slurm made the job) or, with `hang`, never answers them.
async fn faulty_proxy(target: String, fail: u32, hang: bool) -> SocketAddr {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    let left = Arc::new(AtomicU32::new(fail));
    let http = reqwest::Client::new();
    let app =
        axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let (left, http, target) = (left.clone(), http.clone(), target.clone());
            async move {
                let mut req = http.request(method.clone(), format!("{target}{uri}")).body(body);
                for (k, v) in &headers {
                    if k != "host" {
                        req = req.header(k, v);
                    }
                }
                let resp = req.send().await.unwrap();
                let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
                let text = resp.text().await.unwrap();
                let submit = method == Method::POST && uri.path().ends_with("/job/submit");
                if submit
                    && left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
                {
                    if hang {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    return (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        r#"{"errors":[{"error":"Unexpected error","error_code":1}]}"#.to_string(),
                    );
                }
                (status, text)
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn a_submission_answered_500_or_timed_out_is_retried_without_a_duplicate() {
    let Some(s) = slurm() else { return };
    let _serial = SERIAL.lock().await;
    let direct = SlurmClient::new(&s.url, &s.user, Credential::Token(s.token.clone())).unwrap();
    for (name, hang) in [("answered-500", false), ("timed-out", true)] {
        let addr = faulty_proxy(s.url.clone(), 1, hang).await;
        let c = SlurmClient::new(&format!("http://{addr}"), &s.user, Credential::Token(s.token.clone()))
            .unwrap()
            .with_timeout(Duration::from_secs(3));
        let sub = job(&s, name, "#!/bin/bash\nsleep 1\n", 1);
        let since =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 - 60;
        let id = c.submit_once(&sub, 3, Some(since), false).await.unwrap();
        let same: Vec<u32> = direct
            .jobs(None)
            .await
            .unwrap()
            .into_iter()
            .filter(|j| j.comment == sub.key)
            .map(|j| j.id)
            .collect();
        assert_eq!(same, vec![id], "{name}: exactly one job carries the key");
    }
}

#[tokio::test]
async fn a_job_survives_slurmctld_restarted_with_sigterm() {
    let Some(s) = slurm() else { return };
    let _serial = SERIAL.lock().await;
    let c = SlurmClient::new(&s.url, &s.user, Credential::Token(s.token.clone())).unwrap();
    let sub = job(&s, "survivor", "#!/bin/bash\nfor i in $(seq 8); do sleep 1; done\necho survived\n", 1);
    let id = c.submit_once(&sub, 3, None, true).await.unwrap();
    wait_state(&c, id, "RUNNING", Duration::from_secs(30)).await;
    let pid = std::fs::read_to_string(format!("{}/run/slurmctld.pid", s.dir)).unwrap();
    let pid = pid.trim().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z') {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = c.ping().await.unwrap_err();
    assert!(e.is_transient(), "while slurmctld is down calls fail transiently: {e}");
    assert!(
        std::process::Command::new(format!("{}/bin/start-slurmctld.sh", s.dir)).status().unwrap().success()
    );
    wait_state(&c, id, "COMPLETED", Duration::from_secs(90)).await;
    let out = std::fs::read_to_string(format!("{}/slurm-{id}.out", s.jobs_dir)).unwrap_or_default();
    assert!(out.contains("survived"), "{out:?}");
}
