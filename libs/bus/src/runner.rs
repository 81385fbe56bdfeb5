//! The stateless consume → process → publish → ack runner.
//!
//! Messages are pulled in batches of `fetch_batch`. Each message is handed to a [`Handler`],
//! whose outputs are published with their `Nats-Msg-Id`; the input is acknowledged only after
//! every output's publish ack. At most `in_flight_batches` batches await their acks at once, so
//! memory is bounded and a slow stream slows the pull instead of queueing without limit.
//!
//! Failures are classed: [`Failure::Retry`] naks with exponential backoff and jitter (and
//! dead-letters with `retries_exhausted` at the last delivery, so nothing vanishes);
//! [`Failure::Terminate`] dead-letters once and terminates.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::{AckKind, Message};
use futures::{StreamExt, future};
use modelperf_schema::ErrorCode;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::BusError;
use crate::publish::{Origin, Outgoing, TRACEPARENT, dead_letter, send};

/// One message handed to a handler.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// Subject it arrived on.
    pub subject: &'a str,
    /// Its headers.
    pub headers: Option<&'a HeaderMap>,
    /// Its body.
    pub payload: &'a [u8],
    /// The stream.
    pub stream: &'a str,
    /// Stream sequence.
    pub seq: u64,
    /// Delivery attempt, from 1.
    pub delivered: i64,
}

impl<'a> Incoming<'a> {
    /// A header value.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.and_then(|h| h.get(name)).map(|v| v.as_str())
    }

    /// The origin, for dead letters.
    pub fn origin(&self) -> Origin<'a> {
        Origin { stream: self.stream, subject: self.subject, seq: self.seq }
    }
}

/// Why a message could not be processed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Transient: redeliver later.
    Retry(String),
    /// Permanent: dead-letter with this code and reason.
    Terminate {
        /// Stable code.
        code: ErrorCode,
        /// Human reason naming the field.
        reason: String,
    },
}

/// Turns one input into its outputs. Called on the runner's task: keep it CPU-bound and short.
pub trait Handler: Send + Sync + 'static {
    /// The outputs of one message (possibly none), or why there are none.
    fn handle(&self, msg: &Incoming<'_>) -> Result<Vec<Outgoing>, Failure>;
}

/// Settings of a runner.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The stage name: DLQ subject `perf.dlq.<stage>` and the `stage` metric label.
    pub stage: String,
    /// Messages per pull and per processing batch.
    pub fetch_batch: usize,
    /// Batches whose publish acks may be awaited at once.
    pub in_flight_batches: usize,
    /// The consumer's `max_deliver`: the last attempt of a retryable failure dead-letters.
    pub max_deliver: i64,
    /// First nak delay; doubled per delivery up to `max_backoff`.
    pub base_backoff: Duration,
    /// Largest nak delay.
    pub max_backoff: Duration,
}

impl RunnerConfig {
    /// Defaults for a stage with the given bus limits.
    pub fn new(stage: &str, bus: &crate::BusConfig) -> Self {
        Self {
            stage: stage.to_owned(),
            fetch_batch: bus.fetch_batch,
            in_flight_batches: 4,
            max_deliver: bus.max_deliver,
            base_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
        }
    }

    /// The nak delay before delivery `delivered + 1`: exponential with ±25 % jitter.
    pub fn backoff(&self, delivered: i64) -> Duration {
        let exp = u32::try_from(delivered.clamp(1, 20) - 1).unwrap_or(0);
        let base = self.base_backoff.saturating_mul(2u32.saturating_pow(exp)).min(self.max_backoff);
        let jitter = 0.75 + rand::random::<f64>() * 0.5;
        base.mul_f64(jitter)
    }
}

/// Counts of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Inputs acknowledged after their outputs were stored.
    pub acked: u64,
    /// Inputs nak'ed for a retry.
    pub retried: u64,
    /// Inputs dead-lettered and terminated.
    pub dead_lettered: u64,
    /// Outputs the stream already held (same `Nats-Msg-Id` within its duplicate window).
    pub duplicates: u64,
}

enum Settle {
    Ack,
    Nak(Duration),
    Term,
}

