//! Scheduling behaviour: quota and grants, clearance and locality, backfill, preemption, reclaim, hints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use haiyun_scheduler::model::{
    Classification, Cluster, Dataset, GpuModels, Job, ModelSet, Pool, PoolKind, Work,
};
use haiyun_scheduler::queue::{Flavor, Grant, Ordering, QueueSpec, Quotas, Resources, WithinQueue};
use haiyun_scheduler::schedule::{PendingReason, Phase, Scheduler, SchedulerConfig};
use haiyun_scheduler::testing::{node, task};
use haiyun_scheduler::{PolicyName, Topology};

/// Pool 0 "ai" (H100 nodes, clearance internal) and pool 1 "base" (A100 nodes, clearance core).
fn federation(h100_nodes: usize, a100_nodes: usize) -> Cluster {
    let mut models = GpuModels::default();
    let (h, a) = (models.intern("H100").unwrap(), models.intern("A100").unwrap());
    let pools = vec![
        Pool {
            name: "ai".into(),
            kind: PoolKind::Ai,
            site: "sh".into(),
            clearance: Classification::Internal,
        },
        Pool { name: "base".into(), kind: PoolKind::Ai, site: "bj".into(), clearance: Classification::Core },
    ];
    let mut nodes = Vec::new();
    for i in 0..h100_nodes {
        nodes.push(node().name(&format!("h{i}")).cpu(128_000).gpus(8, h).nvlink(i as u32).pool(0).build());
    }
    for i in 0..a100_nodes {
        nodes.push(
            node()
                .name(&format!("a{i}"))
                .cpu(128_000)
                .gpus(8, a)
                .nvlink(100 + i as u32)
                .pool(1)
                .rack(1)
                .build(),
        );
    }
    Cluster { models, pools, nodes, node_sets: Default::default() }
}

fn gpus(model: u8, n: u64) -> Resources {
    Resources::default().with(Flavor::Gpu(model), n * 1000)
}

fn job(name: &str, queue: u32, n_gpus: u32, seconds: f64, at: f64) -> Job {
    Job {
        name: name.into(),
        queue,
        priority: 0,
        submitted: at,
        gang: task().cpu(1000).gpus(n_gpus, 1000).gang(1, Topology::Any),
        work: Work::seconds(seconds),
        datasets: Vec::new(),
        pools: Vec::new(),
        preemptible: true,
        checkpoint_s: Some(600.0),
        user: None,
    }
}

fn scheduler(cluster: Cluster, queues: Vec<QueueSpec>) -> Scheduler {
    let mut quotas = Quotas::default();
    for q in queues {
        quotas.add(q).unwrap();
    }
    let config =
        SchedulerConfig { policy: PolicyName::Bestfit, upgrades: false, ..SchedulerConfig::default() };
    Scheduler::new(cluster, quotas, config, None).unwrap()
}

fn big_quota() -> Resources {
    gpus(0, 1000).with(Flavor::Gpu(1), 1_000_000).with(Flavor::Cpu, 1 << 40).with(Flavor::Memory, 1 << 40)
}

#[test]
fn quota_blocks_a_job_naming_the_queue_and_shortfall_and_a_grant_starts_it_until_it_lapses() {
    let mut s = scheduler(
        federation(2, 0),
        vec![QueueSpec::new("team-a", gpus(0, 8).with(Flavor::Cpu, 1 << 30).with(Flavor::Memory, 1 << 30))],
    );
    let a = s.submit(job("a", 0, 8, 1000.0, 0.0)).unwrap();
    let b = s.submit(job("b", 0, 8, 1000.0, 0.0)).unwrap();
    s.cycle(0.0).unwrap();
    assert_eq!(s.status(a).unwrap().phase, Phase::Running);
    assert_eq!(s.status(b).unwrap().phase, Phase::Pending);
    let why = s.explain(b);
    assert!(
        why.iter().any(|l| l == "quota: queue team-a needs 8 nvidia.com/gpu:H100, 0 left, cohort can lend 0"),
        "{why:?}"
    );
    assert_eq!(s.status(b).unwrap().estimated_start, Some(1000.0), "when a's quota frees");
    s.quotas_mut().grant(Grant { queue: 0, flavor: Flavor::Gpu(0), amount: 8000, start: 10.0, end: 20.0 });
    s.cycle(10.0).unwrap();
    assert_eq!(s.status(b).unwrap().phase, Phase::Running);
    let c = s.submit(job("c", 0, 1, 10.0, 30.0)).unwrap();
    s.cycle(30.0).unwrap();
    assert_eq!(s.status(c).unwrap().phase, Phase::Pending, "the grant lapsed: 16 of 8 GPUs in use");
}

