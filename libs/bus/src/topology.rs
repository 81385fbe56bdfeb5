//! The contract's streams, durable consumers, KV buckets and object store, declared once and
//! ensured idempotently at start-up.
//!
//! Structural settings (subjects, retention, storage, replicas, a consumer's filter and ack
//! policy) of existing objects are compared with the contract and a difference is a
//! [`BusError::Conflict`]: the operator decides, modelperf never silently changes them. Limits
//! that come from configuration (`max_age`, duplicate window, `ack_wait`, `max_ack_pending`,
//! `max_deliver`) are updated to the configured values, with a warning naming old and new.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::stream::{RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context, kv, object_store};

use crate::config::BusConfig;
use crate::error::BusError;

/// Stream names of the contract.
pub mod streams {
    #![allow(missing_docs)]
    pub const RAW: &str = "PERF_RAW";
    pub const EVENTS: &str = "PERF_EVENTS";
    pub const DLQ: &str = "PERF_DLQ";
    pub const PARTIALS: &str = "PERF_PARTIALS";
    pub const METRICS: &str = "PERF_METRICS";
    pub const SIGNALS: &str = "PERF_SIGNALS";
    pub const ALERTS: &str = "PERF_ALERTS";
    pub const OUTBOX: &str = "PERF_OUTBOX";
    pub const RL_BATCHES: &str = "RL_BATCHES";
    /// Every stream, for checking configuration.
    pub const ALL: [&str; 9] = [RAW, EVENTS, DLQ, PARTIALS, METRICS, SIGNALS, ALERTS, OUTBOX, RL_BATCHES];
}

/// KV buckets and the object store of the contract.
pub mod buckets {
    #![allow(missing_docs)]
    pub const LEASES: &str = "modelperf_leases";
    pub const STATE: &str = "modelperf_state";
    pub const RL_LEDGER: &str = "modelperf_rl_ledger";
    /// Finalised windows the aggregator's revisions add to (kept a day).
    pub const WINDOWS: &str = "modelperf_windows";
    pub const REPORTS: &str = "modelperf_reports";
}

/// The services, for choosing the part of the topology each one ensures (least privilege: a
/// service needs permissions only for what it uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Service {
    Collector,
    Aggregator,
    Analyzer,
    Monitor,
    RlPipeline,
    /// Operators and tests: everything.
    All,
}

/// A stream of the contract.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    /// Name, e.g. `PERF_RAW`.
    pub name: &'static str,
    /// Subjects it captures.
    pub subjects: Vec<String>,
    /// `WorkQueue` (deleted once acknowledged) or `Limits`.
    pub retention: RetentionPolicy,
    /// Maximum message age.
    pub max_age: Duration,
    /// Window of `Nats-Msg-Id` deduplication.
    pub duplicate_window: Duration,
    /// Services that read or write it.
    pub used_by: &'static [Service],
}

/// A durable pull consumer of the contract.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerSpec {
    /// The stream it reads.
    pub stream: &'static str,
    /// Durable name, e.g. `aggregator-p3`.
    pub durable: String,
    /// Filter subject; `None` reads everything.
    pub filter: Option<String>,
    /// `Explicit` for stateless work, `All` for checkpointing owners (ack-all up to a sequence).
    pub ack_policy: AckPolicy,
    /// The service that owns it.
    pub owner: Service,
}

/// A KV bucket of the contract.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketSpec {
    /// Bucket name.
    pub name: &'static str,
    /// Entry lifetime; zero keeps entries forever.
    pub max_age: Duration,
    /// Services that use it.
    pub used_by: &'static [Service],
}

/// The whole topology for one deployment's configuration.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Streams.
    pub streams: Vec<StreamSpec>,
    /// Durable consumers.
    pub consumers: Vec<ConsumerSpec>,
    /// KV buckets.
    pub buckets: Vec<BucketSpec>,
    /// Services that use the reports object store.
    pub reports_used_by: &'static [Service],
    /// Limits of consumers.
    pub bus: BusConfig,
    /// Replicas of streams and buckets.
    pub replicas: usize,
}

const DAY: Duration = Duration::from_secs(86_400);

use Service::*;

