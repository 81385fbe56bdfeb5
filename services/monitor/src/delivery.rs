//! The outbox worker: `monitor-outbox` on `PERF_OUTBOX` (a work queue), one lane per receiver.
//!
//! Each receiver's deliveries go out in the order they were enqueued, one at a time: a firing
//! alert is never overtaken by its own resolution, and a receiver that is down holds only its
//! own lane. A failed attempt is retried after an exponential backoff with ±25 % jitter (or the
//! receiver's `Retry-After`); while a delivery waits, the worker keeps the server from
//! redelivering it with progress acks. A delivery is acknowledged only once the receiver accepted
//! it (2xx), so a crash repeats it — with the same idempotency key — and loses nothing. A
//! receiver's refusal (a 4xx other than 408, 425 and 429), or failures for longer than
//! `give_up_after`, dead-letter the delivery on `perf.dlq.monitor`; a resend to Alertmanager
//! past its expiry is dropped, since a newer one follows.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::{AckKind, Message};
use chrono::Utc;
use futures::StreamExt;
use modelperf_bus::{BusError, Origin, dead_letter, publish};
use modelperf_schema::ErrorCode;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::DeliveryConfig;
use crate::receivers::{Outcome, Target, render, send};
use crate::router::Delivery;

/// The DLQ stage of the monitor (`perf.dlq.monitor`).
pub const STAGE: &str = "monitor";

/// The exponential backoff before attempt `attempt + 1`, with ±25 % jitter.
pub fn backoff(cfg: &DeliveryConfig, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(20);
    let base = cfg.base_backoff.saturating_mul(2u32.saturating_pow(exp)).min(cfg.max_backoff);
    base.mul_f64(0.75 + rand::random::<f64>() * 0.5)
}

struct Held {
    msg: Message,
    seq: u64,
    delivery: Result<Delivery, String>,
    attempts: u32,
    next_at: Instant,
}

/// Delivers the outbox until `stop`.
#[derive(Debug)]
pub struct Worker {
    js: Context,
    targets: BTreeMap<String, Target>,
    cfg: DeliveryConfig,
    fetch_batch: usize,
    ack_wait: Duration,
    http: reqwest::Client,
}

