#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
//! The sink against a real InfluxDB 1.x (Debian's `influxd`, started by the test kit on free
//! ports): `ensure` is idempotent and follows configuration changes, points read back exactly
//! (every field type, awkward tags), a point written again overwrites itself, non-finite
//! numbers are dropped, refusals are permanent and not retried, an unreachable server is
//! retryable and given up on after the bounded attempts.

use std::time::{Duration, Instant, SystemTime};

use modelperf_influx::{ErrorClass, InfluxApi, InfluxConfig, InfluxError, Point, RetentionPolicy, Sink};
use modelperf_testkit::Influx;
use serde_json::{Value, json};

const DAY: Duration = Duration::from_secs(86_400);

fn config(influx: &Influx, database: &str) -> InfluxConfig {
    InfluxConfig { url: influx.url().to_owned(), database: database.to_owned(), ..InfluxConfig::default() }
}

/// A window start a few minutes ago, aligned to the minute (inside every retention policy).
fn window_start() -> i64 {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    now - now % 60 - 300
}

fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// `(name, duration, shard duration, default)` of every retention policy of `db`.
async fn policies(influx: &Influx, db: &str) -> Vec<(String, String, String, bool)> {
    let r = influx.query(&format!("SHOW RETENTION POLICIES ON \"{db}\""), None).await.unwrap();
    let rows = r.pointer("/results/0/series/0/values").and_then(Value::as_array).cloned().unwrap_or_default();
    rows.iter()
        .map(|row| {
            (
                row[0].as_str().unwrap().to_owned(),
                row[1].as_str().unwrap().to_owned(),
                row[2].as_str().unwrap().to_owned(),
                row[4].as_bool().unwrap(),
            )
        })
        .collect()
}

fn policy<'a>(all: &'a [(String, String, String, bool)], name: &str) -> &'a (String, String, String, bool) {
    all.iter().find(|p| p.0 == name).unwrap_or_else(|| panic!("no policy {name} in {all:?}"))
}

