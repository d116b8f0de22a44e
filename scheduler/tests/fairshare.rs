//! Fair share: admissions follow decayed past usage, nested cohorts lend and reclaim as documented, borrowing queues
//! take from each other by their weights without ping-pong, and a per-user limit holds under a flood.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use haiyun_scheduler::model::{Classification, Cluster, GpuModels, Job, Pool, PoolKind, Work};
use haiyun_scheduler::queue::{Flavor, QueueSpec, Quotas, Resources};
use haiyun_scheduler::schedule::{Phase, Scheduler, SchedulerConfig};
use haiyun_scheduler::testing::{node, task};
use haiyun_scheduler::{PolicyName, Topology};

fn cluster(nodes: usize) -> Cluster {
    let mut models = GpuModels::default();
    let h = models.intern("H100").unwrap();
    let pools = vec![Pool {
        name: "ai".into(),
        kind: PoolKind::Ai,
        site: "sh".into(),
        clearance: Classification::Internal,
    }];
    let nodes = (0..nodes)
        .map(|i| node().name(&format!("n{i}")).cpu(128_000).gpus(8, h).nvlink(i as u32).pool(0).build())
        .collect();
    Cluster { models, pools, nodes, node_sets: Default::default() }
}

fn gpus(n: u64) -> Resources {
    Resources::default().with(Flavor::Gpu(0), n * 1000)
}

fn queue(name: &str, cohort: &str, nominal: u64) -> QueueSpec {
    let mut q = QueueSpec::new(name, gpus(nominal).with(Flavor::Cpu, 1 << 40).with(Flavor::Memory, 1 << 40));
    q.cohort = Some(cohort.into());
    q
}

fn job(name: &str, queue: u32, tasks: u32, seconds: f64, at: f64) -> Job {
    Job {
        name: name.into(),
        queue,
        priority: 0,
        submitted: at,
        gang: task().cpu(1000).gpus(1, 1000).gang(tasks, Topology::Any),
        work: Work::seconds(seconds),
        datasets: Vec::new(),
        pools: Vec::new(),
        preemptible: true,
        checkpoint_s: Some(60.0),
        user: None,
    }
}

fn scheduler(nodes: usize, queues: Vec<QueueSpec>, half_life: Option<f64>) -> Scheduler {
    let mut quotas = Quotas::default();
    for q in queues {
        quotas.add(q).unwrap();
    }
    let config = SchedulerConfig {
        policy: PolicyName::Bestfit,
        upgrades: false,
        usage_half_life_s: half_life,
        ..SchedulerConfig::default()
    };
    Scheduler::new(cluster(nodes), quotas, config, None).unwrap()
}

fn running(s: &Scheduler, queue: u32) -> usize {
    s.running().filter(|id| s.job(*id).unwrap().queue == queue).count()
}

/// Two queues of equal weight and no quota of their own flood one 8-GPU node, lent by an idle third queue, with
/// 10-minute 1-GPU jobs for `rounds` rounds; queue `a` starts with `past` GPU-seconds of decayed usage. Returns the
/// jobs each queue started. (Fair share orders borrowers: a queue's own nominal quota goes to it first, whatever
/// its past.)
fn flood(past_gpu_s: f64, rounds: usize) -> (usize, usize) {
    const HALF_LIFE: f64 = 3600.0;
    let queues = vec![queue("a", "lab", 0), queue("b", "lab", 0), queue("owner", "lab", 8)];
    let mut s = scheduler(1, queues, Some(HALF_LIFE));
    let mut past = vec![0.0; 2];
    past.push(past_gpu_s * 1000.0);
    s.quotas_mut().add_usage(0, 0.0, &past);
    for i in 0..rounds * 8 {
        s.submit(job(&format!("a{i}"), 0, 1, 600.0, 0.0)).unwrap();
        s.submit(job(&format!("b{i}"), 1, 1, 600.0, 0.0)).unwrap();
    }
    let mut started = [0usize; 2];
    for r in 0..rounds {
        let t = 600.0 * r as f64;
        for id in s.running().collect::<Vec<_>>() {
            s.finish(id, t).unwrap();
        }
        for st in s.cycle(t).unwrap().started {
            started[s.job(st.job).unwrap().queue as usize] += 1;
        }
    }
    (started[0], started[1])
}

#[test]
fn a_queue_with_heavy_past_usage_gets_admissions_in_the_ratio_the_formula_says() {
    // Usage halves every hour: λ = ln 2 / 3600. `b` has no past, so it takes all C = 8 GPUs until its decayed usage
    // reaches `a`'s, which shrinks meanwhile: D(t) = D0 e^(-λt) - C (1 - e^(-λt)) / λ is 0 at
    // t* = ln(1 + λ D0 / C) / λ. After that the two alternate. Over a window W, b gets C t* + C (W - t*) / 2.
    let (c, w, d0) = (8.0, 24.0 * 600.0, 31_000.0);
    let lambda = std::f64::consts::LN_2 / 3600.0;
    let t_star = (1.0 + lambda * d0 / c).ln() / lambda;
    let expected_b = (c * t_star + c * (w - t_star) / 2.0) / 600.0;
    let (a, b) = flood(d0, 24);
    assert_eq!(a + b, 24 * 8, "every GPU busy every round");
    assert!(
        (b as f64 - expected_b).abs() <= 8.0,
        "b started {b} jobs, a {a}; the formula says b gets {expected_b:.1} (t* = {t_star:.0} s), within one round"
    );
    eprintln!("fair share: b started {b}, a {a}; the formula says b {expected_b:.1}");
    let ratio = b as f64 / a as f64;
    assert!(ratio > 1.3, "the queue without a past gets clearly more: {ratio:.2}");
    let (a, b) = flood(0.0, 24);
    assert!(a.abs_diff(b) <= 8, "without a past, equal weights share alike: {a} vs {b}");
}

