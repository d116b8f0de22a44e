//! One inventory plus sample of a node as JSON (`haiyun-agent --once --json`).

use serde::Serialize;

use crate::health::{Health, HealthBook};
use crate::probe::{GpuProbe, ProbeError};

/// One GPU in the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuReport {
    /// Index on the node.
    pub index: u32,
    /// Stable id.
    pub uuid: String,
    /// Product name.
    pub name: String,
    /// Device memory, bytes.
    pub memory_total_bytes: u64,
    /// Memory in use, bytes.
    pub memory_used_bytes: Option<u64>,
    /// Utilisation, percent.
    pub utilization_gpu_pct: Option<u32>,
    /// Temperature, °C.
    pub temperature_c: Option<u32>,
    /// Power, milliwatts.
    pub power_mw: Option<u32>,
    /// NVLink peers.
    pub nvlink_peers: Vec<u32>,
    /// PCI bus id.
    pub pci_bus_id: String,
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
    let health = HealthBook::default().update(&inventory, &samples, &xids);
    let gpus = inventory
        .into_iter()
        .map(|g| {
            let s = samples.iter().find(|s| s.index == g.index).cloned().unwrap_or_default();
            GpuReport {
                index: g.index,
                health: health.get(&g.index).cloned().unwrap_or(Health::Unknown("no reading".into())),
                uuid: g.uuid,
                name: g.name,
                memory_total_bytes: g.memory_total_bytes,
                memory_used_bytes: s.memory_used_bytes,
                utilization_gpu_pct: s.utilization_gpu_pct,
                temperature_c: s.temperature_c,
                power_mw: s.power_mw,
                nvlink_peers: g.nvlink_peers,
                pci_bus_id: g.pci_bus_id,
            }
        })
        .collect();
    Ok(NodeReport { node: node.into(), gpus })
}
