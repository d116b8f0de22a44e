//! A fake machine from a named profile, with faults that tests inject: XID errors, double-bit ECC errors, failed row
//! remapping, a GPU that disappears, and fields that stop answering.

use super::{GpuInfo, GpuProbe, GpuSample, MigInfo, ProbeError, Xid};

const GIB: u64 = 1 << 30;

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The driver reports this XID on the GPU.
    Xid(u32, u32),
    /// The GPU's double-bit ECC count rises by this much.
    DoubleBitEcc(u32, u64),
    /// Row remapping fails on the GPU.
    RemapFailed(u32),
    /// The GPU falls off the bus.
    Disappear(u32),
    /// The GPU's temperature reading stops answering.
    TemperatureUnsupported(u32),
    /// Every fault on the GPU clears (a reset).
    Reset(u32),
}

#[derive(Debug, Clone)]
struct FakeGpu {
    info: GpuInfo,
    present: bool,
    ecc: u64,
    remap_failed: bool,
    temperature: bool,
    /// Energy so far, millijoules: each sample adds a second at its power.
    energy_mj: u64,
}

/// A fake machine.
#[derive(Debug, Clone)]
pub struct FakeProbe {
    gpus: Vec<FakeGpu>,
    pending: Vec<Xid>,
    reset: Vec<u32>,
    temperature_errors: u64,
    tick: u64,
}

fn gpu(index: u32, name: &str, gib: u64, peers: Vec<u32>) -> FakeGpu {
    FakeGpu {
        info: GpuInfo {
            index,
            uuid: format!(
                "GPU-fake-{}-{index:02}",
                name.split_whitespace().nth(1).unwrap_or("gpu").to_lowercase()
            ),
            name: name.into(),
            memory_total_bytes: gib * GIB,
            mig_enabled: false,
            nvlink_peers: peers,
            pci_bus_id: format!("00000000:{:02X}:00.0", 0x18 + index * 0x10),
            numa_node: Some(index / 4),
            mig: Vec::new(),
        },
        present: true,
        ecc: 0,
        remap_failed: false,
        temperature: true,
        energy_mj: 0,
    }
}

/// Eight GPUs all linked to each other.
fn nvlinked(name: &str, gib: u64) -> Vec<FakeGpu> {
    (0..8).map(|i| gpu(i, name, gib, (0..8).filter(|j| *j != i).collect())).collect()
}

/// Four linked A100 80 GB, the first two in MIG mode with seven `1g.10gb` instances each.
fn a100_mig() -> Vec<FakeGpu> {
    let mut gpus: Vec<FakeGpu> =
        (0..4).map(|i| gpu(i, "NVIDIA A100-SXM4-80GB", 80, (0..4).filter(|j| *j != i).collect())).collect();
    for g in gpus.iter_mut().take(2) {
        g.info.mig_enabled = true;
        g.info.mig = (0..7)
            .map(|k| MigInfo {
                profile: "1g.10gb".into(),
                uuid: format!("MIG-fake-a100-{:02}-{k}", g.info.index),
                memory_total_bytes: 10 * GIB,
            })
            .collect();
    }
    gpus
}

/// Eight GPUs in two NVLink domains of four (0–3 and 4–7).
fn two_domains(name: &str, gib: u64) -> Vec<FakeGpu> {
    (0..8).map(|i| gpu(i, name, gib, (0..8).filter(|j| *j != i && j / 4 == i / 4).collect())).collect()
}

impl FakeProbe {
    /// A machine from a profile: `dgx-h100` (8×H100 80 GB, one NVLink domain), `hgx-h100-2x4` (8×H100 80 GB in two
    /// NVLink domains of four), `a100-mig` (4×A100 80 GB, two in MIG mode as 7×`1g.10gb`), `dgx-a100` (8×A100 80 GB),
    /// `t4-edge` (1×T4 16 GB) or `mixed` (2×A100 40 GB linked, 2×T4).
    pub fn profile(name: &str) -> Result<Self, ProbeError> {
        let gpus = match name {
            "dgx-h100" => nvlinked("NVIDIA H100 80GB HBM3", 80),
            "hgx-h100-2x4" => two_domains("NVIDIA H100 80GB HBM3", 80),
            "a100-mig" => a100_mig(),
            "dgx-a100" => nvlinked("NVIDIA A100-SXM4-80GB", 80),
            "t4-edge" => vec![gpu(0, "Tesla T4", 16, Vec::new())],
            "mixed" => vec![
                gpu(0, "NVIDIA A100-PCIE-40GB", 40, vec![1]),
                gpu(1, "NVIDIA A100-PCIE-40GB", 40, vec![0]),
                gpu(2, "Tesla T4", 16, Vec::new()),
                gpu(3, "Tesla T4", 16, Vec::new()),
            ],
            other => return Err(ProbeError::UnknownProfile(other.into())),
        };
        Ok(FakeProbe { gpus, pending: Vec::new(), reset: Vec::new(), temperature_errors: 0, tick: 0 })
    }

