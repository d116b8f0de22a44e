//! Placer behaviour: explanations, unresolvable requests, health, node limits and topology.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use haiyun_scheduler::model::{
    Cluster, GpuId, GpuModels, Health, ModelSet, NodeSet, Pool, PoolKind, Topology,
};
use haiyun_scheduler::placer::{NodesToScore, Outcome, Placer, PlacerConfig, RejectionCode};
use haiyun_scheduler::plugin::{Policy, PolicyName};
use haiyun_scheduler::snapshot::{Snapshot, TaskPlacement};
use haiyun_scheduler::testing::{node, task};

/// Two H100 nodes (8 GPUs, NVLink domains 0 and 1, rack 0) and one T4 node (2 GPUs, rack 1).
fn federation() -> Cluster {
    let mut models = GpuModels::default();
    let (h100, t4) = (models.intern("H100").unwrap(), models.intern("T4").unwrap());
    Cluster {
        models,
        pools: vec![Pool {
            name: "ai".into(),
            kind: PoolKind::Ai,
            site: "sh".into(),
            clearance: Default::default(),
        }],
        nodes: vec![
            node().name("h0").cpu(128_000).gpus(8, h100).nvlink(0).rack(0).build(),
            node().name("h1").cpu(128_000).gpus(8, h100).nvlink(1).rack(0).build(),
            node().name("t0").cpu(32_000).gpus(2, t4).nvlink(2).rack(1).build(),
        ],
        node_sets: Default::default(),
    }
}

fn placer(name: PolicyName) -> Placer {
    Placer::new(Policy::new(name, 1, None).unwrap(), PlacerConfig::default())
}

fn rejected(o: Outcome) -> haiyun_scheduler::Rejection {
    match o {
        Outcome::Rejected(r) => r,
        Outcome::Placed(p) => panic!("expected a rejection, got {p:?}"),
    }
}

#[test]
fn a_gang_too_big_for_any_nvlink_domain_names_the_best_domain() {
    let c = federation();
    let h100 = ModelSet::one(c.models.lookup("H100").unwrap());
    let mut snap = Snapshot::new(c.clone()).unwrap();
    let mut p = placer(PolicyName::Bestfit);
    let two = task().cpu(1000).gpus(2, 1000).models(h100).build();
    p.assume_task(&mut snap, &TaskPlacement { node: 0, gpus: 0b11, spec: two }).unwrap();
    p.assume_task(&mut snap, &TaskPlacement { node: 1, gpus: 0b1100, spec: two }).unwrap();
    let r = rejected(
        p.place(&mut snap, &task().cpu(1000).gpus(8, 1000).models(h100).gang(1, Topology::NvlinkDomain))
            .unwrap(),
    );
    assert_eq!(r.code, RejectionCode::Unschedulable);
    let msg = r.message(&c.models);
    assert!(
        msg.contains("needs 8 whole GPUs of H100 in one NVLink domain; best NVLink domain has 6 free"),
        "{msg}"
    );
    let r = rejected(
        p.place(&mut snap, &task().cpu(1000).gpus(8, 1000).models(h100).gang(2, Topology::NvlinkDomain))
            .unwrap(),
    );
    let msg = r.message(&c.models);
    assert!(
        msg.contains("needs 16 whole GPUs of H100 in one NVLink domain; best NVLink domain has 6 free"),
        "{msg}"
    );
    assert_eq!(r.code, RejectionCode::Unresolvable, "no domain has 16 GPUs even when empty");
}

#[test]
fn a_task_larger_than_any_node_is_unresolvable_and_says_to_change_the_request() {
    let c = federation();
    let mut snap = Snapshot::new(c.clone()).unwrap();
    let r = rejected(
        placer(PolicyName::Bestfit)
            .place(&mut snap, &task().cpu(1000).gpus(9, 1000).gang(1, Topology::Any))
            .unwrap(),
    );
    assert_eq!(r.code, RejectionCode::Unresolvable);
    assert!(r.message(&c.models).contains("change the request"));
}

#[test]
fn a_task_limited_to_a_node_set_lands_only_there_and_a_refusal_names_the_set() {
    let mut c = federation();
    let only_h1 = c.node_sets.add(NodeSet::new("nodeSelector zone=b", [1]));
    let mut snap = Snapshot::new(c.clone()).unwrap();
    let mut p = placer(PolicyName::Bestfit);
    let gang = task().gpus(4, 1000).nodes(only_h1).gang(1, Topology::Any);
    let Outcome::Placed(first) = p.place(&mut snap, &gang).unwrap() else { panic!("h1 has 8 free GPUs") };
    assert_eq!(first.tasks[0].node, 1);
    let Outcome::Placed(second) = p.place(&mut snap, &gang).unwrap() else { panic!("h1 has 4 left") };
    assert_eq!(second.tasks[0].node, 1);
    let r = rejected(p.place(&mut snap, &gang).unwrap());
    assert_eq!(r.code, RejectionCode::Unschedulable, "h1 could hold it once freed");
    let reasons: Vec<(&str, u32)> = r.reasons.iter().map(|x| (x.reason.as_str(), x.nodes)).collect();
    assert_eq!(reasons, vec![("outside-node-set (nodeSelector zone=b)", 2), ("insufficient-gpus", 1)]);
    assert_eq!(r.shortfall.best_free, 0, "the free GPUs of h0 do not count");
    let nowhere = c.node_sets.add(NodeSet::new("nodeSelector zone=z", []));
    let mut snap = Snapshot::new(c).unwrap();
    let r = rejected(p.place(&mut snap, &task().nodes(nowhere).gang(1, Topology::Any)).unwrap());
    assert_eq!(r.code, RejectionCode::Unresolvable, "no node is in the set");
}