#[test]
fn nested_cohorts_lend_across_the_tree_and_reclaim_from_other_teams_first() {
    // research/vision: vision-a (4 GPUs), vision-b (4); research/nlp: nlp (8). Two 8-GPU nodes.
    let mut s = scheduler(
        2,
        vec![
            queue("vision-a", "research/vision", 4),
            queue("vision-b", "research/vision", 4),
            queue("nlp", "research/nlp", 8),
        ],
        None,
    );
    for i in 0..10 {
        s.submit(job(&format!("nlp{i}"), 2, 1, 100_000.0, 0.0)).unwrap();
    }
    for i in 0..6 {
        s.submit(job(&format!("b{i}"), 1, 1, 100_000.0, 0.0)).unwrap();
    }
    s.cycle(0.0).unwrap();
    assert_eq!((running(&s, 2), running(&s, 1)), (10, 6), "vision-a's idle quota is lent to both teams");
    // vision-a wants 2 of its own 4 back: the other team (nlp) gives back first, though vision-b borrows too.
    let first = s.submit(job("a0", 0, 2, 1000.0, 100.0)).unwrap();
    let c = s.cycle(100.0).unwrap();
    assert_eq!(s.status(first).unwrap().phase, Phase::Running);
    assert_eq!(c.preempted.len(), 2);
    assert!(c.preempted.iter().all(|v| s.job(*v).unwrap().queue == 2), "nlp's borrowed jobs go first");
    assert_eq!((running(&s, 2), running(&s, 1)), (8, 6));
    // nlp is back at its nominal quota: the next reclaim falls on vision-b, the last borrower.
    let second = s.submit(job("a1", 0, 2, 1000.0, 200.0)).unwrap();
    let c = s.cycle(200.0).unwrap();
    assert_eq!(s.status(second).unwrap().phase, Phase::Running);
    assert!(c.preempted.iter().all(|v| s.job(*v).unwrap().queue == 1), "{c:?}");
    assert_eq!((running(&s, 0), running(&s, 1), running(&s, 2)), (2, 4, 8), "two 2-GPU jobs, 4 and 8");
}

#[test]
fn borrowing_queues_take_from_each_other_by_weight_and_never_back() {
    for (weight, expected_y) in [(1.0, 8), (3.0, 12)] {
        // A lender holds the cohort's 16 GPUs and runs nothing; x and y own nothing and borrow it all.
        let mut y = queue("y", "lab", 0);
        y.weight = weight;
        let mut s = scheduler(2, vec![queue("lender", "lab", 16), queue("x", "lab", 0), y], None);
        for i in 0..16 {
            s.submit(job(&format!("x{i}"), 1, 1, 100_000.0, 0.0)).unwrap();
        }
        s.cycle(0.0).unwrap();
        assert_eq!(running(&s, 1), 16);
        for i in 0..16 {
            s.submit(job(&format!("y{i}"), 2, 1, 100_000.0, 10.0)).unwrap();
        }
        s.cycle(100.0).unwrap();
        assert_eq!((running(&s, 1), running(&s, 2)), (16 - expected_y, expected_y), "weight {weight}");
        for t in [200.0, 300.0, 400.0] {
            let c = s.cycle(t).unwrap();
            assert!(c.preempted.is_empty() && c.started.is_empty(), "no ping-pong at {t}: {c:?}");
        }
    }
}

#[test]
fn a_per_user_limit_holds_under_a_flood() {
    let mut team = queue("team", "lab", 16);
    team.user_limit = Some(gpus(4));
    let mut s = scheduler(2, vec![team], None);
    let (alice, bob) = (s.quotas_mut().user_id("alice"), s.quotas_mut().user_id("bob"));
    let flood: Vec<u32> = (0..20)
        .map(|i| s.submit(Job { user: Some(alice), ..job(&format!("alice{i}"), 0, 1, 1000.0, 0.0) }).unwrap())
        .collect();
    let late: Vec<u32> = (0..2)
        .map(|i| s.submit(Job { user: Some(bob), ..job(&format!("bob{i}"), 0, 1, 1000.0, 5.0) }).unwrap())
        .collect();
    for t in [10.0, 20.0, 30.0] {
        s.cycle(t).unwrap();
        let held = flood.iter().filter(|id| s.status(**id).unwrap().phase == Phase::Running).count();
        assert_eq!(held, 4, "alice holds her limit of 4 GPUs, never more, at {t}");
    }
    assert!(
        late.iter().all(|id| s.status(*id).unwrap().phase == Phase::Running),
        "bob is not stuck behind alice"
    );
    let why = s.explain(flood[19]);
    assert!(
        why.iter().any(|l| l.contains(
            "user alice needs 1 nvidia.com/gpu:H100 in queue team, 0 left of the queue's per-user limit"
        )),
        "{why:?}"
    );
}
