//! Carrying out the finaliser's actions: InfluxDB points, `perf.metrics.<window>` messages and
//! the finalised-window bucket that revisions add to.
//!
//! Order per action: InfluxDB first (a point overwrites itself, so writing again is harmless),
//! then the metrics messages (their `Nats-Msg-Id` drops a repeat), then the bucket entry, which
//! records the revision and the last partial sequence applied. A revision whose partial
//! sequence the entry already holds was applied before a crash and is skipped; a window
//! finalised again during a replay is skipped when the entry shows it (or a later revision)
//! was written.

use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::kv::Store;
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use modelperf_bus::{BusError, Outgoing, send};
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

/// Writes what the finaliser decides.
#[derive(Debug, Clone)]
pub struct Persister {
    js: Context,
    kv: Store,
    sink: Sink,
    health: Health,
}

impl Persister {
    /// Opens the bucket (ensured at start-up).
    pub async fn open(js: Context, sink: Sink, health: Health) -> Result<Self, BusError> {
        let kv = js.get_key_value(WINDOWS_BUCKET).await.map_err(|e| BusError::js("open kv modelperf_windows", e))?;
        Ok(Self { js, kv, sink, health })
    }

    /// Carries out `actions`. `recovering`: the actions may have been carried out before a
    /// crash, so finals are checked against the bucket first.
    pub async fn run(
        &self,
        actions: Vec<Action>,
        recovering: bool,
        stop: &CancellationToken,
    ) -> Result<(), PersistError> {
        for action in actions {
            match action {
                Action::Final { window, start, series, seq } => {
                    let mut todo = Vec::with_capacity(series.len());
                    for (dims, acc) in series {
                        if recovering && self.written(&window, start, &dims).await?.is_some_and(|w| w.seq >= seq) {
                            continue;
                        }
                        todo.push((dims, acc, 0u32));
                    }
                    self.write(&window, start, todo, seq, stop).await?;
                }
                Action::Revise { window, start, dims, delta, seq } => {
                    let (full, revision) = match self.written(&window, start, &dims).await? {
                        Some(w) if w.seq >= seq => continue,
                        Some(w) => {
                            let mut full = Accumulator::from_state(&w.state).unwrap_or_default();
                            // Sketches of one mapping always merge.
                            let _ = full.merge(&delta);
                            (full, w.revision + 1)
                        }
                        None => (delta, 0),
                    };
                    metrics::counter!("modelperf_aggregator_window_revisions_total", "window" => window.name().to_owned())
                        .increment(1);
                    self.write(&window, start, vec![(dims, full, revision)], seq, stop).await?;
                }
            }
        }
        Ok(())
    }

    async fn written(
        &self,
        window: &WindowSpec,
        start: DateTime<Utc>,
        dims: &Dims,
    ) -> Result<Option<Written>, BusError> {
        let key = window_key(window, start, dims);
        let entry = self.kv.get(&key).await.map_err(|e| BusError::js(format!("read {WINDOWS_BUCKET} {key}"), e))?;
        Ok(entry.and_then(|b| rmp_serde::from_slice(&b).ok()))
    }

    /// Writes whole windows of one length and start: InfluxDB, `perf.metrics.<window>`, then
    /// the bucket entry (with `seq`, the last partial sequence in them). Each series carries its
    /// revision.
    pub async fn write(
        &self,
        window: &WindowSpec,
        start: DateTime<Utc>,
        series: Vec<(Dims, Accumulator, u32)>,
        seq: u64,
        stop: &CancellationToken,
    ) -> Result<(), PersistError> {
        if series.is_empty() {
            return Ok(());
        }
        let end = start + chrono::Duration::seconds(window.secs() as i64);
        let metrics: Vec<(WindowMetrics, &Accumulator)> = series
            .iter()
            .map(|(dims, acc, rev)| (acc.metrics(window.name(), start, end, *rev, dims.clone()), acc))
            .collect();
        let points: Vec<Point> = metrics.iter().flat_map(|(m, _)| points_of(m)).collect();
        self.influx(window.name(), &points, stop).await?;
        let mut acks = Vec::with_capacity(metrics.len());
        for (m, _) in &metrics {
            let id = format!("{}:{}:{}:{}", m.window, m.start.timestamp(), series_hash(&m.dims), m.revision);
            let body = modelperf_schema::to_msgpack(m).unwrap_or_default();
            acks.push(send(&self.js, Outgoing::new(format!("perf.metrics.{}", m.window), id, body)).await?);
        }
        for ack in acks {
            ack.await.map_err(|e| BusError::Publish {
                subject: format!("perf.metrics.{}", window.name()),
                reason: e.to_string(),
            })?;
        }
        let mut puts = Vec::with_capacity(metrics.len());
        for (m, acc) in &metrics {
            let written = Written { revision: m.revision, seq, state: acc.to_state() };
            let value = Bytes::from(rmp_serde::to_vec_named(&written).unwrap_or_default());
            let subject = format!("$KV.{WINDOWS_BUCKET}.{}", window_key(window, start, &m.dims));
            puts.push(
                self.js
                    .publish(subject.clone(), value)
                    .await
                    .map_err(|e| BusError::Publish { subject, reason: e.to_string() })?,
            );
        }
        for put in puts {
            put.await.map_err(|e| BusError::Publish { subject: WINDOWS_BUCKET.into(), reason: e.to_string() })?;
        }
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
