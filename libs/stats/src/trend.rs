//! Trends of a series over time: the Theil–Sen slope with its confidence interval, and the
//! Mann–Kendall test with the Hamed–Rao correction for autocorrelated series (consecutive
//! windows of one metric are rarely independent).

use crate::StatsError;
use crate::dist::{half_alpha, normal_cdf, normal_quantile};
use crate::rank::{all_finite, average_ranks, median, median_of_sorted};

/// The Theil–Sen line and the confidence interval of its slope.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TheilSen {
    /// The median of the pairwise slopes.
    pub slope: f64,
    /// median(y) − slope · median(x).
    pub intercept: f64,
    /// The lower bound of the slope's confidence interval.
    pub low: f64,
    /// The upper bound of the slope's confidence interval.
    pub high: f64,
}

/// The Theil–Sen estimator of the slope of y over x: the median of the slopes
/// (yᵢ − yⱼ)/(xᵢ − xⱼ) of all pairs with xᵢ > xⱼ, robust to ~29 % of outliers. The intercept
/// is median(y) − slope · median(x) (Conover, "Practical Nonparametric Statistics", 1980).
///
/// The interval (at `confidence`, e.g. 0.95) takes two order statistics of the N sorted
/// slopes, with z = Φ⁻¹(1 − α/2) and the variance of Kendall's S corrected for the tie groups
/// t of x and of y:
///
/// ```text
/// σ² = (n(n−1)(2n+5) − Σₓ t(t−1)(2t+5) − Σ_y t(t−1)(2t+5)) / 18
/// high = slope[min(round((N + zσ)/2), N − 1)],  low = slope[max(round((N − zσ)/2) − 1, 0)]
/// ```
///
/// (0-based indices, rounding half to even.) Theil, H. (1950), "A rank-invariant method of
/// linear and polynomial regression analysis", Proc. KNAW 53; Sen, P. K. (1968), "Estimates
/// of the regression coefficient based on Kendall's tau", JASA 63, 1379–1389, eq. 2.6.
/// Reference: `scipy.stats.theilslopes(y, x, alpha=confidence)` (`method="separate"`).
///
/// O(n²) time and memory in the number of points: meant for series of windows (hundreds to a
/// few thousand), not raw events.
pub fn theil_sen(x: &[f64], y: &[f64], confidence: f64) -> Result<TheilSen, StatsError> {
    let half_alpha = half_alpha(confidence)?;
    if x.len() != y.len() {
        return Err(StatsError::InvalidArgument("x and y must have the same length"));
    }
    if y.len() < 2 {
        let got = y.len();
        return Err(StatsError::TooFewObservations { what: "a Theil–Sen slope", needed: 2, got });
    }
    if !all_finite(x) || !all_finite(y) {
        return Err(StatsError::InvalidArgument("x and y must be finite"));
    }
    let mut slopes = Vec::with_capacity(y.len() * (y.len() - 1) / 2);
    for i in 0..y.len() {
        for j in 0..y.len() {
            if x[i] > x[j] {
                slopes.push((y[i] - y[j]) / (x[i] - x[j]));
            }
        }
    }
    slopes.sort_by(f64::total_cmp);
    let Some(slope) = median_of_sorted(&slopes) else {
        return Err(StatsError::Undefined("every x is the same"));
    };
    // Both medians exist: the slices are not empty.
    let intercept = median(y).unwrap_or(0.0) - slope * median(x).unwrap_or(0.0);

    let z = normal_quantile(half_alpha);
    let n = y.len() as f64;
    let variance = (n * (n - 1.0) * (2.0 * n + 5.0) - tie_term(x) - tie_term(y)) / 18.0;
    let sigma = variance.max(0.0).sqrt();
    let count = slopes.len() as f64;
    let last = slopes.len() - 1;
    let high = (((count - z * sigma) / 2.0).round_ties_even().max(0.0) as usize).min(last);
    let low = (((count + z * sigma) / 2.0).round_ties_even() - 1.0).max(0.0) as usize;
    Ok(TheilSen { slope, intercept, low: slopes[low.min(last)], high: slopes[high] })
}

