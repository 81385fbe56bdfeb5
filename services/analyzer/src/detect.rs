//! One series' checks: each window's evidence per anomaly type, the open → resolved state
//! machine with hysteresis, and the baselines the evidence is measured against.
//!
//! Evidence is a score per window in standard deviations of the baseline (for latency, cost and
//! traffic the robust, drift-corrected baseline of [`crate::baseline`] on the log scale; for the
//! error rate and quality the pooled binomial and Welch standard errors, or the windows' own
//! scatter when that is larger). A check opens when the standardised sum of the last m scores,
//! Σ zᵢ / √m for m = 1..=`evidence_windows`, reaches `open_score` *and* the latest window's
//! effect is large enough to matter (e.g. p95 at least 1.2× the baseline): a sudden large change
//! opens at once, a moderate one after two or three windows, and noise almost never — under the
//! null each sum is a standard normal. An open check resolves after `resolve_after` windows in a
//! row whose score is below `resolve_score` or whose effect is under half the opening effect;
//! while it is open its windows stay out of the baseline, so a persisting condition stays one
//! anomaly. One open for `accept_after` windows is resolved as the new normal and its baseline
//! starts again.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Utc};
use modelperf_schema::messages::{Anomaly, AnomalyState, AnomalyType, Severity, WindowMetrics};
use modelperf_stats::moments::Moments;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::baseline::{Level, Trailing};
use crate::config::AnalyzerConfig as Thresholds;

/// Every check, in the order of [`Series::checks`].
pub const TYPES: [AnomalyType; 6] = [
    AnomalyType::LatencySpike,
    AnomalyType::ErrorRateIncrease,
    AnomalyType::QualityDrop,
    AnomalyType::CostSpike,
    AnomalyType::ThroughputDrop,
    AnomalyType::UnpricedModel,
];

/// The wire name of an anomaly type.
pub fn type_name(t: AnomalyType) -> &'static str {
    match t {
        AnomalyType::LatencySpike => "latency_spike",
        AnomalyType::ErrorRateIncrease => "error_rate_increase",
        AnomalyType::QualityDrop => "quality_drop",
        AnomalyType::CostSpike => "cost_spike",
        AnomalyType::ThroughputDrop => "throughput_drop",
        AnomalyType::UnpricedModel => "unpriced_model",
    }
}

/// The wire name of a severity (the last token of `perf.anomalies.<severity>`).
pub fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}

/// What one window says about a series. A window without the series' metrics is the default:
/// no events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// Events.
    pub count: u64,
    /// Events weighted by 1/sample_rate: the traffic.
    pub weighted: f64,
    /// Completions and failures among them.
    pub trials: u64,
    /// Failures.
    pub failures: u64,
    /// p95 latency.
    pub p95_ms: Option<f64>,
    /// Judgment scores.
    pub quality: Moments,
    /// Cost per weighted event, when every event was priced.
    pub cost_per_event: Option<f64>,
    /// Events of an unpriced model.
    pub unpriced: u64,
}

impl Observation {
    /// The observation in a metrics message.
    pub fn of(m: &WindowMetrics) -> Self {
        let quality = match (m.quality_mean, m.quality_m2) {
            (Some(mean), Some(m2)) if m.quality_n > 0 => Moments { n: m.quality_n, mean, m2 },
            _ => Moments::default(),
        };
        let cost_per_event = match m.cost_usd {
            Some(c) if m.unpriced == 0 && m.weighted_count > 0.0 && c > 0.0 => Some(c / m.weighted_count),
            _ => None,
        };
        Self {
            count: m.count,
            weighted: m.weighted_count,
            trials: m.success + m.failure,
            failures: m.failure,
            p95_ms: m.latency_p95_ms.filter(|p| p.is_finite() && *p > 0.0),
            quality,
            cost_per_event,
            unpriced: m.unpriced,
        }
    }
}

