//! Publishing events to `PERF_RAW` with a `Nats-Msg-Id` and an awaited JetStream ack.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{ContextBuilder, PublishAckFuture};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, Context};
use bytes::Bytes;
use modelperf_schema::codec::Format;
use modelperf_schema::{ErrorCode, Event, Kind, MAX_EVENT_BYTES, ValidationError, to_msgpack};

use crate::builder::{EventBuilder, KindData, check, new_event_id};
use crate::error::ClientError;

/// The `Content-Type` header.
pub const CONTENT_TYPE: &str = "Content-Type";
/// `Content-Type` of JSON bodies.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// `Content-Type` of MessagePack bodies.
pub const CONTENT_TYPE_MSGPACK: &str = "application/msgpack";

/// The subject producers publish an event of `kind` to: `perf.raw.<kind>`.
pub fn subject_for(kind: Kind) -> String {
    format!("perf.raw.{kind}")
}

/// What the stream said about a stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishReceipt {
    /// The event id, also its `Nats-Msg-Id` (assigned by the publisher when the event had none).
    pub id: String,
    /// The subject it was published to.
    pub subject: String,
    /// The stream that stored it (`PERF_RAW`).
    pub stream: String,
    /// Its sequence in the stream (for a duplicate: the sequence of the copy already stored).
    pub sequence: u64,
    /// The stream already held a message with this id within its duplicate window (a retry of
    /// ours whose first attempt was stored, or the same event published twice): nothing new was
    /// stored.
    pub duplicate: bool,
}

/// An encoded event, ready to be sent (again, on a retry: same bytes, same id).
#[derive(Debug)]
struct Prepared {
    id: String,
    subject: String,
    payload: Bytes,
}

/// Publishes events of one component to `perf.raw.<kind>`.
///
/// Each message carries `Nats-Msg-Id` = the event id and a `Content-Type`; every publish waits for
/// the stream's ack. A failed publish is retried with the same id and bytes (the server drops the
/// copy when an earlier attempt was stored after all), up to [`Publisher::retry`] attempts.
/// Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct Publisher {
    client: async_nats::Client,
    js: Context,
    source: String,
    format: Format,
    ack_timeout: Duration,
    max_in_flight: usize,
    max_attempts: u32,
    backoff: Duration,
}