#[test]
fn a_job_reading_core_data_runs_only_in_a_cleared_pool_and_says_why_it_waits() {
    let mut s = scheduler(federation(1, 1), vec![QueueSpec::new("q", big_quota())]);
    let core = s.add_dataset(Dataset {
        name: "census".into(),
        size_mib: 1,
        classification: Classification::Core,
        replicas: vec![1],
    });
    let blocker = s.submit(job("blocker", 0, 8, 500.0, 0.0)).unwrap();
    let mut j = job("reader", 0, 8, 100.0, 0.0);
    j.datasets = vec![core];
    s.cycle(0.0).unwrap();
    assert_eq!(s.placement(blocker).unwrap().1, 0, "bestfit puts the blocker in the first pool");
    let reader = s.submit(j).unwrap();
    let taken = s.submit(job("taker", 0, 8, 100.0, 0.0)).unwrap();
    s.cycle(0.0).unwrap();
    assert_eq!(s.placement(reader).map(|p| p.1), Some(1), "only the core-cleared pool");
    assert_eq!(s.status(taken).unwrap().phase, Phase::Pending);
    let mut never = job("never", 0, 1, 1.0, 0.0);
    let secret = s.add_dataset(Dataset {
        name: "x".into(),
        size_mib: 1,
        classification: Classification::Core,
        replicas: vec![],
    });
    never.datasets = vec![secret];
    let mut s2 = scheduler(federation(1, 0), vec![QueueSpec::new("q", big_quota())]);
    let d = s2.add_dataset(Dataset {
        name: "x".into(),
        size_mib: 1,
        classification: Classification::Core,
        replicas: vec![],
    });
    never.datasets = vec![d];
    let n = s2.submit(never).unwrap();
    s2.cycle(0.0).unwrap();
    assert_eq!(
        s2.status(n).unwrap().reasons,
        vec![PendingReason::DataClearance { needs: Classification::Core }]
    );
    assert!(s2.explain(n)[0].starts_with("data clearance: no pool is cleared for core data"));
}

#[test]
fn core_data_never_leaves_the_pools_holding_a_replica_even_when_a_cleared_pool_is_free() {
    // Both pools are cleared for core data; only pool 1 holds the dataset, and a blocker fills it.
    let mut c = federation(1, 1);
    c.pools[0].clearance = Classification::Core;
    let mut s = scheduler(c, vec![QueueSpec::new("q", big_quota())]);
    let census = s.add_dataset(Dataset {
        name: "census".into(),
        size_mib: 1,
        classification: Classification::Core,
        replicas: vec![1],
    });
    let mut blocker = job("blocker", 0, 8, 100.0, 0.0);
    blocker.pools = vec![1];
    let blocker = s.submit(blocker).unwrap();
    s.cycle(0.0).unwrap();
    assert_eq!(s.placement(blocker).map(|p| p.1), Some(1));
    let mut reader = job("reader", 0, 8, 100.0, 0.0);
    reader.datasets = vec![census];
    let reader = s.submit(reader).unwrap();
    s.cycle(1.0).unwrap();
    assert_eq!(
        s.status(reader).unwrap().phase,
        Phase::Pending,
        "pool 0 is free and cleared but holds no replica"
    );
    s.finish(blocker, 100.0).unwrap();
    s.cycle(100.0).unwrap();
    assert_eq!(s.placement(reader).map(|p| p.1), Some(1), "it runs where its core data is");
}

