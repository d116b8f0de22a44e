//! Property tests of the placement invariants: no over-commit, gangs all-or-nothing, models, health, node sets and
#![allow(clippy::unwrap_used, clippy::expect_used)]
//! topology respected, deterministic decisions.

use haiyun_scheduler::model::{
    Cluster, Gang, Gpu, GpuModels, Health, ModelSet, Node, NodeSet, NodeSetId, Pool, PoolKind, TaskSpec,
    Topology,
};
use haiyun_scheduler::placer::{NodesToScore, Outcome, Placement, Placer, PlacerConfig};
use haiyun_scheduler::plugin::{Policy, PolicyName, TypicalPods};
use haiyun_scheduler::snapshot::Snapshot;
use proptest::prelude::*;

fn arb_node(i: usize) -> impl Strategy<Value = Node> {
    (0usize..=8, 0u8..3, 0u32..3, 0u32..2, 1u64..=64, 1u64..=256, any::<bool>(), 0u32..=3, 1u32..=20)
        .prop_map(move |(gpus, model, rack, pool, cores, gib, two_domains, unhealthy, max_tasks)| Node {
            name: format!("n{i}"),
            pool,
            rack,
            cpu_milli: cores * 1000,
            memory_mib: gib * 1024,
            gpus: (0..gpus)
                .map(|j| Gpu {
                    model,
                    memory_mib: 81_920,
                    nvlink_domain: (i * 2 + usize::from(two_domains && j >= gpus / 2)) as u32,
                    health: if (j as u32) < unhealthy && j % 3 == 0 {
                        Health::Unhealthy
                    } else {
                        Health::Healthy
                    },
                })
                .collect(),
            max_tasks,
        })
}

fn arb_cluster() -> impl Strategy<Value = Cluster> {
    (1usize..12).prop_flat_map(|n| {
        ((0..n).map(arb_node).collect::<Vec<_>>(), any::<u16>(), any::<u16>()).prop_map(|(nodes, a, b)| {
            let mut models = GpuModels::default();
            for m in ["H100", "A100", "T4"] {
                models.intern(m);
            }
            let pools = (0..2)
                .map(|p| Pool {
                    name: format!("p{p}"),
                    kind: PoolKind::Ai,
                    site: "s".into(),
                    clearance: Default::default(),
                })
                .collect();
            let mut node_sets = haiyun_scheduler::model::NodeSets::default();
            for (name, mask) in [("a", a), ("b", b)] {
                node_sets.add(NodeSet::new(name, (0..nodes.len() as u32).filter(|i| mask & (1 << i) != 0)));
            }
            Cluster { models, pools, nodes, node_sets }
        })
    })
}

fn arb_task() -> impl Strategy<Value = TaskSpec> {
    (
        0u64..=16,
        0u64..=64,
        0u32..=4,
        prop::sample::select(vec![0u32, 100, 250, 500, 700, 1000]),
        0u8..4,
        0u32..4,
    )
        .prop_map(|(cores, gib, gpus, milli, m, set)| {
            TaskSpec {
                cpu_milli: cores * 1000,
                memory_mib: gib * 1024,
                gpus: if milli < 1000 { gpus.min(1) } else { gpus },
                gpu_milli: milli,
                models: if m == 3 { ModelSet::ANY } else { ModelSet::one(m) },
                // Half the tasks are free, the rest limited to set a or b (1 or 2).
                nodes: NodeSetId(set.saturating_sub(1)),
            }
            .normalized()
        })
}

fn arb_gang() -> impl Strategy<Value = Gang> {
    let topo = prop::sample::select(vec![
        Topology::Any,
        Topology::SameNode,
        Topology::NvlinkDomain,
        Topology::Rack,
        Topology::Pool,
    ]);
    (prop::collection::vec(arb_task(), 1..4), topo).prop_map(|(tasks, topology)| Gang { tasks, topology })
}

fn arb_policy() -> impl Strategy<Value = PolicyName> {
    prop::sample::select(PolicyName::ALL.to_vec())
}

fn placer(name: PolicyName, gangs: &[Gang], limit: usize) -> Placer {
    let typical = TypicalPods::estimate(gangs.iter().flat_map(|g| g.tasks.iter().map(|t| (*t, ""))), 0.95);
    let policy = Policy::new(name, 7, Some(&typical)).expect("policy");
    Placer::new(policy, PlacerConfig { nodes_to_score: NodesToScore::AtMost(limit) })
}