/// Default wait for one publish ack.
const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Default publishes awaiting their ack at once in [`Publisher::publish_all`].
const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// Default attempts per event, the first included.
const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Default wait before the first retry; it doubles per retry, up to [`MAX_BACKOFF`].
const DEFAULT_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Publisher {
    /// A publisher for the component `source` (e.g. `arbiter.router`), used as the `source` of
    /// events that have none. Defaults: MessagePack, 5 s ack timeout, 3 attempts, 256 publishes in
    /// flight. Call it inside a Tokio runtime (the JetStream context runs a background task).
    pub fn new(client: async_nats::Client, source: &str) -> Self {
        let js = context(client.clone(), DEFAULT_ACK_TIMEOUT, DEFAULT_MAX_IN_FLIGHT);
        Self {
            client,
            js,
            source: source.to_owned(),
            format: Format::MessagePack,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff: DEFAULT_BACKOFF,
        }
    }

    /// The body format: [`Format::MessagePack`] (default, named fields) or [`Format::Json`].
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// How long to wait for one publish ack before the attempt counts as failed (default 5 s).
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self.js = context(self.client.clone(), self.ack_timeout, self.max_in_flight);
        self
    }

    /// How many publishes one [`Self::publish_all`] call keeps awaiting their ack at once
    /// (default 256, at least 1): the bound of its pipeline, so a large batch never queues
    /// without limit. All clones of a publisher together have at most 5000 (or this, when
    /// larger) unacknowledged publishes; beyond that a publish fails with a retryable error and
    /// is retried.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self.js = context(self.client.clone(), self.ack_timeout, self.max_in_flight);
        self
    }

    /// Attempts per event, the first included (at least 1; default 3), and the wait before the
    /// first retry (default 100 ms, doubling per retry up to 5 s). Only retryable errors are
    /// retried ([`ClientError::is_retryable`]).
    pub fn retry(mut self, max_attempts: u32, backoff: Duration) -> Self {
        self.max_attempts = max_attempts.max(1);
        self.backoff = backoff;
        self
    }

    /// The component name used for events without a source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Publishes one event and waits until the stream has stored it.
    ///
    /// The event is checked as the collector would (an invalid one is never sent); an event
    /// without id gets a UUIDv7, and one without source gets the publisher's. Retries reuse the
    /// id, so at most one copy is stored within the stream's duplicate window (2 min by default).
    pub async fn publish(&self, event: &Event) -> Result<PublishReceipt, ClientError> {
        let prepared = self.prepare(event)?;
        match self.attempt(&prepared).await {
            Ok(receipt) => Ok(receipt),
            Err(err) => self.retry_failed(&prepared, err, 1).await,
        }
    }

    /// Builds the event with the publisher's source as default, then publishes it.
    pub async fn emit<D: KindData>(&self, builder: EventBuilder<D>) -> Result<PublishReceipt, ClientError> {
        let event = builder.build_with_source(Some(&self.source))?;
        self.publish(&event).await
    }

    /// Publishes many events, pipelined: sends keep going while earlier acks are outstanding (at
    /// most [`Self::max_in_flight`]), then every ack is awaited; failed ones are retried with
    /// their ids. Receipts come in the order of `events`.
    ///
    /// Every event is checked before anything is sent. On an error some events may already be
    /// stored: publishing the same events again is safe, the stream drops the copies.
    pub async fn publish_all<'a, I>(&self, events: I) -> Result<Vec<PublishReceipt>, ClientError>
    where
        I: IntoIterator<Item = &'a Event>,
    {
        let prepared: Vec<Prepared> = events.into_iter().map(|e| self.prepare(e)).collect::<Result<_, _>>()?;
        let mut receipts: Vec<Option<PublishReceipt>> = vec![None; prepared.len()];
        let mut failed: Vec<(usize, ClientError)> = Vec::new();
        let mut pending: VecDeque<(usize, PublishAckFuture)> = VecDeque::new();
        for (i, p) in prepared.iter().enumerate() {
            if pending.len() >= self.max_in_flight
                && let Some((j, ack)) = pending.pop_front()
            {
                settle(&prepared[j], j, ack.await, &mut receipts, &mut failed);
            }
            match self.send(p).await {
                Ok(ack) => pending.push_back((i, ack)),
                Err(err) => failed.push((i, err)),
            }
        }
        while let Some((j, ack)) = pending.pop_front() {
            settle(&prepared[j], j, ack.await, &mut receipts, &mut failed);
        }
        for (i, err) in failed {
            receipts[i] = Some(self.retry_failed(&prepared[i], err, 1).await?);
        }
        // Every slot holds a receipt here: each index was either settled or retried above.
        Ok(receipts.into_iter().flatten().collect())
    }

    /// Checks, completes (id, source) and encodes one event.
    fn prepare(&self, event: &Event) -> Result<Prepared, ClientError> {
        let mut event = Cow::Borrowed(event);
        if event.id.is_none() {
            event.to_mut().id = Some(new_event_id());
        }
        if event.source.is_empty() {
            event.to_mut().source = self.source.clone();
        }
        check(&event)?;
        let id = event.id.clone().unwrap_or_default();
        let payload = match self.format {
            Format::Json => serde_json::to_vec(&*event).map_err(|e| e.to_string()),
            Format::MessagePack => to_msgpack(&*event).map_err(|e| e.to_string()),
        }
        .map_err(|reason| ClientError::Encode { id: id.clone(), reason })?;
        if payload.len() > MAX_EVENT_BYTES {
            return Err(ValidationError::new(
                ErrorCode::TooLarge,
                "",
                format!("event {id} encodes to {} bytes, more than the limit of {MAX_EVENT_BYTES}", payload.len()),
            )
            .into());
        }
        Ok(Prepared { id, subject: subject_for(event.kind()), payload: Bytes::from(payload) })
    }

    /// Sends one message; the returned future resolves with the stream's ack.
    async fn send(&self, p: &Prepared) -> Result<PublishAckFuture, ClientError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            match self.format {
                Format::Json => CONTENT_TYPE_JSON,
                Format::MessagePack => CONTENT_TYPE_MSGPACK,
            },
        );
        let message = PublishMessage::build().payload(p.payload.clone()).headers(headers).message_id(&p.id);
        self.js.send_publish(p.subject.clone(), message).await.map_err(|source| publish_error(p, source))
    }

    /// One attempt: send and await the ack.
    async fn attempt(&self, p: &Prepared) -> Result<PublishReceipt, ClientError> {
        let ack = self.send(p).await?.await.map_err(|source| publish_error(p, source))?;
        Ok(receipt(p, ack))
    }

    /// Retries a failed publish with backoff while the error is retryable and attempts remain.
    async fn retry_failed(
        &self,
        p: &Prepared,
        mut err: ClientError,
        mut attempts: u32,
    ) -> Result<PublishReceipt, ClientError> {
        let mut backoff = self.backoff;
        while err.is_retryable() && attempts < self.max_attempts {
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
            attempts += 1;
            match self.attempt(p).await {
                Ok(receipt) => return Ok(receipt),
                Err(next) => err = next,
            }
        }
        Err(err)
    }
}

/// Unacknowledged publishes one publisher (all its clones together) may have at once.
const CONTEXT_MAX_IN_FLIGHT: usize = 5_000;

/// The JetStream context of a publisher. Without backpressure a publish beyond the context's
/// limit fails at once with a retryable error instead of waiting for a permit: concurrent
/// `publish_all` calls, each holding unawaited acks, could otherwise wait for each other forever.
fn context(client: async_nats::Client, ack_timeout: Duration, max_in_flight: usize) -> Context {
    ContextBuilder::new()
        .timeout(ack_timeout)
        .ack_timeout(ack_timeout)
        .max_ack_inflight(max_in_flight.max(CONTEXT_MAX_IN_FLIGHT))
        .backpressure_on_inflight(false)
        .build(client)
}

fn publish_error(p: &Prepared, source: jetstream::context::PublishError) -> ClientError {
    ClientError::Publish { id: p.id.clone(), subject: p.subject.clone(), source }
}

fn receipt(p: &Prepared, ack: jetstream::publish::PublishAck) -> PublishReceipt {
    PublishReceipt {
        id: p.id.clone(),
        subject: p.subject.clone(),
        stream: ack.stream,
        sequence: ack.sequence,
        duplicate: ack.duplicate,
    }
}

/// Records the outcome of one pipelined publish.
fn settle(
    p: &Prepared,
    index: usize,
    ack: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
    receipts: &mut [Option<PublishReceipt>],
    failed: &mut Vec<(usize, ClientError)>,
) {
    match ack {
        Ok(ack) => receipts[index] = Some(receipt(p, ack)),
        Err(source) => failed.push((index, publish_error(p, source))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_contract() {
        assert_eq!(subject_for(Kind::TaskCompleted), "perf.raw.task_completed");
        assert_eq!(subject_for(Kind::ThinkingBudget), "perf.raw.thinking_budget");
    }
}
