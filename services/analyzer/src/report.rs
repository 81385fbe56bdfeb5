//! Reports: for a period, per model, latency percentiles over time (from the windows' merged
//! sketches), success rate and quality with intervals, cost per task, the quality-vs-cost Pareto
//! front and the anomaly timeline — as Markdown, JSON and a self-contained HTML page.
//!
//! [`build`] is a pure function of the period's metrics windows and the anomaly announcements;
//! the renderers are pure functions of the [`Report`]. Reading the windows and anomalies,
//! storing and announcing live in [`source`]; the schedule under the lease `analyzer.reports`
//! in [`schedule`].
//!
//! Layout:
//! - this file: the report model and [`build`];
//! - [`markdown`], [`html`] (with [`svg`], the hand-written charts): the renderers;
//! - [`source`]: reading `PERF_METRICS` and `PERF_SIGNALS`, the object store, the announcement;
//! - [`schedule`]: cron schedules, the checkpointed last run, the leased role.

pub mod html;
pub mod markdown;
pub mod schedule;
pub mod source;
pub mod svg;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use modelperf_schema::messages::{Anomaly, AnomalyState, AnomalyType, Severity, WindowMetrics};
use modelperf_sketch::Sketch;
use modelperf_stats::{Moments, wilson_interval};
use serde::{Deserialize, Serialize};

/// Confidence of every interval in a report.
pub const CONFIDENCE: f64 = 0.95;

/// What a report is built from.
#[derive(Debug, Clone, Default)]
pub struct Input {
    /// `daily`, `weekly`, `adhoc`, or a configured schedule's name.
    pub period: String,
    /// The period covered, `[start, end)`.
    pub start: DateTime<Utc>,
    /// Its end (exclusive).
    pub end: DateTime<Utc>,
    /// The window length read, e.g. `1h`.
    pub window: String,
    /// The metrics windows of that length (any order; the highest revision of each wins).
    pub metrics: Vec<WindowMetrics>,
    /// Anomaly announcements in stream order.
    pub anomalies: Vec<Anomaly>,
    /// Messages that did not decode, counted so they never vanish.
    pub undecodable: u64,
    /// At most this many points per latency line (windows are merged into wider buckets).
    pub max_points: usize,
}

/// A value with its 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The point estimate.
    pub value: f64,
    /// The interval's lower bound.
    pub low: f64,
    /// Its upper bound.
    pub high: f64,
}

/// Latency percentiles (ms) of one bucket, or of the whole period.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Bucket start (the period's start for the whole period).
    pub start: DateTime<Utc>,
    /// Completions in the bucket (weighted).
    pub count: f64,
    #[allow(missing_docs)]
    pub p50_ms: f64,
    #[allow(missing_docs)]
    pub p95_ms: f64,
    #[allow(missing_docs)]
    pub p99_ms: f64,
}

/// One model's figures over the period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReport {
    /// `provider/name` with `@version` when the windows name one.
    pub model: String,
    /// Completions seen (unweighted) and represented (weighted).
    pub completions: u64,
    #[allow(missing_docs)]
    pub weighted_completions: f64,
    /// Successful and failed completions (unweighted; tests use these).
    pub success: u64,
    #[allow(missing_docs)]
    pub failure: u64,
    /// Success rate with its Wilson interval.
    pub success_rate: Option<Estimate>,
    /// Mean judgment score with its t interval (from the windows' `{mean, m2, n}`).
    pub quality: Option<Estimate>,
    /// Judgments behind `quality`.
    pub quality_n: u64,
    /// Percentiles of the whole period, from the merged sketch.
    pub latency: Option<Percentiles>,
    /// Percentiles per bucket, in time order.
    pub latency_series: Vec<Percentiles>,
    /// Cost of the fully priced windows (USD) and the completions they represent.
    pub cost_usd: Option<f64>,
    /// Cost per completion over the fully priced windows.
    pub cost_per_task: Option<f64>,
    /// Cost per successful completion over the fully priced windows.
    pub cost_per_success: Option<f64>,
    /// Events that needed a price and had none.
    pub unpriced: u64,
    /// Whether the model is on the quality-vs-cost Pareto front.
    pub pareto: bool,
}

