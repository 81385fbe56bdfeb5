//! `[analyzer]`: which windows are analysed and the thresholds of the anomaly checks (scalars
//! also in the environment, `MODELPERF_ANALYZER__<KEY>`).

use modelperf_bus::{BusConfig, ConfigError, HttpConfig, NatsConfig};
use modelperf_schema::names::WindowSpec;

pub use crate::report::schedule::{ReportsConfig, ScheduleConfig};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Everything the analyzer reads. Sections of other services are ignored; unknown keys inside a
/// section are errors.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// Stream and consumer limits.
    pub bus: BusConfig,
    /// The health and metrics endpoint.
    pub http: HttpConfig,
    /// The analyzer itself.
    pub analyzer: AnalyzerConfig,
    /// Scheduled reports.
    pub reports: ReportsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats: Default::default(),
            bus: Default::default(),
            http: HttpConfig::on(9103),
            analyzer: Default::default(),
            reports: Default::default(),
        }
    }
}

impl Config {
    /// Loads and checks the configuration; the error names the key.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let config: Config = modelperf_bus::config::load(file)?;
        config.bus.validate()?;
        config.analyzer.validate().map_err(|(key, reason)| ConfigError::Invalid { key, reason })?;
        config.reports.validate().map_err(|(key, reason)| ConfigError::Invalid { key, reason })?;
        Ok(config)
    }
}

/// `[analyzer]`: the windows analysed and when a window is anomalous (defaults in brackets;
/// `docs/analyzer.md` explains each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyzerConfig {
    /// The window lengths whose metrics are checked for anomalies [`1m`]; others are read and
    /// ignored.
    #[serde(deserialize_with = "modelperf_bus::config::comma_list")]
    pub windows: Vec<WindowSpec>,
    /// Trailing windows a baseline holds at most [120].
    pub baseline_windows: usize,
    /// Windows a baseline needs before its check runs [20].
    pub min_baseline: usize,
    /// The evidence spans the last 1..=this many windows [3].
    pub evidence_windows: usize,
    /// Standardised evidence that opens an anomaly [5.0].
    pub open_score: f64,
    /// Below this score a window counts towards resolving [2.0].
    pub resolve_score: f64,
    /// Calm windows in a row that resolve an anomaly [3].
    pub resolve_after: u32,
    /// An anomaly open this many windows is taken as the new normal [240].
    pub accept_after: u32,
    /// Events a window needs for its latency, error-rate and cost checks [20].
    pub min_events: u64,
    /// Judgments a window needs for its quality check [10].
    pub min_quality_n: u64,
    /// p95 at least this multiple of the baseline opens a latency spike [1.2].
    pub latency_ratio: f64,
    /// An error rate this much above the baseline (a fraction) opens [0.05].
    pub error_rate_points: f64,
    /// Mean quality this much below the baseline opens [0.05].
    pub quality_drop: f64,
    /// Cost per event at least this multiple of the baseline opens [1.5].
    pub cost_ratio: f64,
    /// Traffic at or below this fraction of the baseline opens a throughput drop [0.5].
    pub throughput_ratio: f64,
    /// Series with less traffic than this per window get no throughput check [20].
    pub min_throughput: f64,
    /// The smallest scatter on the log scale, ln(1.02): a flat series still needs a 2 % change
    /// per standard deviation [0.0198].
    pub log_floor: f64,
    /// A series without data for this many windows and nothing open is forgotten [240].
    pub forget_after: i64,
    /// Trends are tested every this many windows, at window indices divisible by it (0: never)
    /// [60].
    pub trend_every: i64,
    /// The trailing windows a trend test spans [120].
    pub trend_windows: usize,
    /// Windows with a value a metric needs for its trend test [12].
    pub trend_min_points: usize,
    /// The false discovery rate (Benjamini–Hochberg) at which a trend is published, and 1 − the
    /// confidence of the slope's interval [0.05].
    pub trend_alpha: f64,
    /// Lags of the Hamed–Rao correction, 1..=this (0: every lag); 3 holds the level better on
    /// windows than every lag does (`docs/analyzer.md`) [3].
    pub trend_max_lag: usize,
    /// Regressions are tested every this many windows, at window indices divisible by it (0:
    /// never); a multiple of `regression_block` [60].
    pub regression_every: i64,
    /// The current period a regression test looks at, in windows; a multiple of
    /// `regression_block` [60].
    pub regression_current: i64,
    /// The baseline it is compared with: this many windows just before the current period; a
    /// multiple of `regression_block` [240].
    pub regression_baseline: i64,
    /// Consecutive windows merged into one unit of the latency bootstrap [5].
    pub regression_block: i64,
    /// Units with data each period needs before a metric is tested [6].
    pub regression_min_units: usize,
    /// The family-wise error rate (Holm, over every series × metric of a run) [0.05].
    pub regression_alpha: f64,
    /// A latency regression: the lower 95 % bound of the p95 ratio above this [1.15].
    pub regression_latency_ratio: f64,
    /// A success regression: significant and at least this much lower (a fraction) [0.02].
    pub regression_success_points: f64,
    /// A quality regression: significant and at least this much lower [0.02].
    pub regression_quality_drop: f64,
    /// Bootstrap resamples of the p95 ratio [1000].
    pub regression_resamples: usize,
}

