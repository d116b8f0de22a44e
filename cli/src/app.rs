//! The command line itself: flags, dispatch, output formats and exit codes (0 done, 2 bad input, 3 not found,
//! 4 cluster unreachable, 5 refused by the API server).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::cluster::{CliError, Cluster};
use crate::{quota, submission, view};
use clap::error::ErrorKind;
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(name = "haiyun", version, about = "Jobs, pools, queues and quota of a Haiyun cluster")]
struct Cli {
    /// The kubeconfig (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// Namespace of jobs and quota requests.
    #[arg(short, long, global = true, default_value = "default")]
    namespace: String,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Lists jobs, pools, queues or quota requests.
    #[command(alias = "list")]
    Get {
        /// What to list.
        #[arg(value_enum)]
        what: What,
    },
    /// Why a job waits, phase by phase, what would let it start sooner, and when it may start.
    Explain {
        /// The job.
        job: String,
    },
    /// Submits a job from a YAML file (`-f`) or from flags.
    Submit {
        /// A ComputeJob manifest.
        #[arg(short, long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        flags: submission::JobFlags,
    },
    /// Quota requests: ask for more, decide, list.
    Quota {
        #[command(subcommand)]
        action: QuotaAction,
    },
    /// Capacity and allocation by pool and GPU model, and queue usage.
    Top,
    /// Replays a job list (Gavel's CSV format) on a federation of GPU types and prints JCT, waits and utilisation;
    /// needs no cluster.
    Simulate {
        /// The job list.
        #[arg(long)]
        jobs: PathBuf,
        /// The federation: GPUs per type, e.g. `v100=12,p100=12,k80=12`.
        #[arg(long, default_value = "v100=12,p100=12,k80=12")]
        federation: String,
        /// Throughput per job type and GPU type (Gavel's table).
        #[arg(long, default_value = "data/gavel/isolated_throughputs.csv")]
        throughputs: PathBuf,
        /// `haiyun` (shortest first, backfill, heterogeneity-aware) or `fifo`.
        #[arg(long, default_value = "haiyun")]
        policy: String,
        /// Write the decision log (JSON lines) here.
        #[arg(long)]
        decisions: Option<PathBuf>,
    },
    /// Runs a whole federation in this process, without Kubernetes: simulated pools, node agents streaming over
    /// gRPC, five teams' queues and a stream of jobs; serves the dashboard and an API this CLI can use.
    Demo(crate::demo::DemoArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum What {
    Jobs,
    Pools,
    Queues,
    Quota,
}

#[derive(Debug, Subcommand)]
enum QuotaAction {
    /// Asks for more quota on a queue for a while.
    Request(quota::RequestFlags),
    /// Approves a request (needs the RBAC verb `approve` on its queue).
    Approve {
        /// The request.
        name: String,
    },
    /// Denies a request.
    Deny {
        /// The request.
        name: String,
    },
    /// Lists requests.
    List,
}

fn print<T: Serialize>(format: Format, items: &T, table: impl FnOnce() -> String) -> Result<(), CliError> {
    let text = match format {
        Format::Table => table(),
        Format::Json => {
            serde_json::to_string_pretty(items).map_err(|e| CliError::Input(e.to_string()))? + "\n"
        }
        Format::Yaml => serde_yaml::to_string(items).map_err(|e| CliError::Input(e.to_string()))?,
    };
    print!("{text}");
    Ok(())
}

async fn run(cli: Cli) -> Result<(), CliError> {
    // Input is checked before the cluster is reached, so bad flags fail fast and the same way everywhere.
    let job = match &cli.command {
        Command::Submit { file: Some(path), .. } => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::Input(format!("{}: {e}", path.display())))?;
            let mut job = submission::from_yaml(&text, &path.display().to_string())?;
            job.metadata.namespace.get_or_insert_with(|| cli.namespace.clone());
            Some(job)
        }
        Command::Submit { file: None, flags } => Some(submission::from_flags(flags, &cli.namespace)?),
        _ => None,
    };
    if let Command::Simulate { jobs, federation, throughputs, policy, decisions } = &cli.command {
        return simulate(cli.output, jobs, federation, throughputs, policy, decisions.as_deref());
    }
    let now = jiff::Timestamp::now().as_second();
    let request = match &cli.command {
        Command::Quota { action: QuotaAction::Request(f) } => Some(quota::request(f, &cli.namespace, now)?),
        _ => None,
    };
    let client = crate::cluster::connect(cli.kubeconfig.as_deref()).await?;
    let ns = job.as_ref().and_then(|j| j.metadata.namespace.clone()).unwrap_or_else(|| cli.namespace.clone());
    let cluster = Cluster::new(client, &ns);
    let f = cli.output;
    match cli.command {
        Command::Get { what: What::Jobs } => {
            let jobs = cluster.jobs().await?;
            print(f, &jobs, || view::jobs(&jobs))
        }
        Command::Get { what: What::Pools } => {
            let pools = cluster.pools().await?;
            print(f, &pools, || view::pools(&pools))
        }
        Command::Get { what: What::Queues } => {
            let queues = cluster.queues().await?;
            print(f, &queues, || view::queues(&queues))
        }
        Command::Get { what: What::Quota } | Command::Quota { action: QuotaAction::List } => {
            let requests = cluster.requests().await?;
            print(f, &requests, || view::requests(&requests))
        }
        Command::Explain { job } => {
            let j = cluster.job(&job).await?;
            print(f, &j, || view::explain(&j))
        }
        Command::Submit { .. } => {
            let Some(job) = job else { return Ok(()) };
            let made = cluster.create_job(&job).await?;
            let name = made.metadata.name.clone().unwrap_or_default();
            print(f, &made, || format!("computejob/{name} submitted to queue {}\n", made.spec.queue))
        }
        Command::Quota { action: QuotaAction::Request(_) } => {
            let Some(r) = request else { return Ok(()) };
            let made = cluster.create_request(&r).await?;
            let name = made.metadata.name.clone().unwrap_or_default();
            print(f, &made, || {
                format!("quotarequest/{name} created; approve it with: haiyun quota approve {name}\n")
            })
        }
        Command::Quota { action: QuotaAction::Approve { name } } => {
            let r = cluster.decide(&name, "Approved").await?;
            print(f, &r, || format!("quotarequest/{name} approved\n"))
        }
        Command::Quota { action: QuotaAction::Deny { name } } => {
            let r = cluster.decide(&name, "Denied").await?;
            print(f, &r, || format!("quotarequest/{name} denied\n"))
        }
        Command::Simulate { .. } | Command::Demo(_) => Ok(()), // handled before: they need no cluster
        Command::Top => {
            let (pools, queues) = (cluster.pools().await?, cluster.queues().await?);
            let both = serde_json::json!({"pools": pools, "queues": queues});
            print(f, &both, || view::top(&pools, &queues))
        }
    }
}

