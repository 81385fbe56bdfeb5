//! Proportions: the Wilson score interval of a success rate, the pooled two-proportion
//! z-test, and Newcombe's interval of the difference of two rates.

use crate::dist::{half_alpha, normal_quantile, normal_sf};
use crate::{Interval, StatsError};

/// The Wilson score interval of a proportion: `successes` out of `n` trials, at `confidence`
/// (0.95 for a 95 % interval).
///
/// With p̂ = successes / n and z = Φ⁻¹(1 − α/2):
///
/// ```text
/// centre = (p̂ + z²/(2n)) / (1 + z²/n)
/// half   = z √(p̂(1 − p̂)/n + z²/(4n²)) / (1 + z²/n)
/// [low, high] = [centre − half, centre + half], clipped to [0, 1] (exactly 0 at p̂ = 0, 1 at p̂ = 1)
/// ```
///
/// Wilson, E. B. (1927), "Probable inference, the law of succession, and statistical
/// inference", JASA 22, 209–212; recommended over the Wald interval by Brown, Cai and
/// DasGupta (2001), "Interval estimation for a binomial proportion", Statistical Science 16.
/// Reference: `statsmodels.stats.proportion.proportion_confint(method="wilson")`.
///
/// Unlike the Wald interval it stays inside [0, 1] and has a width > 0 at p̂ = 0 or 1.
pub fn wilson_interval(successes: u64, n: u64, confidence: f64) -> Result<Interval, StatsError> {
    let half_alpha = half_alpha(confidence)?;
    if n == 0 {
        return Err(StatsError::TooFewObservations { what: "a proportion", needed: 1, got: 0 });
    }
    if successes > n {
        return Err(StatsError::InvalidArgument("successes must not exceed trials"));
    }
    let n = n as f64;
    let p = successes as f64 / n;
    let z = -normal_quantile(half_alpha);
    let z2 = z * z;
    let denominator = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denominator;
    // At p̂ = 0 (1) the lower (upper) bound is exactly 0 (1); the formula leaves a rounding
    // error of ~1e-17 there, which would put the estimate outside its own interval.
    let low = if successes == 0 { 0.0 } else { (centre - half).clamp(0.0, 1.0) };
    let high = if successes as f64 == n { 1.0 } else { (centre + half).clamp(0.0, 1.0) };
    Ok(Interval { low, high })
}

/// A z statistic and its two-sided p-value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZTest {
    /// The standardised difference; positive when the first group is larger.
    pub z: f64,
    /// The two-sided p-value, 2 (1 − Φ(|z|)).
    pub p_value: f64,
}

/// The two-proportion z-test with a pooled variance, two-sided: does success rate a differ
/// from success rate b?
///
/// With p̂ₐ = xₐ/nₐ, p̂_b = x_b/n_b and the pooled p̂ = (xₐ + x_b)/(nₐ + n_b):
///
/// ```text
/// z = (p̂ₐ − p̂_b) / √(p̂(1 − p̂)(1/nₐ + 1/n_b)),   p = 2 (1 − Φ(|z|))
/// ```
///
/// Pooling is the variance under the null hypothesis pₐ = p_b (Fleiss, Levin and Paik,
/// "Statistical Methods for Rates and Proportions", 3rd ed., 2003). The normal
/// approximation wants roughly five successes and five failures per group.
/// Reference: `statsmodels.stats.proportion.proportions_ztest([xa, xb], [na, nb])`.
///
/// When the pooled proportion is 0 or 1 (no group has a success, or none a failure) the
/// variance is zero and the test is [`StatsError::Undefined`]: the reference then returns NaN.
pub fn two_proportion_z_test(successes_a: u64, n_a: u64, successes_b: u64, n_b: u64) -> Result<ZTest, StatsError> {
    if n_a == 0 || n_b == 0 {
        let got = n_a.min(n_b) as usize;
        return Err(StatsError::TooFewObservations { what: "each proportion", needed: 1, got });
    }
    if successes_a > n_a || successes_b > n_b {
        return Err(StatsError::InvalidArgument("successes must not exceed trials"));
    }
    let (na, nb) = (n_a as f64, n_b as f64);
    let difference = successes_a as f64 / na - successes_b as f64 / nb;
    let pooled = (successes_a + successes_b) as f64 / (na + nb);
    let variance = pooled * (1.0 - pooled) * (1.0 / na + 1.0 / nb);
    if variance <= 0.0 {
        return Err(StatsError::Undefined("the pooled proportion is 0 or 1"));
    }
    let z = difference / variance.sqrt();
    Ok(ZTest { z, p_value: 2.0 * normal_sf(z.abs()) })
}

