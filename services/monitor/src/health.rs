//! The pipeline's own health, built in: rules that need no rules file, observed by the active
//! replica at every evaluation from what NATS itself knows.
//!
//! | rule | labels | breached when |
//! |---|---|---|
//! | `PipelineConsumerLag` | `stream`, `consumer` | a durable consumer of the contract has more than `lag_pending` undelivered messages |
//! | `PipelineConsumerStalled` | `stream`, `consumer` | its oldest unacknowledged message is older than `lag_age` |
//! | `PipelineConsumerAtMaxAckPending` | `stream`, `consumer` | its acknowledgements pending reach its `max_ack_pending` |
//! | `PipelineInstancesLow` | `service` | fewer ready instances (heartbeats `perf.health.<service>.<instance>`) than `min_ready` |
//! | `PipelineDeadLettersGrowing` | `stage`, `code` | more than `dlq_growth` dead letters of one stage and code within `dlq_window`, from the counters in the heartbeats (the monitor never reads `PERF_DLQ`) |
//! | `PipelineInfluxWritesFailing` | `service`, `instance` | a live instance reports its `influx_write` check failing |
//! | `PipelinePartitionUnowned` | `service`, `lease` | a lease of a running (or required) service has no holder |
//!
//! Each fires after `for` (default 2 min) and resolves after `keep_firing_for` clear, through
//! the same lifecycle, routes and receivers as every other alert.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{Context, kv};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use modelperf_bus::{BusConfig, Topology, buckets};
use modelperf_schema::messages::{Heartbeat, Severity};
use tokio_util::sync::CancellationToken;

use crate::config::HealthConfig;
use crate::rules::{Condition, LabelMatchers, Observation, Rule, format_number};

/// Undelivered messages of a consumer above the bound.
pub const CONSUMER_LAG: &str = "PipelineConsumerLag";
/// The oldest unacknowledged message of a consumer too old.
pub const CONSUMER_STALLED: &str = "PipelineConsumerStalled";
/// A consumer at its `max_ack_pending`.
pub const AT_MAX_ACK_PENDING: &str = "PipelineConsumerAtMaxAckPending";
/// Fewer ready instances than the minimum.
pub const INSTANCES_LOW: &str = "PipelineInstancesLow";
/// Dead letters growing.
pub const DLQ_GROWTH: &str = "PipelineDeadLettersGrowing";
/// InfluxDB writes failing.
pub const INFLUX_WRITES: &str = "PipelineInfluxWritesFailing";
/// A lease without a holder.
pub const UNOWNED: &str = "PipelinePartitionUnowned";

/// The readiness check an aggregator reports failing while its InfluxDB writes fail.
pub const INFLUX_WRITE_CHECK: &str = "influx_write";

/// docs/monitor.md; each rule has a section named after it.
const RUNBOOK: &str = "https://github.com/modelperf/modelperf/blob/main/docs/monitor.md";

/// The built-in rules, with the configured `for` and hold.
pub fn rules(cfg: &HealthConfig) -> Vec<Rule> {
    let rule = |name: &str, severity: Severity, summary: &str| Rule {
        name: name.to_owned(),
        condition: Condition::Health,
        for_: cfg.for_,
        keep_firing_for: Some(cfg.keep_firing_for),
        severity: Some(severity),
        by: None,
        matchers: LabelMatchers::default(),
        labels: BTreeMap::new(),
        annotations: BTreeMap::from([
            ("summary".to_owned(), summary.to_owned()),
            ("runbook_url".to_owned(), format!("{RUNBOOK}#{}", name.to_ascii_lowercase())),
        ]),
    };
    vec![
        rule(
            CONSUMER_LAG,
            Severity::Warning,
            "consumer {{consumer}} on {{stream}} has {{value}} undelivered messages (above {{threshold}})",
        ),
        rule(
            CONSUMER_STALLED,
            Severity::Warning,
            "the oldest unacknowledged message of {{consumer}} on {{stream}} is {{value}} s old (above {{threshold}} s)",
        ),
        rule(
            AT_MAX_ACK_PENDING,
            Severity::Critical,
            "consumer {{consumer}} on {{stream}} has {{value}} acknowledgements pending, its max_ack_pending",
        ),
        rule(
            INSTANCES_LOW,
            Severity::Critical,
            "{{service}} has {{value}} ready instances (at least {{threshold}} required)",
        ),
        rule(
            DLQ_GROWTH,
            Severity::Warning,
            "{{value}} dead letters from {{stage}} with code {{code}} in {{window}} (above {{threshold}})",
        ),
        rule(INFLUX_WRITES, Severity::Critical, "InfluxDB writes of {{service}} instance {{instance}} are failing"),
        rule(UNOWNED, Severity::Critical, "lease {{lease}} of {{service}} has no holder"),
    ]
}

