//! GPU health from what the probe saw: fatal XID errors, double-bit ECC errors, failed row remapping, and a GPU
//! that disappears make it unhealthy with the reason; it recovers only when the cause clears.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::probe::{GpuInfo, GpuSample, Xid};

/// XID codes that mean the GPU must not take work until it is reset: 48 double-bit ECC, 63/64 row remapping,
/// 74 NVLink, 79 fallen off the bus, 94/95 contained/uncontained ECC.
pub const FATAL_XIDS: [u32; 7] = [48, 63, 64, 74, 79, 94, 95];

/// Whether a GPU may take work, and why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum Health {
    /// It may.
    Healthy,
    /// It may not, for this reason.
    Unhealthy(String),
    /// Its state is not known (a probe call hung or failed): never treated as healthy.
    Unknown(String),
}

#[derive(Debug, Clone, Default)]
struct Track {
    /// The fatal XID seen since the GPU was last present fresh.
    xid: Option<u32>,
    /// Double-bit ECC count when first seen (errors are counted from there).
    ecc_base: Option<u64>,
    present: bool,
}

/// Health of every GPU of a node, updated from each inventory, sample and XID batch.
#[derive(Debug, Clone, Default)]
pub struct HealthBook {
    gpus: BTreeMap<u32, Track>,
}

impl HealthBook {
    /// Updates from one round of the probe and returns each known GPU's health.
    pub fn update(
        &mut self,
        inventory: &[GpuInfo],
        samples: &[GpuSample],
        xids: &[Xid],
        resets: &[u32],
    ) -> BTreeMap<u32, Health> {
        for i in resets {
            if let Some(t) = self.gpus.get_mut(i) {
                t.xid = None;
                t.ecc_base = None;
            }
        }
        for t in self.gpus.values_mut() {
            t.present = false;
        }
        for g in inventory {
            self.gpus.entry(g.index).or_default().present = true;
        }
        for x in xids {
            if FATAL_XIDS.contains(&x.code) {
                self.gpus.entry(x.index).or_default().xid = Some(x.code);
            }
        }
        let mut out = BTreeMap::new();
        for (index, t) in &mut self.gpus {
            let s = samples.iter().find(|s| s.index == *index);
            let health = if !t.present {
                Health::Unhealthy("the GPU disappeared from the bus".into())
            } else if let Some(code) = t.xid {
                Health::Unhealthy(format!("XID {code}"))
            } else if let Some(s) = s {
                let ecc = s.ecc_double_bit.unwrap_or(0);
                let base = *t.ecc_base.get_or_insert(ecc);
                if ecc > base {
                    Health::Unhealthy(format!("{} double-bit ECC errors", ecc - base))
                } else if s.remap_failed == Some(true) {
                    Health::Unhealthy("row remapping failed".into())
                } else {
                    Health::Healthy
                }
            } else {
                Health::Unknown("no sample".into())
            };
            out.insert(*index, health);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::GpuProbe;
    use crate::probe::fake::{FakeProbe, Fault};

    fn round(p: &mut FakeProbe, book: &mut HealthBook) -> BTreeMap<u32, Health> {
        let inv = p.inventory().unwrap();
        let s = p.sample().unwrap();
        let x = p.xids();
        let r = p.resets();
        book.update(&inv, &s, &x, &r)
    }

    #[test]
    fn a_fatal_xid_makes_its_gpu_unhealthy_until_reset_and_a_benign_one_does_not() {
        let mut p = FakeProbe::profile("dgx-h100").unwrap();
        let mut book = HealthBook::default();
        assert!(round(&mut p, &mut book).values().all(|h| *h == Health::Healthy));
        p.inject(Fault::Xid(3, 79));
        p.inject(Fault::Xid(5, 13));
        let h = round(&mut p, &mut book);
        assert_eq!(h[&3], Health::Unhealthy("XID 79".into()));
        assert_eq!(h[&5], Health::Healthy, "XID 13 is an application error");
        assert_eq!(round(&mut p, &mut book)[&3], Health::Unhealthy("XID 79".into()), "it stays until reset");
        p.inject(Fault::Reset(3));
        assert_eq!(round(&mut p, &mut book)[&3], Health::Healthy);
    }

    #[test]
    fn ecc_remapping_and_a_vanished_gpu_are_unhealthy_with_their_reason() {
        let mut p = FakeProbe::profile("dgx-h100").unwrap();
        let mut book = HealthBook::default();
        round(&mut p, &mut book);
        p.inject(Fault::DoubleBitEcc(1, 2));
        p.inject(Fault::RemapFailed(2));
        p.inject(Fault::Disappear(6));
        let h = round(&mut p, &mut book);
        assert_eq!(h[&1], Health::Unhealthy("2 double-bit ECC errors".into()));
        assert_eq!(h[&2], Health::Unhealthy("row remapping failed".into()));
        assert_eq!(h[&6], Health::Unhealthy("the GPU disappeared from the bus".into()));
        p.inject(Fault::Reset(2));
        p.inject(Fault::Reset(6));
        let h = round(&mut p, &mut book);
        assert_eq!((h[&2].clone(), h[&6].clone()), (Health::Healthy, Health::Healthy), "causes cleared");
        assert_ne!(h[&1], Health::Healthy, "ECC errors stay counted until the GPU is reset");
        p.inject(Fault::Reset(1));
        assert_eq!(round(&mut p, &mut book)[&1], Health::Healthy, "a reset clears the ECC count");
    }
}
