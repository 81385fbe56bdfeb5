//! The bins: weights over a bounded range of keys, collapsing the lowest keys — sparse while
//! they are few and spread out, dense once that is no larger.

/// Most bins a sketch keeps: at 1 % relative accuracy, 2048 bins cover a ratio of about 6e17
/// between the smallest and the largest value (0.1 ns to two years, in milliseconds). Keys more
/// than `MAX_BINS - 1` below the highest key are folded into the lowest kept bin (DataDog's
/// "collapsing lowest" store), so the tail quantiles stay exact and the size stays bounded.
pub const MAX_BINS: usize = 2048;

/// `MAX_BINS - 1` as a key distance.
const MAX_SPAN: i64 = MAX_BINS as i64 - 1;

/// Bins a store holds before it may turn dense: a few neighbouring bins say nothing about where
/// the next values fall, and a dense store that then grows to a far key is mostly zeros for good.
const DENSE_AFTER: usize = 16;

/// The weights of the non-zero keys.
///
/// Two forms with the same meaning. A window of a handful of latencies spread over a 16× range
/// holds a few bins over about 140 keys: as an array of every key from the lowest to the
/// highest that is over a kilobyte, mostly zeros, so a store starts **sparse** — the non-zero
/// bins as sorted (key, weight) pairs, 16 bytes each — and turns **dense** — one weight per key
/// of the range, 8 bytes each — once it holds a few bins and the range is at most twice as long
/// as the bins are many (the dense form is then no larger, and faster to add to). It never turns
/// back.
///
/// Invariants: the keys span at most `MAX_BINS`; sparse pairs are strictly increasing in key,
/// with positive weights; dense bins are not empty, and the first and the last are positive.
/// Every key `k` ever added is stored at `max(k, highest - (MAX_BINS - 1))`, whatever the order
/// of additions and merges — which keeps merging associative and commutative up to
/// floating-point rounding. Both forms add the same weights in the same order, so the form never
/// changes a weight, and `PartialEq` compares the weight of every key, whatever the form.
#[derive(Clone, Debug)]
pub(crate) enum Store {
    /// Non-zero bins as (key, weight), by increasing key.
    Sparse(Vec<(i32, f64)>),
    /// Every key from `offset` up, contiguously (zeros inside, never at the ends).
    Dense {
        /// Key of `bins[0]`.
        offset: i32,
        bins: Vec<f64>,
    },
}

impl Default for Store {
    fn default() -> Self {
        Store::Sparse(Vec::new())
    }
}

