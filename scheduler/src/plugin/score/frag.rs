//! GPU fragmentation of a node measured against the expected workload (FGD's F_n), with a per-node cache.

use crate::model::{MAX_GPUS_PER_NODE, ModelId, ModelSet, Node, TaskSpec};
use crate::plugin::typical::TypicalPods;
use crate::snapshot::NodeView;

/// How fragmentation is measured: FGD's GPU-only view, or one that also sees memory and how many copies of a
/// shape the node's CPU and memory can still feed.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FragModel {
    /// A shape that does not fit in free memory cannot use the node's GPUs.
    pub memory: bool,
    /// Weight of GPU capacity that copies of a shape could use but the node's CPU (and memory) cannot feed.
    pub starved_weight: f64,
}

impl FragModel {
    /// The paper's FGD measure.
    pub const FGD: FragModel = FragModel { memory: false, starved_weight: 0.0 };
}

/// A node's free GPU milli grouped by (free, model): all fragmentation sees of its GPUs, so each shape is
/// measured once per group instead of once per GPU.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FreeGpus {
    /// (free milli, model — `None` for a GPU the node does not describe —, how many GPUs).
    groups: [(u16, Option<ModelId>, u8); MAX_GPUS_PER_NODE],
    len: usize,
    total: u32,
    models: ModelSet,
}

impl FreeGpus {
    /// Groups the free milli of `node`'s GPUs; `models` is the set of their models.
    pub(crate) fn of(free: &[u16], node: &Node, models: ModelSet) -> Self {
        let mut g = FreeGpus { groups: [(0, None, 0); MAX_GPUS_PER_NODE], len: 0, total: 0, models };
        // A cluster refuses nodes with more GPUs than this, so every GPU finds a group.
        for (j, f) in free.iter().enumerate().take(MAX_GPUS_PER_NODE) {
            g.add(*f, node.gpus.get(j).map(|x| x.model));
        }
        g
    }

    fn add(&mut self, free: u16, model: Option<ModelId>) {
        self.total += u32::from(free);
        match self.groups[..self.len].iter_mut().find(|(f, m, _)| *f == free && *m == model) {
            Some(group) => group.2 += 1,
            None if self.len < MAX_GPUS_PER_NODE => {
                self.groups[self.len] = (free, model, 1);
                self.len += 1;
            }
            None => {}
        }
    }

    /// The same GPUs after a task takes `milli` of one GPU that had `free` milli free.
    pub(crate) fn take(&mut self, free: u16, model: Option<ModelId>, milli: u32) {
        let Some(i) = self.groups[..self.len].iter().position(|(f, m, _)| *f == free && *m == model) else {
            return;
        };
        self.groups[i].2 -= 1;
        self.total -= u32::from(free);
        if self.groups[i].2 == 0 {
            self.len -= 1;
            self.groups.swap(i, self.len);
        }
        self.add(free.saturating_sub(milli.min(u32::from(u16::MAX)) as u16), model);
    }

    /// `F_n = Σ_t p_t · frag(n, t)` over the typical shapes, with the node's free CPU and memory.
    pub(crate) fn fragmentation(
        &self,
        typical: &TypicalPods,
        cpu_free: i64,
        memory_free: i64,
        m: FragModel,
    ) -> f64 {
        typical.pods.iter().map(|t| t.p * shape_fragmentation(&t.spec, cpu_free, memory_free, self, m)).sum()
    }
}

/// Free GPU milli on the node that task shape `t` could not use: all of it when `t` cannot fit at all (CPU
/// short, no allowed model, too few GPUs with `t`'s share free, or — when the model sees memory — memory short),
/// else the free milli on GPUs that cannot take `t`'s share, plus (weighted) the share of copies of `t` that the
/// GPUs could hold but the node's CPU and memory cannot feed.
fn shape_fragmentation(t: &TaskSpec, cpu_free: i64, memory_free: i64, gpus: &FreeGpus, m: FragModel) -> f64 {
    let total = gpus.total;
    if t.is_cpu_only() {
        return f64::from(total);
    }
    let all_allowed = t.models.is_any() || gpus.models.0 & !t.models.0 == 0;
    let (mut fitting, mut copies, mut stranded) = (0u32, 0u32, 0u32);
    for &(f, model, count) in &gpus.groups[..gpus.len] {
        let (f, count) = (u32::from(f), u32::from(count));
        if (all_allowed || model.is_some_and(|x| t.models.contains(x))) && f >= t.gpu_milli {
            fitting += count;
            copies += count * (f / t.gpu_milli);
        } else {
            stranded += count * f;
        }
    }
    let cpu_ok = cpu_free >= t.cpu_milli as i64;
    let mem_ok = !m.memory || memory_free >= t.memory_mib as i64;
    if fitting < t.gpus || !cpu_ok || !mem_ok {
        return f64::from(total);
    }
    if m.starved_weight == 0.0 {
        return f64::from(stranded);
    }
    let gpu_copies = if t.gpu_milli >= 1000 { fitting / t.gpus } else { copies / t.gpus };
    let cpu_copies = (cpu_free as u64).checked_div(t.cpu_milli).unwrap_or(u64::MAX);
    let mem_copies = if m.memory { (memory_free as u64).checked_div(t.memory_mib) } else { None };
    let mem_copies = mem_copies.unwrap_or(u64::MAX);
    let fed = cpu_copies.min(mem_copies).min(u64::from(gpu_copies)) as u32;
    let starved = (gpu_copies - fed) * t.gpus * t.gpu_milli;
    (f64::from(stranded) + m.starved_weight * f64::from(starved)).min(f64::from(total))
}