/// The lease keys a running service must hold between its replicas: its entry of
/// `[monitor.health] leases`, with `{p}` expanded to every partition.
pub fn expected_leases(leases: &BTreeMap<String, Vec<String>>, service: &str, partitions: u32) -> Vec<String> {
    let Some(keys) = leases.get(service) else { return Vec::new() };
    keys.iter()
        .flat_map(|k| {
            if k.contains("{p}") {
                (0..partitions).map(|p| k.replace("{p}", &p.to_string())).collect::<Vec<_>>()
            } else {
                vec![k.clone()]
            }
        })
        .collect()
}

/// The latest heartbeat of one instance.
#[derive(Debug, Clone)]
struct Beat {
    at: Instant,
    ready: bool,
    not_ready: Vec<String>,
}

/// Every instance's latest heartbeat, kept by a subscription that lives as long as the
/// process, so a replica that becomes active already knows who is alive.
#[derive(Debug, Clone)]
pub struct Heartbeats {
    beats: Arc<Mutex<BTreeMap<(String, String), Beat>>>,
    letters: Arc<Mutex<Letters>>,
    since: Instant,
}

/// The dead letters heartbeats report: each instance's counters as last heard, and the
/// increases heard since the active checks last took them.
#[derive(Debug, Default)]
struct Letters {
    last: BTreeMap<(String, String), BTreeMap<String, u64>>,
    increases: VecDeque<DeadLetters>,
}

/// At most this many increases wait for the checks (a standby replica takes none).
const MAX_INCREASES: usize = 10_000;

impl Letters {
    /// Takes `hb`'s counters: their increase over the last heard (an instance heard for the
    /// first time counts from zero when it started after `since` — less a heartbeat, so its
    /// first letters are not missed — and from its current counters otherwise, which were
    /// counted before this monitor listened).
    fn heard(&mut self, hb: &Heartbeat, at: DateTime<Utc>, since: DateTime<Utc>) {
        let key = (hb.service.clone(), hb.instance.clone());
        let new_instance = hb.started_at + chrono::TimeDelta::seconds(5) >= since;
        let last = match self.last.get(&key) {
            Some(last) => last.clone(),
            None if new_instance => BTreeMap::new(),
            None => hb.dead_letters.clone(),
        };
        for (code, n) in &hb.dead_letters {
            let increase = n.saturating_sub(last.get(code).copied().unwrap_or(0));
            if increase > 0 {
                self.increases.push_back((at, hb.service.clone(), code.clone(), increase));
            }
        }
        while self.increases.len() > MAX_INCREASES {
            self.increases.pop_front();
        }
        self.last.insert(key, hb.dead_letters.clone());
        if self.last.len() > 1_000 {
            // Instance names change with every restart; forget the oldest arbitrarily (an
            // instance forgotten and heard again counts from its counters then).
            if let Some(first) = self.last.keys().next().cloned() {
                self.last.remove(&first);
            }
        }
    }
}

impl Heartbeats {
    /// Subscribes to `perf.health.>` until `stop`.
    pub async fn watch(client: &async_nats::Client, stop: CancellationToken) -> anyhow::Result<Self> {
        let mut sub = client.subscribe("perf.health.>").await?;
        let me = Self { beats: Arc::default(), letters: Arc::default(), since: Instant::now() };
        let (beats, letters) = (me.beats.clone(), me.letters.clone());
        let started = Utc::now();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => break,
                    m = sub.next() => match m { Some(m) => m, None => break },
                };
                let Ok(hb) = rmp_serde::from_slice::<Heartbeat>(&msg.payload) else { continue };
                if let Ok(mut l) = letters.lock() {
                    l.heard(&hb, Utc::now(), started);
                }
                let beat = Beat { at: Instant::now(), ready: hb.ready, not_ready: hb.not_ready };
                if let Ok(mut b) = beats.lock() {
                    b.insert((hb.service, hb.instance), beat);
                }
            }
        });
        Ok(me)
    }

    /// Live instances (heard from within `timeout`) by service; forgets long-gone ones.
    fn live(&self, timeout: Duration) -> Vec<(String, String, Beat)> {
        let Ok(mut beats) = self.beats.lock() else { return Vec::new() };
        beats.retain(|_, b| b.at.elapsed() < 20 * timeout);
        beats
            .iter()
            .filter(|(_, b)| b.at.elapsed() < timeout)
            .map(|((s, i), b)| (s.clone(), i.clone(), b.clone()))
            .collect()
    }
}

