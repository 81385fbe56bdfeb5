//! Paired comparisons, for benchmark runs where two models answered the same cases: McNemar's
//! test for success, the Wilcoxon signed-rank test and the paired t-test for quality and
//! latency.

use crate::dist::{binomial_cdf, chi_squared_sf, normal_two_sided, t_two_sided};
use crate::rank::{all_finite, average_ranks};
use crate::{StatsError, TTest};

/// The discordant pairs of paired successes: `b` cases where only the first model succeeded,
/// `c` where only the second did. Concordant pairs carry no information for McNemar's test.
pub fn discordant_counts(pairs: impl IntoIterator<Item = (bool, bool)>) -> (u64, u64) {
    pairs.into_iter().fold((0, 0), |(b, c), pair| match pair {
        (true, false) => (b + 1, c),
        (false, true) => (b, c + 1),
        _ => (b, c),
    })
}

/// A test statistic and its two-sided p-value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct McNemar {
    /// min(b, c) for the exact test, the χ² statistic for the asymptotic one.
    pub statistic: f64,
    /// The two-sided p-value.
    pub p_value: f64,
}

/// McNemar's test, exact (binomial) version: under the null hypothesis each discordant pair
/// is equally likely to favour either model, so min(b, c) ~ Binomial(b + c, ½) and
///
/// ```text
/// p = min(1, 2 P(X ≤ min(b, c))),   X ~ Binomial(b + c, ½)
/// ```
///
/// McNemar, Q. (1947), "Note on the sampling error of the difference between correlated
/// proportions or percentages", Psychometrika 12, 153–157. Exact, hence valid at any sample
/// size, but conservative: Fagerland, Lydersen and Laake (2013), "The McNemar test for binary
/// matched-pairs data", BMC Medical Research Methodology 13:91. Reference:
/// `statsmodels.stats.contingency_tables.mcnemar([[_, b], [c, _]], exact=True)`.
///
/// With no discordant pair the p-value is 1.
pub fn mcnemar_exact(b: u64, c: u64) -> Result<McNemar, StatsError> {
    let statistic = b.min(c);
    let p_value = (2.0 * binomial_cdf(statistic, b + c, 0.5)?).min(1.0);
    Ok(McNemar { statistic: statistic as f64, p_value })
}

/// McNemar's test, asymptotic version with Edwards' continuity correction:
///
/// ```text
/// χ² = (|b − c| − 1)² / (b + c),   p = P(χ²₁ ≥ χ²)
/// ```
///
/// McNemar (1947); Edwards, A. L. (1948), "Note on the 'correction for continuity' in testing
/// the significance of the difference between correlated proportions", Psychometrika 13.
/// Reference: `statsmodels.stats.contingency_tables.mcnemar(..., exact=False, correction=True)`.
///
/// As in the reference, |b − c| − 1 is not floored at zero, so b = c gives χ² = 1/(b + c)
/// rather than 0 (a p-value slightly below 1). Without discordant pairs the statistic is
/// [`StatsError::Undefined`]. Prefer [`mcnemar_exact`] when b + c is below ~25.
pub fn mcnemar_chi_squared(b: u64, c: u64) -> Result<McNemar, StatsError> {
    if b + c == 0 {
        return Err(StatsError::Undefined("no discordant pairs"));
    }
    let excess = b.abs_diff(c) as f64 - 1.0;
    let statistic = excess * excess / (b + c) as f64;
    Ok(McNemar { statistic, p_value: chi_squared_sf(statistic, 1.0)? })
}

/// How [`wilcoxon_signed_rank`] computed its p-value; the same choice as
/// `scipy.stats.wilcoxon(method="auto")`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WilcoxonMethod {
    /// The exact null distribution of the signed-rank sum: at most 50 differences, no ties
    /// among their absolute values and no zeros.
    Exact,
    /// Every one of the 2ⁿ sign assignments enumerated with the tied (average) ranks as they
    /// are: at most 13 differences, with ties or zeros.
    Permutation,
    /// The normal approximation with the tie correction and no continuity correction: more
    /// than 50 differences, or 14 to 50 with ties or zeros.
    Normal,
}

/// The result of [`wilcoxon_signed_rank`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Wilcoxon {
    /// min(R⁺, R⁻), the statistic the reference reports for the two-sided test.
    pub statistic: f64,
    /// The sum of the ranks of the positive differences.
    pub r_plus: f64,
    /// The sum of the ranks of the negative differences.
    pub r_minus: f64,
    /// The standardised R⁺, (R⁺ − μ)/σ (positive when the differences tend to be positive);
    /// it is what [`WilcoxonMethod::Normal`] refers to the normal distribution.
    pub z: f64,
    /// The two-sided p-value.
    pub p_value: f64,
    /// How the p-value was computed.
    pub method: WilcoxonMethod,
    /// Differences that were not zero: the effective sample size.
    pub n_nonzero: usize,
}

