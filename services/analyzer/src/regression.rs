//! Regressions: is a series worse in its current period than in its own baseline just before?
//!
//! Every `regression_every` windows (aligned on the epoch, like the trends, so a replay runs
//! them at the same windows) each series' last `regression_current` windows are tested against
//! the `regression_baseline` windows before them:
//! - **latency**: the ratio of the p95 of the current period's merged sketch to the baseline's,
//!   with a percentile bootstrap interval over units of `regression_block` consecutive windows
//!   (one merged sketch per unit; blocks keep the dependence between neighbouring windows, and
//!   bound what a series holds to one sketch per block). Flagged when the interval's lower
//!   bound exceeds `regression_latency_ratio` (1.15): the p95 is at least that much higher,
//!   with 95 % confidence. Its p-value, for the family correction, is the one-sided test of
//!   "the ratio is at most 1.15" by the normal approximation to the bootstrap distribution of
//!   the log ratio.
//! - **success rate**: the two-proportion z-test on the pooled completions, with Newcombe's
//!   interval of the difference; flagged when significant and at least
//!   `regression_success_points` lower.
//! - **quality**: Welch's t-test from the periods' `{mean, m2, n}`, with Welch's interval of the
//!   difference; flagged when significant and at least `regression_quality_drop` lower.
//!
//! The p-values of one run — every series × metric tested — are adjusted together by Holm, so
//! the chance of any false regression in a run is at most `regression_alpha`. Regressions are
//! published on `perf.insights.regression`, labelled observational (production traffic). The
//! minimum effects matter: pooled tests over thousands of events find differences too small to
//! act on, and windows of a day are not exchangeable (hour-of-day effects), which a minimum
//! effect absorbs where the tests alone would not.
//!
//! A revision of a window already folded into its block is not reflected (a block cannot
//! subtract); the replay after a restart folds the same windows in the same order, so the
//! results are the same.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, TimeZone, Utc};
use modelperf_schema::messages::{Design, Direction, Insight};
use modelperf_sketch::Sketch;
use modelperf_stats::{
    Bootstrap, Moments, holm, newcombe_difference_interval, two_proportion_z_test, welch_difference_interval,
    welch_t_test_moments,
};
use sha2::{Digest, Sha256};

use crate::config::AnalyzerConfig;
use crate::detect::Observation;
use crate::trend::{describe, insight_id};

/// One block of consecutive windows of a series: the bootstrap's unit.
#[derive(Debug, Clone)]
struct Unit {
    /// The block index (window index / block length).
    block: i64,
    /// Events (of any kind) in the block.
    events: u64,
    trials: u64,
    failures: u64,
    quality: Moments,
    /// The merged latency sketch, when a window of the block had one.
    sketch: Option<Sketch>,
}

/// The blocks of one series that the next runs need.
#[derive(Debug, Clone, Default)]
pub struct Periods {
    units: VecDeque<Unit>,
}

impl Periods {
    /// Folds window `index` into its block.
    pub fn record(&mut self, index: i64, obs: &Observation, sketch: Option<&Sketch>, t: &AnalyzerConfig) {
        if obs.count == 0 {
            return;
        }
        let block = index.div_euclid(t.regression_block);
        let at = match self.units.iter().position(|u| u.block >= block) {
            Some(i) if self.units[i].block == block => i,
            found => {
                let i = found.unwrap_or(self.units.len());
                let unit = Unit { block, events: 0, trials: 0, failures: 0, quality: Moments::default(), sketch: None };
                self.units.insert(i, unit);
                i
            }
        };
        let unit = &mut self.units[at];
        unit.events += obs.count;
        unit.trials += obs.trials;
        unit.failures += obs.failures;
        unit.quality.merge(&obs.quality);
        if let Some(s) = sketch.filter(|s| !s.is_empty()) {
            match &mut unit.sketch {
                // Sketches of one contract share their mapping; one that does not is left out.
                Some(merged) => {
                    let _ = merged.merge(s);
                }
                None => unit.sketch = Some(s.clone()),
            }
        }
    }

    /// Drops the blocks before the one holding window `first`.
    pub fn prune(&mut self, first: i64, t: &AnalyzerConfig) {
        let block = first.div_euclid(t.regression_block);
        while self.units.front().is_some_and(|u| u.block < block) {
            self.units.pop_front();
        }
    }

    /// Whether no block is held.
    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }
}

/// The metrics tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    LatencyP95Ratio,
    SuccessRate,
    QualityMean,
}

impl Metric {
    fn name(self) -> &'static str {
        match self {
            Metric::LatencyP95Ratio => "latency_p95_ratio",
            Metric::SuccessRate => "success_rate",
            Metric::QualityMean => "quality_mean",
        }
    }
}

