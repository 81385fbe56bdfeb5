//! The percentile bootstrap over resampling units (windows, for the analyzer: each window's
//! merged sketch is one unit), deterministic for a given seed.

use crate::StatsError;
use crate::dist::half_alpha;

/// How to bootstrap: how many resamples, the interval's confidence and the seed of the random
/// generator. The same settings and data always give the same interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bootstrap {
    /// Resamples to draw (2 000 is plenty for a 95 % percentile interval).
    pub resamples: usize,
    /// The confidence of the interval, in (0, 1).
    pub confidence: f64,
    /// Seeds the generator.
    pub seed: u64,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Self { resamples: 2000, confidence: 0.95, seed: 0 }
    }
}

/// A statistic with its bootstrap percentile interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BootstrapInterval {
    /// The statistic on the data as observed.
    pub estimate: f64,
    /// The α/2 quantile of the resampled statistics.
    pub low: f64,
    /// The 1 − α/2 quantile of the resampled statistics.
    pub high: f64,
    /// Resamples whose statistic was defined (the closure returned a finite value); the
    /// quantiles are over these.
    pub resamples: usize,
    /// The standard deviation of the resampled statistics: the bootstrap standard error.
    pub standard_error: f64,
}

impl BootstrapInterval {
    /// The one-sided p-value of the null hypothesis "the statistic is at most `null`", by the
    /// normal approximation to the bootstrap distribution: P(Z ≥ (estimate − null) / standard
    /// error). Unlike counting resamples below `null` it is not limited to multiples of
    /// 1 / resamples, which matters once many such p-values are adjusted together. Bootstrap a
    /// ratio on the log scale (its distribution is closer to normal there) and pass the log of
    /// the null ratio. `None` when the standard error is 0 (every resample equal).
    pub fn p_above(&self, null: f64) -> Option<f64> {
        (self.standard_error > 0.0).then(|| crate::dist::normal_sf((self.estimate - null) / self.standard_error))
    }
}

impl Bootstrap {
    /// The percentile bootstrap interval of `statistic` over `units`: draw `resamples` samples
    /// of `units.len()` units with replacement, evaluate the statistic on each, and take the
    /// α/2 and 1 − α/2 quantiles of the results (linear interpolation between order
    /// statistics, numpy's default).
    ///
    /// Efron, B. and Tibshirani, R. J. (1993), "An Introduction to the Bootstrap", ch. 13.
    /// Resampling whole windows keeps whatever dependence there is inside a window; the windows
    /// themselves are treated as exchangeable.
    ///
    /// The statistic returns `None` (or a non-finite value) where it is undefined; such
    /// resamples are left out and [`BootstrapInterval::resamples`] says how many remained.
    /// Fails with [`StatsError::Undefined`] when the statistic is undefined on the data or on
    /// every resample.
    pub fn interval<T>(
        &self,
        units: &[T],
        mut statistic: impl FnMut(&[&T]) -> Option<f64>,
    ) -> Result<BootstrapInterval, StatsError> {
        let mut resample: Vec<&T> = Vec::with_capacity(units.len());
        self.run(units.len(), |rng| {
            resample.clear();
            match rng {
                None => resample.extend(units),
                Some(rng) => resample.extend((0..units.len()).map(|_| &units[rng.below(units.len())])),
            }
            statistic(&resample)
        })
    }

    /// The percentile bootstrap interval of a statistic of two independent samples (a p95
    /// ratio between a current period and its baseline): each resample draws `a.len()` units
    /// of `a` and `b.len()` units of `b`, with replacement and independently. Otherwise as
    /// [`Bootstrap::interval`].
    pub fn interval_two_sample<A, B>(
        &self,
        a: &[A],
        b: &[B],
        mut statistic: impl FnMut(&[&A], &[&B]) -> Option<f64>,
    ) -> Result<BootstrapInterval, StatsError> {
        let mut resample_a: Vec<&A> = Vec::with_capacity(a.len());
        let mut resample_b: Vec<&B> = Vec::with_capacity(b.len());
        self.run(a.len().min(b.len()), |rng| {
            resample_a.clear();
            resample_b.clear();
            match rng {
                None => {
                    resample_a.extend(a);
                    resample_b.extend(b);
                }
                Some(rng) => {
                    resample_a.extend((0..a.len()).map(|_| &a[rng.below(a.len())]));
                    resample_b.extend((0..b.len()).map(|_| &b[rng.below(b.len())]));
                }
            }
            statistic(&resample_a, &resample_b)
        })
    }