/// Dead letters heard of: when, stage, code, how many.
type DeadLetters = (DateTime<Utc>, String, String, u64);

/// The health checks of the active replica.
#[derive(Debug)]
pub struct Checks {
    js: Context,
    cfg: HealthConfig,
    topology: Topology,
    partitions: u32,
    heartbeats: Heartbeats,
    leases: Option<kv::Store>,
    dead_letters: VecDeque<DeadLetters>,
    /// Pairs that were observed, so they are observed clear once their letters age out.
    dlq_known: BTreeSet<(String, String)>,
    influx_known: BTreeSet<(String, String)>,
}

/// An observation of built-in `rule`, with the labels every alert has (`alertname`, `severity`).
fn obs(
    rule: &str,
    labels: &[(&str, &str)],
    breach: bool,
    severity: Severity,
    values: &[(&str, String)],
) -> (String, Observation) {
    let mut all: BTreeMap<String, String> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    all.insert("alertname".into(), rule.to_owned());
    all.insert("severity".into(), crate::rules::severity_label(severity).to_owned());
    let values = values.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    (rule.to_owned(), Observation { labels: all, breach, values, severity })
}

impl Checks {
    /// Checks over the whole contract's topology for `bus`.
    pub fn new(js: Context, cfg: HealthConfig, bus: &BusConfig, replicas: usize, heartbeats: Heartbeats) -> Self {
        Self {
            js,
            cfg,
            topology: Topology::contract(bus, replicas),
            partitions: bus.partitions,
            heartbeats,
            leases: None,
            dead_letters: VecDeque::new(),
            dlq_known: BTreeSet::new(),
            influx_known: BTreeSet::new(),
        }
    }

    /// Every health observation now, by rule name. A check that cannot be made this time
    /// (NATS briefly unavailable) observes nothing: its alerts hold their state.
    pub async fn observe(&mut self, now: DateTime<Utc>) -> Vec<(String, Observation)> {
        let mut out = Vec::new();
        if let Err(e) = self.consumers(now, &mut out).await {
            tracing::warn!(error = %e, "consumer health not checked");
        }
        let live = self.heartbeats.live(self.cfg.heartbeat_timeout);
        // Until a full heartbeat period has passed, absent instances may just not have spoken.
        let warm = self.heartbeats.since.elapsed() >= self.cfg.heartbeat_timeout;
        if warm {
            self.instances(&live, &mut out);
            if let Err(e) = self.leases(&live, &mut out).await {
                tracing::warn!(error = %e, "lease health not checked");
            }
        }
        self.influx(&live, &mut out);
        self.dead_letters(now, &mut out);
        out
    }

