//! Means: the `{mean, m2, n}` running moments the aggregator keeps for quality scores, the
//! t-based interval of a mean, and Welch's t-test between two groups.

use crate::dist::{half_alpha, t_quantile, t_two_sided};
use crate::{Interval, StatsError};

/// A group described by its summary statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// The sample mean.
    pub mean: f64,
    /// The sample standard deviation (divisor n − 1).
    pub std: f64,
    /// The number of observations.
    pub n: u64,
}

/// Welford's running moments: the count, the mean and the sum of squared deviations from the
/// mean (`m2`), exactly as the metrics messages carry them (`quality_n`, `quality_mean`,
/// `quality_m2`).
///
/// Welford, B. P. (1962), "Note on a method for calculating corrected sums of squares and
/// products", Technometrics 4, 419–420; merged with Chan, Golub and LeVeque (1979), "Updating
/// formulae and a pairwise algorithm for computing sample variances".
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    /// Observations.
    pub n: u64,
    /// Their mean (0 when there are none).
    pub mean: f64,
    /// Sum of squared deviations from the mean, Σ(xᵢ − x̄)².
    pub m2: f64,
}

impl Moments {
    /// The moments of a slice, one observation at a time.
    pub fn from_slice(values: &[f64]) -> Self {
        let mut moments = Self::default();
        values.iter().for_each(|&x| moments.push(x));
        moments
    }

    /// Adds one observation: δ = x − x̄, x̄ += δ/n, m2 += δ (x − the updated x̄).
    pub fn push(&mut self, x: f64) {
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    /// Adds the observations that `other` describes (Chan et al.):
    /// δ = x̄_b − x̄ₐ, m2 = m2ₐ + m2_b + δ² nₐn_b/(nₐ + n_b).
    pub fn merge(&mut self, other: &Moments) {
        if other.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *other;
            return;
        }
        let n = self.n + other.n;
        let delta = other.mean - self.mean;
        self.mean += delta * other.n as f64 / n as f64;
        self.m2 += other.m2 + delta * delta * (self.n as f64 * other.n as f64) / n as f64;
        self.n = n;
    }

    /// The sample variance m2/(n − 1), for two observations or more.
    pub fn variance(&self) -> Option<f64> {
        (self.n >= 2).then(|| self.m2.max(0.0) / (self.n - 1) as f64)
    }

    /// The summary statistics (mean, sample standard deviation, n), for two observations or
    /// more.
    pub fn summary(&self) -> Option<Summary> {
        Some(Summary { mean: self.mean, std: self.variance()?.sqrt(), n: self.n })
    }

    /// The standard error of the mean, √(s²/n), for two observations or more.
    pub fn standard_error(&self) -> Option<f64> {
        Some((self.variance()? / self.n as f64).sqrt())
    }

    /// The t-based interval of the mean: x̄ ± t₁₋α/₂,ₙ₋₁ · s/√n (Student, 1908, "The probable
    /// error of a mean", Biometrika 6). Reference:
    /// `scipy.stats.t.interval(confidence, n - 1, loc=mean, scale=s / sqrt(n))`.
    ///
    /// When every observation is equal the interval is the single point x̄ (the reference
    /// returns NaN for a zero scale).
    pub fn mean_interval(&self, confidence: f64) -> Result<Interval, StatsError> {
        let half_alpha = half_alpha(confidence)?;
        let Some(se) = self.standard_error() else {
            let got = self.n as usize;
            return Err(StatsError::TooFewObservations { what: "a mean interval", needed: 2, got });
        };
        let t = t_quantile(1.0 - half_alpha, (self.n - 1) as f64)?;
        Ok(Interval { low: self.mean - t * se, high: self.mean + t * se })
    }
}

/// A t statistic, its degrees of freedom and its two-sided p-value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TTest {
    /// The statistic; positive when the first group (or the mean difference) is larger.
    pub t: f64,
    /// Degrees of freedom (Welch–Satterthwaite for Welch's test, so not an integer).
    pub df: f64,
    /// The two-sided p-value, 2 P(T_df ≥ |t|).
    pub p_value: f64,
}

/// Welch's unequal-variances t-test between two groups given by their summary statistics.
///
/// With vₐ = sₐ²/nₐ and v_b = s_b²/n_b:
///
/// ```text
/// t  = (x̄ₐ − x̄_b) / √(vₐ + v_b)
/// df = (vₐ + v_b)² / (vₐ²/(nₐ − 1) + v_b²/(n_b − 1))      (Welch–Satterthwaite)
/// p  = 2 P(T_df ≥ |t|)
/// ```
///
/// Welch, B. L. (1947), "The generalization of 'Student's' problem when several different
/// population variances are involved", Biometrika 34, 28–35. Reference:
/// `scipy.stats.ttest_ind_from_stats(..., equal_var=False)`.
///
/// Each group needs two observations; when both standard deviations are zero the test is
/// [`StatsError::Undefined`].
pub fn welch_t_test(a: &Summary, b: &Summary) -> Result<TTest, StatsError> {
    if a.n < 2 || b.n < 2 {
        let got = a.n.min(b.n) as usize;
        return Err(StatsError::TooFewObservations { what: "each group of a t-test", needed: 2, got });
    }
    if ![a.mean, a.std, b.mean, b.std].iter().all(|v| v.is_finite()) || a.std < 0.0 || b.std < 0.0 {
        return Err(StatsError::InvalidArgument("means and standard deviations must be finite, deviations ≥ 0"));
    }
    let va = a.std * a.std / a.n as f64;
    let vb = b.std * b.std / b.n as f64;
    let variance = va + vb;
    if variance <= 0.0 {
        return Err(StatsError::Undefined("both groups have a zero variance"));
    }
    let df = variance * variance / (va * va / (a.n - 1) as f64 + vb * vb / (b.n - 1) as f64);
    let t = (a.mean - b.mean) / variance.sqrt();
    Ok(TTest { t, df, p_value: t_two_sided(t, df)? })
}

