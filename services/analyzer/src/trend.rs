//! Trends: does a metric of a series drift over the trailing windows, which way, how fast, and is
//! that good or bad for the model?
//!
//! Every `trend_every` windows (aligned on the epoch, so a replay runs them at the same windows)
//! each series' last `trend_windows` windows are tested per metric: the Mann–Kendall test with
//! Hamed and Rao's variance correction for autocorrelation (consecutive windows of one metric are
//! rarely independent, and the plain test then finds trends in noise) decides whether there is a
//! monotonic trend, and the Theil–Sen slope over the windows' times says how steep it is, with its
//! interval. The p-values of one run (every series × metric tested) are adjusted together by
//! Benjamini–Hochberg; a trend significant after adjustment is published on
//! `perf.insights.trend` with its meaning: rising latency or cost is a decline, rising success
//! rate or quality an improvement.
//!
//! Mann, H. B. (1945), Econometrica 13; Hamed, K. H. and Rao, A. R. (1998), "A modified
//! Mann–Kendall trend test for autocorrelated data", Journal of Hydrology 204, 182–196; Sen, P. K.
//! (1968), JASA 63; Benjamini, Y. and Hochberg, Y. (1995), JRSS B 57.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, TimeZone, Utc};
use modelperf_schema::messages::{Design, Direction, Insight};
use modelperf_stats::{MannKendall, TheilSen, benjamini_hochberg, mann_kendall_hamed_rao, theil_sen};
use sha2::{Digest, Sha256};

use crate::config::AnalyzerConfig;
use crate::detect::Observation;

/// The metrics whose trends are tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// p95 latency (ms) of the window.
    LatencyP95,
    /// Successes / (successes + failures), unweighted.
    SuccessRate,
    /// Mean judgment score.
    QualityMean,
    /// Cost (USD) per weighted event, in windows whose events were all priced.
    CostPerEvent,
}

impl Metric {
    /// Every metric, in the order of a [`Point`]'s values.
    pub const ALL: [Metric; 4] = [Metric::LatencyP95, Metric::SuccessRate, Metric::QualityMean, Metric::CostPerEvent];

    /// The name in an insight's `metric`.
    pub fn name(self) -> &'static str {
        match self {
            Metric::LatencyP95 => "latency_p95_ms",
            Metric::SuccessRate => "success_rate",
            Metric::QualityMean => "quality_mean",
            Metric::CostPerEvent => "cost_per_event_usd",
        }
    }

    /// Words for a description.
    fn words(self) -> &'static str {
        match self {
            Metric::LatencyP95 => "p95 latency",
            Metric::SuccessRate => "success rate",
            Metric::QualityMean => "mean quality",
            Metric::CostPerEvent => "cost per event",
        }
    }

    /// Whether a larger value is better for the model.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Metric::SuccessRate | Metric::QualityMean)
    }

    /// What a significant rise (`rising`) or fall means.
    pub fn direction(self, rising: bool) -> Direction {
        if rising == self.higher_is_better() { Direction::Improvement } else { Direction::Decline }
    }

    /// The window's value, when the window has enough data for it.
    fn value(self, obs: &Observation, t: &AnalyzerConfig) -> Option<f64> {
        let enough = obs.count >= t.min_events;
        match self {
            Metric::LatencyP95 => obs.p95_ms.filter(|_| enough),
            Metric::SuccessRate => (obs.trials >= t.min_events).then(|| 1.0 - obs.failures as f64 / obs.trials as f64),
            Metric::QualityMean => (obs.quality.n >= t.min_quality_n).then_some(obs.quality.mean),
            Metric::CostPerEvent => obs.cost_per_event.filter(|_| enough),
        }
    }
}

/// One window of a series, as the trends see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// The window index (start / window length).
    pub index: i64,
    /// Events in the window.
    pub count: u64,
    /// One value per entry of [`Metric::ALL`].
    pub values: [Option<f64>; 4],
}

/// The trailing windows of one series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    points: VecDeque<Point>,
}

impl History {
    /// Records window `index` (a revision replaces the window's point).
    pub fn record(&mut self, index: i64, obs: &Observation, t: &AnalyzerConfig) {
        if obs.count == 0 {
            return;
        }
        let point = Point { index, count: obs.count, values: Metric::ALL.map(|m| m.value(obs, t)) };
        match self.points.iter().position(|p| p.index >= index) {
            Some(i) if self.points[i].index == index => self.points[i] = point,
            Some(i) => self.points.insert(i, point),
            None => self.points.push_back(point),
        }
    }

