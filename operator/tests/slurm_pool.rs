//! A Slurm pool beside a Kubernetes pool under one queue, on testenv and a real Slurm 22.05: a mixed stream runs in
//! both, Slurm jobs are tracked to completion with GPU-hours counted to the queue, preemption and deletion cancel
//! in Slurm, and a pool whose slurmrestd is down takes nothing until it is back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use haiyun_api::{ComputeJob, ComputePool, Queue};
use haiyun_operator::backend::slurm::{Credential, SlurmClient};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};
use support::slurm::{Slurm, slurm};
use support::{Env, job, pool, queue, wait_for};

const LONG: Duration = Duration::from_secs(90);

/// What these tests ask of the test Slurm.
trait SlurmJobs {
    fn client(&self) -> SlurmClient;
    async fn job_of(&self, cj: &ComputeJob, run: u32) -> Option<haiyun_operator::backend::slurm::SlurmJob>;
    async fn wait_slurm_state(&self, cj: &ComputeJob, run: u32, want: &str);
}

impl SlurmJobs for Slurm {
    fn client(&self) -> SlurmClient {
        SlurmClient::new(&self.url, &self.user, Credential::Key(self.key.clone())).unwrap()
    }

    /// The Slurm job carrying a ComputeJob's key for its run.
    async fn job_of(&self, cj: &ComputeJob, run: u32) -> Option<haiyun_operator::backend::slurm::SlurmJob> {
        let key = haiyun_operator::backend::slurm::watch::key(cj.metadata.uid.as_deref().unwrap(), run);
        self.client().find(&key).await.unwrap()
    }

    async fn wait_slurm_state(&self, cj: &ComputeJob, run: u32, want: &str) {
        wait_for(
            &format!("Slurm job of {} run {run} {want}", cj.metadata.name.as_deref().unwrap()),
            LONG,
            || async { self.job_of(cj, run).await.filter(|j| j.state == want).map(|_| ()) },
        )
        .await;
    }
}

/// A Slurm ComputePool over the test cluster's `batch` partition, its key in Secret `slurm-key`.
async fn slurm_pool(env: &Env, s: &Slurm, name: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "slurm-key", "namespace": "default"},
        "data": {"jwt_key": base64(&s.key)}
    }))
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), "default");
    let _ = secrets.delete("slurm-key", &DeleteParams::default()).await;
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    env.create::<ComputePool>(json!({
        "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputePool",
        "metadata": {"name": name},
        "spec": {"kind": "hpc", "site": "dc1", "clearance": "public",
                 "backend": {"slurm": {"endpoint": s.url, "partition": "batch", "tokenSecret": "slurm-key",
                                       "user": s.user, "workingDirectory": s.jobs_dir}}}
    }))
    .await
    .unwrap();
}

fn base64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A batch job: one task group with a script, `gpus` GPUs on one node.
fn batch(name: &str, queue: &str, gpus: u32, script: &str, priority: i32) -> Value {
    json!({
        "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputeJob",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"queue": queue, "kind": "hpc-batch", "priority": priority, "preemptible": true,
                 "runtimeEstimate": "2m",
                 "taskGroups": [{"name": "main", "replicas": 1, "gpus": gpus, "script": script}]}
    })
}

fn pool_of(j: &ComputeJob) -> String {
    j.status.as_ref().and_then(|s| s.placement.as_ref()).map(|p| p.pool.clone()).unwrap_or_default()
}

