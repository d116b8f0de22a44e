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
    /// Its device name in Haiyun's DRA driver: `gpu-<slot>`, or `mig-<slot>` for a MIG instance.
    pub fn name(&self) -> String {
        if self.mig.is_some() { format!("mig-{}", self.slot) } else { format!("gpu-{}", self.slot) }
    }
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