impl Topology {
    /// The contract's topology for this configuration.
    pub fn contract(bus: &BusConfig, replicas: usize) -> Self {
        let dup = bus.duplicate_window;
        let stream = |name, subjects: &[&str], retention, max_age, duplicate_window, used_by| StreamSpec {
            name,
            subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
            retention,
            max_age,
            duplicate_window,
            used_by,
        };
        use RetentionPolicy::{Limits, WorkQueue};
        let streams = vec![
            stream(streams::RAW, &["perf.raw.>"], WorkQueue, DAY, dup, &[Collector]),
            stream(
                streams::EVENTS,
                &["perf.events.>"],
                Limits,
                7 * DAY,
                dup,
                &[Collector, Aggregator, RlPipeline, Analyzer],
            ),
            stream(
                streams::DLQ,
                &["perf.dlq.>"],
                Limits,
                7 * DAY,
                dup,
                &[Collector, Aggregator, RlPipeline, Analyzer, Monitor],
            ),
            stream(streams::PARTIALS, &["perf.partials.>"], Limits, DAY, dup, &[Aggregator]),
            stream(streams::METRICS, &["perf.metrics.>"], Limits, 35 * DAY, dup, &[Aggregator, Analyzer, Monitor]),
            stream(
                streams::SIGNALS,
                &["perf.anomalies.>", "perf.insights.>", "perf.reports.>"],
                Limits,
                90 * DAY,
                dup,
                &[Analyzer, Monitor],
            ),
            stream(streams::ALERTS, &["perf.alerts.>"], Limits, 90 * DAY, dup, &[Monitor]),
            stream(streams::OUTBOX, &["perf.outbox.>"], WorkQueue, 7 * DAY, dup, &[Monitor]),
            stream(
                streams::RL_BATCHES,
                &["rl.batches.>"],
                Limits,
                30 * DAY,
                dup.max(Duration::from_secs(600)),
                &[RlPipeline],
            ),
        ];
        let mut streams = streams;
        for spec in &mut streams {
            if let Some(age) = bus.max_age.get(spec.name) {
                spec.max_age = *age;
                // The server refuses a duplicate window longer than the stream's max age.
                if !age.is_zero() {
                    spec.duplicate_window = spec.duplicate_window.min(*age);
                }
            }
        }
        let consumer = |stream, durable: String, filter: Option<String>, ack_policy, owner| ConsumerSpec {
            stream,
            durable,
            filter,
            ack_policy,
            owner,
        };
        let mut consumers = vec![consumer(streams::RAW, "collector".into(), None, AckPolicy::Explicit, Collector)];
        for p in 0..bus.partitions {
            consumers.push(partition_consumer(&format!("aggregator-p{p}"), p, Aggregator));
        }
        consumers.push(consumer(streams::PARTIALS, "aggregator-final".into(), None, AckPolicy::All, Aggregator));
        for p in 0..bus.partitions {
            consumers.push(partition_consumer(&format!("rl-p{p}"), p, RlPipeline));
        }
        consumers.push(consumer(streams::METRICS, "analyzer".into(), None, AckPolicy::All, Analyzer));
        consumers.push(consumer(streams::METRICS, "monitor-metrics".into(), None, AckPolicy::All, Monitor));
        consumers.push(consumer(streams::SIGNALS, "monitor-signals".into(), None, AckPolicy::All, Monitor));
        consumers.push(consumer(streams::OUTBOX, "monitor-outbox".into(), None, AckPolicy::Explicit, Monitor));
        let buckets = vec![
            BucketSpec {
                name: buckets::LEASES,
                max_age: bus.lease_ttl,
                used_by: &[Aggregator, RlPipeline, Analyzer, Monitor],
            },
            BucketSpec {
                name: buckets::STATE,
                max_age: Duration::ZERO,
                used_by: &[Aggregator, RlPipeline, Analyzer, Monitor],
            },
            BucketSpec { name: buckets::RL_LEDGER, max_age: 30 * DAY, used_by: &[RlPipeline] },
            // Two days: revisions come at most 23 h after a close, plus a lagging finaliser.
            BucketSpec { name: buckets::WINDOWS, max_age: 2 * DAY, used_by: &[Aggregator] },
        ];
        Self { streams, consumers, buckets, reports_used_by: &[Analyzer], bus: bus.clone(), replicas: replicas.max(1) }
    }