impl PartialEq for Store {
    fn eq(&self, other: &Store) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Store {
    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Store::Sparse(entries) => entries.is_empty(),
            Store::Dense { bins, .. } => bins.is_empty(),
        }
    }

    /// Lowest and highest key, when not empty.
    pub(crate) fn key_range(&self) -> Option<(i32, i32)> {
        match self {
            Store::Sparse(entries) => Some((entries.first()?.0, entries.last()?.0)),
            Store::Dense { offset, bins } => {
                // Cannot overflow: the store spans at most MAX_BINS keys starting at `offset`.
                (!bins.is_empty()).then(|| (*offset, *offset + (bins.len() - 1) as i32))
            }
        }
    }

    /// Keys from the lowest to the highest (0 when empty): the length of the contiguous form.
    pub(crate) fn span(&self) -> usize {
        self.key_range().map_or(0, |(low, high)| (i64::from(high) - i64::from(low)) as usize + 1)
    }

    /// The non-zero bins as (key, weight), from the lowest key up.
    pub(crate) fn iter(&self) -> Iter<'_> {
        match self {
            Store::Sparse(entries) => Iter::Sparse(entries.iter()),
            Store::Dense { offset, bins } => Iter::Dense { offset: *offset, bins: bins.iter().enumerate() },
        }
    }

    /// The weight of every key from the lowest to the highest, zeros included (the protobuf's
    /// `contiguousBinCounts`).
    pub(crate) fn contiguous(&self) -> Contiguous<'_> {
        let next = self.key_range().map(|(low, _)| low);
        Contiguous { bins: self.iter().peekable(), next, left: self.span() }
    }

    /// Adds `weight` (positive, finite) to bin `key`.
    pub(crate) fn add(&mut self, key: i32, weight: f64) {
        let Some((low, high)) = self.key_range() else {
            *self = Store::Sparse(vec![(key, weight)]);
            return;
        };
        let high = high.max(key);
        let floor = floor_of(high);
        let key = key.max(floor);
        match self {
            Store::Sparse(entries) => {
                collapse_below(entries, floor);
                match entries.binary_search_by_key(&key, |(k, _)| *k) {
                    Ok(i) => entries[i].1 += weight,
                    Err(i) => entries.insert(i, (key, weight)),
                }
                self.densify_if_smaller();
            }
            Store::Dense { offset, bins } => {
                relayout(offset, bins, low.min(key).max(floor), high);
                bins[(key - *offset) as usize] += weight;
            }
        }
    }

    /// Adds every bin of `other`.
    pub(crate) fn merge(&mut self, other: &Store) {
        let Some((other_low, other_high)) = other.key_range() else { return };
        let Some((low, high)) = self.key_range() else {
            self.clone_from(other);
            return;
        };
        let high = high.max(other_high);
        let floor = floor_of(high);
        if matches!(other, Store::Dense { .. }) {
            self.make_dense();
        }
        match self {
            Store::Sparse(entries) => {
                collapse_below(entries, floor);
                let mut merged = Vec::with_capacity(entries.len() + other.span().min(MAX_BINS));
                let mut mine = entries.drain(..).peekable();
                for (key, weight) in other.iter() {
                    let key = key.max(floor);
                    while let Some(entry) = mine.next_if(|(k, _)| *k < key) {
                        merged.push(entry);
                    }
                    match merged.last_mut() {
                        // Several of `other`'s keys collapsed into the floor.
                        Some((k, w)) if *k == key => *w += weight,
                        _ => match mine.next_if(|(k, _)| *k == key) {
                            Some((k, w)) => merged.push((k, w + weight)),
                            None => merged.push((key, weight)),
                        },
                    }
                }
                merged.extend(mine);
                *self = Store::Sparse(merged);
                self.densify_if_smaller();
            }
            Store::Dense { offset, bins } => {
                relayout(offset, bins, low.min(other_low).max(floor), high);
                for (key, weight) in other.iter() {
                    let index = (key.max(floor) - *offset) as usize;
                    bins[index] += weight;
                }
            }
        }
    }

    /// A store from (key, weight) pairs sorted by key, weights finite and non-negative. Equal keys
    /// are added up; zero weights are skipped.
    pub(crate) fn from_sorted(entries: &[(i32, f64)]) -> Store {
        let Some(&(last, _)) = entries.iter().rev().find(|(_, w)| *w > 0.0) else {
            return Store::default();
        };
        let floor = floor_of(last);
        let mut out: Vec<(i32, f64)> = Vec::new();
        for &(key, weight) in entries.iter().filter(|(_, w)| *w > 0.0) {
            let key = key.max(floor);
            match out.last_mut() {
                Some((k, w)) if *k == key => *w += weight,
                _ => out.push((key, weight)),
            }
        }
        let mut store = Store::Sparse(out);
        store.densify_if_smaller();
        if let Store::Sparse(entries) = &mut store {
            entries.shrink_to_fit();
        }
        store
    }

    /// Total weight of the bins.
    pub(crate) fn total(&self) -> f64 {
        self.iter().map(|(_, w)| w).sum()
    }

    /// The key of the first bin whose cumulative weight exceeds `rank` (the last bin when rounding
    /// leaves none), or `None` when empty.
    pub(crate) fn key_at_rank(&self, rank: f64) -> Option<i32> {
        let mut cumulative = 0.0;
        for (key, weight) in self.iter() {
            cumulative += weight;
            if cumulative > rank {
                return Some(key);
            }
        }
        self.key_range().map(|(_, high)| high)
    }

    /// Turns a sparse store dense once it holds [`DENSE_AFTER`] bins or more and its range is at
    /// most twice its bins (16 bytes a pair against 8 a key).
    fn densify_if_smaller(&mut self) {
        if let Store::Sparse(entries) = self
            && entries.len() >= DENSE_AFTER
            && sparse_span(entries) <= 2 * entries.len()
        {
            self.make_dense();
        }
    }

    fn make_dense(&mut self) {
        let Store::Sparse(entries) = self else { return };
        let Some(&(offset, _)) = entries.first() else { return };
        let mut bins = vec![0.0; sparse_span(entries)];
        for &(key, weight) in entries.iter() {
            bins[(key - offset) as usize] = weight;
        }
        *self = Store::Dense { offset, bins };
    }
}

/// Keys from the lowest to the highest of sorted, non-empty sparse bins.
fn sparse_span(entries: &[(i32, f64)]) -> usize {
    match (entries.first(), entries.last()) {
        (Some((low, _)), Some((high, _))) => (i64::from(*high) - i64::from(*low)) as usize + 1,
        _ => 0,
    }
}

/// Folds the sparse bins below `floor` into the bin at `floor`, adding them up in key order.
fn collapse_below(entries: &mut Vec<(i32, f64)>, floor: i32) {
    let cut = entries.partition_point(|(k, _)| *k < floor);
    if cut == 0 {
        return;
    }
    let collapsed: f64 = entries.drain(..cut).map(|(_, w)| w).sum();
    match entries.first_mut() {
        Some((k, w)) if *k == floor => *w += collapsed,
        _ => entries.insert(0, (floor, collapsed)),
    }
}