    /// Drops the windows before `first`.
    pub fn prune(&mut self, first: i64) {
        while self.points.front().is_some_and(|p| p.index < first) {
            self.points.pop_front();
        }
    }

    /// Whether no window is held.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The (window index, value) pairs of a metric, oldest first, and the events behind them.
    pub fn series(&self, metric: Metric) -> (Vec<f64>, Vec<f64>, u64) {
        let slot = Metric::ALL.iter().position(|m| *m == metric).unwrap_or(0);
        let mut x = Vec::new();
        let mut y = Vec::new();
        let mut events = 0;
        for p in &self.points {
            if let Some(v) = p.values[slot] {
                x.push(p.index as f64);
                y.push(v);
                events += p.count;
            }
        }
        (x, y, events)
    }
}

/// One metric's trend over one series' windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    /// The metric.
    pub metric: Metric,
    /// Windows with a value.
    pub windows: usize,
    /// Events in them.
    pub events: u64,
    /// The first and last window index.
    pub first: i64,
    /// The last window index.
    pub last: i64,
    /// The Mann–Kendall test with the Hamed–Rao correction, on the values in window order.
    pub test: MannKendall,
    /// The Theil–Sen slope per window over the window indices, with its interval.
    pub slope: TheilSen,
    /// The median value.
    pub median: f64,
}

/// Tests one metric of a history; `None` when it has fewer than `min_points` values or the test
/// is undefined for them.
pub fn fit(history: &History, metric: Metric, t: &AnalyzerConfig) -> Option<Fit> {
    let (x, y, events) = history.series(metric);
    if y.len() < t.trend_min_points.max(3) {
        return None;
    }
    let lag = (t.trend_max_lag > 0).then_some(t.trend_max_lag);
    let test = mann_kendall_hamed_rao(&y, t.trend_alpha, lag).ok()?;
    let slope = theil_sen(&x, &y, 1.0 - t.trend_alpha).ok()?;
    let mut sorted = y.clone();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let median = if sorted.len() % 2 == 0 { (sorted[mid - 1] + sorted[mid]) / 2.0 } else { sorted[mid] };
    Some(Fit { metric, windows: y.len(), events, first: x[0] as i64, last: x[x.len() - 1] as i64, test, slope, median })
}

/// One trend run over the series of one window length at window `index`: every series × metric
/// is tested, the p-values adjusted together (Benjamini–Hochberg), and the trends significant
/// after adjustment returned as insights.
pub fn run<'a>(
    window: &str,
    secs: i64,
    index: i64,
    series: impl IntoIterator<Item = (&'a BTreeMap<String, String>, &'a History)>,
    t: &AnalyzerConfig,
) -> Vec<Insight> {
    let mut fits = Vec::new();
    for (dims, history) in series {
        for metric in Metric::ALL {
            if let Some(f) = fit(history, metric, t) {
                fits.push((dims, f));
            }
        }
    }
    let raw: Vec<f64> = fits.iter().map(|(_, f)| f.test.p_value).collect();
    let Ok(adjusted) = benjamini_hochberg(&raw) else { return Vec::new() };
    let per_hour = 3600.0 / secs as f64;
    let at = |i: i64| Utc.timestamp_opt(i * secs, 0).single().unwrap_or(DateTime::<Utc>::MAX_UTC);
    let mut out = Vec::new();
    for ((dims, f), p_adjusted) in fits.iter().zip(adjusted) {
        if p_adjusted > t.trend_alpha || f.test.s == 0 {
            continue;
        }
        let rising = f.test.s > 0;
        let direction = f.metric.direction(rising);
        let id = insight_id("trend", window, dims, f.metric.name(), index);
        let span_hours = (f.last - f.first + 1) as f64 / per_hour;
        let change = f.slope.slope * (f.last - f.first) as f64;
        let relative = if f.median != 0.0 {
            format!(" ({:+.1} % of the median)", 100.0 * change / f.median)
        } else {
            String::new()
        };
        let description = format!(
            "{} of {} {} by {} per hour (95 % interval {} to {}) over {} windows of {} ({:.1} h){}: {} \
             (Mann–Kendall with Hamed–Rao correction, z = {:.2}, p = {:.2e}, BH-adjusted {:.2e})",
            f.metric.words(),
            describe(dims),
            if rising { "rising" } else { "falling" },
            fmt_rate(f.slope.slope * per_hour),
            fmt_rate(f.slope.low * per_hour),
            fmt_rate(f.slope.high * per_hour),
            f.windows,
            window,
            span_hours,
            relative,
            match direction {
                Direction::Improvement => "an improvement",
                Direction::Decline => "a decline",
            },
            f.test.z,
            f.test.p_value,
            p_adjusted,
        );
        out.push(Insight {
            id,
            kind: "trend".into(),
            subject: (*dims).clone(),
            metric: f.metric.name().into(),
            test: "mann_kendall_hamed_rao".into(),
            statistic: f.test.z,
            estimate: f.slope.slope * per_hour,
            ci_low: f.slope.low * per_hour,
            ci_high: f.slope.high * per_hour,
            p_adjusted,
            n: BTreeMap::from([("windows".to_owned(), f.windows as u64), ("events".to_owned(), f.events)]),
            design: Design::Observational,
            start: at(f.first),
            end: at(f.last + 1),
            description,
            p_value: Some(f.test.p_value),
            correction: Some("bh".into()),
            direction: Some(direction),
            window: Some(window.to_owned()),
        });
    }
    out
}