    async fn consumers(&self, now: DateTime<Utc>, out: &mut Vec<(String, Observation)>) -> anyhow::Result<()> {
        let mut streams: BTreeMap<&str, async_nats::jetstream::stream::Stream> = BTreeMap::new();
        for spec in &self.topology.consumers {
            if !streams.contains_key(spec.stream) {
                match self.js.get_stream(spec.stream).await {
                    Ok(s) => {
                        streams.insert(spec.stream, s);
                    }
                    Err(_) => continue, // not created: its services never ran
                }
            }
            let Some(stream) = streams.get(spec.stream) else { continue };
            // A consumer its service never created is not lagging: that service is not deployed.
            let Ok(info) = stream.consumer_info(&spec.durable).await else { continue };
            let labels = [("stream", spec.stream), ("consumer", spec.durable.as_str())];
            let sev = Severity::Warning;
            out.push(obs(
                CONSUMER_LAG,
                &labels,
                info.num_pending > self.cfg.lag_pending,
                sev,
                &[("value", info.num_pending.to_string()), ("threshold", self.cfg.lag_pending.to_string())],
            ));
            let max = info.config.max_ack_pending;
            out.push(obs(
                AT_MAX_ACK_PENDING,
                &labels,
                max > 0 && info.num_ack_pending as i64 >= max,
                Severity::Critical,
                &[("value", info.num_ack_pending.to_string()), ("threshold", max.to_string())],
            ));
            let unacked = info.num_pending + info.num_ack_pending as u64;
            let age = if unacked == 0 {
                Some(Duration::ZERO)
            } else {
                let filter = match info.config.filter_subject.as_str() {
                    "" => info.config.filter_subjects.first().cloned().unwrap_or_else(|| ">".to_owned()),
                    f => f.to_owned(),
                };
                match stream.direct_get_next_for_subject(filter, Some(info.ack_floor.stream_sequence + 1)).await {
                    Ok(m) => {
                        let at = DateTime::<Utc>::from_timestamp(m.time.unix_timestamp(), m.time.nanosecond())
                            .unwrap_or(now);
                        Some((now - at).to_std().unwrap_or_default())
                    }
                    Err(_) => None, // removed by the stream's limits meanwhile
                }
            };
            if let Some(age) = age {
                out.push(obs(
                    CONSUMER_STALLED,
                    &labels,
                    age > self.cfg.lag_age,
                    sev,
                    &[
                        ("value", format_number(age.as_secs_f64().round())),
                        ("threshold", format_number(self.cfg.lag_age.as_secs_f64())),
                    ],
                ));
            }
        }
        Ok(())
    }

    fn instances(&self, live: &[(String, String, Beat)], out: &mut Vec<(String, Observation)>) {
        for (service, min) in &self.cfg.min_ready {
            let ready = live.iter().filter(|(s, _, b)| s == service && b.ready).count() as u32;
            out.push(obs(
                INSTANCES_LOW,
                &[("service", service)],
                ready < *min,
                Severity::Critical,
                &[("value", ready.to_string()), ("threshold", min.to_string())],
            ));
        }
    }

    async fn leases(
        &mut self,
        live: &[(String, String, Beat)],
        out: &mut Vec<(String, Observation)>,
    ) -> anyhow::Result<()> {
        let services: BTreeSet<&str> =
            live.iter().map(|(s, _, _)| s.as_str()).chain(self.cfg.min_ready.keys().map(String::as_str)).collect();
        if self.leases.is_none() {
            self.leases = Some(self.js.get_key_value(buckets::LEASES).await?);
        }
        let Some(kv) = &self.leases else { return Ok(()) };
        for service in services {
            for key in expected_leases(&self.cfg.leases, service, self.partitions) {
                let held = matches!(kv.entry(&key).await?, Some(e) if e.operation == kv::Operation::Put);
                out.push(obs(UNOWNED, &[("service", service), ("lease", &key)], !held, Severity::Critical, &[]));
            }
        }
        Ok(())
    }

    fn influx(&mut self, live: &[(String, String, Beat)], out: &mut Vec<(String, Observation)>) {
        let mut seen = BTreeSet::new();
        for (service, instance, beat) in live {
            let failing = beat.not_ready.iter().any(|c| c == INFLUX_WRITE_CHECK);
            let key = (service.clone(), instance.clone());
            if failing || self.influx_known.contains(&key) {
                out.push(obs(
                    INFLUX_WRITES,
                    &[("service", service), ("instance", instance)],
                    failing,
                    Severity::Critical,
                    &[],
                ));
            }
            if failing {
                self.influx_known.insert(key.clone());
            }
            seen.insert(key);
        }
        // An instance gone since: its writes no longer fail (a missing instance pages as
        // PipelineInstancesLow when it matters).
        for key in self.influx_known.iter().filter(|k| !seen.contains(*k)) {
            out.push(obs(INFLUX_WRITES, &[("service", &key.0), ("instance", &key.1)], false, Severity::Critical, &[]));
        }
        // Gone instances stay known (observed clear) so their alerts resolve; instance names
        // change with every restart, so the set is bounded.
        if self.influx_known.len() > 1_000 {
            self.influx_known.retain(|k| seen.contains(k));
        }
    }

