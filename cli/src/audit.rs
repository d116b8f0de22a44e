//! `haiyun audit`: checks the decision log's hash chain, and lists the runs that read a dataset (who ran them, where
//! and when) from it. Reads a file: the operator's `--decision-log` (copied out of its volume) or the demo's.

use std::path::Path;

use serde_json::Value;

use crate::cluster::CliError;

fn read(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|e| CliError::Input(format!("{}: {e}", path.display())))
}

/// `verify`: the number of records and the last hash, or where the chain breaks.
pub fn verify(path: &Path) -> Result<haiyun_operator::audit::Head, CliError> {
    haiyun_operator::audit::verify(&read(path)?)
        .map_err(|e| CliError::Tampered(format!("{}: {e}", path.display())))
}

/// `show`: the `place` records (each run's start) of the runs that read `dataset` and of `job`, oldest first. The
/// chain is verified first: a record from a file that does not verify is not shown.
pub fn show(path: &Path, dataset: Option<&str>, job: Option<&str>) -> Result<Vec<Value>, CliError> {
    verify(path)?;
    let text = read(path)?;
    let lines = text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok());
    Ok(lines
        .filter(|d| d["event"] == "place")
        .filter(|d| {
            dataset.is_none_or(|ds| d["datasets"].as_array().is_some_and(|a| a.iter().any(|x| x == ds)))
        })
        .filter(|d| job.is_none_or(|j| d["job"] == j))
        .collect())
}

/// The runs as a table.
pub fn table(runs: &[Value]) -> String {
    let nodes = |d: &Value| {
        let mut n: Vec<&str> =
            d["tasks"].as_array().into_iter().flatten().filter_map(|t| t["node"].as_str()).collect();
        n.dedup();
        n.join(",")
    };
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|d| {
            let datasets: Vec<String> = d["datasets"].as_array().into_iter().flatten().map(s).collect();
            let who = s(&d["submitter"]);
            vec![
                s(&d["time"]),
                s(&d["job"]),
                if who.is_empty() { "(not stamped)".into() } else { who },
                s(&d["pool"]),
                nodes(d),
                datasets.join(","),
                d["seq"].to_string(),
            ]
        })
        .collect();
    crate::view::table(&["STARTED", "JOB", "SUBMITTER", "POOL", "NODES", "DATASETS", "RECORD"], &rows)
}
