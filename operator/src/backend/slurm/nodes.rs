//! Slurm pools in the core's federation: each node of the pool's partition as `<pool>/<node>`, its GRES GPUs typed
//! by model; GPUs Slurm allocates to jobs we did not submit are held; each run of ours Slurm lists is recorded with
//! its state; and what Slurm runs for us that no placement covers is named for cancelling.

use haiyun_api::ComputePool;
use haiyun_scheduler::model::{Gpu, Health, Node as CoreNode, PoolId, Time};
use kube::ResourceExt;

use super::{SlurmJob, SlurmView, SlurmViews};
use crate::backend::{Live, Orphan};
use crate::index::cluster::{Claims, Federation, RunPhase, RunRecord, taken};

/// Memory per GPU assumed when Slurm does not say (MiB).
const GPU_MEMORY_MIB: u32 = 81_920;

/// The core node name of a Slurm node.
pub fn node_name(pool: &str, node: &str) -> String {
    format!("{pool}/{node}")
}

/// Adds each Slurm pool that has been reached: it runs batch scripts within its partition's time limit, its runs
/// are recorded, and its nodes join (those of a pool that does not answer keep their place but take nothing new).
pub fn contribute(pools: &[(PoolId, &ComputePool)], views: &SlurmViews, claims: &Claims, f: &mut Federation) {
    for (id, p) in pools {
        let name = p.name_any();
        f.scripts.insert(*id);
        let Some(view) = views.get(&name) else { continue };
        if let Some(limit) = view.time_limit_min {
            f.time_limits.insert(*id, limit);
        }
        f.run_keepers.insert(name.clone(), view.available.is_up());
        for (key, job) in &view.jobs {
            if let Some((uid, run)) = super::watch::parse_key(key) {
                f.runs.insert((uid.to_string(), run), record(job));
            }
        }
        add_nodes(f, *id, &name, view, claims, view.available.is_up());
    }
}

/// Adds the nodes of a Slurm pool; those of a pool that does not answer (`reachable` false) take nothing new.
fn add_nodes(f: &mut Federation, pool: u32, name: &str, view: &SlurmView, claims: &Claims, reachable: bool) {
    let mut nodes: Vec<_> = view.nodes.iter().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    for n in nodes {
        let core_name = node_name(name, &n.name);
        let (ours, ours_tasks) = claims.nodes.get(&core_name).copied().unwrap_or_default();
        let open = reachable && n.usable();
        if !open && ours_tasks == 0 {
            continue;
        }
        let count = n.gpus.min(haiyun_scheduler::model::MAX_GPUS_PER_NODE as u32);
        let model = n.gpu_type.as_deref().or(if count > 0 { Some("gpu") } else { None });
        let model = model.and_then(|m| f.cluster.models.intern(&m.to_lowercase()));
        let foreign = n.gpus_used.saturating_sub(ours.count_ones());
        let taken = taken(count, ours, 0, foreign);
        let rack = f.cluster.nodes.len() as u32;
        let gpus = match model {
            Some(model) => (0..count)
                .map(|j| {
                    let free = open && taken & (1 << j) == 0;
                    let health = if free { Health::Healthy } else { Health::Unknown };
                    Gpu { model, memory_mib: GPU_MEMORY_MIB, nvlink_domain: rack, health }
                })
                .collect(),
            None => Vec::new(),
        };
        f.add_node(CoreNode {
            name: core_name,
            pool,
            rack,
            cpu_milli: u64::from(n.cpus) * 1000,
            memory_mib: n.memory_mib,
            gpus,
            max_tasks: if open { n.cpus.max(1) } else { ours_tasks },
        });
    }
}

/// A Slurm job's state as a run record, with when it really ran once it started.
pub fn record(j: &SlurmJob) -> RunRecord {
    let phase = match j.state.as_str() {
        s if WAITING.contains(&s) => RunPhase::Waiting,
        s if HOLDING.contains(&s) => RunPhase::Holding,
        "COMPLETED" => RunPhase::Succeeded,
        _ => RunPhase::Failed, // FAILED, CANCELLED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, PREEMPTED, …
    };
    let times = (j.start_time > 0).then_some((j.start_time as Time, j.end_time as Time));
    RunRecord { phase, times }
}

