//! `haiyun report`: usage from the operator's ledger, read through the API server's service proxy (under RBAC: `get`
//! on `services/proxy`), as a table, CSV or JSON (like Slurm's `sreport`).

use haiyun_operator::ledger::api::Report;
use haiyun_operator::ledger::usage::Usage;
use kube::Client;

use crate::cluster::CliError;

/// The proxy path of the ledger's report on `service` (`<namespace>/<name>:<port>`) for `query`.
pub fn path(service: &str, query: &Usage) -> Result<String, CliError> {
    let bad = || {
        CliError::Input(format!(
            "--service {service}: expected <namespace>/<name>:<port>, e.g. haiyun-system/haiyun-operator-dashboard:http"
        ))
    };
    let (ns, rest) = service.split_once('/').ok_or_else(bad)?;
    let (name, port) = rest.split_once(':').ok_or_else(bad)?;
    if [ns, name, port].iter().any(|s| s.is_empty() || s.contains(['/', '?', '&'])) {
        return Err(bad());
    }
    let by =
        serde_json::to_value(query.by).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    let mut p = format!("/api/v1/namespaces/{ns}/services/{name}:{port}/proxy/api/v1/usage?by={by}");
    // Canonical UTC times: nothing in them needs escaping.
    if let Some(f) = query.from {
        p.push_str(&format!("&from={}", haiyun_operator::time::rfc3339(f)));
    }
    if let Some(t) = query.to {
        p.push_str(&format!("&to={}", haiyun_operator::time::rfc3339(t)));
    }
    Ok(p)
}

/// Reads the report at `path`.
pub async fn fetch(client: &Client, path: &str) -> Result<Report, CliError> {
    let req = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| CliError::Input(format!("the report's request: {e}")))?;
    let text = client.request_text(req).await.map_err(|e| match e {
        kube::Error::Api(s) => {
            // The operator and the API server both say why in a Status.
            let why = if s.message.is_empty() {
                format!("HTTP {} for the usage report", s.code)
            } else {
                s.message
            };
            match s.code {
                404 => CliError::NotFound {
                    kind: "Service",
                    name: path
                        .split("/services/")
                        .nth(1)
                        .and_then(|s| s.split('/').next())
                        .unwrap_or("")
                        .into(),
                    hint: " (the operator's dashboard Service; set --service <namespace>/<name>:<port>)"
                        .into(),
                },
                _ => CliError::Refused(why),
            }
        }
        other => CliError::Unreachable(other.to_string()),
    })?;
    serde_json::from_str(&text)
        .map_err(|e| CliError::Refused(format!("the operator's report did not parse: {e}")))
}

const HEADER: [&str; 7] =
    ["KEY", "RUNS", "GPU_SECONDS", "CPU_CORE_SECONDS", "MEMORY_GIB_SECONDS", "ENERGY_JOULES", "COST"];

fn cells(r: &haiyun_operator::ledger::usage::UsageRow) -> Vec<String> {
    vec![
        if r.key.is_empty() { "(none)".into() } else { r.key.clone() },
        r.runs.to_string(),
        format!("{:.0}", r.gpu_seconds),
        format!("{:.0}", r.cpu_core_seconds),
        format!("{:.0}", r.memory_gib_seconds),
        format!("{:.0}", r.energy_joules),
        format!("{:.2}", r.cost),
    ]
}

/// The report as a table, its window above it.
pub fn table(r: &Report) -> String {
    let rows: Vec<Vec<String>> = r.rows.iter().map(cells).collect();
    let by =
        serde_json::to_value(r.by).ok().and_then(|v| v.as_str().map(str::to_uppercase)).unwrap_or_default();
    let mut header: Vec<&str> = HEADER.to_vec();
    header[0] = &by;
    let from = r.from.as_deref().unwrap_or("the start");
    format!("usage from {from} to {}\n{}", r.to, crate::view::table(&header, &rows))
}

/// The report as CSV, one header line then one line per key.
pub fn csv(r: &Report) -> String {
    let by = serde_json::to_value(r.by).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    let mut out = format!("{by},runs,gpu_seconds,cpu_core_seconds,memory_gib_seconds,energy_joules,cost\n");
    for row in &r.rows {
        let key = if row.key.contains([',', '"', '\n']) {
            format!("\"{}\"", row.key.replace('"', "\"\""))
        } else {
            row.key.clone()
        };
        out.push_str(&format!(
            "{key},{},{},{},{},{},{}\n",
            row.runs,
            row.gpu_seconds,
            row.cpu_core_seconds,
            row.memory_gib_seconds,
            row.energy_joules,
            row.cost
        ));
    }
    out
}
