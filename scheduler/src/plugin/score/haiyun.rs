//! Haiyun: fragmentation gradient over every resource the expected workload needs, not GPUs alone.
// FGD asks, per typical shape, "could one more such task use this node's free GPUs?". Haiyun also asks whether
// its memory fits and how many copies the node's CPU and memory can still feed: free GPUs that only CPU-starved
// copies could use count as (discounted) fragmentation, so CPU-heavy and CPU-only tasks go where they strand the
// fewest GPUs. The discount reflects that lighter shapes may still use those GPUs later.

use super::fgd::gradient_score;
use super::frag::{FragCache, FragModel, FreeGpus};
use super::{PolicyError, Score, Scored};
use crate::model::TaskSpec;
use crate::plugin::typical::TypicalPods;
use crate::snapshot::NodeView;

/// Knobs of the Haiyun policy; the defaults are the shipped policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HaiyunParams {
    /// How fragmentation is measured.
    pub frag: FragModel,
}

impl Default for HaiyunParams {
    fn default() -> Self {
        HaiyunParams { frag: FragModel { memory: true, starved_weight: 0.075 } }
    }
}

impl HaiyunParams {
    /// Applies `key=value` pairs separated by commas (`memory=1,starved=0.1`) to the defaults.
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        let mut p = HaiyunParams::default();
        for pair in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            let bad = || PolicyError::BadParam(pair.to_string());
            let (k, v) = pair.split_once('=').ok_or_else(bad)?;
            let x: f64 = v.trim().parse().map_err(|_| bad())?;
            match k.trim() {
                "memory" => p.frag.memory = x != 0.0,
                "starved" if x.is_finite() && x >= 0.0 => p.frag.starved_weight = x,
                _ => return Err(bad()),
            }
        }
        Ok(p)
    }
}

/// Haiyun's default placement score.
#[derive(Debug, Clone)]
pub struct Haiyun {
    typical: TypicalPods,
    params: HaiyunParams,
    before: FragCache,
}

impl Haiyun {
    /// The policy against the given typical shapes.
    pub fn new(typical: TypicalPods, params: HaiyunParams) -> Self {
        Haiyun { typical, params, before: FragCache::default() }
    }
}

impl Score for Haiyun {
    const NAME: &'static str = "Haiyun";

    fn score(&mut self, node: &NodeView<'_>, task: &TaskSpec, usable: u32) -> Scored {
        let (typical, model) = (&self.typical, self.params.frag);
        let frag = |cpu: i64, mem: i64, gpus: &FreeGpus| gpus.fragmentation(typical, cpu, mem, model);
        let (before, now) =
            self.before.get_or(node, |gpus| frag(node.cpu_free as i64, node.memory_free as i64, gpus));
        gradient_score(node, task, usable, before, &now, frag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::TypicalPod;
    use crate::plugin::score::Fgd;
    use crate::testing::{node, task, view_of};

    #[test]
    fn a_cpu_heavy_task_goes_where_it_starves_no_gpu_though_fgd_sees_no_difference() {
        let one_gpu = task().cpu(12_000).memory(1024).gpus(1, 1000).build();
        let typical = TypicalPods { pods: vec![TypicalPod { spec: one_gpu, p: 1.0 }] };
        let n = node().cpu(96_000).memory(1 << 20).gpus(8, 0).build();
        let mut gpus_free = view_of(&n, 96_000, 1 << 20, &[1000; 8]);
        gpus_free.id = 0;
        let mut gpus_full = view_of(&n, 96_000, 1 << 20, &[0; 8]);
        gpus_full.id = 1;
        let cpu_job = task().cpu(32_000).memory(1024).build();
        let mut fgd = Fgd::new(typical.clone());
        assert_eq!(fgd.score(&gpus_free, &cpu_job, 0).score, fgd.score(&gpus_full, &cpu_job, 0).score);
        let mut haiyun = Haiyun::new(typical, HaiyunParams::default());
        let (free, full) =
            (haiyun.score(&gpus_free, &cpu_job, 0).score, haiyun.score(&gpus_full, &cpu_job, 0).score);
        assert!(full > free, "node with no free GPU ({full}) should beat the one it starves ({free})");
    }

    #[test]
    fn a_shape_that_no_longer_fits_in_memory_makes_the_gpus_fragmented() {
        let big_mem = task().cpu(1000).memory(100_000).gpus(1, 1000).build();
        let typical = TypicalPods { pods: vec![TypicalPod { spec: big_mem, p: 1.0 }] };
        let n = node().cpu(96_000).memory(400_000).gpus(2, 0).build();
        let mut roomy = view_of(&n, 96_000, 400_000, &[1000, 1000]);
        roomy.id = 0;
        let mut tight = view_of(&n, 96_000, 150_000, &[1000, 1000]);
        tight.id = 1;
        let mem_job = task().cpu(1000).memory(60_000).build();
        let mut haiyun = Haiyun::new(typical, HaiyunParams::default());
        assert!(haiyun.score(&roomy, &mem_job, 0).score > haiyun.score(&tight, &mem_job, 0).score);
    }

    #[test]
    fn parameters_parse_and_unknown_keys_are_refused() {
        let p = HaiyunParams::parse("memory=0, starved=0.5").unwrap();
        assert!(!p.frag.memory);
        assert_eq!(p.frag.starved_weight, 0.5);
        assert_eq!(HaiyunParams::parse("").unwrap(), HaiyunParams::default());
        assert!(matches!(HaiyunParams::parse("speed=2"), Err(PolicyError::BadParam(_))));
    }
}
