//! The monitor's configuration: `[nats]`, `[bus]`, `[http]` and `[monitor]`, layered as every
//! service's (defaults → TOML → `MODELPERF_<SECTION>__<KEY>`). The rules live in their own file
//! (`rules_file`, see [`crate::rules`]); receivers and routes live here, because receivers hold
//! secrets that come from the environment in production.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use modelperf_bus::{BusConfig, ConfigError, HttpConfig, NatsConfig};
use serde::{Deserialize, Serialize};

use crate::rules::{LabelMatchers, Rules};

/// The name Alertmanager deliveries use (`perf.outbox.alertmanager`); no receiver may take it.
pub const ALERTMANAGER: &str = "alertmanager";

/// PagerDuty's Events API v2 endpoint.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// Everything the monitor reads. Sections of other services are ignored; unknown keys inside a
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
    /// The monitor itself.
    pub monitor: MonitorConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats: Default::default(),
            bus: Default::default(),
            http: HttpConfig::on(9104),
            monitor: Default::default(),
        }
    }
}

/// `[monitor]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorConfig {
    /// The alert rules (`MODELPERF_MONITOR__RULES_FILE`, default `deploy/alerts.toml`).
    pub rules_file: PathBuf,
    /// How often held resolutions, absent series and repeats are evaluated, transitions
    /// published and the state checkpointed (`MODELPERF_MONITOR__EVAL_INTERVAL`, default 10 s).
    #[serde(with = "humantime_serde")]
    pub eval_interval: Duration,
    /// Firing alerts are posted to Alertmanager again this often; keep it below Alertmanager's
    /// `resolve_timeout` (`MODELPERF_MONITOR__RESEND_INTERVAL`, default 1 min).
    #[serde(with = "humantime_serde")]
    pub resend_interval: Duration,
    /// Alertmanager's base URL, e.g. `http://alertmanager:9093`; none: no Alertmanager
    /// deliveries (`MODELPERF_MONITOR__ALERTMANAGER_URL`).
    pub alertmanager_url: Option<String>,
    /// A resolution is posted to Alertmanager no sooner than this after its alert's first
    /// firing post, so Alertmanager has notified the firing first; longer than its `group_wait`
    /// (`MODELPERF_MONITOR__ALERTMANAGER_MIN_FIRING`, default 35 s; Alertmanager's default
    /// `group_wait` is 30 s).
    #[serde(with = "humantime_serde")]
    pub alertmanager_min_firing: Duration,
    /// When no window of a series arrives for this long (metrics time), its alerts resolve and
    /// its pending conditions are dropped (`MODELPERF_MONITOR__ABSENT_AFTER`, default 10 min).
    #[serde(with = "humantime_serde")]
    pub absent_after: Duration,
    /// The metrics clock never lags the wall clock by more than this, so held resolutions and
    /// absent series are decided even when no windows arrive at all; longer than the
    /// aggregator's allowed lateness plus a window (`MODELPERF_MONITOR__CLOCK_LAG`, default 5 min).
    #[serde(with = "humantime_serde")]
    pub clock_lag: Duration,
    /// On the very first start (no checkpoint), how far back `perf.metrics.*` and
    /// `perf.anomalies.*` are read (`MODELPERF_MONITOR__INITIAL_LOOKBACK`, default 15 min).
    #[serde(with = "humantime_serde")]
    pub initial_lookback: Duration,
    /// Flap damping.
    pub flap: FlapConfig,
    /// Delivery retries.
    pub delivery: DeliveryConfig,
    /// The built-in pipeline health rules.
    pub health: HealthConfig,
    /// Direct receivers by name (`[monitor.receivers.<name>]`); the name is the subject token of
    /// `perf.outbox.<name>`.
    pub receivers: BTreeMap<String, ReceiverConfig>,
    /// Which alerts go to which receivers (`[[monitor.routes]]`); every matching route applies.
    pub routes: Vec<RouteConfig>,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            rules_file: PathBuf::from("deploy/alerts.toml"),
            eval_interval: Duration::from_secs(10),
            resend_interval: Duration::from_secs(60),
            alertmanager_url: None,
            alertmanager_min_firing: Duration::from_secs(35),
            absent_after: Duration::from_secs(600),
            clock_lag: Duration::from_secs(300),
            initial_lookback: Duration::from_secs(900),
            flap: FlapConfig::default(),
            delivery: DeliveryConfig::default(),
            health: HealthConfig::default(),
            receivers: BTreeMap::new(),
            routes: Vec::new(),
        }
    }
}

