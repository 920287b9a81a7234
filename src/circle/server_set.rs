//! The set of servers holding a node: a bit set (bit i = server i, in serverlist order) that
//! lives inline in 8 bytes while every member is below 64, and spills to a boxed slice of words
//! once a server beyond that joins.
//!
//! Owns: nothing but the bits. Invariants:
//! - iteration yields ascending server indexes, which is priority order;
//! - `size_of::<ServerSet>()` is 16 bytes (the inline word shares the box's niche), so a node
//!   of a mount with up to 64 servers pays no allocation for it; a node with a server above 63
//!   pays one allocation of `ceil((max + 1) / 64)` words (128 bytes at 1,000 servers);
//! - there is no limit on server indexes beyond memory: a set with server n costs n / 8 bytes.

/// Bits per word.
const W: usize = 64;

#[derive(Clone, Debug)]
pub enum ServerSet {
    Inline(u64),
    Heap(Box<[u64]>),
}

impl Default for ServerSet {
    fn default() -> Self {
        ServerSet::Inline(0)
    }
}

impl ServerSet {
    fn words(&self) -> &[u64] {
        match self {
            ServerSet::Inline(w) => std::slice::from_ref(w),
            ServerSet::Heap(ws) => ws,
        }
    }

    pub fn from_list(list: &[usize]) -> Self {
        let mut s = ServerSet::default();
        for &i in list {
            s.insert(i);
        }
        s
    }

    /// Servers `0..n`.
    pub fn all(n: usize) -> Self {
        let mut words = vec![u64::MAX; n / W];
        if !n.is_multiple_of(W) {
            words.push((1u64 << (n % W)) - 1);
        }
        Self::from_words(words)
    }

    fn from_words(mut words: Vec<u64>) -> Self {
        while words.len() > 1 && words.last() == Some(&0) {
            words.pop();
        }
        match words.len() {
            0 => ServerSet::Inline(0),
            1 => ServerSet::Inline(words[0]),
            _ => ServerSet::Heap(words.into_boxed_slice()),
        }
    }

    pub fn insert(&mut self, s: usize) {
        let (word, bit) = (s / W, 1u64 << (s % W));
        match self {
            ServerSet::Inline(w) if word == 0 => *w |= bit,
            ServerSet::Heap(ws) if word < ws.len() => ws[word] |= bit,
            _ => {
                let mut words = self.words().to_vec();
                words.resize(word + 1, 0);
                words[word] |= bit;
                *self = ServerSet::Heap(words.into_boxed_slice());
            }
        }
    }

    pub fn contains(&self, s: usize) -> bool {
        self.words()
            .get(s / W)
            .is_some_and(|w| w & (1 << (s % W)) != 0)
    }

    /// Members in ascending order (priority order).
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words().iter().enumerate().flat_map(|(i, &w)| {
            let mut rest = w;
            std::iter::from_fn(move || {
                (rest != 0).then(|| {
                    let b = rest.trailing_zeros() as usize;
                    rest &= rest - 1;
                    i * W + b
                })
            })
        })
    }

    pub fn first(&self) -> Option<usize> {
        self.iter().next()
    }

    pub fn len(&self) -> usize {
        self.words().iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.words().iter().all(|&w| w == 0)
    }

    /// `self ∪ (other ∩ mask)`.
    pub fn union_masked(&self, other: &ServerSet, mask: &ServerSet) -> ServerSet {
        let (a, b, m) = (self.words(), other.words(), mask.words());
        let n = a.len().max(b.len().min(m.len()));
        let words = (0..n)
            .map(|i| {
                let get = |ws: &[u64]| ws.get(i).copied().unwrap_or(0);
                get(a) | (get(b) & get(m))
            })
            .collect();
        Self::from_words(words)
    }
}

impl PartialEq for ServerSet {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.words(), other.words());
        (0..a.len().max(b.len()))
            .all(|i| a.get(i).copied().unwrap_or(0) == b.get(i).copied().unwrap_or(0))
    }
}

impl Eq for ServerSet {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_sets_stay_inline_and_16_bytes() {
        assert_eq!(std::mem::size_of::<ServerSet>(), 16);
        let s = ServerSet::from_list(&[0, 5, 63]);
        assert!(matches!(s, ServerSet::Inline(_)));
        assert_eq!(s.iter().collect::<Vec<_>>(), [0, 5, 63]);
        assert_eq!(s.first(), Some(0));
        assert_eq!(s.len(), 3);
        assert!(ServerSet::all(64) == ServerSet::Inline(u64::MAX));
        assert!(matches!(ServerSet::all(64), ServerSet::Inline(_)));
    }

    #[test]
    fn large_indexes_spill_to_the_heap_in_priority_order() {
        let mut s = ServerSet::from_list(&[999, 3, 64, 200]);
        assert!(matches!(s, ServerSet::Heap(_)));
        assert_eq!(s.iter().collect::<Vec<_>>(), [3, 64, 200, 999]);
        assert!(s.contains(999) && s.contains(64) && !s.contains(65) && !s.contains(5000));
        s.insert(0);
        assert_eq!(s.first(), Some(0));
        let all = ServerSet::all(1000);
        assert_eq!(all.len(), 1000);
        assert_eq!(all.iter().last(), Some(999));
        assert_eq!(ServerSet::all(0).len(), 0);
        assert!(ServerSet::all(0).is_empty());
        assert_eq!(ServerSet::all(65).iter().collect::<Vec<_>>().len(), 65);
    }

    #[test]
    fn equality_ignores_representation_and_union_masks() {
        let a = ServerSet::from_list(&[1, 70]);
        let b = ServerSet::from_list(&[70, 1]);
        assert_eq!(a, b);
        let inline = ServerSet::from_list(&[1]);
        let spilled = ServerSet::Heap(vec![2, 0, 0].into_boxed_slice());
        assert_eq!(inline, spilled);
        // Listed now: {1}; failed this time: {70, 130}; held before: {1, 70, 300}.
        let now = ServerSet::from_list(&[1]);
        let before = ServerSet::from_list(&[1, 70, 300]);
        let failed = ServerSet::from_list(&[70, 130]);
        let kept = now.union_masked(&before, &failed);
        assert_eq!(kept.iter().collect::<Vec<_>>(), [1, 70]);
    }
}