/// Slurm jobs of ours to cancel: duplicates of a submission, and runs whose ComputeJob is gone, holds no placement,
/// or has moved on to a later run. A key for a later run than the cache shows is our own fresh submission: it is
/// left alone.
pub fn orphans(views: &SlurmViews, live: &Live) -> Vec<Orphan> {
    let mut out = Vec::new();
    for (pool, view) in views {
        for j in view.extra.iter().filter(|j| active(j)) {
            let uid = super::watch::parse_key(&j.comment).map(|(u, _)| u.to_string()).unwrap_or_default();
            out.push(Orphan::Batch { pool: pool.clone(), id: j.id, key: j.comment.clone(), uid });
        }
        for (key, job) in &view.jobs {
            let Some((uid, run)) = super::watch::parse_key(key) else { continue };
            if !active(job) {
                continue;
            }
            let current = live.runs.get(uid).copied();
            let keep = live.placed.contains(uid) && current.is_some_and(|c| run >= c);
            if !keep {
                let uid = uid.to_string();
                out.push(Orphan::Batch { pool: pool.clone(), id: job.id, key: key.clone(), uid });
            }
        }
    }
    out
}

/// States of a job that waits in Slurm (held ones included: they may still start).
const WAITING: [&str; 9] = [
    "PENDING",
    "CONFIGURING",
    "SUSPENDED",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "SPECIAL_EXIT",
    "RESV_DEL_HOLD",
    "RESIZING",
];
/// States of a job that holds its nodes.
const HOLDING: [&str; 5] = ["RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "STOPPED"];

/// Whether Slurm still holds resources for the job, or may start it.
pub fn active(job: &SlurmJob) -> bool {
    WAITING.contains(&job.state.as_str()) || HOLDING.contains(&job.state.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::slurm::SlurmNode;
    use crate::index::PodCounts;
    use std::collections::HashMap;

    fn slurm_node(name: &str, state: &str, used: u32) -> SlurmNode {
        SlurmNode {
            name: name.into(),
            state: state.into(),
            cpus: 8,
            alloc_cpus: 0,
            memory_mib: 16_000,
            alloc_memory_mib: 0,
            gpu_type: Some("H100".into()),
            gpus: 8,
            gpus_used: used,
            partitions: vec!["batch".into()],
            flags: Vec::new(),
        }
    }

    #[test]
    fn slurm_nodes_join_their_pool_and_gpus_others_hold_are_not_free() {
        let view = SlurmView {
            available: crate::backend::slurm::Availability::Answering,
            nodes: vec![
                slurm_node("n2", "mixed", 3),
                slurm_node("n1", "idle", 0),
                slurm_node("n3", "down", 0),
            ],
            jobs: HashMap::new(),
            extra: Vec::new(),
            time_limit_min: None,
        };
        let mut claims = Claims::default();
        claims.hold("hpc/n2", &[0], "ns/x".into(), Some("0".into()));
        let mut f = Federation::default();
        add_nodes(&mut f, 0, "hpc", &view, &claims, true);
        let names: Vec<&str> = f.cluster.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, vec!["hpc/n1", "hpc/n2"], "the down node takes nothing and holds nothing of ours");
        let n2 = &f.cluster.nodes[1];
        let free = n2.gpus.iter().filter(|g| g.health == Health::Healthy).count();
        // 3 used in Slurm, 1 of them ours (GPU 0, held by our claim, not here): 2 foreign from the top.
        assert_eq!(free, 6);
        assert_eq!(n2.gpus[7].health, Health::Unknown);
        assert_eq!(f.cluster.models.lookup("h100"), Some(n2.gpus[0].model));
    }

    #[test]
    fn slurm_states_read_as_task_counts() {
        let job = |state: &str| SlurmJob {
            id: 1,
            name: String::new(),
            state: state.into(),
            reason: String::new(),
            comment: String::new(),
            partition: String::new(),
            nodes: String::new(),
            start_time: 0,
            end_time: 0,
            update_time: 0,
            gpus: 0,
            user: String::new(),
        };
        let counts = |j: Option<&SlurmJob>, n| PodCounts::of_run(j.map(record).as_ref(), n);
        assert_eq!(counts(None, 2).total, 0);
        assert_eq!(counts(Some(&job("PENDING")), 2), PodCounts { total: 2, bound: 2, ..Default::default() });
        assert_eq!(counts(Some(&job("RUNNING")), 2).running, 2);
        assert_eq!(counts(Some(&job("COMPLETED")), 2).succeeded, 2);
        assert_eq!(counts(Some(&job("TIMEOUT")), 2).failed, 2);
        assert!(active(&job("PENDING")) && !active(&job("CANCELLED")));
        assert_eq!(counts(Some(&job("STOPPED")), 2).running, 2, "a stopped job holds its nodes");
        assert_eq!(counts(Some(&job("REQUEUE_HOLD")), 2).failed, 0, "a held job may still start");
        assert!(active(&job("STOPPED")) && active(&job("SPECIAL_EXIT")));
    }
}
