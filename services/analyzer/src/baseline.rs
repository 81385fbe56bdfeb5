//! Robust baselines of one metric over its trailing windows.
//!
//! A baseline is what the next window is expected to be, and how much windows scatter around
//! it. Both come from the median, never the mean, so the baseline shrugs off the odd wild
//! window: the level is the median of the trailing values, corrected for a linear drift (a
//! daily cycle moves latency and traffic by tens of percent over hours, and a plain trailing
//! median lags behind it by half its length), and the scatter is the median absolute deviation
//! of the residuals, scaled to a standard deviation (×1.4826, exact for normal noise).
//!
//! The drift is the difference of the medians of the older and the newer half, per window. A
//! score divides by the scatter of a new window *and* the uncertainty of the extrapolated
//! level, so a short or noisy baseline does not inflate scores: with halves of h values the
//! median of each has variance ≈ (π/2)·σ²/h, and the level at distance d from the newer half's
//! centre, over a separation Δ between the halves' centres, has variance
//! (π/2)·σ²/h · ((1 + d/Δ)² + (d/Δ)²). The drift is followed one window past the newest value,
//! no further: a frozen baseline (its check is open) keeps the level it had.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// The scale of the median absolute deviation for normal noise: 1/Φ⁻¹(3/4).
const MAD_TO_SD: f64 = 1.482_602_218_505_602;

/// The expected value of a window and the scatter around it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Level {
    /// The expected value at the window asked for.
    pub center: f64,
    /// The standard deviation of one window around it, including the uncertainty of `center`.
    pub scale: f64,
    /// The windows it was estimated from.
    pub n: usize,
}

impl Level {
    /// How many scales `x` lies above the expected value.
    pub fn score(&self, x: f64) -> f64 {
        (x - self.center) / self.scale
    }
}

/// The trailing values of one metric, oldest first, keyed by window index.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Trailing {
    values: VecDeque<(i64, f64)>,
}

impl Trailing {
    /// Records window `index`'s value, keeping at most `cap` windows. A value for a window
    /// already held replaces it (a revision); one older than every window held is dropped.
    pub fn record(&mut self, index: i64, value: f64, cap: usize) {
        if !value.is_finite() {
            return;
        }
        match self.values.binary_search_by_key(&index, |&(i, _)| i) {
            Ok(at) => self.values[at].1 = value,
            Err(0) if self.values.len() >= cap => {}
            Err(at) => {
                self.values.insert(at, (index, value));
                while self.values.len() > cap {
                    self.values.pop_front();
                }
            }
        }
    }

    /// Replaces the value of a window already held (a revision); does nothing otherwise.
    pub fn revise(&mut self, index: i64, value: f64) {
        if value.is_finite()
            && let Ok(at) = self.values.binary_search_by_key(&index, |&(i, _)| i)
        {
            self.values[at].1 = value;
        }
    }

    /// Windows held.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Forgets everything (after a level shift was accepted as the new normal).
    pub fn clear(&mut self) {
        self.values.clear();
    }

    /// The expected value at window `at` and the scatter, from at least `min` windows; the
    /// scatter is at least `floor` (identical windows would otherwise make any change infinite).
    pub fn level(&self, at: i64, min: usize, floor: f64) -> Option<Level> {
        let n = self.values.len();
        if n < min.max(4) {
            return None;
        }
        // A drift is followed one window past the data, never further: while a check is open
        // its baseline is frozen, and extrapolating a slope over tens of windows would invent a
        // level no window ever had.
        let newest = self.values.back().map_or(at, |&(i, _)| i);
        let at = at.min(newest + 1);
        let half = n / 2;
        let (older, newer) = (self.values.range(..half), self.values.range(n - half..));
        let mut older_values: Vec<f64> = older.clone().map(|&(_, v)| v).collect();
        let mut newer_values: Vec<f64> = newer.clone().map(|&(_, v)| v).collect();
        let mut older_at: Vec<f64> = older.map(|&(i, _)| i as f64).collect();
        let mut newer_at: Vec<f64> = newer.map(|&(i, _)| i as f64).collect();
        let (m_old, m_new) = (median(&mut older_values), median(&mut newer_values));
        let (t_old, t_new) = (median(&mut older_at), median(&mut newer_at));
        let separation = t_new - t_old;
        let slope = if separation > 0.0 { (m_new - m_old) / separation } else { 0.0 };
        let fitted = |i: i64| m_new + slope * (i as f64 - t_new);
        let mut residuals: Vec<f64> = self.values.iter().map(|&(i, v)| v - fitted(i)).collect();
        let shift = median(&mut residuals);
        let mut deviations: Vec<f64> = residuals.iter().map(|r| (r - shift).abs()).collect();
        let sd = trimmed_sd(&mut deviations).max(floor);
        let reach = if separation > 0.0 { (at as f64 - t_new) / separation } else { 0.0 };
        let center_var = std::f64::consts::FRAC_PI_2 * sd * sd / half as f64 * ((1.0 + reach).powi(2) + reach.powi(2));
        Some(Level { center: fitted(at) + shift, scale: (sd * sd + center_var).sqrt(), n })
    }