/// Runs until `stop` is cancelled, then drains: stops pulling, waits for in-flight batches and
/// settles their inputs. Returns the counts.
///
/// Each batch is handled, published and settled on a task of its own, at most
/// `in_flight_batches` at once: handling one batch overlaps with awaiting the acks of others,
/// and a multi-threaded runtime spreads the handling over its cores. Outputs of different
/// batches may therefore be stored in a different order than their inputs.
pub async fn run<H: Handler>(
    js: Context,
    consumer: PullConsumer,
    handler: Arc<H>,
    cfg: &RunnerConfig,
    stop: CancellationToken,
) -> Result<RunStats, BusError> {
    let mut batches = pull_batches(&consumer, cfg.fetch_batch, &cfg.stage).await?;
    let mut in_flight = tokio::task::JoinSet::new();
    let mut stats = RunStats::default();
    let shared_cfg = Arc::new(cfg.clone());
    loop {
        if in_flight.len() >= cfg.in_flight_batches.max(1) {
            if let Some(done) = in_flight.join_next().await {
                add(&mut stats, settled(done, &cfg.stage));
            }
            continue;
        }
        let batch = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                add(&mut stats, settled(done, &cfg.stage));
                continue;
            }
            batch = batches.next() => batch,
        };
        let Some(batch) = batch else { break };
        let mut msgs = Vec::with_capacity(batch.len());
        for m in batch {
            match m {
                Ok(m) => msgs.push(m),
                // Missed heartbeats and similar are reported by the stream and recovered by it.
                Err(e) => tracing::warn!(stage = %cfg.stage, error = %e, "pull stream error"),
            }
        }
        if !msgs.is_empty() {
            in_flight.spawn(process_batch(js.clone(), handler.clone(), shared_cfg.clone(), msgs));
        }
    }
    while let Some(done) = in_flight.join_next().await {
        add(&mut stats, settled(done, &cfg.stage));
    }
    Ok(stats)
}

/// The counts of a finished batch task; a panicked handler leaves its inputs unacknowledged,
/// so the server redelivers them after `ack_wait`.
fn settled(done: Result<RunStats, tokio::task::JoinError>, stage: &str) -> RunStats {
    done.unwrap_or_else(|e| {
        tracing::error!(stage, error = %e, "batch task failed; its messages will be redelivered");
        RunStats::default()
    })
}

/// The consumer's messages as batches of what is ready, at most `fetch_batch` each: one pull
/// request per batch, heartbeats so a dead connection is noticed, and requests that expire so
/// an idle consumer keeps polling.
pub(crate) async fn pull_batches(
    consumer: &PullConsumer,
    fetch_batch: usize,
    stage: &str,
) -> Result<futures::stream::ReadyChunks<async_nats::jetstream::consumer::pull::Stream>, BusError> {
    let messages = consumer
        .stream()
        .max_messages_per_batch(fetch_batch)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| BusError::js(format!("pull from consumer for {stage}"), e))?;
    Ok(messages.ready_chunks(fetch_batch))
}

fn add(total: &mut RunStats, batch: RunStats) {
    total.acked += batch.acked;
    total.retried += batch.retried;
    total.dead_lettered += batch.dead_lettered;
    total.duplicates += batch.duplicates;
}

