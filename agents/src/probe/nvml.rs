//! The NVML probe: loads `libnvidia-ml.so.1` at run time, keeps a handle per GPU, and turns each field that fails
//! or is not supported into an absent value plus a counter; a GPU that falls off the bus leaves the inventory.

use std::collections::{BTreeMap, BTreeSet};

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, PcieUtilCounter, TemperatureSensor,
};
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::FieldValueSample;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::{
    NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
    NVML_FI_DEV_REMAPPED_FAILURE,
};
use nvml_wrapper::{Device, EventSet, Nvml};

use super::{GpuInfo, GpuProbe, GpuSample, ProbeError, Xid};

/// NVML links per GPU at most (NVML_NVLINK_MAX_LINKS).
const MAX_LINKS: u32 = 18;

/// One GPU as NVML shows it.
struct Handle {
    device: Device<'static>,
    info: GpuInfo,
    /// Whether it answered the last call (a GPU lost from the bus does not).
    present: bool,
    /// The NVLink data counters (KiB sent, KiB received) and their time (µs) at the last sample.
    nvlink: Option<(u64, u64, i64)>,
}

/// A probe over the real GPUs of this machine.
pub struct NvmlProbe {
    gpus: Vec<Handle>,
    /// One XID event set per GPU that supports them (a failed registration frees its set, so sets are not shared).
    events: Vec<EventSet<'static>>,
    resets: Vec<u32>,
    errors: BTreeMap<&'static str, u64>,
}

impl std::fmt::Debug for NvmlProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlProbe").field("gpus", &self.gpus.len()).finish_non_exhaustive()
    }
}

fn nvml_error(what: &'static str) -> impl Fn(NvmlError) -> ProbeError {
    move |e| ProbeError::Nvml { what, why: e.to_string() }
}

impl NvmlProbe {
    /// Loads NVML and reads the inventory; fails clearly on a machine without the NVIDIA driver.
    pub fn open() -> Result<Self, ProbeError> {
        let nvml = Nvml::init().map_err(|e| ProbeError::NvmlUnavailable(e.to_string()))?;
        // NVML stays loaded for the life of the process: devices borrow it.
        let nvml: &'static Nvml = Box::leak(Box::new(nvml));
        let count = nvml.device_count().map_err(nvml_error("count the GPUs"))?;
        let mut gpus = Vec::new();
        let mut errors = BTreeMap::new();
        for index in 0..count {
            // A GPU already lost is left out (the operator sees it as unknown), rather than failing the whole node.
            let opened = nvml.device_by_index(index).map_err(nvml_error("open a GPU"));
            match opened.and_then(|device| describe(&device, index).map(|info| (device, info))) {
                Ok((device, info)) => gpus.push(Handle { device, info, present: true, nvlink: None }),
                Err(e) => {
                    eprintln!("warning: GPU {index} left out: {e}");
                    *errors.entry("open").or_insert(0) += 1;
                }
            }
        }
        let by_bus: BTreeMap<String, u32> =
            gpus.iter().map(|g| (g.info.pci_bus_id.to_lowercase(), g.info.index)).collect();
        for g in &mut gpus {
            let mut peers = BTreeSet::new();
            for link in 0..MAX_LINKS {
                let l = g.device.link_wrapper_for(link);
                if l.is_active().unwrap_or(false) {
                    if let Some(peer) =
                        l.remote_pci_info().ok().and_then(|p| by_bus.get(&p.bus_id.to_lowercase()).copied())
                    {
                        peers.insert(peer);
                    }
                }
            }
            g.info.nvlink_peers = peers.into_iter().collect();
        }
        let mut events = Vec::new();
        for g in &gpus {
            let supported =
                g.device.supported_event_types().is_ok_and(|t| t.contains(EventTypes::CRITICAL_XID_ERROR));
            let set = nvml.create_event_set().ok().filter(|_| supported);
            match set.map(|s| g.device.register_events(EventTypes::CRITICAL_XID_ERROR, s)) {
                Some(Ok(set)) => events.push(set),
                _ => *errors.entry("xid_events").or_insert(0) += 1,
            }
        }
        Ok(NvmlProbe { gpus, events, resets: Vec::new(), errors })
    }

    fn count(&mut self, field: &'static str) {
        *self.errors.entry(field).or_insert(0) += 1;
    }

