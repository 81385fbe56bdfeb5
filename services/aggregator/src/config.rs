//! The aggregator's configuration: `[nats]`, `[bus]`, `[influx]`, `[http]` and `[aggregator]`,
//! layered as every service's (defaults → TOML → `MODELPERF_<SECTION>__<KEY>`).

use std::time::Duration;

use modelperf_bus::{BusConfig, ConfigError, HttpConfig, NatsConfig};
use modelperf_influx::InfluxConfig;
use modelperf_schema::names::WindowSpec;
use serde::{Deserialize, Serialize};

use crate::window::{DEFAULT_GROUP_BY, Dim};

/// Windows at least this long are merged from shorter windows by the finaliser, never
/// accumulated from raw events.
pub const ROLLUP_FROM: Duration = Duration::from_secs(3_600);

/// The longest `max_revision_age` (the finalised-window bucket keeps two days).
pub const MAX_REVISION_AGE_LIMIT: Duration = Duration::from_secs(23 * 3_600);

/// `PERF_PARTIALS` retention by default (the contract's 1 d).
const PARTIALS_AGE: Duration = Duration::from_secs(86_400);

/// Slack for a finaliser restart between a roll-up's first partial and its close.
const ROLLUP_MARGIN: Duration = Duration::from_secs(3_600);

/// Everything the aggregator reads. Sections of other services are ignored; unknown keys inside
/// a section are errors.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// Stream and consumer limits.
    pub bus: BusConfig,
    /// Where windows are written.
    pub influx: InfluxConfig,
    /// The health and metrics endpoint.
    pub http: HttpConfig,
    /// The aggregator itself.
    pub aggregator: AggregatorConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats: Default::default(),
            bus: Default::default(),
            influx: Default::default(),
            http: HttpConfig::on(9102),
            aggregator: Default::default(),
        }
    }
}

/// `[aggregator]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AggregatorConfig {
    /// Window lengths (`MODELPERF_AGGREGATOR__WINDOWS`, default `1m,1h`). Those shorter than an
    /// hour are accumulated by the partition owners; an hour or longer is merged from the
    /// longest shorter window that divides it.
    #[serde(deserialize_with = "modelperf_bus::config::comma_list")]
    pub windows: Vec<WindowSpec>,
    /// How long after its end a window waits for late events (default 2 min).
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// How long after the close point a window may still be revised (default 1 h).
    #[serde(with = "humantime_serde")]
    pub max_revision_age: Duration,
    /// The series dimensions (default: the contract's six).
    #[serde(deserialize_with = "modelperf_bus::config::comma_list")]
    pub group_by: Vec<Dim>,
    /// Partitions one instance owns at most (0: its fair share of the live instances).
    pub max_partitions: u32,
    /// Whether this instance may run the finaliser (standby replicas do, by default).
    pub finaliser: bool,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            windows: vec![window("1m"), window("1h")],
            allowed_lateness: Duration::from_secs(120),
            max_revision_age: Duration::from_secs(3_600),
            group_by: DEFAULT_GROUP_BY.to_vec(),
            max_partitions: 0,
            finaliser: true,
        }
    }
}

fn window(s: &str) -> WindowSpec {
    s.parse().unwrap_or_else(|e| panic!("built-in window {s}: {e}"))
}

/// A roll-up: `window` is merged from finalised windows of `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollup {
    /// The long window.
    pub window: WindowSpec,
    /// The window it is merged from.
    pub source: WindowSpec,
}

impl AggregatorConfig {
    /// Windows the partition owners accumulate from events.
    pub fn owner_windows(&self) -> Vec<WindowSpec> {
        self.windows.iter().filter(|w| w.duration() < ROLLUP_FROM).cloned().collect()
    }

    /// Windows the finaliser merges from shorter ones.
    pub fn rollups(&self) -> Vec<Rollup> {
        let base = self.owner_windows();
        self.windows
            .iter()
            .filter(|w| w.duration() >= ROLLUP_FROM)
            .filter_map(|w| {
                let source = base.iter().filter(|b| w.secs() % b.secs() == 0).max_by_key(|b| b.secs())?;
                Some(Rollup { window: w.clone(), source: source.clone() })
            })
            .collect()
    }
}

