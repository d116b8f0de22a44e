//! Haiyun's GPU driver for Kubernetes (DRA): the node's GPUs as a ResourceSlice, and each claim Haiyun allocated
//! prepared as a CDI device that names exactly the allocated GPUs.

pub mod allocation;
pub mod cdi;
pub mod ledger;
pub mod mps;
pub mod plugin;
pub mod registrar;
pub mod slice;

/// The driver's name: the `driver` of its ResourceSlices, DeviceClass and allocation results.
pub const DRIVER: &str = "gpu.haiyun.io";
/// The CDI kind of the devices it prepares (`vendor/class`).
pub const CDI_KIND: &str = "haiyun.io/gpu";
/// The consumable capacity that shares a GPU: percent of its compute (100 = the whole GPU).
pub const CORES: &str = "cores";
/// The consumable capacity of device memory, bytes.
pub const MEMORY: &str = "memory";

pub use haiyun_agent::probe::slot::{Slot, device_index, device_name, slots};

#[cfg(test)]
mod tests {
    use super::*;

    use haiyun_agent::probe::GpuProbe;
    use haiyun_agent::probe::fake::FakeProbe;

    #[test]
    fn device_names_round_trip() {
        assert_eq!(device_index(&device_name(7, false)), Some(7));
        assert_eq!(device_index(&device_name(9, true)), Some(9));
        assert_eq!(device_index("gpu-x"), None);
        assert_eq!(device_index("nic-1"), None);
    }

    #[test]
    fn a_gpu_in_mig_mode_offers_its_instances_in_turn() {
        let s = slots(&FakeProbe::profile("a100-mig").unwrap().inventory().unwrap());
        assert_eq!(s.len(), 16, "7 + 7 instances and 2 whole GPUs");
        assert_eq!((s[0].name(), s[0].parent, s[0].mig.as_deref()), ("mig-0".into(), 0, Some("1g.10gb")));
        assert_eq!((s[7].name(), s[7].parent, s[7].uuid.as_str()), ("mig-7".into(), 1, "MIG-fake-a100-01-0"));
        assert_eq!((s[14].name(), s[14].parent, s[14].mig.as_deref()), ("gpu-14".into(), 2, None));
        assert_eq!(s[0].memory_bytes, 10 << 30);
        let whole = slots(&FakeProbe::profile("dgx-h100").unwrap().inventory().unwrap());
        assert!(whole.iter().enumerate().all(|(i, s)| s.slot == i as u32 && s.parent == i as u32));
    }
}
