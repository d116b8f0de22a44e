//! `haiyun-bench fgd-table`: every policy on every shipped workload, beside the paper's published means.

use std::collections::BTreeMap;
use std::path::Path;

use haiyun_scheduler::plugin::PolicyName;
use haiyun_scheduler::plugin::score::HaiyunParams;
use serde::Serialize;

use crate::fgd::{FgdArgs, FgdError, run};

/// The workloads shipped in `data/` (pod CSV stems without `openb_pod_list_`).
pub const WORKLOADS: [&str; 13] = [
    "default",
    "cpu050",
    "cpu100",
    "cpu200",
    "gpushare40",
    "gpushare60",
    "gpushare80",
    "gpuspec10",
    "gpuspec20",
    "gpuspec25",
    "multigpu20",
    "multigpu30",
    "multigpu40",
];

/// One workload's row: allocation at 130% per policy, and the published means.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Workload.
    pub workload: String,
    /// Our allocation at 130% by policy.
    pub ours: BTreeMap<String, f64>,
    /// Published allocation at 130% by policy (the paper's six).
    pub published: BTreeMap<String, f64>,
}

fn published_name(p: PolicyName) -> Option<&'static str> {
    Some(match p {
        PolicyName::Random => "01-Random",
        PolicyName::Dotprod => "02-DotProd",
        PolicyName::GpuClustering => "03-GpuClustering",
        PolicyName::GpuPacking => "04-GpuPacking",
        PolicyName::Bestfit => "05-BestFit",
        PolicyName::Fgd => "06-FGD",
        PolicyName::Haiyun => return None,
    })
}

/// Mean published allocation at 130% by (workload stem, published policy name).
fn published(data: &Path) -> Result<BTreeMap<(String, String), f64>, FgdError> {
    let path = data.join("fgd-reference/analysis_allo_discrete.csv");
    let text =
        std::fs::read_to_string(&path).map_err(|source| FgdError::Read { path: path.clone(), source })?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let Some(col) = header.iter().position(|h| *h == "130") else {
        let source = std::io::Error::new(std::io::ErrorKind::InvalidData, "no column \"130\" in the header");
        return Err(FgdError::Read { path, source });
    };
    let mut sums: BTreeMap<(String, String), (f64, usize)> = BTreeMap::new();
    for l in lines {
        let r: Vec<&str> = l.split(',').collect();
        if let (Some(w), Some(p), Some(v)) =
            (r.first(), r.get(1), r.get(col).and_then(|v| v.parse::<f64>().ok()))
        {
            let e = sums.entry((w.to_string(), p.to_string())).or_default();
            e.0 += v;
            e.1 += 1;
        }
    }
    Ok(sums.into_iter().map(|(k, (s, n))| (k, s / n as f64)).collect())
}

/// Runs every policy on every workload (10 seeds each).
pub fn run_all(data: &Path, seeds: &[u64], progress: impl Fn(&str)) -> Result<Vec<Row>, FgdError> {
    let reference = published(data)?;
    let mut rows = Vec::new();
    for w in WORKLOADS {
        let stem = format!("openb_pod_list_{w}");
        let mut row = Row { workload: w.to_string(), ours: BTreeMap::new(), published: BTreeMap::new() };
        for p in PolicyName::ALL {
            progress(&format!("{w} {p}"));
            let args = FgdArgs {
                nodes: data.join("alibaba-gpu-v2023/openb_node_list_gpu_node.csv"),
                pods: data.join(format!("alibaba-gpu-v2023/{stem}.csv")),
                sequences: data.join(format!("fgd-sequences/{stem}")),
                policy: p,
                seeds: seeds.to_vec(),
                haiyun: HaiyunParams::default(),
            };
            let r = run(&args)?;
            row.ours.insert(p.to_string(), r.alloc_pct.get("130").copied().flatten().unwrap_or(f64::NAN));
            if let Some(v) = published_name(p).and_then(|n| reference.get(&(stem.clone(), n.to_string()))) {
                row.published.insert(p.to_string(), *v);
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

/// A Markdown table: ours (published) per policy, and haiyun minus published FGD.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from("| workload |");
    for p in PolicyName::ALL {
        out.push_str(&format!(" {p} |"));
    }
    out.push_str(" haiyun − FGD |\n|---|");
    out.push_str(&"---:|".repeat(PolicyName::ALL.len() + 1));
    out.push('\n');
    let mut gains = Vec::new();
    for r in rows {
        out.push_str(&format!("| {} |", r.workload));
        for p in PolicyName::ALL {
            let ours = r.ours.get(p.as_str()).copied().unwrap_or(f64::NAN);
            match r.published.get(p.as_str()) {
                Some(pb) => out.push_str(&format!(" {ours:.2} ({pb:.2}) |")),
                None => out.push_str(&format!(" **{ours:.2}** |")),
            }
        }
        let gain = r.ours.get("haiyun").copied().unwrap_or(f64::NAN)
            - r.published.get("fgd").copied().unwrap_or(f64::NAN);
        gains.push(gain);
        out.push_str(&format!(" {gain:+.2} |\n"));
    }
    let mean = gains.iter().sum::<f64>() / gains.len().max(1) as f64;
    let min = gains.iter().copied().fold(f64::INFINITY, f64::min);
    out.push_str(&format!("\nhaiyun − published FGD at 130%: mean {mean:+.2}, worst {min:+.2} points\n"));
    out
}
