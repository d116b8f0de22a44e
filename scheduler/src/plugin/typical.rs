//! The expected workload: the most common task shapes and their probabilities ("typical pods" in FGD).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::model::TaskSpec;

/// One common task shape and how likely the next task is to have it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypicalPod {
    /// The shape (memory is the median of the tasks with this shape).
    pub spec: TaskSpec,
    /// Probability among the kept shapes.
    pub p: f64,
}

/// The typical shapes of a workload, most common first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TypicalPods {
    /// The shapes, most common first.
    pub pods: Vec<TypicalPod>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    cpu: u64,
    milli: u32,
    gpus: u32,
    label: String,
}

impl TypicalPods {
    /// Estimates the typical shapes from past tasks: group by (CPU, share, GPU count, allowed-model label) —
    /// memory aside — count, sort by count then key (both descending), keep the shortest prefix covering
    /// `coverage` of all tasks, and renormalise the counts to probabilities.
    pub fn estimate<'a>(history: impl IntoIterator<Item = (TaskSpec, &'a str)>, coverage: f64) -> Self {
        let mut groups: HashMap<Key, (TaskSpec, Vec<u64>)> = HashMap::new();
        let mut total = 0usize;
        for (spec, label) in history {
            total += 1;
            let key =
                Key { cpu: spec.cpu_milli, milli: spec.gpu_milli, gpus: spec.gpus, label: label.to_string() };
            groups.entry(key).or_insert_with(|| (spec, Vec::new())).1.push(spec.memory_mib);
        }
        let mut sorted: Vec<(Key, TaskSpec, Vec<u64>)> =
            groups.into_iter().map(|(k, (spec, mem))| (k, spec, mem)).collect();
        sorted.sort_by(|a, b| b.2.len().cmp(&a.2.len()).then_with(|| b.0.cmp(&a.0)));
        let mut kept = Vec::new();
        let mut covered = 0usize;
        for (_, mut spec, mut mem) in sorted {
            if total == 0 || covered as f64 >= coverage * total as f64 {
                break;
            }
            covered += mem.len();
            mem.sort_unstable();
            spec.memory_mib = mem[mem.len() / 2];
            kept.push((spec, mem.len()));
        }
        let pods =
            kept.into_iter().map(|(spec, n)| TypicalPod { spec, p: n as f64 / covered as f64 }).collect();
        TypicalPods { pods }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::task;

    #[test]
    fn the_shortest_prefix_covering_the_coverage_is_kept_and_renormalised() {
        let a = task().cpu(1000).gpus(1, 1000).build();
        let b = task().cpu(2000).gpus(1, 500).build();
        let c = task().cpu(3000).build();
        let history: Vec<(TaskSpec, &str)> =
            [a; 6].into_iter().chain([b; 3]).chain([c; 1]).map(|t| (t, "")).collect();
        let typical = TypicalPods::estimate(history, 0.9);
        assert_eq!(typical.pods.len(), 2);
        assert_eq!(typical.pods[0].spec, a);
        assert!((typical.pods[0].p - 6.0 / 9.0).abs() < 1e-12);
        assert!((typical.pods[1].p - 3.0 / 9.0).abs() < 1e-12);
    }

    #[test]
    fn memory_is_ignored_for_grouping_and_summarised_by_its_median() {
        let history: Vec<(TaskSpec, &str)> =
            [10, 30, 20].into_iter().map(|m| (task().cpu(1).memory(m).build(), "")).collect();
        let typical = TypicalPods::estimate(history, 1.0);
        assert_eq!(typical.pods.len(), 1);
        assert_eq!(typical.pods[0].spec.memory_mib, 20);
    }
}