/// The Welch interval of the difference of two means, x̄ₐ − x̄_b, with the variance and the
/// Welch–Satterthwaite degrees of freedom of [`welch_t_test`]:
///
/// ```text
/// (x̄ₐ − x̄_b) ± t(1 − α/2, df) √(sₐ²/nₐ + s_b²/n_b)
/// ```
///
/// Reference: `scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence)`.
pub fn welch_difference_interval(a: &Summary, b: &Summary, confidence: f64) -> Result<Interval, StatsError> {
    let test = welch_t_test(a, b)?;
    let half_alpha = half_alpha(confidence)?;
    let se = ((a.std * a.std) / a.n as f64 + (b.std * b.std) / b.n as f64).sqrt();
    let t = t_quantile(1.0 - half_alpha, test.df)?;
    let d = a.mean - b.mean;
    Ok(Interval { low: d - t * se, high: d + t * se })
}

/// [`welch_t_test`] on two sets of running moments.
pub fn welch_t_test_moments(a: &Moments, b: &Moments) -> Result<TTest, StatsError> {
    let too_few =
        || StatsError::TooFewObservations { what: "each group of a t-test", needed: 2, got: a.n.min(b.n) as usize };
    welch_t_test(&a.summary().ok_or_else(too_few)?, &b.summary().ok_or_else(too_few)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn running_moments_match_the_two_pass_formula() {
        let values = [0.61, 0.72, 0.55, 0.9, 0.83, 0.47];
        let mean = values.iter().sum::<f64>() / 6.0;
        let m2: f64 = values.iter().map(|x| (x - mean) * (x - mean)).sum();
        let moments = Moments::from_slice(&values);
        assert_eq!(moments.n, 6);
        assert!((moments.mean - mean).abs() < 1e-15);
        assert!((moments.m2 - m2).abs() < 1e-14);
        assert!((moments.variance().unwrap() - m2 / 5.0).abs() < 1e-14);
    }

    #[test]
    fn a_single_observation_has_no_interval() {
        let one = Moments::from_slice(&[0.5]);
        assert_eq!(one.variance(), None);
        assert!(matches!(one.mean_interval(0.95), Err(StatsError::TooFewObservations { .. })));
        assert!(matches!(
            welch_t_test_moments(&one, &Moments::from_slice(&[1.0, 2.0])),
            Err(StatsError::TooFewObservations { .. })
        ));
    }

    #[test]
    fn welch_without_variance_is_undefined() {
        let a = Summary { mean: 1.0, std: 0.0, n: 5 };
        let b = Summary { mean: 2.0, std: 0.0, n: 7 };
        assert!(matches!(welch_t_test(&a, &b), Err(StatsError::Undefined(_))));
        // One group without variance is fine: df is the other group's n − 1.
        let b = Summary { mean: 2.0, std: 1.0, n: 7 };
        let test = welch_t_test(&a, &b).unwrap();
        assert!((test.df - 6.0).abs() < 1e-12);
    }

    proptest! {
        #[test]
        fn merging_equals_pushing_everything(
            left in prop::collection::vec(-1e3f64..1e3, 0..40),
            right in prop::collection::vec(-1e3f64..1e3, 0..40),
        ) {
            let mut merged = Moments::from_slice(&left);
            merged.merge(&Moments::from_slice(&right));
            let whole = Moments::from_slice(&[left.as_slice(), right.as_slice()].concat());
            prop_assert_eq!(merged.n, whole.n);
            prop_assert!((merged.mean - whole.mean).abs() <= 1e-9 * (1.0 + whole.mean.abs()));
            prop_assert!((merged.m2 - whole.m2).abs() <= 1e-9 * (1.0 + whole.m2));
        }

        #[test]
        fn the_mean_interval_narrows_with_lower_confidence(
            values in prop::collection::vec(-10f64..10.0, 2..30), confidence in 0.5f64..0.99,
        ) {
            let moments = Moments::from_slice(&values);
            let ci = moments.mean_interval(confidence).unwrap();
            let wider = moments.mean_interval((confidence + 1.0) / 2.0).unwrap();
            prop_assert!(ci.low <= moments.mean && moments.mean <= ci.high);
            prop_assert!(wider.low <= ci.low + 1e-12 && ci.high <= wider.high + 1e-12);
        }
    }
}
