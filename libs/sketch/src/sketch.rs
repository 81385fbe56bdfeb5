//! [`Sketch`]: adding weighted values, merging, and reading quantiles and summary statistics.

use crate::SketchError;
use crate::mapping::Mapping;
use crate::store::Store;

/// A mergeable, weighted DDSketch of non-negative values (latencies in milliseconds).
///
/// Values are counted in logarithmic bins (see the crate documentation); quantiles are within the
/// relative accuracy of the exact ones. `min`, `max` and `sum` are tracked exactly while values
/// are added and merged, and estimated from the bins after [`Sketch::from_bytes`] (the protobuf
/// encoding does not carry them).
///
/// `PartialEq` compares everything: the mapping, the weight of every bin and of the zero bin, the
/// tracked statistics and the [`ignored`](Sketch::ignored) counter.
#[derive(Clone, Debug, PartialEq)]
pub struct Sketch {
    mapping: Mapping,
    store: Store,
    /// Weight of the values at or below the smallest indexable value (zero, mostly).
    zero_count: f64,
    /// Total weight: the bins plus the zero bin.
    count: f64,
    sum: f64,
    /// `+inf` while empty.
    min: f64,
    /// `-inf` while empty.
    max: f64,
    ignored: u64,
}

impl Default for Sketch {
    fn default() -> Self {
        Sketch::new()
    }
}

impl Sketch {
    /// An empty sketch with [`RELATIVE_ACCURACY`](crate::RELATIVE_ACCURACY) (1 %): gamma
    /// `(1 + 0.01) / (1 - 0.01)`, index offset 0.
    pub fn new() -> Self {
        Sketch::with_mapping(Mapping::default())
    }

    fn with_mapping(mapping: Mapping) -> Self {
        Sketch {
            mapping,
            store: Store::default(),
            zero_count: 0.0,
            count: 0.0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            ignored: 0,
        }
    }

    /// A sketch holding decoded bins; `min`, `max` and `sum` are estimated from them.
    pub(crate) fn from_bins(mapping: Mapping, store: Store, zero_count: f64) -> Self {
        let mut sketch = Sketch::with_mapping(mapping);
        let mut sum = 0.0;
        for (key, weight) in store.iter() {
            sum += mapping.value(key) * weight;
        }
        sketch.count = zero_count + store.total();
        sketch.sum = sum;
        if zero_count > 0.0 {
            sketch.min = 0.0;
            sketch.max = 0.0;
        }
        if let Some((low, high)) = store.key_range() {
            sketch.min = sketch.min.min(mapping.value(low));
            sketch.max = mapping.value(high);
        }
        sketch.store = store;
        sketch.zero_count = zero_count;
        sketch
    }

    /// Adds one value, i.e. [`add_weighted`](Sketch::add_weighted) with weight 1.
    pub fn add(&mut self, value: f64) {
        self.add_weighted(value, 1.0);
    }