/// Rows of `SELECT * FROM "<rp>"."<measurement>"` as JSON objects keyed by column, times in
/// epoch seconds.
async fn rows(influx: &Influx, db: &str, rp: &str, measurement: &str) -> Vec<serde_json::Map<String, Value>> {
    let q = format!("SELECT * FROM \"{rp}\".\"{measurement}\"");
    let body: Value = modelperf_telemetry::http::client()
        .build()
        .unwrap()
        .post(format!("{}/query", influx.url()))
        .form(&[("q", q.as_str()), ("db", db), ("epoch", "s")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body.pointer("/results/0/error").is_none(), "{body}");
    let Some(series) = body.pointer("/results/0/series/0") else { return Vec::new() };
    let columns: Vec<String> =
        series["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().into()).collect();
    series["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            columns
                .iter()
                .zip(row.as_array().unwrap())
                .filter(|(_, v)| !v.is_null())
                .map(|(c, v)| (c.clone(), v.clone()))
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn ensure_creates_the_database_and_policies_idempotently() {
    let influx = Influx::start().await.unwrap();
    let db = unique_name("ensure");
    let mut cfg = config(&influx, &db);
    cfg.retention_policies.insert("10s".into(), RetentionPolicy { duration: DAY, default: true });
    let sink = Sink::new(cfg.clone()).unwrap();

    sink.ensure().await.unwrap();
    let first = policies(&influx, &db).await;
    assert_eq!(policy(&first, "1m").1, "720h0m0s");
    assert_eq!(policy(&first, "1h").1, "17520h0m0s");
    assert_eq!(policy(&first, "10s").1, "24h0m0s");
    assert!(policy(&first, "10s").3, "10s is the default policy: {first:?}");
    assert!(!policy(&first, "1m").3);

    // Twice is the same as once.
    sink.ensure().await.unwrap();
    assert_eq!(policies(&influx, &db).await, first);

    // A changed duration is altered in place.
    cfg.retention_policies.get_mut("1m").unwrap().duration = DAY * 60;
    Sink::new(cfg.clone()).unwrap().ensure().await.unwrap();
    let altered = policies(&influx, &db).await;
    assert_eq!(policy(&altered, "1m").1, "1440h0m0s");
    assert_eq!(policy(&altered, "1h"), policy(&first, "1h"));

    // Shorter than the policy's shard groups (1 d): the shard duration follows.
    cfg.retention_policies.get_mut("1m").unwrap().duration = Duration::from_secs(3_600);
    Sink::new(cfg.clone()).unwrap().ensure().await.unwrap();
    let shorter = policies(&influx, &db).await;
    assert_eq!(policy(&shorter, "1m").1, "1h0m0s");
    assert_eq!(policy(&shorter, "1m").2, "1h0m0s");
    Sink::new(cfg.clone()).unwrap().ensure().await.unwrap();
    assert_eq!(policies(&influx, &db).await, shorter);
}

#[tokio::test]
async fn a_single_configured_policy_must_exist_and_nothing_else_is_created() {
    let influx = Influx::start().await.unwrap();
    let db = influx.fresh_database().await.unwrap();
    let cfg = InfluxConfig { retention_policy: Some("autogen".into()), ..config(&influx, &db) };
    let sink = Sink::new(cfg.clone()).unwrap();
    sink.ensure().await.unwrap();
    assert_eq!(policies(&influx, &db).await.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(), ["autogen"]);

    // Every window goes there.
    let stats = sink.write("1m", &[Point::new("model_perf", window_start()).tag("window", "1m").int("count", 1)]).await;
    assert_eq!(stats.unwrap().points, 1);
    assert_eq!(rows(&influx, &db, "autogen", "model_perf").await.len(), 1);

    let missing = Sink::new(InfluxConfig { retention_policy: Some("nope".into()), ..cfg }).unwrap();
    let err = missing.ensure().await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal);
    assert!(err.to_string().contains("MODELPERF_INFLUX__RETENTION_POLICY"), "{err}");
}

#[tokio::test]
async fn points_read_back_exactly() {
    let influx = Influx::start().await.unwrap();
    let db = unique_name("exact");
    let sink = Sink::new(config(&influx, &db)).unwrap();
    sink.ensure().await.unwrap();
    sink.ping().await.unwrap();

    let t = window_start();
    let awkward = [
        ("spaces", "gpt 4o mini"),
        ("commas", "a,b,,c"),
        ("equals", "k=v=="),
        ("backslashes", "C:\\models\\x\\"),
        ("newlines", "line1\nline2\r\n"),
        ("unicode", "Ünïcødé 模型 🚀"),
        ("everything", " lead, \\ =\n trail "),
    ];
    let string_field = "quote \" backslash \\ newline \n tab \t unicode 🚀 end\\";
    let points: Vec<Point> = awkward
        .iter()
        .enumerate()
        .map(|(i, (case, value))| {
            Point::new("model_perf", t)
                .tag("window", "1m")
                .tag("case", case)
                .tag("model", value)
                .tag("task type", "code, edit")
                .tag_opt("tenant", None::<&str>)
                .int("count", i as i64)
                .int("tokens_input", i64::MAX)
                .int("revision", i64::MIN)
                .float("latency_p50_ms", 812.5)
                .float("success_rate", 0.1)
                .float("cost_usd", 1.234_567_890_123e-7)
                .float("latency_max_ms", 1.0e15 + 0.5)
                .string("note", string_field)
                .boolean("flag", i % 2 == 0)
        })
        .collect();
    let stats = sink.write("1m", &points).await.unwrap();
    assert_eq!((stats.points, stats.requests, stats.dropped_points, stats.dropped_fields), (awkward.len(), 1, 0, 0));

    let got = rows(&influx, &db, "1m", "model_perf").await;
    assert_eq!(got.len(), awkward.len(), "{got:?}");
    for (i, (case, value)) in awkward.iter().enumerate() {
        let row = got.iter().find(|r| r["case"] == json!(case)).unwrap_or_else(|| panic!("no row {case}: {got:?}"));
        let cleaned: String = value.chars().filter(|c| !matches!(c, '\\' | '\n' | '\r')).collect();
        let expected = json!({
            "time": t,
            "case": case,
            "window": "1m",
            "model": cleaned,
            "task type": "code, edit",
            "count": i,
            "tokens_input": i64::MAX,
            "revision": i64::MIN,
            "latency_p50_ms": 812.5,
            "success_rate": 0.1,
            "cost_usd": 1.234_567_890_123e-7,
            "latency_max_ms": 1.0e15 + 0.5,
            "note": string_field,
            "flag": i % 2 == 0,
        });
        assert_eq!(Value::Object(row.clone()), expected, "case {case}");
    }

    // The server typed the fields as the contract says.
    let keys = modelperf_telemetry::http::client()
        .build()
        .unwrap()
        .post(format!("{}/query", influx.url()))
        .form(&[("q", "SHOW FIELD KEYS FROM \"1m\".\"model_perf\""), ("db", db.as_str())])
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let types: Vec<(String, String)> = keys
        .pointer("/results/0/series/0/values")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_owned(), r[1].as_str().unwrap().to_owned()))
        .collect();
    let type_of = |k: &str| types.iter().find(|(key, _)| key == k).map(|(_, t)| t.as_str());
    assert_eq!(type_of("count"), Some("integer"));
    assert_eq!(type_of("revision"), Some("integer"));
    assert_eq!(type_of("latency_p50_ms"), Some("float"));
    assert_eq!(type_of("note"), Some("string"));
    assert_eq!(type_of("flag"), Some("boolean"));
}

#[tokio::test]
async fn writing_a_point_again_overwrites_it() {
    let influx = Influx::start().await.unwrap();
    let db = influx.fresh_database().await.unwrap();
    let sink = Sink::new(config(&influx, &db)).unwrap();
    sink.ensure().await.unwrap();
    let t = window_start();
    let base = || Point::new("model_perf", t).tag("window", "1h").tag("model", "m1");
    sink.write("1h", &[base().int("count", 3).float("cost_usd", 0.5).int("revision", 0)]).await.unwrap();
    sink.write("1h", &[base().int("count", 5).float("cost_usd", 0.75).int("revision", 1)]).await.unwrap();
    let got = rows(&influx, &db, "1h", "model_perf").await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["count"], json!(5));
    assert_eq!(got[0]["cost_usd"], json!(0.75));
    assert_eq!(got[0]["revision"], json!(1));
}

