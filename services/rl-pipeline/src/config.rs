//! `[rl]`: batching, joins and the reward (maps live in TOML; scalars also in the environment,
//! `MODELPERF_RL__<KEY>`).

use std::collections::BTreeMap;
use std::time::Duration;

use modelperf_bus::{BusConfig, ConfigError, HttpConfig, NatsConfig};
use modelperf_schema::Kind;
use serde::{Deserialize, Serialize};

/// Everything the rl-pipeline reads. Sections of other services are ignored; unknown keys inside
/// a section are errors.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// Stream and consumer limits.
    pub bus: BusConfig,
    /// The health and metrics endpoint.
    pub http: HttpConfig,
    /// The pipeline itself.
    pub rl: RlConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self { nats: Default::default(), bus: Default::default(), http: HttpConfig::on(9105), rl: Default::default() }
    }
}

impl Config {
    /// Loads and checks the configuration; the error names the key.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let config: Config = modelperf_bus::config::load(file)?;
        config.bus.validate()?;
        config.rl.validate().map_err(|reason| ConfigError::Invalid { key: "rl".into(), reason })?;
        Ok(config)
    }
}

/// `[rl]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RlConfig {
    /// Samples per batch at most (`MODELPERF_RL__BATCH_SIZE`).
    pub batch_size: usize,
    /// A batch closes this long after its first sample (`MODELPERF_RL__BATCH_MAX_AGE`).
    #[serde(with = "humantime_serde")]
    pub batch_max_age: Duration,
    /// A batch closes before its MessagePack exceeds this many bytes.
    pub batch_max_bytes: usize,
    /// A join expires this long after its first part (`MODELPERF_RL__JOIN_WINDOW`).
    #[serde(with = "humantime_serde")]
    pub join_window: Duration,
    /// Once the required parts are in, how long to wait for optional ones (`MODELPERF_RL__JOIN_GRACE`).
    #[serde(with = "humantime_serde")]
    pub join_grace: Duration,
    /// The parts a sample needs.
    #[serde(deserialize_with = "modelperf_bus::config::comma_list")]
    pub required: Vec<Kind>,
    /// Open joins per partition at most; beyond, the oldest join is expired (counted).
    pub max_open_joins: usize,
    /// What a batch is per: `task_type` (default) or `tenant`.
    pub dataset_by: DatasetBy,
    /// Partitions one replica owns at most (0: its fair share of the live replicas).
    pub max_partitions: u32,
    /// The reward.
    pub reward: RewardConfig,
}

impl Default for RlConfig {
    fn default() -> Self {
        Self {
            batch_size: 256,
            batch_max_age: Duration::from_secs(60),
            batch_max_bytes: 900 * 1024,
            join_window: Duration::from_secs(600),
            join_grace: Duration::from_secs(5),
            required: vec![Kind::TaskCompleted, Kind::Judgment],
            max_open_joins: 2_000_000,
            dataset_by: DatasetBy::TaskType,
            max_partitions: 0,
            reward: RewardConfig::default(),
        }
    }
}

/// What a dataset is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetBy {
    /// One dataset per task type (`default` without one).
    #[default]
    TaskType,
    /// One per tenant (`default` without one).
    Tenant,
}

/// `[rl.reward]`: weights of the components and the normalisation references.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardConfig {
    /// Component → weight (`quality`, `success`, `latency`, `cost`, `compliance`).
    pub weights: BTreeMap<String, f64>,
    /// The references latency and cost are normalised against, when a task type has none.
    pub default_reference: Reference,
    /// Per task type.
    pub reference: BTreeMap<String, Reference>,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self {
            weights: BTreeMap::from([
                ("quality".to_owned(), 0.4),
                ("success".to_owned(), 0.3),
                ("latency".to_owned(), 0.1),
                ("cost".to_owned(), 0.1),
                ("compliance".to_owned(), 0.1),
            ]),
            default_reference: Reference { latency_ms: 10_000.0, cost_usd: 0.05 },
            reference: BTreeMap::new(),
        }
    }
}

/// A task type's reference latency and cost: a task at the reference scores 0.5 on that
/// component.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// Milliseconds.
    pub latency_ms: f64,
    /// US dollars.
    pub cost_usd: f64,
}

/// The components the reward knows.
pub const COMPONENTS: [&str; 5] = ["quality", "success", "latency", "cost", "compliance"];