#[test]
fn placement_prefers_the_pool_holding_the_data_and_otherwise_charges_the_transfer() {
    let mut c = federation(1, 1);
    c.pools[0].clearance = Classification::Core;
    let mut s = scheduler(c, vec![QueueSpec::new("q", big_quota())]);
    let d = s.add_dataset(Dataset {
        name: "weights".into(),
        size_mib: 3_600_000,
        classification: Classification::Public,
        replicas: vec![1],
    });
    let mut j = job("j", 0, 1, 100.0, 0.0);
    j.gang.tasks[0].models = ModelSet::ANY;
    j.datasets = vec![d];
    let id = s.submit(j).unwrap();
    s.cycle(0.0).unwrap();
    assert_eq!(s.placement(id).unwrap().1, 1, "a 3.4 TiB transfer (an hour at 1 GiB/s) outweighs nothing");
}

#[test]
fn backfill_lets_short_jobs_use_the_hole_but_never_delays_the_reserved_head() {
    let mut s = scheduler(federation(1, 0), vec![QueueSpec::new("q", big_quota())]);
    s.submit(job("running", 0, 4, 100.0, 0.0)).unwrap();
    s.cycle(0.0).unwrap();
    let head = s.submit(job("head", 0, 8, 100.0, 1.0)).unwrap();
    let long = s.submit(job("long", 0, 1, 500.0, 2.0)).unwrap();
    let short = s.submit(job("short", 0, 1, 50.0, 3.0)).unwrap();
    s.cycle(10.0).unwrap();
    assert_eq!(
        s.status(short).unwrap().phase,
        Phase::Running,
        "ends at 60, before the head's reservation at 100"
    );
    assert_eq!(s.status(long).unwrap().phase, Phase::Pending, "would still run at 100");
    assert_eq!(s.status(head).unwrap().estimated_start, Some(100.0));
    assert_eq!(s.status(long).unwrap().estimated_start, Some(200.0), "after the head");
}

#[test]
fn a_higher_priority_job_evicts_the_victims_that_lose_least_and_they_keep_checkpointed_work() {
    let mut s = scheduler(federation(1, 0), vec![QueueSpec::new("q", big_quota())]);
    let old = s.submit(job("old", 0, 4, 10_000.0, 0.0)).unwrap();
    s.cycle(0.0).unwrap();
    let young = s.submit(job("young", 0, 4, 10_000.0, 550.0)).unwrap();
    s.cycle(550.0).unwrap();
    let mut urgent = job("urgent", 0, 4, 100.0, 700.0);
    urgent.priority = 10;
    let u = s.submit(urgent).unwrap();
    let c = s.cycle(700.0).unwrap();
    assert_eq!(c.preempted, vec![old], "old checkpointed at 600 (loses 100 s); young would lose 150 s");
    assert_eq!(s.status(u).unwrap().phase, Phase::Running);
    assert_eq!(s.status(young).unwrap().phase, Phase::Running);
    assert_eq!(s.remaining(old), Some(10_000.0 - 600.0));
    assert_eq!(s.status(old).unwrap().preemptions, 1);
}

