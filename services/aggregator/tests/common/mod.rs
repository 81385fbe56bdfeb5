//! A known workload of clean events, what every window must then hold, and reading back what
//! the aggregator wrote to InfluxDB.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test binary uses a part

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::Context;
use chrono::{DateTime, Utc};
use modelperf_aggregator::Config;
use modelperf_client::EventBuilder;
use modelperf_schema::{Cost, Event};
use modelperf_testkit::Influx;
use serde_json::Value;

/// Window → start → series → what it must hold.
pub type Expected = BTreeMap<String, BTreeMap<DateTime<Utc>, BTreeMap<BTreeMap<String, String>, Expect>>>;

/// What one series of one window must hold.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    pub count: u64,
    pub weighted: f64,
    pub success: u64,
    pub failure: u64,
    /// Weighted successes, for the weighted success rate.
    pub success_weighted: f64,
    pub cost: f64,
    /// Events with a price, and without one.
    pub priced: u64,
    pub unpriced: u64,
    /// Latencies of events with sample rate 1 (for exact quantiles).
    pub latencies: Vec<f64>,
    pub all_rate_one: bool,
}

pub const MODELS: [&str; 3] = ["openai/gpt-4o", "anthropic/claude-sonnet-4", "google/gemini-2.5-pro"];
pub const TASK_TYPES: [&str; 2] = ["code_edit", "sampled"];

/// `n` completions spread evenly over `span` from `from`: three models, two task types (one
/// sampled at 1/4), every seventh failed, latencies from 20 ms to about 40 s on a log scale.
pub fn workload(from: DateTime<Utc>, span: chrono::Duration, n: usize) -> Vec<Event> {
    let tag = format!("{:x}", from.timestamp_micros());
    (0..n)
        .map(|i| {
            let ts = from + chrono::Duration::microseconds((i as i64 * span.num_microseconds().unwrap()) / n as i64);
            let model = MODELS[i % 3];
            let task_type = TASK_TYPES[(i / 3) % 2];
            // A log-spread, deterministic latency.
            let u = ((i as u64).wrapping_mul(2_654_435_761) % 10_000) as f64 / 10_000.0;
            let latency = 20.0 * (2000f64).powf(u);
            let mut e = EventBuilder::task_completed(latency, i % 7 != 0)
                .id(format!("{tag}-{i}"))
                .ts(ts)
                .source("test")
                .task_id(format!("{tag}-task-{i}"))
                .model(model)
                .task_type(task_type)
                .tokens(100, 20)
                .build()
                .unwrap();
            e.sample_rate = Some(if task_type == "sampled" { 0.25 } else { 1.0 });
            e.cost = Some(Cost::priced(latency / 1e5, "test"));
            e
        })
        .collect()
}

/// Per window, per start, per series: the exact expectation.
pub fn expected(events: &[Event], windows: &[(&str, i64)]) -> Expected {
    let mut out = Expected::new();
    for e in events {
        let modelperf_schema::Data::TaskCompleted(d) = &e.data else { continue };
        let m = e.model.as_ref().unwrap();
        let mut dims = BTreeMap::from([
            ("kind".to_owned(), "task_completed".to_owned()),
            ("provider".to_owned(), m.provider.clone()),
            ("model".to_owned(), m.name.clone()),
            ("task_type".to_owned(), e.task_type.clone().unwrap()),
        ]);
        if let Some(tenant) = &e.tenant {
            dims.insert("tenant".to_owned(), tenant.clone());
        }
        let rate = e.sample_rate.unwrap_or(1.0);
        for (name, secs) in windows {
            let start = modelperf_aggregator::windows::window_start(e.ts, chrono::Duration::seconds(*secs));
            let x = out
                .entry((*name).to_owned())
                .or_default()
                .entry(start)
                .or_default()
                .entry(dims.clone())
                .or_insert(Expect { all_rate_one: true, ..Expect::default() });
            x.count += 1;
            x.weighted += 1.0 / rate;
            if d.success {
                x.success += 1;
                x.success_weighted += 1.0 / rate;
            } else {
                x.failure += 1;
            }
            match e.cost.as_ref().and_then(|c| c.usd) {
                Some(usd) => {
                    x.cost += usd / rate;
                    x.priced += 1;
                }
                None => x.unpriced += 1,
            }
            x.latencies.push(d.latency_ms);
            x.all_rate_one &= rate == 1.0;
        }
    }
    out
}