/// A check that is open: what was announced, and for how long it has held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Open {
    /// The announcement (state `open`).
    pub anomaly: Anomaly,
    /// The window index it opened in.
    pub since: i64,
    /// Windows evaluated since, including the first.
    pub windows: u32,
    /// Clear windows in a row.
    pub clear: u32,
}

/// One anomaly type on one series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Check {
    /// The latest scores, newest last (NaN: no data in that window).
    scores: VecDeque<f64>,
    /// The open anomaly, if any.
    pub open: Option<Open>,
}

/// What a window's check measured.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    score: f64,
    observed: f64,
    baseline: f64,
    /// The effect is large enough to open.
    opens: bool,
    /// The effect is below half the opening effect.
    calm: bool,
    severity: Severity,
}

/// A series of one window length: its baselines and checks.
#[derive(Debug, Clone)]
pub struct Series {
    /// Its dimensions.
    pub dims: BTreeMap<String, String>,
    /// The window length's name.
    pub window: String,
    /// ln p95.
    latency: Trailing,
    /// ln cost per event.
    cost: Trailing,
    /// ln(weighted events + 1).
    traffic: Trailing,
    /// Per-window failure rate, and the pooled counts.
    error_rate: Trailing,
    errors: VecDeque<(i64, u64, u64)>,
    /// Per-window mean quality, and the pooled moments.
    quality_mean: Trailing,
    quality: VecDeque<(i64, Moments)>,
    /// The last window with data.
    pub last_seen: i64,
    /// One per entry of [`TYPES`].
    pub checks: [Check; 6],
}

impl Series {
    /// A series first seen in window `index`.
    pub fn new(window: &str, dims: BTreeMap<String, String>, index: i64) -> Self {
        Self {
            dims,
            window: window.to_owned(),
            latency: Trailing::default(),
            cost: Trailing::default(),
            traffic: Trailing::default(),
            error_rate: Trailing::default(),
            errors: VecDeque::new(),
            quality_mean: Trailing::default(),
            quality: VecDeque::new(),
            last_seen: index,
            checks: Default::default(),
        }
    }

    /// Whether any check is open.
    pub fn any_open(&self) -> bool {
        self.checks.iter().any(|c| c.open.is_some())
    }

    /// Evaluates window `index` (ending at `end`), then learns from it. Returns the anomalies
    /// that opened or resolved.
    pub fn evaluate(&mut self, index: i64, end: DateTime<Utc>, obs: &Observation, t: &Thresholds) -> Vec<Anomaly> {
        if obs.count > 0 {
            self.last_seen = index;
        }
        let mut changes = Vec::new();
        for (slot, kind) in TYPES.iter().enumerate() {
            let reading = self.read(*kind, index, obs, t);
            if let Some(anomaly) = self.step(slot, *kind, index, end, reading, t) {
                changes.push(anomaly);
            }
        }
        self.learn(index, obs, t);
        changes
    }

    /// A revision of an older window: the baselines take the new values, nothing is evaluated.
    pub fn revise(&mut self, index: i64, obs: &Observation) {
        if let Some(p) = obs.p95_ms {
            self.latency.revise(index, p.ln());
        }
        if let Some(c) = obs.cost_per_event {
            self.cost.revise(index, c.ln());
        }
        self.traffic.revise(index, (obs.weighted + 1.0).ln());
        if obs.trials > 0 {
            self.error_rate.revise(index, obs.failures as f64 / obs.trials as f64);
            if let Some(e) = self.errors.iter_mut().find(|e| e.0 == index) {
                *e = (index, obs.failures, obs.trials);
            }
        }
        if obs.quality.n > 0 {
            self.quality_mean.revise(index, obs.quality.mean);
            if let Some(q) = self.quality.iter_mut().find(|q| q.0 == index) {
                q.1 = obs.quality;
            }
        }
    }

