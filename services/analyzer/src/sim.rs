//! Simulated metrics streams with injected changes, to measure how well the anomaly checks
//! detect what they should and how rarely they cry wolf (`analyzer-sim` in the end-to-end
//! crate runs it over many seeds; a test here runs a few).
//!
//! Each simulated series is one model on one task type whose windows carry every field the
//! checks read. Per window: traffic is Poisson around `events` with a daily cycle of ±30 %;
//! latency is lognormal (σ = 0.6 on the log scale) around a median that follows the same cycle
//! by ±15 %, and the window's p95 is the exact 95th percentile of its events; failures are
//! binomial at 3 %; a quarter of the events are judged, scores normal around 0.8 (sd 0.12)
//! clipped to 0..1; cost is lognormal per event (σ = 0.3). Changes start at a random window of
//! the measured day and last `change_windows`.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use modelperf_schema::messages::{AnomalyState, AnomalyType, WindowMetrics};
use modelperf_stats::moments::Moments;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::analysis::Analysis;
use crate::config::AnalyzerConfig;

/// One simulated scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Series.
    pub series: usize,
    /// Mean events per series per window.
    pub events: f64,
    /// Windows before the measured day (baselines warm up).
    pub warmup: i64,
    /// Windows measured (1 440 = a day of `1m` windows).
    pub measured: i64,
    /// How long an injected change lasts.
    pub change_windows: i64,
    /// The changes injected, each on its own series.
    pub changes: Vec<Change>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            series: 10,
            events: 300.0,
            warmup: 120,
            measured: 1_440,
            change_windows: 60,
            changes: vec![Change::LatencyP95(1.4), Change::ErrorRate(0.10), Change::Quality(-0.15)],
        }
    }
}

/// A change injected on one series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    /// Every latency multiplied by this (so is the p95).
    LatencyP95(f64),
    /// This much added to the failure probability.
    ErrorRate(f64),
    /// This much added to the mean judgment score.
    Quality(f64),
}

impl Change {
    /// The anomaly type that should detect it.
    pub fn detected_as(self) -> AnomalyType {
        match self {
            Change::LatencyP95(_) => AnomalyType::LatencySpike,
            Change::ErrorRate(_) => AnomalyType::ErrorRateIncrease,
            Change::Quality(_) => AnomalyType::QualityDrop,
        }
    }
}

/// What one seed showed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Per injected change: the windows from its start to the anomaly's opening (1 = the first
    /// window of the change), or `None` when it never opened during the change.
    pub delays: Vec<(Change, Option<i64>)>,
    /// Anomalies opened that no injected change explains, with their type.
    pub false_anomalies: Vec<AnomalyType>,
    /// Anomalies resolved.
    pub resolved: usize,
}