/// One test of one series, before the correction.
struct Tested<'a> {
    dims: &'a BTreeMap<String, String>,
    metric: Metric,
    test: &'static str,
    statistic: f64,
    p_value: f64,
    /// The ratio (latency) or the difference current − baseline, with its interval.
    estimate: f64,
    low: f64,
    high: f64,
    /// Whether the effect is large enough to report, the test aside.
    large: bool,
    n: BTreeMap<String, u64>,
    current: String,
    baseline: String,
}

fn merged<'a>(units: impl IntoIterator<Item = &'a Sketch>) -> Sketch {
    let mut s = Sketch::new();
    for u in units {
        let _ = s.merge(u);
    }
    s
}

/// A seed per series and run: resamples independent between series, the same on a replay.
fn seed(dims: &BTreeMap<String, String>, index: i64) -> u64 {
    let mut h = Sha256::new();
    for (k, v) in dims {
        h.update(format!("{k}={v}\n").as_bytes());
    }
    h.update(index.to_le_bytes());
    let d = h.finalize();
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

fn test_series<'a>(dims: &'a BTreeMap<String, String>, p: &Periods, index: i64, t: &AnalyzerConfig) -> Vec<Tested<'a>> {
    let end_block = (index + 1).div_euclid(t.regression_block);
    let current_first = end_block - t.regression_current / t.regression_block;
    let baseline_first = current_first - t.regression_baseline / t.regression_block;
    let current: Vec<&Unit> = p.units.iter().filter(|u| (current_first..end_block).contains(&u.block)).collect();
    let baseline: Vec<&Unit> = p.units.iter().filter(|u| (baseline_first..current_first).contains(&u.block)).collect();
    let mut out = Vec::new();
    let periods = |what: &str, c: usize, b: usize| {
        (format!("{c} blocks of {} windows with {what}", t.regression_block), format!("{b} blocks with {what}"))
    };

    let (sc, sb): (Vec<&Sketch>, Vec<&Sketch>) = (
        current.iter().filter_map(|u| u.sketch.as_ref()).collect(),
        baseline.iter().filter_map(|u| u.sketch.as_ref()).collect(),
    );
    if sc.len() >= t.regression_min_units && sb.len() >= t.regression_min_units {
        let bootstrap = Bootstrap { resamples: t.regression_resamples, confidence: 0.95, seed: seed(dims, index) };
        let log_ratio = |c: &[&&Sketch], b: &[&&Sketch]| {
            let (pc, pb) =
                (merged(c.iter().map(|s| **s)).quantile(0.95)?, merged(b.iter().map(|s| **s)).quantile(0.95)?);
            (pc > 0.0 && pb > 0.0).then(|| (pc / pb).ln())
        };
        if let Ok(ci) = bootstrap.interval_two_sample(&sc, &sb, log_ratio)
            && let Some(p_value) = ci.p_above(t.regression_latency_ratio.ln())
        {
            let count = |s: &[&Sketch]| s.iter().map(|s| s.count()).sum::<f64>().round() as u64;
            let (current, baseline) = periods("latencies", sc.len(), sb.len());
            out.push(Tested {
                dims,
                metric: Metric::LatencyP95Ratio,
                test: "bootstrap_p95_ratio",
                statistic: (ci.estimate - t.regression_latency_ratio.ln()) / ci.standard_error,
                p_value,
                estimate: ci.estimate.exp(),
                low: ci.low.exp(),
                high: ci.high.exp(),
                large: ci.low.exp() > t.regression_latency_ratio,
                n: BTreeMap::from([
                    ("current_latencies".to_owned(), count(&sc)),
                    ("baseline_latencies".to_owned(), count(&sb)),
                    ("current_blocks".to_owned(), sc.len() as u64),
                    ("baseline_blocks".to_owned(), sb.len() as u64),
                ]),
                current,
                baseline,
            });
        }
    }

    let with_trials = |units: &[&Unit]| units.iter().filter(|u| u.trials > 0).count();
    let (tc, tb) = (with_trials(&current), with_trials(&baseline));
    if tc >= t.regression_min_units && tb >= t.regression_min_units {
        let pooled = |units: &[&Unit]| {
            let (n, f) = units.iter().fold((0, 0), |(n, f), u| (n + u.trials, f + u.failures));
            (n - f, n)
        };
        let ((okc, nc), (okb, nb)) = (pooled(&current), pooled(&baseline));
        if let (Ok(z), Ok(ci)) =
            (two_proportion_z_test(okc, nc, okb, nb), newcombe_difference_interval(okc, nc, okb, nb, 0.95))
        {
            let diff = okc as f64 / nc as f64 - okb as f64 / nb as f64;
            let (current, baseline) = periods("completions", tc, tb);
            out.push(Tested {
                dims,
                metric: Metric::SuccessRate,
                test: "two_proportion_z",
                statistic: z.z,
                p_value: z.p_value,
                estimate: diff,
                low: ci.low,
                high: ci.high,
                large: diff <= -t.regression_success_points,
                n: BTreeMap::from([("current".to_owned(), nc), ("baseline".to_owned(), nb)]),
                current,
                baseline,
            });
        }
    }

    let judged = |units: &[&Unit]| units.iter().filter(|u| u.quality.n > 0).count();
    let (jc, jb) = (judged(&current), judged(&baseline));
    if jc >= t.regression_min_units && jb >= t.regression_min_units {
        let moments = |units: &[&Unit]| {
            let mut m = Moments::default();
            units.iter().for_each(|u| m.merge(&u.quality));
            m
        };
        let (mc, mb) = (moments(&current), moments(&baseline));
        if let (Ok(w), Some(c), Some(b)) = (welch_t_test_moments(&mc, &mb), mc.summary(), mb.summary())
            && let Ok(ci) = welch_difference_interval(&c, &b, 0.95)
        {
            let (current, baseline) = periods("judgments", jc, jb);
            out.push(Tested {
                dims,
                metric: Metric::QualityMean,
                test: "welch_t",
                statistic: w.t,
                p_value: w.p_value,
                estimate: c.mean - b.mean,
                low: ci.low,
                high: ci.high,
                large: c.mean - b.mean <= -t.regression_quality_drop,
                n: BTreeMap::from([("current".to_owned(), mc.n), ("baseline".to_owned(), mb.n)]),
                current,
                baseline,
            });
        }
    }
    out
}

