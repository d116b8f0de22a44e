//! Scores remembered per task shape and node until the node changes.

use crate::plugin::Scored;

/// How many entries (shapes × nodes) the cache may hold before it starts afresh: 32 MiB of them.
const MAX_ENTRIES: usize = 1 << 21;

/// One node's score for one shape, stamped with the node's version plus one (0: nothing remembered).
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    stamp: u32,
    gpus: u32,
    score: i64,
}

/// Per task class, a table over node ids: the class's score on each node at the version it was computed for.
/// A scan reads one class's entries for consecutive nodes, so the table is laid out class by class.
#[derive(Debug, Clone, Default)]
pub struct ScoreCache {
    classes: Vec<Vec<Entry>>,
}

impl ScoreCache {
    /// The score of `class` on `node` if it was computed at `version`.
    pub fn get(&self, node: u32, version: u32, class: u32) -> Option<Scored> {
        let e = self.classes.get(class as usize)?.get(node as usize)?;
        (e.stamp != 0 && e.stamp == version.wrapping_add(1))
            .then_some(Scored { score: e.score, gpus: e.gpus })
    }

    /// Remembers a score of `class` on `node` at `version`, in place of any older one.
    pub fn put(&mut self, node: u32, version: u32, class: u32, score: Scored) {
        let (c, i) = (class as usize, node as usize);
        if self.classes.len() <= c {
            self.classes.resize_with(c + 1, Vec::new);
        }
        let table = &mut self.classes[c];
        if table.len() <= i {
            table.resize(i + 1, Entry::default());
        }
        table[i] = Entry { stamp: version.wrapping_add(1), gpus: score.gpus, score: score.score };
    }

    /// How many classes a cache over `nodes` nodes may hold within its memory budget (at least 64).
    pub fn class_budget(nodes: usize) -> usize {
        (MAX_ENTRIES / nodes.max(1)).max(64)
    }

    /// Forgets every score.
    pub fn clear(&mut self) {
        self.classes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_score_is_found_only_at_the_version_it_was_computed_for() {
        let mut cache = ScoreCache::default();
        let s = Scored { score: 42, gpus: 0b101 };
        assert_eq!(cache.get(3, 0, 1), None);
        cache.put(3, 0, 1, s);
        assert_eq!(cache.get(3, 0, 1), Some(s));
        assert_eq!(cache.get(3, 1, 1), None, "the node changed since");
        assert_eq!(cache.get(3, 0, 0), None, "another class");
        assert_eq!(cache.get(2, 0, 1), None, "another node, never scored");
        cache.put(3, 1, 1, Scored { score: 7, gpus: 0 });
        assert_eq!(cache.get(3, 0, 1), None, "the older version is gone");
        assert_eq!(cache.get(3, 1, 1), Some(Scored { score: 7, gpus: 0 }));
        cache.put(5, u32::MAX, 0, s);
        assert_eq!(
            cache.get(5, u32::MAX, 0),
            None,
            "the last version cannot be stamped, so it is never remembered"
        );
        cache.clear();
        assert_eq!(cache.get(3, 1, 1), None);
    }
}
