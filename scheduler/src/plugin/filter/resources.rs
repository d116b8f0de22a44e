//! NodeResourcesFit: free CPU, memory and task slots.

use super::{Filter, Unfit};
use crate::model::TaskSpec;
use crate::snapshot::NodeView;

/// Refuses nodes without the CPU, memory or task slot a task needs.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeResourcesFit;

impl Filter for NodeResourcesFit {
    const NAME: &'static str = "NodeResourcesFit";

    fn filter(&self, node: &NodeView<'_>, task: &TaskSpec, _usable: u32) -> Result<(), Unfit> {
        if node.cpu_free < task.cpu_milli {
            return Err(Unfit::InsufficientCpu { free: node.cpu_free, wanted: task.cpu_milli });
        }
        if node.memory_free < task.memory_mib {
            return Err(Unfit::InsufficientMemory { free: node.memory_free, wanted: task.memory_mib });
        }
        if node.tasks >= node.max_tasks {
            return Err(Unfit::TooManyTasks { max: node.max_tasks });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, task, view_of};

    #[test]
    fn a_node_short_of_cpu_is_refused_with_the_shortfall() {
        let n = node().cpu(4000).memory(8192).build();
        let v = view_of(&n, 4000, 8192, &[]);
        assert_eq!(
            NodeResourcesFit.filter(&v, &task().cpu(6000).build(), 0),
            Err(Unfit::InsufficientCpu { free: 4000, wanted: 6000 })
        );
        assert_eq!(NodeResourcesFit.filter(&v, &task().cpu(4000).memory(8192).build(), 0), Ok(()));
    }

    #[test]
    fn a_node_short_of_memory_is_refused() {
        let n = node().cpu(4000).memory(8192).build();
        let v = view_of(&n, 4000, 1024, &[]);
        assert_eq!(
            NodeResourcesFit.filter(&v, &task().cpu(1).memory(2048).build(), 0),
            Err(Unfit::InsufficientMemory { free: 1024, wanted: 2048 })
        );
    }

    #[test]
    fn a_full_node_refuses_one_more_task() {
        let n = node().max_tasks(0).build();
        let v = view_of(&n, 1000, 2048, &[]);
        assert_eq!(NodeResourcesFit.filter(&v, &task().build(), 0), Err(Unfit::TooManyTasks { max: 0 }));
    }
}