#[test]
fn a_queue_reclaims_the_quota_it_lent_but_a_borrower_cannot_reclaim_back() {
    let mut a = QueueSpec::new("a", gpus(0, 8).with(Flavor::Cpu, 1 << 30).with(Flavor::Memory, 1 << 30));
    let mut b = QueueSpec::new("b", gpus(0, 8).with(Flavor::Cpu, 1 << 30).with(Flavor::Memory, 1 << 30));
    a.cohort = Some("lab".into());
    b.cohort = Some("lab".into());
    let mut s = scheduler(federation(2, 0), vec![a, b]);
    let borrower = s.submit(job("borrower", 1, 8, 10_000.0, 0.0)).unwrap();
    let own = s.submit(job("own", 1, 8, 10_000.0, 0.0)).unwrap();
    s.cycle(0.0).unwrap();
    assert!(s.quotas().is_borrowing(1, 0.0));
    let back = s.submit(job("back", 0, 8, 100.0, 600.0)).unwrap();
    let c = s.cycle(600.0).unwrap();
    assert_eq!(c.preempted.len(), 1);
    assert_eq!(s.status(back).unwrap().phase, Phase::Running);
    assert_eq!(
        s.status(borrower).unwrap().phase == Phase::Running,
        s.status(own).unwrap().phase != Phase::Running
    );
    let c = s.cycle(601.0).unwrap();
    assert!(c.preempted.is_empty(), "b is within its nominal again: nothing to reclaim, no ping-pong");
}

#[test]
fn a_job_within_its_queues_quota_starts_before_a_borrower_ahead_of_it_so_nothing_is_taken_back() {
    let res = |h: u64| gpus(0, h).with(Flavor::Cpu, 1 << 30).with(Flavor::Memory, 1 << 30);
    let mut own = QueueSpec::new("own", res(8));
    let mut other = QueueSpec::new("other", res(0));
    own.cohort = Some("lab".into());
    other.cohort = Some("lab".into());
    let mut s = scheduler(federation(1, 0), vec![own, other]);
    let mut urgent = job("urgent-borrower", 1, 8, 100_000.0, 0.0);
    urgent.priority = 5;
    let borrower = s.submit(urgent).unwrap();
    let owner = s.submit(job("owner", 0, 8, 100_000.0, 1.0)).unwrap();
    s.cycle(1.0).unwrap();
    assert_eq!(
        s.status(owner).unwrap().phase,
        Phase::Running,
        "its own quota, though the order puts it second"
    );
    assert_eq!(s.status(borrower).unwrap().phase, Phase::Pending);
    assert!(s.cycle(2.0).unwrap().preempted.is_empty(), "nothing to take back");
}

#[test]
fn a_queue_short_of_its_quota_of_one_model_gives_none_of_it_back_for_borrowing_another() {
    // "one" and "two" are each promised 5 of the 8 H100s and borrow the lender's A100s. Each holds 4 H100s and
    // wants a fifth: neither lends H100s, so neither takes the other's, though each borrows (A100s).
    let res = |h: u64, a: u64| {
        gpus(0, h).with(Flavor::Gpu(1), a * 1000).with(Flavor::Cpu, 1 << 30).with(Flavor::Memory, 1 << 30)
    };
    let queues: Vec<QueueSpec> = [("one", res(5, 0)), ("two", res(5, 0)), ("lender", res(0, 8))]
        .into_iter()
        .map(|(name, nominal)| {
            let mut q = QueueSpec::new(name, nominal);
            q.cohort = Some("lab".into());
            q
        })
        .collect();
    let mut s = scheduler(federation(1, 1), queues);
    let pinned = |name: &str, queue: u32, n: u32, model: u8| {
        let mut j = job(name, queue, n, 100_000.0, 0.0);
        j.gang.tasks[0].models = ModelSet::one(model);
        j
    };
    for q in 0..2 {
        s.submit(pinned(&format!("a100-{q}"), q, 4, 1)).unwrap();
    }
    for i in 0..5 {
        for q in 0..2 {
            s.submit(pinned(&format!("h100-{q}-{i}"), q, 1, 0)).unwrap();
        }
    }
    s.cycle(0.0).unwrap();
    assert!(s.quotas().is_borrowing(0, 0.0) && s.quotas().is_borrowing(1, 0.0), "both borrow A100s");
    assert_eq!(s.running().count(), 10, "8 H100 jobs and 2 A100 jobs");
    for t in 1..=10 {
        let c = s.cycle(f64::from(t)).unwrap();
        assert!(c.preempted.is_empty(), "cycle at {t} s moved {:?}", c.preempted);
    }
}