    fn read(&self, kind: AnomalyType, index: i64, obs: &Observation, t: &Thresholds) -> Option<Reading> {
        let enough = obs.count >= t.min_events;
        match kind {
            AnomalyType::LatencySpike => {
                let p95 = obs.p95_ms.filter(|_| enough)?;
                let level = self.latency.level(index, t.min_baseline, t.log_floor)?;
                Some(ratio_reading(&level, p95.ln(), t.latency_ratio, 2.0, false))
            }
            AnomalyType::CostSpike => {
                let cost = obs.cost_per_event.filter(|_| enough)?;
                let level = self.cost.level(index, t.min_baseline, t.log_floor)?;
                Some(ratio_reading(&level, cost.ln(), t.cost_ratio, 3.0, false))
            }
            AnomalyType::ThroughputDrop => {
                let level = self.traffic.level(index, t.min_baseline, t.log_floor)?;
                if level.center.exp() - 1.0 < t.min_throughput {
                    return None;
                }
                Some(ratio_reading(&level, (obs.weighted + 1.0).ln(), 1.0 / t.throughput_ratio, 10.0, true))
            }
            AnomalyType::ErrorRateIncrease => {
                if obs.trials < t.min_events || self.errors.len() < t.min_baseline {
                    return None;
                }
                let (f, n) = self.errors.iter().fold((0u64, 0u64), |(f, n), e| (f + e.1, n + e.2));
                let p0 = (f as f64 + 0.5) / (n as f64 + 1.0);
                let p = obs.failures as f64 / obs.trials as f64;
                let binomial = (p0 * (1.0 - p0) * (1.0 / obs.trials as f64 + 1.0 / n as f64)).sqrt();
                let scatter = self.error_rate.level(index, t.min_baseline, 0.0).map_or(0.0, |l| l.scale);
                let score = (p - p0) / binomial.max(scatter);
                let effect = p - p0;
                Some(Reading {
                    score,
                    observed: p,
                    baseline: p0,
                    opens: effect >= t.error_rate_points,
                    calm: effect < t.error_rate_points / 2.0,
                    severity: if effect >= 0.2 { Severity::Critical } else { Severity::Warning },
                })
            }
            AnomalyType::QualityDrop => {
                let q = obs.quality;
                if q.n < t.min_quality_n || self.quality.len() < t.min_baseline {
                    return None;
                }
                let mut pooled = Moments::default();
                self.quality.iter().for_each(|(_, m)| pooled.merge(m));
                let (vb, vo) = (pooled.variance()?, q.variance()?);
                let welch = (vo / q.n as f64 + vb / pooled.n as f64).sqrt();
                let scatter = self.quality_mean.level(index, t.min_baseline, 0.0).map_or(0.0, |l| l.scale);
                let drop = pooled.mean - q.mean;
                let se = welch.max(scatter);
                if se <= 0.0 {
                    return None;
                }
                Some(Reading {
                    score: drop / se,
                    observed: q.mean,
                    baseline: pooled.mean,
                    opens: drop >= t.quality_drop,
                    calm: drop < t.quality_drop / 2.0,
                    severity: if drop >= 0.2 { Severity::Critical } else { Severity::Warning },
                })
            }
            AnomalyType::UnpricedModel => {
                if obs.count == 0 {
                    return None;
                }
                let share = obs.unpriced as f64 / obs.count as f64;
                Some(Reading {
                    // Not a statistical question: any unpriced event is the condition.
                    score: if obs.unpriced > 0 { f64::INFINITY } else { 0.0 },
                    observed: obs.unpriced as f64,
                    baseline: 0.0,
                    opens: obs.unpriced > 0,
                    calm: obs.unpriced == 0,
                    severity: if share >= 0.5 { Severity::Critical } else { Severity::Warning },
                })
            }
        }
    }