/// Makes dense bins span exactly `new_low..=new_high`, where `new_high` is at least the current
/// highest key, `new_high - new_low < MAX_BINS`, and `new_low` is at most the current lowest key
/// unless the keys below `new_low` are to be collapsed into it. The bins are not empty.
fn relayout(offset: &mut i32, bins: &mut Vec<f64>, new_low: i32, new_high: i32) {
    if new_low > *offset {
        // i64: the old lowest key may be anywhere below, e.g. i32::MIN.
        let cut = (i64::from(new_low) - i64::from(*offset)) as usize;
        if cut >= bins.len() {
            let total: f64 = bins.iter().sum();
            bins.clear();
            bins.push(total);
        } else {
            let collapsed: f64 = bins.drain(..cut).sum();
            bins[0] += collapsed;
        }
        *offset = new_low;
    } else if new_low < *offset {
        // At most MAX_BINS: `new_low` is at least `new_high - MAX_SPAN`, the old lowest at most
        // `new_high`.
        let extra = (*offset - new_low) as usize;
        bins.splice(0..0, std::iter::repeat_n(0.0, extra));
        *offset = new_low;
    }
    let len = (new_high - *offset) as usize + 1;
    if len > bins.len() {
        bins.resize(len, 0.0);
    }
}

/// The lowest key kept when the highest is `high`.
fn floor_of(high: i32) -> i32 {
    // In range: `high - MAX_SPAN` is at least i32::MIN - 2047; clamp that edge.
    (i64::from(high) - MAX_SPAN).max(i64::from(i32::MIN)) as i32
}

/// [`Store::iter`].
pub(crate) enum Iter<'a> {
    Sparse(std::slice::Iter<'a, (i32, f64)>),
    Dense { offset: i32, bins: std::iter::Enumerate<std::slice::Iter<'a, f64>> },
}

impl Iterator for Iter<'_> {
    type Item = (i32, f64);

    fn next(&mut self) -> Option<(i32, f64)> {
        match self {
            Iter::Sparse(entries) => entries.next().copied(),
            Iter::Dense { offset, bins } => bins.find(|(_, w)| **w != 0.0).map(|(i, w)| (*offset + i as i32, *w)),
        }
    }
}

/// [`Store::contiguous`].
pub(crate) struct Contiguous<'a> {
    bins: std::iter::Peekable<Iter<'a>>,
    /// The key of the next weight.
    next: Option<i32>,
    left: usize,
}

