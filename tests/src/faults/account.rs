//! The accounting after a scenario: what the pipeline's outputs hold of what was published.
//!
//! - `PERF_EVENTS`: each valid event id exactly once (duplicates and missing ids counted);
//!   each undecodable message exactly once on `PERF_DLQ`, with code `decode` and its bytes.
//! - InfluxDB: `SUM("count")` and `SUM("weighted_count")` of the scenario's tenant in the `10s`
//!   windows of `model_perf` equal the valid events published (every event is kept, weight 1).
//! - `RL_BATCHES`: every complete task in exactly one sample of one batch.
//! - `PERF_ALERTS`: every notified transition (firing, resolved) since the scenario started was
//!   delivered to the monitor's webhook (its `Idempotency-Key`) and reached Alertmanager (its
//!   own webhook notification with the alert's labels and state); the scenario's own rule fired
//!   and resolved, so there is something to deliver.
//!
//! Streams are read from the sequence they had when the scenario started, so each scenario
//! reads only its own part of a shared stream.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::Context as _;
use async_nats::jetstream::{self, Context};
use chrono::{DateTime, Utc};
use modelperf_schema::Event;
use modelperf_schema::messages::{Alert, AlertState, Batch};
use modelperf_testkit::Influx;
use serde_json::Value;

use super::load::{Plan, Published};
use super::servers::Recorder;

/// The streams a scenario reads back.
pub const STREAMS: [&str; 4] = ["PERF_EVENTS", "PERF_DLQ", "RL_BATCHES", "PERF_ALERTS"];

/// The last sequence of each of [`STREAMS`] when a scenario starts.
pub type Marks = BTreeMap<&'static str, u64>;

/// The last sequence of each stream now.
pub async fn marks(js: &Context) -> anyhow::Result<Marks> {
    let mut out = Marks::new();
    for s in STREAMS {
        let info = js.get_stream(s).await.with_context(|| format!("stream {s}"))?.info().await?.state.clone();
        out.insert(s, info.last_sequence);
    }
    Ok(out)
}

/// Every message of `stream` after sequence `after`.
pub async fn read_after(js: &Context, stream: &str, after: u64) -> anyhow::Result<Vec<jetstream::Message>> {
    modelperf_testkit::read_stream_after(js, stream, None, after).await
}

/// Exactly-once tallies of a known set against what an output holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// How many were expected.
    pub expected: usize,
    /// Present exactly once.
    pub once: usize,
    /// Extra copies beyond the first.
    pub duplicates: usize,
    /// Expected and absent.
    pub missing: usize,
    /// Present and never published (under the scenario's prefix).
    pub unexpected: usize,
}

impl Tally {
    /// Compares `expected` ids with the ids `found` (with repeats).
    pub fn of<'a>(expected: impl IntoIterator<Item = &'a str>, found: impl IntoIterator<Item = String>) -> Tally {
        let expected: BTreeSet<&str> = expected.into_iter().collect();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for id in found {
            *seen.entry(id).or_default() += 1;
        }
        let mut t = Tally { expected: expected.len(), ..Tally::default() };
        for id in &expected {
            match seen.get(*id) {
                Some(1) => t.once += 1,
                Some(n) => {
                    t.once += 1;
                    t.duplicates += n - 1;
                }
                None => t.missing += 1,
            }
        }
        t.unexpected = seen.keys().filter(|id| !expected.contains(id.as_str())).count();
        t
    }

    /// Every expected one exactly once, nothing else.
    pub fn exact(&self) -> bool {
        self.once == self.expected && self.duplicates == 0 && self.missing == 0 && self.unexpected == 0
    }
}

/// Delivery of the notified alert transitions.
#[derive(Debug, Clone, Default)]
pub struct Alerts {
    /// Firing and resolved transitions on `perf.alerts.*` since the scenario started.
    pub transitions: usize,
    /// Of which delivered to the webhook (by idempotency key).
    pub webhook: usize,
    /// Of which notified by Alertmanager (labels and state).
    pub alertmanager: usize,
    /// Whether the scenario's own rule fired and then resolved.
    pub own_fired_and_resolved: bool,
    /// The transitions not delivered, for the report.
    pub undelivered: Vec<String>,
}