/// An anomaly as the period saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnomalySpan {
    /// The condition's fingerprint.
    pub fingerprint: String,
    /// What went wrong.
    #[serde(rename = "type")]
    pub kind: AnomalyType,
    /// The highest severity announced for it.
    pub severity: Severity,
    /// The model label of its series (empty when the series names none).
    pub model: String,
    /// The series' dimensions.
    pub series: BTreeMap<String, String>,
    /// Window time of the opening and, once resolved, of the resolution.
    pub detected_at: DateTime<Utc>,
    #[allow(missing_docs)]
    pub resolved_at: Option<DateTime<Utc>>,
    /// Observed and baseline values when it opened.
    pub observed: f64,
    #[allow(missing_docs)]
    pub baseline: f64,
    /// The announcement's description.
    pub description: String,
}

/// A report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Schema of this JSON, `1`.
    pub v: u32,
    /// The period's name.
    pub period: String,
    /// The period covered, `[start, end)`.
    pub start: DateTime<Utc>,
    #[allow(missing_docs)]
    pub end: DateTime<Utc>,
    /// The window length read.
    pub window: String,
    /// The width of a latency bucket, in seconds.
    pub bucket_secs: i64,
    /// Windows used (after revisions were collapsed).
    pub windows: u64,
    /// Per model, by label.
    pub models: Vec<ModelReport>,
    /// Labels of the models on the quality-vs-cost Pareto front, cheapest first.
    pub pareto_front: Vec<String>,
    /// Anomalies open at some time in the period, by opening time.
    pub anomalies: Vec<AnomalySpan>,
    /// What was left out and why (undecodable messages, windows without a sketch, ...).
    pub notes: Vec<String>,
}

/// The model label of a series: `provider/name`, `@version` when present.
pub fn model_label(dims: &BTreeMap<String, String>) -> Option<String> {
    let name = dims.get("model")?;
    let mut label = match dims.get("provider") {
        Some(p) => format!("{p}/{name}"),
        None => name.clone(),
    };
    if let Some(v) = dims.get("model_version") {
        label.push('@');
        label.push_str(v);
    }
    Some(label)
}

/// What the windows of one model add up to: completions, success, quality, priced cost.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub completions: u64,
    pub weighted: f64,
    pub success: u64,
    pub failure: u64,
    pub quality: Moments,
    priced_cost: f64,
    priced_weighted: f64,
    priced_success_weighted: f64,
    any_priced: bool,
    pub unpriced: u64,
}

/// What [`Tally::fold`] made of a window's latency sketch.
pub(crate) enum Latency {
    /// A completion window's sketch.
    Sketch(Sketch),
    /// A completion window without one.
    Missing,
    /// A sketch that does not decode.
    Bad,
    /// Not a completion window.
    None,
}

/// Counts of the windows left out of the latency figures, for the notes.
#[derive(Debug, Default)]
pub(crate) struct Left {
    pub no_model: u64,
    pub bad_sketch: u64,
    pub no_sketch: u64,
}

impl Left {
    pub fn count(&mut self, latency: &Latency) {
        match latency {
            Latency::Missing => self.no_sketch += 1,
            Latency::Bad => self.bad_sketch += 1,
            Latency::Sketch(_) | Latency::None => {}
        }
    }

    pub fn notes(&self, notes: &mut Vec<String>) {
        for (n, what) in [
            (self.no_model, "windows name no model"),
            (self.bad_sketch, "windows have a latency sketch that does not decode or merge"),
            (self.no_sketch, "completion windows have no latency sketch"),
        ] {
            if n > 0 {
                notes.push(format!("{n} {what}; left out of the latency figures"));
            }
        }
    }
}

impl Tally {
    /// Adds a window of the model (`task_completed` or `judgment`; other kinds add nothing).
    pub fn fold(&mut self, m: &WindowMetrics) -> Latency {
        match m.dims.get("kind").map(String::as_str) {
            Some("task_completed") => {
                self.completions += m.success + m.failure;
                self.weighted += m.weighted_count;
                self.success += m.success;
                self.failure += m.failure;
                self.unpriced += m.unpriced;
                if m.unpriced == 0
                    && let Some(cost) = m.cost_usd
                {
                    self.any_priced = true;
                    self.priced_cost += cost;
                    self.priced_weighted += m.weighted_count;
                    self.priced_success_weighted += m.weighted_count * m.success_rate.unwrap_or(0.0);
                }
                if m.latency_sketch.is_empty() {
                    return Latency::Missing;
                }
                Sketch::from_bytes(&m.latency_sketch).map_or(Latency::Bad, Latency::Sketch)
            }
            Some("judgment") => {
                let n = m.quality_n;
                if n > 0
                    && let Some(mean) = m.quality_mean
                {
                    self.quality.merge(&Moments { n, mean, m2: m.quality_m2.unwrap_or(0.0) });
                }
                Latency::None
            }
            _ => Latency::None,
        }
    }