/// One regression run over the series of one window length at window `index`: every series ×
/// metric is tested against its baseline, the p-values adjusted together (Holm), and the
/// regressions — significant after adjustment and large enough — returned as insights.
pub fn run<'a>(
    window: &str,
    secs: i64,
    index: i64,
    series: impl IntoIterator<Item = (&'a BTreeMap<String, String>, &'a Periods)>,
    t: &AnalyzerConfig,
) -> Vec<Insight> {
    let tested: Vec<Tested> = series.into_iter().flat_map(|(dims, p)| test_series(dims, p, index, t)).collect();
    let raw: Vec<f64> = tested.iter().map(|x| x.p_value).collect();
    let Ok(adjusted) = holm(&raw) else { return Vec::new() };
    let at = |i: i64| Utc.timestamp_opt(i * secs, 0).single().unwrap_or(DateTime::<Utc>::MAX_UTC);
    let (end, split) = (index + 1, index + 1 - t.regression_current);
    let start = split - t.regression_baseline;
    let family = tested.len();
    let mut out = Vec::new();
    for (x, p_adjusted) in tested.into_iter().zip(adjusted) {
        if p_adjusted > t.regression_alpha || !x.large {
            continue;
        }
        let effect = match x.metric {
            Metric::LatencyP95Ratio => format!(
                "p95 latency is {:.2}× its baseline (95 % interval {:.2} to {:.2}, above {:.2})",
                x.estimate, x.low, x.high, t.regression_latency_ratio
            ),
            Metric::SuccessRate => format!(
                "success rate {:+.1} points against its baseline (95 % interval {:+.1} to {:+.1})",
                100.0 * x.estimate,
                100.0 * x.low,
                100.0 * x.high
            ),
            Metric::QualityMean => format!(
                "mean quality {:+.3} against its baseline (95 % interval {:+.3} to {:+.3})",
                x.estimate, x.low, x.high
            ),
        };
        let description = format!(
            "{}: {effect} — the last {} windows of {window} ({}) against the {} before ({}); a regression \
             ({}, p = {:.2e}, Holm-adjusted over {family} tests {:.2e})",
            describe(x.dims),
            t.regression_current,
            x.current,
            t.regression_baseline,
            x.baseline,
            x.test,
            x.p_value,
            p_adjusted,
        );
        out.push(Insight {
            id: insight_id("regression", window, x.dims, x.metric.name(), index),
            kind: "regression".into(),
            subject: x.dims.clone(),
            metric: x.metric.name().into(),
            test: x.test.into(),
            statistic: x.statistic,
            estimate: x.estimate,
            ci_low: x.low,
            ci_high: x.high,
            p_adjusted,
            n: x.n,
            design: Design::Observational,
            start: at(start),
            end: at(end),
            description,
            p_value: Some(x.p_value),
            correction: Some("holm".into()),
            direction: Some(Direction::Decline),
            window: Some(window.to_owned()),
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

#[cfg(test)]
mod tests;
