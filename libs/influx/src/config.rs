//! `[influx]` settings (`MODELPERF_INFLUX__*`): where the sink writes, how it authenticates,
//! how long each window is kept, and how hard it tries before handing a failure back.

use std::collections::BTreeMap;
use std::time::Duration;

use modelperf_bus::config::{ConfigError, scalar_string};
use serde::{Deserialize, Deserializer, Serialize};

/// Which write API the sink speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InfluxApi {
    /// `/write?db=&rp=` with optional user/password: InfluxDB 1.x, and the v1 endpoints of 2.x
    /// and 3.x. `ensure` creates the database and one retention policy per window.
    #[default]
    V1,
    /// `/api/v2/write?org=&bucket=` with a token: InfluxDB 1.8+, 2.x, 3.x, Cloud. Retention is
    /// the bucket's; `ensure` only checks that the bucket exists.
    V2,
}

/// How long the points of one window are kept (v1): a retention policy named after the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    /// How long points are kept (`30d`); `0s` keeps them forever. At least one hour otherwise
    /// (InfluxDB's minimum).
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Whether this policy is made the database's default one (queries without a policy read
    /// it). At most one policy may say so; a policy that is already the default stays so.
    #[serde(default)]
    pub default: bool,
}

/// How to reach InfluxDB (`[influx]`, `MODELPERF_INFLUX__*`). Secrets (`password`, `token`) are
/// redacted from `Debug`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InfluxConfig {
    /// Base URL of the server, `http://127.0.0.1:8086` (a path prefix behind a proxy is kept).
    pub url: String,
    /// `v1` or `v2` (`MODELPERF_INFLUX__API`).
    pub api: InfluxApi,
    /// v1: the database (`modelperf`).
    #[serde(deserialize_with = "required_scalar")]
    pub database: String,
    /// v1: one existing retention policy to write every window to (e.g. `autogen`, or the
    /// policy of a 2.x/3.x DBRP mapping). Unset (the default), each window listed in
    /// `retention_policies` is written to a policy of its own, named after the window, and a
    /// window not listed goes to the database's default policy.
    #[serde(deserialize_with = "scalar_string")]
    pub retention_policy: Option<String>,
    /// v1: window name → retention (TOML: `[influx.retention_policies."1m"] duration = "30d"`).
    /// Defaults: `1m` 30 days, `1h` 730 days. `ensure` creates missing policies and alters
    /// those whose duration differs.
    pub retention_policies: BTreeMap<String, RetentionPolicy>,
    /// User for basic authentication (v1); with v2 and no `token`, `user:password` is sent as
    /// the token, as InfluxDB 1.8 expects.
    #[serde(deserialize_with = "scalar_string")]
    pub user: Option<String>,
    /// Password of `user` (secret).
    #[serde(deserialize_with = "scalar_string")]
    pub password: Option<String>,
    /// v2: organisation (required by 2.x and Cloud, ignored by 1.8 and 3.x).
    #[serde(deserialize_with = "scalar_string")]
    pub org: Option<String>,
    /// v2: bucket (required for `api = "v2"`; on 1.8 it is `database/retention_policy`).
    #[serde(deserialize_with = "scalar_string")]
    pub bucket: Option<String>,
    /// API token (secret), sent as `Authorization: Token <token>`: v2, and v1 when no `user`
    /// is set (the v1 endpoints of 2.x and 3.x take it).
    #[serde(deserialize_with = "scalar_string")]
    pub token: Option<String>,
    /// Lines per write request (`5000`).
    pub batch_size: usize,
    /// Limit of one HTTP request, connecting included (`10s`).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries of one request after a timeout, a connection error, a 5xx or a 429 (`5`);
    /// then the sink returns a retryable error and the caller tries again later.
    pub max_retries: u32,
    /// Delay before the first retry (`200ms`); doubled on every retry, with jitter.
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Upper bound of one delay between retries (`10s`), also of a server's `Retry-After`.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
}