impl Config {
    /// Loads and checks the configuration; the error names the key.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let config: Config = modelperf_bus::config::load(file)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks relations the types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.bus.validate()?;
        self.influx.validate().map_err(|e| ConfigError::Invalid { key: "influx".into(), reason: e.to_string() })?;
        let bad = |key: &str, reason: String| Err(ConfigError::Invalid { key: key.into(), reason });
        let a = &self.aggregator;
        if a.windows.is_empty() {
            return bad("MODELPERF_AGGREGATOR__WINDOWS", "at least one window is needed".into());
        }
        if a.owner_windows().is_empty() {
            return bad("MODELPERF_AGGREGATOR__WINDOWS", "at least one window must be shorter than 1h".into());
        }
        let mut names: Vec<&str> = a.windows.iter().map(WindowSpec::name).collect();
        names.sort_unstable();
        if names.windows(2).any(|p| p[0] == p[1]) {
            return bad("MODELPERF_AGGREGATOR__WINDOWS", format!("a window is listed twice: {}", names.join(",")));
        }
        for w in a.windows.iter().filter(|w| w.duration() >= ROLLUP_FROM) {
            if !a.rollups().iter().any(|r| r.window == *w) {
                return bad(
                    "MODELPERF_AGGREGATOR__WINDOWS",
                    format!("{w} is merged from a shorter window, but none of them divides it"),
                );
            }
        }
        if a.group_by.is_empty() {
            return bad("MODELPERF_AGGREGATOR__GROUP_BY", "at least one dimension is needed".into());
        }
        // A pending roll-up pins the finaliser's replay position at its first partial, which
        // PERF_PARTIALS must still hold when the finaliser restarts.
        let partials_age = self.bus.max_age.get(modelperf_bus::streams::PARTIALS).copied().unwrap_or(PARTIALS_AGE);
        for r in a.rollups() {
            let needs = r.window.duration() + a.allowed_lateness + ROLLUP_MARGIN;
            if !partials_age.is_zero() && needs > partials_age {
                return bad(
                    "MODELPERF_AGGREGATOR__WINDOWS",
                    format!(
                        "{} windows stay pending for {needs:?} (length, lateness and a margin), longer than PERF_PARTIALS keeps partials ({partials_age:?}); shorten the window or raise [bus.max_age] PERF_PARTIALS",
                        r.window
                    ),
                );
            }
        }
        if let Some(longest) = a.owner_windows().iter().map(WindowSpec::duration).max()
            && a.max_revision_age < longest
        {
            return bad(
                "MODELPERF_AGGREGATOR__MAX_REVISION_AGE",
                format!("must be at least the longest window accumulated from events ({longest:?})"),
            );
        }
        if a.max_revision_age > MAX_REVISION_AGE_LIMIT {
            return bad("MODELPERF_AGGREGATOR__MAX_REVISION_AGE", format!("at most {MAX_REVISION_AGE_LIMIT:?}"));
        }
        if a.allowed_lateness.is_zero() && a.windows.iter().any(|w| w.secs() < 1) {
            return bad("MODELPERF_AGGREGATOR__ALLOWED_LATENESS", "must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::result_large_err)] // figment's Jail returns its own error type
mod tests {
    use super::*;

    #[test]
    fn the_contract_keys_reach_the_aggregator() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("MODELPERF_AGGREGATOR__WINDOWS", "10s,1m,1h");
            jail.set_env("MODELPERF_AGGREGATOR__ALLOWED_LATENESS", "1s");
            jail.set_env("MODELPERF_AGGREGATOR__MAX_REVISION_AGE", "30m");
            jail.set_env("MODELPERF_AGGREGATOR__GROUP_BY", "kind,model");
            jail.set_env("MODELPERF_INFLUX__URL", "http://127.0.0.1:18086");
            jail.set_env("MODELPERF_COLLECTOR__PRIVACY", "strict");
            let c = Config::load(None).unwrap();
            let a = &c.aggregator;
            assert_eq!(a.owner_windows().iter().map(|w| w.name()).collect::<Vec<_>>(), ["10s", "1m"]);
            assert_eq!(a.rollups(), vec![Rollup { window: window("1h"), source: window("1m") }]);
            assert_eq!(a.allowed_lateness, Duration::from_secs(1));
            assert_eq!(a.max_revision_age, Duration::from_secs(1_800));
            assert_eq!(a.group_by, vec![Dim::Kind, Dim::Model]);
            assert_eq!(c.influx.url, "http://127.0.0.1:18086");
            Ok(())
        });
    }

    #[test]
    fn mistakes_name_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("MODELPERF_AGGREGATOR__WINDOWS", "7m,1h");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("WINDOWS") && err.contains("divides"), "{err}");
            jail.set_env("MODELPERF_AGGREGATOR__WINDOWS", "1h");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("shorter than 1h"), "{err}");
            jail.set_env("MODELPERF_AGGREGATOR__WINDOWS", "1m,1d");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("PERF_PARTIALS"), "{err}");
            jail.set_env("MODELPERF_AGGREGATOR__WINDOWS", "1m,1x");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("unit"), "{err}");
            jail.set_env("MODELPERF_AGGREGATOR__WINDOWS", "1m");
            jail.set_env("MODELPERF_AGGREGATOR__GROUP_BY", "kind,colour");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("colour"), "{err}");
            Ok(())
        });
    }
}
