//! The command line itself: flags, dispatch, output formats and exit codes (0 done, 2 bad input, 3 not found,
//! 4 cluster unreachable, 5 refused by the API server).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::cluster::{CliError, Cluster};
use crate::view::Tabular;
use crate::{description, logs, quota, submission, view, watch};
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use haiyun_api::{ComputeJob, ComputePool, Queue, QuotaRequest};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

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

/// How a command prints what it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Tables and sentences for people.
    Table,
    /// JSON for scripts.
    Json,
    /// YAML for scripts.
    Yaml,
    /// CSV (`haiyun report` only).
    Csv,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Lists jobs, pools, queues or quota requests, or shows one by name; `-w` then prints each change.
    #[command(alias = "list")]
    Get {
        /// What to list (kubectl's names work too: job, cjob, pool, queue, qr).
        #[arg(value_enum)]
        what: What,
        /// Only this one (not found: exit code 3).
        name: Option<String>,
        /// After the list, print a row each time one changes (with -o json, one object per line), until Ctrl-C.
        #[arg(short, long)]
        watch: bool,
    },
    /// A job in detail: spec, status, conditions, why it waits, its pods and its events.
    Describe {
        /// What to describe: job.
        #[arg(value_enum)]
        what: Object,
        /// Its name.
        name: String,
    },
    /// Why a job waits, phase by phase, what would let it start sooner, when it may start, and what to run.
    Explain {
        /// The job.
        job: String,
    },
    /// The log of a job's task (task 0 of its first task group unless told).
    Logs(logs::LogsFlags),
    /// Submits a job from a YAML file (`-f`) or from flags.
    Submit {
        /// A ComputeJob manifest.
        #[arg(short, long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        flags: submission::JobFlags,
    },
    /// Deletes a job; its pods and Service go with it.
    Delete {
        /// What to delete: job.
        #[arg(value_enum)]
        what: Object,
        /// Its name.
        name: String,
    },
    /// Quota requests: ask for more, decide, list.
    Quota {
        #[command(subcommand)]
        action: QuotaAction,
    },
    /// Capacity and allocation by pool and GPU model, and queue usage.
    Top,
    /// Usage from the ledger, one row per queue, namespace, user, pool, site, GPU model or dataset: GPU-seconds,
    /// CPU core-seconds, energy and cost inside a window (runs that overlap it are clipped to it), like `sreport`.
    Report {
        /// What to group by: queue, namespace, user, pool, site, model or dataset.
        #[arg(long, default_value = "queue")]
        by: String,
        /// The window's start: an RFC 3339 time or a date (default: all time).
        #[arg(long)]
        from: Option<String>,
        /// The window's end: an RFC 3339 time or a date (default: now).
        #[arg(long)]
        to: Option<String>,
        /// The operator's dashboard Service, reached through the API server's service proxy.
        #[arg(long, default_value = "haiyun-system/haiyun-operator-dashboard:http")]
        service: String,
    },
    /// Prints a shell completion script, e.g. `source <(haiyun completion bash)`.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
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
    /// The audit trail (a decision log file): verify its hash chain, or show the runs that read a dataset.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Runs a whole federation in this process, without Kubernetes: simulated pools, node agents streaming over
    /// gRPC, five teams' queues and a stream of jobs; serves the dashboard and an API this CLI can use.
    Demo(crate::demo::DemoArgs),
}