    /// Evaluates the statistic on the data as observed (`evaluate(None)`), then on
    /// `resamples` resamples drawn with the seeded generator (`evaluate(Some(rng))`), and takes
    /// the percentile interval. `smallest` is the size of the smallest sample.
    fn run(
        &self,
        smallest: usize,
        mut evaluate: impl FnMut(Option<&mut SplitMix64>) -> Option<f64>,
    ) -> Result<BootstrapInterval, StatsError> {
        let half_alpha = half_alpha(self.confidence)?;
        if smallest == 0 {
            return Err(StatsError::TooFewObservations { what: "a bootstrap sample", needed: 1, got: 0 });
        }
        if self.resamples == 0 {
            return Err(StatsError::InvalidArgument("a bootstrap needs at least one resample"));
        }
        let mut rng = SplitMix64::new(self.seed);
        let estimate = evaluate(None)
            .filter(|v| v.is_finite())
            .ok_or(StatsError::Undefined("the statistic is undefined on the data"))?;
        let mut replicates: Vec<f64> =
            (0..self.resamples).filter_map(|_| evaluate(Some(&mut rng))).filter(|v| v.is_finite()).collect();
        if replicates.is_empty() {
            return Err(StatsError::Undefined("the statistic is undefined on every resample"));
        }
        replicates.sort_by(f64::total_cmp);
        let n = replicates.len() as f64;
        let mean = replicates.iter().sum::<f64>() / n;
        let variance =
            if n > 1.0 { replicates.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
        Ok(BootstrapInterval {
            estimate,
            low: quantile_of_sorted(&replicates, half_alpha),
            high: quantile_of_sorted(&replicates, 1.0 - half_alpha),
            resamples: replicates.len(),
            standard_error: variance.sqrt(),
        })
    }
}

/// The quantile of order q of sorted values by linear interpolation between the order
/// statistics at (m − 1)q (Hyndman and Fan's definition 7, numpy's default).
fn quantile_of_sorted(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q;
    let below = h.floor() as usize;
    let above = (below + 1).min(sorted.len() - 1);
    sorted[below] + (h - below as f64) * (sorted[above] - sorted[below])
}

/// SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
/// OOPSLA 2014): tiny, fast, and fixed here, so a seed means the same resamples in every
/// version of this crate, whatever the `rand` crate does.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform index in [0, n) by Lemire's multiply-shift (bias below n/2⁶⁴).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// A uniform value in [0, 1) with 53 random bits.
    #[cfg(test)]
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal value (Box–Muller).
    #[cfg(test)]
    pub(crate) fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit();
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean(values: &[&f64]) -> Option<f64> {
        (!values.is_empty()).then(|| values.iter().copied().sum::<f64>() / values.len() as f64)
    }

    #[test]
    fn the_same_seed_gives_the_same_interval() {
        let mut rng = SplitMix64::new(7);
        let data: Vec<f64> = (0..40).map(|_| rng.normal()).collect();
        let settings = Bootstrap { resamples: 500, confidence: 0.9, seed: 42 };
        let first = settings.interval(&data, mean).unwrap();
        assert_eq!(first, settings.interval(&data, mean).unwrap());
        let other = Bootstrap { seed: 43, ..settings }.interval(&data, mean).unwrap();
        assert_ne!(first, other);
        assert_eq!(first.estimate, other.estimate);
        assert!(first.low < first.estimate && first.estimate < first.high, "{first:?}");
        assert_eq!(first.resamples, 500);
    }

