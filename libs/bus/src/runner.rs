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
    /// Largest nak delay, and the longest pause between publishing an unstored output again.
    pub max_backoff: Duration,
    /// The consumer's `ack_wait`: inputs waiting for a stream to come back get a progress ack
    /// every third of it.
    pub ack_wait: Duration,
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
            ack_wait: bus.ack_wait,
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
/// Messages are pulled with one bounded request at a time (at most `fetch_batch` messages,
/// expiring after a second when the stream is idle); what a request delivers is handled as it
/// arrives. Because each request is read to its end — also after `stop` — nothing the server
/// handed out is left unacknowledged at exit, and while every batch slot is busy (a slow or
/// unavailable output stream) no further request is made, so waiting messages are not
/// redelivered and use up none of their deliveries.
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
    let mut in_flight = tokio::task::JoinSet::new();
    let mut stats = RunStats::default();
    let shared_cfg = Arc::new(cfg.clone());
    let mut failures = 0u32;
    while !stop.is_cancelled() {
        let request = match consumer.batch().max_messages(cfg.fetch_batch).expires(PULL_EXPIRES).messages().await {
            Ok(request) => {
                failures = 0;
                request
            }
            Err(e) => {
                // The connection is down or the consumer is gone: try again, gently.
                failures += 1;
                if failures == 1 || failures.is_multiple_of(30) {
                    tracing::warn!(stage = %cfg.stage, error = %e, failures, "pull request failed, retrying");
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let mut chunks = request.ready_chunks(cfg.fetch_batch);
        // Messages of this request not yet handed to a batch task (at most `fetch_batch`):
        // kept alive with progress acks while every slot is busy.
        let mut held: Vec<Message> = Vec::new();
        let mut request_done = false;
        let step = (cfg.ack_wait / 3).max(Duration::from_millis(100));
        let mut keep_alive = tokio::time::interval_at(tokio::time::Instant::now() + step, step);
        // After a quiet stretch, one progress ack, not a burst of missed ones.
        keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if !held.is_empty() && in_flight.len() < cfg.in_flight_batches.max(1) {
                let msgs = std::mem::take(&mut held);
                in_flight.spawn(process_batch(js.clone(), handler.clone(), shared_cfg.clone(), msgs, stop.clone()));
                continue;
            }
            if request_done && held.is_empty() {
                break;
            }
            tokio::select! {
                chunk = chunks.next(), if !request_done => match chunk {
                    Some(chunk) => {
                        for m in chunk {
                            match m {
                                Ok(m) => held.push(m),
                                Err(e) => tracing::warn!(stage = %cfg.stage, error = %e, "pull request error"),
                            }
                        }
                    }
                    None => request_done = true,
                },
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    add(&mut stats, settled(done, &cfg.stage));
                }
                _ = keep_alive.tick(), if !held.is_empty() => {
                    for m in &held {
                        let _ = m.ack_with(AckKind::Progress).await;
                    }
                }
            }
        }
    }
    while let Some(done) = in_flight.join_next().await {
        add(&mut stats, settled(done, &cfg.stage));
    }
    Ok(stats)
}

/// How long an idle pull request waits for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// The counts of a finished batch task; a panicked handler leaves its inputs unacknowledged,
/// so the server redelivers them after `ack_wait`.
fn settled(done: Result<RunStats, tokio::task::JoinError>, stage: &str) -> RunStats {
    done.unwrap_or_else(|e| {
        tracing::error!(stage, error = %e, "batch task failed; its messages will be redelivered");
        RunStats::default()
    })
}

fn add(total: &mut RunStats, batch: RunStats) {
    total.acked += batch.acked;
    total.retried += batch.retried;
    total.dead_lettered += batch.dead_lettered;
    total.duplicates += batch.duplicates;
}

