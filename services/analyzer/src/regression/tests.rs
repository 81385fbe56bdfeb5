#![allow(clippy::unwrap_used)]

use super::*;
use crate::analysis::Analysis;
use modelperf_schema::messages::WindowMetrics;
use rand::{RngExt, SeedableRng, rngs::StdRng};

fn config() -> AnalyzerConfig {
    AnalyzerConfig::default()
}

fn dims(model: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("kind".to_owned(), "task_completed".to_owned()),
        ("model".to_owned(), model.to_owned()),
        ("task_type".to_owned(), "code_edit".to_owned()),
    ])
}

/// A standard normal value (sum of twelve uniforms).
fn normal(rng: &mut StdRng) -> f64 {
    (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0
}

/// One window: 100 lognormal latencies around `median` ms, failures drawn at `error_rate`,
/// 20 judgments around `quality`.
fn window(rng: &mut StdRng, median: f64, error_rate: f64, quality: f64) -> (Observation, Sketch) {
    let mut s = Sketch::new();
    let mut failures = 0;
    for _ in 0..100 {
        s.add(median * (0.5 * normal(rng)).exp());
        failures += u64::from(rng.random::<f64>() < error_rate);
    }
    let scores: Vec<f64> = (0..20).map(|_| (quality + 0.1 * normal(rng)).clamp(0.0, 1.0)).collect();
    let obs = Observation {
        count: 120,
        weighted: 120.0,
        trials: 100,
        failures,
        p95_ms: s.quantile(0.95),
        quality: Moments::from_slice(&scores),
        cost_per_event: None,
        unpriced: 0,
    };
    (obs, s)
}

/// What changes in a series' current period.
#[derive(Clone, Copy)]
struct Change {
    latency: f64,
    error_points: f64,
    quality: f64,
}

const NONE: Change = Change { latency: 1.0, error_points: 0.0, quality: 0.0 };

/// Ten series over the baseline and current periods of the run at window 299, each window's
/// level wobbling by ±5 % (windows are not exchangeable); `changed` changes in the current period.
fn periods(seed: u64, changed: Change) -> Vec<(BTreeMap<String, String>, Periods)> {
    let t = config();
    let mut rng = StdRng::seed_from_u64(seed);
    (0..10)
        .map(|i| {
            let mut p = Periods::default();
            for w in 0..300 {
                let change = if i == 0 && w >= 240 { changed } else { NONE };
                let wobble = 1.0 + 0.05 * normal(&mut rng) / 2.0;
                let (obs, s) = window(
                    &mut rng,
                    800.0 * wobble * change.latency,
                    0.05 + change.error_points,
                    0.75 + change.quality,
                );
                p.record(w, &obs, Some(&s), &t);
            }
            (dims(&format!("m{i}")), p)
        })
        .collect()
}

fn found(seed: u64, change: Change) -> Vec<Insight> {
    let series = periods(seed, change);
    run("1m", 60, 299, series.iter().map(|(d, p)| (d, p)), &config())
}

/// Each injected change is found in its own series and metric with its size, and nothing else.
#[test]
fn injected_regressions_are_found_with_their_size() {
    let latency = found(1, Change { latency: 1.4, ..NONE });
    assert_eq!(latency.len(), 1, "{latency:#?}");
    let l = &latency[0];
    assert_eq!(
        (l.subject["model"].as_str(), l.metric.as_str(), l.kind.as_str()),
        ("m0", "latency_p95_ratio", "regression")
    );
    assert!(l.ci_low > 1.15 && l.ci_low < l.estimate && l.estimate < l.ci_high, "{l:?}");
    assert!((l.estimate - 1.4).abs() < 0.1, "{l:?}");
    assert_eq!((l.n["current_blocks"], l.n["baseline_blocks"]), (12, 48));
    assert_eq!(l.direction, Some(Direction::Decline));
    assert!(l.p_adjusted <= 0.05 && l.p_adjusted >= l.p_value.unwrap());
    assert_eq!(l.window.as_deref(), Some("1m"));
    assert_eq!((l.start.timestamp(), l.end.timestamp()), (0, 300 * 60));

    let success = found(2, Change { error_points: 0.10, ..NONE });
    assert_eq!(
        success.iter().map(|i| (i.subject["model"].as_str(), i.metric.as_str())).collect::<Vec<_>>(),
        [("m0", "success_rate")]
    );
    let s = &success[0];
    assert!((s.estimate + 0.10).abs() < 0.02 && s.ci_high < 0.0, "{s:?}");
    assert_eq!((s.n["current"], s.n["baseline"]), (6000, 24000));
    // The published test is the library's on the pooled counts.
    let (series, t) = (periods(2, Change { error_points: 0.10, ..NONE }), config());
    let tested = test_series(&series[0].0, &series[0].1, 299, &t);
    let z = tested.iter().find(|x| x.metric == Metric::SuccessRate).unwrap();
    assert_eq!((s.statistic, s.p_value), (z.statistic, Some(z.p_value)));

    let quality = found(3, Change { quality: -0.15, ..NONE });
    assert_eq!(
        quality.iter().map(|i| (i.subject["model"].as_str(), i.metric.as_str())).collect::<Vec<_>>(),
        [("m0", "quality_mean")]
    );
    assert!((quality[0].estimate + 0.15).abs() < 0.02, "{:?}", quality[0]);
}

/// A latency 8 % higher is significant with this much data but under the 1.15 bound: not a
/// regression. An improvement is not one either.
#[test]
fn small_changes_and_improvements_are_not_regressions() {
    let slower = periods(4, Change { latency: 1.08, ..NONE });
    let t = config();
    let tested = test_series(&slower[0].0, &slower[0].1, 299, &t);
    let l = tested.iter().find(|x| x.metric == Metric::LatencyP95Ratio).unwrap();
    assert!(l.low > 1.0 && !l.large, "significant, and small: {:.3} [{:.3}, {:.3}]", l.estimate, l.low, l.high);
    assert!(found(4, Change { latency: 1.08, ..NONE }).is_empty());
    assert!(found(5, Change { latency: 0.6, error_points: -0.04, quality: 0.15 }).is_empty());
}

/// Over 50 seeds of ten unchanged series, no run reports a regression; every test of a run is
/// in the family Holm adjusts.
#[test]
fn unchanged_series_do_not_regress() {
    let t = config();
    let mut false_runs = 0;
    for seed in 100..150 {
        let series = periods(seed, NONE);
        let tested: usize = series.iter().map(|(d, p)| test_series(d, p, 299, &t).len()).sum();
        assert_eq!(tested, 30, "ten series, three metrics");
        false_runs += usize::from(!run("1m", 60, 299, series.iter().map(|(d, p)| (d, p)), &t).is_empty());
    }
    assert_eq!(false_runs, 0);
}

/// Too little data in a period: the metric is not tested.
#[test]
fn sparse_periods_are_not_tested() {
    let t = config();
    let mut rng = StdRng::seed_from_u64(9);
    let mut p = Periods::default();
    // The baseline has data in 5 of its 48 blocks only.
    for w in (0..25).chain(240..300) {
        let (obs, s) = window(&mut rng, 800.0, 0.05, 0.75);
        p.record(w, &obs, Some(&s), &t);
    }
    assert!(test_series(&dims("m"), &p, 299, &t).is_empty());
}

fn metrics(w: i64, model: &str, obs: &Observation, s: &Sketch) -> WindowMetrics {
    let start = Utc.timestamp_opt(w * 60, 0).single().unwrap();
    WindowMetrics {
        window: "1m".into(),
        start,
        end: start + chrono::Duration::minutes(1),
        dims: dims(model),
        count: obs.count,
        weighted_count: obs.weighted,
        success: obs.trials - obs.failures,
        failure: obs.failures,
        latency_p95_ms: obs.p95_ms,
        latency_sketch: s.to_bytes(),
        quality_mean: Some(obs.quality.mean),
        quality_m2: Some(obs.quality.m2),
        quality_n: obs.quality.n,
        ..WindowMetrics::default()
    }
}

/// Through the analysis: regressions run at window indices divisible by `regression_every`
/// only (from the windows' times, not the clock), on the sketches of the messages, and a
/// successor restored from a checkpoint and its replay finds the same regressions.
#[test]
fn the_analysis_runs_regressions_on_schedule_and_after_a_restart() {
    let mut rng = StdRng::seed_from_u64(12);
    let base = 1_800_000_000 / 60 / 60 * 60; // a window index divisible by 60
    let mut messages = Vec::new();
    for w in 0..361 {
        for model in ["steady", "slow"] {
            let latency = if model == "slow" && w >= 240 { 1.5 } else { 1.0 };
            let (obs, s) = window(&mut rng, 800.0 * latency, 0.05, 0.75);
            messages.push(metrics(base + w, model, &obs, &s));
        }
    }
    let mut original = Analysis::new(config());
    let mut insights = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let _ = original.ingest(m, i as u64 + 1);
        insights.extend(original.take_insights().into_iter().filter(|x| x.kind == "regression"));
    }
    // The current period of the runs at 299 and 359 holds the slower windows.
    let at: Vec<(i64, &str)> =
        insights.iter().map(|x| (x.end.timestamp() / 60 - base, x.subject["model"].as_str())).collect();
    assert_eq!(at, [(300, "slow"), (360, "slow")], "{insights:#?}");
    assert!(insights.iter().all(|x| x.metric == "latency_p95_ratio" && x.ci_low > 1.15));

    // A successor restored from a checkpoint taken at window 330 replays from the position the
    // checkpoint records and reports the run at 359 identically.
    let cut = messages.iter().position(|m| m.start.timestamp() / 60 == base + 330).unwrap();
    let mut before = Analysis::new(config());
    for (i, m) in messages[..cut].iter().enumerate() {
        let _ = before.ingest(m, i as u64 + 1);
    }
    let (saved, from) = (before.saved(), before.replay_from().unwrap());
    assert!(messages[from as usize - 1].start.timestamp() / 60 <= base + 59, "the replay covers the baseline");
    let mut successor = Analysis::new(config()).restoring(saved);
    for (i, m) in messages[..cut].iter().enumerate().skip(from as usize - 1) {
        let _ = successor.ingest(m, i as u64 + 1);
    }
    successor.finish_restore();
    let _ = successor.take_insights();
    let mut after = Vec::new();
    for (i, m) in messages.iter().enumerate().skip(cut) {
        let _ = successor.ingest(m, i as u64 + 1);
        after.extend(successor.take_insights().into_iter().filter(|x| x.kind == "regression"));
    }
    assert_eq!(after, insights[1..]);
}