/// `<kind>-<32 hex digits of SHA-256 over the window, metric and dimensions>-<window index>`
/// (kind `trend` or `regression`): the same run over the same data has the same id, so a
/// republish is dropped by the stream.
pub fn insight_id(kind: &str, window: &str, dims: &BTreeMap<String, String>, metric: &str, index: i64) -> String {
    let mut h = Sha256::new();
    h.update(window.as_bytes());
    h.update(b"\n");
    h.update(metric.as_bytes());
    h.update(b"\n");
    for (k, v) in dims {
        h.update(format!("{k}={v}\n").as_bytes());
    }
    format!("{kind}-{}-{index}", &hex::encode(h.finalize())[..32])
}

/// `provider/model version task_type` (what is present), for descriptions.
pub fn describe(dims: &BTreeMap<String, String>) -> String {
    let mut parts = Vec::new();
    match (dims.get("provider"), dims.get("model")) {
        (Some(p), Some(m)) => parts.push(format!("{p}/{m}")),
        (None, Some(m)) => parts.push(m.clone()),
        _ => {}
    }
    for key in ["model_version", "task_type", "tenant", "kind"] {
        if let Some(v) = dims.get(key) {
            parts.push(format!("{key}={v}"));
        }
    }
    if parts.is_empty() { "every series".into() } else { parts.join(" ") }
}

