//! A growable set of node ids stored as bits.

/// A set of small integers, one bit each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BitSet {
    words: Vec<u64>,
}

impl BitSet {
    /// Adds `i`.
    pub fn insert(&mut self, i: u32) {
        let w = (i / 64) as usize;
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        self.words[w] |= 1u64 << (i % 64);
    }

    /// Removes `i`.
    pub fn remove(&mut self, i: u32) {
        if let Some(word) = self.words.get_mut((i / 64) as usize) {
            *word &= !(1u64 << (i % 64));
        }
    }

    /// Sets `i` present or absent.
    pub fn set(&mut self, i: u32, present: bool) {
        if present { self.insert(i) } else { self.remove(i) }
    }

    /// Whether `i` is present.
    pub fn contains(&self, i: u32) -> bool {
        self.words.get((i / 64) as usize).is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }

    /// The word holding bits `64*w .. 64*w+63` (0 past the end).
    pub fn word(&self, w: usize) -> u64 {
        self.words.get(w).copied().unwrap_or(0)
    }

    /// Number of words in use.
    pub fn word_len(&self) -> usize {
        self.words.len()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserted_members_are_found_and_removed_ones_are_not() {
        let mut s = BitSet::default();
        for i in [0, 63, 64, 1000] {
            s.insert(i);
        }
        s.remove(63);
        assert!(s.contains(0) && s.contains(64) && s.contains(1000));
        assert!(!s.contains(63) && !s.contains(5) && !s.contains(99_999));
        assert_eq!(s.len(), 3);
    }
}
