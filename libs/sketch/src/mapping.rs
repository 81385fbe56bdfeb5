//! The logarithmic index mapping: which bin a value falls in, and which value a bin stands for.
//!
//! Bin `k` holds the values in `(gamma^(k-1-offset), gamma^(k-offset)]`, so a value's key is
//! `ceil(ln(v) / ln(gamma)) + offset`, and the bin is represented by
//! `gamma^(k-offset) * 2 / (1 + gamma)`, which is within the relative accuracy
//! `alpha = (gamma - 1) / (gamma + 1)` of every value in the bin. This is the convention of
//! DataDog's sketches-py and sketches-js; sketches-go and sketches-java floor instead of ceil (see
//! the crate documentation for what that means to their readers).

use crate::SketchError;

/// Relative accuracy of the sketches built by [`Sketch::new`](crate::Sketch::new): every
/// quantile is within 1 % of the exact one (as long as its bin was not collapsed, see
/// [`MAX_BINS`](crate::MAX_BINS)).
pub const RELATIVE_ACCURACY: f64 = 0.01;

/// Smallest gamma accepted from a foreign sketch: keeps every key inside `i32`.
const MIN_GAMMA: f64 = 1.000_001;
/// Largest gamma accepted from a foreign sketch (relative accuracy ~0.998, useless beyond).
const MAX_GAMMA: f64 = 1000.0;
/// Largest index offset accepted from a foreign sketch, in magnitude: with [`MIN_GAMMA`] the
/// keys of all finite values then stay below 7.7e8, far inside `i32`.
const MAX_INDEX_OFFSET: f64 = (1 << 24) as f64;
/// Two gammas closer than this (relatively) are the same mapping, as in sketches-go: encoders
/// compute gamma as `(1+a)/(1-a)` or as `1 + 2a/(1-a)`, which may differ in the last bit.
const GAMMA_TOLERANCE: f64 = 1e-12;

/// A logarithmic index mapping without interpolation (`Interpolation.NONE`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Mapping {
    gamma: f64,
    offset: i32,
    ln_gamma: f64,
    /// `1 / ln(gamma)`: a multiplication per key instead of a division.
    multiplier: f64,
    /// `2 / (1 + gamma)`, i.e. `1 - alpha`: scales a bin's upper bound to its representative.
    representative: f64,
    /// Values at or below this go to the zero bin (as in sketches-py: the smallest normal float
    /// times gamma, so that bin values never become subnormal).
    min_indexable: f64,
    /// Values above this are refused: the upper bound of their bin would overflow.
    max_indexable: f64,
}

impl Default for Mapping {
    fn default() -> Self {
        let mantissa = 2.0 * RELATIVE_ACCURACY / (1.0 - RELATIVE_ACCURACY);
        Mapping::build(1.0 + mantissa, mantissa.ln_1p(), 0)
    }
}

impl Mapping {
    fn build(gamma: f64, ln_gamma: f64, offset: i32) -> Self {
        Mapping {
            gamma,
            offset,
            ln_gamma,
            multiplier: 1.0 / ln_gamma,
            representative: 2.0 / (1.0 + gamma),
            min_indexable: f64::MIN_POSITIVE * gamma,
            max_indexable: f64::MAX / gamma,
        }
    }

    /// The mapping a decoded `IndexMapping` describes. A mapping equal to the default one within
    /// [`GAMMA_TOLERANCE`] becomes exactly the default one, so sketches from encoders that round
    /// gamma differently compare and merge as equal.
    pub(crate) fn from_proto(gamma: f64, index_offset: f64) -> Result<Self, SketchError> {
        if !gamma.is_finite() || gamma <= 1.0 {
            return Err(SketchError::malformed(format!("mapping gamma {gamma} is not a finite number above 1")));
        }
        if !(MIN_GAMMA..=MAX_GAMMA).contains(&gamma) {
            return Err(SketchError::unsupported(format!(
                "mapping gamma {gamma} is outside {MIN_GAMMA}..={MAX_GAMMA}"
            )));
        }
        if !index_offset.is_finite() || index_offset.fract() != 0.0 || index_offset.abs() > MAX_INDEX_OFFSET {
            return Err(SketchError::unsupported(format!(
                "mapping index offset {index_offset} is not an integer of magnitude at most 2^24"
            )));
        }
        // Exact: an integer of magnitude at most 2^24 fits i32.
        let mapping = Mapping::build(gamma, gamma.ln(), index_offset as i32);
        let default = Mapping::default();
        Ok(if mapping.same_as(&default) { default } else { mapping })
    }