/// Newcombe's hybrid score interval of the difference of two independent proportions,
/// pₐ − p_b, from the Wilson intervals [lₐ, uₐ] and [l_b, u_b] of each rate:
///
/// ```text
/// d = p̂ₐ − p̂_b
/// [low, high] = [d − √((p̂ₐ − lₐ)² + (u_b − p̂_b)²),  d + √((uₐ − p̂ₐ)² + (p̂_b − l_b)²)]
/// ```
///
/// Newcombe, R. G. (1998), "Interval estimation for the difference between independent
/// proportions: comparison of eleven methods", Statistics in Medicine 17, 873–890 (method 10).
/// Unlike the Wald interval it stays inside [−1, 1] and keeps its coverage near 0 and 1, where
/// success rates of good models live. Reference:
/// `statsmodels.stats.proportion.confint_proportions_2indep(method="newcomb", compare="diff")`.
pub fn newcombe_difference_interval(
    successes_a: u64,
    n_a: u64,
    successes_b: u64,
    n_b: u64,
    confidence: f64,
) -> Result<Interval, StatsError> {
    let a = wilson_interval(successes_a, n_a, confidence)?;
    let b = wilson_interval(successes_b, n_b, confidence)?;
    let pa = successes_a as f64 / n_a as f64;
    let pb = successes_b as f64 / n_b as f64;
    let d = pa - pb;
    let low = d - ((pa - a.low).powi(2) + (b.high - pb).powi(2)).sqrt();
    let high = d + ((a.high - pa).powi(2) + (pb - b.low).powi(2)).sqrt();
    Ok(Interval { low, high })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wilson_rejects_what_it_cannot_compute() {
        assert!(matches!(wilson_interval(1, 0, 0.95), Err(StatsError::TooFewObservations { .. })));
        assert!(matches!(wilson_interval(3, 2, 0.95), Err(StatsError::InvalidArgument(_))));
        assert!(matches!(wilson_interval(1, 2, 1.0), Err(StatsError::InvalidArgument(_))));
        assert!(matches!(wilson_interval(1, 2, f64::NAN), Err(StatsError::InvalidArgument(_))));
    }

    #[test]
    fn wilson_has_width_at_the_edges() {
        let none = wilson_interval(0, 20, 0.95).unwrap();
        assert_eq!(none.low, 0.0);
        assert!(none.high > 0.1 && none.high < 0.2, "{none:?}");
        let all = wilson_interval(20, 20, 0.95).unwrap();
        assert_eq!(all.high, 1.0);
        assert!((all.low - (1.0 - none.high)).abs() < 1e-12, "symmetric: {all:?} {none:?}");
    }

    #[test]
    fn z_test_is_undefined_without_variance() {
        assert_eq!(two_proportion_z_test(0, 10, 0, 12), Err(StatsError::Undefined("the pooled proportion is 0 or 1")));
        assert!(matches!(two_proportion_z_test(10, 10, 12, 12), Err(StatsError::Undefined(_))));
        assert!(matches!(two_proportion_z_test(1, 0, 1, 2), Err(StatsError::TooFewObservations { .. })));
    }

    #[test]
    fn newcombe_is_inside_the_unit_range_at_the_edges() {
        let i = newcombe_difference_interval(20, 20, 0, 20, 0.95).unwrap();
        assert!(i.low > 0.7 && i.high == 1.0, "{i:?}");
        let same = newcombe_difference_interval(10, 20, 10, 20, 0.95).unwrap();
        assert!((same.low + same.high).abs() < 1e-12, "symmetric about 0: {same:?}");
    }

    proptest! {
        #[test]
        fn wilson_contains_the_estimate_and_stays_in_the_unit_interval(
            n in 1u64..100_000, share in 0.0f64..=1.0, confidence in 0.5f64..0.999,
        ) {
            let successes = ((n as f64) * share).round() as u64;
            let p = successes as f64 / n as f64;
            let ci = wilson_interval(successes, n, confidence).unwrap();
            prop_assert!(0.0 <= ci.low && ci.low <= p && p <= ci.high && ci.high <= 1.0, "{ci:?} {p}");
            let wider = wilson_interval(successes, n, (confidence + 1.0) / 2.0).unwrap();
            prop_assert!(wider.low <= ci.low && ci.high <= wider.high);
        }

        #[test]
        fn z_test_is_antisymmetric(
            xa in 0u64..50, na in 50u64..100, xb in 0u64..50, nb in 50u64..100,
        ) {
            prop_assume!(xa + xb > 0);
            let ab = two_proportion_z_test(xa, na, xb, nb).unwrap();
            let ba = two_proportion_z_test(xb, nb, xa, na).unwrap();
            prop_assert!((ab.z + ba.z).abs() < 1e-12);
            prop_assert!((ab.p_value - ba.p_value).abs() < 1e-12);
            prop_assert!((0.0..=1.0).contains(&ab.p_value));
        }
    }
}
