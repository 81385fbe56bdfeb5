//! The bins: a dense array of weights over a bounded range of keys, collapsing the lowest keys.

/// Most bins a sketch keeps: at 1 % relative accuracy, 2048 bins cover a ratio of about 6e17
/// between the smallest and the largest value (0.1 ns to two years, in milliseconds). Keys more
/// than `MAX_BINS - 1` below the highest key are folded into the lowest kept bin (DataDog's
/// "collapsing lowest" store), so the tail quantiles stay exact and the size stays bounded.
pub const MAX_BINS: usize = 2048;

/// `MAX_BINS - 1` as a key distance.
const MAX_SPAN: i64 = MAX_BINS as i64 - 1;

/// Weights of the non-zero keys, densely from the lowest to the highest.
///
/// Invariants: `bins.len() <= MAX_BINS`; when not empty, the first and the last bin are
/// positive, so two stores with the same weights per key are equal (`PartialEq`). Every key `k`
/// ever added is stored at `max(k, highest - (MAX_BINS - 1))`, whatever the order of additions
/// and merges — which keeps merging associative and commutative up to floating-point rounding.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Store {
    /// Key of `bins[0]`.
    offset: i32,
    bins: Vec<f64>,
}

impl Store {
    pub(crate) fn is_empty(&self) -> bool {
        self.bins.is_empty()
    }

    /// Key of the lowest bin.
    pub(crate) fn offset(&self) -> i32 {
        self.offset
    }

    /// The weights from [`Store::offset`] up, contiguously (zeros inside, never at the ends).
    pub(crate) fn bins(&self) -> &[f64] {
        &self.bins
    }

    /// Lowest and highest key, when not empty.
    pub(crate) fn key_range(&self) -> Option<(i32, i32)> {
        let len = self.bins.len();
        (len > 0).then(|| (self.offset, self.key_at(len - 1)))
    }

    /// The non-zero bins as (key, weight), from the lowest key up.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (i32, f64)> + '_ {
        self.bins.iter().enumerate().filter(|(_, w)| **w != 0.0).map(|(i, w)| (self.key_at(i), *w))
    }

    fn key_at(&self, index: usize) -> i32 {
        // Cannot overflow: the store spans at most MAX_BINS keys starting at `offset`, all i32.
        self.offset + index as i32
    }

    /// Adds `weight` (positive, finite) to bin `key`.
    pub(crate) fn add(&mut self, key: i32, weight: f64) {
        let Some((low, high)) = self.key_range() else {
            self.offset = key;
            self.bins.push(weight);
            return;
        };
        let high = high.max(key);
        let floor = floor_of(high);
        let key = key.max(floor);
        self.relayout(low.min(key).max(floor), high);
        let index = (key - self.offset) as usize;
        self.bins[index] += weight;
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
        self.relayout(low.min(other_low).max(floor), high);
        for (key, weight) in other.iter() {
            let index = (key.max(floor) - self.offset) as usize;
            self.bins[index] += weight;
        }
    }

    /// A store from (key, weight) pairs sorted by key, weights finite and non-negative. Equal keys
    /// are added up; zero weights are skipped.
    pub(crate) fn from_sorted(entries: &[(i32, f64)]) -> Store {
        let mut nonzero = entries.iter().filter(|(_, w)| *w > 0.0);
        let (Some(&(first, _)), Some(&(last, _))) = (nonzero.next(), entries.iter().rev().find(|(_, w)| *w > 0.0))
        else {
            return Store::default();
        };
        let floor = floor_of(last);
        let offset = first.max(floor);
        let mut bins = vec![0.0; (last - offset) as usize + 1];
        for &(key, weight) in entries.iter().filter(|(_, w)| *w > 0.0) {
            bins[(key.max(floor) - offset) as usize] += weight;
        }
        Store { offset, bins }
    }

    /// Total weight of the bins.
    pub(crate) fn total(&self) -> f64 {
        self.bins.iter().sum()
    }

    /// The key of the first bin whose cumulative weight exceeds `rank` (the last bin when rounding
    /// leaves none), or `None` when empty.
    pub(crate) fn key_at_rank(&self, rank: f64) -> Option<i32> {
        let mut cumulative = 0.0;
        for (index, weight) in self.bins.iter().enumerate() {
            cumulative += weight;
            if cumulative > rank {
                return Some(self.key_at(index));
            }
        }
        self.key_range().map(|(_, high)| high)
    }

    /// Makes the bins span exactly `new_low..=new_high`, where `new_high` is at least the current
    /// highest key, `new_high - new_low < MAX_BINS`, and `new_low` is at most the current lowest key
    /// unless the keys below `new_low` are to be collapsed into it. The store is not empty.
    fn relayout(&mut self, new_low: i32, new_high: i32) {
        if new_low > self.offset {
            // i64: the old lowest key may be anywhere below, e.g. i32::MIN.
            let cut = (i64::from(new_low) - i64::from(self.offset)) as usize;
            if cut >= self.bins.len() {
                let total = self.total();
                self.bins.clear();
                self.bins.push(total);
            } else {
                let collapsed: f64 = self.bins.drain(..cut).sum();
                self.bins[0] += collapsed;
            }
            self.offset = new_low;
        } else if new_low < self.offset {
            // At most MAX_BINS: `new_low` is at least `new_high - MAX_SPAN`, the old lowest at most
            // `new_high`.
            let extra = (self.offset - new_low) as usize;
            self.bins.splice(0..0, std::iter::repeat_n(0.0, extra));
            self.offset = new_low;
        }
        let len = (new_high - self.offset) as usize + 1;
        if len > self.bins.len() {
            self.bins.resize(len, 0.0);
        }
    }
}

/// The lowest key kept when the highest is `high`.
fn floor_of(high: i32) -> i32 {
    // In range: `high - MAX_SPAN` is at least i32::MIN - 2047; clamp that edge.
    (i64::from(high) - MAX_SPAN).max(i64::from(i32::MIN)) as i32
}

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
        assert_eq!(s.offset(), 3);
        assert_eq!(s.bins(), &[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 1.0]);
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
        assert_eq!(s.bins().len(), MAX_BINS);
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
}
