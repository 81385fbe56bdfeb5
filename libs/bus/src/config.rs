//! Configuration shared by every service: the NATS connection and the bus limits, and the
//! layered loader (defaults, then a TOML file, then `MODELPERF_<SECTION>__<KEY>` variables).

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

/// How to reach NATS (`[nats]`, `MODELPERF_NATS__*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated: `nats://127.0.0.1:4222`.
    pub url: String,
    /// A `.creds` file (JWT + NKey seed).
    pub creds_file: Option<PathBuf>,
    /// User for user/password authentication.
    #[serde(deserialize_with = "scalar_string")]
    pub user: Option<String>,
    /// Password for user/password authentication.
    #[serde(deserialize_with = "scalar_string")]
    pub password: Option<String>,
    /// Token authentication.
    #[serde(deserialize_with = "scalar_string")]
    pub token: Option<String>,
    /// A file holding an NKey seed.
    pub nkey_seed_file: Option<PathBuf>,
    /// A PEM file of CA certificates; setting it requires TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// Replicas of every stream, KV bucket and object store this service creates.
    pub replicas: usize,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            creds_file: None,
            user: None,
            password: None,
            token: None,
            nkey_seed_file: None,
            tls_ca_file: None,
            replicas: 1,
        }
    }
}

/// Limits of streams, consumers, checkpoints and leases (`[bus]`, `MODELPERF_BUS__*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// Partitions of `PERF_EVENTS`; fixed for the life of a deployment.
    pub partitions: u32,
    /// How long the server waits for an ack before redelivering.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Unacknowledged messages a consumer may have outstanding.
    pub max_ack_pending: i64,
    /// Deliveries of one message before it is dead-lettered.
    pub max_deliver: i64,
    /// Messages fetched per pull request and processed as one batch.
    pub fetch_batch: usize,
    /// Window in which a repeated `Nats-Msg-Id` is dropped by the server.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// How often stateful owners checkpoint (and then ack).
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// Lifetime of a lease that is not renewed.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Retention of streams, overriding the contract's defaults (TOML: `[bus.max_age]`,
    /// `PERF_EVENTS = "14d"`); `0s` keeps messages until the stream's other limits.
    #[serde(with = "max_age_map")]
    pub max_age: std::collections::BTreeMap<String, Duration>,
}

/// `stream name → humantime duration`.
mod max_age_map {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(map: &BTreeMap<String, Duration>, s: S) -> Result<S::Ok, S::Error> {
        let text: BTreeMap<&String, String> =
            map.iter().map(|(k, v)| (k, humantime::format_duration(*v).to_string())).collect();
        text.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Duration>, D::Error> {
        let text = BTreeMap::<String, String>::deserialize(d)?;
        text.into_iter()
            .map(|(k, v)| {
                humantime::parse_duration(&v)
                    .map(|d| (k.clone(), d))
                    .map_err(|e| serde::de::Error::custom(format!("max_age of {k}: {v:?} is not a duration: {e}")))
            })
            .collect()
    }
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            partitions: 8,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 10_000,
            max_deliver: 10,
            fetch_batch: 500,
            duplicate_window: Duration::from_secs(120),
            checkpoint_interval: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(10),
            max_age: std::collections::BTreeMap::new(),
        }
    }
}

impl BusConfig {
    /// Checks relations between the limits; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| {
            Err(ConfigError::Invalid { key: format!("MODELPERF_BUS__{key}"), reason: why.into() })
        };
        if self.partitions == 0 {
            return bad("PARTITIONS", "must be at least 1");
        }
        if self.fetch_batch == 0 {
            return bad("FETCH_BATCH", "must be at least 1");
        }
        if self.max_ack_pending < self.fetch_batch as i64 {
            return bad("MAX_ACK_PENDING", "must be at least FETCH_BATCH");
        }
        if self.max_deliver < 1 {
            return bad("MAX_DELIVER", "must be at least 1");
        }
        if self.lease_ttl < Duration::from_millis(300) {
            return bad("LEASE_TTL", "must be at least 300ms");
        }
        if self.checkpoint_interval >= self.ack_wait {
            return bad("CHECKPOINT_INTERVAL", "must be shorter than ACK_WAIT");
        }
        if let Some(unknown) = self.max_age.keys().find(|k| !crate::topology::streams::ALL.contains(&k.as_str())) {
            return Err(ConfigError::Invalid {
                key: format!("bus.max_age.{unknown}"),
                reason: format!("no such stream (streams: {})", crate::topology::streams::ALL.join(", ")),
            });
        }
        Ok(())
    }
}

/// A configuration that cannot be used. Its display is the one line a service prints before
/// exiting with 64.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key has a bad value.
    #[error("invalid configuration: {key}: {reason}")]
    Invalid {
        /// The key as an operator writes it (env name or TOML path).
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The file could not be read or parsed.
    #[error("invalid configuration: {0}")]
    Load(String),
}

