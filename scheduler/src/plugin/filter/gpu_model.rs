//! GpuModel: the node must have a GPU of a model the task allows.

use super::{Filter, Unfit};
use crate::model::TaskSpec;
use crate::snapshot::NodeView;

/// Refuses GPU tasks on nodes with no GPU of an allowed model.
#[derive(Debug, Clone, Copy, Default)]
pub struct GpuModel;

impl Filter for GpuModel {
    const NAME: &'static str = "GpuModel";

    fn filter(&self, node: &NodeView<'_>, task: &TaskSpec, _usable: u32) -> Result<(), Unfit> {
        if task.is_cpu_only() || node.models.intersects(task.models) {
            Ok(())
        } else {
            Err(Unfit::GpuModelNotAllowed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelSet;
    use crate::testing::{node, task, view_of};

    #[test]
    fn a_gpu_task_is_refused_where_no_gpu_model_is_allowed() {
        let n = node().gpus(2, 0).build();
        let v = view_of(&n, 1000, 1000, &[1000, 1000]);
        let t = task().gpus(1, 1000).models(ModelSet::one(1)).build();
        assert_eq!(GpuModel.filter(&v, &t, 0b11), Err(Unfit::GpuModelNotAllowed));
        let t = task().gpus(1, 1000).models(ModelSet::one(0)).build();
        assert_eq!(GpuModel.filter(&v, &t, 0b11), Ok(()));
    }

    #[test]
    fn a_cpu_task_ignores_gpu_models() {
        let n = node().gpus(2, 0).build();
        let v = view_of(&n, 1000, 1000, &[1000, 1000]);
        let t = task().models(ModelSet::one(5)).build();
        assert_eq!(GpuModel.filter(&v, &t, 0), Ok(()));
    }
}