impl Alerts {
    /// Every transition delivered to both, and the scenario's alert went through both states.
    pub fn exact(&self) -> bool {
        self.own_fired_and_resolved && self.webhook == self.transitions && self.alertmanager == self.transitions
    }
}

/// The whole accounting of one scenario.
#[derive(Debug, Clone, Default)]
pub struct Accounting {
    /// Valid event ids in `PERF_EVENTS`.
    pub events: Tally,
    /// Undecodable messages on `PERF_DLQ` (by original `PERF_RAW` sequence) with code `decode`
    /// and their original bytes.
    pub dlq: Tally,
    /// DLQ messages of the scenario with another code or other bytes.
    pub dlq_wrong: usize,
    /// `SUM("count")` and `SUM("weighted_count")` of the scenario's 10 s windows.
    pub influx_count: i64,
    pub influx_weighted: f64,
    /// Complete tasks in RL samples.
    pub tasks: Tally,
    /// Alert transitions and their delivery.
    pub alerts: Alerts,
}

impl Accounting {
    /// Every number as it must be.
    pub fn exact(&self) -> bool {
        self.events.exact()
            && self.dlq.exact()
            && self.dlq_wrong == 0
            && self.influx_matches()
            && self.tasks.exact()
            && self.alerts.exact()
    }

    /// InfluxDB's totals equal the valid events published.
    pub fn influx_matches(&self) -> bool {
        let want = self.events.expected as i64;
        self.influx_count == want && (self.influx_weighted - want as f64).abs() < 1e-6
    }
}

/// Everything [`account`] reads.
#[derive(Debug)]
pub struct Sources<'a> {
    pub js: &'a Context,
    pub influx: &'a Influx,
    pub database: &'a str,
    pub receiver: &'a Recorder,
}

/// The accounting of `published` by `plan` now.
pub async fn account(
    src: &Sources<'_>,
    marks: &Marks,
    plan: &Plan,
    published: &Published,
) -> anyhow::Result<Accounting> {
    let prefix = format!("{}-", plan.tag);
    let mut acc = Accounting::default();

    let events = read_after(src.js, "PERF_EVENTS", marks["PERF_EVENTS"]).await?;
    let mut ids = Vec::new();
    for m in &events {
        let e: Event = modelperf_schema::from_msgpack(&m.payload).context("a clean event that does not decode")?;
        if let Some(id) = e.id.filter(|id| id.starts_with(&prefix)) {
            ids.push(id);
        }
    }
    acc.events = Tally::of(published.event_ids.iter().map(String::as_str), ids);

    let bodies: HashMap<String, &[u8]> =
        published.invalid.iter().map(|(seq, body)| (seq.to_string(), body.as_slice())).collect();
    let mut dlq_seqs = Vec::new();
    for m in read_after(src.js, "PERF_DLQ", marks["PERF_DLQ"]).await? {
        let header = |name: &str| m.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
        let Some(seq) = header("Modelperf-Original-Seq") else { continue };
        let Some(body) = bodies.get(&seq) else { continue };
        if header("Modelperf-Error").as_deref() != Some("decode") || m.payload.as_ref() != *body {
            acc.dlq_wrong += 1;
        }
        dlq_seqs.push(seq);
    }
    acc.dlq = Tally::of(bodies.keys().map(String::as_str), dlq_seqs);

    let q = format!(
        "SELECT SUM(\"count\"), SUM(\"weighted_count\") FROM \"10s\".\"model_perf\" WHERE \"tenant\" = '{}'",
        plan.tenant()
    );
    let r = src.influx.query(&q, Some(src.database)).await?;
    let row = r.pointer("/results/0/series/0/values/0");
    acc.influx_count = row.and_then(|v| v.get(1)).and_then(Value::as_i64).unwrap_or(0);
    acc.influx_weighted = row.and_then(|v| v.get(2)).and_then(Value::as_f64).unwrap_or(0.0);

    let mut sampled = Vec::new();
    for m in read_after(src.js, "RL_BATCHES", marks["RL_BATCHES"]).await? {
        let b: Batch = modelperf_schema::from_msgpack(&m.payload).context("a batch that does not decode")?;
        if b.dataset == plan.task_type() {
            sampled.extend(b.samples.into_iter().map(|s| s.task_id));
        }
    }
    acc.tasks = Tally::of(published.task_ids.iter().map(String::as_str), sampled);

    acc.alerts = alerts(src, marks, plan).await?;
    Ok(acc)
}