/// `F_n = Σ_t p_t · frag(n, t)` over the typical shapes.
pub fn node_fragmentation(
    typical: &TypicalPods,
    cpu_free: i64,
    memory_free: i64,
    free: &[u16],
    node: &Node,
    m: FragModel,
) -> f64 {
    FreeGpus::of(free, node, node.models()).fragmentation(typical, cpu_free, memory_free, m)
}

/// The grouped free GPUs and fragmentation of each node as of a node version, so unchanged nodes are not
/// measured twice.
#[derive(Debug, Clone, Default)]
pub struct FragCache {
    entries: Vec<Option<(u32, f64, FreeGpus)>>,
}

impl FragCache {
    /// The node's fragmentation and grouped free GPUs now: remembered, or measured by `frag` and remembered.
    pub(crate) fn get_or(
        &mut self,
        node: &NodeView<'_>,
        frag: impl FnOnce(&FreeGpus) -> f64,
    ) -> (f64, FreeGpus) {
        let i = node.id as usize;
        if self.entries.len() <= i {
            self.entries.resize(i + 1, None);
        }
        match self.entries[i] {
            Some((v, f, gpus)) if v == node.version => (f, gpus),
            _ => {
                let gpus = FreeGpus::of(node.free, node.node, node.models);
                let f = frag(&gpus);
                self.entries[i] = Some((node.version, f, gpus));
                (f, gpus)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, task};

    fn task_fragmentation(
        t: &TaskSpec,
        cpu: i64,
        memory: i64,
        free: &[u16],
        node: &Node,
        m: FragModel,
    ) -> f64 {
        shape_fragmentation(t, cpu, memory, &FreeGpus::of(free, node, node.models()), m)
    }

    #[test]
    fn free_gpu_too_small_for_the_shape_is_fragmented() {
        let n = node().cpu(32_000).gpus(4, 0).build();
        let t = task().cpu(1000).gpus(1, 500).build();
        assert_eq!(
            task_fragmentation(&t, 32_000, 1 << 20, &[1000, 300, 200, 500], &n, FragModel::FGD),
            500.0
        );
    }

    #[test]
    fn a_node_that_cannot_hold_the_shape_is_wholly_fragmented() {
        let n = node().cpu(32_000).gpus(2, 0).build();
        let short_cpu = task().cpu(8000).gpus(1, 500).build();
        assert_eq!(task_fragmentation(&short_cpu, 4000, 1 << 20, &[1000, 300], &n, FragModel::FGD), 1300.0);
        let other_model = task().cpu(1).gpus(1, 500).models(ModelSet::one(3)).build();
        assert_eq!(task_fragmentation(&other_model, 4000, 1 << 20, &[1000, 300], &n, FragModel::FGD), 1300.0);
        let cpu_only = task().cpu(1).build();
        assert_eq!(task_fragmentation(&cpu_only, 4000, 1 << 20, &[1000, 300], &n, FragModel::FGD), 1300.0);
    }

    #[test]
    fn memory_counts_only_when_asked_for() {
        let n = node().cpu(32_000).gpus(2, 0).build();
        let t = task().cpu(1).memory(4096).gpus(1, 1000).build();
        let mem = FragModel { memory: true, starved_weight: 0.0 };
        assert_eq!(task_fragmentation(&t, 4000, 1024, &[1000, 300], &n, FragModel::FGD), 300.0);
        assert_eq!(task_fragmentation(&t, 4000, 1024, &[1000, 300], &n, mem), 1300.0);
    }

    #[test]
    fn gpus_the_cpu_cannot_feed_count_as_starved() {
        // Four free GPUs, CPU for two more 8-core single-GPU tasks: two GPUs' worth is starved.
        let n = node().cpu(64_000).gpus(4, 0).build();
        let t = task().cpu(8000).gpus(1, 1000).build();
        let m = FragModel { memory: false, starved_weight: 0.5 };
        assert_eq!(task_fragmentation(&t, 16_000, 0, &[1000; 4], &n, m), 1000.0);
        assert_eq!(task_fragmentation(&t, 32_000, 0, &[1000; 4], &n, m), 0.0);
    }

    /// The measure as first written, GPU by GPU: the oracle for the grouped one.
    fn per_gpu(
        t: &TaskSpec,
        cpu_free: i64,
        memory_free: i64,
        free: &[u16],
        node: &Node,
        m: FragModel,
    ) -> f64 {
        let total: u32 = free.iter().map(|f| u32::from(*f)).sum();
        if t.is_cpu_only() {
            return f64::from(total);
        }
        let all_allowed = t.models.is_any() || node.models().0 & !t.models.0 == 0;
        let (mut fitting, mut copies, mut stranded) = (0u32, 0u32, 0u32);
        for (j, f) in free.iter().enumerate() {
            let f = u32::from(*f);
            if (all_allowed || node.gpus.get(j).is_some_and(|g| t.models.contains(g.model)))
                && f >= t.gpu_milli
            {
                fitting += 1;
                copies += f / t.gpu_milli;
            } else {
                stranded += f;
            }
        }
        if fitting < t.gpus
            || cpu_free < t.cpu_milli as i64
            || (m.memory && memory_free < t.memory_mib as i64)
        {
            return f64::from(total);
        }
        if m.starved_weight == 0.0 {
            return f64::from(stranded);
        }
        let gpu_copies = if t.gpu_milli >= 1000 { fitting / t.gpus } else { copies / t.gpus };
        let cpu_copies = (cpu_free as u64).checked_div(t.cpu_milli).unwrap_or(u64::MAX);
        let mem_copies = if m.memory { (memory_free as u64).checked_div(t.memory_mib) } else { None };
        let fed = cpu_copies.min(mem_copies.unwrap_or(u64::MAX)).min(u64::from(gpu_copies)) as u32;
        let starved = (gpu_copies - fed) * t.gpus * t.gpu_milli;
        (f64::from(stranded) + m.starved_weight * f64::from(starved)).min(f64::from(total))
    }

    #[test]
    fn grouped_gpus_measure_exactly_what_each_gpu_measured_and_taking_from_a_group_is_regrouping() {
        use crate::plugin::TypicalPod;
        use crate::rng::SplitMix64;
        const FREE: [u16; 6] = [0, 100, 250, 500, 750, 1000];
        let mut rng = SplitMix64::new(7);
        let models = [FragModel::FGD, FragModel { memory: true, starved_weight: 0.075 }];
        for case in 0..2000 {
            let gpus = 1 + rng.below(8) as usize;
            let mut n = node().cpu(64_000).gpus(gpus, 0).build();
            for g in &mut n.gpus {
                g.model = rng.below(3) as u8;
            }
            let free: Vec<u16> = (0..gpus).map(|_| FREE[rng.below(6) as usize]).collect();
            let shapes: Vec<TaskSpec> = (0..4)
                .map(|_| {
                    let allowed =
                        if rng.below(2) == 0 { ModelSet::ANY } else { ModelSet::one(rng.below(3) as u8) };
                    let t = task().cpu(1000 * (1 + rng.below(16))).memory(1024 * (1 + rng.below(64)));
                    match rng.below(3) {
                        0 => t.build(),
                        1 => t.gpus(1, [100, 250, 500][rng.below(3) as usize]).models(allowed).build(),
                        _ => t.gpus(1 + rng.below(4) as u32, 1000).models(allowed).build(),
                    }
                })
                .collect();
            let typical =
                TypicalPods { pods: shapes.iter().map(|s| TypicalPod { spec: *s, p: 0.25 }).collect() };
            let (cpu, mem) = (rng.below(64_000) as i64, rng.below(65_536) as i64);
            let m = models[case % 2];
            let grouped = FreeGpus::of(&free, &n, n.models());
            let want: f64 = shapes.iter().map(|t| 0.25 * per_gpu(t, cpu, mem, &free, &n, m)).sum();
            assert_eq!(grouped.fragmentation(&typical, cpu, mem, m).to_bits(), want.to_bits(), "case {case}");
            let j = rng.below(gpus as u64) as usize;
            let milli = u32::from(free[j]).min([100, 250, 1000][rng.below(3) as usize]);
            let mut taken = grouped;
            taken.take(free[j], Some(n.gpus[j].model), milli);
            let mut after = free.clone();
            after[j] -= milli as u16;
            let want: f64 = shapes.iter().map(|t| 0.25 * per_gpu(t, cpu, mem, &after, &n, m)).sum();
            assert_eq!(
                taken.fragmentation(&typical, cpu, mem, m).to_bits(),
                want.to_bits(),
                "case {case} after"
            );
        }
    }
}