#[derive(Debug, Subcommand)]
enum AuditAction {
    /// Checks that no record was edited, removed, added or moved (exit 6 naming the first bad line).
    Verify {
        /// The decision log (the operator's --decision-log, the demo's).
        file: PathBuf,
    },
    /// The runs that read a dataset (or of a job): when they started, who submitted them, where they ran.
    Show {
        /// The decision log.
        file: PathBuf,
        /// Only runs that read this dataset.
        #[arg(long)]
        dataset: Option<String>,
        /// Only runs of this job (`namespace/name`).
        #[arg(long)]
        job: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum What {
    #[value(aliases = ["job", "computejob", "computejobs", "cjob"])]
    Jobs,
    #[value(aliases = ["pool", "computepool", "computepools"])]
    Pools,
    #[value(aliases = ["queue", "hq"])]
    Queues,
    #[value(aliases = ["quotarequest", "quotarequests", "qr"])]
    Quota,
}

/// What `describe` and `delete` take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Object {
    #[value(aliases = ["jobs", "computejob", "computejobs", "cjob"])]
    Job,
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
        Format::Csv => return Err(CliError::Input("-o csv: only `haiyun report` prints CSV".into())),
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
    if let Command::Audit { action } = &cli.command {
        return audit(cli.output, action);
    }
    let report = match &cli.command {
        Command::Report { by, from, to, service } => {
            let query =
                haiyun_operator::ledger::usage::Usage::parse(Some(by), from.as_deref(), to.as_deref())
                    .map_err(|e| CliError::Input(format!("--{e}").replacen('=', " ", 1)))?;
            Some(crate::usage::path(service, &query)?)
        }
        _ => None,
    };
    if cli.output == Format::Csv && report.is_none() {
        return Err(CliError::Input("-o csv: only `haiyun report` prints CSV".into()));
    }
    let now = jiff::Timestamp::now().as_second();
    let request = match &cli.command {
        Command::Quota { action: QuotaAction::Request(f) } => Some(quota::request(f, &cli.namespace, now)?),
        _ => None,
    };
    // Watches and followed logs wait on the server as long as it takes; nothing else waits longer than 15 s.
    let streaming = matches!(
        &cli.command,
        Command::Get { watch: true, .. } | Command::Logs(logs::LogsFlags { follow: true, .. })
    );
    let client = crate::cluster::connect(cli.kubeconfig.as_deref(), streaming).await?;
    let ns = job.as_ref().and_then(|j| j.metadata.namespace.clone()).unwrap_or_else(|| cli.namespace.clone());
    let cluster = Cluster::new(client, &ns);
    let f = cli.output;
    match cli.command {
        Command::Get { what, name, watch } => {
            let (c, name) = (&cluster, name.as_deref());
            match what {
                What::Jobs => get(c, c.namespaced::<ComputeJob>(), name, watch, f).await,
                What::Pools => get(c, c.all::<ComputePool>(), name, watch, f).await,
                What::Queues => get(c, c.all::<Queue>(), name, watch, f).await,
                What::Quota => get(c, c.namespaced::<QuotaRequest>(), name, watch, f).await,
            }
        }
        Command::Quota { action: QuotaAction::List } => {
            get(&cluster, cluster.namespaced::<QuotaRequest>(), None, false, f).await
        }
        Command::Describe { what: Object::Job, name } => {
            let j = cluster.job(&name).await?;
            let (pods, events) = (cluster.pods_of(&j).await?, cluster.events_of(&j).await?);
            let now = jiff::Timestamp::now();
            let all = serde_json::json!({"job": j, "pods": pods, "events": events});
            print(f, &all, || description::job(&j, &pods, &events, now))
        }
        Command::Logs(flags) => logs::print(&cluster, &flags).await,
        Command::Delete { what: Object::Job, name } => {
            cluster.delete_job(&name).await?;
            let done =
                serde_json::json!({"kind": "ComputeJob", "namespace": ns, "name": name, "deleted": true});
            print(f, &done, || format!("computejob/{name} deleted\n"))
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
        // Handled before: they need no cluster.
        Command::Simulate { .. } | Command::Demo(_) | Command::Completion { .. } | Command::Audit { .. } => {
            Ok(())
        }
        Command::Report { .. } => {
            let r = crate::usage::fetch(&cluster.client(), report.as_deref().unwrap_or_default()).await?;
            match f {
                Format::Csv => {
                    print!("{}", crate::usage::csv(&r));
                    Ok(())
                }
                _ => print(f, &r, || crate::usage::table(&r)),
            }
        }
        Command::Top => {
            let (pools, queues) = (cluster.pools().await?, cluster.queues().await?);
            let both = serde_json::json!({"pools": pools, "queues": queues});
            print(f, &both, || view::top(&pools, &queues))
        }
    }
}

/// `haiyun get KIND [NAME] [-w]`: the list, or one object, or the list and then each change.
async fn get<K>(
    cluster: &Cluster,
    api: Api<K>,
    name: Option<&str>,
    watch: bool,
    f: Format,
) -> Result<(), CliError>
where
    K: Tabular + Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug + Send + 'static,
{
    if watch {
        return watch::run(api, name, f).await;
    }
    match name {
        Some(n) => {
            let one = cluster.get(&api, n).await?;
            print(f, &one, || view::rows(std::slice::from_ref(&one)))
        }
        None => {
            let all = cluster.list(api).await?;
            print(f, &all, || view::rows(&all))
        }
    }
}

/// `haiyun audit verify|show`.
fn audit(f: Format, action: &AuditAction) -> Result<(), CliError> {
    match action {
        AuditAction::Verify { file } => {
            let head = crate::audit::verify(file)?;
            let out = serde_json::json!({ "records": head.seq, "lastHash": head.hash });
            print(f, &out, || {
                format!("{}: {} records, chain intact (last hash {})\n", file.display(), head.seq, head.hash)
            })
        }
        AuditAction::Show { file, dataset, job } => {
            let runs = crate::audit::show(file, dataset.as_deref(), job.as_deref())?;
            print(f, &runs, || crate::audit::table(&runs))
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
    if let Command::Completion { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "haiyun", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The words of a suggested command, as a shell splits them (suggestions quote nothing).
    fn words(command: &str) -> Vec<&str> {
        command.split_whitespace().collect()
    }

    #[test]
    fn the_quota_request_explain_suggests_is_one_the_parser_and_the_request_builder_accept() {
        let j: ComputeJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputeJob",
            "metadata": {"name": "big", "namespace": "ml"},
            "spec": {"queue": "team-a", "runtimeEstimate": "3h", "taskGroups": [{"name": "w", "replicas": 2, "gpus": 8}]},
            "status": {"phase": "Queued", "pendingReasons": [{"phase": "quota",
                "message": "quota: queue team-a needs 16 nvidia.com/gpu:h100, 6 left, cohort can lend 0",
                "flavor": "nvidia.com/gpu:h100", "needed": "16", "left": "6", "cohortCanLend": "0"}]}
        }))
        .unwrap();
        let text = view::explain(&j);
        let line = text.lines().find(|l| l.starts_with("Run: haiyun quota request")).unwrap();
        let command = line.strip_prefix("Run: ").unwrap().split("  # ").next().unwrap();
        let cli = Cli::try_parse_from(words(command)).unwrap();
        assert_eq!(cli.namespace, "ml");
        let Command::Quota { action: QuotaAction::Request(flags) } = cli.command else { panic!("{command}") };
        assert_eq!(
            (flags.queue.as_str(), flags.flavor.as_str(), flags.amount.as_str(), flags.hours),
            ("team-a", "nvidia.com/gpu:h100", "10", 3.0)
        );
        let r = quota::request(&flags, &cli.namespace, 1_800_000_000).unwrap();
        assert_eq!((r.spec.amount.as_str(), r.metadata.namespace.as_deref()), ("10", Some("ml")));
    }

    #[test]
    fn every_other_suggested_command_parses_too() {
        let j: ComputeJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "haiyun.io/v1alpha1", "kind": "ComputeJob",
            "metadata": {"name": "j", "namespace": "ml"},
            "spec": {"queue": "q", "taskGroups": [{"name": "w", "replicas": 1, "gpus": 1}]},
            "status": {"phase": "Queued", "pendingReasons": [
                {"phase": "data-clearance", "message": "data clearance: no pool is cleared for core data"},
                {"phase": "placement", "message": "placement: in pool p: no node has 1 free GPU"},
                {"phase": "queue", "message": "queue q does not exist"},
                {"phase": "quota", "message": "quota: queue q needs 64 GiB", "flavor": "memory", "needed": "64 GiB"}]}
        }))
        .unwrap();
        let suggestions = view::suggestions(&j);
        assert_eq!(suggestions.len(), 4, "{suggestions:?}");
        for s in suggestions {
            let cli = Cli::try_parse_from(words(&s.command)).unwrap_or_else(|e| panic!("{}: {e}", s.command));
            if let Command::Quota { action: QuotaAction::Request(flags) } = &cli.command {
                assert_eq!(quota::request(flags, "ml", 0).unwrap().spec.amount, "64Gi");
            }
        }
    }

    #[test]
    fn get_takes_a_name_kubectl_s_kind_names_and_watch() {
        let cli = Cli::try_parse_from(["haiyun", "get", "job", "train", "-w", "-o", "json"]).unwrap();
        assert!(
            matches!(cli.command, Command::Get { what: What::Jobs, name: Some(ref n), watch: true } if n == "train")
        );
        for (kind, what) in
            [("pool", What::Pools), ("queue", What::Queues), ("qr", What::Quota), ("cjob", What::Jobs)]
        {
            let cli = Cli::try_parse_from(["haiyun", "get", kind]).unwrap();
            assert!(matches!(cli.command, Command::Get { what: w, name: None, watch: false } if w == what));
        }
        let cli = Cli::try_parse_from(["haiyun", "logs", "train", "--task", "2", "--group", "worker", "-f"])
            .unwrap();
        let Command::Logs(l) = cli.command else { panic!("not logs") };
        assert_eq!(
            (l.job.as_str(), l.task, l.group.as_deref(), l.follow),
            ("train", 2, Some("worker"), true)
        );
        assert!(Cli::try_parse_from(["haiyun", "describe", "job", "train"]).is_ok());
        assert!(Cli::try_parse_from(["haiyun", "delete", "jobs", "train"]).is_ok());
        assert!(Cli::try_parse_from(["haiyun", "delete", "pool", "p"]).is_err());
        assert!(Cli::try_parse_from(["haiyun", "completion", "zsh"]).is_ok());
    }
}