    /// Adds a value with a weight (an event kept with probability `p` weighs `1/p`).
    ///
    /// The value must be finite and non-negative, at most `f64::MAX / gamma` (~1.76e308), and the
    /// weight finite and positive; anything else — which the event schema rejects upstream — is
    /// not added but counted in [`ignored`](Sketch::ignored), as is an addition that would make
    /// the total weight or the sum infinite. Values at or below ~2.3e-308 (zero included) count in
    /// the zero bin.
    pub fn add_weighted(&mut self, value: f64, weight: f64) {
        let acceptable = value >= 0.0 && !self.mapping.is_too_large(value) && weight > 0.0 && weight.is_finite();
        // `-0.0 >= 0.0`: normalise so that `min` never reports a negative zero.
        let value = value + 0.0;
        let count = self.count + weight;
        let sum = self.sum + value * weight;
        if !acceptable || !count.is_finite() || !sum.is_finite() {
            self.ignored += 1;
            return;
        }
        if self.mapping.is_zero(value) {
            self.zero_count += weight;
        } else {
            self.store.add(self.mapping.key(value), weight);
        }
        self.count = count;
        self.sum = sum;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Adds every value of `other` to this sketch: afterwards its bins are those of a single
    /// sketch that received both sketches' values (up to the rounding of adding weights in another
    /// order), its `min`/`max` the extremes of both, its `sum` and `ignored` the totals.
    ///
    /// Fails, leaving this sketch unchanged, when the two sketches map values to bins differently
    /// ([`SketchError::MappingMismatch`]; all sketches from [`Sketch::new`] share one mapping) or
    /// when the total weight or sum would become infinite ([`SketchError::Overflow`]).
    pub fn merge(&mut self, other: &Sketch) -> Result<(), SketchError> {
        if !self.mapping.same_as(&other.mapping) {
            return Err(SketchError::MappingMismatch {
                left_gamma: self.mapping.gamma(),
                left_offset: self.mapping.offset(),
                right_gamma: other.mapping.gamma(),
                right_offset: other.mapping.offset(),
            });
        }
        let count = self.count + other.count;
        let sum = self.sum + other.sum;
        if !count.is_finite() || !sum.is_finite() {
            return Err(SketchError::Overflow);
        }
        self.store.merge(&other.store);
        self.zero_count += other.zero_count;
        self.count = count;
        self.sum = sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.ignored = self.ignored.saturating_add(other.ignored);
        Ok(())
    }

    /// Total weight of the values added (the number of values when every weight is 1).
    pub fn count(&self) -> f64 {
        self.count
    }

    /// Whether no value has been added (or decoded).
    pub fn is_empty(&self) -> bool {
        self.count <= 0.0
    }

    /// How many additions were refused (invalid value or weight, or overflow); not encoded, so 0
    /// after [`from_bytes`](Sketch::from_bytes), and added up by [`merge`](Sketch::merge).
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// The estimated lower `q`-quantile, `None` when empty or when `q` is not in `0..=1`.
    ///
    /// The lower quantile of weighted values is the smallest value `x` whose cumulative weight
    /// (the total weight of the values `<= x`) exceeds `q * (count - 1)` — with weights of 1, the
    /// value at 0-based position `floor(q * (n - 1))` in sorted order, as in DataDog's libraries
    /// and numpy's `method="lower"`. The estimate is within the relative accuracy (1 %) of it,
    /// unless the bin it falls in was collapsed (see [`MAX_BINS`](crate::MAX_BINS)). It is
    /// clamped to [`min`](Sketch::min)..=[`max`](Sketch::max), so no quantile lies outside the
    /// values added (a p99 above the reported maximum would puzzle a dashboard reader). Values in
    /// the zero bin are reported as 0.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if !(0.0..=1.0).contains(&q) || self.is_empty() {
            return None;
        }
        let rank = q * (self.count - 1.0);
        let estimate = if rank < self.zero_count {
            0.0
        } else {
            match self.store.key_at_rank(rank - self.zero_count) {
                Some(key) => self.mapping.value(key),
                // Only the zero bin has weight, and rounding put the rank above it.
                None => 0.0,
            }
        };
        // `max`/`min` instead of `clamp`, which panics if its bounds were ever out of order.
        Some(estimate.max(self.min).min(self.max))
    }

    /// The smallest value added: exact while values are added and merged, estimated after
    /// [`from_bytes`](Sketch::from_bytes) (0 if the zero bin has weight, otherwise the value of
    /// the lowest bin). `None` when empty.
    pub fn min(&self) -> Option<f64> {
        (!self.is_empty()).then_some(self.min)
    }

    /// The largest value added: exact while values are added and merged, the value of the highest
    /// bin after [`from_bytes`](Sketch::from_bytes). `None` when empty.
    pub fn max(&self) -> Option<f64> {
        (!self.is_empty()).then_some(self.max)
    }

    /// The weighted sum of the values (`value * weight` added up): exact up to floating-point
    /// rounding while values are added and merged, after [`from_bytes`](Sketch::from_bytes) the
    /// sum of each bin's value times its weight (within the relative accuracy). 0 when empty.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// [`sum`](Sketch::sum) divided by [`count`](Sketch::count); `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        (!self.is_empty()).then(|| self.sum / self.count)
    }

    pub(crate) fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn zero_count(&self) -> f64 {
        self.zero_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MAX_BINS, RELATIVE_ACCURACY};
    use proptest::prelude::*;

    /// Weights whose sums are exact in floating point, so the sketch's cumulative weights and the
    /// reference's agree to the bit and pick the same rank (arbitrary weights could round a
    /// cumulative weight to either side of a rank that falls exactly on it).
    const EXACT_WEIGHTS: [f64; 6] = [1.0, 1.0, 2.0, 0.5, 4.0, 0.25];
    const QUANTILES: [f64; 7] = [0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 1.0];

    /// The exact lower quantile, as documented on [`Sketch::quantile`].
    fn exact_quantile(values: &[(f64, f64)], q: f64) -> f64 {
        let mut sorted = values.to_vec();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total: f64 = values.iter().map(|(_, w)| w).sum();
        let rank = q * (total - 1.0);
        let mut cumulative = 0.0;
        for (value, weight) in &sorted {
            cumulative += weight;
            if cumulative > rank {
                return *value;
            }
        }
        sorted.last().map(|(v, _)| *v).unwrap()
    }

    /// Relative accuracy plus the rounding of `ln` at a bin boundary (a value a hair below
    /// `gamma^k` may compute into bin `k + 1`).
    fn within_accuracy(estimate: f64, exact: f64) -> bool {
        (estimate - exact).abs() <= RELATIVE_ACCURACY * exact * (1.0 + 1e-9)
    }

    fn sketch_of(values: &[(f64, f64)]) -> Sketch {
        let mut s = Sketch::new();
        for &(v, w) in values {
            s.add_weighted(v, w);
        }
        s
    }

    fn latencies() -> impl Strategy<Value = Vec<(f64, f64)>> {
        // 0.001 ms to 1e7 ms, log-uniform, with an occasional exact zero.
        let value = prop_oneof![
            20 => (-3.0f64..7.0).prop_map(|e| 10f64.powf(e)),
            1 => Just(0.0),
        ];
        proptest::collection::vec((value, proptest::sample::select(EXACT_WEIGHTS.to_vec())), 1..5000)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn quantiles_are_within_one_percent(values in latencies()) {
            let sketch = sketch_of(&values);
            for q in QUANTILES {
                let exact = exact_quantile(&values, q);
                let estimate = sketch.quantile(q).unwrap();
                prop_assert!(within_accuracy(estimate, exact), "q={q}: exact {exact}, estimate {estimate}");
            }
            let exact_max = values.iter().map(|(v, _)| *v).fold(0.0, f64::max);
            let exact_min = values.iter().map(|(v, _)| *v).fold(f64::INFINITY, f64::min);
            prop_assert_eq!(sketch.max(), Some(exact_max));
            prop_assert_eq!(sketch.min(), Some(exact_min));
        }

        #[test]
        fn merging_equals_adding_everything_to_one(a in latencies(), b in latencies()) {
            let mut merged = sketch_of(&a);
            merged.merge(&sketch_of(&b)).unwrap();
            let all: Vec<_> = a.iter().chain(&b).copied().collect();
            let one = sketch_of(&all);
            // Exact weights make the bins equal to the bit, whatever the order of additions.
            prop_assert_eq!(merged.store(), one.store());
            prop_assert_eq!(merged.zero_count(), one.zero_count());
            prop_assert_eq!(merged.count(), one.count());
            prop_assert_eq!(merged.min(), one.min());
            prop_assert_eq!(merged.max(), one.max());
            prop_assert!((merged.sum() - one.sum()).abs() <= 1e-9 * one.sum());
        }

        #[test]
        fn merging_with_arbitrary_weights_agrees_up_to_rounding(
            a in proptest::collection::vec((0.001f64..1e7, 0.001f64..1e3), 1..500),
            b in proptest::collection::vec((0.001f64..1e7, 0.001f64..1e3), 1..500),
        ) {
            let mut merged = sketch_of(&a);
            merged.merge(&sketch_of(&b)).unwrap();
            let all: Vec<_> = a.iter().chain(&b).copied().collect();
            let one = sketch_of(&all);
            let (m, o): (Vec<_>, Vec<_>) = (merged.store().iter().collect(), one.store().iter().collect());
            prop_assert_eq!(m.len(), o.len());
            for ((mk, mw), (ok, ow)) in m.iter().zip(&o) {
                prop_assert_eq!(mk, ok);
                prop_assert!((mw - ow).abs() <= 1e-12 * ow);
            }
        }
    }

    #[test]
    fn empty_sketch() {
        let s = Sketch::new();
        assert!(s.is_empty());
        assert_eq!((s.count(), s.sum(), s.ignored()), (0.0, 0.0, 0));
        assert_eq!((s.quantile(0.5), s.min(), s.max(), s.mean()), (None, None, None, None));
        assert_eq!(s, Sketch::default());
    }

    #[test]
    fn invalid_additions_are_ignored_and_counted() {
        let mut s = Sketch::new();
        for v in [f64::NAN, -1.0, f64::INFINITY, f64::NEG_INFINITY, f64::MAX] {
            s.add(v);
        }
        for w in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            s.add_weighted(1.0, w);
        }
        assert_eq!(s.ignored(), 9);
        assert!(s.is_empty());
        // The first addition fits, the second would make the total weight infinite.
        s.add_weighted(1.0, 1e308);
        s.add_weighted(1.0, 1e308);
        assert_eq!((s.ignored(), s.count()), (10, 1e308));
        // A sum that would overflow is refused too.
        s.add_weighted(1e300, 1e10);
        assert_eq!((s.ignored(), s.count()), (11, 1e308));
    }

    #[test]
    fn statistics_are_exact_in_memory() {
        let mut s = Sketch::new();
        s.add_weighted(10.0, 3.0);
        s.add(2.5);
        s.add(-0.0);
        assert_eq!(s.count(), 5.0);
        assert_eq!(s.sum(), 32.5);
        assert_eq!(s.mean(), Some(6.5));
        assert_eq!(s.min().map(f64::to_bits), Some(0f64.to_bits()));
        assert_eq!(s.max(), Some(10.0));
        assert_eq!(s.quantile(0.0), Some(0.0));
        assert!(within_accuracy(s.quantile(0.25).unwrap(), 2.5));
        assert!(within_accuracy(s.quantile(1.0).unwrap(), 10.0));
        assert_eq!(s.quantile(1.5), None);
        assert_eq!(s.quantile(-0.1), None);
        assert_eq!(s.quantile(f64::NAN), None);
    }

    #[test]
    fn single_value_quantiles_are_exact() {
        let mut s = Sketch::new();
        s.add(42.0);
        for q in QUANTILES {
            assert_eq!(s.quantile(q), Some(42.0));
        }
    }

    #[test]
    fn fractional_total_weight_still_answers() {
        let mut s = Sketch::new();
        s.add_weighted(5.0, 0.25);
        s.add_weighted(7.0, 0.25);
        // rank = q * (0.5 - 1) is negative: the lowest value.
        assert!(within_accuracy(s.quantile(0.5).unwrap(), 5.0));
    }

    #[test]
    fn zero_bin_only() {
        let mut s = Sketch::new();
        s.add(0.0);
        s.add(1e-310);
        // The zero bin stands for 0: its values are below any relative resolution.
        assert_eq!(s.quantile(1.0), Some(0.0));
        assert_eq!(s.quantile(0.0), Some(0.0));
        assert_eq!(s.max(), Some(1e-310));
        assert!(s.store().is_empty());
    }

    #[test]
    fn huge_ranges_collapse_the_lowest_bins() {
        let mut s = Sketch::new();
        s.add(1e-300);
        s.add(1.0);
        s.add(1e300);
        assert_eq!(s.store().span(), MAX_BINS);
        // The high quantiles keep their accuracy; the collapsed low ones are overestimated.
        assert!(within_accuracy(s.quantile(1.0).unwrap(), 1e300));
        assert!(s.quantile(0.0).unwrap() > 1e280);
        assert!(s.quantile(0.5).unwrap() > 1e280);
        assert_eq!(s.min(), Some(1e-300));
    }

    #[test]
    fn merge_checks_the_mapping() {
        let mut s = Sketch::new();
        s.add(1.0);
        let other = Sketch::with_mapping(Mapping::from_proto(1.05, 0.0).unwrap());
        let before = s.clone();
        assert!(matches!(s.merge(&other), Err(SketchError::MappingMismatch { .. })));
        assert_eq!(s, before);
        let mut big = Sketch::new();
        big.add_weighted(1.0, f64::MAX);
        assert_eq!(big.clone().merge(&big), Err(SketchError::Overflow));
    }

    #[test]
    fn merge_adds_the_extremes_and_counters() {
        let mut a = Sketch::new();
        a.add(5.0);
        a.add(f64::NAN);
        let mut b = Sketch::new();
        b.add(0.5);
        b.add(50.0);
        a.merge(&b).unwrap();
        assert_eq!((a.min(), a.max(), a.count(), a.sum(), a.ignored()), (Some(0.5), Some(50.0), 3.0, 55.5, 1));
        let mut empty = Sketch::new();
        empty.merge(&a).unwrap();
        assert_eq!(empty, a);
    }
}