impl Worker {
    /// A worker sending to `targets` (by receiver name).
    pub fn new(
        js: Context,
        targets: BTreeMap<String, Target>,
        cfg: DeliveryConfig,
        fetch_batch: usize,
        ack_wait: Duration,
    ) -> anyhow::Result<Self> {
        let http = modelperf_telemetry::http::client()
            .timeout(cfg.timeout)
            .user_agent(concat!("modelperf-monitor/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { js, targets, cfg, fetch_batch, ack_wait, http })
    }

    /// Runs until `stop`; deliveries still held are handed back (nak) for the next worker.
    pub async fn run(&self, consumer: PullConsumer, stop: CancellationToken) -> Result<(), BusError> {
        let mut lanes: BTreeMap<String, VecDeque<Held>> = BTreeMap::new();
        let mut last_progress = Instant::now();
        while !stop.is_cancelled() {
            let held: usize = lanes.values().map(VecDeque::len).sum();
            metrics::gauge!("modelperf_monitor_outbox_held").set(held as f64);
            let now = Instant::now();
            let next_due = lanes.values().filter_map(VecDeque::front).map(|h| h.next_at).min();
            let due_now = next_due.is_some_and(|t| t <= now);
            if held < self.cfg.max_held {
                let room = (self.cfg.max_held - held).min(self.fetch_batch);
                // Never wait longer than the progress-ack period: held deliveries must not time out.
                let longest = (self.ack_wait / 3).clamp(Duration::from_millis(20), Duration::from_secs(1));
                let wait = if due_now {
                    None
                } else {
                    Some(next_due.map_or(longest, |t| t - now).clamp(Duration::from_millis(20), longest))
                };
                for msg in pull(&consumer, room, wait).await? {
                    self.hold(&mut lanes, msg);
                }
            } else if !due_now {
                let until = next_due.unwrap_or(now + Duration::from_secs(1)).min(now + Duration::from_secs(1));
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep_until(until) => {}
                }
            }
            self.attempt_due(&mut lanes).await?;
            if last_progress.elapsed() >= self.ack_wait / 3 {
                last_progress = Instant::now();
                for h in lanes.values().flatten() {
                    let _ = h.msg.ack_with(AckKind::Progress).await;
                }
            }
        }
        // Hand back what was not delivered, so the next worker has it at once.
        for h in lanes.values().flatten() {
            let _ = h.msg.ack_with(AckKind::Nak(None)).await;
        }
        Ok(())
    }

    fn hold(&self, lanes: &mut BTreeMap<String, VecDeque<Held>>, msg: Message) {
        let Ok(info) = msg.info() else { return };
        let seq = info.stream_sequence;
        let receiver = msg.subject.strip_prefix("perf.outbox.").unwrap_or(&msg.subject).to_owned();
        let lane = lanes.entry(receiver).or_default();
        if let Some(h) = lane.iter_mut().find(|h| h.seq == seq) {
            // Redelivered while held (progress acks came too late): keep the newer delivery.
            h.msg = msg;
            return;
        }
        let delivery = rmp_serde::from_slice::<Delivery>(&msg.payload).map_err(|e| e.to_string());
        lane.push_back(Held { msg, seq, delivery, attempts: 0, next_at: Instant::now() });
    }

    /// Attempts the head of every lane that is due, concurrently.
    async fn attempt_due(&self, lanes: &mut BTreeMap<String, VecDeque<Held>>) -> Result<(), BusError> {
        let now = Instant::now();
        let due: Vec<String> =
            lanes.iter().filter(|(_, q)| q.front().is_some_and(|h| h.next_at <= now)).map(|(k, _)| k.clone()).collect();
        let attempts = due.iter().map(|name| {
            let head = lanes.get(name).and_then(VecDeque::front);
            async move { (name.clone(), self.attempt(name, head).await) }
        });
        let results = futures::future::join_all(attempts).await;
        for (name, result) in results {
            let Some(lane) = lanes.get_mut(&name) else { continue };
            let Some(head) = lane.front_mut() else { continue };
            match result {
                Step::Done(outcome) => {
                    metrics::counter!("modelperf_monitor_deliveries_total", "receiver" => name.clone(), "outcome" => outcome)
                        .increment(1);
                    if let Err(e) = head.msg.double_ack().await {
                        // Not acknowledged: the server redelivers it and the receiver sees the same key again.
                        tracing::warn!(receiver = %name, error = %e, "outbox ack failed");
                    }
                    lane.pop_front();
                }
                Step::DeadLetter(code, reason) => {
                    tracing::error!(receiver = %name, %reason, "delivery dead-lettered");
                    let origin = Origin { stream: "PERF_OUTBOX", subject: &head.msg.subject, seq: head.seq };
                    publish(&self.js, dead_letter(STAGE, origin, &head.msg.payload, code, &reason)).await?;
                    metrics::counter!("modelperf_monitor_deliveries_total", "receiver" => name.clone(), "outcome" => "dead_lettered")
                        .increment(1);
                    let _ = head.msg.double_ack().await;
                    lane.pop_front();
                }
                Step::Retry(reason, after) => {
                    head.attempts += 1;
                    let wait =
                        backoff(&self.cfg, head.attempts).max(after.unwrap_or_default().min(10 * self.cfg.max_backoff));
                    head.next_at = Instant::now() + wait;
                    metrics::counter!("modelperf_monitor_delivery_retries_total", "receiver" => name.clone())
                        .increment(1);
                    tracing::warn!(receiver = %name, attempt = head.attempts, retry_in = ?wait, %reason, "delivery failed, will retry");
                }
            }
        }
        Ok(())
    }

    async fn attempt(&self, receiver: &str, head: Option<&Held>) -> Step {
        let Some(head) = head else { return Step::Retry("nothing held".into(), None) };
        let d = match &head.delivery {
            Ok(d) => d,
            Err(e) => return Step::DeadLetter(ErrorCode::Decode, format!("outbox message does not decode: {e}")),
        };
        let now = Utc::now();
        if d.expires_at.is_some_and(|t| t < now) {
            return Step::Done("expired");
        }
        let age = (now - d.created_at).to_std().unwrap_or_default();
        let give_up = age >= self.cfg.give_up_after;
        let Some(target) = self.targets.get(receiver) else {
            let reason = format!("no receiver {receiver:?} is configured");
            return if give_up {
                Step::DeadLetter(ErrorCode::RetriesExhausted, reason)
            } else {
                Step::Retry(reason, None)
            };
        };
        for req in render(target, d) {
            match send(&self.http, &req).await {
                Outcome::Delivered => {}
                Outcome::Rejected(reason) => {
                    return Step::DeadLetter(
                        ErrorCode::Schema,
                        format!("{} refused the delivery: {reason}", target.provider()),
                    );
                }
                Outcome::Retry { reason, after } => {
                    if give_up {
                        let reason = format!("still failing after {age:?}: {reason}");
                        return Step::DeadLetter(ErrorCode::RetriesExhausted, reason);
                    }
                    return Step::Retry(reason, after);
                }
            }
        }
        tracing::debug!(receiver, msg_id = %d.msg_id, alerts = d.items.len(), "delivered");
        Step::Done("delivered")
    }
}

enum Step {
    Done(&'static str),
    DeadLetter(ErrorCode, String),
    Retry(String, Option<Duration>),
}

/// One pull: what is there now (`wait` = `None`), or what arrives within `wait`.
async fn pull(consumer: &PullConsumer, n: usize, wait: Option<Duration>) -> Result<Vec<Message>, BusError> {
    let batch = match wait {
        None => consumer.fetch().max_messages(n).messages().await,
        Some(w) => consumer.batch().max_messages(n).expires(w.max(Duration::from_millis(20))).messages().await,
    };
    let mut batch = batch.map_err(|e| BusError::js("pull the outbox", e))?;
    let mut out = Vec::new();
    while let Some(m) = batch.next().await {
        match m {
            Ok(m) => out.push(m),
            Err(e) => tracing::debug!(error = %e, "outbox pull ended"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_up_to_the_cap() {
        let cfg = DeliveryConfig::default();
        for attempt in 1..30 {
            let b = backoff(&cfg, attempt);
            let nominal = cfg.base_backoff.saturating_mul(2u32.saturating_pow(attempt - 1)).min(cfg.max_backoff);
            assert!(b >= nominal.mul_f64(0.75) && b <= nominal.mul_f64(1.25), "{attempt}: {b:?}");
        }
        let samples: std::collections::BTreeSet<_> = (0..20).map(|_| backoff(&cfg, 3)).collect();
        assert!(samples.len() > 1, "jittered");
    }
}