    /// Injects a fault.
    pub fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::Xid(i, code) => self.pending.push(Xid { index: i, code }),
            Fault::DoubleBitEcc(i, n) => self.with(i, |g| g.ecc += n),
            Fault::RemapFailed(i) => self.with(i, |g| g.remap_failed = true),
            Fault::Disappear(i) => self.with(i, |g| g.present = false),
            Fault::TemperatureUnsupported(i) => self.with(i, |g| g.temperature = false),
            Fault::Reset(i) => {
                self.with(i, |g| {
                    g.present = true;
                    g.ecc = 0;
                    g.remap_failed = false;
                    g.temperature = true;
                });
                self.reset.push(i);
            }
        }
    }

    fn with(&mut self, index: u32, f: impl FnOnce(&mut FakeGpu)) {
        if let Some(g) = self.gpus.iter_mut().find(|g| g.info.index == index) {
            f(g);
        }
    }
}

/// Board power at full load by card size: 700 W (80 GB SXM), 250 W (40 GB PCIe), 70 W (T4).
fn tdp_mw(memory: u64) -> u32 {
    match memory / GIB {
        80.. => 700_000,
        40.. => 250_000,
        _ => 70_000,
    }
}

impl GpuProbe for FakeProbe {
    fn inventory(&mut self) -> Result<Vec<GpuInfo>, ProbeError> {
        Ok(self.gpus.iter().filter(|g| g.present).map(|g| g.info.clone()).collect())
    }

    fn sample(&mut self) -> Result<Vec<GpuSample>, ProbeError> {
        self.tick += 1;
        let t = self.tick;
        self.temperature_errors += self.gpus.iter().filter(|g| g.present && !g.temperature).count() as u64;
        Ok(self
            .gpus
            .iter_mut()
            .filter(|g| g.present)
            .map(|g| {
                // A deterministic, gently moving load so dashboards show change.
                let phase = (t + u64::from(g.info.index) * 7) % 100;
                let util = (40 + (phase * 53) % 60) as u32;
                let power_mw = tdp_mw(g.info.memory_total_bytes) / 100 * util;
                g.energy_mj += u64::from(power_mw);
                GpuSample {
                    index: g.info.index,
                    memory_used_bytes: Some(g.info.memory_total_bytes / 100 * u64::from(util)),
                    utilization_gpu_pct: Some(util),
                    memory_copy_pct: Some(util / 2),
                    // 100 MB/s of PCIe traffic per percent of load, a third of it back to the host.
                    pcie_tx_bytes_per_s: Some(u64::from(util) * 100_000_000 / 3),
                    pcie_rx_bytes_per_s: Some(u64::from(util) * 100_000_000),
                    // 2 GB/s of NVLink traffic per percent of load each way, on GPUs that have links.
                    nvlink_tx_bytes_per_s: (!g.info.nvlink_peers.is_empty())
                        .then(|| u64::from(util) * 2_000_000_000),
                    nvlink_rx_bytes_per_s: (!g.info.nvlink_peers.is_empty())
                        .then(|| u64::from(util) * 2_000_000_000),
                    temperature_c: g.temperature.then_some(35 + util / 3),
                    power_mw: Some(power_mw),
                    energy_mj: Some(g.energy_mj),
                    sm_clock_mhz: Some(1_410 + util),
                    ecc_double_bit: Some(g.ecc),
                    remap_failed: Some(g.remap_failed),
                    throttle_reasons: Some(0),
                }
            })
            .collect())
    }

    fn xids(&mut self) -> Vec<Xid> {
        std::mem::take(&mut self.pending)
    }

    fn resets(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.reset)
    }

    fn field_errors(&self) -> std::collections::BTreeMap<&'static str, u64> {
        [("temperature", self.temperature_errors)].into_iter().filter(|(_, n)| *n > 0).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_describe_their_machines() {
        let mut h = FakeProbe::profile("dgx-h100").unwrap();
        let inv = h.inventory().unwrap();
        assert_eq!(inv.len(), 8);
        assert_eq!(inv[0].memory_total_bytes, 80 * GIB);
        assert_eq!(inv[3].nvlink_peers.len(), 7, "one NVLink domain");
        assert_eq!(FakeProbe::profile("t4-edge").unwrap().inventory().unwrap().len(), 1);
        let two = FakeProbe::profile("hgx-h100-2x4").unwrap().inventory().unwrap();
        assert_eq!(two[1].nvlink_peers, vec![0, 2, 3]);
        assert_eq!(two[6].nvlink_peers, vec![4, 5, 7]);
        let mixed = FakeProbe::profile("mixed").unwrap().inventory().unwrap();
        assert_eq!(mixed[0].nvlink_peers, vec![1]);
        assert!(mixed[2].nvlink_peers.is_empty());
        let uuids: std::collections::BTreeSet<_> = inv.iter().map(|g| g.uuid.clone()).collect();
        assert_eq!(uuids.len(), 8, "UUIDs are distinct");
        assert!(matches!(FakeProbe::profile("dgx-z"), Err(ProbeError::UnknownProfile(_))));
    }

    #[test]
    fn samples_move_and_a_field_that_stops_answering_is_absent_not_an_error() {
        let mut p = FakeProbe::profile("dgx-h100").unwrap();
        let a = p.sample().unwrap();
        let b = p.sample().unwrap();
        assert_ne!(a[0].utilization_gpu_pct, b[0].utilization_gpu_pct);
        p.inject(Fault::TemperatureUnsupported(2));
        let c = p.sample().unwrap();
        assert_eq!(c[2].temperature_c, None);
        assert!(c[2].utilization_gpu_pct.is_some());
        p.sample().unwrap();
        assert_eq!(p.field_errors().get("temperature"), Some(&2), "each failed read is counted");
    }

    #[test]
    fn injected_faults_show_in_samples_xids_and_inventory() {
        let mut p = FakeProbe::profile("dgx-h100").unwrap();
        p.inject(Fault::Xid(3, 79));
        assert_eq!(p.xids(), vec![Xid { index: 3, code: 79 }]);
        assert!(p.xids().is_empty(), "each XID is reported once");
        p.inject(Fault::DoubleBitEcc(1, 2));
        p.inject(Fault::RemapFailed(4));
        let s = p.sample().unwrap();
        assert_eq!(s[1].ecc_double_bit, Some(2));
        assert_eq!(s[4].remap_failed, Some(true));
        p.inject(Fault::Disappear(7));
        assert_eq!(p.inventory().unwrap().len(), 7);
        p.inject(Fault::Reset(7));
        assert_eq!(p.inventory().unwrap().len(), 8);
    }
}

