//! `haiyun-operator`: runs the operator, or writes the CRDs (`crdgen`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The release, or `HAIYUN_VERSION` when the build sets it (`scripts/images.sh --version`).
const VERSION: &str = match option_env!("HAIYUN_VERSION") {
    Some(v) if !v.is_empty() => v,
    _ => env!("CARGO_PKG_VERSION"),
};

#[derive(Debug, Parser)]
#[command(name = "haiyun-operator", version = VERSION, about = "Haiyun's Kubernetes operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes the CRDs as YAML into a folder (default: charts/haiyun/files/crds), or to stdout with `-`.
    Crdgen {
        /// The folder, or `-` for stdout.
        #[arg(default_value = "charts/haiyun/files/crds")]
        out: String,
    },
    /// Runs the operator against the cluster of the current kubeconfig (or in-cluster config).
    Run(Box<haiyun_operator::Settings>),
    /// The fence holder of policy `fenced`, run inside a remote cluster: deletes the pods of operator `origin` there
    /// once its fence Lease (namespace `haiyun-fence`) has not been renewed for the Lease's duration.
    Fence {
        /// The operator's origin (`<lease>.<namespace>`, as its pods' `haiyun.io/origin` label says).
        #[arg(long)]
        origin: String,
        /// Milliseconds between reads of the Lease.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// A kubeconfig of this cluster (default: the usual one, or in-cluster config).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// The node fence holder, one per node (the chart's `nodeFence` DaemonSet): renews the node's fence Lease, and
    /// once it has not for `--seconds` (the node cut off from its API server) stops Haiyun's pods on the node through
    /// the container runtime, so the operator may run their jobs elsewhere.
    NodeFence {
        /// The node (its name in its own cluster).
        #[arg(long, env = "NODE_NAME")]
        node: String,
        /// The fence timeout: without renewing the Lease this long, the node's Haiyun pods are stopped.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// The namespace of the node's fence Lease.
        #[arg(long, env = "POD_NAMESPACE", default_value = "haiyun-system")]
        namespace: String,
        /// The container runtime's CRI socket.
        #[arg(long, default_value = "/run/containerd/containerd.sock")]
        cri_socket: PathBuf,
        /// A kubeconfig of this cluster (default: the usual one, or in-cluster config).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Before `helm uninstall` (the chart's pre-delete hook): stops the operator's Deployment, then removes Haiyun's
    /// finalizers from every ComputeJob so that deleting jobs or the CRDs never waits for an operator that is gone.
    Uninstall {
        /// The operator's namespace.
        #[arg(long, env = "POD_NAMESPACE", default_value = "haiyun-system")]
        namespace: String,
        /// The operator's Deployment.
        #[arg(long, default_value = "haiyun-operator")]
        deployment: String,
        /// The operator's Lease (its history ConfigMap is `<lease>-history`).
        #[arg(long, default_value = "haiyun-operator")]
        lease: String,
        /// The node fence holders' DaemonSet, when the release runs one (it goes first, with its Leases).
        #[arg(long)]
        node_fence: Option<String>,
        /// Seconds to wait for its pods to end.
        #[arg(long, default_value_t = 60)]
        wait_seconds: u64,
        /// A kubeconfig (default: the usual one, or in-cluster config).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crdgen { out } => crdgen(&out),
        Command::Run(settings) => haiyun_operator::run(*settings, VERSION).map_err(anyhow::Error::from),
        Command::Fence { origin, interval_ms, kubeconfig } => fence(origin, interval_ms, kubeconfig),
        Command::NodeFence { node, seconds, namespace, cri_socket, kubeconfig } => {
            node_fence(node, seconds, namespace, cri_socket, kubeconfig)
        }
        Command::Uninstall { namespace, deployment, lease, node_fence, wait_seconds, kubeconfig } => {
            uninstall(&namespace, (&deployment, node_fence.as_deref()), &lease, wait_seconds, kubeconfig)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn crdgen(out: &str) -> anyhow::Result<()> {
    let files = haiyun_api::crd::yaml_files()?;
    if out == "-" {
        for (_, yaml) in files {
            print!("---\n{yaml}");
        }
        return Ok(());
    }
    let dir = PathBuf::from(out);
    std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("failed to create {}: {e}", dir.display()))?;
    for (name, yaml) in files {
        let path = dir.join(name);
        std::fs::write(&path, yaml)
            .map_err(|e| anyhow::anyhow!("failed to write {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn fence(origin: String, interval_ms: u64, kubeconfig: Option<PathBuf>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let _telemetry = haiyun_operator::telemetry::init(None)?;
        let client = haiyun_operator::client(kubeconfig.as_deref()).await?;
        let interval = std::time::Duration::from_millis(interval_ms.max(100));
        tracing::info!(%origin, "guarding the fence Lease");
        haiyun_operator::backend::remote::fence::hold(client, origin, interval).await;
        Ok(())
    })
}

fn node_fence(
    node: String,
    seconds: u64,
    namespace: String,
    cri: PathBuf,
    kubeconfig: Option<PathBuf>,
) -> anyhow::Result<()> {
    anyhow::ensure!(seconds > 0, "--seconds must be at least 1 (the fence timeout)");
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let _telemetry = haiyun_operator::telemetry::init(None)?;
        let client = haiyun_operator::client(kubeconfig.as_deref()).await?;
        let cfg = haiyun_operator::backend::kubernetes::guard::FenceConfig {
            node,
            namespace,
            timeout: std::time::Duration::from_secs(seconds),
            cri,
        };
        let mut stop = haiyun_operator::shutdown();
        tokio::select! {
            () = haiyun_operator::backend::kubernetes::guard::run(client.clone(), cfg.clone()) => {}
            _ = stop.changed() => haiyun_operator::backend::kubernetes::guard::release(client, &cfg).await,
        }
        Ok(())
    })
}

fn uninstall(
    namespace: &str,
    (deployment, node_fence): (&str, Option<&str>),
    lease: &str,
    wait: u64,
    kubeconfig: Option<PathBuf>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let client = haiyun_operator::client(kubeconfig.as_deref()).await?;
        let wait = std::time::Duration::from_secs(wait);
        let done = haiyun_operator::uninstall::run(&client, namespace, (deployment, node_fence), lease, wait)
            .await?;
        println!("stopped deployment {namespace}/{deployment}");
        if let Some(ds) = node_fence {
            println!("removed the node fence holders ({namespace}/{ds}) and their Leases");
        }
        if done.jobs.is_empty() {
            println!("no ComputeJob held a Haiyun finalizer");
        }
        for job in done.jobs {
            println!("removed Haiyun's finalizers from ComputeJob {job}");
        }
        Ok(())
    })
}