impl Default for InfluxConfig {
    fn default() -> Self {
        let days = |d: u64| Duration::from_secs(d * 86_400);
        Self {
            url: "http://127.0.0.1:8086".into(),
            api: InfluxApi::V1,
            database: "modelperf".into(),
            retention_policy: None,
            retention_policies: BTreeMap::from([
                ("1m".to_owned(), RetentionPolicy { duration: days(30), default: false }),
                ("1h".to_owned(), RetentionPolicy { duration: days(730), default: false }),
            ]),
            user: None,
            password: None,
            org: None,
            bucket: None,
            token: None,
            batch_size: 5_000,
            timeout: Duration::from_secs(10),
            max_retries: 5,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for InfluxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("InfluxConfig")
            .field("url", &self.url)
            .field("api", &self.api)
            .field("database", &self.database)
            .field("retention_policy", &self.retention_policy)
            .field("retention_policies", &self.retention_policies)
            .field("user", &self.user)
            .field("password", &redacted(&self.password))
            .field("org", &self.org)
            .field("bucket", &self.bucket)
            .field("token", &redacted(&self.token))
            .field("batch_size", &self.batch_size)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .finish()
    }
}

/// InfluxDB refuses retention policies shorter than this (except `0`, infinite).
pub const MIN_RETENTION: Duration = Duration::from_secs(3_600);

impl InfluxConfig {
    /// Checks the settings; the error names the key as an operator writes it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError::Invalid { key: key.to_owned(), reason: why });
        let env = |key: &str| format!("MODELPERF_INFLUX__{key}");
        if !self.url.starts_with("http://") {
            let why = if self.url.starts_with("https://") {
                "https is not supported by this build (no TLS): use http:// or a TLS-terminating proxy"
            } else {
                "must start with http://"
            };
            return bad(&env("URL"), why.to_owned());
        }
        let authority = self.url["http://".len()..].split('/').next().unwrap_or_default();
        if authority.contains('@') {
            // Credentials in the URL would end up in logs and error messages.
            return bad(
                &env("URL"),
                "must not hold credentials: use MODELPERF_INFLUX__USER/__PASSWORD or __TOKEN".into(),
            );
        }
        if self.batch_size == 0 {
            return bad(&env("BATCH_SIZE"), "must be at least 1".into());
        }
        if self.timeout.is_zero() {
            return bad(&env("TIMEOUT"), "must be longer than 0s".into());
        }
        if self.backoff_max < self.backoff_initial {
            return bad(&env("BACKOFF_MAX"), "must be at least BACKOFF_INITIAL".into());
        }
        match self.api {
            InfluxApi::V1 => {
                if self.database.is_empty() {
                    return bad(&env("DATABASE"), "must not be empty".into());
                }
                if self.retention_policy.as_deref() == Some("") {
                    return bad(&env("RETENTION_POLICY"), "must not be empty (leave it unset instead)".into());
                }
                let mut defaults = 0;
                for (window, rp) in &self.retention_policies {
                    let key = format!("influx.retention_policies.{window}");
                    if !is_window_name(window) {
                        return bad(&key, "a window name is a number and a unit (s, m, h, d), e.g. 1m".into());
                    }
                    if !rp.duration.is_zero() && rp.duration < MIN_RETENTION {
                        return bad(&format!("{key}.duration"), "must be at least 1h (or 0s: forever)".into());
                    }
                    defaults += usize::from(rp.default);
                }
                if defaults > 1 {
                    return bad("influx.retention_policies", "at most one policy can be the default".into());
                }
            }
            InfluxApi::V2 => {
                if self.bucket.as_deref().is_none_or(str::is_empty) {
                    return bad(&env("BUCKET"), "required when MODELPERF_INFLUX__API is v2".into());
                }
            }
        }
        Ok(())
    }

    /// The v1 retention policy the points of `window` are written to; `None` is the
    /// database's default policy.
    pub fn retention_policy_for(&self, window: &str) -> Option<&str> {
        match &self.retention_policy {
            Some(rp) => Some(rp),
            None => self.retention_policies.get_key_value(window).map(|(name, _)| name.as_str()),
        }
    }
}

/// `10s`, `1m`, `1h`, `1d`: digits, then one unit.
fn is_window_name(s: &str) -> bool {
    let Some((unit_at, unit)) = s.char_indices().last() else { return false };
    unit_at > 0 && matches!(unit, 's' | 'm' | 'h' | 'd') && s[..unit_at].bytes().all(|b| b.is_ascii_digit())
}

