//! The node's GPUs in the DCGM exporter's metric names and labels, so existing Grafana dashboards work unchanged.

use std::fmt::Write;

use std::collections::BTreeMap;

use crate::holders::Holder;
use crate::probe::{GpuInfo, GpuSample};

/// One field: DCGM name, help, Prometheus type, and how to read it from a sample (None: not exported for that GPU).
type Field = (&'static str, &'static str, &'static str, fn(&GpuInfo, &GpuSample, Option<u32>) -> Option<f64>);

const FIELDS: [Field; 14] = [
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", "gauge", |_, s, _| {
        s.utilization_gpu_pct.map(f64::from)
    }),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", "gauge", |_, s, _| {
        s.memory_copy_pct.map(f64::from)
    }),
    (
        "DCGM_FI_PROF_PCIE_TX_BYTES",
        "The rate of data transmitted over the PCIe bus (in bytes/s).",
        "gauge",
        |_, s, _| s.pcie_tx_bytes_per_s.map(|b| b as f64),
    ),
    (
        "DCGM_FI_PROF_PCIE_RX_BYTES",
        "The rate of data received over the PCIe bus (in bytes/s).",
        "gauge",
        |_, s, _| s.pcie_rx_bytes_per_s.map(|b| b as f64),
    ),
    (
        "DCGM_FI_PROF_NVLINK_TX_BYTES",
        "The rate of data transmitted over NVLink, not including protocol headers (in bytes/s).",
        "gauge",
        |_, s, _| s.nvlink_tx_bytes_per_s.map(|b| b as f64),
    ),
    (
        "DCGM_FI_PROF_NVLINK_RX_BYTES",
        "The rate of data received over NVLink, not including protocol headers (in bytes/s).",
        "gauge",
        |_, s, _| s.nvlink_rx_bytes_per_s.map(|b| b as f64),
    ),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", "gauge", |_, s, _| {
        s.memory_used_bytes.map(|b| (b >> 20) as f64)
    }),
    ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", "gauge", |g, s, _| {
        s.memory_used_bytes.map(|b| (g.memory_total_bytes.saturating_sub(b) >> 20) as f64)
    }),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", "gauge", |_, s, _| s.temperature_c.map(f64::from)),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", "gauge", |_, s, _| {
        s.power_mw.map(|p| f64::from(p) / 1000.0)
    }),
    (
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "Total energy consumption since boot (in mJ).",
        "counter",
        |_, s, _| s.energy_mj.map(|e| e as f64),
    ),
    ("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", "gauge", |_, s, _| {
        s.sm_clock_mhz.map(f64::from)
    }),
    (
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "Total number of double-bit volatile ECC errors.",
        "gauge",
        |_, s, _| s.ecc_double_bit.map(|e| e as f64),
    ),
    ("DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered.", "gauge", |_, _, x| {
        Some(f64::from(x.unwrap_or(0)))
    }),
];

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The Prometheus text exposition of every GPU; `last_xid` gives the last XID per GPU index. A GPU that pods hold
/// has one series per holding container, with its `pod`, `namespace` and `container` (as the DCGM exporter does).
pub fn render(
    host: &str,
    inventory: &[GpuInfo],
    samples: &[GpuSample],
    last_xid: &dyn Fn(u32) -> Option<u32>,
    holders: &BTreeMap<u32, Vec<Holder>>,
) -> String {
    let mut out = String::new();
    let none = [None];
    for (name, help, kind, read) in FIELDS {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for g in inventory {
            let Some(s) = samples.iter().find(|s| s.index == g.index) else { continue };
            let Some(v) = read(g, s, last_xid(g.index)) else { continue };
            let held: Vec<Option<&Holder>> =
                holders.get(&g.index).map(|h| h.iter().map(Some).collect()).unwrap_or_default();
            for h in if held.is_empty() { &none[..] } else { &held[..] } {
                let pod = h.map(|h| {
                    format!(
                        ",container=\"{}\",namespace=\"{}\",pod=\"{}\"",
                        esc(&h.container),
                        esc(&h.namespace),
                        esc(&h.pod)
                    )
                });
                let _ = writeln!(
                    out,
                    "{name}{{gpu=\"{}\",UUID=\"{}\",pci_bus_id=\"{}\",device=\"nvidia{}\",modelName=\"{}\",Hostname=\"{}\"{}}} {v}",
                    g.index,
                    esc(&g.uuid),
                    esc(&g.pci_bus_id),
                    g.index,
                    esc(&g.name),
                    esc(host),
                    pod.unwrap_or_default()
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::GpuProbe;
    use crate::probe::fake::{FakeProbe, Fault};

    #[test]
    fn every_gpu_has_the_dcgm_names_and_labels_and_a_missing_field_is_left_out() {
        let mut p = FakeProbe::profile("dgx-h100").unwrap();
        p.inject(Fault::TemperatureUnsupported(1));
        let inv = p.inventory().unwrap();
        let s = p.sample().unwrap();
        let text = render("node-a", &inv, &s, &|i| (i == 3).then_some(79), &BTreeMap::new());
        let util = text.lines().filter(|l| l.starts_with("DCGM_FI_DEV_GPU_UTIL{")).count();
        assert_eq!(util, 8);
        assert!(text.contains(r#"DCGM_FI_DEV_XID_ERRORS{gpu="3",UUID="GPU-fake-h100-03""#), "{text}");
        assert!(text.contains(r#"modelName="NVIDIA H100 80GB HBM3",Hostname="node-a"} 79"#));
        let temps: Vec<&str> = text.lines().filter(|l| l.starts_with("DCGM_FI_DEV_GPU_TEMP{")).collect();
        assert_eq!(temps.len(), 7, "GPU 1's temperature does not answer, so it is left out");
        let value = |prefix: &str| -> f64 {
            text.lines().find(|l| l.starts_with(prefix)).unwrap().rsplit(' ').next().unwrap().parse().unwrap()
        };
        let (used, free) = (value("DCGM_FI_DEV_FB_USED{gpu=\"0\""), value("DCGM_FI_DEV_FB_FREE{gpu=\"0\""));
        assert!((used + free - 81920.0).abs() <= 1.0, "used + free = 80 GiB in MiB: {used} + {free}");
        assert!(text.contains("# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter"));
        for name in [
            "DCGM_FI_DEV_MEM_COPY_UTIL",
            "DCGM_FI_PROF_PCIE_TX_BYTES",
            "DCGM_FI_PROF_PCIE_RX_BYTES",
            "DCGM_FI_PROF_NVLINK_TX_BYTES",
            "DCGM_FI_PROF_NVLINK_RX_BYTES",
        ] {
            assert_eq!(text.lines().filter(|l| l.starts_with(&format!("{name}{{"))).count(), 8, "{name}");
        }
        let first = value("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu=\"0\"");
        let again = render("node-a", &inv, &p.sample().unwrap(), &|_| None, &BTreeMap::new());
        let second: f64 = again
            .lines()
            .find(|l| l.starts_with("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu=\"0\""))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap();
        assert!(first > 0.0 && second > first, "the energy counter only grows: {first} then {second}");
    }

    #[test]
    fn a_held_gpu_carries_its_pod_namespace_and_container_and_a_shared_one_each() {
        let mut p = FakeProbe::profile("dgx-h100").unwrap();
        let (inv, s) = (p.inventory().unwrap(), p.sample().unwrap());
        let h = |pod: &str| Holder { pod: pod.into(), namespace: "ml".into(), container: "main".into() };
        let holders: BTreeMap<u32, Vec<Holder>> = [(2, vec![h("a-0")]), (5, vec![h("b-0"), h("c-0")])].into();
        let text = render("n", &inv, &s, &|_| None, &holders);
        let util: Vec<&str> = text.lines().filter(|l| l.starts_with("DCGM_FI_DEV_GPU_UTIL{")).collect();
        assert_eq!(util.len(), 9, "8 GPUs, GPU 5 twice");
        assert!(
            util[2].contains(r#"Hostname="n",container="main",namespace="ml",pod="a-0"}"#),
            "{}",
            util[2]
        );
        assert!(util[5].contains(r#"pod="b-0""#) && util[6].contains(r#"pod="c-0""#));
        assert!(!util[0].contains("pod="), "a free GPU has no pod labels");
    }
}
