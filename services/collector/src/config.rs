//! The collector's configuration: `[nats]`, `[bus]`, `[http]` and `[collector]`, layered as every
//! service's (defaults → TOML → `MODELPERF_<SECTION>__<KEY>`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use modelperf_bus::{BusConfig, ConfigError, HttpConfig, NatsConfig};
use modelperf_schema::PrivacyLevel;
use serde::{Deserialize, Serialize};

use crate::sampling::Rate;

/// Everything the collector reads. Sections of other services (one configuration file and one
/// environment can serve every service) are ignored; unknown keys inside a section are errors.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// Stream and consumer limits.
    pub bus: BusConfig,
    /// The health and metrics endpoint.
    pub http: HttpConfig,
    /// The collector itself.
    pub collector: CollectorConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats: Default::default(),
            bus: Default::default(),
            http: HttpConfig::on(9101),
            collector: Default::default(),
        }
    }
}

/// Where the collector runs: production refuses to start without a privacy key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// Development: a missing privacy key falls back to a published development key, with a warning.
    #[default]
    Dev,
    /// Production: a privacy key is required (exit 64 without one).
    Prod,
}

/// `[collector]`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorConfig {
    /// `dev` or `prod` (`MODELPERF_COLLECTOR__PROFILE`).
    pub profile: Profile,
    /// `off`, `pseudonymize` (default) or `strict`.
    pub privacy: PrivacyLevel,
    /// The secret key of the pseudonyms (`MODELPERF_COLLECTOR__PRIVACY_KEY`).
    #[serde(deserialize_with = "modelperf_bus::config::scalar_string")]
    pub privacy_key: Option<String>,
    /// The name of that key, recorded on every event for rotation.
    #[serde(deserialize_with = "modelperf_bus::config::scalar_string")]
    pub privacy_key_id: Option<String>,
    /// Attribute keys whose values are personal ids, pseudonymised like `user_id`.
    #[serde(deserialize_with = "modelperf_bus::config::comma_list")]
    pub pseudonymize_attrs: Vec<String>,
    /// The price catalog.
    pub prices_file: PathBuf,
    /// Sampling rates and the overrides that keep interesting events.
    pub sampling: SamplingConfig,
    /// Batches of raw messages whose outputs may await their acks at once.
    pub in_flight_batches: usize,
}

impl std::fmt::Debug for CollectorConfig {
    // Hand-written so the privacy key never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectorConfig")
            .field("profile", &self.profile)
            .field("privacy", &self.privacy)
            .field("privacy_key", &self.privacy_key.as_ref().map(|_| "<redacted>"))
            .field("privacy_key_id", &self.privacy_key_id)
            .field("pseudonymize_attrs", &self.pseudonymize_attrs)
            .field("prices_file", &self.prices_file)
            .field("sampling", &self.sampling)
            .field("in_flight_batches", &self.in_flight_batches)
            .finish()
    }
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            profile: Profile::Dev,
            privacy: PrivacyLevel::Pseudonymize,
            privacy_key: None,
            privacy_key_id: None,
            pseudonymize_attrs: Vec::new(),
            prices_file: PathBuf::from("deploy/prices.toml"),
            sampling: SamplingConfig::default(),
            in_flight_batches: 4,
        }
    }
}

