//! `modelperf-stats` owns the statistics the analyzer's comparisons, trends and regression
//! checks rest on: pure functions of numbers, no I/O. Each function documents its formula and
//! cites its method; `tests/reference.rs` checks them against the Python libraries statisticians
//! use (statsmodels, scipy, pymannkendall) to 1e-6, with the fixtures that
//! `reference/gen_fixtures.py` computes (`reference/README.md` says how to regenerate them).
//!
//! ```
//! use modelperf_stats::{holm, two_proportion_z_test, wilson_interval};
//!
//! // Model A succeeded 172 times in 200 tasks, model B 151 times in 200.
//! let a = wilson_interval(172, 200, 0.95)?;
//! assert!(a.low > 0.80 && a.high < 0.91);
//! let test = two_proportion_z_test(172, 200, 151, 200)?;
//! // Three comparisons were made in this run: correct for them.
//! let adjusted = holm(&[test.p_value, 0.03, 0.4])?;
//! assert!(adjusted[0] < 0.05);
//! # Ok::<(), modelperf_stats::StatsError>(())
//! ```
//!
//! Layout:
//! - [`proportion`]: [`wilson_interval`], [`two_proportion_z_test`],
//!   [`newcombe_difference_interval`];
//! - [`moments`]: running [`Moments`] `{mean, m2, n}` and the t interval of a mean,
//!   [`welch_t_test`], [`welch_difference_interval`];
//! - [`paired`]: [`mcnemar_exact`], [`mcnemar_chi_squared`], [`wilcoxon_signed_rank`],
//!   [`paired_t_test`], for benchmark runs where two models answered the same cases;
//! - [`multitest`]: [`holm`] and [`benjamini_hochberg`] adjusted p-values;
//! - [`trend`]: [`theil_sen`] with its interval, [`mann_kendall_hamed_rao`];
//! - [`bootstrap`]: the seeded percentile [`Bootstrap`] over windows;
//! - [`ipw`]: inverse-propensity-weighted means, [`ipw_mean`] and
//!   [`ipw_mean_self_normalised`];
//! - [`error`]: what can go wrong, [`StatsError`];
//! - `dist` (distribution functions over `statrs`) and `rank` (ranks, medians), internal.
//!
//! Conventions: intervals take a `confidence` (0.95), hypothesis tests are two-sided and
//! return their p-value, and inputs outside a method's domain are errors, never NaN.

pub mod bootstrap;
mod dist;
pub mod error;
pub mod ipw;
pub mod moments;
pub mod multitest;
pub mod paired;
pub mod proportion;
mod rank;
pub mod trend;

pub use bootstrap::{Bootstrap, BootstrapInterval};
pub use error::StatsError;
pub use ipw::{IpwEstimate, Logged, ipw_mean, ipw_mean_self_normalised};
pub use moments::{Moments, Summary, TTest, welch_difference_interval, welch_t_test, welch_t_test_moments};
pub use multitest::{benjamini_hochberg, holm};
pub use paired::{
    McNemar, Wilcoxon, WilcoxonMethod, discordant_counts, mcnemar_chi_squared, mcnemar_exact, paired_t_test,
    wilcoxon_signed_rank,
};
pub use proportion::{ZTest, newcombe_difference_interval, two_proportion_z_test, wilson_interval};
pub use trend::{MannKendall, TheilSen, Trend, mann_kendall_hamed_rao, theil_sen, theil_sen_series};

/// A confidence interval [low, high].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// The lower bound.
    pub low: f64,
    /// The upper bound.
    pub high: f64,
}