#[tokio::test]
async fn non_finite_numbers_are_dropped_and_nothing_fails() {
    let influx = Influx::start().await.unwrap();
    let db = influx.fresh_database().await.unwrap();
    let sink = Sink::new(config(&influx, &db)).unwrap();
    sink.ensure().await.unwrap();
    let t = window_start();
    let points = [
        Point::new("model_perf", t)
            .tag("model", "a")
            .float("quality_mean", f64::NAN)
            .float("latency_p99_ms", f64::INFINITY)
            .float("latency_mean_ms", 12.5)
            .int("count", 2),
        Point::new("model_perf", t).tag("model", "b").float("quality_mean", f64::NAN).float("x", f64::NEG_INFINITY),
    ];
    let stats = sink.write("1m", &points).await.unwrap();
    assert_eq!((stats.points, stats.dropped_points, stats.dropped_fields), (1, 1, 4));
    let got = rows(&influx, &db, "1m", "model_perf").await;
    assert_eq!(got.len(), 1, "{got:?}");
    let expected = json!({"time": t, "model": "a", "latency_mean_ms": 12.5, "count": 2});
    assert_eq!(Value::Object(got[0].clone()), expected);

    // Nothing left to write: no request at all, still a success.
    let stats = sink.write("1m", &points[1..]).await.unwrap();
    assert_eq!((stats.points, stats.requests, stats.dropped_points), (0, 0, 1));
}

#[tokio::test]
async fn batches_split_large_writes() {
    let influx = Influx::start().await.unwrap();
    let db = influx.fresh_database().await.unwrap();
    let sink = Sink::new(InfluxConfig { batch_size: 4, ..config(&influx, &db) }).unwrap();
    sink.ensure().await.unwrap();
    let t = window_start();
    let points: Vec<Point> =
        (0..10).map(|i| Point::new("model_perf", t).tag("model", format!("m{i}")).int("count", i)).collect();
    let stats = sink.write("1m", &points).await.unwrap();
    assert_eq!((stats.points, stats.requests, stats.retries), (10, 3, 0));
    assert_eq!(rows(&influx, &db, "1m", "model_perf").await.len(), 10);
}