    /// The success rate with its Wilson interval.
    pub fn success_rate(&self) -> Option<Estimate> {
        let n = self.success + self.failure;
        let i = wilson_interval(self.success, n, CONFIDENCE).ok()?;
        Some(Estimate { value: self.success as f64 / n as f64, low: i.low, high: i.high })
    }

    /// The mean judgment score with its t interval.
    pub fn quality(&self) -> Option<Estimate> {
        if self.quality.n == 0 {
            return None;
        }
        // One judgment (or identical ones) has no interval: the point stands alone.
        let i = self.quality.mean_interval(CONFIDENCE).ok();
        let (low, high) = i.map_or((self.quality.mean, self.quality.mean), |i| (i.low, i.high));
        Some(Estimate { value: self.quality.mean, low, high })
    }

    /// Cost of the fully priced windows.
    pub fn cost_usd(&self) -> Option<f64> {
        self.any_priced.then_some(self.priced_cost)
    }

    fn per(&self, den: f64) -> Option<f64> {
        (self.any_priced && den > 0.0).then(|| self.priced_cost / den)
    }

    /// Cost per completion over the fully priced windows.
    pub fn cost_per_task(&self) -> Option<f64> {
        self.per(self.priced_weighted)
    }

    /// Cost per successful completion over the fully priced windows.
    pub fn cost_per_success(&self) -> Option<f64> {
        self.per(self.priced_success_weighted)
    }
}

#[derive(Default)]
struct Acc {
    tally: Tally,
    sketch: Option<Sketch>,
    buckets: BTreeMap<i64, Sketch>,
}

/// Builds the report of a period. Never fails: what cannot be used is named in `notes`.
pub fn build(input: &Input) -> Report {
    let mut notes = Vec::new();
    if input.undecodable > 0 {
        notes.push(format!("{} messages did not decode and are left out", input.undecodable));
    }
    let windows = latest_windows(&input.metrics, &input.window, input.start, input.end);
    let window_secs = windows.iter().map(|m| (m.end - m.start).num_seconds()).find(|s| *s > 0).unwrap_or(60);
    let period_secs = (input.end - input.start).num_seconds().max(1);
    let max_points = input.max_points.max(2) as i64;
    let windows_in_period = (period_secs + window_secs - 1) / window_secs;
    let bucket_secs = window_secs * ((windows_in_period + max_points - 1) / max_points).max(1);

    let mut accs: BTreeMap<String, Acc> = BTreeMap::new();
    let mut left = Left::default();
    for m in &windows {
        let Some(label) = model_label(&m.dims) else {
            left.no_model += 1;
            continue;
        };
        let acc = accs.entry(label).or_default();
        let latency = acc.tally.fold(m);
        left.count(&latency);
        if let Latency::Sketch(s) = latency {
            let b = (m.start - input.start).num_seconds() / bucket_secs;
            let merged = acc.buckets.entry(b).or_default().merge(&s);
            let whole = acc.sketch.get_or_insert_with(Sketch::new).merge(&s);
            if merged.is_err() || whole.is_err() {
                left.bad_sketch += 1;
            }
        }
    }
    left.notes(&mut notes);

    let mut models: Vec<ModelReport> = accs
        .into_iter()
        .map(|(model, acc)| {
            let percentiles = |start: DateTime<Utc>, s: &Sketch| {
                Some(Percentiles {
                    start,
                    count: s.count(),
                    p50_ms: s.quantile(0.50)?,
                    p95_ms: s.quantile(0.95)?,
                    p99_ms: s.quantile(0.99)?,
                })
            };
            let t = &acc.tally;
            ModelReport {
                completions: t.completions,
                weighted_completions: t.weighted,
                success: t.success,
                failure: t.failure,
                success_rate: t.success_rate(),
                quality: t.quality(),
                quality_n: t.quality.n,
                latency: acc.sketch.as_ref().and_then(|s| percentiles(input.start, s)),
                latency_series: acc
                    .buckets
                    .iter()
                    .filter_map(|(b, s)| percentiles(input.start + chrono::Duration::seconds(b * bucket_secs), s))
                    .collect(),
                cost_usd: t.cost_usd(),
                cost_per_task: t.cost_per_task(),
                cost_per_success: t.cost_per_success(),
                unpriced: t.unpriced,
                pareto: false,
                model,
            }
        })
        .collect();
    let pareto_front = pareto(&mut models);
    let anomalies = anomaly_spans(&input.anomalies, input.start, input.end);
    Report {
        v: 1,
        period: input.period.clone(),
        start: input.start,
        end: input.end,
        window: input.window.clone(),
        bucket_secs,
        windows: windows.len() as u64,
        models,
        pareto_front,
        anomalies,
        notes,
    }
}