/// A required string that the environment may have typed as a number
/// (`MODELPERF_INFLUX__DATABASE=2024`).
fn required_scalar<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    scalar_string(d)?.ok_or_else(|| serde::de::Error::custom("must not be empty"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::result_large_err)] // figment's Jail API returns its own error type
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Sample {
        influx: InfluxConfig,
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = InfluxConfig::default();
        assert_eq!(c.url, "http://127.0.0.1:8086");
        assert_eq!(c.api, InfluxApi::V1);
        assert_eq!(c.database, "modelperf");
        assert_eq!(c.retention_policies["1m"].duration, Duration::from_secs(30 * 86_400));
        assert_eq!(c.retention_policies["1h"].duration, Duration::from_secs(730 * 86_400));
        assert_eq!(c.batch_size, 5_000);
        assert_eq!(c.timeout, Duration::from_secs(10));
        c.validate().unwrap();
        assert_eq!(c.retention_policy_for("1m"), Some("1m"));
        assert_eq!(c.retention_policy_for("10s"), None);
    }

    #[test]
    fn the_contract_keys_load_from_env_and_toml() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "[influx]\nbatch_size = 100\n[influx.retention_policies.\"10s\"]\nduration = \"2h\"\ndefault = true\n",
            )?;
            jail.set_env("MODELPERF_INFLUX__URL", "http://influx:8086");
            jail.set_env("MODELPERF_INFLUX__API", "v2");
            jail.set_env("MODELPERF_INFLUX__DATABASE", "2024");
            jail.set_env("MODELPERF_INFLUX__RETENTION_POLICY", "autogen");
            jail.set_env("MODELPERF_INFLUX__USER", "writer");
            jail.set_env("MODELPERF_INFLUX__PASSWORD", "123456");
            jail.set_env("MODELPERF_INFLUX__ORG", "acme");
            jail.set_env("MODELPERF_INFLUX__BUCKET", "perf");
            jail.set_env("MODELPERF_INFLUX__TOKEN", "987654321");
            jail.set_env("MODELPERF_INFLUX__TIMEOUT", "3s");
            let c = modelperf_bus::config::load::<Sample>(Some(std::path::Path::new("c.toml"))).unwrap().influx;
            assert_eq!(c.url, "http://influx:8086");
            assert_eq!(c.api, InfluxApi::V2);
            assert_eq!(c.database, "2024");
            assert_eq!(c.retention_policy.as_deref(), Some("autogen"));
            assert_eq!(c.user.as_deref(), Some("writer"));
            assert_eq!(c.password.as_deref(), Some("123456"));
            assert_eq!(c.org.as_deref(), Some("acme"));
            assert_eq!(c.bucket.as_deref(), Some("perf"));
            assert_eq!(c.token.as_deref(), Some("987654321"));
            assert_eq!(c.timeout, Duration::from_secs(3));
            assert_eq!(c.batch_size, 100);
            // The file adds a window to the defaults.
            assert_eq!(c.retention_policies.len(), 3);
            assert!(c.retention_policies["10s"].default);
            assert_eq!(c.retention_policy_for("10s"), Some("autogen"));
            c.validate().unwrap();
            Ok(())
        });
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let c = InfluxConfig {
            password: Some("hunter2-pw".into()),
            token: Some("tok-secret".into()),
            ..InfluxConfig::default()
        };
        let text = format!("{c:?}");
        assert!(!text.contains("hunter2-pw") && !text.contains("tok-secret"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn invalid_settings_name_the_key() {
        let check = |c: InfluxConfig, key: &str| {
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err} should name {key}");
        };
        check(InfluxConfig { url: "https://x".into(), ..Default::default() }, "MODELPERF_INFLUX__URL");
        check(InfluxConfig { url: "http://u:pw@x:8086".into(), ..Default::default() }, "MODELPERF_INFLUX__URL");
        check(InfluxConfig { batch_size: 0, ..Default::default() }, "MODELPERF_INFLUX__BATCH_SIZE");
        check(InfluxConfig { api: InfluxApi::V2, ..Default::default() }, "MODELPERF_INFLUX__BUCKET");
        let mut short = InfluxConfig::default();
        short
            .retention_policies
            .insert("5m".into(), RetentionPolicy { duration: Duration::from_secs(60), default: false });
        check(short, "influx.retention_policies.5m.duration");
        let mut odd = InfluxConfig::default();
        odd.retention_policies.insert("hourly".into(), RetentionPolicy { duration: MIN_RETENTION, default: false });
        check(odd, "influx.retention_policies.hourly");
        let mut two = InfluxConfig::default();
        for rp in two.retention_policies.values_mut() {
            rp.default = true;
        }
        check(two, "influx.retention_policies");
    }

    #[test]
    fn window_names() {
        for ok in ["1m", "10s", "1h", "7d"] {
            assert!(is_window_name(ok), "{ok}");
        }
        for bad in ["", "m", "1", "1w", "1 m", "-1m", "1m\"", "1µ"] {
            assert!(!is_window_name(bad), "{bad}");
        }
    }
}
