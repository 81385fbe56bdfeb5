//! The distribution functions the tests need, over `statrs`, with the parameter checks turned
//! into [`StatsError`]s instead of panics.

use statrs::distribution::{Binomial, ChiSquared, ContinuousCDF, DiscreteCDF, Normal, StudentsT};

use crate::StatsError;

/// Φ(x), the standard normal CDF.
pub(crate) fn normal_cdf(x: f64) -> f64 {
    Normal::standard().cdf(x)
}

/// 1 − Φ(x), computed without cancellation in the upper tail.
pub(crate) fn normal_sf(x: f64) -> f64 {
    Normal::standard().sf(x)
}

/// Φ⁻¹(p) for p in (0, 1).
pub(crate) fn normal_quantile(p: f64) -> f64 {
    Normal::standard().inverse_cdf(p)
}

/// The two-sided p-value of a standard normal statistic: 2 (1 − Φ(|z|)).
pub(crate) fn normal_two_sided(z: f64) -> f64 {
    (2.0 * normal_sf(z.abs())).min(1.0)
}

fn students_t(df: f64) -> Result<StudentsT, StatsError> {
    StudentsT::new(0.0, 1.0, df).map_err(|_| StatsError::InvalidArgument("degrees of freedom must be positive"))
}

/// The two-sided p-value of a Student t statistic with `df` degrees of freedom.
pub(crate) fn t_two_sided(t: f64, df: f64) -> Result<f64, StatsError> {
    Ok((2.0 * students_t(df)?.sf(t.abs())).min(1.0))
}

/// The quantile of order p of Student's t with `df` degrees of freedom.
pub(crate) fn t_quantile(p: f64, df: f64) -> Result<f64, StatsError> {
    Ok(students_t(df)?.inverse_cdf(p))
}

/// P(X ≥ x) for X ~ χ²(df).
pub(crate) fn chi_squared_sf(x: f64, df: f64) -> Result<f64, StatsError> {
    let dist = ChiSquared::new(df).map_err(|_| StatsError::InvalidArgument("degrees of freedom must be positive"))?;
    Ok(dist.sf(x))
}

/// P(X ≤ k) for X ~ Binomial(n, p).
pub(crate) fn binomial_cdf(k: u64, n: u64, p: f64) -> Result<f64, StatsError> {
    let dist =
        Binomial::new(p, n).map_err(|_| StatsError::InvalidArgument("a binomial probability must be in [0, 1]"))?;
    Ok(dist.cdf(k))
}

/// Checks a confidence level and returns the two-sided tail probability α/2.
pub(crate) fn half_alpha(confidence: f64) -> Result<f64, StatsError> {
    if confidence > 0.0 && confidence < 1.0 {
        Ok((1.0 - confidence) / 2.0)
    } else {
        Err(StatsError::InvalidArgument("confidence must be in (0, 1)"))
    }
}