/// Many retries with long backoff: a retried refusal would show in `attempts` (and take
/// seconds).
fn patient(cfg: InfluxConfig) -> InfluxConfig {
    InfluxConfig { max_retries: 5, backoff_initial: Duration::from_secs(2), backoff_max: Duration::from_secs(5), ..cfg }
}

#[tokio::test]
async fn refusals_are_permanent_and_not_retried() {
    let influx = Influx::start().await.unwrap();
    let point = |v: Point| v.tag("model", "m");
    let t = window_start();

    // No such database (ensure never ran): 404.
    let sink = Sink::new(patient(config(&influx, &unique_name("missing")))).unwrap();
    let err = sink.write("1m", &[point(Point::new("model_perf", t)).int("count", 1)]).await.unwrap_err();
    assert!(matches!(err, InfluxError::Rejected { status: 404, attempts: 1, .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(err.class(), ErrorClass::Fatal);
    assert!(err.to_string().contains("database not found"), "the server's explanation is kept: {err}");

    // A field type conflict: 400, this data will never be accepted.
    let db = influx.fresh_database().await.unwrap();
    let sink = Sink::new(patient(config(&influx, &db))).unwrap();
    sink.ensure().await.unwrap();
    sink.write("1m", &[point(Point::new("model_perf", t)).int("count", 1)]).await.unwrap();
    let err = sink.write("1m", &[point(Point::new("model_perf", t + 60)).string("count", "many")]).await.unwrap_err();
    assert!(matches!(err, InfluxError::Rejected { status: 400, attempts: 1, .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Terminate);
    assert!(err.to_string().contains("field type conflict"), "{err}");

    // Older than the policy keeps: 400 as well.
    let err = sink.write("1m", &[point(Point::new("model_perf", t - 40 * 86_400)).int("count", 1)]).await.unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn an_unreachable_server_is_retryable_and_given_up_on_quickly() {
    let port = modelperf_testkit::free_port();
    let cfg = InfluxConfig {
        url: format!("http://127.0.0.1:{port}"),
        max_retries: 3,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        timeout: Duration::from_secs(2),
        ..InfluxConfig::default()
    };
    let sink = Sink::new(cfg).unwrap();
    let started = Instant::now();
    let err = sink.write("1m", &[Point::new("model_perf", window_start()).int("count", 1)]).await.unwrap_err();
    assert!(matches!(err, InfluxError::Unavailable { attempts: 4, status: None, .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("retry later"), "{err}");
    // 4 refused connections and 3 delays of at most 40 ms: far below this generous bound.
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    let err = sink.ping().await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    let err = sink.ensure().await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

/// Debian's InfluxDB here is 1.6, which has no v2 write API (added in 1.8): the v2 path is
/// exercised by `tests/v2.rs` against a recording stand-in. This test pins down why.
#[tokio::test]
async fn this_server_has_no_v2_write_api() {
    let influx = Influx::start().await.unwrap();
    let version = modelperf_telemetry::http::get(format!("{}/ping", influx.url())).await.unwrap();
    let version = version.headers()["x-influxdb-version"].to_str().unwrap().to_owned();
    let db = influx.fresh_database().await.unwrap();
    let sink = Sink::new(InfluxConfig {
        url: influx.url().to_owned(),
        api: InfluxApi::V2,
        bucket: Some(format!("{db}/autogen")),
        ..InfluxConfig::default()
    })
    .unwrap();
    sink.ping().await.unwrap();
    let result = sink.write("1m", &[Point::new("model_perf", window_start()).int("count", 1)]).await;
    let (major, minor) = parse_major_minor(&version);
    if (major, minor) < (1, 8) {
        let err = result.unwrap_err();
        assert_eq!(err.status(), Some(404), "{version}: {err:?}");
        assert_eq!(err.class(), ErrorClass::Fatal);
    } else {
        // A newer server (e.g. via MODELPERF_TEST_INFLUX_URL) serves v2 with `db/rp` buckets.
        assert_eq!(result.unwrap().points, 1, "InfluxDB {version}");
        assert_eq!(rows(&influx, &db, "autogen", "model_perf").await.len(), 1);
    }
}

fn parse_major_minor(version: &str) -> (u32, u32) {
    let mut parts = version.trim_start_matches('v').split(|c: char| !c.is_ascii_digit());
    let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (next(), next())
}