#[tokio::test]
async fn a_queue_spanning_kubernetes_and_slurm_runs_a_mixed_stream_in_both_and_counts_gpu_hours() {
    let Some(s) = slurm() else { return };
    let Some(env) = Env::start("mixed").await else { return };
    env.nodes("k", 2, 8, "H100").await;
    env.create::<ComputePool>(pool(&env, "k8s-pool", "k", "public")).await.unwrap();
    slurm_pool(&env, &s, "hpc").await;
    env.create::<Queue>(queue("mixed", "nvidia.com/gpu:h100", 64)).await.unwrap();
    let op = env.operator("only", &["--slurm-poll-ms", "300"]);
    wait_for("the Slurm pool ready", LONG, || async {
        let p = Api::<ComputePool>::all(env.client.clone()).get("hpc").await.ok()?;
        (p.status?.gpus == 32).then_some(())
    })
    .await;
    for i in 0..2 {
        env.create::<ComputeJob>(job(&format!("train-{i}"), "mixed", 1, 8, "3s")).await.unwrap();
        env.create::<ComputeJob>(batch(&format!("sim-{i}"), "mixed", 8, "#!/bin/bash\nsleep 3\n", 0))
            .await
            .unwrap();
    }
    let mut hours = 0.0;
    for i in 0..2 {
        let t = env.wait_phase("default", &format!("train-{i}"), "Succeeded", LONG).await;
        assert_eq!(pool_of(&t), "k8s-pool");
        let b = env.wait_phase("default", &format!("sim-{i}"), "Succeeded", LONG).await;
        assert_eq!(pool_of(&b), "hpc");
        let st = b.status.clone().unwrap();
        assert!(st.placement.as_ref().unwrap().tasks[0].node.starts_with("hpc/n"), "{st:?}");
        assert!(st.gpu_hours >= 8.0 * 2.0 / 3600.0, "8 GPUs for ≥ 2 s: {}", st.gpu_hours);
        hours += st.gpu_hours;
        let sj = s.job_of(&b, 0).await.expect("Slurm lists the job by its key");
        assert_eq!(sj.state, "COMPLETED");
        let node = &st.placement.as_ref().unwrap().tasks[0].node;
        assert_eq!(Some(sj.nodes.as_str()), node.strip_prefix("hpc/"), "Slurm ran it where Haiyun placed it");
        let reasons = env.event_reasons("default", &format!("sim-{i}")).await;
        assert!(
            ["Admitted", "Running", "Succeeded"].iter().all(|r| reasons.iter().any(|x| x == r)),
            "{reasons:?}"
        );
    }
    wait_for("the queue's GPU-hours", LONG, || async {
        let q = Api::<Queue>::all(env.client.clone()).get("mixed").await.ok()?;
        (q.status?.gpu_hours >= hours - 1e-9).then_some(())
    })
    .await;
    drop(op);
}

#[tokio::test]
async fn preempting_or_deleting_a_slurm_placed_job_cancels_it_in_slurm() {
    let Some(s) = slurm() else { return };
    let Some(env) = Env::start("cancel").await else { return };
    slurm_pool(&env, &s, "hpc").await;
    env.create::<Queue>(queue("small", "nvidia.com/gpu:h100", 8)).await.unwrap();
    env.create::<Queue>(queue("other", "nvidia.com/gpu:h100", 8)).await.unwrap();
    let _op = env.operator("only", &["--slurm-poll-ms", "300"]);
    env.create::<ComputeJob>(batch("low", "small", 8, "#!/bin/bash\nsleep 300\n", 0)).await.unwrap();
    let low = env.wait_phase("default", "low", "Running", LONG).await;
    s.wait_slurm_state(&low, 0, "RUNNING").await;

    // A higher-priority job in the same 8-GPU queue preempts it: its Slurm job is cancelled.
    env.create::<ComputeJob>(batch("high", "small", 8, "#!/bin/bash\nsleep 2\n", 10)).await.unwrap();
    s.wait_slurm_state(&low, 0, "CANCELLED").await;
    env.wait_phase("default", "high", "Succeeded", LONG).await;
    let low = env.job("default", "low").await;
    assert!(low.status.as_ref().unwrap().preemptions >= 1);

    // Deleting a running job cancels its Slurm job.
    env.create::<ComputeJob>(batch("doomed", "other", 8, "#!/bin/bash\nsleep 300\n", 0)).await.unwrap();
    let doomed = env.wait_phase("default", "doomed", "Running", LONG).await;
    assert!(
        doomed.metadata.finalizers.as_ref().is_some_and(|f| f.iter().any(|f| f == "haiyun.io/slurm-job"))
    );
    s.wait_slurm_state(&doomed, 0, "RUNNING").await;
    let jobs: Api<ComputeJob> = Api::namespaced(env.client.clone(), "default");
    jobs.delete("doomed", &DeleteParams::default()).await.unwrap();
    s.wait_slurm_state(&doomed, 0, "CANCELLED").await;
    wait_for("the deleted job gone once its Slurm job is cancelled", LONG, || async {
        jobs.get_opt("doomed").await.unwrap().is_none().then_some(())
    })
    .await;
}