/// The environment prefix of every key.
pub const ENV_PREFIX: &str = "MODELPERF_";

/// Loads `T` from its defaults, then `file` (or `$MODELPERF_CONFIG`), then the environment
/// (`MODELPERF_<SECTION>__<KEY>`; lists comma-separated).
pub fn load<T: Serialize + DeserializeOwned + Default>(file: Option<&Path>) -> Result<T, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    let env_file = std::env::var_os("MODELPERF_CONFIG").map(PathBuf::from);
    if let Some(path) = file.map(Path::to_path_buf).or(env_file) {
        if !path.exists() {
            return Err(ConfigError::Load(format!("config file {} does not exist", path.display())));
        }
        figment = figment.merge(Toml::file(path));
    }
    // `MODELPERF_LOG` and `MODELPERF_CONFIG` are not sections.
    let env = Env::prefixed(ENV_PREFIX).split("__").filter(|k| k.as_str().contains('.'));
    figment.merge(env).extract().map_err(|e| {
        let key = e.path.join(".");
        let origin = if key.is_empty() {
            String::new()
        } else {
            format!("{ENV_PREFIX}{}", key.to_uppercase().replace('.', "__"))
        };
        match (origin.is_empty(), e.kind.clone()) {
            (true, kind) => ConfigError::Load(kind.to_string()),
            (false, kind) => ConfigError::Invalid { key: format!("{origin} ({key})"), reason: kind.to_string() },
        }
    })
}

/// The command-line flag that prints what a binary declares about itself.
pub const PRINT_CONFIG_KEYS: &str = "--print-config-keys";

/// Every environment key `T` accepts as a scalar, with its default as the loader would read it
/// back (`""` for an unset option, lists comma-separated): the default configuration serialised
/// and flattened into `MODELPERF_<SECTION>__<KEY>` names. Empty maps and lists of tables have no
/// environment form (they live in TOML files) and are left out.
pub fn env_keys<T: Serialize + Default>() -> Result<std::collections::BTreeMap<String, String>, ConfigError> {
    fn flatten(prefix: &str, value: &serde_json::Value, out: &mut std::collections::BTreeMap<String, String>) {
        use serde_json::Value;
        let scalar = |v: &Value| match v {
            Value::Null => Some(String::new()),
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Number(n) => Some(n.to_string()),
            Value::Array(_) | Value::Object(_) => None,
        };
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        format!("{ENV_PREFIX}{}", k.to_uppercase())
                    } else {
                        format!("{prefix}__{}", k.to_uppercase())
                    };
                    flatten(&key, v, out);
                }
            }
            Value::Array(items) => {
                if let Some(texts) = items.iter().map(scalar).collect::<Option<Vec<_>>>() {
                    out.insert(prefix.to_string(), texts.join(","));
                }
            }
            other => {
                if let Some(text) = scalar(other) {
                    out.insert(prefix.to_string(), text);
                }
            }
        }
    }
    let value = serde_json::to_value(T::default())
        .map_err(|e| ConfigError::Load(format!("the default configuration does not serialise: {e}")))?;
    let mut out = std::collections::BTreeMap::new();
    flatten("", &value, &mut out);
    Ok(out)
}

/// What `modelperf-<service> --print-config-keys` prints: one JSON object with the binary's
/// name, its HTTP port and paths (liveness, readiness, metrics) and every environment key with
/// its default. Deployment manifests are checked against it.
pub fn describe<T: Serialize + Default>(service: &str) -> Result<serde_json::Value, ConfigError> {
    let keys = env_keys::<T>()?;
    let port =
        keys.get("MODELPERF_HTTP__LISTEN").and_then(|l| l.parse::<std::net::SocketAddr>().ok()).map(|a| a.port());
    let paths = modelperf_telemetry::process::HTTP_PATHS;
    Ok(serde_json::json!({
        "binary": format!("modelperf-{service}"),
        "http": {
            "port": port,
            "liveness": paths.liveness,
            "readiness": paths.readiness,
            "metrics": paths.metrics,
        },
        "env": keys,
        "env_other": ["MODELPERF_CONFIG", "MODELPERF_LOG"],
    }))
}

/// When the command line holds [`PRINT_CONFIG_KEYS`], prints [`describe`] and returns the exit
/// code for `main` to return; otherwise `None`.
pub fn print_config_keys_if_asked<T: Serialize + Default>(service: &str) -> Option<std::process::ExitCode> {
    if !std::env::args().skip(1).any(|a| a == PRINT_CONFIG_KEYS) {
        return None;
    }
    let text = describe::<T>(service).and_then(|d| {
        serde_json::to_string_pretty(&d).map_err(|e| ConfigError::Load(format!("cannot print the keys: {e}")))
    });
    Some(match text {
        Ok(text) => {
            println!("{text}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("modelperf-{service}: {e}");
            std::process::ExitCode::from(1)
        }
    })
}

/// `[http]`: where a service's `/healthz`, `/readyz` and `/metrics` listen
/// (`MODELPERF_HTTP__LISTEN`; each service has its own default port).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address; port 0 picks a free one.
    pub listen: std::net::SocketAddr,
}

