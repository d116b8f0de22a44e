//! GpuCapacity: enough allowed, healthy GPUs with the asked share free.

use super::{Filter, Unfit};
use crate::model::TaskSpec;
use crate::plugin::fitting_gpus;
use crate::snapshot::NodeView;

/// Refuses nodes with fewer than `gpus` usable GPUs that each have `gpu_milli` free.
#[derive(Debug, Clone, Copy, Default)]
pub struct GpuCapacity;

impl Filter for GpuCapacity {
    const NAME: &'static str = "GpuCapacity";

    fn filter(&self, node: &NodeView<'_>, task: &TaskSpec, usable: u32) -> Result<(), Unfit> {
        if task.is_cpu_only() {
            return Ok(());
        }
        let fitting = fitting_gpus(node.free, usable, task.gpu_milli).count_ones();
        if fitting < task.gpus { Err(Unfit::InsufficientGpus { fitting, wanted: task.gpus }) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, task, view_of};

    #[test]
    fn a_node_with_too_few_fitting_gpus_reports_how_many_fit() {
        let n = node().gpus(4, 0).build();
        let v = view_of(&n, 1000, 1000, &[1000, 400, 1000, 0]);
        let t = task().gpus(3, 1000).build();
        assert_eq!(
            GpuCapacity.filter(&v, &t, 0b1111),
            Err(Unfit::InsufficientGpus { fitting: 2, wanted: 3 })
        );
        assert_eq!(GpuCapacity.filter(&v, &task().gpus(1, 400).build(), 0b1111), Ok(()));
    }

    #[test]
    fn gpus_outside_the_usable_mask_do_not_count() {
        let n = node().gpus(2, 0).build();
        let v = view_of(&n, 1000, 1000, &[1000, 1000]);
        let t = task().gpus(2, 1000).build();
        assert_eq!(GpuCapacity.filter(&v, &t, 0b01), Err(Unfit::InsufficientGpus { fitting: 1, wanted: 2 }));
    }
}
