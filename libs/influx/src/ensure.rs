//! Making the write target exist, idempotently, at start-up.
//!
//! v1: the database is created when missing, and each window of `retention_policies` gets a
//! retention policy named after it (created when missing, altered when its duration differs,
//! made the default when configured so); with `retention_policy` set, that one policy must
//! exist and nothing else is created. This needs a user allowed to create databases and
//! policies (an admin, when authentication is on).
//!
//! v2: the bucket is only checked (`GET /api/v2/buckets?name=`), never created: its retention
//! is the operator's choice. Servers without the bucket API (1.8, 3.x) skip the check.

use std::time::Duration;

use modelperf_bus::config::ConfigError;
use serde_json::Value;
use tracing::{info, warn};

use crate::config::{InfluxApi, RetentionPolicy};
use crate::error::InfluxError;
use crate::sink::{Sink, cut, expect_success};

/// A retention policy as the server reports it.
#[derive(Debug, Clone, PartialEq)]
struct ExistingPolicy {
    name: String,
    duration: Duration,
    shard_duration: Duration,
    default: bool,
}

impl Sink {
    /// Creates what the configured write target needs (v1), or checks it exists (v2); safe to
    /// run at every start and by every replica.
    pub async fn ensure(&self) -> Result<(), InfluxError> {
        match self.config().api {
            InfluxApi::V1 => self.ensure_v1().await,
            InfluxApi::V2 => self.ensure_v2().await,
        }
    }

    async fn ensure_v1(&self) -> Result<(), InfluxError> {
        let config = self.config();
        let db = &config.database;
        let databases = self.influxql("SHOW DATABASES").await?;
        if !first_column(&databases).iter().any(|name| name == db) {
            self.influxql(&format!("CREATE DATABASE {}", quote_ident(db))).await?;
            info!(database = %db, "influxdb database created");
        }
        let existing = self.retention_policies().await?;
        if let Some(rp) = &config.retention_policy {
            if existing.iter().any(|p| &p.name == rp) {
                return Ok(());
            }
            return Err(InfluxError::Config(ConfigError::Invalid {
                key: "MODELPERF_INFLUX__RETENTION_POLICY".into(),
                reason: format!(
                    "database {db:?} has no retention policy {rp:?} (it is not created for you: create it, or unset the key to get one policy per window)"
                ),
            }));
        }
        for (window, wanted) in &config.retention_policies {
            let current = existing.iter().find(|p| &p.name == window);
            if let Some(statement) = retention_statement(db, window, wanted, current) {
                self.influxql(&statement).await?;
                info!(database = %db, window = %window, statement = %statement, "influxdb retention policy ensured");
            }
        }
        Ok(())
    }

