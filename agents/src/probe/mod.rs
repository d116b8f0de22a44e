//! GPU probes: what a node's GPUs are (inventory) and what they are doing (samples), from NVML or a fake machine.

pub mod fake;
pub mod nvml;
pub mod slot;

use std::collections::BTreeMap;

use serde::Serialize;

/// One GPU as it is installed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuInfo {
    /// Index on the node.
    pub index: u32,
    /// Stable id (`GPU-…`).
    pub uuid: String,
    /// Product name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Device memory in bytes.
    pub memory_total_bytes: u64,
    /// Whether MIG mode is on.
    pub mig_enabled: bool,
    /// Indices of the GPUs it reaches over NVLink.
    pub nvlink_peers: Vec<u32>,
    /// PCI bus id.
    pub pci_bus_id: String,
    /// NUMA node, when known.
    pub numa_node: Option<u32>,
    /// Its MIG instances, in MIG mode.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mig: Vec<MigInfo>,
}

/// One MIG instance of a GPU in MIG mode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MigInfo {
    /// Its profile, e.g. `1g.10gb`.
    pub profile: String,
    /// Stable id (`MIG-…`).
    pub uuid: String,
    /// Its memory in bytes.
    pub memory_total_bytes: u64,
}

/// One reading of one GPU; a field the device could not give is `None`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct GpuSample {
    /// Index on the node.
    #[serde(skip_serializing)]
    pub index: u32,
    /// Memory in use, bytes.
    pub memory_used_bytes: Option<u64>,
    /// GPU utilisation, percent.
    pub utilization_gpu_pct: Option<u32>,
    /// Memory-copy utilisation (time the memory controller was busy), percent.
    pub memory_copy_pct: Option<u32>,
    /// PCIe bytes sent per second.
    pub pcie_tx_bytes_per_s: Option<u64>,
    /// PCIe bytes received per second.
    pub pcie_rx_bytes_per_s: Option<u64>,
    /// NVLink data bytes sent per second (GPUs with NVLink only).
    pub nvlink_tx_bytes_per_s: Option<u64>,
    /// NVLink data bytes received per second.
    pub nvlink_rx_bytes_per_s: Option<u64>,
    /// Temperature, °C.
    pub temperature_c: Option<u32>,
    /// Power draw, milliwatts.
    pub power_mw: Option<u32>,
    /// Energy used since the driver loaded, millijoules (a counter).
    pub energy_mj: Option<u64>,
    /// SM clock, MHz.
    pub sm_clock_mhz: Option<u32>,
    /// Volatile double-bit ECC errors since boot.
    pub ecc_double_bit: Option<u64>,
    /// Whether a row remapping failed.
    pub remap_failed: Option<bool>,
    /// Throttle reasons (bit mask as NVML reports it).
    pub throttle_reasons: Option<u64>,
}

/// An XID error the driver reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Xid {
    /// The GPU.
    pub index: u32,
    /// The XID code.
    pub code: u32,
}

/// Why a probe call failed as a whole (a single field failing is `None` in the sample, never an error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// An unknown fake profile.
    #[error(
        "failed to find fake profile {0:?}: use dgx-h100, hgx-h100-2x4, a100-mig, dgx-a100, t4-edge or mixed"
    )]
    UnknownProfile(String),
    /// NVML could not be loaded or initialised (no NVIDIA driver on this machine, or it is broken).
    #[error(
        "failed to start NVML ({0}): this machine needs the NVIDIA driver's libnvidia-ml.so.1; \
         use --probe fake:<profile> to run without a GPU"
    )]
    NvmlUnavailable(String),
    /// A call NVML must answer for the whole node failed.
    #[error("NVML failed to {what}: {why}")]
    Nvml {
        /// The call.
        what: &'static str,
        /// NVML's error.
        why: String,
    },
}

/// A source of GPU facts; calls may block (NVML), so callers run them on a dedicated thread.
pub trait GpuProbe: Send {
    /// The GPUs present now.
    fn inventory(&mut self) -> Result<Vec<GpuInfo>, ProbeError>;
    /// One reading of every GPU present.
    fn sample(&mut self) -> Result<Vec<GpuSample>, ProbeError>;
    /// XID errors since the last call.
    fn xids(&mut self) -> Vec<Xid>;
    /// GPUs reset since the last call: their XID and ECC history starts again.
    fn resets(&mut self) -> Vec<u32> {
        Vec::new()
    }
    /// Per field, how many reads failed or were not supported so far (such a field is absent from the sample).
    fn field_errors(&self) -> BTreeMap<&'static str, u64> {
        BTreeMap::new()
    }
}

/// The probe a command line names: `nvml` (this machine's NVIDIA GPUs) or `fake:<profile>`, the fake one optionally
/// taking faults from a file.
pub fn open(spec: &str, faults: Option<&std::path::Path>) -> Result<Box<dyn GpuProbe>, String> {
    if spec == "nvml" {
        if faults.is_some() {
            return Err("--faults only works with a fake probe".into());
        }
        return nvml::NvmlProbe::open().map(|p| Box::new(p) as Box<dyn GpuProbe>).map_err(|e| e.to_string());
    }
    let Some(profile) = spec.strip_prefix("fake:") else {
        return Err(format!(
            "unknown probe {spec:?}: use nvml or fake:<profile> (dgx-h100, hgx-h100-2x4, a100-mig, dgx-a100, t4-edge, mixed)"
        ));
    };
    let p = fake::FakeProbe::profile(profile).map_err(|e| e.to_string())?;
    Ok(match faults {
        Some(path) => Box::new(fake::FileFaultProbe { probe: p, faults: fake::FaultFile::new(path) }),
        None => Box::new(p),
    })
}