#[test]
fn a_job_pinned_to_a_busy_model_is_told_another_model_would_start_it_sooner() {
    let mut s = scheduler(federation(1, 1), vec![QueueSpec::new("q", big_quota())]);
    s.submit(job("busy", 0, 8, 3000.0, 0.0)).unwrap();
    s.cycle(0.0).unwrap();
    let mut pinned = job("pinned", 0, 8, 100.0, 0.0);
    pinned.gang.tasks[0].models = ModelSet::one(0);
    let id = s.submit(pinned).unwrap();
    s.cycle(0.0).unwrap();
    let why = s.explain(id);
    assert!(why.iter().any(|l| l == "accepting A100 would start it ~50 min earlier"), "{why:?}");
    let held = "reservation: needs 8 nvidia.com/gpu:H100 in pool ai, 0 free now; it may start in ~50 min";
    assert!(why.iter().any(|l| l == held), "{why:?}");
}

#[test]
fn in_a_shortest_first_queue_a_big_job_starts_within_its_aging_bound_despite_a_stream_of_small_ones() {
    let mut spec = QueueSpec::new("q", big_quota());
    spec.ordering = Ordering::ShortestFirst;
    spec.within_queue = WithinQueue::LowerPriority;
    let mut s = scheduler(federation(1, 0), vec![spec]);
    let big = s.submit(job("big", 0, 8, 3600.0, 0.0)).unwrap();
    let mut t = 0.0;
    let mut small = 0;
    // Three 1-GPU jobs of 10 min arrive every 5 min (6 of 8 GPUs busy on average): the node is never empty
    // unless the scheduler holds it for the big job.
    while s.status(big).unwrap().phase == Phase::Pending && t < 400_000.0 {
        for _ in 0..3 {
            s.submit(job(&format!("s{small}"), 0, 1, 600.0, t)).unwrap();
            small += 1;
        }
        for id in s.running().collect::<Vec<_>>() {
            let st = s.status(id).unwrap();
            if st.estimated_end.is_some_and(|e| e <= t) {
                s.finish(id, t).unwrap();
            }
        }
        s.cycle(t).unwrap();
        t += 300.0;
    }
    // Area 8 x 3600 GPU-s outranks a fresh 600 GPU-s job after (28800 - 600) / 0.15 s; then it waits for at
    // most the 600 s runs ahead of it, and the 300 s step of this loop.
    let bound = (8.0 * 3600.0 - 600.0) / 0.15 + 600.0 + 300.0;
    assert_eq!(s.status(big).unwrap().phase, Phase::Running, "started by t={t}");
    assert!(t <= bound, "started at {t}, bound {bound}");
}

#[test]
fn submitting_to_a_missing_queue_or_dataset_is_an_error_that_names_it() {
    let mut s = scheduler(federation(1, 0), vec![QueueSpec::new("q", big_quota())]);
    let err = s.submit(job("lost", 7, 1, 1.0, 0.0)).unwrap_err().to_string();
    assert!(err.contains("queue #7 does not exist"), "{err}");
    let mut j = job("nodata", 0, 1, 1.0, 0.0);
    j.datasets = vec![3];
    assert!(s.submit(j).unwrap_err().to_string().contains("dataset #3 is not registered"));
}

/// A job of 8 GPUs that runs twice as fast on H100 (pool 0) as on A100 (pool 1), checkpointing every 600 s.
fn heterogeneous(name: &str, work: f64, at: f64) -> Job {
    let mut j = job(name, 0, 8, work, at);
    j.work = Work { total: work, throughput: vec![(0, 2.0), (1, 1.0)], default: 0.0 };
    j
}