    async fn retention_policies(&self) -> Result<Vec<ExistingPolicy>, InfluxError> {
        let statement = format!("SHOW RETENTION POLICIES ON {}", quote_ident(&self.config().database));
        let result = self.influxql(&statement).await?;
        let unexpected = |reason: &str| InfluxError::Unexpected { what: statement.clone(), reason: reason.into() };
        let Some(series) = result.pointer("/series/0") else { return Ok(Vec::new()) };
        let columns: Vec<&str> = series["columns"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let at = |name: &str| {
            columns.iter().position(|c| *c == name).ok_or_else(|| unexpected(&format!("no {name} column")))
        };
        let (name_at, duration_at, shard_at, default_at) =
            (at("name")?, at("duration")?, at("shardGroupDuration")?, at("default")?);
        let mut policies = Vec::new();
        for row in series["values"].as_array().into_iter().flatten() {
            let text = |i: usize| row.get(i).and_then(Value::as_str).unwrap_or_default();
            let duration =
                |i: usize| parse_go_duration(text(i)).ok_or_else(|| unexpected(&format!("bad duration {:?}", text(i))));
            policies.push(ExistingPolicy {
                name: text(name_at).to_owned(),
                duration: duration(duration_at)?,
                shard_duration: duration(shard_at)?,
                default: row.get(default_at).and_then(Value::as_bool).unwrap_or(false),
            });
        }
        Ok(policies)
    }

    /// Runs one InfluxQL query against the database (v1) or bucket (v2, through its v1
    /// compatibility endpoint) and returns its result object (`series`, ...).
    pub async fn query(&self, statement: &str) -> Result<Value, InfluxError> {
        let db = match self.config().api {
            InfluxApi::V1 => self.config().database.clone(),
            InfluxApi::V2 => self.config().bucket.clone().unwrap_or_default(),
        };
        self.run_influxql(statement, Some(&db)).await
    }

    /// Runs one InfluxQL statement (`POST /query`, `q=`) and returns its result object.
    async fn influxql(&self, statement: &str) -> Result<Value, InfluxError> {
        self.run_influxql(statement, None).await
    }

    async fn run_influxql(&self, statement: &str, db: Option<&str>) -> Result<Value, InfluxError> {
        let url = format!("{}/query", self.base());
        let mut form = vec![("q", statement)];
        if let Some(db) = db {
            form.push(("db", db));
        }
        let reply = self.request(statement, || self.http().post(&url).form(&form)).await?;
        let reply = expect_success(statement, reply)?;
        let unexpected = |reason: String| InfluxError::Unexpected { what: statement.to_owned(), reason };
        let body: Value =
            serde_json::from_str(&reply.body).map_err(|e| unexpected(format!("{e}: {}", cut(&reply.body))))?;
        let result =
            body.pointer("/results/0").ok_or_else(|| unexpected(format!("no result: {}", cut(&reply.body))))?;
        if let Some(message) = result.get("error").and_then(Value::as_str) {
            return Err(InfluxError::Statement { statement: statement.to_owned(), message: message.to_owned() });
        }
        Ok(result.clone())
    }

    async fn ensure_v2(&self) -> Result<(), InfluxError> {
        let config = self.config();
        let bucket = config.bucket.clone().unwrap_or_default();
        let what = format!("check of bucket {bucket}");
        let url = format!("{}/api/v2/buckets", self.base());
        let mut query = vec![("name", bucket.clone())];
        if let Some(org) = &config.org {
            query.push(("org", org.clone()));
        }
        let reply = self.request(&what, || self.http().get(&url).query(&query)).await?;
        let missing = || InfluxError::MissingBucket {
            bucket: bucket.clone(),
            org: config.org.as_ref().map(|o| format!(" in org {o:?}")).unwrap_or_default(),
        };
        if reply.status == 404 {
            // 2.x answers a missing org with a JSON error; a server without the bucket API
            // (1.8, 3.x) with a plain "404 page not found".
            if serde_json::from_str::<Value>(&reply.body).is_ok_and(|v| v.get("code").is_some()) {
                return Err(missing());
            }
            warn!(bucket = %bucket, "influxdb has no bucket API (1.8 or 3.x): cannot check that the bucket exists");
            return Ok(());
        }
        let reply = expect_success(&what, reply)?;
        let body: Value = serde_json::from_str(&reply.body).map_err(|e| InfluxError::Unexpected {
            what: what.clone(),
            reason: format!("{e}: {}", cut(&reply.body)),
        })?;
        let found = body["buckets"].as_array().into_iter().flatten().any(|b| b["name"].as_str() == Some(&bucket));
        if found { Ok(()) } else { Err(missing()) }
    }
}

/// The statement that makes `current` match `wanted`, if anything must change.
fn retention_statement(
    db: &str,
    window: &str,
    wanted: &RetentionPolicy,
    current: Option<&ExistingPolicy>,
) -> Option<String> {
    let on = format!("{} ON {}", quote_ident(window), quote_ident(db));
    let duration = influxql_duration(wanted.duration);
    let Some(current) = current else {
        let default = if wanted.default { " DEFAULT" } else { "" };
        return Some(format!("CREATE RETENTION POLICY {on} DURATION {duration} REPLICATION 1{default}"));
    };
    let mut changes = String::new();
    if current.duration != wanted.duration {
        changes.push_str(&format!(" DURATION {duration}"));
        // InfluxDB refuses a duration shorter than the shard groups: take the shard duration
        // it would choose for a new policy of this duration.
        if !wanted.duration.is_zero() && current.shard_duration > wanted.duration {
            changes
                .push_str(&format!(" SHARD DURATION {}", influxql_duration(default_shard_duration(wanted.duration))));
        }
    }
    if wanted.default && !current.default {
        changes.push_str(" DEFAULT");
    }
    (!changes.is_empty()).then(|| format!("ALTER RETENTION POLICY {on}{changes}"))
}

/// The shard group duration InfluxDB 1.x picks for a policy of `duration`.
fn default_shard_duration(duration: Duration) -> Duration {
    const DAY: u64 = 86_400;
    match duration.as_secs() {
        0 => Duration::from_secs(7 * DAY),
        s if s >= 180 * DAY => Duration::from_secs(7 * DAY),
        s if s >= 2 * DAY => Duration::from_secs(DAY),
        _ => Duration::from_secs(3_600),
    }
}

/// `"name"` with `\` and `"` escaped: an InfluxQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A duration literal of InfluxQL in the largest unit that divides it (`30d`, `36h`); `INF`
/// for zero.
fn influxql_duration(d: Duration) -> String {
    if d.is_zero() {
        return "INF".into();
    }
    let nanos = d.as_nanos();
    const UNITS: [(&str, u128); 7] = [
        ("d", 86_400_000_000_000),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("u", 1_000),
        ("ns", 1),
    ];
    let (unit, size) = UNITS.iter().find(|(_, size)| nanos.is_multiple_of(*size)).copied().unwrap_or(("ns", 1));
    format!("{}{unit}", nanos / size)
}

/// Parses Go's `time.Duration` text as InfluxDB prints it: `720h0m0s`, `1h30m0s`, `0s`, `1.5s`.
fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3_600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * seconds;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).ok()
}

