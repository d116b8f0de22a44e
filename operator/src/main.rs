//! `haiyun-operator`: runs the operator, or writes the CRDs (`crdgen`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "haiyun-operator", version, about = "Haiyun's Kubernetes operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes the CRDs as YAML into a folder (default: charts/haiyun/crds), or to stdout with `-`.
    Crdgen {
        /// The folder, or `-` for stdout.
        #[arg(default_value = "charts/haiyun/crds")]
        out: String,
    },
    /// Runs the operator against the cluster of the current kubeconfig (or in-cluster config).
    Run(Box<haiyun_operator::Settings>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crdgen { out } => crdgen(&out),
        Command::Run(settings) => haiyun_operator::run(*settings).map_err(anyhow::Error::from),
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
