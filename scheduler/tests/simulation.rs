//! Whole-run property tests: the decision log is ordered, no GPU is held twice, every job finishes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use haiyun_scheduler::model::{
    Classification, Cluster, Gang, GpuModels, Job, ModelSet, Pool, PoolKind, Topology, Work,
};
use haiyun_scheduler::queue::{Flavor, Ordering, QueueSpec, Quotas, Resources, WithinQueue};
use haiyun_scheduler::schedule::{Scheduler, SchedulerConfig};
use haiyun_scheduler::sim::simulate;
use haiyun_scheduler::testing::{node, task};
use proptest::prelude::*;

/// Two pools of one-GPU nodes: 4 fast and 4 slow GPUs.
fn cluster() -> Cluster {
    let mut models = GpuModels::default();
    let (fast, slow) = (models.intern("V100").unwrap(), models.intern("K80").unwrap());
    let pools = ["v100", "k80"]
        .iter()
        .map(|p| Pool {
            name: p.to_string(),
            kind: PoolKind::Ai,
            site: "s".into(),
            clearance: Classification::Core,
        })
        .collect();
    let mut nodes = Vec::new();
    for i in 0..8u32 {
        let (pool, model) = if i < 4 { (0, fast) } else { (1, slow) };
        nodes.push(node().name(&format!("n{i}")).gpus(1, model).nvlink(i).pool(pool).rack(pool).build());
    }
    Cluster { models, pools, nodes, node_sets: Default::default() }
}

fn arb_jobs() -> impl Strategy<Value = Vec<(f64, u32, f64, f64)>> {
    prop::collection::vec((0.0f64..20_000.0, 1u32..=3, 100.0f64..20_000.0, 1.0f64..6.0), 1..30)
}

fn run(specs: &[(f64, u32, f64, f64)], ordering: Ordering) -> haiyun_scheduler::sim::SimRun {
    let c = cluster();
    let mut quotas = Quotas::default();
    let mut spec =
        QueueSpec::new("q", Resources::default().with(Flavor::Gpu(0), 4000).with(Flavor::Gpu(1), 4000));
    spec.ordering = ordering;
    spec.within_queue = WithinQueue::LowerOrLaterInOrder;
    quotas.add(spec).unwrap();
    let sched = Scheduler::new(c, quotas, SchedulerConfig::default(), None).unwrap();
    let jobs = specs
        .iter()
        .enumerate()
        .map(|(i, (at, gpus, steps, speedup))| Job {
            name: format!("j{i}"),
            queue: 0,
            priority: 0,
            submitted: *at,
            gang: Gang {
                tasks: vec![
                    task().cpu(0).memory(0).gpus(1, 1000).models(ModelSet::ANY).build();
                    *gpus as usize
                ],
                topology: Topology::Any,
            },
            work: Work { total: *steps, throughput: vec![(0, *speedup), (1, 1.0)], default: 0.0 },
            datasets: Vec::new(),
            pools: Vec::new(),
            preemptible: true,
            checkpoint_s: Some(1800.0),
            user: None,
        })
        .collect();
    simulate(sched, jobs).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_log_is_in_time_order_no_gpu_is_held_twice_and_every_job_finishes(specs in arb_jobs(), fifo in any::<bool>()) {
        let sim = run(&specs, if fifo { Ordering::Fifo } else { Ordering::ShortestFirst });
        let mut last = f64::NEG_INFINITY;
        let mut holder: HashMap<String, String> = HashMap::new();
        for d in &sim.decisions {
            prop_assert!(d.t >= last, "event at {} after one at {}", d.t, last);
            last = d.t;
            match d.event.as_str() {
                "place" => {
                    for g in d.tasks.iter().flat_map(|t| &t.gpus) {
                        prop_assert!(holder.insert(g.clone(), d.job.clone()).is_none(), "GPU {} given twice", g);
                    }
                }
                _ => holder.retain(|_, j| *j != d.job),
            }
        }
        prop_assert!(sim.jobs.iter().all(|j| j.completion.is_some()), "a job never finished");
        let total_steps: f64 = specs.iter().map(|s| s.2).sum();
        prop_assert!(total_steps > 0.0);
    }
}
