//! GPUs, GPU models and sets of allowed models.

use serde::{Deserialize, Serialize};

/// Capacity of one GPU in milli-GPUs; a fractional request shares one device.
pub const GPU_MILLI: u32 = 1000;

/// The most GPU models one federation can name (a `ModelSet` is a 64-bit mask).
pub const MAX_GPU_MODELS: usize = 64;

/// A GPU model interned in a [`GpuModels`] registry.
pub type ModelId = u8;

/// Interns GPU model names ("H100", "T4", …) to small ids, in order of first use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuModels {
    names: Vec<String>,
}

impl GpuModels {
    /// Returns the id of `name`, interning it when it is new; `None` once 64 models are known.
    pub fn intern(&mut self, name: &str) -> Option<ModelId> {
        if let Some(id) = self.lookup(name) {
            return Some(id);
        }
        if self.names.len() >= MAX_GPU_MODELS {
            return None;
        }
        self.names.push(name.to_string());
        ModelId::try_from(self.names.len() - 1).ok()
    }

    /// Returns the id of a known model name.
    pub fn lookup(&self, name: &str) -> Option<ModelId> {
        self.names.iter().position(|n| n == name).and_then(|i| ModelId::try_from(i).ok())
    }

    /// Returns the name of a model id.
    pub fn name(&self, id: ModelId) -> &str {
        self.names.get(usize::from(id)).map_or("?", String::as_str)
    }

    /// Number of interned models.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no model is interned.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Names the models in a set, comma-separated ("any" for the full set).
    pub fn describe(&self, set: ModelSet) -> String {
        if set.is_any() {
            return "any".to_string();
        }
        set.iter().map(|m| self.name(m)).collect::<Vec<_>>().join(",")
    }
}

/// A set of GPU models, as a bit mask over [`ModelId`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ModelSet(pub u64);

impl ModelSet {
    /// Every model: no constraint.
    pub const ANY: ModelSet = ModelSet(u64::MAX);
    /// No model at all.
    pub const NONE: ModelSet = ModelSet(0);

    /// The set holding one model.
    pub fn one(id: ModelId) -> Self {
        ModelSet(1u64 << (u32::from(id) % 64))
    }

    /// Whether `id` is in the set.
    pub fn contains(self, id: ModelId) -> bool {
        self.0 & (1u64 << (u32::from(id) % 64)) != 0
    }

    /// Whether the set places no constraint.
    pub fn is_any(self) -> bool {
        self.0 == u64::MAX
    }

    /// Whether the two sets share a model.
    pub fn intersects(self, other: ModelSet) -> bool {
        self.0 & other.0 != 0
    }

    /// Adds a model.
    pub fn insert(&mut self, id: ModelId) {
        self.0 |= 1u64 << (u32::from(id) % 64);
    }

    /// The models in the set, in id order.
    pub fn iter(self) -> impl Iterator<Item = ModelId> {
        // One step per member, not one per possible model: sets are asked for their members many times a cycle.
        let mut bits = self.0;
        std::iter::from_fn(move || {
            let m = u8::try_from(bits.trailing_zeros()).ok().filter(|m| *m < 64)?;
            bits &= bits - 1;
            Some(m)
        })
    }
}

/// Whether a GPU may take work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Reported healthy by its agent.
    #[default]
    Healthy,
    /// Failed (XID, ECC, remapping, disappeared): never placed on.
    Unhealthy,
    /// Not known (agent silent or a probe hung): never placed on.
    Unknown,
}

impl Health {
    /// Whether new work may land on a GPU in this state.
    pub fn is_placeable(self) -> bool {
        self == Health::Healthy
    }
}

/// One GPU of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// Its model.
    pub model: ModelId,
    /// Device memory in MiB (0 when unknown).
    pub memory_mib: u32,
    /// NVLink domain: GPUs sharing a domain id talk over NVLink; ids are federation-wide.
    pub nvlink_domain: u32,
    /// Health as last reported.
    pub health: Health,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sets_members_are_its_models_in_id_order() {
        for bits in [0, 1, 1 << 63, u64::MAX, (1 << 1) | (1 << 5) | (1 << 40), 0x8000_0000_0000_0001] {
            let set = ModelSet(bits);
            let plain: Vec<ModelId> = (0..64u8).filter(|m| set.contains(*m)).collect();
            assert_eq!(set.iter().collect::<Vec<_>>(), plain, "{bits:#x}");
        }
    }
}