    /// Whether two mappings send every value to the same key.
    pub(crate) fn same_as(&self, other: &Mapping) -> bool {
        self.offset == other.offset && (self.gamma - other.gamma).abs() <= GAMMA_TOLERANCE * self.gamma
    }

    pub(crate) fn gamma(&self) -> f64 {
        self.gamma
    }

    pub(crate) fn offset(&self) -> i32 {
        self.offset
    }

    /// Whether `value` (non-negative) belongs to the zero bin.
    pub(crate) fn is_zero(&self, value: f64) -> bool {
        value <= self.min_indexable
    }

    /// Whether `value` is too large to be indexed.
    pub(crate) fn is_too_large(&self, value: f64) -> bool {
        value > self.max_indexable
    }

    /// The key of the bin `value` falls in; `value` must be indexable (above the zero bin and not
    /// too large), which keeps the result far inside `i32` for the accepted gammas and offsets.
    pub(crate) fn key(&self, value: f64) -> i32 {
        // `as` saturates; the addition cannot overflow for indexable values, saturating anyway.
        ((value.ln() * self.multiplier).ceil() as i32).saturating_add(self.offset)
    }

    /// The value that represents bin `key`: within the relative accuracy of all its values.
    pub(crate) fn value(&self, key: i32) -> f64 {
        ((f64::from(key) - f64::from(self.offset)) * self.ln_gamma).exp() * self.representative
    }

    /// Whether bin `key` can hold values at all: its representative value is a finite normal
    /// number. Keys of indexable values always are; a decoded sketch may claim others.
    pub(crate) fn is_valid_key(&self, key: i32) -> bool {
        let value = self.value(key);
        value.is_finite() && value >= f64::MIN_POSITIVE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_gamma_matches_the_relative_accuracy() {
        let m = Mapping::default();
        assert!((m.gamma() - 1.01 / 0.99).abs() < 1e-15);
        assert_eq!(m.offset(), 0);
        assert!((m.representative - (1.0 - RELATIVE_ACCURACY)).abs() < 1e-15);
    }

    #[test]
    fn keys_use_the_ceiling_convention() {
        let m = Mapping::default();
        assert_eq!(m.key(1.0), 0);
        assert_eq!(m.key(1.001), 1);
        assert_eq!(m.key(0.999), 0);
        assert_eq!(m.key(m.gamma() * 1.000_001), 2);
        // 100 ms: ln(100)/ln(gamma) = 230.26..., so bin 231.
        assert_eq!(m.key(100.0), 231);
    }

    #[test]
    fn bin_values_are_within_the_relative_accuracy() {
        let m = Mapping::default();
        for v in [1e-300, 1e-9, 0.001, 0.5, 1.0, 3.3, 100.0, 12345.678, 1e7, 1e300] {
            let estimate = m.value(m.key(v));
            assert!((estimate - v).abs() <= RELATIVE_ACCURACY * v * (1.0 + 1e-9), "{v} -> {estimate}");
        }
    }

    #[test]
    fn extreme_indexable_values_have_valid_keys() {
        let m = Mapping::default();
        let smallest = m.min_indexable * (1.0 + 1e-15);
        assert!(!m.is_zero(smallest));
        assert!(m.is_valid_key(m.key(smallest)));
        assert!(m.is_valid_key(m.key(m.max_indexable)));
        assert!(!m.is_valid_key(m.key(m.max_indexable) + 2));
        assert!(!m.is_valid_key(i32::MAX));
        assert!(!m.is_valid_key(i32::MIN));
    }

    #[test]
    fn decoded_mappings() {
        let default = Mapping::default();
        assert_eq!(Mapping::from_proto(1.01 / 0.99, 0.0).unwrap(), default);
        assert_eq!(Mapping::from_proto(1.0 + 0.02 / 0.99, 0.0).unwrap(), default);
        let other = Mapping::from_proto(1.05, 3.0).unwrap();
        assert!(!other.same_as(&default));
        assert_eq!(other.offset(), 3);
        for (gamma, offset) in [(1.0, 0.0), (0.5, 0.0), (f64::NAN, 0.0), (f64::INFINITY, 0.0)] {
            assert!(matches!(Mapping::from_proto(gamma, offset), Err(SketchError::Malformed { .. })));
        }
        for (gamma, offset) in [(1.000_000_1, 0.0), (2000.0, 0.0), (1.02, 0.5), (1.02, f64::NAN), (1.02, 1e9)] {
            assert!(matches!(Mapping::from_proto(gamma, offset), Err(SketchError::Unsupported { .. })));
        }
    }
}