/// [`theil_sen`] of a series observed at x = 0, 1, 2, …
pub fn theil_sen_series(y: &[f64], confidence: f64) -> Result<TheilSen, StatsError> {
    let x: Vec<f64> = (0..y.len()).map(|i| i as f64).collect();
    theil_sen(&x, y, confidence)
}

/// Σ t(t−1)(2t+5) over the tie groups of `values`.
fn tie_term(values: &[f64]) -> f64 {
    let (_, groups) = average_ranks(values);
    groups.iter().map(|&t| (t * (t - 1) * (2 * t + 5)) as f64).sum()
}

/// The direction a trend test found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trend {
    /// Significantly increasing.
    Increasing,
    /// Significantly decreasing.
    Decreasing,
    /// No significant monotonic trend.
    NoTrend,
}

/// The result of [`mann_kendall_hamed_rao`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MannKendall {
    /// The direction, at the test's α.
    pub trend: Trend,
    /// Whether |z| exceeds Φ⁻¹(1 − α/2).
    pub significant: bool,
    /// The two-sided p-value.
    pub p_value: f64,
    /// The standardised statistic, with the continuity correction.
    pub z: f64,
    /// Kendall's τ: S / (n(n − 1)/2).
    pub tau: f64,
    /// Kendall's S: Σ_{i<j} sign(yⱼ − yᵢ).
    pub s: i64,
    /// The variance of S, corrected for ties and for autocorrelation.
    pub var_s: f64,
    /// The Hamed–Rao factor n/n*s the tie-corrected variance was multiplied by (1 when no lag
    /// is significantly autocorrelated).
    pub correction: f64,
    /// Sen's slope per step, the median of (yⱼ − yᵢ)/(j − i) over i < j.
    pub slope: f64,
    /// median(y) − slope · (n − 1)/2.
    pub intercept: f64,
}

