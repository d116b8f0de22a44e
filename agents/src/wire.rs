//! What the agent sends, in the protocol's messages: a round of readings becomes a numbered `Sample`.

use haiyun_api::agent as pb;

use crate::health::Health;
use crate::probe::GpuInfo;
use crate::sampler::Round;

/// The inventory message.
pub fn inventory(gpus: &[GpuInfo]) -> pb::Inventory {
    pb::Inventory {
        gpus: gpus
            .iter()
            .map(|g| pb::Gpu {
                index: g.index,
                uuid: g.uuid.clone(),
                name: g.name.clone(),
                memory_total_bytes: g.memory_total_bytes,
                mig_enabled: g.mig_enabled,
                nvlink_peers: g.nvlink_peers.clone(),
                pci_bus_id: g.pci_bus_id.clone(),
                numa_node: g.numa_node,
            })
            .collect(),
    }
}

fn health(h: &Health) -> (pb::HealthState, String) {
    match h {
        Health::Healthy => (pb::HealthState::Healthy, String::new()),
        Health::Unhealthy(why) => (pb::HealthState::Unhealthy, why.clone()),
        Health::Unknown(why) => (pb::HealthState::Unknown, why.clone()),
    }
}

/// Round `r` as sample number `seq`, taken at `taken_unix_ms`. Every GPU with a health gets a reading, so a GPU
/// that vanished or whose probe hung is reported too.
pub fn sample(r: &Round, seq: u64, taken_unix_ms: i64) -> pb::Sample {
    let gpus = r
        .health
        .iter()
        .map(|(index, h)| {
            let (state, reason) = health(h);
            let mut reading = pb::Reading { index: *index, health_reason: reason, ..Default::default() };
            reading.set_health(state);
            if let Some(s) = r.samples.iter().find(|s| s.index == *index) {
                reading.memory_used_bytes = s.memory_used_bytes;
                reading.utilization_gpu_pct = s.utilization_gpu_pct;
                reading.temperature_c = s.temperature_c;
                reading.power_mw = s.power_mw;
                reading.energy_mj = s.energy_mj;
                reading.memory_copy_pct = s.memory_copy_pct;
                reading.pcie_tx_bytes_per_s = s.pcie_tx_bytes_per_s;
                reading.pcie_rx_bytes_per_s = s.pcie_rx_bytes_per_s;
                reading.nvlink_tx_bytes_per_s = s.nvlink_tx_bytes_per_s;
                reading.nvlink_rx_bytes_per_s = s.nvlink_rx_bytes_per_s;
                reading.sm_clock_mhz = s.sm_clock_mhz;
                reading.ecc_double_bit = s.ecc_double_bit;
                reading.remap_failed = s.remap_failed;
                reading.throttle_reasons = s.throttle_reasons;
            }
            reading
        })
        .collect();
    let xids = r.xids.iter().map(|x| pb::Xid { index: x.index, code: x.code }).collect();
    pb::Sample { seq, taken_unix_ms, gpus, xids }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::HealthBook;
    use crate::probe::GpuProbe;
    use crate::probe::fake::{FakeProbe, Fault};

    #[test]
    fn a_round_becomes_a_sample_with_health_and_readings_and_a_vanished_gpu_is_still_reported() {
        let mut p = FakeProbe::profile("dgx-h100").unwrap();
        let mut book = HealthBook::default();
        let first = p.inventory().unwrap();
        book.update(&first, &p.sample().unwrap(), &[], &[]);
        p.inject(Fault::Xid(3, 79));
        p.inject(Fault::Disappear(6));
        let inv = p.inventory().unwrap();
        let samples = p.sample().unwrap();
        let xids = p.xids();
        let health = book.update(&inv, &samples, &xids, &[]);
        let r = Round { inventory: inv.clone(), samples, xids, health, ..Round::default() };
        let s = sample(&r, 7, 1_000);
        assert_eq!((s.seq, s.gpus.len(), s.xids.len()), (7, 8, 1));
        assert_eq!(s.gpus[3].health(), pb::HealthState::Unhealthy);
        assert_eq!(s.gpus[3].health_reason, "XID 79");
        assert_eq!(s.gpus[6].health(), pb::HealthState::Unhealthy);
        assert_eq!(s.gpus[6].utilization_gpu_pct, None, "no reading from a GPU that is gone");
        assert!(s.gpus[0].utilization_gpu_pct.is_some());
        assert_eq!(inventory(&inv).gpus.len(), 7);
    }
}
