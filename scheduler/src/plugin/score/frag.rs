//! GPU fragmentation of a node measured against the expected workload (FGD's F_n), with a per-node cache.

use crate::model::{Node, TaskSpec};
use crate::plugin::typical::TypicalPods;

/// Free GPU milli on the node that task shape `t` could not use: all of it when `t` cannot fit at all (CPU
/// short, no allowed model, too few GPUs with `t`'s share free, or — when `memory` is set — memory short),
/// else the free milli on GPUs that cannot take `t`'s share.
pub fn task_fragmentation(
    t: &TaskSpec,
    cpu_free: i64,
    memory_free: i64,
    free: &[u16],
    node: &Node,
    memory: bool,
) -> u32 {
    let total: u32 = free.iter().map(|f| u32::from(*f)).sum();
    if t.is_cpu_only() {
        return total;
    }
    let all_allowed = t.models.is_any() || node.models().0 & !t.models.0 == 0;
    let mut fitting = 0u32;
    let mut stranded = 0u32;
    for (j, f) in free.iter().enumerate() {
        let f = u32::from(*f);
        let allowed = all_allowed || node.gpus.get(j).is_some_and(|g| t.models.contains(g.model));
        if allowed && f >= t.gpu_milli {
            fitting += 1;
        } else {
            stranded += f;
        }
    }
    let cpu_ok = cpu_free >= t.cpu_milli as i64;
    let mem_ok = !memory || memory_free >= t.memory_mib as i64;
    if fitting >= t.gpus && cpu_ok && mem_ok { stranded } else { total }
}

/// `F_n = Σ_t p_t · frag(n, t)` over the typical shapes.
pub fn node_fragmentation(
    typical: &TypicalPods,
    cpu_free: i64,
    memory_free: i64,
    free: &[u16],
    node: &Node,
    memory: bool,
) -> f64 {
    typical
        .pods
        .iter()
        .map(|t| t.p * f64::from(task_fragmentation(&t.spec, cpu_free, memory_free, free, node, memory)))
        .sum()
}

/// The fragmentation of each node as of a node version, so unchanged nodes are not measured twice.
#[derive(Debug, Clone, Default)]
pub struct FragCache {
    entries: Vec<Option<(u32, f64)>>,
}

impl FragCache {
    /// The cached value for `node` if it was measured at `version`.
    pub fn entries_get(&self, node: u32, version: u32) -> Option<f64> {
        match self.entries.get(node as usize) {
            Some(Some((v, f))) if *v == version => Some(*f),
            _ => None,
        }
    }

    /// Stores the value for `node` at `version`.
    pub fn put(&mut self, node: u32, version: u32, value: f64) {
        let i = node as usize;
        if self.entries.len() <= i {
            self.entries.resize(i + 1, None);
        }
        self.entries[i] = Some((version, value));
    }

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
        assert_eq!(task_fragmentation(&t, 32_000, 1 << 20, &[1000, 300, 200, 500], &n, false), 500);
    }

    #[test]
    fn a_node_that_cannot_hold_the_shape_is_wholly_fragmented() {
        let n = node().cpu(32_000).gpus(2, 0).build();
        let short_cpu = task().cpu(8000).gpus(1, 500).build();
        assert_eq!(task_fragmentation(&short_cpu, 4000, 1 << 20, &[1000, 300], &n, false), 1300);
        let other_model = task().cpu(1).gpus(1, 500).models(ModelSet::one(3)).build();
        assert_eq!(task_fragmentation(&other_model, 4000, 1 << 20, &[1000, 300], &n, false), 1300);
        let cpu_only = task().cpu(1).build();
        assert_eq!(task_fragmentation(&cpu_only, 4000, 1 << 20, &[1000, 300], &n, false), 1300);
    }

    #[test]
    fn memory_counts_only_when_asked_for() {
        let n = node().cpu(32_000).gpus(2, 0).build();
        let t = task().cpu(1).memory(4096).gpus(1, 1000).build();
        assert_eq!(task_fragmentation(&t, 4000, 1024, &[1000, 300], &n, false), 300);
        assert_eq!(task_fragmentation(&t, 4000, 1024, &[1000, 300], &n, true), 1300);
    }
}