impl HttpConfig {
    /// All interfaces on `port`.
    pub fn on(port: u16) -> Self {
        Self { listen: std::net::SocketAddr::from(([0, 0, 0, 0], port)) }
    }
}

/// The configuration file of a service process: `--config FILE` (or `--config=FILE`) on the
/// command line, else `MODELPERF_CONFIG`.
pub fn config_file() -> Option<PathBuf> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(f) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(f));
        }
    }
    std::env::var_os("MODELPERF_CONFIG").map(PathBuf::from)
}

/// Deserialises a list from a sequence or a comma-separated string (environment overrides).
pub fn comma_list<'de, D: Deserializer<'de>, T: std::str::FromStr>(d: D) -> Result<Vec<T>, D::Error>
where
    T::Err: std::fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Text(String),
    }
    let items = match Either::deserialize(d)? {
        Either::List(v) => v,
        Either::Text(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
    };
    items.iter().map(|s| s.parse().map_err(serde::de::Error::custom)).collect()
}

/// Deserialises an optional string that the environment may have typed as a number or a
/// boolean (`MODELPERF_NATS__PASSWORD=123456` arrives as an integer): any scalar is taken as
/// its text, so secrets never fail to parse (and never appear in a parse error).
pub fn scalar_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i64),
        Uint(u64),
        Float(f64),
        Bool(bool),
    }
    Ok(Option::<Scalar>::deserialize(d)?.map(|v| match v {
        Scalar::Text(s) => s,
        Scalar::Int(i) => i.to_string(),
        Scalar::Uint(u) => u.to_string(),
        Scalar::Float(f) => f.to_string(),
        Scalar::Bool(b) => b.to_string(),
    }))
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail API returns its own error type
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Sample {
        nats: NatsConfig,
        bus: BusConfig,
    }

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[bus]\npartitions = 4\nack_wait = \"5s\"\n")?;
            jail.set_env("MODELPERF_BUS__ACK_WAIT", "2s");
            let c: Sample = load(Some(Path::new("c.toml"))).unwrap();
            assert_eq!(c.bus.partitions, 4);
            assert_eq!(c.bus.ack_wait, Duration::from_secs(2));
            assert_eq!(c.nats.url, "nats://127.0.0.1:4222");
            Ok(())
        });
    }

    #[test]
    fn numeric_secrets_are_text() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("MODELPERF_NATS__PASSWORD", "123456");
            jail.set_env("MODELPERF_NATS__TOKEN", "true");
            let c: Sample = load(None).unwrap();
            assert_eq!(c.nats.password.as_deref(), Some("123456"));
            assert_eq!(c.nats.token.as_deref(), Some("true"));
            assert_eq!(c.nats.user, None);
            Ok(())
        });
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct WithHttp {
        nats: NatsConfig,
        bus: BusConfig,
        http: HttpConfig,
    }

    impl Default for WithHttp {
        fn default() -> Self {
            Self { nats: Default::default(), bus: Default::default(), http: HttpConfig::on(9199) }
        }
    }

    #[test]
    fn printed_keys_are_accepted_and_made_up_ones_are_not() {
        let keys = env_keys::<WithHttp>().unwrap();
        for expected in
            ["MODELPERF_NATS__URL", "MODELPERF_NATS__CREDS_FILE", "MODELPERF_BUS__ACK_WAIT", "MODELPERF_HTTP__LISTEN"]
        {
            assert!(keys.contains_key(expected), "{expected} missing from {keys:?}");
        }
        assert_eq!(keys["MODELPERF_BUS__ACK_WAIT"], "30s");
        assert_eq!(keys["MODELPERF_HTTP__LISTEN"], "0.0.0.0:9199");
        let described = describe::<WithHttp>("sample").unwrap();
        assert_eq!(described["binary"], "modelperf-sample");
        assert_eq!(described["http"]["port"], 9199);
        assert_eq!(described["http"]["readiness"], "/readyz");
        figment::Jail::expect_with(|jail| {
            // Every printed key with a value, read back as its default: the names are the
            // loader's and the printed defaults parse.
            for (key, value) in keys.iter().filter(|(_, v)| !v.is_empty()) {
                jail.set_env(key, value);
            }
            let loaded: WithHttp = load(None).unwrap();
            assert_eq!(loaded, WithHttp::default());
            jail.set_env("MODELPERF_BUS__NO_SUCH_KEY", "1");
            let err = load::<WithHttp>(None).unwrap_err().to_string();
            assert!(err.contains("no_such_key"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn errors_name_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("MODELPERF_BUS__MAX_DELIVER", "often");
            let err = load::<Sample>(None).unwrap_err().to_string();
            assert!(err.contains("MODELPERF_BUS__MAX_DELIVER"), "{err}");
            Ok(())
        });
    }
}