/// `haiyun simulate`: the discrete-event replay of the JCT benchmark on the given inputs.
fn simulate(
    f: Format,
    jobs: &std::path::Path,
    federation: &str,
    throughputs: &std::path::Path,
    policy: &str,
    decisions: Option<&std::path::Path>,
) -> Result<(), CliError> {
    for (flag, path) in [("--jobs", jobs), ("--throughputs", throughputs)] {
        if !path.is_file() {
            return Err(CliError::Input(format!("{flag} {}: no such file", path.display())));
        }
    }
    let (report, run) = haiyun_benches::jct::run(jobs, throughputs, federation, policy)
        .map_err(|e| CliError::Input(e.to_string().replace("--cluster", "--federation")))?;
    if let Some(path) = decisions {
        let lines: Vec<String> = run.decisions.iter().filter_map(|d| serde_json::to_string(d).ok()).collect();
        std::fs::write(path, lines.join("\n") + "\n")
            .map_err(|e| CliError::Input(format!("--decisions {}: {e}", path.display())))?;
    }
    print(f, &report, || {
        let r = &report;
        let rows = vec![
            vec!["jobs completed".into(), format!("{} of {}", r.completed, r.jobs)],
            vec!["average JCT".into(), format!("{:.2} h", r.avg_jct_h)],
            vec!["median / p99 JCT".into(), format!("{:.2} h / {:.2} h", r.median_jct_h, r.p99_jct_h)],
            vec!["makespan".into(), format!("{:.1} h", r.makespan_h)],
            vec!["GPU utilisation".into(), format!("{:.1} %", r.gpu_util_pct)],
            vec!["jobs that waited".into(), r.jobs_that_waited.to_string()],
            vec!["longest wait".into(), format!("{:.2} h", r.max_wait_h)],
            vec!["preemptions".into(), r.preemptions.to_string()],
            vec![
                "start estimate error (median)".into(),
                format!("{:.2} h", r.start_estimate_median_abs_err_h),
            ],
        ];
        format!("{} under {}:\n{}", r.workload, r.policy, view::table(&["MEASURE", "VALUE"], &rows))
    })
}

/// Runs the command line and returns its exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
        Err(e) => {
            // One line: clap's first line names the problem; the usage is one `--help` away.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("error: bad arguments");
            eprintln!("{first} (see --help)");
            return ExitCode::from(2);
        }
    };
    if let Command::Demo(args) = cli.command {
        return match crate::demo::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(e.code())
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.code())
        }
    }
}