/// Places the gangs in order, forgetting every third placed gang afterwards to exercise releases.
fn run(
    cluster: &Cluster,
    gangs: &[Gang],
    name: PolicyName,
    limit: usize,
) -> (Snapshot, Vec<Option<Placement>>) {
    let mut snap = Snapshot::new(cluster.clone()).expect("valid cluster");
    let mut placer = placer(name, gangs, limit);
    let mut out = Vec::new();
    for (i, g) in gangs.iter().enumerate() {
        match placer.place(&mut snap, g).expect("no broken invariant") {
            Outcome::Placed(p) => out.push(Some(p)),
            Outcome::Rejected(_) => out.push(None),
        }
        if i % 3 == 2 {
            if let Some(Some(p)) = out.get(i - 1).cloned() {
                placer.forget(&mut snap, &p).expect("forget what was placed");
                out[i - 1] = None;
            }
        }
    }
    (snap, out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn nothing_is_ever_over_committed(
        cluster in arb_cluster(), gangs in prop::collection::vec(arb_gang(), 1..40), name in arb_policy(),
        limit in 1usize..6,
    ) {
        let (snap, placements) = run(&cluster, &gangs, name, limit);
        let mut cpu = vec![0u64; cluster.nodes.len()];
        let mut mem = vec![0u64; cluster.nodes.len()];
        let mut tasks = vec![0u32; cluster.nodes.len()];
        let mut gpu: Vec<Vec<u32>> = cluster.nodes.iter().map(|n| vec![0; n.gpus.len()]).collect();
        for t in placements.iter().flatten().flat_map(|p| &p.tasks) {
            let i = t.node as usize;
            cpu[i] += t.spec.cpu_milli;
            mem[i] += t.spec.memory_mib;
            tasks[i] += 1;
            for g in t.gpu_ids() {
                gpu[i][usize::from(g.index)] += t.spec.gpu_milli;
            }
        }
        for (i, n) in cluster.nodes.iter().enumerate() {
            prop_assert!(cpu[i] <= n.cpu_milli && mem[i] <= n.memory_mib && tasks[i] <= n.max_tasks);
            prop_assert!(gpu[i].iter().all(|m| *m <= 1000));
            let v = snap.view(i as u32).expect("node");
            prop_assert_eq!(v.cpu_free, n.cpu_milli - cpu[i]);
            prop_assert_eq!(v.memory_free, n.memory_mib - mem[i]);
            prop_assert_eq!(snap.allocated(i as u32).iter().map(|a| u32::from(*a)).collect::<Vec<_>>(), gpu[i].clone());
        }
    }

    #[test]
    fn gangs_are_placed_whole_with_their_models_health_and_topology(
        cluster in arb_cluster(), gangs in prop::collection::vec(arb_gang(), 1..40), name in arb_policy(),
    ) {
        let mut snap = Snapshot::new(cluster.clone()).expect("valid cluster");
        let mut placer = placer(name, &gangs, 3);
        for g in &gangs {
            let before: Vec<Vec<u16>> = (0..snap.len() as u32).map(|i| snap.allocated(i).to_vec()).collect();
            match placer.place(&mut snap, g).expect("no broken invariant") {
                Outcome::Rejected(_) => {
                    let after: Vec<Vec<u16>> = (0..snap.len() as u32).map(|i| snap.allocated(i).to_vec()).collect();
                    prop_assert_eq!(before, after, "a rejected gang left tasks behind");
                }
                Outcome::Placed(p) => {
                    prop_assert_eq!(p.tasks.len(), g.tasks.len());
                    for (t, spec) in p.tasks.iter().zip(&g.tasks) {
                        prop_assert_eq!(&t.spec, spec);
                        let node = &cluster.nodes[t.node as usize];
                        prop_assert!(cluster.node_sets.allows(spec.nodes, t.node), "node outside the task's node set");
                        for id in t.gpu_ids() {
                            let gpu = &node.gpus[usize::from(id.index)];
                            prop_assert!(spec.models.contains(gpu.model), "GPU model not allowed");
                            prop_assert_eq!(gpu.health, Health::Healthy);
                        }
                    }
                    let nodes: Vec<&Node> = p.tasks.iter().map(|t| &cluster.nodes[t.node as usize]).collect();
                    match g.topology {
                        Topology::SameNode => prop_assert!(p.tasks.iter().all(|t| t.node == p.tasks[0].node)),
                        Topology::Rack => prop_assert!(nodes.iter().all(|n| n.rack == nodes[0].rack)),
                        Topology::Pool => prop_assert!(nodes.iter().all(|n| n.pool == nodes[0].pool)),
                        Topology::NvlinkDomain => {
                            let domains: Vec<u32> = p.tasks.iter().flat_map(|t| {
                                t.gpu_ids().map(|id| cluster.nodes[id.node as usize].gpus[usize::from(id.index)].nvlink_domain)
                            }).collect();
                            prop_assert!(domains.iter().all(|d| *d == domains[0]));
                        }
                        Topology::Any => {}
                    }
                }
            }
        }
    }

    #[test]
    fn the_same_input_and_seed_give_the_same_decisions(
        cluster in arb_cluster(), gangs in prop::collection::vec(arb_gang(), 1..30), name in arb_policy(),
    ) {
        let (_, a) = run(&cluster, &gangs, name, 4);
        let (_, b) = run(&cluster, &gangs, name, 4);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn a_single_task_that_fits_somewhere_is_never_refused(
        cluster in arb_cluster(), task in arb_task(), name in arb_policy(),
    ) {
        let mut snap = Snapshot::new(cluster.clone()).expect("valid cluster");
        let fits = (0..snap.len() as u32).filter_map(|i| snap.view(i)).any(|v| {
            haiyun_scheduler::plugin::check_node(&v, &task, v.gpus_of(task.models)).is_ok()
        });
        let mut placer = placer(name, &[Gang::single(task)], 2);
        let placed = matches!(placer.place(&mut snap, &Gang::single(task)).expect("ok"), Outcome::Placed(_));
        prop_assert_eq!(placed, fits);
    }
}