/// The windows of length `window` that start in `[start, end)`, the highest revision of each
/// window and series, in (start, dimensions) order.
pub(crate) fn latest_windows<'a>(
    metrics: &'a [WindowMetrics],
    window: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Vec<&'a WindowMetrics> {
    let mut latest: HashMap<(i64, &BTreeMap<String, String>), &WindowMetrics> = HashMap::new();
    // Windows of other periods are expected when reading by stream time: left out.
    for m in metrics.iter().filter(|m| m.window == window && m.start >= start && m.start < end) {
        let key = (m.start.timestamp(), &m.dims);
        if latest.get(&key).is_none_or(|old| old.revision < m.revision) {
            latest.insert(key, m);
        }
    }
    let mut windows: Vec<&WindowMetrics> = latest.into_values().collect();
    windows.sort_by(|a, b| (a.start, &a.dims).cmp(&(b.start, &b.dims)));
    windows
}

/// The points `(index, quality, cost)` no other point dominates (at least the quality for at most
/// the cost, better in one), cheapest first. Non-finite points are left out.
pub(crate) fn pareto_front(points: &[(usize, f64, f64)]) -> Vec<usize> {
    let points: Vec<_> = points.iter().filter(|(_, q, c)| q.is_finite() && c.is_finite()).collect();
    let mut front: Vec<(f64, usize)> = Vec::new();
    for &&(i, q, c) in &points {
        let dominated = points.iter().any(|&&(j, qj, cj)| j != i && qj >= q && cj <= c && (qj > q || cj < c));
        if !dominated {
            front.push((c, i));
        }
    }
    front.sort_by(|a, b| a.0.total_cmp(&b.0));
    front.into_iter().map(|(_, i)| i).collect()
}

/// Marks the models on the quality-vs-cost Pareto front; returns them cheapest first. Models
/// without both figures are not on it.
fn pareto(models: &mut [ModelReport]) -> Vec<String> {
    let points: Vec<(usize, f64, f64)> =
        models.iter().enumerate().filter_map(|(i, m)| Some((i, m.quality?.value, m.cost_per_task?))).collect();
    pareto_front(&points)
        .into_iter()
        .map(|i| {
            models[i].pareto = true;
            models[i].model.clone()
        })
        .collect()
}

/// Folds the announcements (stream order) into one span per condition and keeps those open at
/// some time in `[start, end)`.
pub fn anomaly_spans(announcements: &[Anomaly], start: DateTime<Utc>, end: DateTime<Utc>) -> Vec<AnomalySpan> {
    let mut spans: Vec<AnomalySpan> = Vec::new();
    let mut open: HashMap<&str, usize> = HashMap::new();
    for a in announcements {
        match a.state {
            AnomalyState::Open => {
                if let Some(&i) = open.get(a.fingerprint.as_str()) {
                    // Re-announced while open (e.g. a higher severity): one span.
                    spans[i].severity = spans[i].severity.max(a.severity);
                    continue;
                }
                open.insert(&a.fingerprint, spans.len());
                spans.push(AnomalySpan {
                    fingerprint: a.fingerprint.clone(),
                    kind: a.kind,
                    severity: a.severity,
                    model: model_label(&a.series).unwrap_or_default(),
                    series: a.series.clone(),
                    detected_at: a.detected_at,
                    resolved_at: None,
                    observed: a.observed,
                    baseline: a.baseline,
                    description: a.description.clone(),
                });
            }
            AnomalyState::Resolved => match open.remove(a.fingerprint.as_str()) {
                Some(i) => spans[i].resolved_at = Some(a.resolved_at.unwrap_or(a.detected_at)),
                // Opened before what was read: the resolution alone still bounds a span.
                None => spans.push(AnomalySpan {
                    fingerprint: a.fingerprint.clone(),
                    kind: a.kind,
                    severity: a.severity,
                    model: model_label(&a.series).unwrap_or_default(),
                    series: a.series.clone(),
                    detected_at: a.detected_at,
                    resolved_at: Some(a.resolved_at.unwrap_or(a.detected_at)),
                    observed: a.observed,
                    baseline: a.baseline,
                    description: a.description.clone(),
                }),
            },
        }
    }
    spans.retain(|s| s.detected_at < end && s.resolved_at.is_none_or(|r| r >= start));
    spans.sort_by(|a, b| a.detected_at.cmp(&b.detected_at).then(a.fingerprint.cmp(&b.fingerprint)));
    spans
}

