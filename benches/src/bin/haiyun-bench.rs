//! `haiyun-bench`: placement-quality, job-completion and scale benchmarks that print JSON figures.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use haiyun_benches::{fgd, jct, scale, study, table};
use haiyun_scheduler::plugin::PolicyName;
use haiyun_scheduler::plugin::score::HaiyunParams;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data");

#[derive(Debug, Parser)]
#[command(name = "haiyun-bench", about = "Haiyun benchmarks (JSON figures with --json)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Placement quality under the FGD protocol on the Alibaba GPU trace (default: the shipped `default` workload).
    Fgd {
        /// Node CSV.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/alibaba-gpu-v2023/openb_node_list_gpu_node.csv"))]
        nodes: PathBuf,
        /// Pod CSV.
        #[arg(long)]
        pods: Option<PathBuf>,
        /// Folder of seed-S.json sequences.
        #[arg(long)]
        sequences: Option<PathBuf>,
        /// Shipped workload to use when --pods/--sequences are not given (default, cpu050, gpushare40, …).
        #[arg(long, default_value = "default")]
        workload: String,
        /// random | dotprod | gpu-clustering | gpu-packing | bestfit | fgd | haiyun
        #[arg(long, default_value = "haiyun")]
        policy: String,
        /// Seeds: a range (42-51) or a list (42,43).
        #[arg(long, default_value = "42-51")]
        seeds: String,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Haiyun policy parameters for experiments, e.g. memory=1,starved=0.1 (defaults: the shipped policy).
        #[arg(long, default_value = "")]
        haiyun_params: String,
    },
    /// Job completion time on heterogeneous GPUs, side by side with Gavel (default: the shipped W1 job list).
    Jct {
        /// Job list CSV.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/gavel/jobs/W1_multigpu_seed0_n150_lam2000.csv"))]
        jobs: PathBuf,
        /// Throughput table CSV.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/gavel/isolated_throughputs.csv"))]
        throughputs: PathBuf,
        /// GPU types and counts.
        #[arg(long, default_value = "v100=12,p100=12,k80=12")]
        cluster: String,
        /// fifo | haiyun
        #[arg(long, default_value = "haiyun")]
        policy: String,
        /// Write the decision log (JSON lines) here.
        #[arg(long)]
        decisions: Option<PathBuf>,
        /// Print one JSON object instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Generalisation: new job lists of the kind Gavel's generator makes (W1- and W2-like), each under fifo and
    /// haiyun with its decision log checked; means against the lower bound and fifo.
    JctStudy {
        /// Lists of each kind (seeds 1..=N); about 9 s per list of each kind on one core.
        #[arg(long, default_value_t = 10)]
        seeds: u64,
        /// Throughput table CSV.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/gavel/isolated_throughputs.csv"))]
        throughputs: PathBuf,
        /// GPU types and counts.
        #[arg(long, default_value = "v100=12,p100=12,k80=12")]
        cluster: String,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Every policy on every shipped workload beside the published means (Markdown, or JSON with --json).
    FgdTable {
        /// Seeds: a range (42-51) or a list (42,43).
        #[arg(long, default_value = "42-51")]
        seeds: String,
        /// Print JSON rows instead of Markdown.
        #[arg(long)]
        json: bool,
    },
    /// Full scheduling cycles at scale: pending jobs in many queues and cohorts (Kueue's shape: --jobs 15000
    /// --queues 30 --cohorts 5).
    Cycle {
        /// Nodes (8 GPUs each).
        #[arg(long, default_value_t = 10_000)]
        nodes: usize,
        /// Pending jobs.
        #[arg(long, default_value_t = 100_000)]
        jobs: usize,
        /// Queues.
        #[arg(long, default_value_t = 500)]
        queues: usize,
        /// Cohorts.
        #[arg(long, default_value_t = 20)]
        cohorts: usize,
        /// Cycles to run.
        #[arg(long, default_value_t = 2)]
        cycles: usize,
        /// Jobs that arrive, and running jobs that finish, before each cycle after the first.
        #[arg(long, default_value_t = 1)]
        arrivals_per_cycle: usize,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print one JSON object instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Placements per second and memory on a synthetic federation.
    Scale {
        /// Nodes (8 GPUs each).
        #[arg(long, default_value_t = 10_000)]
        nodes: usize,
        /// Pending tasks.
        #[arg(long, default_value_t = 100_000)]
        tasks: usize,
        /// Seed of the synthetic federation and workload.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Feasible nodes scored per task: 0 for the adaptive default.
        #[arg(long, default_value_t = 0)]
        nodes_to_score: usize,
        /// Print one JSON object instead of a summary.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Fgd { nodes, pods, sequences, workload, policy, seeds, json, haiyun_params } => {
            let stem = format!("openb_pod_list_{workload}");
            let args = fgd::FgdArgs {
                nodes,
                pods: pods.unwrap_or_else(|| PathBuf::from(format!("{DATA}/alibaba-gpu-v2023/{stem}.csv"))),
                sequences: sequences.unwrap_or_else(|| PathBuf::from(format!("{DATA}/fgd-sequences/{stem}"))),
                policy: policy.parse::<PolicyName>()?,
                seeds: fgd::parse_seeds(&seeds).map_err(anyhow::Error::msg)?,
                haiyun: HaiyunParams::parse(&haiyun_params)?,
            };
            let r = fgd::run(&args).context("fgd benchmark failed")?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                let v = |m: &std::collections::BTreeMap<String, Option<f64>>, k: &str| {
                    m.get(k).copied().flatten().map_or("-".to_string(), |x| format!("{x:.2}"))
                };
                println!("workload  policy          alloc@100  alloc@130  frag@130  failed  placements/s");
                println!(
                    "{:<9} {:<15} {:>9} {:>10} {:>9} {:>7.0} {:>13.0}",
                    r.workload.trim_start_matches("openb_pod_list_"),
                    r.policy,
                    v(&r.alloc_pct, "100"),
                    v(&r.alloc_pct, "130"),
                    v(&r.frag_ratio_pct, "130"),
                    r.failed_pods,
                    r.placements_per_s
                );
            }
        }
        Command::Jct { jobs, throughputs, cluster, policy, decisions, json } => {
            let (r, sim) =
                jct::run(&jobs, &throughputs, &cluster, &policy).context("jct benchmark failed")?;
            if let Some(path) = decisions {
                let mut text = String::new();
                for d in &sim.decisions {
                    text.push_str(&serde_json::to_string(d)?);
                    text.push('\n');
                }
                std::fs::write(&path, text).with_context(|| format!("failed to write {}", path.display()))?;
            }
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{} {}: avg JCT {:.2} h, median {:.2} h, p99 {:.2} h, makespan {:.1} h, {} of {} completed, {} preemptions",
                    r.workload,
                    r.policy,
                    r.avg_jct_h,
                    r.median_jct_h,
                    r.p99_jct_h,
                    r.makespan_h,
                    r.completed,
                    r.jobs,
                    r.preemptions
                );
            }
        }
        Command::JctStudy { seeds, throughputs, cluster, json } => {
            let text = std::fs::read_to_string(&throughputs)
                .with_context(|| format!("failed to read {}", throughputs.display()))?;
            let thr = haiyun_scheduler::trace::parse_throughputs(&text)?;
            let quiet = !std::io::IsTerminal::is_terminal(&std::io::stderr());
            let r = study::run(&thr, &study::job_types(&text), &cluster, seeds, |what| {
                if !quiet {
                    eprint!("\r{what:<40}");
                }
            })
            .context("jct study failed")?;
            if !quiet {
                eprintln!();
            }
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "kind          lists  lower bound  fifo avg JCT  haiyun avg JCT  haiyun/bound (worst)  haiyun/fifo"
                );
                for (kind, k) in &r {
                    let m = |p: &str| k.mean_avg_jct_h.get(p).copied().unwrap_or(f64::NAN);
                    println!(
                        "{kind:<13} {:>5}  {:>9.2} h  {:>10.2} h  {:>12.2} h  {:>10.3} ({:.3})  {:>11.3}",
                        k.lists,
                        k.mean_lower_bound_h,
                        m("fifo"),
                        m("haiyun"),
                        k.mean_haiyun_over_bound,
                        k.worst_haiyun_over_bound,
                        k.mean_haiyun_over_fifo
                    );
                }
            }
        }
        Command::FgdTable { seeds, json } => {
            let seeds = fgd::parse_seeds(&seeds).map_err(anyhow::Error::msg)?;
            let quiet = !std::io::IsTerminal::is_terminal(&std::io::stderr());
            let rows = table::run_all(std::path::Path::new(DATA), &seeds, |what| {
                if !quiet {
                    eprint!("\r{what:<40}");
                }
            })
            .context("fgd-table failed")?;
            if json {
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                println!("{}", table::markdown(&rows));
            }
        }
        Command::Cycle { nodes, jobs, queues, cohorts, cycles, arrivals_per_cycle, seed, json } => {
            let shape = haiyun_benches::cycle::Shape {
                nodes,
                jobs,
                queues,
                cohorts,
                cycles,
                arrivals: arrivals_per_cycle,
                seed,
            };
            let r = haiyun_benches::cycle::run(shape).context("cycle benchmark failed")?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{} jobs in {} queues / {} cohorts on {} nodes: cycles {:?} s, admitted {:?}, {:.0} admissions/s, \
                     first cycle {:.2}x the placer alone, later cycles {:.3}x the first ({} arrivals and finishes \
                     each), peak RSS {:.0} MiB",
                    r.jobs,
                    r.queues,
                    r.cohorts,
                    r.nodes,
                    r.cycle_s,
                    r.admitted,
                    r.admissions_per_s,
                    r.first_over_baseline,
                    r.later_over_first,
                    r.arrivals_per_cycle,
                    r.rss_peak_mib
                );
            }
        }
        Command::Scale { nodes, tasks, seed, nodes_to_score, json } => {
            let r = scale::run(nodes, tasks, seed, nodes_to_score).context("scale benchmark failed")?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{} nodes / {} GPUs, {} tasks: haiyun {:.0} placements/s ({:.2}x bestfit), peak RSS {:.0} MiB",
                    r.nodes, r.gpus, r.tasks, r.haiyun.placements_per_s, r.ratio_vs_baseline, r.rss_peak_mib
                );
            }
        }
    }
    Ok(())
}
