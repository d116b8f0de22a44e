//! Amounts per resource flavor: CPU (milli), memory (MiB) and milli-GPUs of each model.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{Gang, GpuModels, ModelId};

/// A kind of resource that quotas are counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Flavor {
    /// CPU in milli-cores.
    Cpu,
    /// Memory in MiB.
    Memory,
    /// Milli-GPUs of one model (`nvidia.com/gpu:<model>`).
    Gpu(ModelId),
}

impl Flavor {
    /// Its index in a [`Resources`] vector.
    pub fn index(self) -> usize {
        match self {
            Flavor::Cpu => 0,
            Flavor::Memory => 1,
            Flavor::Gpu(m) => 2 + usize::from(m),
        }
    }

    /// The flavor at a vector index.
    pub fn at(i: usize) -> Flavor {
        match i {
            0 => Flavor::Cpu,
            1 => Flavor::Memory,
            _ => Flavor::Gpu(u8::try_from(i - 2).unwrap_or(u8::MAX)),
        }
    }

    /// A name for people: `cpu`, `memory`, `nvidia.com/gpu:H100`.
    pub fn describe(self, models: &GpuModels) -> String {
        match self {
            Flavor::Cpu => "cpu".into(),
            Flavor::Memory => "memory".into(),
            Flavor::Gpu(m) => format!("nvidia.com/gpu:{}", models.name(m)),
        }
    }

    /// An amount in this flavor's unit for people: cores, GiB or GPUs.
    pub fn amount(self, v: u64) -> String {
        match self {
            Flavor::Cpu => format!("{} cores", fmt_units(v, 1000)),
            Flavor::Memory => format!("{} GiB", fmt_units(v, 1024)),
            Flavor::Gpu(_) => fmt_units(v, 1000),
        }
    }
}

fn fmt_units(v: u64, per: u64) -> String {
    if v % per == 0 { format!("{}", v / per) } else { format!("{:.2}", v as f64 / per as f64) }
}

/// An amount of every flavor (absent = 0).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources(pub Vec<u64>);

impl Resources {
    /// One flavor's amount.
    pub fn get(&self, f: Flavor) -> u64 {
        self.0.get(f.index()).copied().unwrap_or(0)
    }

    /// Sets one flavor's amount.
    pub fn set(&mut self, f: Flavor, v: u64) {
        let i = f.index();
        if self.0.len() <= i {
            self.0.resize(i + 1, 0);
        }
        self.0[i] = v;
    }

    /// Builder form of [`Resources::set`].
    pub fn with(mut self, f: Flavor, v: u64) -> Self {
        self.set(f, v);
        self
    }

    /// Adds `other` in place.
    pub fn add(&mut self, other: &Resources) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a += b;
        }
    }

    /// Subtracts `other` in place, stopping at zero.
    pub fn sub(&mut self, other: &Resources) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a = a.saturating_sub(*b);
        }
    }

    /// The flavors with a non-zero amount.
    pub fn flavors(&self) -> impl Iterator<Item = (Flavor, u64)> + '_ {
        self.0.iter().enumerate().filter(|(_, v)| **v > 0).map(|(i, v)| (Flavor::at(i), *v))
    }

    /// The flavors it is mainly of: its GPU models, or CPU when it has no GPUs.
    pub fn main_flavors(&self) -> impl Iterator<Item = Flavor> + '_ {
        let gpu = self.flavors().any(|(f, _)| matches!(f, Flavor::Gpu(_)));
        self.flavors()
            .map(|(f, _)| f)
            .filter(move |f| if gpu { matches!(f, Flavor::Gpu(_)) } else { *f == Flavor::Cpu })
    }

    /// What a gang asks for when its GPUs are of `model`.
    pub fn of_gang(gang: &Gang, model: Option<ModelId>) -> Self {
        // One allocation of the length setting each flavor in turn would grow it to.
        let len = model.map_or(Flavor::Memory, Flavor::Gpu).index() + 1;
        let mut r = Resources(vec![0; len]);
        let (cpu, mem) = gang.tasks.iter().fold((0, 0), |(c, m), t| (c + t.cpu_milli, m + t.memory_mib));
        r.set(Flavor::Cpu, cpu);
        r.set(Flavor::Memory, mem);
        if let Some(m) = model {
            r.set(Flavor::Gpu(m), gang.gpu_total_milli());
        }
        r
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.flavors().map(|(fl, v)| format!("{fl:?}={v}")).collect();
        f.write_str(&parts.join(","))
    }
}
