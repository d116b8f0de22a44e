//! The simulated kubelet: it runs each admitted task as a pod that runs for the job's real work at the speed of the
//! GPUs it got, keeps the work up to the last checkpoint when a run is stopped, and marks pods Succeeded when the
//! work is done.

use std::collections::{BTreeMap, HashMap, HashSet};

use haiyun_api::job::Placement as ApiPlacement;
use haiyun_api::{ComputeJob, JOB_UID_LABEL};
use haiyun_scheduler::model::Time;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::ResourceExt;

use crate::backend::kubernetes::{PodError, pod_for};

/// Why the kubelet could not run a job.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// A pod could not be made from its job.
    #[error(transparent)]
    Pod(#[from] PodError),
}

/// One run of a job.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// When it started.
    since: Time,
    /// When its work is done.
    ends: Time,
    /// Work per second where it runs.
    rate: f64,
}

/// The pods the kubelet runs, and what each job's runs have done.
#[derive(Debug, Default)]
pub struct Kubelet {
    pods: BTreeMap<String, Pod>,
    /// Work (seconds at throughput 1) each job still needs, by uid; the estimate when unset.
    work: HashMap<String, f64>,
    runs: HashMap<String, Run>,
    /// The simulated clock, set by the shell at each cycle.
    now: Time,
}

fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

impl Kubelet {
    /// Its pods.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values()
    }

    /// Sets the job `uid`'s real work, seconds at throughput 1.
    pub fn set_work(&mut self, uid: &str, work: f64) {
        self.work.insert(uid.to_string(), work);
    }

    /// Moves the clock to `now` and marks the pods of runs whose work is done Succeeded.
    pub fn tick(&mut self, now: Time) {
        self.now = now;
        let due: Vec<String> =
            self.runs.iter().filter(|(_, r)| r.ends <= now).map(|(uid, _)| uid.clone()).collect();
        for uid in due {
            self.runs.remove(&uid);
            self.work.insert(uid.clone(), 0.0);
            for p in self.pods.values_mut().filter(|p| p.labels().get(JOB_UID_LABEL) == Some(&uid)) {
                p.status.get_or_insert_with(PodStatus::default).phase = Some("Succeeded".into());
            }
        }
    }

    /// Whether the job `uid` has a run going.
    pub fn running(&self, uid: &str) -> bool {
        self.runs.contains_key(uid)
    }

    /// Creates the run's pods, bound and running, and sets when its work is done; returns how many.
    pub fn start(&mut self, job: &ComputeJob, p: &ApiPlacement) -> Result<usize, KubeletError> {
        let now = self.now;
        let uid = job.uid().unwrap_or_default();
        let run = job.run().to_string();
        self.pods.retain(|_, pod| pod.labels().get(JOB_UID_LABEL) != Some(&uid));
        for (i, task) in p.tasks.iter().enumerate() {
            let mut pod = pod_for(job, i, task, &run)?;
            pod.metadata.uid = Some(format!("{uid}-{i}"));
            pod.metadata.creation_timestamp = crate::time::meta(now);
            if let Some(spec) = pod.spec.as_mut() {
                spec.node_name = Some(task.node.clone());
            }
            pod.status = Some(PodStatus { phase: Some("Running".into()), ..Default::default() });
            self.pods.insert(key(&pod), pod);
        }
        let rate = job
            .spec
            .task_groups
            .iter()
            .flat_map(|g| &g.gpu_models)
            .find(|c| c.model.eq_ignore_ascii_case(&p.gpu_model))
            .and_then(|c| c.throughput)
            .filter(|t| *t > 0.0)
            .unwrap_or(1.0);
        let left = self.work_left(job);
        self.runs.insert(uid, Run { since: now, ends: now + left / rate, rate });
        Ok(p.tasks.len())
    }

    /// Work the job still needs, seconds at throughput 1.
    fn work_left(&self, job: &ComputeJob) -> f64 {
        let uid = job.uid().unwrap_or_default();
        self.work.get(&uid).copied().unwrap_or_else(|| {
            let est = job.spec.runtime_estimate.as_deref().and_then(haiyun_api::quantity::seconds);
            est.map_or(crate::index::job::DEFAULT_RUNTIME_S, |s| s as f64)
        })
    }

    /// Stops a run: its pods go, and the work up to its last checkpoint is kept; returns how many pods went.
    pub fn stop(&mut self, job: &ComputeJob) -> usize {
        let uid = job.uid().unwrap_or_default();
        let run = self.runs.remove(&uid);
        let n = self.remove(&uid);
        if let Some(r) = run {
            let ran = (self.now - r.since).max(0.0);
            let saved = match job.spec.checkpoint_seconds {
                Some(c) if c > 0 => (ran / f64::from(c)).floor() * f64::from(c) * r.rate,
                _ => 0.0,
            };
            let left = (self.work_left(job) - saved).max(1.0);
            self.work.insert(uid, left);
        }
        n
    }

    /// Deletes the job `uid`'s pods and its run; returns how many pods went.
    pub fn remove(&mut self, uid: &str) -> usize {
        let before = self.pods.len();
        self.pods.retain(|_, p| p.labels().get(JOB_UID_LABEL).is_none_or(|u| u != uid));
        self.runs.remove(uid);
        before - self.pods.len()
    }

    /// Forgets the pods of finished jobs, and everything of jobs that are gone.
    pub fn prune(&mut self, finished: &HashSet<String>, live: &HashSet<String>) {
        self.pods.retain(|_, p| p.labels().get(JOB_UID_LABEL).is_none_or(|u| !finished.contains(u)));
        self.work.retain(|uid, _| live.contains(uid));
    }
}
