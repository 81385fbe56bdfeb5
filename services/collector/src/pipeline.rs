//! One raw message → at most one clean event: decode, check, id, price, sample, pseudonymise,
//! encode. Pure and synchronous; the bus runner around it publishes, awaits the ack and only
//! then acknowledges the raw message.

use chrono::Utc;
use metrics::Counter;
use modelperf_bus::{Failure, Handler, Incoming, Outgoing};
use modelperf_pricing::Catalog;
use modelperf_privacy::Privacy;
use modelperf_schema::{Cost, CostStatus, ErrorCode, Event, Kind, ValidationError, dlq};

use crate::legacy;
use crate::sampling::{Decision, Override, Sampler};

/// The subject prefix of legacy events.
pub const LEGACY_PREFIX: &str = "perf.raw.legacy.";

/// The collector's processing of one raw message.
#[derive(Debug)]
pub struct Collector {
    partitions: u32,
    sampler: Sampler,
    privacy: Privacy,
    catalog: Catalog,
    counters: Counters,
    /// `perf.events.<kind>.<p>`, by kind and partition: built once, not formatted per event.
    subjects: Vec<Vec<String>>,
}

impl Collector {
    /// A collector with its parts.
    pub fn new(partitions: u32, sampler: Sampler, privacy: Privacy, catalog: Catalog) -> Self {
        let subjects = Kind::ALL
            .iter()
            .map(|k| (0..partitions.max(1)).map(|p| format!("perf.events.{}.{p}", k.as_str())).collect())
            .collect();
        Self { partitions, sampler, privacy, catalog, counters: Counters::new(), subjects }
    }

    /// The clean event of one raw message, `None` when its task was sampled out.
    pub fn process(&self, msg: &Incoming<'_>) -> Result<Option<Event>, ValidationError> {
        let content_type = msg.header("Content-Type");
        let mut event = match msg.subject.strip_prefix(LEGACY_PREFIX) {
            Some(_) => legacy::map(msg.payload)?,
            None => {
                let event = modelperf_schema::decode_event(msg.payload, content_type)?;
                check_subject_kind(msg.subject, event.kind())?;
                event
            }
        };
        let now = Utc::now();
        modelperf_schema::check_ts_range(event.ts, now, is_replay(msg))?;
        modelperf_schema::id::assign_id(&mut event, msg.header("Nats-Msg-Id"), msg.stream, msg.seq);
        if let Some(cost) = self.catalog.price_event(&mut event) {
            self.counters.cost(cost);
        }
        match self.sampler.decide(&event) {
            Decision::Drop => {
                self.counters.sampled_out.increment(1);
                return Ok(None);
            }
            Decision::Keep { sample_rate, by } => {
                event.sample_rate = Some(sample_rate);
                if let Some(by) = by {
                    self.counters.overridden(by);
                }
            }
        }
        self.privacy.apply(&mut event);
        event.received_at = Some(now);
        Ok(Some(event))
    }
}

/// A DLQ replay: `Modelperf-Replay: <seq>` together with `Nats-Msg-Id: replay:<seq>`, as
/// `modelperf dlq replay` sends it. The header alone does not exempt an event from the age rule.
fn is_replay(msg: &Incoming<'_>) -> bool {
    match (msg.header(dlq::REPLAY), msg.header("Nats-Msg-Id").and_then(|id| id.strip_prefix("replay:"))) {
        (Some(seq), Some(id_seq)) => !seq.is_empty() && seq == id_seq,
        _ => false,
    }
}

/// `perf.raw.<kind>` must name the body's kind; other subjects under `perf.raw.` are refused
/// the same way, since no producer should use them.
fn check_subject_kind(subject: &str, kind: Kind) -> Result<(), ValidationError> {
    let named = subject.strip_prefix("perf.raw.").unwrap_or(subject);
    if named == kind.as_str() {
        return Ok(());
    }
    Err(ValidationError::new(
        ErrorCode::KindMismatch,
        "kind",
        format!("subject {subject} does not match the body's kind {}", kind.as_str()),
    ))
}

impl Handler for Collector {
    fn handle(&self, msg: &Incoming<'_>) -> Result<Vec<Outgoing>, Failure> {
        let event = match self.process(msg) {
            Ok(Some(event)) => event,
            Ok(None) => return Ok(Vec::new()),
            Err(err) => {
                self.counters.rejected(err.code);
                // The reason already starts with the field it is about.
                return Err(Failure::Terminate { code: err.code, reason: err.reason });
            }
        };
        let body = match modelperf_schema::to_msgpack(&event) {
            Ok(body) => body,
            // Every decoded event encodes; if one does not, the message must not vanish.
            Err(e) => {
                return Err(Failure::Terminate { code: ErrorCode::Schema, reason: format!("cannot encode: {e}") });
            }
        };
        let kind = event.kind();
        let partition = modelperf_bus::partition_of(event.partition_key(), self.partitions);
        let id = event.id.unwrap_or_default();
        self.counters.clean[kind as usize].increment(1);
        let subject = match self.subjects.get(kind as usize).and_then(|by_p| by_p.get(partition as usize)) {
            Some(subject) => subject.clone(),
            None => format!("perf.events.{}.{partition}", kind.as_str()),
        };
        Ok(vec![Outgoing::new(subject, id, body)])
    }
}

/// Metric handles, registered once so the hot path only increments.
#[derive(Debug)]
struct Counters {
    clean: Vec<Counter>,
    sampled_out: Counter,
    rejected: Vec<Counter>,
    overrides: [Counter; 4],
    priced: Counter,
    unpriced: Counter,
    unknown_tokens: Counter,
}

impl Counters {
    fn new() -> Self {
        let clean = Kind::ALL
            .iter()
            .map(|k| metrics::counter!("modelperf_collector_events_total", "kind" => k.as_str(), "outcome" => "clean"))
            .collect();
        let rejected = ErrorCode::ALL
            .iter()
            .map(|c| metrics::counter!("modelperf_collector_rejected_total", "code" => c.as_str()))
            .collect();
        let over = |o: Override| metrics::counter!("modelperf_collector_overrides_total", "reason" => o.as_str());
        let cost = |s: &'static str| metrics::counter!("modelperf_collector_cost_total", "status" => s);
        Self {
            clean,
            sampled_out: metrics::counter!("modelperf_collector_sampled_out_total"),
            rejected,
            overrides: [
                over(Override::Failure),
                over(Override::LowJudgment),
                over(Override::Slow),
                over(Override::Expensive),
            ],
            priced: cost("priced"),
            unpriced: cost("unpriced"),
            unknown_tokens: cost("unknown_tokens"),
        }
    }

    fn rejected(&self, code: ErrorCode) {
        if let Some(c) = ErrorCode::ALL.iter().position(|x| *x == code).and_then(|i| self.rejected.get(i)) {
            c.increment(1);
        }
    }

    fn overridden(&self, by: Override) {
        self.overrides[by as usize].increment(1);
    }

    fn cost(&self, cost: &Cost) {
        match cost.status {
            None => self.priced.increment(1),
            Some(CostStatus::Unpriced) => self.unpriced.increment(1),
            Some(CostStatus::UnknownTokens) => self.unknown_tokens.increment(1),
        }
    }
}