/// Publishes clean events to `perf.events.<kind>.<p>` as the collector would, with acks.
pub async fn publish(js: &Context, events: &[Event], partitions: u32) {
    let mut acks = Vec::new();
    for e in events {
        let id = e.id.clone().unwrap();
        let p = modelperf_bus::partition_of(e.task_id.as_deref().unwrap_or(&id), partitions);
        let subject = format!("perf.events.{}.{p}", e.kind().as_str());
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        let body = modelperf_schema::to_msgpack(e).unwrap();
        acks.push(js.publish_with_headers(subject, headers, body.into()).await.unwrap());
        if acks.len() >= 1_000 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks {
        a.await.unwrap();
    }
}

/// A configuration for tests: short leases and checkpoints, the given InfluxDB database.
pub fn config(nats: &str, influx: &str, db: &str, partitions: u32) -> Config {
    let mut c = Config::default();
    c.nats.url = nats.to_owned();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.bus.partitions = partitions;
    c.bus.ack_wait = Duration::from_secs(5);
    c.bus.lease_ttl = Duration::from_secs(3);
    c.bus.checkpoint_interval = Duration::from_millis(200);
    c.influx.url = influx.to_owned();
    c.influx.database = db.to_owned();
    c
}

/// One row of `model_perf` or the sketch measurement: tags and fields.
#[derive(Debug, Clone)]
pub struct Row {
    pub time: DateTime<Utc>,
    pub tags: BTreeMap<String, String>,
    pub fields: BTreeMap<String, Value>,
}

impl Row {
    pub fn f(&self, k: &str) -> Option<f64> {
        self.fields.get(k).and_then(Value::as_f64)
    }

    /// The series, as the aggregator's dims (without the `window` tag).
    pub fn dims(&self) -> BTreeMap<String, String> {
        self.tags.iter().filter(|(k, v)| *k != "window" && !v.is_empty()).map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Every row of `measurement` in the retention policy of `window`.
pub async fn rows(influx: &Influx, db: &str, window: &str, measurement: &str) -> Vec<Row> {
    let q = format!("SELECT * FROM \"{window}\".\"{measurement}\" GROUP BY *");
    let body = influx.query(&q, Some(db)).await.unwrap();
    let mut out = Vec::new();
    let Some(series) = body["results"][0]["series"].as_array() else { return out };
    for s in series {
        let tags: BTreeMap<String, String> = s["tags"]
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
            .unwrap_or_default();
        let columns: Vec<String> =
            s["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
        for v in s["values"].as_array().unwrap() {
            let v = v.as_array().unwrap();
            let time = modelperf_schema::parse_ts(v[0].as_str().unwrap()).unwrap();
            let fields = columns
                .iter()
                .zip(v)
                .skip(1)
                .filter(|(_, x)| !x.is_null())
                .map(|(c, x)| (c.clone(), x.clone()))
                .collect();
            out.push(Row { time, tags: tags.clone(), fields });
        }
    }
    out
}

/// The exact lower quantile (rank ⌊q·(n−1)⌋), the sketch's convention.
pub fn exact_quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[((q * (v.len() - 1) as f64).floor()) as usize]
}

/// Compares what InfluxDB holds for `window` with the expectation; `None` when it matches,
/// else the first difference.
pub fn mismatch(expected: &Expected, window: &str, rows: &[Row], revisions: bool) -> Option<String> {
    let Some(want) = expected.get(window) else { return Some(format!("nothing expected for {window}")) };
    let n_want: usize = want.values().map(BTreeMap::len).sum();
    if rows.len() != n_want {
        return Some(format!("{window}: {} rows, want {n_want}", rows.len()));
    }
    for r in rows {
        let Some(x) = want.get(&r.time).and_then(|s| s.get(&r.dims())) else {
            return Some(format!("{window}: unexpected row {} {:?}", r.time, r.dims()));
        };
        let close = |a: Option<f64>, b: f64, tol: f64| a.is_some_and(|a| (a - b).abs() <= tol * b.abs().max(1.0));
        let checks = [
            ("count", close(r.f("count"), x.count as f64, 0.0)),
            ("success", close(r.f("success"), x.success as f64, 0.0)),
            ("failure", close(r.f("failure"), x.failure as f64, 0.0)),
            ("weighted_count", close(r.f("weighted_count"), x.weighted, 1e-9)),
            ("success_rate", close(r.f("success_rate"), x.success_weighted / x.weighted, 1e-9)),
            ("cost_usd", if x.priced > 0 { close(r.f("cost_usd"), x.cost, 1e-9) } else { r.f("cost_usd").is_none() }),
            (
                "unpriced",
                if x.unpriced > 0 { close(r.f("unpriced"), x.unpriced as f64, 0.0) } else { r.f("unpriced").is_none() },
            ),
            ("revision", revisions || close(r.f("revision"), 0.0, 0.0)),
        ];
        if let Some((field, _)) = checks.iter().find(|(_, ok)| !ok) {
            return Some(format!(
                "{window} {} {:?}: {field} is {:?}, want {x:?}",
                r.time,
                r.dims(),
                r.fields.get(*field)
            ));
        }
        if x.all_rate_one && x.latencies.len() >= 20 {
            for (field, q) in [("latency_p95_ms", 0.95), ("latency_p99_ms", 0.99)] {
                let exact = exact_quantile(&x.latencies, q);
                let Some(got) = r.f(field) else { return Some(format!("{window} {}: no {field}", r.time)) };
                if (got - exact).abs() > 0.01 * exact + 1e-9 {
                    return Some(format!("{window} {}: {field} {got} vs exact {exact}", r.time));
                }
            }
        }
    }
    None
}