    #[test]
    fn the_interval_of_a_mean_covers_it_about_as_often_as_promised() {
        // 400 samples of 30 normal values with mean 1: a 95 % percentile interval of the mean
        // should cover 1 in ~93–95 % of them (the percentile bootstrap runs a little short at
        // n = 30). Seeded, so the outcome is fixed; the band allows for ±4 standard errors.
        let mut rng = SplitMix64::new(2024);
        let mut covered = 0;
        for trial in 0..400 {
            let data: Vec<f64> = (0..30).map(|_| 1.0 + rng.normal()).collect();
            let settings = Bootstrap { resamples: 400, confidence: 0.95, seed: trial };
            let ci = settings.interval(&data, mean).unwrap();
            covered += usize::from(ci.low <= 1.0 && 1.0 <= ci.high);
        }
        let coverage = covered as f64 / 400.0;
        assert!((0.89..=0.985).contains(&coverage), "coverage {coverage}");
    }

    #[test]
    fn a_ratio_of_two_samples_covers_the_true_ratio() {
        // Latencies of a baseline with mean 100 and of a current period with mean 140.
        let mut rng = SplitMix64::new(99);
        let mut covered = 0;
        for trial in 0..200 {
            let baseline: Vec<f64> = (0..40).map(|_| 100.0 + 10.0 * rng.normal()).collect();
            let current: Vec<f64> = (0..25).map(|_| 140.0 + 14.0 * rng.normal()).collect();
            let settings = Bootstrap { resamples: 300, confidence: 0.95, seed: trial };
            let ci = settings.interval_two_sample(&current, &baseline, |c, b| Some(mean(c)? / mean(b)?)).unwrap();
            covered += usize::from(ci.low <= 1.4 && 1.4 <= ci.high);
        }
        let coverage = covered as f64 / 200.0;
        assert!((0.87..=0.99).contains(&coverage), "coverage {coverage}");
    }

    /// The standard error is the spread of the resamples (for a mean, close to σ/√n), and the
    /// one-sided p-value of a null far below the estimate is tiny, of the estimate itself ½.
    #[test]
    fn the_standard_error_and_the_one_sided_p_value() {
        let mut rng = SplitMix64::new(5);
        let data: Vec<f64> = (0..100).map(|_| 10.0 + 2.0 * rng.normal()).collect();
        let ci = Bootstrap { resamples: 2000, confidence: 0.95, seed: 1 }.interval(&data, mean).unwrap();
        assert!((ci.standard_error - 0.2).abs() < 0.04, "{ci:?}");
        assert!(ci.p_above(ci.estimate - 1.0).unwrap() < 1e-4);
        assert!((ci.p_above(ci.estimate).unwrap() - 0.5).abs() < 1e-12);
        assert!(ci.p_above(ci.estimate + 1.0).unwrap() > 0.999);
        let flat = Bootstrap::default().interval(&[3.0, 3.0, 3.0], mean).unwrap();
        assert_eq!((flat.standard_error, flat.p_above(2.0)), (0.0, None));
    }

    #[test]
    fn undefined_statistics_are_reported() {
        let settings = Bootstrap::default();
        let empty: [f64; 0] = [];
        assert!(matches!(settings.interval(&empty, mean), Err(StatsError::TooFewObservations { .. })));
        assert!(matches!(settings.interval(&[1.0, 2.0], |_| None), Err(StatsError::Undefined(_))));
        // A statistic undefined on some resamples: those are left out.
        let data = [1.0, 2.0, 3.0];
        let ci = settings.interval(&data, |s| (s.iter().any(|v| **v == 1.0)).then(|| mean(s)).flatten()).unwrap();
        assert!(ci.resamples < settings.resamples && ci.resamples > settings.resamples / 2);
    }

    #[test]
    fn quantiles_interpolate_like_numpy() {
        let sorted = [1.0, 2.0, 4.0, 8.0];
        assert_eq!(quantile_of_sorted(&sorted, 0.0), 1.0);
        assert_eq!(quantile_of_sorted(&sorted, 0.5), 3.0);
        assert_eq!(quantile_of_sorted(&sorted, 1.0), 8.0);
        assert!((quantile_of_sorted(&sorted, 0.9) - 6.8).abs() < 1e-12);
    }
}