fn fmt_rate(v: f64) -> String {
    if v == 0.0 || (v.abs() >= 0.01 && v.abs() < 1e5) { format!("{v:.3}") } else { format!("{v:.3e}") }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use modelperf_stats::Moments;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    fn obs(p95: f64, failures: u64, quality: f64) -> Observation {
        Observation {
            count: 200,
            weighted: 200.0,
            trials: 200,
            failures,
            p95_ms: Some(p95),
            quality: Moments { n: 50, mean: quality, m2: 50.0 * 0.01 },
            cost_per_event: Some(0.002),
            unpriced: 0,
        }
    }

    fn dims(model: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("model".to_owned(), model.to_owned()), ("task_type".to_owned(), "code_edit".to_owned())])
    }

    fn config() -> AnalyzerConfig {
        AnalyzerConfig { trend_windows: 120, trend_every: 60, ..AnalyzerConfig::default() }
    }

    /// AR(1) noise with coefficient `phi`: autocorrelated like consecutive windows are.
    fn ar1(rng: &mut StdRng, n: usize, phi: f64, sigma: f64) -> Vec<f64> {
        let mut out = Vec::with_capacity(n);
        let mut prev = 0.0;
        for _ in 0..n {
            let e: f64 = (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0;
            prev = phi * prev + sigma * e;
            out.push(prev);
        }
        out
    }

    #[test]
    fn meanings() {
        assert_eq!(Metric::LatencyP95.direction(true), Direction::Decline);
        assert_eq!(Metric::CostPerEvent.direction(true), Direction::Decline);
        assert_eq!(Metric::CostPerEvent.direction(false), Direction::Improvement);
        assert_eq!(Metric::SuccessRate.direction(true), Direction::Improvement);
        assert_eq!(Metric::QualityMean.direction(false), Direction::Decline);
    }

    /// A latency drifting up by 2 ms a window under autocorrelated noise is a decline, found by
    /// the same test the reference checks (the statistic is modelperf-stats' to 1e-6 of
    /// pymannkendall), a steady model has no trend, and a rising quality is an improvement.
    #[test]
    fn drifts_are_found_with_their_meaning() {
        let t = config();
        let mut rng = StdRng::seed_from_u64(7);
        let noise = ar1(&mut rng, 120, 0.6, 15.0);
        let steady_noise = ar1(&mut rng, 120, 0.6, 15.0);
        let (mut drifting, mut steady) = (History::default(), History::default());
        for i in 0..120 {
            let q = 0.7 + 0.001 * i as f64 + noise[i] / 2000.0;
            drifting.record(1000 + i as i64, &obs(800.0 + 2.0 * i as f64 + noise[i], 10, q), &t);
            steady.record(1000 + i as i64, &obs(800.0 + steady_noise[i], 10, 0.7 + steady_noise[i] / 2000.0), &t);
        }
        let (a, b) = (dims("drifting"), dims("steady"));
        let insights = run("1m", 60, 1119, [(&a, &drifting), (&b, &steady)], &t);
        let latency: Vec<_> = insights.iter().filter(|i| i.metric == "latency_p95_ms").collect();
        assert_eq!(latency.len(), 1, "{insights:#?}");
        let l = latency[0];
        assert_eq!(l.subject, a);
        assert_eq!(l.direction, Some(Direction::Decline));
        // The published numbers are the library's on the same series.
        let (x, y, _) = drifting.series(Metric::LatencyP95);
        let mk = mann_kendall_hamed_rao(&y, 0.05, Some(t.trend_max_lag)).unwrap();
        let ts = theil_sen(&x, &y, 0.95).unwrap();
        assert_eq!((l.statistic, l.p_value), (mk.z, Some(mk.p_value)));
        assert!((l.estimate - ts.slope * 60.0).abs() < 1e-9 && l.ci_low <= l.estimate && l.estimate <= l.ci_high);
        assert!(l.ci_low > 0.0, "the slope's interval excludes 0: {l:?}");
        assert!(mk.correction > 1.0, "the AR(1) noise is autocorrelated: {mk:?}");
        assert_eq!((l.n["windows"], l.n["events"]), (120, 120 * 200));
        let quality = insights.iter().find(|i| i.metric == "quality_mean" && i.subject == a).unwrap();
        assert_eq!(quality.direction, Some(Direction::Improvement));
        assert!(insights.iter().all(|i| i.subject == a), "the steady model has no trend: {insights:#?}");
    }

    /// Over many seeds of trendless autocorrelated noise, the corrected test keeps its level: the
    /// uncorrected Mann–Kendall would find a trend in a large share of them.
    #[test]
    fn autocorrelated_noise_is_rarely_a_trend() {
        let t = config();
        const SEEDS: u64 = 200;
        let (mut found, mut uncorrected, mut undefined) = (0, 0, 0);
        for seed in 0..SEEDS {
            let mut rng = StdRng::seed_from_u64(seed);
            let noise = ar1(&mut rng, 120, 0.6, 15.0);
            let mut h = History::default();
            for (i, n) in noise.iter().enumerate() {
                h.record(i as i64, &obs(800.0 + n, 10, 0.7), &t);
            }
            // Strong negative autocorrelation can leave the correction undefined: no test.
            let Some(f) = fit(&h, Metric::LatencyP95, &t) else {
                undefined += 1;
                continue;
            };
            found += usize::from(f.test.significant);
            // The same statistic without the correction: Var(S) before the inflation.
            let z = (f.test.s - f.test.s.signum()) as f64 / (f.test.var_s / f.test.correction).sqrt();
            uncorrected += usize::from(z.abs() > 1.959964);
        }
        println!(
            "trendless AR(1) series with a trend at α = 0.05: {found} of {SEEDS} (uncorrected {uncorrected}, undefined {undefined})"
        );
        // With φ = 0.6 and n = 120 the estimated correction (lags 1..=3) does not restore the
        // nominal 5 %, but it removes most of the uncorrected test's false trends.
        assert!(
            undefined <= SEEDS / 20 && 2 * found <= uncorrected,
            "{found} (uncorrected {uncorrected}) of {SEEDS} trendless series had a trend"
        );
    }

    #[test]
    fn revisions_replace_and_pruning_forgets() {
        let t = config();
        let mut h = History::default();
        h.record(5, &obs(100.0, 1, 0.5), &t);
        h.record(3, &obs(90.0, 1, 0.5), &t);
        h.record(5, &obs(110.0, 1, 0.5), &t);
        assert_eq!(h.series(Metric::LatencyP95).1, vec![90.0, 110.0]);
        h.prune(4);
        assert_eq!(h.series(Metric::LatencyP95).0, vec![5.0]);
        h.record(6, &Observation::default(), &t);
        assert_eq!(h.series(Metric::LatencyP95).0.len(), 1);
    }
}