    fn step(
        &mut self,
        slot: usize,
        kind: AnomalyType,
        index: i64,
        end: DateTime<Utc>,
        reading: Option<Reading>,
        t: &Thresholds,
    ) -> Option<Anomaly> {
        let check = &mut self.checks[slot];
        check.scores.push_back(reading.map_or(f64::NAN, |r| r.score));
        while check.scores.len() > t.evidence_windows.max(1) {
            check.scores.pop_front();
        }
        if let Some(open) = check.open.as_mut() {
            open.windows += 1;
            match reading {
                Some(r) if r.score < t.resolve_score || r.calm => open.clear += 1,
                Some(_) => open.clear = 0,
                None => {}
            }
            let accepted = open.windows >= t.accept_after;
            if open.clear < t.resolve_after && !accepted {
                return None;
            }
            let mut resolved = open.anomaly.clone();
            resolved.id = format!("{}-{}-resolved", resolved.fingerprint, open.since);
            resolved.state = AnomalyState::Resolved;
            resolved.resolved_at = Some(end);
            if let Some(r) = reading {
                resolved.observed = r.observed;
            }
            resolved.description = if accepted && open.clear < t.resolve_after {
                format!("{} — held for {} windows: taken as the new normal", resolved.description, open.windows)
            } else {
                format!("resolved after {} windows: {}", open.windows, resolved.description)
            };
            check.open = None;
            check.scores.clear();
            if accepted {
                self.forget(kind);
            }
            return Some(resolved);
        }
        let r = reading?;
        let evidence = evidence(&check.scores);
        let opens = if kind == AnomalyType::UnpricedModel { r.opens } else { r.opens && evidence >= t.open_score };
        if !opens {
            return None;
        }
        let fingerprint = fingerprint(kind, &self.window, &self.dims);
        let anomaly = Anomaly {
            id: format!("{fingerprint}-{index}-open"),
            fingerprint,
            kind,
            severity: r.severity,
            state: AnomalyState::Open,
            series: self.dims.clone(),
            window: self.window.clone(),
            observed: r.observed,
            baseline: r.baseline,
            score: if kind == AnomalyType::UnpricedModel { r.observed } else { evidence },
            detected_at: end,
            resolved_at: None,
            description: describe(kind, &self.dims, &r),
        };
        check.open = Some(Open { anomaly: anomaly.clone(), since: index, windows: 1, clear: 0 });
        Some(anomaly)
    }

    /// Adds window `index` to the baselines whose check is not open.
    fn learn(&mut self, index: i64, obs: &Observation, t: &Thresholds) {
        let cap = t.baseline_windows;
        let open = |kind: AnomalyType| self.checks[slot_of(kind)].open.is_some();
        let (latency, cost, traffic, errors, quality) = (
            !open(AnomalyType::LatencySpike),
            !open(AnomalyType::CostSpike),
            !open(AnomalyType::ThroughputDrop),
            !open(AnomalyType::ErrorRateIncrease),
            !open(AnomalyType::QualityDrop),
        );
        if latency && let Some(p) = obs.p95_ms.filter(|_| obs.count >= t.min_events) {
            self.latency.record(index, p.ln(), cap);
        }
        if cost && let Some(c) = obs.cost_per_event.filter(|_| obs.count >= t.min_events) {
            self.cost.record(index, c.ln(), cap);
        }
        if traffic {
            self.traffic.record(index, (obs.weighted + 1.0).ln(), cap);
        }
        if errors && obs.trials >= t.min_events {
            self.error_rate.record(index, obs.failures as f64 / obs.trials as f64, cap);
            self.errors.push_back((index, obs.failures, obs.trials));
            while self.errors.len() > cap {
                self.errors.pop_front();
            }
        }
        if quality && obs.quality.n >= t.min_quality_n {
            self.quality_mean.record(index, obs.quality.mean, cap);
            self.quality.push_back((index, obs.quality));
            while self.quality.len() > cap {
                self.quality.pop_front();
            }
        }
    }