/// The Mann–Kendall trend test of a series observed at regular steps, with Hamed and Rao's
/// variance correction for autocorrelation; two-sided at `alpha` (e.g. 0.05).
///
/// Kendall's S = Σ_{i<j} sign(yⱼ − yᵢ) has, without autocorrelation, the tie-corrected
/// variance Var₀(S) = (n(n−1)(2n+5) − Σ t(t−1)(2t+5))/18 (t: sizes of the groups of equal
/// values). Hamed and Rao inflate it by
///
/// ```text
/// n/n*s = 1 + 2/(n(n−1)(n−2)) · Σᵢ (n−i)(n−i−1)(n−i−2) ρᵢ
/// ```
///
/// where ρᵢ is the lag-i autocorrelation of the ranks of the series detrended by Sen's slope
/// (yₖ − (k+1)·slope), and the sum keeps only the lags whose ρᵢ falls outside
/// ±Φ⁻¹(1 − α/2)/√n. Lags 1 … n − 1 are examined, or 1 … `max_lag` when given (Hamed and Rao
/// suggest 3). Then
///
/// ```text
/// z = (S − sign(S)) / √(Var₀(S) · n/n*s),   p = 2 (1 − Φ(|z|))
/// ```
///
/// Mann, H. B. (1945), "Nonparametric tests against trend", Econometrica 13; Kendall, M. G.
/// (1975), "Rank Correlation Methods"; Hamed, K. H. and Rao, A. R. (1998), "A modified
/// Mann–Kendall trend test for autocorrelated data", Journal of Hydrology 204, 182–196.
/// Reference: `pymannkendall.hamed_rao_modification_test(y, alpha, lag)`.
///
/// Two deliberate departures from the reference, which returns NaN there: when the detrended
/// series is constant (a perfectly linear series, or a constant one) its autocorrelation is
/// undefined and no correction is applied (factor 1); and when strong negative
/// autocorrelation drives the factor to zero or below, the test is
/// [`StatsError::Undefined`]. Needs three observations.
pub fn mann_kendall_hamed_rao(y: &[f64], alpha: f64, max_lag: Option<usize>) -> Result<MannKendall, StatsError> {
    if !(alpha > 0.0 && alpha < 1.0) {
        return Err(StatsError::InvalidArgument("alpha must be in (0, 1)"));
    }
    let critical = normal_quantile(1.0 - alpha / 2.0);
    let n = y.len();
    if n < 3 {
        return Err(StatsError::TooFewObservations { what: "a Mann–Kendall test", needed: 3, got: n });
    }
    if !all_finite(y) {
        return Err(StatsError::InvalidArgument("the series must be finite"));
    }
    let mut s: i64 = 0;
    for i in 0..n - 1 {
        for j in i + 1..n {
            s += match y[j].partial_cmp(&y[i]) {
                Some(std::cmp::Ordering::Greater) => 1,
                Some(std::cmp::Ordering::Less) => -1,
                _ => 0,
            };
        }
    }
    let nf = n as f64;
    let var_s0 = (nf * (nf - 1.0) * (2.0 * nf + 5.0) - tie_term(y)) / 18.0;
    let tau = s as f64 / (0.5 * nf * (nf - 1.0));

    let mut slopes = Vec::with_capacity(n * (n - 1) / 2);
    for i in 0..n - 1 {
        for j in i + 1..n {
            slopes.push((y[j] - y[i]) / (j - i) as f64);
        }
    }
    slopes.sort_by(f64::total_cmp);
    // n ≥ 3, so there are slopes and values.
    let slope = median_of_sorted(&slopes).unwrap_or(0.0);
    let intercept = median(y).unwrap_or(0.0) - (nf - 1.0) / 2.0 * slope;

    let detrended: Vec<f64> = y.iter().enumerate().map(|(k, v)| v - (k + 1) as f64 * slope).collect();
    let (ranks, _) = average_ranks(&detrended);
    let lags = max_lag.map_or(n, |lag| (lag + 1).min(n));
    let correction = match autocorrelations(&ranks, lags - 1) {
        None => 1.0,
        Some(rho) => {
            let bound = critical / nf.sqrt();
            let sum: f64 = (1..lags)
                .filter(|&i| rho[i].abs() > bound)
                .map(|i| {
                    let k = (n - i) as f64;
                    k * (k - 1.0) * (k - 2.0) * rho[i]
                })
                .sum();
            1.0 + 2.0 / (nf * (nf - 1.0) * (nf - 2.0)) * sum
        }
    };
    if correction <= 0.0 {
        return Err(StatsError::Undefined("the autocorrelation correction is not positive"));
    }
    let var_s = var_s0 * correction;
    let z = match s {
        0 => 0.0,
        _ => (s - s.signum()) as f64 / var_s.sqrt(),
    };
    let p_value = 2.0 * (1.0 - normal_cdf(z.abs()));
    let significant = z.abs() > critical;
    let trend = match (significant, z > 0.0) {
        (false, _) => Trend::NoTrend,
        (true, true) => Trend::Increasing,
        (true, false) => Trend::Decreasing,
    };
    Ok(MannKendall { trend, significant, p_value, z, tau, s, var_s, correction, slope, intercept })
}

