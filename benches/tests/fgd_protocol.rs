//! The FGD protocol reproduces the paper's own per-seed results for the deterministic policies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use haiyun_benches::fgd::{FgdArgs, run};
use haiyun_scheduler::plugin::PolicyName;
use haiyun_scheduler::plugin::score::HaiyunParams;

fn data(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../data")).join(rel)
}

/// The published allocation at 130% for `policy` (the reference CSV's name) on `default`, seed `seed`.
fn published(policy: &str, seed: u64) -> f64 {
    let text = std::fs::read_to_string(data("fgd-reference/analysis_allo_discrete.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "130").unwrap();
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|r| r[0] == "openb_pod_list_default" && r[1] == policy && r[3] == seed.to_string())
        .map(|r| r[col].parse().unwrap())
        .unwrap()
}

fn ours(policy: PolicyName, seed: u64) -> f64 {
    let args = FgdArgs {
        nodes: data("alibaba-gpu-v2023/openb_node_list_gpu_node.csv"),
        pods: data("alibaba-gpu-v2023/openb_pod_list_default.csv"),
        sequences: data("fgd-sequences/openb_pod_list_default"),
        policy,
        seeds: vec![seed],
        haiyun: HaiyunParams::default(),
    };
    run(&args).unwrap().alloc_pct["130"].unwrap()
}

#[test]
fn bestfit_gpu_packing_gpu_clustering_and_fgd_match_the_published_seed() {
    for (name, published_name) in [
        (PolicyName::Bestfit, "05-BestFit"),
        (PolicyName::GpuPacking, "04-GpuPacking"),
        (PolicyName::GpuClustering, "03-GpuClustering"),
        (PolicyName::Fgd, "06-FGD"),
    ] {
        let (a, b) = (ours(name, 42), published(published_name, 42));
        assert!((a - b).abs() <= 0.05, "{name}: ours {a}, published {b}");
    }
}

#[test]
fn a_missing_sequence_file_is_a_clear_error() {
    let args = FgdArgs {
        nodes: data("alibaba-gpu-v2023/openb_node_list_gpu_node.csv"),
        pods: data("alibaba-gpu-v2023/openb_pod_list_default.csv"),
        sequences: data("no-such-folder"),
        policy: PolicyName::Bestfit,
        seeds: vec![42],
        haiyun: HaiyunParams::default(),
    };
    let msg = run(&args).unwrap_err().to_string();
    assert!(msg.contains("failed to read") && msg.contains("seed-42.json"), "{msg}");
}