    /// Reads a field; a failure is counted and gives `None`. A lost GPU is marked absent.
    fn field<T>(&mut self, i: usize, field: &'static str, r: Result<T, NvmlError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(NvmlError::GpuLost) => {
                self.gpus[i].present = false;
                self.count(field);
                None
            }
            Err(_) => {
                self.count(field);
                None
            }
        }
    }
}

/// What a GPU is: the fields that do not change while it runs.
fn describe(device: &Device<'static>, index: u32) -> Result<GpuInfo, ProbeError> {
    let pci = device.pci_info().map_err(nvml_error("read a GPU's PCI address"))?;
    let numa =
        std::fs::read_to_string(format!("/sys/bus/pci/devices/{}/numa_node", sysfs_bus_id(&pci.bus_id)))
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .and_then(|n| u32::try_from(n).ok());
    Ok(GpuInfo {
        index,
        uuid: device.uuid().map_err(nvml_error("read a GPU's UUID"))?,
        name: device.name().map_err(nvml_error("read a GPU's name"))?,
        memory_total_bytes: device.memory_info().map_err(nvml_error("read a GPU's memory"))?.total,
        mig_enabled: device.mig_mode().map(|m| m.current == 1).unwrap_or(false),
        // nvml-wrapper 0.11 has no safe call that lists a GPU's MIG instances: a GPU in MIG mode is reported with
        // the flag and without its instances (so it offers no devices to the GPU driver).
        mig: Vec::new(),
        nvlink_peers: Vec::new(),
        pci_bus_id: pci.bus_id,
        numa_node: numa,
    })
}

/// NVML writes bus ids as `00000000:18:00.0`; sysfs as `0000:18:00.0`, lower case.
fn sysfs_bus_id(nvml: &str) -> String {
    let lower = nvml.to_lowercase();
    match lower.split_once(':') {
        Some((domain, rest)) if domain.len() > 4 => format!("{}:{rest}", &domain[domain.len() - 4..]),
        _ => lower,
    }
}

/// A field value as an unsigned counter.
fn counter(v: &Result<FieldValueSample, NvmlError>) -> Option<(u64, i64)> {
    let s = v.as_ref().ok()?;
    let n = match s.value.as_ref().ok()? {
        SampleValue::U64(v) => *v,
        SampleValue::U32(v) => u64::from(*v),
        SampleValue::I64(v) => u64::try_from(*v).ok()?,
        SampleValue::F64(_) => return None,
    };
    Some((n, s.timestamp))
}

impl NvmlProbe {
    /// NVLink data throughput of GPU `i` since its last sample, bytes/s, from NVML's cumulative KiB counters (as
    /// nvml-wrapper reads them: link scope 0). None for a GPU without NVLink and on the first sample.
    fn nvlink_rates(&mut self, i: usize) -> (Option<u64>, Option<u64>) {
        if self.gpus[i].info.nvlink_peers.is_empty() {
            return (None, None);
        }
        let ids =
            [FieldId(NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX), FieldId(NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX)];
        let values = self.gpus[i].device.field_values_for(&ids);
        let Some(values) = self.field(i, "nvlink_throughput", values) else { return (None, None) };
        let (Some((tx, t)), Some((rx, _))) =
            (values.first().and_then(counter), values.get(1).and_then(counter))
        else {
            *self.errors.entry("nvlink_throughput").or_insert(0) += 1;
            return (None, None);
        };
        let before = self.gpus[i].nvlink.replace((tx, rx, t));
        let Some((tx0, rx0, t0)) = before.filter(|(_, _, t0)| t > *t0) else { return (None, None) };
        let secs = (t - t0) as f64 / 1e6;
        let rate = |now: u64, then: u64| Some((now.saturating_sub(then) as f64 * 1024.0 / secs) as u64);
        (rate(tx, tx0), rate(rx, rx0))
    }
}

fn remap_failed(values: Vec<Result<FieldValueSample, NvmlError>>) -> Option<bool> {
    match values.into_iter().next()?.ok()?.value.ok()? {
        SampleValue::U32(v) => Some(v != 0),
        SampleValue::U64(v) => Some(v != 0),
        SampleValue::I64(v) => Some(v != 0),
        SampleValue::F64(v) => Some(v != 0.0),
    }
}