/// Reads faults from a file on every round: one per line, `xid GPU CODE`, `ecc GPU COUNT`, `remap GPU`,
/// `disappear GPU`, `no-temperature GPU` or `reset GPU`; lines already applied are skipped, so tests append.
#[derive(Debug)]
pub struct FaultFile {
    path: std::path::PathBuf,
    applied: usize,
}

impl FaultFile {
    /// Faults from `path` (it need not exist yet).
    pub fn new(path: impl Into<std::path::PathBuf>) -> Self {
        FaultFile { path: path.into(), applied: 0 }
    }

    /// Applies the lines added since the last call; returns the ones it could not read, with why.
    pub fn apply(&mut self, probe: &mut FakeProbe) -> Vec<String> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let mut bad = Vec::new();
        for line in lines.iter().skip(self.applied) {
            match parse_fault(line) {
                Some(f) => probe.inject(f),
                None if line.trim().is_empty() => {}
                None => bad.push(format!(
                    "{line:?}: write e.g. `xid 3 79`, `ecc 1 2`, `remap 4`, `disappear 6`, `reset 6`"
                )),
            }
        }
        self.applied = lines.len();
        bad
    }
}

fn parse_fault(line: &str) -> Option<Fault> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let n = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
    let gpu = u32::try_from(n(1)?).ok()?;
    Some(match *words.first()? {
        "xid" => Fault::Xid(gpu, u32::try_from(n(2)?).ok()?),
        "ecc" => Fault::DoubleBitEcc(gpu, n(2)?),
        "remap" => Fault::RemapFailed(gpu),
        "disappear" => Fault::Disappear(gpu),
        "no-temperature" => Fault::TemperatureUnsupported(gpu),
        "reset" => Fault::Reset(gpu),
        _ => return None,
    })
}

/// A fake machine that takes its faults from a file.
#[derive(Debug)]
pub struct FileFaultProbe {
    /// The machine.
    pub probe: FakeProbe,
    /// Its fault file.
    pub faults: FaultFile,
}

impl GpuProbe for FileFaultProbe {
    fn inventory(&mut self) -> Result<Vec<GpuInfo>, ProbeError> {
        for bad in self.faults.apply(&mut self.probe) {
            eprintln!("warning: ignored fault line {bad}");
        }
        self.probe.inventory()
    }

    fn sample(&mut self) -> Result<Vec<GpuSample>, ProbeError> {
        self.probe.sample()
    }

    fn xids(&mut self) -> Vec<Xid> {
        self.probe.xids()
    }

    fn resets(&mut self) -> Vec<u32> {
        self.probe.resets()
    }

    fn field_errors(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.probe.field_errors()
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;

    #[test]
    fn faults_appended_to_the_file_are_applied_once_and_bad_lines_are_named() {
        let path = std::env::temp_dir().join(format!("haiyun-faults-{}", std::process::id()));
        std::fs::write(&path, "xid 3 79\n").unwrap();
        let mut p =
            FileFaultProbe { probe: FakeProbe::profile("dgx-h100").unwrap(), faults: FaultFile::new(&path) };
        p.inventory().unwrap();
        assert_eq!(p.xids(), vec![Xid { index: 3, code: 79 }]);
        p.inventory().unwrap();
        assert!(p.xids().is_empty(), "a line is applied once");
        std::fs::write(&path, "xid 3 79\ndisappear 5\nexplode 1\n").unwrap();
        let bad = p.faults.apply(&mut p.probe);
        assert_eq!(bad.len(), 1);
        assert!(bad[0].contains("explode"));
        assert_eq!(p.inventory().unwrap().len(), 7);
        let _ = std::fs::remove_file(&path);
    }
}