impl Default for AnalyzerConfig {
    fn default() -> Self {
        Self {
            windows: vec![WindowSpec::from_str("1m").unwrap_or_else(|e| unreachable!("built-in window: {e}"))],
            baseline_windows: 120,
            min_baseline: 20,
            evidence_windows: 3,
            open_score: 5.0,
            resolve_score: 2.0,
            resolve_after: 3,
            accept_after: 240,
            min_events: 20,
            min_quality_n: 10,
            latency_ratio: 1.2,
            error_rate_points: 0.05,
            quality_drop: 0.05,
            cost_ratio: 1.5,
            throughput_ratio: 0.5,
            min_throughput: 20.0,
            log_floor: 1.02f64.ln(),
            forget_after: 240,
            trend_every: 60,
            trend_windows: 120,
            trend_min_points: 12,
            trend_alpha: 0.05,
            trend_max_lag: 3,
            regression_every: 60,
            regression_current: 60,
            regression_baseline: 240,
            regression_block: 5,
            regression_min_units: 6,
            regression_alpha: 0.05,
            regression_latency_ratio: 1.15,
            regression_success_points: 0.02,
            regression_quality_drop: 0.02,
            regression_resamples: 1000,
        }
    }
}

impl AnalyzerConfig {
    /// Checks what the types cannot; the error names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let key = |k: &str| format!("MODELPERF_ANALYZER__{}", k.to_uppercase());
        let t = self;
        if self.windows.is_empty() {
            return Err((key("windows"), "at least one window".into()));
        }
        if t.baseline_windows < 8 {
            return Err((key("baseline_windows"), "at least 8".into()));
        }
        if t.min_baseline < 4 || t.min_baseline > t.baseline_windows {
            return Err((key("min_baseline"), format!("between 4 and baseline_windows ({})", t.baseline_windows)));
        }
        if !(1..=10).contains(&t.evidence_windows) {
            return Err((key("evidence_windows"), "between 1 and 10".into()));
        }
        if t.resolve_after == 0 || t.accept_after <= t.resolve_after {
            return Err((key("accept_after"), "resolve_after must be at least 1 and below accept_after".into()));
        }
        for (name, v, min) in [
            ("open_score", t.open_score, 0.0),
            ("resolve_score", t.resolve_score, f64::NEG_INFINITY),
            ("latency_ratio", t.latency_ratio, 1.0),
            ("cost_ratio", t.cost_ratio, 1.0),
            ("error_rate_points", t.error_rate_points, 0.0),
            ("quality_drop", t.quality_drop, 0.0),
            ("min_throughput", t.min_throughput, 0.0),
            ("log_floor", t.log_floor, 0.0),
        ] {
            if !(v.is_finite() && v > min) {
                return Err((key(name), format!("{v} must be a finite number above {min}")));
            }
        }
        if t.resolve_score >= t.open_score {
            return Err((key("resolve_score"), "must be below open_score".into()));
        }
        if t.trend_every < 0 {
            return Err((key("trend_every"), "0 (never) or a number of windows".into()));
        }
        if t.trend_min_points < 3 || t.trend_windows < t.trend_min_points {
            return Err((key("trend_min_points"), format!("between 3 and trend_windows ({})", t.trend_windows)));
        }
        if !(t.trend_alpha > 0.0 && t.trend_alpha < 0.5) {
            return Err((key("trend_alpha"), "between 0 and 0.5".into()));
        }
        if t.regression_block < 1 {
            return Err((key("regression_block"), "at least 1 window".into()));
        }
        for (name, v) in [
            ("regression_every", t.regression_every),
            ("regression_current", t.regression_current),
            ("regression_baseline", t.regression_baseline),
        ] {
            if v < 0 || v % t.regression_block != 0 || (v == 0 && name != "regression_every") {
                return Err((
                    key(name),
                    format!("{v}: a positive multiple of regression_block ({})", t.regression_block),
                ));
            }
        }
        let units = (t.regression_current / t.regression_block).min(t.regression_baseline / t.regression_block);
        if t.regression_min_units < 2 || t.regression_min_units as i64 > units {
            return Err((
                key("regression_min_units"),
                format!("between 2 and the blocks of the shorter period ({units})"),
            ));
        }
        if !(t.regression_alpha > 0.0 && t.regression_alpha < 0.5) {
            return Err((key("regression_alpha"), "between 0 and 0.5".into()));
        }
        for (name, v, min) in [
            ("regression_latency_ratio", t.regression_latency_ratio, 1.0),
            ("regression_success_points", t.regression_success_points, 0.0),
            ("regression_quality_drop", t.regression_quality_drop, 0.0),
        ] {
            if !(v.is_finite() && v >= min) {
                return Err((key(name), format!("{v} must be a finite number of at least {min}")));
            }
        }
        if t.regression_resamples < 100 {
            return Err((key("regression_resamples"), "at least 100".into()));
        }
        if !(t.throughput_ratio > 0.0 && t.throughput_ratio < 1.0) {
            return Err((key("throughput_ratio"), "between 0 and 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::result_large_err)] // figment's Jail returns its own error type
mod tests {
    use super::*;

    #[test]
    fn the_keys_reach_the_analyzer() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("MODELPERF_ANALYZER__WINDOWS", "10s,1m");
            jail.set_env("MODELPERF_ANALYZER__OPEN_SCORE", "6");
            jail.set_env("MODELPERF_ANALYZER__BASELINE_WINDOWS", "30");
            let c = Config::load(None).unwrap();
            assert_eq!(c.analyzer.windows.iter().map(|w| w.name()).collect::<Vec<_>>(), vec!["10s", "1m"]);
            assert_eq!(c.analyzer.open_score, 6.0);
            assert_eq!(c.analyzer.baseline_windows, 30);
            assert_eq!(c.http.listen.port(), 9103);
            Ok(())
        });
    }

    #[test]
    fn mistakes_name_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("MODELPERF_ANALYZER__RESOLVE_SCORE", "7");
            assert!(Config::load(None).unwrap_err().to_string().contains("RESOLVE_SCORE"));
            jail.set_env("MODELPERF_ANALYZER__RESOLVE_SCORE", "2");
            jail.set_env("MODELPERF_ANALYZER__MIN_BASELINE", "500");
            assert!(Config::load(None).unwrap_err().to_string().contains("MIN_BASELINE"));
            jail.set_env("MODELPERF_ANALYZER__MIN_BASELINE", "20");
            jail.set_env("MODELPERF_ANALYZER__REGRESSION_CURRENT", "62");
            assert!(Config::load(None).unwrap_err().to_string().contains("REGRESSION_CURRENT"));
            jail.set_env("MODELPERF_ANALYZER__REGRESSION_CURRENT", "60");
            jail.set_env("MODELPERF_ANALYZER__REGRESSION_MIN_UNITS", "13");
            assert!(Config::load(None).unwrap_err().to_string().contains("REGRESSION_MIN_UNITS"));
            Ok(())
        });
    }
}
