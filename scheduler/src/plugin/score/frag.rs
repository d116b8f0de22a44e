//! GPU fragmentation of a node measured against the expected workload (FGD's F_n), with a per-node cache.

use crate::model::{Node, TaskSpec};
use crate::plugin::typical::TypicalPods;

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

/// Free GPU milli on the node that task shape `t` could not use: all of it when `t` cannot fit at all (CPU
/// short, no allowed model, too few GPUs with `t`'s share free, or — when the model sees memory — memory short),
/// else the free milli on GPUs that cannot take `t`'s share, plus (weighted) the share of copies of `t` that the
/// GPUs could hold but the node's CPU and memory cannot feed.
pub fn task_fragmentation(
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
        let allowed = all_allowed || node.gpus.get(j).is_some_and(|g| t.models.contains(g.model));
        if allowed && f >= t.gpu_milli {
            fitting += 1;
            copies += f / t.gpu_milli;
        } else {
            stranded += f;
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
    typical.pods.iter().map(|t| t.p * task_fragmentation(&t.spec, cpu_free, memory_free, free, node, m)).sum()
}

/// The fragmentation of each node as of a node version, so unchanged nodes are not measured twice.
#[derive(Debug, Clone, Default)]
pub struct FragCache {
    entries: Vec<Option<(u32, f64)>>,
}

impl FragCache {
    /// The cached value for `node` at `version`, or `compute()` stored for next time.
    pub fn get_or(&mut self, node: u32, version: u32, compute: impl FnOnce() -> f64) -> f64 {
        let i = node as usize;
        if self.entries.len() <= i {
            self.entries.resize(i + 1, None);
        }
        match self.entries[i] {
            Some((v, f)) if v == version => f,
            _ => {
                let f = compute();
                self.entries[i] = Some((version, f));
                f
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelSet;
    use crate::testing::{node, task};

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
}
