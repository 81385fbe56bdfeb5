//! Carrying out the finaliser's actions: the finalised-window bucket, InfluxDB points and
//! `perf.metrics.<window>` messages.
//!
//! The bucket `modelperf_windows` is the commit point. A window is first committed there —
//! create-only for a first write, compare-and-set on the entry's revision for a revision — and
//! only then written to InfluxDB (a point overwrites itself) and published (the `Nats-Msg-Id`
//! drops a repeat). Both are derived from the committed entry, so a successor that finds an
//! entry for a window it is about to write (after a crash between the commit and the writes)
//! writes InfluxDB and the metrics message from the entry again; and a finaliser that lost its
//! lease without noticing fails its next compare-and-set instead of overwriting its successor's
//! work. A revision whose partial sequence the entry already holds was applied before.

use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::kv::{self, Store};
use async_nats::jetstream::message::PublishMessage;
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use modelperf_bus::{BusError, Outgoing, ack_chunk, send_all};
use modelperf_influx::{InfluxError, Point, Sink};
use modelperf_schema::messages::{WindowMetrics, WindowState};
use modelperf_schema::names::WindowSpec;
use modelperf_telemetry::Health;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::finaliser::{Action, Dims};
use crate::window::{Accumulator, series_hash};

/// The bucket of finalised windows (`<window>.<start>.<series hash>` → [`Written`]).
pub const WINDOWS_BUCKET: &str = modelperf_bus::buckets::WINDOWS;

/// InfluxDB measurement of the window fields.
pub const MEASUREMENT: &str = "model_perf";
/// InfluxDB measurement of the latency sketch (base64 string field `latency`).
pub const SKETCH_MEASUREMENT: &str = "model_perf_sketch";

/// What the bucket keeps of a finalised window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Written {
    /// The revision written last.
    pub revision: u32,
    /// The last partial sequence in it.
    pub seq: u64,
    /// The full window.
    pub state: WindowState,
}

/// Why persisting stopped.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Shutdown or a lost lease while waiting for InfluxDB: nothing after the last checkpoint
    /// counts, the successor does it again.
    #[error("stopped while persisting")]
    Stopped,
    /// NATS refused (the loop restarts from the checkpoint).
    #[error(transparent)]
    Bus(#[from] BusError),
    /// Another finaliser committed this window meanwhile: this one lost its lease.
    #[error("window {0} was committed by another finaliser; this one no longer holds its lease")]
    Fenced(String),
}

fn corrupt(key: &str, reason: String) -> PersistError {
    PersistError::Bus(BusError::Corrupt { what: format!("{WINDOWS_BUCKET} {key}"), reason })
}

fn encode(w: &Written) -> Bytes {
    // Encoding our own type cannot fail.
    Bytes::from(rmp_serde::to_vec_named(w).unwrap_or_default())
}

/// The InfluxDB points of a window: `model_perf` with the fields of the contract (a field
/// without data omitted) and `model_perf_sketch` with the sketch, both at the window start.
pub fn points_of(m: &WindowMetrics) -> Vec<Point> {
    let ts = m.start.timestamp();
    let tagged = |measurement: &str| {
        let mut p = Point::new(measurement, ts).tag("window", &m.window);
        for (k, v) in &m.dims {
            p = p.tag(k, v);
        }
        p
    };
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let mut p = tagged(MEASUREMENT)
        .int("count", int(m.count))
        .float("weighted_count", m.weighted_count)
        .int("revision", i64::from(m.revision));
    if m.success + m.failure > 0 {
        p = p.int("success", int(m.success)).int("failure", int(m.failure));
    }
    p = p
        .field_opt("success_rate", m.success_rate)
        .field_opt("latency_p50_ms", m.latency_p50_ms)
        .field_opt("latency_p90_ms", m.latency_p90_ms)
        .field_opt("latency_p95_ms", m.latency_p95_ms)
        .field_opt("latency_p99_ms", m.latency_p99_ms)
        .field_opt("latency_max_ms", m.latency_max_ms)
        .field_opt("latency_mean_ms", m.latency_mean_ms)
        .field_opt("cost_usd", m.cost_usd)
        .field_opt("quality_mean", m.quality_mean)
        .field_opt("quality_m2", m.quality_m2);
    if m.tokens_input + m.tokens_output > 0 {
        p = p.int("tokens_input", int(m.tokens_input)).int("tokens_output", int(m.tokens_output));
    }
    if m.unpriced > 0 {
        p = p.int("unpriced", int(m.unpriced));
    }
    if m.quality_n > 0 {
        p = p.int("quality_n", int(m.quality_n));
    }
    for (k, v) in &m.sums {
        p = p.float(k, *v);
    }
    let mut points = vec![p];
    if !m.latency_sketch.is_empty() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&m.latency_sketch);
        points.push(tagged(SKETCH_MEASUREMENT).string("latency", b64).int("revision", i64::from(m.revision)));
    }
    points
}

