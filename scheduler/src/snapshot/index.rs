//! The capacity index: which nodes have k fully free GPUs, or one GPU with a given share free, per model.

use super::bitset::BitSet;
use crate::model::{GPU_MILLI, ModelId, ModelSet, NodeId};

/// Share levels: level `d` holds nodes with a placeable GPU whose free milli is at least `max(1, 100·d)`.
pub const SHARE_LEVELS: usize = 11;

/// Per GPU model: nodes by count of fully free GPUs and by the largest free share on one GPU.
#[derive(Debug, Clone, Default)]
struct ModelIndex {
    /// `whole[k-1]`: nodes with at least `k` fully free placeable GPUs of this model.
    whole: Vec<BitSet>,
    /// `share[d]`: nodes with a placeable GPU of this model with free ≥ `max(1, 100·d)`.
    share: Vec<BitSet>,
}

/// How much of one model a node has free, as the index records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelFree {
    /// Fully free placeable GPUs.
    pub whole: u32,
    /// Largest free milli on one placeable GPU.
    pub best_share: u32,
}

/// Sets of nodes by free GPU capacity, updated node by node as capacity changes.
#[derive(Debug, Clone, Default)]
pub struct CapacityIndex {
    models: Vec<ModelIndex>,
    all: BitSet,
}

fn share_level(milli: u32) -> usize {
    (milli / 100) as usize
}

impl CapacityIndex {
    /// Records node `id`'s free capacity for `model`.
    pub fn update(&mut self, id: NodeId, model: ModelId, free: ModelFree) {
        self.all.insert(id);
        let m = usize::from(model);
        if self.models.len() <= m {
            self.models.resize_with(m + 1, ModelIndex::default);
        }
        let idx = &mut self.models[m];
        let whole = free.whole as usize;
        if idx.whole.len() < whole {
            idx.whole.resize_with(whole, BitSet::default);
        }
        for (k, set) in idx.whole.iter_mut().enumerate() {
            set.set(id, k < whole);
        }
        if idx.share.is_empty() {
            idx.share.resize_with(SHARE_LEVELS, BitSet::default);
        }
        let top = if free.best_share == 0 { None } else { Some(share_level(free.best_share)) };
        for (d, set) in idx.share.iter_mut().enumerate() {
            set.set(id, top.is_some_and(|t| d <= t));
        }
    }

    /// Registers a node with no GPUs (it still holds CPU-only tasks).
    pub fn insert_node(&mut self, id: NodeId) {
        self.all.insert(id);
    }

    /// The sets whose union is a superset of the nodes that may hold `gpus` GPUs of `milli` each of a
    /// model in `models`. CPU-only requests get every node.
    pub fn candidate_sets(&self, gpus: u32, milli: u32, models: ModelSet) -> Vec<&BitSet> {
        if gpus == 0 || milli == 0 {
            return vec![&self.all];
        }
        let mut sets = Vec::new();
        for (m, idx) in self.models.iter().enumerate() {
            let Ok(id) = ModelId::try_from(m) else { continue };
            if !models.contains(id) {
                continue;
            }
            let set = if milli >= GPU_MILLI {
                idx.whole.get(gpus as usize - 1)
            } else {
                idx.share.get(share_level(milli))
            };
            if let Some(s) = set {
                sets.push(s);
            }
        }
        sets
    }

    /// Every node.
    pub fn all(&self) -> &BitSet {
        &self.all
    }
}

/// Walks the union of several bit sets, starting at word `start` and wrapping around once.
#[derive(Debug)]
pub struct UnionIter<'a> {
    sets: Vec<&'a BitSet>,
    words: usize,
    start: usize,
    step: usize,
    current: u64,
    base: u32,
}

impl<'a> UnionIter<'a> {
    /// A walk over `sets` beginning at word `start`.
    pub fn new(sets: Vec<&'a BitSet>, start: usize) -> Self {
        let words = sets.iter().map(|s| s.word_len()).max().unwrap_or(0);
        let start = if words == 0 { 0 } else { start % words };
        UnionIter { sets, words, start, step: 0, current: 0, base: 0 }
    }

    fn load(&mut self) -> bool {
        while self.step < self.words {
            let w = (self.start + self.step) % self.words;
            self.step += 1;
            let word = self.sets.iter().fold(0u64, |acc, s| acc | s.word(w));
            if word != 0 {
                self.current = word;
                self.base = (w * 64) as u32;
                return true;
            }
        }
        false
    }
}

impl Iterator for UnionIter<'_> {
    type Item = NodeId;

    fn next(&mut self) -> Option<NodeId> {
        if self.current == 0 && !self.load() {
            return None;
        }
        let bit = self.current.trailing_zeros();
        self.current &= self.current - 1;
        Some(self.base + bit)
    }
}