impl Iterator for Contiguous<'_> {
    type Item = f64;

    fn next(&mut self) -> Option<f64> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let key = self.next?;
        self.next = key.checked_add(1);
        Some(self.bins.next_if(|(k, _)| *k == key).map_or(0.0, |(_, w)| w))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Contiguous<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(keys: &[i32]) -> Store {
        let mut s = Store::default();
        for &k in keys {
            s.add(k, 1.0);
        }
        s
    }

    #[test]
    fn grows_both_ways_and_keeps_positive_ends() {
        let s = store(&[5, 3, 9, 5]);
        assert_eq!(s.contiguous().collect::<Vec<_>>(), [1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 1.0]);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(3, 1.0), (5, 2.0), (9, 1.0)]);
        assert_eq!(s.key_range(), Some((3, 9)));
        assert_eq!(s.key_at_rank(0.0), Some(3));
        assert_eq!(s.key_at_rank(1.0), Some(5));
        assert_eq!(s.key_at_rank(2.999), Some(5));
        assert_eq!(s.key_at_rank(3.0), Some(9));
        assert_eq!(s.key_at_rank(10.0), Some(9));
    }

    #[test]
    fn collapses_the_lowest_keys() {
        let span = MAX_BINS as i32;
        // A new maximum folds what falls out of range into the lowest kept bin.
        let s = store(&[0, 1, 2, span + 1]);
        assert_eq!(s.key_range(), Some((2, span + 1)));
        assert_eq!(s.span(), MAX_BINS);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(2, 3.0), (span + 1, 1.0)]);
        // A key far below the range lands in the lowest kept bin.
        let s = store(&[10 * span, -10 * span, 10 * span - 5]);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(9 * span + 1, 1.0), (10 * span - 5, 1.0), (10 * span, 1.0)]);
        // A maximum so high that everything collapses into one bin.
        let s = store(&[0, 1, 5 * span]);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(4 * span + 1, 2.0), (5 * span, 1.0)]);
        // Extreme keys never overflow.
        let s = store(&[i32::MIN, i32::MAX, i32::MIN]);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(i32::MAX - (span - 1), 2.0), (i32::MAX, 1.0)]);
        let s = store(&[i32::MIN, i32::MIN + 1]);
        assert_eq!(s.key_range(), Some((i32::MIN, i32::MIN + 1)));
    }

    #[test]
    fn merge_matches_adding_in_any_order() {
        let span = MAX_BINS as i32;
        let a = [0, 7, -3, span, 2 * span + 9];
        let b = [1, 1, -span, 3 * span, 3 * span - 1];
        let mut all = a.to_vec();
        all.extend(b);
        let one = store(&all);
        let mut merged = store(&a);
        merged.merge(&store(&b));
        assert_eq!(merged, one);
        let mut reversed = store(&b);
        reversed.merge(&store(&a));
        assert_eq!(reversed, one);
        let mut sorted = all.clone();
        sorted.sort();
        let entries: Vec<(i32, f64)> = sorted.iter().map(|&k| (k, 1.0)).collect();
        assert_eq!(Store::from_sorted(&entries), one);
        let mut empty = Store::default();
        empty.merge(&one);
        assert_eq!(empty, one);
        let mut same = one.clone();
        same.merge(&Store::default());
        assert_eq!(same, one);
    }

    #[test]
    fn from_sorted_skips_zero_weights() {
        assert_eq!(Store::from_sorted(&[(1, 0.0), (2, 0.0)]), Store::default());
        let s = Store::from_sorted(&[(-4, 0.0), (1, 2.0), (1, 0.5), (3, 0.0), (4, 1.0), (9, 0.0)]);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(1, 2.5), (4, 1.0)]);
        assert_eq!(s.key_range(), Some((1, 4)));
    }

    /// Every store in both forms, from the same additions.
    fn both_forms(keys: &[(i32, f64)]) -> (Store, Store) {
        let mut sparse = Store::default();
        let mut dense = Store::default();
        for &(k, w) in keys {
            sparse.add(k, w);
            dense.add(k, w);
            dense.make_dense();
        }
        (sparse, dense)
    }

    #[test]
    fn sparse_until_the_dense_form_is_no_larger() {
        // Four bins over 140 keys (a handful of latencies spread 16×): sparse.
        let s = store(&[100, 240, 170, 130]);
        assert!(matches!(&s, Store::Sparse(e) if e.len() == 4));
        assert_eq!(s.span(), 141);
        // Sixteen bins or more over at most twice as many keys: dense from then on.
        let mut s = store(&(0..15).map(|k| 2 * k).collect::<Vec<_>>());
        assert!(matches!(s, Store::Sparse(_)), "15 bins: still sparse");
        s.add(1, 1.0);
        assert!(matches!(s, Store::Dense { .. }), "16 bins over 29 keys");
        s.add(1000, 1.0);
        assert!(matches!(s, Store::Dense { .. }), "a store never turns back");
        assert_eq!(s.iter().count(), 17);
        assert_eq!(s.key_range(), Some((0, 1000)));
        let s = store(&(0..100).map(|k| 3 * k).collect::<Vec<_>>());
        assert!(matches!(s, Store::Sparse(_)), "100 bins over 298 keys: the sparse form is smaller");
        // Decoded bins take the smaller form too.
        let decoded = Store::from_sorted(&[(10, 1.0), (500, 2.0)]);
        assert!(matches!(decoded, Store::Sparse(_)));
        let neighbours: Vec<(i32, f64)> = (10..30).map(|k| (k, 1.0)).collect();
        assert!(matches!(Store::from_sorted(&neighbours), Store::Dense { .. }));
    }

    #[test]
    fn the_form_never_changes_a_weight() {
        let span = MAX_BINS as i32;
        let adds = [(7, 0.1), (-3, 0.7), (7, 0.2), (span, 1.3), (2 * span + 9, 0.4), (-span, 0.05), (2 * span, 3.0)];
        let (sparse, dense) = both_forms(&adds);
        assert!(matches!(sparse, Store::Sparse(_)) && matches!(dense, Store::Dense { .. }));
        let bits = |s: &Store| s.iter().map(|(k, w)| (k, w.to_bits())).collect::<Vec<_>>();
        assert_eq!(bits(&sparse), bits(&dense));
        assert_eq!(
            sparse.contiguous().map(f64::to_bits).collect::<Vec<_>>(),
            dense.contiguous().map(f64::to_bits).collect::<Vec<_>>()
        );
        assert_eq!(sparse.total().to_bits(), dense.total().to_bits());
        // Merging any form into any form gives the same weights, to the bit.
        let (other_sparse, other_dense) = both_forms(&[(span + 5, 0.3), (1, 0.9), (3 * span, 0.6)]);
        let mut results = Vec::new();
        for mine in [&sparse, &dense] {
            for theirs in [&other_sparse, &other_dense] {
                let mut merged = mine.clone();
                merged.merge(theirs);
                results.push(bits(&merged));
            }
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
    }
}