/// The idempotency key the webhook carries for a transition.
fn key(a: &Alert) -> String {
    let state = if a.state == AlertState::Firing { "firing" } else { "resolved" };
    format!("{}:{state}-{}", a.fingerprint, a.starts_at.timestamp_millis())
}

/// What Alertmanager notified: (labels, status, starts_at in ms).
fn alertmanager_notified(receiver: &Recorder) -> BTreeSet<(BTreeMap<String, String>, String, i64)> {
    let mut out = BTreeSet::new();
    for r in receiver.requests("/am") {
        let Ok(body) = serde_json::from_slice::<Value>(&r.body) else { continue };
        for a in body["alerts"].as_array().into_iter().flatten() {
            let labels: BTreeMap<String, String> = a["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let status = a["status"].as_str().unwrap_or_default().to_owned();
            let starts = a["startsAt"]
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc).timestamp_millis())
                .unwrap_or(0);
            out.insert((labels, status, starts));
        }
    }
    out
}

async fn alerts(src: &Sources<'_>, marks: &Marks, plan: &Plan) -> anyhow::Result<Alerts> {
    let mut transitions = Vec::new();
    for m in read_after(src.js, "PERF_ALERTS", marks["PERF_ALERTS"]).await? {
        let a: Alert = modelperf_schema::from_msgpack(&m.payload).context("an alert that does not decode")?;
        if a.state.is_notified() {
            transitions.push(a);
        }
    }
    let hooks: BTreeSet<String> =
        src.receiver.requests("/hook").iter().filter_map(|r| r.headers.get("idempotency-key").cloned()).collect();
    let notified = alertmanager_notified(src.receiver);
    let tenant = plan.tenant();
    let own = |a: &&Alert| a.labels.get("tenant") == Some(&tenant);
    let mut out = Alerts {
        transitions: transitions.len(),
        own_fired_and_resolved: transitions.iter().filter(own).any(|a| a.state == AlertState::Firing)
            && transitions.iter().filter(own).any(|a| a.state == AlertState::Resolved),
        ..Alerts::default()
    };
    for a in &transitions {
        let k = key(a);
        let by_hook = hooks.contains(&k);
        let status = if a.state == AlertState::Firing { "firing" } else { "resolved" };
        // Alertmanager keeps the monitor's startsAt; allow for its rounding to the millisecond.
        let by_am = notified.iter().any(|(labels, s, starts)| {
            labels == &a.labels && s == status && (starts - a.starts_at.timestamp_millis()).abs() <= 1
        });
        out.webhook += usize::from(by_hook);
        out.alertmanager += usize::from(by_am);
        if !by_hook || !by_am {
            let name = a.labels.get("alertname").cloned().unwrap_or_default();
            let missing = match (by_hook, by_am) {
                (false, false) => "webhook, alertmanager",
                (false, true) => "webhook",
                _ => "alertmanager",
            };
            out.undelivered.push(format!("{name} {status} {} (not at: {missing})", k));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_sees_duplicates_missing_and_unknown_ids() {
        let ids = || ["a", "b", "c"].into_iter();
        assert!(Tally::of(ids(), ["a", "b", "c"].map(String::from)).exact());
        let t = Tally::of(ids(), ["a", "a", "b", "x"].map(String::from));
        assert_eq!(t, Tally { expected: 3, once: 2, duplicates: 1, missing: 1, unexpected: 1 });
        assert!(!t.exact());
    }

    #[test]
    fn influx_totals_must_equal_the_published_count() {
        let mut acc = Accounting::default();
        acc.events.expected = 10;
        acc.influx_count = 10;
        acc.influx_weighted = 10.0;
        assert!(acc.influx_matches());
        acc.influx_count = 11;
        assert!(!acc.influx_matches());
    }
}