/// Handles a batch, publishes its outputs, awaits all their acks together and settles every
/// input. An output the stream did not store (the stream or the server is down, an ack timed
/// out) is published again with the same `Nats-Msg-Id`, with backoff, while its input is kept
/// alive with progress acks: an outage delays the stage but uses up none of the input's
/// deliveries, so nothing is lost and nothing is dead-lettered for a failure that is not its
/// own. When `stop` ends the wait, the input is nak'ed for another replica.
fn process_batch<H: Handler>(
    js: Context,
    handler: Arc<H>,
    cfg: Arc<RunnerConfig>,
    msgs: Vec<Message>,
    stop: CancellationToken,
) -> impl std::future::Future<Output = RunStats> + Send + 'static {
    let span = tracing::debug_span!("batch", stage = %cfg.stage, n = msgs.len());
    async move {
        let started = Instant::now();
        // What to do with each input once its outputs are stored.
        let mut settles = Vec::with_capacity(msgs.len());
        // Every output of the batch: (input index, the message kept for a resend, its ack).
        let mut pending = Vec::new();
        for (i, msg) in msgs.iter().enumerate() {
            let Ok(info) = msg.info() else {
                // Not a JetStream delivery: without a sequence no id can be derived safely.
                settles.push(Settle::Nak(cfg.backoff(1)));
                continue;
            };
            let incoming = Incoming {
                subject: msg.subject.as_str(),
                headers: msg.headers.as_ref(),
                payload: &msg.payload,
                stream: info.stream,
                seq: info.stream_sequence,
                delivered: info.delivered,
            };
            let (settle, outputs) = plan(handler.as_ref(), &cfg, &incoming);
            settles.push(settle);
            for mut out in outputs {
                if let Some(tp) = incoming.header(TRACEPARENT)
                    && out.headers.get(TRACEPARENT).is_none()
                {
                    out.headers.insert(TRACEPARENT, tp);
                }
                let ack = send(&js, out.clone()).await;
                pending.push((i, out, ack));
            }
        }
        metrics::histogram!("modelperf_runner_batch_process_seconds", "stage" => cfg.stage.clone())
            .record(started.elapsed().as_secs_f64());

        let mut stats = RunStats::default();
        let mut attempt = 0;
        while !pending.is_empty() {
            let acks = pending.iter_mut().map(|(_, _, ack)| async move {
                match std::mem::replace(ack, Err(BusError::Publish { subject: String::new(), reason: String::new() })) {
                    Ok(fut) => fut.await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            });
            // Acks can take up to the context's ack timeout, longer than ack_wait: keep the
            // inputs alive meanwhile so the server does not hand them to someone else.
            let results = {
                let all = future::join_all(acks);
                tokio::pin!(all);
                let step = (cfg.ack_wait / 3).max(Duration::from_millis(100));
                loop {
                    tokio::select! {
                        results = &mut all => break results,
                        _ = tokio::time::sleep(step) => {
                            for msg in &msgs {
                                let _ = msg.ack_with(AckKind::Progress).await;
                            }
                        }
                    }
                }
            };
            let mut failed = Vec::new();
            for ((i, out, _), result) in pending.drain(..).zip(results) {
                match result {
                    Ok(ack) => stats.duplicates += u64::from(ack.duplicate),
                    Err(reason) => {
                        if attempt == 0 || attempt % 10 == 0 {
                            tracing::warn!(stage = %cfg.stage, subject = %out.subject, attempt, %reason, "output not stored, publishing again");
                        }
                        failed.push((i, out));
                    }
                }
            }
            if failed.is_empty() {
                break;
            }
            attempt += 1;
            metrics::counter!("modelperf_runner_publish_retries_total", "stage" => cfg.stage.clone())
                .increment(failed.len() as u64);
            let waiting: std::collections::BTreeSet<usize> = failed.iter().map(|(i, _)| *i).collect();
            if !keep_alive_for(&msgs, &waiting, cfg.backoff(attempt), cfg.ack_wait, &stop).await {
                for i in waiting {
                    settles[i] = Settle::Nak(cfg.backoff(1));
                }
                break;
            }
            for (i, out) in failed {
                let ack = send(&js, out.clone()).await;
                pending.push((i, out, ack));
            }
        }
        for (msg, settle) in msgs.iter().zip(settles) {
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

/// What the handler makes of one input: how to settle it, and what to publish first.
fn plan<H: Handler>(handler: &H, cfg: &RunnerConfig, incoming: &Incoming<'_>) -> (Settle, Vec<Outgoing>) {
    let delivered = incoming.delivered;
    match handler.handle(incoming) {
        Ok(outputs) => (Settle::Ack, outputs),
        Err(Failure::Retry(reason)) if delivered < cfg.max_deliver => {
            tracing::warn!(stage = %cfg.stage, seq = incoming.seq, delivered, %reason, "retryable failure, will redeliver");
            (Settle::Nak(cfg.backoff(delivered)), Vec::new())
        }
        Err(Failure::Retry(reason)) => {
            let reason = format!("failed {delivered} times, last: {reason}");
            let dl = dead_letter(&cfg.stage, incoming.origin(), incoming.payload, ErrorCode::RetriesExhausted, &reason);
            (Settle::Term, vec![dl])
        }
        Err(Failure::Terminate { code, reason }) => {
            (Settle::Term, vec![dead_letter(&cfg.stage, incoming.origin(), incoming.payload, code, &reason)])
        }
    }
}

/// Waits `delay` while telling the server every third of `ack_wait` that the inputs in
/// `waiting` are still being worked on. False when `stop` ends the wait.
async fn keep_alive_for(
    msgs: &[Message],
    waiting: &std::collections::BTreeSet<usize>,
    delay: Duration,
    ack_wait: Duration,
    stop: &CancellationToken,
) -> bool {
    let step = (ack_wait / 3).max(Duration::from_millis(100));
    let until = Instant::now() + delay;
    loop {
        for &i in waiting {
            if let Some(msg) = msgs.get(i) {
                let _ = msg.ack_with(AckKind::Progress).await;
            }
        }
        let now = Instant::now();
        if now >= until {
            return !stop.is_cancelled();
        }
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(step.min(until - now)) => {}
        }
    }
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