/// `[monitor.flap]`: an alert that fires again within `window` of resolving is flapping; each
/// such re-fire doubles how long its condition must stay clear before it resolves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlapConfig {
    /// How long a resolution is remembered (metrics time, default 1 h); also the longest hold.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// The largest doubling exponent (default 4: at most 16 × the base hold).
    pub max_level: u32,
}

impl Default for FlapConfig {
    fn default() -> Self {
        Self { window: Duration::from_secs(3_600), max_level: 4 }
    }
}

/// `[monitor.delivery]`: how the outbox worker retries a receiver.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// First retry delay; doubled per attempt up to `max_backoff`, each with ±25 % jitter.
    #[serde(with = "humantime_serde")]
    pub base_backoff: Duration,
    /// Largest retry delay.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// One HTTP request's timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// A delivery still failing this long after it was enqueued is dead-lettered on
    /// `perf.dlq.monitor` (default 24 h; the outbox keeps messages 7 d).
    #[serde(with = "humantime_serde")]
    pub give_up_after: Duration,
    /// Deliveries the worker holds at once across receivers (backpressure on the outbox).
    pub max_held: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            give_up_after: Duration::from_secs(86_400),
            max_held: 1_000,
        }
    }
}

/// `[monitor.health]`: the built-in pipeline health rules (see [`crate::health`]); each bound
/// is `MODELPERF_MONITOR__HEALTH__<KEY>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Evaluate the health rules at all (default true).
    pub enabled: bool,
    /// How long a health condition must hold before its alert fires (default 2 min, longer
    /// than a lease TTL so a hand-over does not page).
    #[serde(rename = "for", with = "humantime_serde")]
    pub for_: Duration,
    /// How long it must be clear before the alert resolves (default 1 min).
    #[serde(with = "humantime_serde")]
    pub keep_firing_for: Duration,
    /// A durable consumer with more undelivered messages than this lags (default 10 000).
    pub lag_pending: u64,
    /// A durable consumer whose oldest unacknowledged message is older than this is stalled
    /// (default 5 min).
    #[serde(with = "humantime_serde")]
    pub lag_age: Duration,
    /// More dead letters than this of one stage and code within `dlq_window` is growth
    /// (default 10).
    pub dlq_growth: u64,
    /// The window DLQ growth is counted over (default 5 min).
    #[serde(with = "humantime_serde")]
    pub dlq_window: Duration,
    /// Ready instances each service needs, e.g. `{ collector = 2, aggregator = 1 }` (default
    /// none). Only these minimums page, so scaling down to them does not.
    pub min_ready: BTreeMap<String, u32>,
    /// An instance whose last heartbeat is older than this is gone (default 15 s: three missed
    /// heartbeats).
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// The lease keys each service's replicas must hold between them, checked by the
    /// "leases without a holder" rule while the service runs (or has a `min_ready`). `{p}` in a
    /// key stands for every partition `0..bus.partitions`. The default is the contract's table:
    /// `aggregator = ["aggregator.p{p}", "aggregator.final"]`, `rl-pipeline = ["rl.p{p}"]`,
    /// `analyzer = ["analyzer", "analyzer.reports"]` (scheduled reports are on by default),
    /// `monitor = ["monitor"]`; a service left out (or given `[]`) is not checked. Drop
    /// `"analyzer.reports"` where the analyzer runs with `[reports] enabled = false`.
    pub leases: BTreeMap<String, Vec<String>>,
}

