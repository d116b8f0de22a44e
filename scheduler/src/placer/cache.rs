//! Scores remembered per node and task shape until the node changes.

use crate::plugin::Scored;

#[derive(Debug, Clone, Default)]
struct NodeScores {
    version: u32,
    entries: Vec<(u32, Scored)>,
}

/// Per node: the scores of task classes at the node's current version.
#[derive(Debug, Clone, Default)]
pub struct ScoreCache {
    nodes: Vec<NodeScores>,
}

impl ScoreCache {
    /// The score of `class` on `node` if it was computed at `version`.
    pub fn get(&self, node: u32, version: u32, class: u32) -> Option<Scored> {
        let n = self.nodes.get(node as usize)?;
        if n.version != version {
            return None;
        }
        n.entries.iter().find(|(c, _)| *c == class).map(|(_, s)| *s)
    }

    /// Remembers a score; entries of older versions of the node are dropped.
    pub fn put(&mut self, node: u32, version: u32, class: u32, score: Scored) {
        let i = node as usize;
        if self.nodes.len() <= i {
            self.nodes.resize_with(i + 1, NodeScores::default);
        }
        let n = &mut self.nodes[i];
        if n.version != version {
            n.version = version;
            n.entries.clear();
        }
        n.entries.push((class, score));
    }
}