/// The autocorrelations ρ₀ … ρ_max of a series, each autocovariance with divisor n (the
/// usual biased estimator, as the reference); `None` when the series is constant.
fn autocorrelations(values: &[f64], max: usize) -> Option<Vec<f64>> {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n as f64;
    let centred: Vec<f64> = values.iter().map(|v| v - mean).collect();
    let autocovariance = |lag: usize| (0..n - lag).map(|t| centred[t] * centred[t + lag]).sum::<f64>() / n as f64;
    let variance = autocovariance(0);
    if variance <= 0.0 {
        return None;
    }
    Some((0..=max.min(n - 1)).map(|lag| autocovariance(lag) / variance).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn theil_sen_of_a_line_is_the_line() {
        let x = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        let y: Vec<f64> = x.iter().map(|x| 2.0 + 0.5 * x).collect();
        let fit = theil_sen(&x, &y, 0.95).unwrap();
        assert_eq!((fit.slope, fit.intercept, fit.low, fit.high), (0.5, 2.0, 0.5, 0.5));
    }

    #[test]
    fn theil_sen_needs_two_distinct_x() {
        assert!(matches!(theil_sen(&[1.0, 1.0], &[1.0, 2.0], 0.95), Err(StatsError::Undefined(_))));
        assert!(matches!(theil_sen_series(&[1.0], 0.95), Err(StatsError::TooFewObservations { .. })));
        assert!(matches!(theil_sen(&[1.0], &[1.0, 2.0], 0.95), Err(StatsError::InvalidArgument(_))));
    }

    #[test]
    fn a_perfect_line_is_a_trend_without_correction() {
        let y: Vec<f64> = (0..20).map(f64::from).collect();
        let test = mann_kendall_hamed_rao(&y, 0.05, None).unwrap();
        assert_eq!(test.trend, Trend::Increasing);
        assert_eq!((test.s, test.tau, test.correction), (190, 1.0, 1.0));
        assert!(test.p_value < 1e-6);
    }

    #[test]
    fn a_constant_series_has_no_trend() {
        let test = mann_kendall_hamed_rao(&[3.0; 12], 0.05, None).unwrap();
        assert_eq!((test.trend, test.s, test.z, test.p_value), (Trend::NoTrend, 0, 0.0, 1.0));
        assert_eq!((test.var_s, test.slope, test.intercept), (0.0, 0.0, 3.0));
    }

    proptest! {
        #[test]
        fn theil_sen_ignores_the_order_of_the_points(
            points in prop::collection::vec((-100i32..100, -1e3f64..1e3), 2..40),
            seed in any::<u64>(),
        ) {
            let x: Vec<f64> = points.iter().map(|p| f64::from(p.0)).collect();
            let y: Vec<f64> = points.iter().map(|p| p.1).collect();
            prop_assume!(x.iter().any(|v| *v != x[0]));
            // A seeded Fisher–Yates shuffle of the points.
            let mut order: Vec<usize> = (0..x.len()).collect();
            let mut state = seed;
            for i in (1..order.len()).rev() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                order.swap(i, (state >> 33) as usize % (i + 1));
            }
            let xs: Vec<f64> = order.iter().map(|&i| x[i]).collect();
            let ys: Vec<f64> = order.iter().map(|&i| y[i]).collect();
            prop_assert_eq!(theil_sen(&x, &y, 0.95).unwrap(), theil_sen(&xs, &ys, 0.95).unwrap());
        }

        #[test]
        fn theil_sen_interval_holds_the_slope(
            y in prop::collection::vec(-1e3f64..1e3, 2..40), confidence in 0.5f64..0.99,
        ) {
            let fit = theil_sen_series(&y, confidence).unwrap();
            prop_assert!(fit.low <= fit.slope && fit.slope <= fit.high, "{fit:?}");
        }

        #[test]
        fn mann_kendall_flips_with_the_series(y in prop::collection::vec(-1e3f64..1e3, 3..40)) {
            let up = mann_kendall_hamed_rao(&y, 0.05, Some(3));
            let negated: Vec<f64> = y.iter().map(|v| -v).collect();
            let down = mann_kendall_hamed_rao(&negated, 0.05, Some(3));
            if let (Ok(up), Ok(down)) = (up, down) {
                prop_assert_eq!(up.s, -down.s);
                prop_assert!((0.0..=1.0).contains(&up.p_value));
            }
        }
    }
}