/// The contract's lease keys per service (the default of `[monitor.health] leases`).
pub fn default_leases() -> BTreeMap<String, Vec<String>> {
    [
        ("aggregator", &["aggregator.p{p}", "aggregator.final"][..]),
        ("rl-pipeline", &["rl.p{p}"][..]),
        ("analyzer", &["analyzer", "analyzer.reports"][..]),
        ("monitor", &["monitor"][..]),
    ]
    .into_iter()
    .map(|(s, keys)| (s.to_owned(), keys.iter().map(|k| (*k).to_owned()).collect()))
    .collect()
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            for_: Duration::from_secs(120),
            keep_firing_for: Duration::from_secs(60),
            lag_pending: 10_000,
            lag_age: Duration::from_secs(300),
            dlq_growth: 10,
            dlq_window: Duration::from_secs(300),
            min_ready: BTreeMap::new(),
            heartbeat_timeout: Duration::from_secs(15),
            leases: default_leases(),
        }
    }
}

/// A direct receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ReceiverConfig {
    /// A Slack incoming webhook: one message per group of alerts.
    Slack {
        /// The webhook URL (a secret).
        url: String,
    },
    /// PagerDuty Events API v2: one event per alert, `dedup_key` = fingerprint.
    Pagerduty {
        /// The integration's routing key (a secret).
        routing_key: String,
        /// The events endpoint (default PagerDuty's).
        #[serde(default = "pagerduty_url")]
        url: String,
        /// Shown as `client` in PagerDuty.
        #[serde(default)]
        client_url: Option<String>,
    },
    /// A generic JSON webhook: one request per alert transition, signed with HMAC-SHA256.
    Webhook {
        /// Where to POST.
        url: String,
        /// The HMAC key of the `Modelperf-Signature-256` header (a secret).
        secret: String,
    },
}

fn pagerduty_url() -> String {
    PAGERDUTY_EVENTS_URL.to_owned()
}

impl ReceiverConfig {
    /// The provider, for metrics and logs.
    pub fn provider(&self) -> &'static str {
        match self {
            ReceiverConfig::Slack { .. } => "slack",
            ReceiverConfig::Pagerduty { .. } => "pagerduty",
            ReceiverConfig::Webhook { .. } => "webhook",
        }
    }

    fn url(&self) -> &str {
        match self {
            ReceiverConfig::Slack { url }
            | ReceiverConfig::Pagerduty { url, .. }
            | ReceiverConfig::Webhook { url, .. } => url,
        }
    }
}

/// `[[monitor.routes]]`: alerts whose labels match go to `receiver`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A receiver of `[monitor.receivers]`.
    pub receiver: String,
    /// Label matchers, all of which must hold (`severity = "critical"`, `team = "~ml-.*"` is a
    /// regular expression); none: every alert.
    #[serde(default, rename = "match")]
    pub matchers: BTreeMap<String, String>,
    /// Alerts of one group (equal values of these labels) that change in one evaluation go out
    /// as one Slack message (default `["alertname"]`).
    #[serde(default = "default_group_by")]
    pub group_by: Vec<String>,
    /// A firing alert is notified again this often (default 4 h).
    #[serde(default = "default_repeat", with = "humantime_serde")]
    pub repeat_interval: Duration,
}

fn default_group_by() -> Vec<String> {
    vec!["alertname".to_owned()]
}

fn default_repeat() -> Duration {
    Duration::from_secs(4 * 3_600)
}

/// A route with its matchers compiled.
#[derive(Debug, Clone)]
pub struct Route {
    /// The receiver.
    pub receiver: String,
    /// The compiled matchers.
    pub matchers: LabelMatchers,
    /// Grouping labels.
    pub group_by: Vec<String>,
    /// Repeat interval.
    pub repeat_interval: Duration,
}

impl Config {
    /// Loads and checks the configuration (not the rules: see [`Config::load_rules`]); the
    /// error names the key.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let config: Config = modelperf_bus::config::load(file)?;
        config.bus.validate()?;
        config.monitor.validate()?;
        Ok(config)
    }

    /// Reads and validates the rules file; the error names the rule and the field.
    pub fn load_rules(&self) -> Result<Rules, ConfigError> {
        let path = &self.monitor.rules_file;
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
            key: "MODELPERF_MONITOR__RULES_FILE".into(),
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        Rules::parse(&text).map_err(|e| ConfigError::Invalid { key: path.display().to_string(), reason: e.to_string() })
    }
}