/// The key of a finalised window in the bucket.
pub fn window_key(window: &WindowSpec, start: DateTime<Utc>, dims: &Dims) -> String {
    format!("{}.{}.{}", window.name(), start.timestamp(), series_hash(dims))
}

/// Series of a final window committed and then written together. Each series is committed
/// before it is written, and a successor re-derives what it finds committed, so a crash between
/// chunks loses nothing; the chunk only bounds what is held at once.
const FINAL_CHUNK: usize = 1_000;

/// Writes what the finaliser decides.
#[derive(Debug, Clone)]
pub struct Persister {
    js: Context,
    in_flight: usize,
    kv: Store,
    sink: Sink,
    health: Health,
}

impl Persister {
    /// Opens the bucket (ensured at start-up).
    /// `in_flight`: the publish acks the context allows in flight (`max_ack_pending`).
    pub async fn open(js: Context, sink: Sink, health: Health, in_flight: usize) -> Result<Self, BusError> {
        let kv = js.get_key_value(WINDOWS_BUCKET).await.map_err(|e| BusError::js("open kv modelperf_windows", e))?;
        Ok(Self { js, in_flight, kv, sink, health })
    }

    /// Carries out `actions`. `recovering`: they may have been carried out before a crash, so
    /// first writes are checked against the bucket.
    pub async fn run(
        &self,
        actions: Vec<Action>,
        recovering: bool,
        stop: &CancellationToken,
    ) -> Result<(), PersistError> {
        for action in actions {
            match action {
                Action::Final { window, start, series, seq } => {
                    // Chunk by chunk: committing a whole window first and deriving it after would
                    // hold every series' state, metrics, points and messages at once.
                    let mut series = series.into_iter();
                    loop {
                        let chunk: Vec<_> = series.by_ref().take(FINAL_CHUNK).collect();
                        if chunk.is_empty() {
                            break;
                        }
                        let committed = self.commit_first(&window, start, chunk, seq, recovering).await?;
                        self.derive(&window, start, &committed, stop).await?;
                    }
                }
                Action::Revise { window, start, dims, delta, seq } => {
                    let key = window_key(&window, start, &dims);
                    let written = match self.read(&key).await? {
                        Some((w, _)) if w.seq >= seq => {
                            // Applied before a crash; the writes may not have happened.
                            if recovering {
                                self.derive(&window, start, &[(dims, w)], stop).await?;
                            }
                            continue;
                        }
                        Some((w, kv_revision)) => {
                            let mut full =
                                Accumulator::from_state(&w.state).map_err(|e| corrupt(&key, e.to_string()))?;
                            full.merge(&delta).map_err(|e| corrupt(&key, format!("sketch: {e}")))?;
                            let next = Written { revision: w.revision + 1, seq, state: full.to_state() };
                            self.update(&key, &next, kv_revision).await?;
                            next
                        }
                        None => {
                            // A series the window did not have before.
                            let first = Written { revision: 0, seq, state: delta.to_state() };
                            if self.create(&key, &first).await?.is_some() {
                                return Err(PersistError::Fenced(key));
                            }
                            first
                        }
                    };
                    metrics::counter!("modelperf_aggregator_window_revisions_total", "window" => window.name().to_owned())
                        .increment(1);
                    self.derive(&window, start, &[(dims, written)], stop).await?;
                }
            }
        }
        Ok(())
    }