/// The first column of the first series (`SHOW DATABASES` → names).
fn first_column(result: &Value) -> Vec<String> {
    let rows = result.pointer("/series/0/values").and_then(Value::as_array);
    rows.into_iter().flatten().filter_map(|row| row.get(0).and_then(Value::as_str)).map(str::to_owned).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn durations_both_ways() {
        assert_eq!(influxql_duration(DAY * 30), "30d");
        assert_eq!(influxql_duration(Duration::from_secs(36 * 3_600)), "36h");
        assert_eq!(influxql_duration(Duration::from_millis(3_600_500)), "3600500ms");
        assert_eq!(influxql_duration(Duration::ZERO), "INF");
        assert_eq!(parse_go_duration("720h0m0s"), Some(DAY * 30));
        assert_eq!(parse_go_duration("1h30m0s"), Some(Duration::from_secs(5_400)));
        assert_eq!(parse_go_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1_500)));
        assert_eq!(parse_go_duration("17520h0m0s"), Some(DAY * 730));
        for bad in ["", "h", "5x", "1h5"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn statements() {
        let wanted = RetentionPolicy { duration: DAY * 30, default: false };
        assert_eq!(
            retention_statement("modelperf", "1m", &wanted, None).unwrap(),
            r#"CREATE RETENTION POLICY "1m" ON "modelperf" DURATION 30d REPLICATION 1"#
        );
        let same = ExistingPolicy { name: "1m".into(), duration: DAY * 30, shard_duration: DAY, default: false };
        assert_eq!(retention_statement("modelperf", "1m", &wanted, Some(&same)), None);
        let shorter = RetentionPolicy { duration: Duration::from_secs(3_600), default: true };
        assert_eq!(
            retention_statement("modelperf", "1m", &shorter, Some(&same)).unwrap(),
            r#"ALTER RETENTION POLICY "1m" ON "modelperf" DURATION 1h SHARD DURATION 1h DEFAULT"#
        );
        assert_eq!(quote_ident(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