/// Handles a batch and sends its outputs, awaits the publish acks and then settles every input.
fn process_batch<H: Handler>(
    js: Context,
    handler: Arc<H>,
    cfg: Arc<RunnerConfig>,
    msgs: Vec<Message>,
) -> impl std::future::Future<Output = RunStats> + Send + 'static {
    let span = tracing::debug_span!("batch", stage = %cfg.stage, n = msgs.len());
    async move {
        let started = Instant::now();
        // For each input: what to do once its outputs are stored, and the ack futures to await.
        let mut plans = Vec::with_capacity(msgs.len());
        for msg in &msgs {
            let (stream, seq, delivered) = match msg.info() {
                Ok(i) => (i.stream.to_owned(), i.stream_sequence, i.delivered),
                Err(_) => (String::new(), 0, 1),
            };
            let incoming = Incoming {
                subject: msg.subject.as_str(),
                headers: msg.headers.as_ref(),
                payload: &msg.payload,
                stream: &stream,
                seq,
                delivered,
            };
            let (settle, outputs) = match handler.handle(&incoming) {
                Ok(outputs) => (Settle::Ack, outputs),
                Err(Failure::Retry(reason)) if delivered < cfg.max_deliver => {
                    tracing::warn!(stage = %cfg.stage, seq, delivered, %reason, "retryable failure, will redeliver");
                    (Settle::Nak(cfg.backoff(delivered)), Vec::new())
                }
                Err(Failure::Retry(reason)) => {
                    let reason = format!("failed {delivered} times, last: {reason}");
                    let dl = dead_letter(
                        &cfg.stage,
                        incoming.origin(),
                        incoming.payload,
                        ErrorCode::RetriesExhausted,
                        &reason,
                    );
                    (Settle::Term, vec![dl])
                }
                Err(Failure::Terminate { code, reason }) => {
                    let dl = dead_letter(&cfg.stage, incoming.origin(), incoming.payload, code, &reason);
                    (Settle::Term, vec![dl])
                }
            };
            let mut acks = Vec::with_capacity(outputs.len());
            let mut sent = true;
            for mut out in outputs {
                if let Some(tp) = incoming.header(TRACEPARENT)
                    && out.headers.get(TRACEPARENT).is_none()
                {
                    out.headers.insert(TRACEPARENT, tp);
                }
                match send(&js, out).await {
                    Ok(ack) => acks.push(ack),
                    Err(e) => {
                        tracing::warn!(stage = %cfg.stage, seq, error = %e, "publish failed, will redeliver");
                        sent = false;
                        break;
                    }
                }
            }
            let settle = if sent { settle } else { Settle::Nak(cfg.backoff(delivered)) };
            plans.push((settle, acks, delivered));
        }
        metrics::histogram!("modelperf_runner_batch_process_seconds", "stage" => cfg.stage.clone())
            .record(started.elapsed().as_secs_f64());

        let mut stats = RunStats::default();
        for (msg, (settle, acks, delivered)) in msgs.iter().zip(plans) {
            let mut stored = true;
            for r in future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future)).await {
                match r {
                    Ok(ack) => stats.duplicates += u64::from(ack.duplicate),
                    Err(e) => {
                        tracing::warn!(stage = %cfg.stage, error = %e, "publish not acknowledged, will redeliver");
                        stored = false;
                    }
                }
            }
            let settle = if stored { settle } else { Settle::Nak(cfg.backoff(delivered)) };
            let (kind, counter) = match settle {
                Settle::Ack => (AckKind::Ack, &mut stats.acked),
                Settle::Nak(d) => (AckKind::Nak(Some(d)), &mut stats.retried),
                Settle::Term => (AckKind::Term, &mut stats.dead_lettered),
            };
            *counter += 1;
            if let Err(e) = msg.ack_with(kind).await {
                // The server will redeliver after ack_wait; outputs carry the same ids.
                tracing::warn!(stage = %cfg.stage, error = %e, "ack failed");
            }
        }
        let stage = cfg.stage.clone();
        metrics::counter!("modelperf_runner_messages_total", "stage" => stage.clone(), "outcome" => "ok")
            .increment(stats.acked);
        metrics::counter!("modelperf_runner_messages_total", "stage" => stage.clone(), "outcome" => "retry")
            .increment(stats.retried);
        metrics::counter!("modelperf_runner_messages_total", "stage" => stage.clone(), "outcome" => "dead_letter")
            .increment(stats.dead_lettered);
        metrics::counter!("modelperf_runner_duplicates_total", "stage" => stage).increment(stats.duplicates);
        stats
    }
    .instrument(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let cfg = RunnerConfig::new("t", &crate::BusConfig::default());
        let first = cfg.backoff(1);
        assert!(first >= Duration::from_millis(187) && first <= Duration::from_millis(313), "{first:?}");
        let fourth = cfg.backoff(4);
        assert!(fourth >= Duration::from_millis(1500) && fourth <= Duration::from_millis(2500), "{fourth:?}");
        assert!(cfg.backoff(50) <= Duration::from_millis(37_500));
    }
}
