//! One inventory plus sample of a node as JSON (`haiyun-agent --once --json`).

use serde::Serialize;

use crate::health::{Health, HealthBook};
use crate::probe::{GpuInfo, GpuProbe, GpuSample, ProbeError};

/// One GPU in the report: what it is, what it is doing, and whether it may take work.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuReport {
    /// What it is.
    #[serde(flatten)]
    pub info: GpuInfo,
    /// Its reading (a field the device could not give is `null`).
    #[serde(flatten)]
    pub sample: GpuSample,
    /// Health.
    pub health: Health,
}

/// A node's report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeReport {
    /// The node.
    pub node: String,
    /// Its GPUs.
    pub gpus: Vec<GpuReport>,
}

/// Reads the probe once.
pub fn once(node: &str, probe: &mut dyn GpuProbe) -> Result<NodeReport, ProbeError> {
    let inventory = probe.inventory()?;
    let samples = probe.sample()?;
    let xids = probe.xids();
    let health = HealthBook::default().update(&inventory, &samples, &xids, &[]);
    let gpus = inventory
        .into_iter()
        .map(|info| {
            let sample = samples.iter().find(|s| s.index == info.index).cloned().unwrap_or_default();
            let health = health.get(&info.index).cloned().unwrap_or(Health::Unknown("no reading".into()));
            GpuReport { info, sample, health }
        })
        .collect();
    Ok(NodeReport { node: node.into(), gpus })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::fake::FakeProbe;

    #[test]
    fn the_report_carries_the_fields_nvml_check_reads() {
        let mut p = FakeProbe::profile("dgx-h100").unwrap();
        let r = serde_json::to_value(once("n", &mut p).unwrap()).unwrap();
        let g = &r["gpus"][3];
        for field in
            ["index", "uuid", "name", "memory_total_bytes", "memory_used_bytes", "utilization_gpu_pct"]
        {
            assert!(!g[field].is_null(), "{field} in {g}");
        }
        assert_eq!(g["index"], 3);
        assert_eq!(g["health"]["state"], "healthy");
        assert_eq!(g["numa_node"], 0);
        assert_eq!(r["node"], "n");
    }
}