    fn forget(&mut self, kind: AnomalyType) {
        match kind {
            AnomalyType::LatencySpike => self.latency.clear(),
            AnomalyType::CostSpike => self.cost.clear(),
            AnomalyType::ThroughputDrop => self.traffic.clear(),
            AnomalyType::ErrorRateIncrease => {
                self.error_rate.clear();
                self.errors.clear();
            }
            AnomalyType::QualityDrop => {
                self.quality_mean.clear();
                self.quality.clear();
            }
            AnomalyType::UnpricedModel => {}
        }
    }

    /// Whether the series has anything to remember (a baseline or an open check).
    pub fn is_empty(&self) -> bool {
        !self.any_open() && self.traffic.is_empty() && self.latency.is_empty()
    }
}

/// The slot of a type in [`Series::checks`].
pub fn slot_of(kind: AnomalyType) -> usize {
    TYPES.iter().position(|t| *t == kind).unwrap_or(0)
}

/// max over m of Σ(last m scores)/√m, over runs of windows with data.
fn evidence(scores: &VecDeque<f64>) -> f64 {
    let mut best = f64::NEG_INFINITY;
    let mut sum = 0.0;
    for (m, z) in scores.iter().rev().enumerate() {
        if z.is_nan() {
            break;
        }
        sum += z;
        best = best.max(sum / ((m + 1) as f64).sqrt());
    }
    best
}

/// A reading on the log scale: `ratio` is how far above (or, `downward`, below) the baseline
/// the effect must be to open; `critical` the ratio from which it is critical.
fn ratio_reading(level: &Level, x: f64, ratio: f64, critical: f64, downward: bool) -> Reading {
    let sign = if downward { -1.0 } else { 1.0 };
    let up = (sign * (x - level.center)).exp();
    let threshold = ratio.max(1.0);
    Reading {
        score: sign * level.score(x),
        observed: if downward { x.exp() - 1.0 } else { x.exp() },
        baseline: if downward { level.center.exp() - 1.0 } else { level.center.exp() },
        opens: up >= threshold,
        calm: up < 1.0 + (threshold - 1.0) / 2.0,
        severity: if up >= critical { Severity::Critical } else { Severity::Warning },
    }
}

/// Stable for one condition on one series: 32 hex digits of SHA-256 over the type, the window
/// and the dimensions, each line ended by `\n`.
pub fn fingerprint(kind: AnomalyType, window: &str, dims: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    h.update(type_name(kind));
    h.update(b"\n");
    h.update(window);
    h.update(b"\n");
    for (k, v) in dims {
        h.update(k);
        h.update(b"=");
        h.update(v);
        h.update(b"\n");
    }
    hex::encode(&h.finalize()[..16])
}

fn describe(kind: AnomalyType, dims: &BTreeMap<String, String>, r: &Reading) -> String {
    let series = dims.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
    let what = match kind {
        AnomalyType::LatencySpike => format!(
            "p95 latency {:.0} ms is {:.2}× its baseline {:.0} ms",
            r.observed,
            r.observed / r.baseline,
            r.baseline
        ),
        AnomalyType::CostSpike => format!(
            "cost per event ${:.6} is {:.2}× its baseline ${:.6}",
            r.observed,
            r.observed / r.baseline,
            r.baseline
        ),
        AnomalyType::ThroughputDrop => {
            format!("traffic {:.0} events per window against a baseline of {:.0}", r.observed, r.baseline)
        }
        AnomalyType::ErrorRateIncrease => {
            format!("error rate {:.1} % against a baseline of {:.1} %", 100.0 * r.observed, 100.0 * r.baseline)
        }
        AnomalyType::QualityDrop => {
            format!("mean quality {:.3} against a baseline of {:.3}", r.observed, r.baseline)
        }
        AnomalyType::UnpricedModel => {
            format!("{:.0} events of a model without a price in the catalog: its cost is not counted", r.observed)
        }
    };
    if kind == AnomalyType::UnpricedModel {
        format!("{what} ({series})")
    } else {
        format!("{what}, score {:.1} ({series})", r.score)
    }
}