/// The largest sample the exact and the permutation distributions are used for.
const EXACT_MAX: usize = 50;
const PERMUTATION_MAX: usize = 13;

/// The Wilcoxon signed-rank test of paired differences dᵢ = xᵢ − yᵢ, two-sided: is their
/// distribution symmetric about zero?
///
/// Zeros are dropped ("wilcox" treatment), the remaining n |dᵢ| ranked with average ranks for
/// ties, and R⁺ (R⁻) is the sum of the ranks of the positive (negative) differences. Then, as
/// `scipy.stats.wilcoxon` does by default (`method="auto"`, no continuity correction):
/// - [`WilcoxonMethod::Exact`] when there are at most 50 differences, no ties and no zeros:
///   p = 2 min(P(R ≤ R⁺), P(R ≥ R⁺)) under the exact null distribution of R (every subset of
///   the ranks 1…n equally likely to be the positive one);
/// - [`WilcoxonMethod::Permutation`] when there are at most 13 differences with ties or zeros:
///   the same formula over all 2ⁿ sign assignments of the actual (tied) ranks;
/// - [`WilcoxonMethod::Normal`] otherwise, with the tie correction:
///
/// ```text
/// μ = n(n + 1)/4,   σ² = n(n + 1)(2n + 1)/24 − Σ(t³ − t)/48,   z = (R⁺ − μ)/σ,
/// p = 2 (1 − Φ(|z|))
/// ```
///
/// where t runs over the sizes of the tie groups. The sample-size thresholds count the
/// differences before zeros are dropped, as the reference does.
///
/// Wilcoxon, F. (1945), "Individual comparisons by ranking methods", Biometrics Bulletin 1,
/// 80–83; the tie correction as in Lehmann, E. L. (1975), "Nonparametrics: Statistical
/// Methods Based on Ranks", ch. 3. Reference:
/// `scipy.stats.wilcoxon(d)` (scipy 1.17 defaults).
///
/// Fails with [`StatsError::Undefined`] when every difference is zero (the reference returns
/// p = 1 up to 13 differences and NaN above).
pub fn wilcoxon_signed_rank(differences: &[f64]) -> Result<Wilcoxon, StatsError> {
    if !all_finite(differences) {
        return Err(StatsError::InvalidArgument("differences must be finite"));
    }
    let nonzero: Vec<f64> = differences.iter().copied().filter(|&d| d != 0.0).collect();
    if nonzero.is_empty() {
        return Err(StatsError::Undefined("every difference is zero"));
    }
    let has_zeros = nonzero.len() < differences.len();
    let magnitudes: Vec<f64> = nonzero.iter().map(|d| d.abs()).collect();
    let (ranks, groups) = average_ranks(&magnitudes);
    let has_ties = groups.iter().any(|&t| t > 1);
    let r_plus: f64 = nonzero.iter().zip(&ranks).filter(|(d, _)| **d > 0.0).map(|(_, r)| r).sum();
    let r_minus: f64 = nonzero.iter().zip(&ranks).filter(|(d, _)| **d < 0.0).map(|(_, r)| r).sum();

    let n = nonzero.len() as f64;
    let mean = n * (n + 1.0) / 4.0;
    let ties: f64 = groups.iter().map(|&t| (t * t * t - t) as f64).sum();
    let sd = ((n * (n + 1.0) * (2.0 * n + 1.0) - ties / 2.0) / 24.0).sqrt();
    let z = (r_plus - mean) / sd;

    let method = match differences.len() {
        len if len > EXACT_MAX => WilcoxonMethod::Normal,
        _ if !has_ties && !has_zeros => WilcoxonMethod::Exact,
        len if len <= PERMUTATION_MAX => WilcoxonMethod::Permutation,
        _ => WilcoxonMethod::Normal,
    };
    let p_value = match method {
        WilcoxonMethod::Normal => normal_two_sided(z),
        WilcoxonMethod::Exact | WilcoxonMethod::Permutation => signed_rank_sum_p(&ranks, r_plus),
    };
    Ok(Wilcoxon { statistic: r_plus.min(r_minus), r_plus, r_minus, z, p_value, method, n_nonzero: nonzero.len() })
}

