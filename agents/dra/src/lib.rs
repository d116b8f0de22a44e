//! Haiyun's GPU driver for Kubernetes (DRA): the node's GPUs as a ResourceSlice, and each claim Haiyun allocated
//! prepared as a CDI device that names exactly the allocated GPUs.

pub mod allocation;
pub mod cdi;
pub mod ledger;
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

/// A GPU's device name in the slice.
pub fn device_name(index: u32) -> String {
    format!("gpu-{index}")
}

/// The GPU index a device name stands for.
pub fn device_index(name: &str) -> Option<u32> {
    name.strip_prefix("gpu-")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_round_trip() {
        assert_eq!(device_index(&device_name(7)), Some(7));
        assert_eq!(device_index("gpu-x"), None);
        assert_eq!(device_index("mig-1"), None);
    }
}