#[test]
fn refusals_are_counted_by_reason_across_all_nodes() {
    let c = federation();
    let t4 = ModelSet::one(c.models.lookup("T4").unwrap());
    let mut snap = Snapshot::new(c.clone()).unwrap();
    let r = rejected(
        placer(PolicyName::Bestfit)
            .place(&mut snap, &task().cpu(64_000).gpus(1, 1000).models(t4).gang(1, Topology::Any))
            .unwrap(),
    );
    let reasons: Vec<(&str, u32)> = r.reasons.iter().map(|x| (x.reason.as_str(), x.nodes)).collect();
    assert_eq!(reasons, vec![("gpu-model-not-allowed", 2), ("insufficient-cpu", 1)]);
    assert_eq!(r.code, RejectionCode::Unresolvable, "the only T4 node has 32 cores");
    assert!(r.message(&c.models).contains("(0/3 nodes fit: 2 gpu-model-not-allowed, 1 insufficient-cpu)"));
}

#[test]
fn an_unhealthy_gpu_is_never_chosen_and_returns_when_healthy() {
    let c = federation();
    let t4 = ModelSet::one(c.models.lookup("T4").unwrap());
    let mut snap = Snapshot::new(c).unwrap();
    snap.set_health(GpuId { node: 2, index: 0 }, Health::Unhealthy).unwrap();
    let mut p = placer(PolicyName::Bestfit);
    let both = task().cpu(1000).gpus(2, 1000).models(t4).gang(1, Topology::Any);
    assert!(matches!(p.place(&mut snap, &both).unwrap(), Outcome::Rejected(_)));
    let one = task().cpu(1000).gpus(1, 1000).models(t4).gang(1, Topology::Any);
    match p.place(&mut snap, &one).unwrap() {
        Outcome::Placed(pl) => assert_eq!(pl.tasks[0].gpus, 0b10),
        Outcome::Rejected(r) => panic!("{r:?}"),
    }
    snap.set_health(GpuId { node: 2, index: 0 }, Health::Healthy).unwrap();
    match p.place(&mut snap, &one).unwrap() {
        Outcome::Placed(pl) => assert_eq!(pl.tasks[0].gpus, 0b01),
        Outcome::Rejected(r) => panic!("{r:?}"),
    }
}

#[test]
fn a_rack_gang_lands_in_one_rack_or_not_at_all() {
    let c = federation();
    let mut snap = Snapshot::new(c).unwrap();
    let mut p = placer(PolicyName::GpuPacking);
    let gang = task().cpu(1000).gpus(4, 1000).gang(4, Topology::Rack);
    match p.place(&mut snap, &gang).unwrap() {
        Outcome::Placed(pl) => assert!(pl.tasks.iter().all(|t| t.node < 2), "rack 0 holds nodes 0 and 1"),
        Outcome::Rejected(r) => panic!("{r:?}"),
    }
    let more = task().cpu(1000).gpus(2, 1000).gang(2, Topology::Rack);
    let r = rejected(p.place(&mut snap, &more).unwrap());
    assert_eq!(r.shortfall.best_free, 2, "rack 1 has the T4 node's 2 GPUs, rack 0 none");
}

#[test]
fn scoring_a_few_nodes_still_finds_the_only_one_that_fits() {
    let mut models = GpuModels::default();
    let m = models.intern("A100").unwrap();
    let mut nodes: Vec<_> =
        (0..300).map(|i| node().name(&format!("n{i}")).gpus(8, m).nvlink(i).build()).collect();
    nodes[257].cpu_milli = 200_000;
    let c = Cluster {
        models,
        pools: vec![Pool {
            name: "p".into(),
            kind: PoolKind::Ai,
            site: "s".into(),
            clearance: Default::default(),
        }],
        nodes,
        node_sets: Default::default(),
    };
    let mut snap = Snapshot::new(c).unwrap();
    let mut p = Placer::new(
        Policy::new(PolicyName::Bestfit, 1, None).unwrap(),
        PlacerConfig { nodes_to_score: NodesToScore::AtMost(3) },
    );
    match p.place(&mut snap, &task().cpu(100_000).gpus(1, 1000).gang(1, Topology::Any)).unwrap() {
        Outcome::Placed(pl) => assert_eq!(pl.tasks[0].node, 257),
        Outcome::Rejected(r) => panic!("{r:?}"),
    }
}

#[test]
fn a_refusal_in_one_pool_counts_that_pools_nodes_only() {
    // The T4 node moves to a second pool: a T4 task too big for it, placed in that pool, is refused by one node
    // (the H100 nodes of the other pool were never looked at); whether it could ever fit is asked of all nodes.
    let mut c = federation();
    c.pools.push(Pool {
        name: "edge".into(),
        kind: PoolKind::Edge,
        site: "e".into(),
        clearance: Default::default(),
    });
    c.nodes[2].pool = 1;
    let t4 = ModelSet::one(c.models.lookup("T4").unwrap());
    let mut snap = Snapshot::new(c.clone()).unwrap();
    let gang = task().cpu(64_000).gpus(1, 1000).models(t4).gang(1, Topology::Any);
    let Outcome::Rejected(r) = placer(PolicyName::Bestfit).place_in(&mut snap, &gang, Some(1)).unwrap()
    else {
        panic!("placed")
    };
    let reasons: Vec<(&str, u32)> = r.reasons.iter().map(|x| (x.reason.as_str(), x.nodes)).collect();
    assert_eq!(reasons, vec![("insufficient-cpu", 1)]);
    assert_eq!(r.nodes, 1);
    assert!(r.message(&c.models).contains("(0/1 nodes fit: 1 insufficient-cpu)"), "{}", r.message(&c.models));
    assert_eq!(r.code, RejectionCode::Unresolvable);
}