#[tokio::test]
// The restarted slurmrestd outlives the test, as the first one did; slurm-down.sh stops it by its pid file.
#[allow(clippy::zombie_processes)]
async fn a_pool_whose_slurmrestd_is_down_takes_nothing_and_recovers_by_itself() {
    let Some(s) = slurm() else { return };
    let Some(env) = Env::start("restd").await else { return };
    slurm_pool(&env, &s, "hpc").await;
    env.create::<Queue>(queue("q", "nvidia.com/gpu:h100", 32)).await.unwrap();
    let _op = env.operator("only", &["--slurm-poll-ms", "300"]);
    let pools: Api<ComputePool> = Api::all(env.client.clone());
    wait_for("the pool ready", LONG, || async {
        (pools.get("hpc").await.ok()?.status?.gpus == 32).then_some(())
    })
    .await;

    env.create::<ComputeJob>(batch("runner", "q", 8, "#!/bin/bash\nsleep 8\n", 0)).await.unwrap();
    let runner = env.wait_phase("default", "runner", "Running", LONG).await;
    s.wait_slurm_state(&runner, 0, "RUNNING").await;

    let pidfile = format!("{}/run/slurmrestd.pid", s.dir);
    let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_string();
    assert!(std::process::Command::new("kill").arg(&pid).status().unwrap().success());
    wait_for("the pool unavailable", LONG, || async {
        let c = pools.get("hpc").await.ok()?.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        (c.status == "False" && c.reason == "BackendUnavailable").then_some(c.message)
    })
    .await;
    env.create::<ComputeJob>(batch("waits", "q", 4, "#!/bin/bash\nsleep 1\n", 0)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let j = env.job("default", "waits").await;
    assert!(pool_of(&j).is_empty(), "nothing is dispatched to a pool that does not answer: {:?}", j.status);
    let r = env.job("default", "runner").await;
    assert_eq!(
        pool_of(&r),
        "hpc",
        "the running job keeps its place while its pool does not answer: {:?}",
        r.status
    );
    assert!(!matches!(r.status.as_ref().map(|s| s.phase), Some(haiyun_api::JobPhase::Failed)));

    // slurmrestd comes back: the pool recovers and the job runs there.
    let start = format!("{}/bin/start-slurmrestd.sh", s.dir);
    let log = std::fs::File::create(format!("{}/log/slurmrestd.log", s.dir)).unwrap();
    let child = std::process::Command::new(start)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::fs::write(&pidfile, child.id().to_string()).unwrap();
    wait_for("the pool ready again", LONG, || async {
        let c = pools.get("hpc").await.ok()?.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        (c.status == "True").then_some(())
    })
    .await;
    let j = env.wait_phase("default", "waits", "Succeeded", LONG).await;
    assert_eq!(pool_of(&j), "hpc");
    env.wait_phase("default", "runner", "Succeeded", LONG).await;
}

#[tokio::test]
async fn a_job_running_when_slurmctld_restarts_is_not_lost_and_not_submitted_twice() {
    let Some(s) = slurm() else { return };
    let Some(env) = Env::start("ctld").await else { return };
    slurm_pool(&env, &s, "hpc").await;
    env.create::<Queue>(queue("q", "nvidia.com/gpu:h100", 32)).await.unwrap();
    let _op = env.operator("only", &["--slurm-poll-ms", "300"]);
    env.create::<ComputeJob>(batch("steady", "q", 8, "#!/bin/bash\nsleep 10\necho done\n", 0)).await.unwrap();
    let steady = env.wait_phase("default", "steady", "Running", LONG).await;
    s.wait_slurm_state(&steady, 0, "RUNNING").await;

    let pid = std::fs::read_to_string(format!("{}/run/slurmctld.pid", s.dir)).unwrap().trim().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    while std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|st| !st.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        std::process::Command::new(format!("{}/bin/start-slurmctld.sh", s.dir)).status().unwrap().success()
    );

    let done = env.wait_phase("default", "steady", "Succeeded", LONG).await;
    assert_eq!(pool_of(&done), "hpc");
    let key = haiyun_operator::backend::slurm::watch::key(steady.metadata.uid.as_deref().unwrap(), 0);
    let same: Vec<u32> =
        s.client().jobs(None).await.unwrap().into_iter().filter(|j| j.comment == key).map(|j| j.id).collect();
    assert_eq!(same.len(), 1, "one Slurm job for the run: {same:?}");
}
