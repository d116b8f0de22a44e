//! The devices a node's GPUs offer to Kubernetes: a whole GPU, or each MIG instance of a GPU in MIG mode, numbered
//! in slots (the index Haiyun places on, and the number in the GPU driver's device names).

/// One device the driver offers: a whole GPU, or a MIG instance of a GPU in MIG mode. Devices are numbered in
/// order (`slot`), GPU by GPU and a MIG GPU's instances in turn, and the slot is the index Haiyun places on.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    /// Its number on the node.
    pub slot: u32,
    /// The GPU it is, or is part of.
    pub parent: u32,
    /// Its UUID (`GPU-…` or `MIG-…`).
    pub uuid: String,
    /// The GPU's product name.
    pub product: String,
    /// The MIG profile, for a MIG instance.
    pub mig: Option<String>,
    /// Its memory, bytes.
    pub memory_bytes: u64,
}

impl Slot {
    /// Its device name in Haiyun's DRA driver.
    pub fn name(&self) -> String {
        device_name(self.slot, self.mig.is_some())
    }
}

/// A device's name in Haiyun's DRA driver: `gpu-<slot>`, or `mig-<slot>` for a MIG instance.
pub fn device_name(slot: u32, mig: bool) -> String {
    if mig { format!("mig-{slot}") } else { format!("gpu-{slot}") }
}

/// The slot a device name of Haiyun's DRA driver stands for.
pub fn device_index(name: &str) -> Option<u32> {
    name.strip_prefix("gpu-").or_else(|| name.strip_prefix("mig-"))?.parse().ok()
}

/// The devices of a node's GPUs. A GPU in MIG mode offers its instances (none if its probe cannot list them), any
/// other GPU itself.
pub fn slots(gpus: &[super::GpuInfo]) -> Vec<Slot> {
    let mut out = Vec::new();
    for g in gpus {
        let mut push = |uuid: &str, mig: Option<&str>, memory_bytes: u64| {
            let slot = out.len() as u32;
            out.push(Slot {
                slot,
                parent: g.index,
                uuid: uuid.into(),
                product: g.name.clone(),
                mig: mig.map(str::to_string),
                memory_bytes,
            });
        };
        if g.mig_enabled {
            for m in &g.mig {
                push(&m.uuid, Some(&m.profile), m.memory_total_bytes);
            }
        } else {
            push(&g.uuid, None, g.memory_total_bytes);
        }
    }
    out
}