/// 2 min(P(R ≤ r⁺), P(R ≥ r⁺)), capped at 1, where R is the sum of a uniformly random subset
/// of `ranks` (each rank positive or negative with probability ½, independently).
///
/// Counted exactly: ranks are multiples of ½, so doubled they are integers and a table of how
/// many subsets reach each doubled sum has n(n + 1) + 1 entries. n ≤ 50, so no count exceeds
/// 2⁵⁰ and u64 holds them.
fn signed_rank_sum_p(ranks: &[f64], r_plus: f64) -> f64 {
    let doubled: Vec<usize> = ranks.iter().map(|r| (2.0 * r).round() as usize).collect();
    let total: usize = doubled.iter().sum();
    let mut ways = vec![0u64; total + 1];
    ways[0] = 1;
    let mut reach = 0;
    for &rank in &doubled {
        reach += rank;
        for sum in (rank..=reach).rev() {
            ways[sum] += ways[sum - rank];
        }
    }
    let observed = (2.0 * r_plus).round() as usize;
    let at_most: u64 = ways[..=observed].iter().sum();
    let at_least: u64 = ways[observed..].iter().sum();
    let all = (1u64 << ranks.len()) as f64;
    (2.0 * at_most.min(at_least) as f64 / all).min(1.0)
}

/// The paired t-test of differences dᵢ = xᵢ − yᵢ, two-sided: is their mean zero?
///
/// ```text
/// t = d̄ / (s_d/√n),   df = n − 1,   p = 2 P(T_df ≥ |t|)
/// ```
///
/// Student (1908), "The probable error of a mean", Biometrika 6, 1–25. Reference:
/// `scipy.stats.ttest_rel(x, y)`. Needs two differences; when they are all equal the test is
/// [`StatsError::Undefined`].
pub fn paired_t_test(differences: &[f64]) -> Result<TTest, StatsError> {
    if differences.len() < 2 {
        let got = differences.len();
        return Err(StatsError::TooFewObservations { what: "a paired t-test", needed: 2, got });
    }
    if !all_finite(differences) {
        return Err(StatsError::InvalidArgument("differences must be finite"));
    }
    let n = differences.len() as f64;
    let mean = differences.iter().sum::<f64>() / n;
    let variance = differences.iter().map(|d| (d - mean) * (d - mean)).sum::<f64>() / (n - 1.0);
    if variance <= 0.0 {
        return Err(StatsError::Undefined("every difference is the same"));
    }
    let t = mean / (variance / n).sqrt();
    let df = n - 1.0;
    Ok(TTest { t, df, p_value: t_two_sided(t, df)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discordant_pairs_are_counted_by_direction() {
        let pairs = [(true, true), (true, false), (false, true), (true, false), (false, false)];
        assert_eq!(discordant_counts(pairs), (2, 1));
    }

    #[test]
    fn mcnemar_without_discordant_pairs() {
        assert_eq!(mcnemar_exact(0, 0).unwrap().p_value, 1.0);
        assert!(matches!(mcnemar_chi_squared(0, 0), Err(StatsError::Undefined(_))));
    }

    #[test]
    fn mcnemar_exact_by_hand() {
        // b = 1, c = 5: P(X ≤ 1) = (1 + 6)/64.
        let test = mcnemar_exact(1, 5).unwrap();
        assert!((test.p_value - 14.0 / 64.0).abs() < 1e-12);
        assert_eq!(test.statistic, 1.0);
    }

    #[test]
    fn wilcoxon_exact_by_hand() {
        // Ranks 1..4 all positive: only one of 16 subsets reaches 10, so p = 2/16.
        let test = wilcoxon_signed_rank(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(test.method, WilcoxonMethod::Exact);
        assert_eq!((test.r_plus, test.r_minus, test.statistic), (10.0, 0.0, 0.0));
        assert!((test.p_value - 0.125).abs() < 1e-15);
    }

    #[test]
    fn wilcoxon_chooses_its_method_like_the_reference() {
        let method = |d: &[f64]| wilcoxon_signed_rank(d).unwrap().method;
        let distinct: Vec<f64> = (1..=50).map(|i| if i % 3 == 0 { -i } else { i } as f64).collect();
        assert_eq!(method(&distinct), WilcoxonMethod::Exact);
        let mut longer = distinct.clone();
        longer.push(51.0);
        assert_eq!(method(&longer), WilcoxonMethod::Normal);
        assert_eq!(method(&[1.0, -1.0, 2.0, 3.0]), WilcoxonMethod::Permutation);
        assert_eq!(method(&[0.0, -1.0, 2.0, 3.0]), WilcoxonMethod::Permutation);
        let mut tied: Vec<f64> = (1..=14).map(f64::from).collect();
        tied[0] = 2.0;
        assert_eq!(method(&tied), WilcoxonMethod::Normal);
    }

    #[test]
    fn wilcoxon_of_zeros_is_undefined() {
        assert!(matches!(wilcoxon_signed_rank(&[0.0, 0.0]), Err(StatsError::Undefined(_))));
        assert!(matches!(wilcoxon_signed_rank(&[1.0, f64::NAN]), Err(StatsError::InvalidArgument(_))));
    }

    #[test]
    fn paired_t_rejects_constant_differences() {
        assert!(matches!(paired_t_test(&[0.5, 0.5, 0.5]), Err(StatsError::Undefined(_))));
        assert!(matches!(paired_t_test(&[0.5]), Err(StatsError::TooFewObservations { .. })));
    }
}