fn shortest_first(cluster: Cluster) -> Scheduler {
    let mut spec = QueueSpec::new("q", big_quota());
    spec.ordering = Ordering::ShortestFirst;
    spec.within_queue = WithinQueue::LowerOrLaterInOrder;
    let mut quotas = Quotas::default();
    quotas.add(spec).unwrap();
    let config =
        SchedulerConfig { policy: PolicyName::Bestfit, restart_s: 60.0, ..SchedulerConfig::default() };
    Scheduler::new(cluster, quotas, config, None).unwrap()
}

#[test]
fn a_short_job_takes_the_fast_gpus_from_a_long_one_at_its_checkpoint_and_the_long_one_resumes_on_the_slow_ones()
 {
    let mut s = shortest_first(federation(1, 1));
    let long = s.submit(heterogeneous("long", 100_000.0, 0.0)).unwrap();
    s.cycle(0.0).unwrap();
    assert_eq!(s.placement(long).unwrap().1, 0, "the long job starts on the H100s");
    // The short job starts at once on the A100s: waiting for the H100s would finish it far later.
    let short = s.submit(heterogeneous("short", 2_000.0, 1_000.0)).unwrap();
    s.cycle(1_000.0).unwrap();
    assert_eq!(s.placement(short).unwrap().1, 1);
    // 500 s past its last checkpoint, the long job would lose too much: nobody moves.
    let c = s.cycle(1_100.0).unwrap();
    assert!(c.preempted.is_empty(), "{c:?}");
    assert_eq!((s.placement(long).unwrap().1, s.placement(short).unwrap().1), (0, 1));
    // A second after its checkpoint at 1200 s, the short job upgrades over it and the long job resumes at once on
    // the A100s the short one left, keeping the work up to its checkpoint.
    let c = s.cycle(1_201.0).unwrap();
    assert!(c.preempted.contains(&long) && c.preempted.contains(&short), "{c:?}");
    assert_eq!(s.placement(short).unwrap().1, 0);
    assert_eq!(s.placement(long).unwrap().1, 1);
    assert_eq!(s.status(long).unwrap().preemptions, 1);
    assert!((s.remaining(long).unwrap() - (100_000.0 - 2.0 * 1_200.0)).abs() < 1.0);
}

#[test]
fn a_long_job_is_not_moved_for_a_job_that_is_not_much_shorter() {
    let mut s = shortest_first(federation(1, 1));
    let long = s.submit(heterogeneous("long", 30_000.0, 0.0)).unwrap();
    s.cycle(0.0).unwrap();
    // 15 000 s left on H100 against 10 000 s for the newcomer: less than twice, so it keeps its GPUs.
    let other = s.submit(heterogeneous("other", 20_000.0, 1_000.0)).unwrap();
    s.cycle(1_000.0).unwrap();
    let c = s.cycle(1_201.0).unwrap();
    assert!(c.preempted.is_empty(), "{c:?}");
    assert_eq!((s.placement(long).unwrap().1, s.placement(other).unwrap().1), (0, 1));
}

#[test]
fn a_job_past_the_backfill_depth_that_may_use_two_models_starts_on_the_one_its_quota_covers() {
    // Quota for H100s only; the job may use H100s or A100s. Past the backfill depth a job starts only if some way it
    // could run fits the quota: that way asks for H100s alone, not for H100s and A100s at once.
    let nominal = gpus(0, 8).with(Flavor::Cpu, 1 << 30).with(Flavor::Memory, 1 << 30);
    let mut quotas = Quotas::default();
    quotas.add(QueueSpec::new("q", nominal)).unwrap();
    let config = SchedulerConfig {
        policy: PolicyName::Bestfit,
        upgrades: false,
        backfill: true,
        backfill_depth: 0,
        ..SchedulerConfig::default()
    };
    let mut s = Scheduler::new(federation(1, 1), quotas, config, None).unwrap();
    let id = s.submit(job("either", 0, 8, 100.0, 0.0)).unwrap();
    s.cycle(0.0).unwrap();
    assert_eq!(s.status(id).unwrap().phase, Phase::Running, "{:?}", s.explain(id));
    assert_eq!(s.placement(id).unwrap().2, Some(0), "on the H100s");
}