    /// Commits the first write of every series of a window, create-only, with the creates
    /// pipelined in chunks (a window may hold tens of thousands of series). A series committed
    /// already — before a crash, or by a finaliser that lost its lease — keeps what was
    /// committed, and that is what gets written.
    async fn commit_first(
        &self,
        window: &WindowSpec,
        start: DateTime<Utc>,
        series: Vec<(Dims, Accumulator)>,
        seq: u64,
        recovering: bool,
    ) -> Result<Vec<(Dims, Written)>, PersistError> {
        let mut committed = Vec::with_capacity(series.len());
        let chunk = ack_chunk(self.in_flight);
        let mut pending: Vec<(Dims, Written, String, PublishAckFuture)> = Vec::with_capacity(chunk);
        for (dims, acc) in series {
            let key = window_key(window, start, &dims);
            if recovering && let Some((w, _)) = self.read(&key).await? {
                committed.push((dims, w));
                continue;
            }
            let fresh = Written { revision: 0, seq, state: acc.to_state() };
            // What `kv.create` sends: a put that the stream refuses if the key has a value.
            let subject = format!("$KV.{WINDOWS_BUCKET}.{key}");
            let msg =
                PublishMessage::build().payload(encode(&fresh)).header("Nats-Expected-Last-Subject-Sequence", "0");
            let ack = self
                .js
                .send_publish(subject.clone(), msg)
                .await
                .map_err(|e| BusError::Publish { subject, reason: e.to_string() })?;
            pending.push((dims, fresh, key, ack));
            if pending.len() >= chunk {
                self.settle_creates(&mut pending, &mut committed).await?;
            }
        }
        self.settle_creates(&mut pending, &mut committed).await?;
        Ok(committed)
    }

    async fn settle_creates(
        &self,
        pending: &mut Vec<(Dims, Written, String, PublishAckFuture)>,
        committed: &mut Vec<(Dims, Written)>,
    ) -> Result<(), PersistError> {
        for (dims, fresh, key, ack) in pending.drain(..) {
            match ack.await {
                Ok(_) => committed.push((dims, fresh)),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => match self.read(&key).await? {
                    Some((existing, _)) => committed.push((dims, existing)),
                    None => return Err(PersistError::Fenced(key)),
                },
                Err(e) => return Err(BusError::Publish { subject: key, reason: e.to_string() }.into()),
            }
        }
        Ok(())
    }

    /// Commits whole windows of one length and start unconditionally (re-aggregation: windows
    /// nothing else writes any more), each series with its revision; [`Persister::derive`]
    /// then writes them.
    pub async fn commit(
        &self,
        window: &WindowSpec,
        start: DateTime<Utc>,
        series: Vec<(Dims, Accumulator, u32)>,
        seq: u64,
    ) -> Result<Vec<(Dims, Written)>, PersistError> {
        let mut committed = Vec::with_capacity(series.len());
        for (dims, acc, revision) in series {
            let w = Written { revision, seq, state: acc.to_state() };
            let key = window_key(window, start, &dims);
            self.kv
                .put(&key, encode(&w))
                .await
                .map_err(|e| BusError::js(format!("write {WINDOWS_BUCKET} {key}"), e))?;
            committed.push((dims, w));
        }
        Ok(committed)
    }

    /// The committed revision of a window, if any (for re-aggregation).
    pub async fn committed_revision(
        &self,
        window: &WindowSpec,
        start: DateTime<Utc>,
        dims: &Dims,
    ) -> Result<Option<u32>, PersistError> {
        Ok(self.read(&window_key(window, start, dims)).await?.map(|(w, _)| w.revision))
    }