impl GpuProbe for NvmlProbe {
    fn inventory(&mut self) -> Result<Vec<GpuInfo>, ProbeError> {
        for i in 0..self.gpus.len() {
            let was = self.gpus[i].present;
            let now = !matches!(self.gpus[i].device.uuid(), Err(NvmlError::GpuLost));
            self.gpus[i].present = now;
            if now && !was {
                // It came back: the driver re-initialised it, so its error history starts again.
                self.resets.push(self.gpus[i].info.index);
            }
        }
        Ok(self.gpus.iter().filter(|g| g.present).map(|g| g.info.clone()).collect())
    }

    fn sample(&mut self) -> Result<Vec<GpuSample>, ProbeError> {
        let mut out = Vec::with_capacity(self.gpus.len());
        for i in 0..self.gpus.len() {
            if !self.gpus[i].present {
                continue;
            }
            let d = &self.gpus[i].device;
            let (mem, util, temp, power, clock, ecc, remap, throttle) = (
                d.memory_info(),
                d.utilization_rates(),
                d.temperature(TemperatureSensor::Gpu),
                d.power_usage(),
                d.clock_info(Clock::SM),
                d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile),
                d.field_values_for(&[FieldId(NVML_FI_DEV_REMAPPED_FAILURE)]),
                d.current_throttle_reasons().map(|r| r.bits()),
            );
            let energy = d.total_energy_consumption();
            let (tx, rx) =
                (d.pcie_throughput(PcieUtilCounter::Send), d.pcie_throughput(PcieUtilCounter::Receive));
            let util = self.field(i, "utilization", util);
            let index = self.gpus[i].info.index;
            let (nvlink_tx, nvlink_rx) = self.nvlink_rates(i);
            let s = GpuSample {
                index,
                memory_used_bytes: self.field(i, "memory", mem).map(|m| m.used),
                utilization_gpu_pct: util.as_ref().map(|u| u.gpu),
                memory_copy_pct: util.as_ref().map(|u| u.memory),
                // NVML counts KB/s over its last 20 ms.
                pcie_tx_bytes_per_s: self.field(i, "pcie_tx", tx).map(|k| u64::from(k) * 1024),
                pcie_rx_bytes_per_s: self.field(i, "pcie_rx", rx).map(|k| u64::from(k) * 1024),
                nvlink_tx_bytes_per_s: nvlink_tx,
                nvlink_rx_bytes_per_s: nvlink_rx,
                temperature_c: self.field(i, "temperature", temp),
                power_mw: self.field(i, "power", power),
                energy_mj: self.field(i, "energy", energy),
                sm_clock_mhz: self.field(i, "sm_clock", clock),
                ecc_double_bit: self.field(i, "ecc", ecc),
                remap_failed: self.field(i, "row_remap", remap).and_then(remap_failed),
                throttle_reasons: self.field(i, "throttle_reasons", throttle),
            };
            if self.gpus[i].present {
                out.push(s);
            }
        }
        Ok(out)
    }

    fn xids(&mut self) -> Vec<Xid> {
        let mut out = Vec::new();
        for set in &self.events {
            // Drain what is queued without blocking.
            for _ in 0..1024 {
                match set.wait(0) {
                    Ok(e) => {
                        let code = match e.event_data {
                            Some(XidError::Value(v)) => u32::try_from(v).unwrap_or(u32::MAX),
                            _ => continue,
                        };
                        match e.device.index() {
                            Ok(index) => out.push(Xid { index, code }),
                            Err(_) => *self.errors.entry("xid_events").or_insert(0) += 1,
                        }
                    }
                    Err(NvmlError::Timeout) => break,
                    Err(_) => {
                        *self.errors.entry("xid_events").or_insert(0) += 1;
                        break;
                    }
                }
            }
        }
        out
    }

    fn resets(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.resets)
    }

    fn field_errors(&self) -> BTreeMap<&'static str, u64> {
        self.errors.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_ids_map_to_sysfs_names() {
        assert_eq!(sysfs_bus_id("00000000:18:00.0"), "0000:18:00.0");
        assert_eq!(sysfs_bus_id("0000:AF:00.0"), "0000:af:00.0");
    }

    #[test]
    fn without_the_nvidia_driver_the_probe_says_so_and_names_the_way_out() {
        if std::path::Path::new("/dev/nvidiactl").exists() {
            return; // a GPU machine: the device check covers it
        }
        let e = NvmlProbe::open().unwrap_err();
        assert!(matches!(e, ProbeError::NvmlUnavailable(_)), "{e}");
        let text = e.to_string();
        assert!(text.contains("libnvidia-ml.so.1") && text.contains("--probe fake:"), "{text}");
    }
}