impl RlConfig {
    /// Checks what the types cannot; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_size == 0 {
            return Err("MODELPERF_RL__BATCH_SIZE: must be at least 1".into());
        }
        if self.batch_max_bytes < 16 * 1024 {
            return Err("rl.batch_max_bytes: at least 16 KiB".into());
        }
        if self.required.is_empty() {
            return Err("MODELPERF_RL__REQUIRED: at least one part is needed".into());
        }
        if self.join_grace >= self.join_window {
            return Err("MODELPERF_RL__JOIN_GRACE: must be shorter than the join window".into());
        }
        if self.max_open_joins == 0 {
            return Err("MODELPERF_RL__MAX_OPEN_JOINS: must be at least 1".into());
        }
        let r = &self.reward;
        for (name, w) in &r.weights {
            if !COMPONENTS.contains(&name.as_str()) {
                return Err(format!("rl.reward.weights.{name}: unknown component; known: {}", COMPONENTS.join(", ")));
            }
            if !(w.is_finite() && *w >= 0.0) {
                return Err(format!("rl.reward.weights.{name}: {w} is not a finite non-negative weight"));
            }
        }
        if r.weights.values().sum::<f64>() <= 0.0 {
            return Err("rl.reward.weights: at least one weight must be positive".into());
        }
        for (task_type, reference) in std::iter::once(("default_reference", &r.default_reference))
            .chain(r.reference.iter().map(|(k, v)| (k.as_str(), v)))
        {
            let positive = |v: f64| v.is_finite() && v > 0.0;
            if !(positive(reference.latency_ms) && positive(reference.cost_usd)) {
                return Err(format!("rl.reward.reference.{task_type}: latency_ms and cost_usd must be positive"));
            }
        }
        Ok(())
    }

    /// The reference of a task type.
    pub fn reference_of(&self, task_type: Option<&str>) -> Reference {
        task_type.and_then(|t| self.reward.reference.get(t)).copied().unwrap_or(self.reward.default_reference)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::result_large_err)] // figment's Jail returns its own error type
mod tests {
    use super::*;

    #[test]
    fn the_contract_keys_reach_the_pipeline() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("r.toml", "[rl.reward.weights]\nquality = 1.0\n[rl.reward.reference.code_edit]\nlatency_ms = 3000.0\ncost_usd = 0.02\n")?;
            jail.set_env("MODELPERF_RL__BATCH_SIZE", "64");
            jail.set_env("MODELPERF_RL__BATCH_MAX_AGE", "2s");
            jail.set_env("MODELPERF_RL__JOIN_WINDOW", "1m");
            jail.set_env("MODELPERF_RL__JOIN_GRACE", "1s");
            jail.set_env("MODELPERF_RL__REQUIRED", "task_completed");
            jail.set_env("MODELPERF_AGGREGATOR__WINDOWS", "1m");
            let c = Config::load(Some(std::path::Path::new("r.toml"))).unwrap();
            assert_eq!(c.rl.batch_size, 64);
            assert_eq!(c.rl.batch_max_age, Duration::from_secs(2));
            assert_eq!(c.rl.join_window, Duration::from_secs(60));
            assert_eq!(c.rl.required, vec![Kind::TaskCompleted]);
            assert_eq!(c.rl.reward.weights.get("quality"), Some(&1.0));
            assert_eq!(c.rl.reference_of(Some("code_edit")).latency_ms, 3000.0);
            assert_eq!(c.rl.reference_of(Some("other")).latency_ms, 10_000.0);
            Ok(())
        });
    }

    #[test]
    fn mistakes_name_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("MODELPERF_RL__JOIN_GRACE", "20m");
            assert!(Config::load(None).unwrap_err().to_string().contains("JOIN_GRACE"));
            jail.set_env("MODELPERF_RL__JOIN_GRACE", "5s");
            jail.set_env("MODELPERF_RL__REQUIRED", "task_completed,verdict");
            assert!(Config::load(None).unwrap_err().to_string().contains("verdict"));
            jail.set_env("MODELPERF_RL__REQUIRED", "judgment");
            jail.create_file("w.toml", "[rl.reward.weights]\nvibes = 1.0\n")?;
            let err = Config::load(Some(std::path::Path::new("w.toml"))).unwrap_err().to_string();
            assert!(err.contains("vibes"), "{err}");
            Ok(())
        });
    }
}
