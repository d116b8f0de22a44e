//! NodeSetMember: a task limited to a node set (its template's selector, affinity, tolerations) runs only there.

use super::{Filter, Unfit};
use crate::model::TaskSpec;
use crate::snapshot::NodeView;

/// Refuses nodes outside the task's node set.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeSetMember;

impl Filter for NodeSetMember {
    const NAME: &'static str = "NodeSetMember";

    fn filter(&self, node: &NodeView<'_>, task: &TaskSpec, _usable: u32) -> Result<(), Unfit> {
        if node.sets.allows(task.nodes, node.id) { Ok(()) } else { Err(Unfit::OutsideNodeSet) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeSet, NodeSets};
    use crate::testing::{node, task, view_of};

    #[test]
    fn a_task_limited_to_a_set_runs_only_on_its_members() {
        let n = node().gpus(1, 0).build();
        let mut sets = NodeSets::default();
        let only_0 = sets.add(NodeSet::new("nodeSelector a=b", [0]));
        let mut v = view_of(&n, 1000, 1000, &[1000]);
        v.sets = &sets;
        assert_eq!(NodeSetMember.filter(&v, &task().nodes(only_0).build(), 1), Ok(()));
        v.id = 1;
        assert_eq!(NodeSetMember.filter(&v, &task().nodes(only_0).build(), 1), Err(Unfit::OutsideNodeSet));
        assert_eq!(NodeSetMember.filter(&v, &task().build(), 1), Ok(()));
    }
}