impl MonitorConfig {
    /// Checks what the types cannot; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| Err(ConfigError::Invalid { key: key.to_owned(), reason });
        if self.eval_interval < Duration::from_millis(50) {
            return bad("MODELPERF_MONITOR__EVAL_INTERVAL", "must be at least 50ms".into());
        }
        if self.resend_interval < self.eval_interval {
            return bad("MODELPERF_MONITOR__RESEND_INTERVAL", "must be at least EVAL_INTERVAL".into());
        }
        if let Some(url) = &self.alertmanager_url
            && reqwest::Url::parse(url).is_err()
        {
            return bad("MODELPERF_MONITOR__ALERTMANAGER_URL", format!("{url:?} is not a URL"));
        }
        if self.absent_after.is_zero() {
            return bad("MODELPERF_MONITOR__ABSENT_AFTER", "must be longer than zero".into());
        }
        if self.delivery.base_backoff.is_zero() || self.delivery.max_backoff < self.delivery.base_backoff {
            return bad("monitor.delivery.max_backoff", "base_backoff must be positive and at most max_backoff".into());
        }
        if self.health.dlq_window.is_zero() {
            return bad("MODELPERF_MONITOR__HEALTH__DLQ_WINDOW", "must be longer than zero".into());
        }
        if self.health.heartbeat_timeout < modelperf_telemetry::HEARTBEAT_INTERVAL {
            return bad(
                "MODELPERF_MONITOR__HEALTH__HEARTBEAT_TIMEOUT",
                "must be at least the heartbeat interval (5s)".into(),
            );
        }
        for (service, keys) in &self.health.leases {
            for key in keys {
                let bare = key.replace("{p}", "");
                if bare.is_empty()
                    || bare.contains(['{', '}'])
                    || !bare.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | '='))
                {
                    return bad(
                        &format!("monitor.health.leases.{service}"),
                        format!(
                            "{key:?} is not a lease key (characters of [A-Za-z0-9._/=-], `{{p}}` for the partition)"
                        ),
                    );
                }
            }
        }
        if self.delivery.max_held == 0 {
            return bad("monitor.delivery.max_held", "must be at least 1".into());
        }
        for (name, receiver) in &self.receivers {
            let key = format!("monitor.receivers.{name}");
            if name == ALERTMANAGER {
                return bad(&key, "the name is reserved for MODELPERF_MONITOR__ALERTMANAGER_URL".into());
            }
            if name.is_empty()
                || name.len() > 64
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return bad(&key, "a receiver name is 1-64 characters of [A-Za-z0-9_-]".into());
            }
            if reqwest::Url::parse(receiver.url()).is_err() {
                return bad(&format!("{key}.url"), "not a URL".into());
            }
            if let ReceiverConfig::Webhook { secret, .. } = receiver
                && secret.is_empty()
            {
                return bad(&format!("{key}.secret"), "must not be empty".into());
            }
            if let ReceiverConfig::Pagerduty { routing_key, .. } = receiver
                && routing_key.is_empty()
            {
                return bad(&format!("{key}.routing_key"), "must not be empty".into());
            }
        }
        self.routes()?;
        Ok(())
    }

    /// The routes with their matchers compiled.
    pub fn routes(&self) -> Result<Vec<Route>, ConfigError> {
        self.routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let key = format!("monitor.routes[{i}]");
                if !self.receivers.contains_key(&r.receiver) {
                    return Err(ConfigError::Invalid {
                        key: format!("{key}.receiver"),
                        reason: format!("no receiver {:?} in [monitor.receivers]", r.receiver),
                    });
                }
                if r.repeat_interval < self.eval_interval {
                    return Err(ConfigError::Invalid {
                        key: format!("{key}.repeat_interval"),
                        reason: "must be at least EVAL_INTERVAL".into(),
                    });
                }
                let matchers = LabelMatchers::compile(&r.matchers)
                    .map_err(|reason| ConfigError::Invalid { key: format!("{key}.match"), reason })?;
                Ok(Route {
                    receiver: r.receiver.clone(),
                    matchers,
                    group_by: r.group_by.clone(),
                    repeat_interval: r.repeat_interval,
                })
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::result_large_err)] // figment's Jail returns its own error type
mod tests {
    use super::*;