/// Runs one seed of a scenario through the analysis.
pub fn run(scenario: &Scenario, config: &AnalyzerConfig, seed: u64) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let total = scenario.warmup + scenario.measured;
    // Each change on its own series, starting inside the measured day with room to end in it.
    let last_start = (total - scenario.change_windows - 5).max(scenario.warmup + 1);
    let injected: Vec<(Change, usize, i64)> = scenario
        .changes
        .iter()
        .enumerate()
        .map(|(i, c)| (*c, i % scenario.series, rng.random_range(scenario.warmup..last_start)))
        .collect();
    let phases: Vec<f64> = (0..scenario.series).map(|_| rng.random_range(0.0..1.0)).collect();
    let epoch = Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).single().unwrap_or_default();
    let mut analysis = Analysis::new(config.clone());
    let mut outcome = Outcome { delays: injected.iter().map(|(c, _, _)| (*c, None)).collect(), ..Outcome::default() };
    let mut seq = 0u64;
    let mut latencies = Vec::new();
    // One window more than measured, so the last measured frame closes.
    for w in 0..=total {
        let start = epoch + chrono::Duration::minutes(w);
        for (s, phase) in phases.iter().enumerate() {
            let active = |kind: fn(&Change) -> bool| {
                injected
                    .iter()
                    .filter(|(c, series, at)| {
                        *series == s && kind(c) && (*at..*at + scenario.change_windows).contains(&w)
                    })
                    .map(|(c, _, _)| *c)
                    .next()
            };
            let day = 2.0 * std::f64::consts::PI * (w as f64 / 1_440.0 + phase);
            let events = poisson(&mut rng, scenario.events * (1.0 + 0.3 * day.sin()));
            let mut median_ms = 800.0 * (1.0 + 0.15 * day.sin()) * (1.0 + s as f64 / 10.0);
            if let Some(Change::LatencyP95(k)) = active(|c| matches!(c, Change::LatencyP95(_))) {
                median_ms *= k;
            }
            let mut p_fail = 0.03;
            if let Some(Change::ErrorRate(d)) = active(|c| matches!(c, Change::ErrorRate(_))) {
                p_fail += d;
            }
            let mut quality_mean = 0.8;
            if let Some(Change::Quality(d)) = active(|c| matches!(c, Change::Quality(_))) {
                quality_mean += d;
            }
            latencies.clear();
            let (mut failures, mut cost, mut quality) = (0u64, 0.0, Moments::default());
            for i in 0..events {
                latencies.push(median_ms * (0.6 * normal(&mut rng)).exp());
                failures += u64::from(rng.random::<f64>() < p_fail);
                cost += 0.002 * (0.3 * normal(&mut rng)).exp();
                if i % 4 == 0 {
                    quality.push((quality_mean + 0.12 * normal(&mut rng)).clamp(0.0, 1.0));
                }
            }
            let m = metrics(s, start, events, failures, &mut latencies, cost, quality);
            seq += 1;
            let changes = analysis.ingest(&m, seq);
            // The trends are not what this benchmark measures.
            let _ = analysis.take_insights();
            for a in changes {
                if a.state == AnomalyState::Resolved {
                    outcome.resolved += 1;
                    continue;
                }
                let index = a.detected_at.timestamp() / 60 - 1 - epoch.timestamp() / 60;
                let explained = injected.iter().position(|(c, series, at)| {
                    c.detected_as() == a.kind
                        && a.series.get("model").map(String::as_str) == Some(&model_name(*series))
                        && (*at..*at + scenario.change_windows).contains(&index)
                });
                match explained {
                    Some(i) => {
                        let delay = index - injected[i].2 + 1;
                        let slot = &mut outcome.delays[i].1;
                        *slot = Some(slot.map_or(delay, |d: i64| d.min(delay)));
                    }
                    None if index >= scenario.warmup => outcome.false_anomalies.push(a.kind),
                    None => {}
                }
            }
        }
    }
    outcome
}

fn model_name(series: usize) -> String {
    format!("model-{series}")
}

fn metrics(
    series: usize,
    start: DateTime<Utc>,
    events: u64,
    failures: u64,
    latencies: &mut [f64],
    cost: f64,
    quality: Moments,
) -> WindowMetrics {
    let p95 = if latencies.is_empty() {
        None
    } else {
        let k = ((0.95 * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1;
        let (_, v, _) = latencies.select_nth_unstable_by(k, f64::total_cmp);
        Some(*v)
    };
    WindowMetrics {
        window: "1m".into(),
        start,
        end: start + chrono::Duration::minutes(1),
        dims: BTreeMap::from([
            ("kind".to_owned(), "task_completed".to_owned()),
            ("model".to_owned(), model_name(series)),
            ("task_type".to_owned(), if series.is_multiple_of(2) { "code_edit" } else { "review" }.to_owned()),
        ]),
        count: events,
        weighted_count: events as f64,
        success: events - failures,
        failure: failures,
        success_rate: (events > 0).then(|| (events - failures) as f64 / events as f64),
        latency_p95_ms: p95,
        cost_usd: (events > 0).then_some(cost),
        quality_mean: (quality.n > 0).then_some(quality.mean),
        quality_m2: (quality.n > 0).then_some(quality.m2),
        quality_n: quality.n,
        ..WindowMetrics::default()
    }
}

/// A standard normal deviate (Box–Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A Poisson count; the normal approximation, exact enough at the rates simulated (≥ 50).
fn poisson(rng: &mut StdRng, mean: f64) -> u64 {
    (mean + mean.sqrt() * normal(rng)).round().max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A few seeds of the benchmark's scenario: every change found within three windows, and
    /// at most one false anomaly a day across the ten series.
    #[test]
    fn injected_changes_are_found_and_noise_is_not() {
        let config = AnalyzerConfig::default();
        for seed in 0..2 {
            let outcome = run(&Scenario::default(), &config, seed);
            for (change, delay) in &outcome.delays {
                assert!(delay.is_some_and(|d| d <= 3), "seed {seed}: {change:?} detected after {delay:?} windows");
            }
            assert!(outcome.false_anomalies.len() <= 1, "seed {seed}: false anomalies {:?}", outcome.false_anomalies);
            assert!(outcome.resolved >= outcome.delays.len(), "seed {seed}: every change resolves once it ends");
        }
    }
}