    /// Counts the dead letters the heartbeats reported per stage and code over the window.
    fn dead_letters(&mut self, now: DateTime<Utc>, out: &mut Vec<(String, Observation)>) {
        if let Ok(mut letters) = self.heartbeats.letters.lock() {
            self.dead_letters.extend(letters.increases.drain(..));
        }
        let horizon = now - chrono::TimeDelta::from_std(self.cfg.dlq_window).unwrap_or(chrono::TimeDelta::MAX);
        while self.dead_letters.front().is_some_and(|(at, _, _, _)| *at < horizon) {
            self.dead_letters.pop_front();
        }
        let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
        for (_, stage, code, n) in &self.dead_letters {
            *counts.entry((stage.clone(), code.clone())).or_default() += n;
        }
        let window = humantime::format_duration(self.cfg.dlq_window).to_string();
        for key in self.dlq_known.iter().chain(counts.keys()).cloned().collect::<BTreeSet<_>>() {
            let n = counts.get(&key).copied().unwrap_or(0);
            out.push(obs(
                DLQ_GROWTH,
                &[("stage", &key.0), ("code", &key.1)],
                n > self.cfg.dlq_growth,
                Severity::Warning,
                &[("value", n.to_string()), ("threshold", self.cfg.dlq_growth.to_string()), ("window", window.clone())],
            ));
        }
        // Remembered, so an alert keeps being observed clear until it resolves (stage × code
        // is a small set).
        self.dlq_known.extend(counts.into_keys());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtins_cover_every_health_condition_of_the_contract() {
        let names: Vec<String> = rules(&HealthConfig::default()).into_iter().map(|r| r.name).collect();
        assert_eq!(
            names,
            [CONSUMER_LAG, CONSUMER_STALLED, AT_MAX_ACK_PENDING, INSTANCES_LOW, DLQ_GROWTH, INFLUX_WRITES, UNOWNED]
        );
        let mut leases = crate::config::default_leases();
        assert_eq!(expected_leases(&leases, "aggregator", 2), ["aggregator.p0", "aggregator.p1", "aggregator.final"]);
        assert_eq!(expected_leases(&leases, "rl-pipeline", 1), ["rl.p0"]);
        assert_eq!(expected_leases(&leases, "analyzer", 4), ["analyzer", "analyzer.reports"]);
        assert!(expected_leases(&leases, "collector", 8).is_empty(), "the collector shares one consumer, no leases");
        leases.insert("analyzer".into(), vec!["analyzer".into()]);
        assert_eq!(expected_leases(&leases, "analyzer", 4), ["analyzer"]);
        leases.insert("monitor".into(), Vec::new());
        assert!(expected_leases(&leases, "monitor", 1).is_empty(), "an empty list is not checked");
    }

    #[test]
    fn dead_letters_are_the_increase_of_the_heartbeats_counters() {
        let since: DateTime<Utc> = "2026-01-01T12:00:00Z".parse().unwrap();
        let beat = |instance: &str, started: &str, counts: &[(&str, u64)]| Heartbeat {
            service: "collector".into(),
            instance: instance.into(),
            version: "0".into(),
            started_at: started.parse().unwrap(),
            ready: true,
            owned: Vec::new(),
            not_ready: Vec::new(),
            dead_letters: counts.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect(),
        };
        let mut letters = Letters::default();
        let at = since + chrono::TimeDelta::seconds(10);
        // Running before the monitor listened: what it counted then is not new.
        letters.heard(&beat("old", "2026-01-01T11:00:00Z", &[("schema", 40)]), at, since);
        assert!(letters.increases.is_empty());
        letters.heard(&beat("old", "2026-01-01T11:00:00Z", &[("schema", 43), ("too_large", 1)]), at, since);
        // Started after: every letter is new.
        letters.heard(&beat("new", "2026-01-01T12:00:01Z", &[("schema", 2)]), at, since);
        letters.heard(&beat("new", "2026-01-01T12:00:01Z", &[("schema", 2)]), at, since);
        let got: Vec<(String, u64)> = letters.increases.iter().map(|(_, _, c, n)| (c.clone(), *n)).collect();
        assert_eq!(got, [("schema".to_owned(), 3), ("too_large".to_owned(), 1), ("schema".to_owned(), 2)]);
    }

    #[test]
    fn a_file_rule_may_not_take_a_builtin_name() {
        let file = crate::Rules::parse(
            "[[rules]]\nname = \"PipelineConsumerLag\"\ntype = \"threshold\"\nmetric = \"count\"\nvalue = 1\n",
        )
        .unwrap_or_default();
        let err = file.with_builtins(rules(&HealthConfig::default())).unwrap_err();
        assert_eq!(err.field, "name");
        assert!(err.rule.contains("PipelineConsumerLag"));
    }
}