    /// The values held, oldest first.
    pub fn values(&self) -> impl Iterator<Item = (i64, f64)> + '_ {
        self.values.iter().copied()
    }
}

/// The standard deviation of residuals from their absolute deviations (reordered): the
/// median absolute deviation finds the outliers (beyond 3 of its standard deviations), and the
/// root mean square of the rest, corrected for the trimming of a normal sample at ±3σ (its
/// variance is 0.9733σ²), is the estimate. The MAD alone keeps 37 % of the efficiency of a
/// standard deviation, and over 60 windows its own noise alone makes 4σ windows many times more
/// common than for normal noise; the trimmed one keeps nearly all of it and still ignores the odd
/// wild window.
fn trimmed_sd(deviations: &mut [f64]) -> f64 {
    let mad_sd = MAD_TO_SD * median(deviations);
    let cut = 3.0 * mad_sd;
    let (sum, n) = deviations.iter().filter(|d| **d <= cut).fold((0.0, 0usize), |(s, n), d| (s + d * d, n + 1));
    if n < 2 {
        return mad_sd;
    }
    (sum / (n - 1) as f64 / TRIMMED_VARIANCE).sqrt()
}

/// The variance of a standard normal truncated to ±3.
const TRIMMED_VARIANCE: f64 = 0.973_336_924_662_541_5;

/// The median of `values` (reordered); 0 for none.
pub fn median(values: &mut [f64]) -> f64 {
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    let mid = n / 2;
    let (_, upper, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
    let upper = *upper;
    if n % 2 == 1 {
        return upper;
    }
    let lower = values[..mid].iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lower + upper) / 2.0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }

    #[test]
    fn a_revision_replaces_and_the_cap_drops_the_oldest() {
        let mut t = Trailing::default();
        for i in 0..10 {
            t.record(i, i as f64, 5);
        }
        assert_eq!(t.values().map(|(i, _)| i).collect::<Vec<_>>(), vec![5, 6, 7, 8, 9]);
        t.record(7, 70.0, 5);
        t.revise(9, 90.0);
        t.revise(2, 20.0);
        t.record(1, 1.0, 5);
        assert_eq!(t.values().collect::<Vec<_>>(), vec![(5, 5.0), (6, 6.0), (7, 70.0), (8, 8.0), (9, 90.0)]);
        t.record(10, f64::NAN, 5);
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn a_linear_drift_is_followed_and_a_wild_window_ignored() {
        let mut t = Trailing::default();
        for i in 0..60 {
            let wild = if i == 30 { 1000.0 } else { 0.0 };
            t.record(i, 10.0 + 0.5 * i as f64 + wild + if i % 2 == 0 { 0.1 } else { -0.1 }, 60);
        }
        let level = t.level(60, 20, 0.01).unwrap();
        // One wild window moves a median by at most one rank: half a window's drift here.
        assert!((level.center - 40.0).abs() < 1.0, "{level:?}");
        assert!(level.scale < 1.0, "{level:?}");
        assert!(t.level(60, 61, 0.01).is_none());
    }

    proptest! {
        #[test]
        fn the_level_of_a_constant_is_the_constant(c in -1e6f64..1e6, n in 4usize..100) {
            let mut t = Trailing::default();
            for i in 0..n as i64 { t.record(i, c, 200); }
            let level = t.level(n as i64, 4, 1e-3).unwrap();
            prop_assert!((level.center - c).abs() <= 1e-9 * c.abs().max(1.0));
            prop_assert!(level.scale >= 1e-3);
        }

        #[test]
        fn shifting_every_value_shifts_the_level(values in proptest::collection::vec(-100f64..100.0, 8..80), d in -50f64..50.0) {
            let (mut a, mut b) = (Trailing::default(), Trailing::default());
            for (i, v) in values.iter().enumerate() {
                a.record(i as i64, *v, 100);
                b.record(i as i64, v + d, 100);
            }
            let (la, lb) = (a.level(values.len() as i64, 4, 0.01).unwrap(), b.level(values.len() as i64, 4, 0.01).unwrap());
            prop_assert!((lb.center - la.center - d).abs() < 1e-6);
            prop_assert!((lb.scale - la.scale).abs() < 1e-6);
        }
    }
}
