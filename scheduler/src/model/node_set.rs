//! Node sets: the nodes a task may use beyond its resources (what a pod template's selector, affinity and
//! tolerations allow), computed by the caller and named for explanations.

use serde::{Deserialize, Serialize};

use super::cluster::NodeId;

/// Which node set of the cluster a task is limited to; [`NodeSetId::ANY`] means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct NodeSetId(pub u32);

impl NodeSetId {
    /// No limit: every node.
    pub const ANY: NodeSetId = NodeSetId(0);

    /// Whether the id limits nothing.
    pub fn is_any(self) -> bool {
        self == NodeSetId::ANY
    }
}

/// A named set of nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSet {
    /// What decides membership, for people (e.g. `nodeSelector gpu=a100`).
    pub name: String,
    words: Vec<u64>,
}

impl NodeSet {
    /// A set named `name` holding `members`.
    pub fn new(name: impl Into<String>, members: impl IntoIterator<Item = NodeId>) -> Self {
        let mut set = NodeSet { name: name.into(), words: Vec::new() };
        for id in members {
            let w = (id / 64) as usize;
            if w >= set.words.len() {
                set.words.resize(w + 1, 0);
            }
            set.words[w] |= 1u64 << (id % 64);
        }
        set
    }

    /// Whether `id` is a member.
    pub fn contains(&self, id: NodeId) -> bool {
        self.words.get((id / 64) as usize).is_some_and(|w| w & (1u64 << (id % 64)) != 0)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether it has no member.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }
}

/// The node sets of a cluster; id `k` (from 1) is entry `k - 1`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSets {
    sets: Vec<NodeSet>,
}

/// No node set at all, for views built without a cluster.
pub static NO_NODE_SETS: NodeSets = NodeSets { sets: Vec::new() };

impl NodeSets {
    /// Adds a set and returns its id.
    pub fn add(&mut self, set: NodeSet) -> NodeSetId {
        self.sets.push(set);
        NodeSetId(self.sets.len() as u32)
    }

    /// The set behind `id` (`None` for [`NodeSetId::ANY`] or an unknown id).
    pub fn get(&self, id: NodeSetId) -> Option<&NodeSet> {
        id.0.checked_sub(1).and_then(|i| self.sets.get(i as usize))
    }

    /// Whether a task limited to `id` may use node `node`: always for `ANY`, never for an unknown id.
    pub fn allows(&self, id: NodeSetId, node: NodeId) -> bool {
        id.is_any() || self.get(id).is_some_and(|s| s.contains(node))
    }

    /// Number of sets.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_holds_exactly_its_members() {
        let s = NodeSet::new("x", [0, 3, 64, 130]);
        let members: Vec<u32> = (0..200).filter(|i| s.contains(*i)).collect();
        assert_eq!(members, vec![0, 3, 64, 130]);
        assert_eq!(s.len(), 4);
        assert!(!s.is_empty());
        assert!(NodeSet::new("none", []).is_empty());
    }

    #[test]
    fn any_allows_every_node_and_an_unknown_id_none() {
        let mut sets = NodeSets::default();
        let id = sets.add(NodeSet::new("a", [1]));
        assert_eq!(id, NodeSetId(1));
        assert!(sets.allows(NodeSetId::ANY, 7));
        assert!(sets.allows(id, 1));
        assert!(!sets.allows(id, 2));
        assert!(!sets.allows(NodeSetId(9), 1));
        assert_eq!(sets.get(id).map(|s| s.name.as_str()), Some("a"));
        assert!(sets.get(NodeSetId::ANY).is_none());
    }
}