    async fn read(&self, key: &str) -> Result<Option<(Written, u64)>, PersistError> {
        let entry = self.kv.entry(key).await.map_err(|e| BusError::js(format!("read {WINDOWS_BUCKET} {key}"), e))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let w: Written = rmp_serde::from_slice(&e.value).map_err(|err| corrupt(key, err.to_string()))?;
                Ok(Some((w, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Create-only; `Some(existing)` when the key was committed already.
    async fn create(&self, key: &str, w: &Written) -> Result<Option<Written>, PersistError> {
        match self.kv.create(key, encode(w)).await {
            Ok(_) => Ok(None),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => match self.read(key).await? {
                Some((existing, _)) => Ok(Some(existing)),
                None => Err(PersistError::Fenced(key.to_owned())),
            },
            Err(e) => Err(BusError::js(format!("write {WINDOWS_BUCKET} {key}"), e).into()),
        }
    }

    async fn update(&self, key: &str, w: &Written, revision: u64) -> Result<(), PersistError> {
        match self.kv.update(key, encode(w), revision).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(PersistError::Fenced(key.to_owned())),
            Err(e) => Err(BusError::js(format!("write {WINDOWS_BUCKET} {key}"), e).into()),
        }
    }

    /// InfluxDB, then the metrics messages, from committed windows.
    pub async fn derive(
        &self,
        window: &WindowSpec,
        start: DateTime<Utc>,
        committed: &[(Dims, Written)],
        stop: &CancellationToken,
    ) -> Result<(), PersistError> {
        if committed.is_empty() {
            return Ok(());
        }
        let end = start + chrono::Duration::seconds(window.secs() as i64);
        let mut metrics = Vec::with_capacity(committed.len());
        for (dims, w) in committed {
            let acc = Accumulator::from_state(&w.state)
                .map_err(|e| corrupt(&window_key(window, start, dims), e.to_string()))?;
            metrics.push(acc.metrics(window.name(), start, end, w.revision, dims.clone()));
        }
        let points: Vec<Point> = metrics.iter().flat_map(points_of).collect();
        self.influx(window.name(), &points, stop).await?;
        let messages: Vec<Outgoing> = metrics
            .iter()
            .map(|m| {
                let id = format!("{}:{}:{}:{}", m.window, m.start.timestamp(), series_hash(&m.dims), m.revision);
                let body = modelperf_schema::to_msgpack(m).unwrap_or_default();
                Outgoing::new(format!("perf.metrics.{}", m.window), id, body)
            })
            .collect();
        send_all(&self.js, messages, self.in_flight).await?;
        metrics::counter!("modelperf_aggregator_windows_written_total", "window" => window.name().to_owned())
            .increment(metrics.len() as u64);
        Ok(())
    }

    /// Writes until InfluxDB takes the points: while it is unavailable the finaliser waits here
    /// (it stops consuming partials, the owners go on), and `/readyz` says why. A rejection is
    /// logged with the server's explanation and the points are dropped, never retried forever.
    async fn influx(&self, window: &str, points: &[Point], stop: &CancellationToken) -> Result<(), PersistError> {
        let mut wait = Duration::from_millis(500);
        loop {
            match self.sink.write(window, points).await {
                Ok(stats) => {
                    self.health.ready("influx_write");
                    metrics::counter!("modelperf_influx_points_total", "window" => window.to_owned())
                        .increment(stats.points as u64);
                    return Ok(());
                }
                Err(e @ InfluxError::Rejected { .. }) => {
                    tracing::error!(window, points = points.len(), error = %e, "influxdb rejected the window's points; dropped");
                    metrics::counter!("modelperf_influx_rejected_points_total", "window" => window.to_owned())
                        .increment(points.len() as u64);
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(window, error = %e, "influxdb unavailable; holding partials until it returns");
                    metrics::counter!("modelperf_influx_write_failures_total").increment(1);
                    self.health.not_ready("influx_write", format!("writes failing, finaliser paused: {e}"));
                    tokio::select! {
                        _ = stop.cancelled() => return Err(PersistError::Stopped),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}