/// The JSON of a report (pretty, stable field order).
pub fn to_json(report: &Report) -> String {
    // A report is plain data with finite numbers or nulls: serialising cannot fail.
    serde_json::to_string_pretty(report).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::TimeZone;

    pub fn epoch() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap()
    }

    fn dims(kind: &str, model: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("kind".to_owned(), kind.to_owned()),
            ("provider".to_owned(), "acme".to_owned()),
            ("model".to_owned(), model.to_owned()),
        ])
    }

    /// A completion window of `model` at hour `h` with latencies `base..base+100` ms.
    pub fn completions(model: &str, h: i64, base: f64, success: u64, failure: u64, cost: f64) -> WindowMetrics {
        let mut s = Sketch::new();
        for i in 0..100 {
            s.add(base + i as f64);
        }
        let start = epoch() + chrono::Duration::hours(h);
        let n = success + failure;
        WindowMetrics {
            window: "1h".into(),
            start,
            end: start + chrono::Duration::hours(1),
            dims: dims("task_completed", model),
            count: n,
            weighted_count: n as f64,
            success,
            failure,
            success_rate: Some(success as f64 / n as f64),
            cost_usd: Some(cost),
            latency_sketch: s.to_bytes(),
            ..WindowMetrics::default()
        }
    }

    pub fn judgments(model: &str, h: i64, scores: &[f64]) -> WindowMetrics {
        let m = Moments::from_slice(scores);
        let start = epoch() + chrono::Duration::hours(h);
        WindowMetrics {
            window: "1h".into(),
            start,
            end: start + chrono::Duration::hours(1),
            dims: dims("judgment", model),
            count: m.n,
            weighted_count: m.n as f64,
            quality_mean: Some(m.mean),
            quality_m2: Some(m.m2),
            quality_n: m.n,
            ..WindowMetrics::default()
        }
    }

    pub fn input(metrics: Vec<WindowMetrics>) -> Input {
        Input {
            period: "daily".into(),
            start: epoch(),
            end: epoch() + chrono::Duration::days(1),
            window: "1h".into(),
            metrics,
            anomalies: Vec::new(),
            undecodable: 0,
            max_points: 48,
        }
    }

    #[test]
    fn figures_come_from_the_merged_windows() {
        let metrics = vec![
            completions("fast", 0, 100.0, 90, 10, 1.0),
            completions("fast", 1, 300.0, 80, 20, 1.0),
            judgments("fast", 0, &[0.5, 0.7]),
            judgments("fast", 1, &[0.9]),
        ];
        let r = build(&input(metrics));
        assert_eq!(r.models.len(), 1);
        let m = &r.models[0];
        assert_eq!(m.model, "acme/fast");
        assert_eq!((m.success, m.failure), (170, 30));
        let sr = m.success_rate.unwrap();
        let wilson = wilson_interval(170, 200, 0.95).unwrap();
        assert!((sr.value - 0.85).abs() < 1e-12 && sr.low == wilson.low && sr.high == wilson.high);
        // Quality of the three judgments pooled, not a mean of window means.
        let pooled = Moments::from_slice(&[0.5, 0.7, 0.9]);
        let q = m.quality.unwrap();
        let i = pooled.mean_interval(0.95).unwrap();
        assert!((q.value - 0.7).abs() < 1e-12 && (q.low - i.low).abs() < 1e-12 && (q.high - i.high).abs() < 1e-12);
        assert_eq!(m.quality_n, 3);
        // Latency of the union: 100..200 and 300..400 → the median is near 199, p99 near 398.
        let l = m.latency.unwrap();
        assert!((l.p50_ms - 199.0).abs() / 199.0 < 0.02, "{l:?}");
        assert!((l.p99_ms - 397.0).abs() / 397.0 < 0.02, "{l:?}");
        assert_eq!(m.latency_series.len(), 2);
        assert!(m.latency_series[0].p95_ms < 200.0 && m.latency_series[1].p95_ms > 390.0);
        assert!((m.cost_per_task.unwrap() - 2.0 / 200.0).abs() < 1e-12);
        assert!((m.cost_per_success.unwrap() - 2.0 / 170.0).abs() < 1e-12);
    }

    #[test]
    fn the_latest_revision_wins_and_other_periods_are_left_out() {
        let mut revised = completions("m", 0, 100.0, 50, 50, 1.0);
        revised.revision = 1;
        let metrics = vec![
            completions("m", 0, 100.0, 10, 0, 1.0),
            revised,
            completions("m", 30, 100.0, 10, 0, 1.0), // the next day
        ];
        let r = build(&input(metrics));
        assert_eq!((r.models[0].success, r.models[0].failure), (50, 50));
        assert_eq!(r.windows, 1);
    }

    #[test]
    fn the_pareto_front_keeps_the_undominated() {
        let metrics = vec![
            completions("cheap", 0, 100.0, 90, 10, 1.0),
            judgments("cheap", 0, &[0.6, 0.62]),
            completions("good", 0, 100.0, 90, 10, 5.0),
            judgments("good", 0, &[0.9, 0.92]),
            completions("worse", 0, 100.0, 90, 10, 6.0), // dearer and worse than good
            judgments("worse", 0, &[0.8, 0.82]),
            completions("unjudged", 0, 100.0, 90, 10, 0.1),
        ];
        let r = build(&input(metrics));
        assert_eq!(r.pareto_front, vec!["acme/cheap", "acme/good"]);
        let on: Vec<_> = r.models.iter().filter(|m| m.pareto).map(|m| m.model.as_str()).collect();
        assert_eq!(on, vec!["acme/cheap", "acme/good"]);
    }

    #[test]
    fn bad_sketches_and_unpriced_windows_are_named_not_counted() {
        let mut bad = completions("m", 0, 100.0, 10, 0, 1.0);
        bad.latency_sketch = vec![0xff, 0x00, 0x13];
        let mut unpriced = completions("m", 1, 100.0, 10, 0, 0.0);
        unpriced.unpriced = 10;
        unpriced.cost_usd = None;
        let mut i = input(vec![bad, unpriced]);
        i.undecodable = 2;
        let r = build(&i);
        assert!(r.notes.iter().any(|n| n.contains("2 messages did not decode")), "{:?}", r.notes);
        assert!(r.notes.iter().any(|n| n.starts_with("1 windows have a latency sketch")), "{:?}", r.notes);
        let m = &r.models[0];
        assert_eq!(m.latency_series.len(), 1);
        assert_eq!(m.unpriced, 10);
        assert!((m.cost_per_task.unwrap() - 0.1).abs() < 1e-12);
    }

    #[test]
    fn wide_periods_merge_windows_into_buckets() {
        let metrics: Vec<_> = (0..24).map(|h| completions("m", h, 100.0 + h as f64, 10, 0, 1.0)).collect();
        let mut i = input(metrics);
        i.max_points = 6;
        let r = build(&i);
        assert_eq!(r.bucket_secs, 4 * 3600);
        assert_eq!(r.models[0].latency_series.len(), 6);
        assert!(r.models[0].latency_series.iter().all(|p| (p.count - 400.0).abs() < 1e-9));
    }

    pub fn anomaly(fp: &str, model: &str, state: AnomalyState, h: i64) -> Anomaly {
        Anomaly {
            id: format!("{fp}-{h}"),
            fingerprint: fp.into(),
            kind: AnomalyType::LatencySpike,
            severity: Severity::Warning,
            state,
            series: dims("task_completed", model),
            window: "1m".into(),
            observed: 2000.0,
            baseline: 1000.0,
            score: 9.0,
            detected_at: epoch() + chrono::Duration::hours(h),
            resolved_at: (state == AnomalyState::Resolved).then(|| epoch() + chrono::Duration::hours(h)),
            description: "p95 doubled".into(),
        }
    }

    #[test]
    fn anomalies_become_one_span_per_condition() {
        let a = vec![
            anomaly("old", "m", AnomalyState::Open, -30),
            anomaly("old", "m", AnomalyState::Resolved, -29), // before the period
            anomaly("a", "m", AnomalyState::Open, -2),
            anomaly("b", "n", AnomalyState::Open, 3),
            anomaly("a", "m", AnomalyState::Resolved, 5),
            anomaly("c", "n", AnomalyState::Open, 30), // after it
        ];
        let spans = anomaly_spans(&a, epoch(), epoch() + chrono::Duration::days(1));
        let got: Vec<_> = spans.iter().map(|s| (s.fingerprint.as_str(), s.resolved_at.is_some())).collect();
        assert_eq!(got, vec![("a", true), ("b", false)]);
        assert_eq!(spans[0].model, "acme/m");
    }
}