/// `[collector.sampling]`: rates per task type and the overrides.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingConfig {
    /// The rate of task types without an entry in `rates` (and of events without a task type).
    pub default: Rate,
    /// `task_type = "1/k"`.
    pub rates: BTreeMap<String, Rate>,
    /// The secret of the keyed hash that decides which tasks are kept. Every replica must share
    /// it; changing it changes which tasks are kept.
    pub key: String,
    /// Keep failed completions and invalid validations of sampled-out tasks.
    pub keep_failures: bool,
    /// Keep judgments scoring below this.
    pub keep_judgment_below: Option<f64>,
    /// Keep completions slower than this (milliseconds).
    pub keep_latency_above_ms: Option<f64>,
    /// Keep completions and judgments costing more than this (USD).
    pub keep_cost_above_usd: Option<f64>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            default: Rate::ONE,
            rates: BTreeMap::new(),
            key: "modelperf-sampling".into(),
            keep_failures: true,
            keep_judgment_below: Some(0.5),
            keep_latency_above_ms: None,
            keep_cost_above_usd: None,
        }
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
        let bad = |key: &str, reason: String| Err(ConfigError::Invalid { key: key.into(), reason });
        let s = &self.collector.sampling;
        if let Some(t) = s.keep_judgment_below
            && !(0.0..=1.0).contains(&t)
        {
            return bad("collector.sampling.keep_judgment_below", format!("{t} is not a score in 0..1"));
        }
        for (key, v) in
            [("keep_latency_above_ms", s.keep_latency_above_ms), ("keep_cost_above_usd", s.keep_cost_above_usd)]
        {
            if let Some(v) = v
                && !(v.is_finite() && v >= 0.0)
            {
                return bad(&format!("collector.sampling.{key}"), format!("{v} is not a finite non-negative number"));
            }
        }
        if s.key.is_empty() {
            return bad("collector.sampling.key", "must not be empty".into());
        }
        if self.collector.in_flight_batches == 0 {
            return bad("MODELPERF_COLLECTOR__IN_FLIGHT_BATCHES", "must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::result_large_err)] // figment's Jail returns its own error type
mod tests {
    use super::*;

    #[test]
    fn the_contract_keys_reach_the_collector() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "[collector.sampling]\nkeep_judgment_below = 0.3\n[collector.sampling.rates]\nsummarize = \"1/10\"\n",
            )?;
            jail.set_env("MODELPERF_COLLECTOR__PRIVACY_KEY", "123456");
            jail.set_env("MODELPERF_COLLECTOR__PRIVACY_KEY_ID", "2024");
            jail.set_env("MODELPERF_COLLECTOR__PRICES_FILE", "/etc/modelperf/prices.toml");
            jail.set_env("MODELPERF_COLLECTOR__PRIVACY", "strict");
            jail.set_env("MODELPERF_COLLECTOR__PROFILE", "prod");
            jail.set_env("MODELPERF_COLLECTOR__PSEUDONYMIZE_ATTRS", "customer_id, account");
            // Another service's section in the shared environment is not the collector's business.
            jail.set_env("MODELPERF_INFLUX__URL", "http://127.0.0.1:8086");
            let c = Config::load(Some(std::path::Path::new("c.toml"))).unwrap();
            assert_eq!(c.collector.privacy_key.as_deref(), Some("123456"));
            assert_eq!(c.collector.privacy_key_id.as_deref(), Some("2024"));
            assert_eq!(c.collector.prices_file, PathBuf::from("/etc/modelperf/prices.toml"));
            assert_eq!(c.collector.privacy, PrivacyLevel::Strict);
            assert_eq!(c.collector.profile, Profile::Prod);
            assert_eq!(c.collector.pseudonymize_attrs, vec!["customer_id".to_owned(), "account".to_owned()]);
            assert_eq!(c.collector.sampling.keep_judgment_below, Some(0.3));
            assert_eq!(c.collector.sampling.rates["summarize"].to_string(), "1/10");
            Ok(())
        });
    }

    #[test]
    fn mistakes_name_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("MODELPERF_COLLECTOR__PRIVACY_LEVEL", "strict");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("privacy_level"), "{err}");
            jail.clear_env();
            jail.create_file("c.toml", "[collector.sampling]\nkeep_judgment_below = 2.0\n")?;
            let err = Config::load(Some(std::path::Path::new("c.toml"))).unwrap_err().to_string();
            assert!(err.contains("keep_judgment_below"), "{err}");
            jail.create_file("d.toml", "[collector.sampling.rates]\nsummarize = \"2/3\"\n")?;
            let err = Config::load(Some(std::path::Path::new("d.toml"))).unwrap_err().to_string();
            assert!(err.contains("1/k"), "{err}");
            Ok(())
        });
    }
}