    /// Only the parts `service` uses.
    pub fn for_service(mut self, service: Service) -> Self {
        if service == All {
            return self;
        }
        self.streams.retain(|s| s.used_by.contains(&service));
        self.consumers.retain(|c| c.owner == service);
        self.buckets.retain(|b| b.used_by.contains(&service));
        if !self.reports_used_by.contains(&service) {
            self.reports_used_by = &[];
        }
        self
    }

    /// The consumer spec with this durable name.
    pub fn consumer(&self, durable: &str) -> Option<&ConsumerSpec> {
        self.consumers.iter().find(|c| c.durable == durable)
    }

    /// Creates what is missing and checks what exists. Idempotent.
    pub async fn ensure(&self, js: &Context) -> Result<(), BusError> {
        for s in &self.streams {
            self.ensure_stream(js, s).await?;
        }
        for c in &self.consumers {
            self.ensure_consumer(js, c).await?;
        }
        for b in &self.buckets {
            self.ensure_bucket(js, b).await?;
        }
        if !self.reports_used_by.is_empty() && js.get_object_store(buckets::REPORTS).await.is_err() {
            {
                js.create_object_store(object_store::Config {
                    bucket: buckets::REPORTS.into(),
                    num_replicas: self.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| BusError::js("create object store modelperf_reports", e))?;
            }
        }
        Ok(())
    }

    async fn ensure_stream(&self, js: &Context, s: &StreamSpec) -> Result<(), BusError> {
        let wanted = jetstream::stream::Config {
            name: s.name.into(),
            subjects: s.subjects.clone(),
            retention: s.retention,
            storage: StorageType::File,
            max_age: s.max_age,
            duplicate_window: s.duplicate_window,
            num_replicas: self.replicas,
            allow_direct: true,
            ..Default::default()
        };
        let mut stream = match js.get_stream(s.name).await {
            Ok(stream) => stream,
            Err(_) => {
                match js.create_stream(wanted.clone()).await {
                    Ok(_) => return Ok(()),
                    // Another replica may have created it in between: fall through and check.
                    Err(_) => {
                        js.get_stream(s.name).await.map_err(|e| BusError::js(format!("create stream {}", s.name), e))?
                    }
                }
            }
        };
        let have = stream.info().await.map_err(|e| BusError::js(format!("stream info {}", s.name), e))?.config.clone();
        let what = format!("stream {}", s.name);
        let conflict = |field: &str, existing: String, wanted: String| BusError::Conflict {
            what: what.clone(),
            field: field.into(),
            existing,
            wanted,
        };
        let mut have_subjects = have.subjects.clone();
        have_subjects.sort();
        let mut want_subjects = wanted.subjects.clone();
        want_subjects.sort();
        if have_subjects != want_subjects {
            return Err(conflict("subjects", format!("{have_subjects:?}"), format!("{want_subjects:?}")));
        }
        if have.retention != wanted.retention {
            return Err(conflict("retention", format!("{:?}", have.retention), format!("{:?}", wanted.retention)));
        }
        if have.storage != wanted.storage {
            return Err(conflict("storage", format!("{:?}", have.storage), "File".into()));
        }
        if have.num_replicas != wanted.num_replicas {
            return Err(conflict("replicas", have.num_replicas.to_string(), wanted.num_replicas.to_string()));
        }
        if have.max_age != wanted.max_age || have.duplicate_window != wanted.duplicate_window {
            tracing::warn!(
                stream = s.name,
                old_max_age = ?have.max_age, new_max_age = ?wanted.max_age,
                old_duplicate_window = ?have.duplicate_window, new_duplicate_window = ?wanted.duplicate_window,
                "updating stream limits to the configured values"
            );
            let updated = jetstream::stream::Config {
                max_age: wanted.max_age,
                duplicate_window: wanted.duplicate_window,
                ..have
            };
            js.update_stream(updated).await.map_err(|e| BusError::js(format!("update stream {}", s.name), e))?;
        }
        Ok(())
    }

    /// The pull-consumer configuration of a spec, with the configured limits.
    pub fn consumer_config(&self, c: &ConsumerSpec) -> pull::Config {
        pull::Config {
            durable_name: Some(c.durable.clone()),
            filter_subject: c.filter.clone().unwrap_or_default(),
            ack_policy: c.ack_policy,
            ack_wait: self.bus.ack_wait,
            // The outbox worker retries, backs off and dead-letters on its own (`give_up_after`);
            // a server-side limit would strand a delivery that was redelivered often enough (a
            // long receiver outage across restarts or failovers) in the work queue, unseen.
            max_deliver: if c.stream == streams::OUTBOX { -1 } else { self.bus.max_deliver },
            max_ack_pending: self.bus.max_ack_pending,
            num_replicas: 0,
            ..Default::default()
        }
    }

    async fn ensure_consumer(&self, js: &Context, c: &ConsumerSpec) -> Result<(), BusError> {
        let stream = js.get_stream(c.stream).await.map_err(|e| BusError::js(format!("get stream {}", c.stream), e))?;
        let wanted = self.consumer_config(c);
        let existing = stream.consumer_info(&c.durable).await.ok().map(|i| i.config.clone());
        let Some(have) = existing else {
            return match stream.create_consumer(wanted).await {
                Ok(_) => Ok(()),
                Err(e) => match stream.consumer_info(&c.durable).await {
                    Ok(_) => Ok(()), // created concurrently by another replica
                    Err(_) => Err(BusError::js(format!("create consumer {}", c.durable), e)),
                },
            };
        };
        let what = format!("consumer {} on {}", c.durable, c.stream);
        let have_filter = if have.filter_subject.is_empty() && have.filter_subjects.len() == 1 {
            have.filter_subjects[0].clone()
        } else {
            have.filter_subject.clone()
        };
        if have_filter != wanted.filter_subject {
            return Err(BusError::Conflict {
                what,
                field: "filter_subject".into(),
                existing: have_filter,
                wanted: wanted.filter_subject,
            });
        }
        if have.ack_policy != wanted.ack_policy {
            return Err(BusError::Conflict {
                what,
                field: "ack_policy".into(),
                existing: format!("{:?}", have.ack_policy),
                wanted: format!("{:?}", wanted.ack_policy),
            });
        }
        if have.ack_wait != wanted.ack_wait
            || have.max_deliver != wanted.max_deliver
            || have.max_ack_pending != wanted.max_ack_pending
        {
            tracing::warn!(
                consumer = %c.durable,
                old_ack_wait = ?have.ack_wait, new_ack_wait = ?wanted.ack_wait,
                old_max_deliver = have.max_deliver, new_max_deliver = wanted.max_deliver,
                old_max_ack_pending = have.max_ack_pending, new_max_ack_pending = wanted.max_ack_pending,
                "updating consumer limits to the configured values"
            );
            let updated = jetstream::consumer::Config {
                ack_wait: wanted.ack_wait,
                max_deliver: wanted.max_deliver,
                max_ack_pending: wanted.max_ack_pending,
                ..have
            };
            stream
                .update_consumer(updated)
                .await
                .map_err(|e| BusError::js(format!("update consumer {}", c.durable), e))?;
        }
        Ok(())
    }

    async fn ensure_bucket(&self, js: &Context, b: &BucketSpec) -> Result<(), BusError> {
        if js.get_key_value(b.name).await.is_err() {
            let created = js
                .create_key_value(kv::Config {
                    bucket: b.name.into(),
                    history: 1,
                    max_age: b.max_age,
                    num_replicas: self.replicas,
                    ..Default::default()
                })
                .await;
            if let Err(e) = created
                && js.get_key_value(b.name).await.is_err()
            {
                return Err(BusError::js(format!("create kv bucket {}", b.name), e));
            }
        }
        let stream_name = format!("KV_{}", b.name);
        let mut stream =
            js.get_stream(&stream_name).await.map_err(|e| BusError::js(format!("get stream {stream_name}"), e))?;
        let have =
            stream.info().await.map_err(|e| BusError::js(format!("stream info {stream_name}"), e))?.config.clone();
        if have.num_replicas != self.replicas {
            return Err(BusError::Conflict {
                what: format!("kv bucket {}", b.name),
                field: "replicas".into(),
                existing: have.num_replicas.to_string(),
                wanted: self.replicas.to_string(),
            });
        }
        if have.max_age != b.max_age {
            tracing::warn!(bucket = b.name, old = ?have.max_age, new = ?b.max_age, "updating kv bucket max_age to the configured value");
            // The server refuses a duplicate window longer than max_age.
            let duplicate_window =
                if b.max_age.is_zero() { have.duplicate_window } else { have.duplicate_window.min(b.max_age) };
            js.update_stream(jetstream::stream::Config { max_age: b.max_age, duplicate_window, ..have.clone() })
                .await
                .map_err(|e| BusError::js(format!("update kv bucket {}", b.name), e))?;
        }
        if have.allow_direct {
            // Direct gets may be answered by a follower that lags the last write; leases,
            // checkpoints, ledgers and finalised windows are read-modify-written, so every
            // bucket is read through its leader.
            let have =
                stream.info().await.map_err(|e| BusError::js(format!("stream info {stream_name}"), e))?.config.clone();
            js.update_stream(jetstream::stream::Config { allow_direct: false, ..have })
                .await
                .map_err(|e| BusError::js(format!("update kv bucket {}", b.name), e))?;
        }
        Ok(())
    }
}

fn partition_consumer(durable: &str, p: u32, owner: Service) -> ConsumerSpec {
    ConsumerSpec {
        stream: streams::EVENTS,
        durable: durable.to_owned(),
        filter: Some(format!("perf.events.*.{p}")),
        ack_policy: AckPolicy::All,
        owner,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_matches_the_contract() {
        let t = Topology::contract(&BusConfig::default(), 1);
        assert_eq!(t.streams.len(), 9);
        assert_eq!(t.consumers.len(), 1 + 8 + 1 + 8 + 4);
        let agg = t.consumer("aggregator-p3").unwrap();
        assert_eq!(agg.filter.as_deref(), Some("perf.events.*.3"));
        assert_eq!(agg.ack_policy, AckPolicy::All);
        let raw = t.streams.iter().find(|s| s.name == streams::RAW).unwrap();
        assert_eq!(raw.retention, RetentionPolicy::WorkQueue);
        let rl = t.streams.iter().find(|s| s.name == streams::RL_BATCHES).unwrap();
        assert_eq!(rl.duplicate_window, Duration::from_secs(600));
        let collector = Topology::contract(&BusConfig::default(), 1).for_service(Service::Collector);
        let names: Vec<_> = collector.streams.iter().map(|s| s.name).collect();
        assert_eq!(names, [streams::RAW, streams::EVENTS, streams::DLQ]);
        assert!(collector.buckets.is_empty());
        let mut bus = BusConfig::default();
        bus.max_age.insert("PERF_EVENTS".into(), Duration::from_secs(14 * 86_400));
        bus.max_age.insert("PERF_DLQ".into(), Duration::from_secs(60));
        let t = Topology::contract(&bus, 1);
        let get = |n: &str| t.streams.iter().find(|s| s.name == n).cloned().unwrap();
        assert_eq!(get("PERF_EVENTS").max_age, Duration::from_secs(14 * 86_400));
        assert_eq!(get("PERF_DLQ").duplicate_window, Duration::from_secs(60), "clamped to the max age");
        bus.max_age.insert("PERF_EVNTS".into(), Duration::from_secs(1));
        assert!(bus.validate().unwrap_err().to_string().contains("bus.max_age.PERF_EVNTS"));
    }

    #[test]
    fn only_the_outbox_consumer_redelivers_without_a_limit() {
        let bus = BusConfig::default();
        let t = Topology::contract(&bus, 1);
        let outbox = t.consumer_config(t.consumer("monitor-outbox").unwrap());
        assert_eq!(outbox.max_deliver, -1, "the outbox worker gives up on its own, by age");
        for c in t.consumers.iter().filter(|c| c.stream != streams::OUTBOX) {
            assert_eq!(t.consumer_config(c).max_deliver, bus.max_deliver, "{}", c.durable);
        }
    }
}