    #[test]
    fn the_contract_keys_reach_the_monitor() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "m.toml",
                r#"
[monitor.receivers.oncall]
type = "pagerduty"
routing_key = "from-file"
[monitor.receivers.hook]
type = "webhook"
url = "http://127.0.0.1:1/hook"
secret = "s"
[[monitor.routes]]
receiver = "oncall"
match = { severity = "critical" }
"#,
            )?;
            jail.set_env("MODELPERF_MONITOR__RULES_FILE", "rules.toml");
            jail.set_env("MODELPERF_MONITOR__EVAL_INTERVAL", "1s");
            jail.set_env("MODELPERF_MONITOR__RESEND_INTERVAL", "2s");
            jail.set_env("MODELPERF_MONITOR__ALERTMANAGER_URL", "http://127.0.0.1:9093");
            jail.set_env("MODELPERF_MONITOR__RECEIVERS__ONCALL__ROUTING_KEY", "from-env");
            let c = Config::load(Some(std::path::Path::new("m.toml"))).unwrap();
            assert_eq!(c.monitor.rules_file, PathBuf::from("rules.toml"));
            assert_eq!(c.monitor.eval_interval, Duration::from_secs(1));
            assert_eq!(c.monitor.resend_interval, Duration::from_secs(2));
            assert_eq!(c.monitor.alertmanager_url.as_deref(), Some("http://127.0.0.1:9093"));
            assert_eq!(c.http.listen.port(), 9104);
            let ReceiverConfig::Pagerduty { routing_key, url, .. } = &c.monitor.receivers["oncall"] else { panic!() };
            assert_eq!(routing_key, "from-env");
            assert_eq!(url, PAGERDUTY_EVENTS_URL);
            let routes = c.monitor.routes().unwrap();
            assert_eq!(routes[0].group_by, ["alertname"]);
            assert_eq!(routes[0].repeat_interval, Duration::from_secs(4 * 3600));
            Ok(())
        });
    }

    #[test]
    fn mistakes_name_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("MODELPERF_MONITOR__RESEND_INTERVAL", "1ms");
            assert!(Config::load(None).unwrap_err().to_string().contains("RESEND_INTERVAL"));
            jail.set_env("MODELPERF_MONITOR__RESEND_INTERVAL", "1m");
            jail.set_env("MODELPERF_MONITOR__ALERTMANAGER_URL", "not a url");
            assert!(Config::load(None).unwrap_err().to_string().contains("ALERTMANAGER_URL"));
            jail.set_env("MODELPERF_MONITOR__ALERTMANAGER_URL", "http://am:9093");
            jail.create_file("r.toml", "[[monitor.routes]]\nreceiver = \"nobody\"\n")?;
            let err = Config::load(Some(std::path::Path::new("r.toml"))).unwrap_err().to_string();
            assert!(err.contains("monitor.routes[0].receiver"), "{err}");
            jail.create_file("a.toml", "[monitor.receivers.alertmanager]\ntype = \"slack\"\nurl = \"http://x\"\n")?;
            let err = Config::load(Some(std::path::Path::new("a.toml"))).unwrap_err().to_string();
            assert!(err.contains("monitor.receivers.alertmanager"), "{err}");
            jail.create_file("s.toml", "[monitor.receivers.x]\ntype = \"sms\"\nurl = \"http://x\"\n")?;
            assert!(Config::load(Some(std::path::Path::new("s.toml"))).is_err());
            jail.create_file("l.toml", "[monitor.health.leases]\nanalyzer = [\"analyzer\", \"analyzer reports\"]\n")?;
            let err = Config::load(Some(std::path::Path::new("l.toml"))).unwrap_err().to_string();
            assert!(err.contains("monitor.health.leases.analyzer"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_expected_leases_are_configuration_over_the_contract() {
        figment::Jail::expect_with(|jail| {
            assert_eq!(Config::load(None).unwrap().monitor.health.leases, default_leases());
            jail.create_file("l.toml", "[monitor.health.leases]\nanalyzer = [\"analyzer\"]\nmonitor = []\n")?;
            let leases = Config::load(Some(std::path::Path::new("l.toml"))).unwrap().monitor.health.leases;
            assert_eq!(leases["analyzer"], ["analyzer"]);
            assert!(leases["monitor"].is_empty());
            assert_eq!(leases["aggregator"], default_leases()["aggregator"], "the other services keep the contract's");
            Ok(())
        });
    }
}
