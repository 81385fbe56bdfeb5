//! Publishing with `Nats-Msg-Id` and an awaited ack, and the dead-letter message.

use async_nats::HeaderMap;
use async_nats::jetstream::Context;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use modelperf_schema::{ErrorCode, dlq};
use sha2::{Digest, Sha256};

use crate::error::BusError;

/// The W3C trace-context header, carried from input to output.
pub const TRACEPARENT: &str = "traceparent";

/// A message to publish to a stream.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Subject.
    pub subject: String,
    /// `Nats-Msg-Id`: deterministic, so a republish after a crash is dropped by the server.
    pub msg_id: String,
    /// Extra headers.
    pub headers: HeaderMap,
    /// Body.
    pub payload: Bytes,
}

impl Outgoing {
    /// A message without extra headers.
    pub fn new(subject: impl Into<String>, msg_id: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self { subject: subject.into(), msg_id: msg_id.into(), headers: HeaderMap::new(), payload: payload.into() }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.insert(name, value);
        self
    }
}

/// Sends a message and returns the future of its ack; await it before acknowledging the input.
pub async fn send(js: &Context, out: Outgoing) -> Result<PublishAckFuture, BusError> {
    let subject = out.subject;
    let msg = PublishMessage::build().payload(out.payload).headers(out.headers).message_id(&out.msg_id);
    js.send_publish(subject.clone(), msg).await.map_err(|e| BusError::Publish { subject, reason: e.to_string() })
}

/// How many publish acks one caller may leave unawaited on a context that allows `in_flight`
/// (its `max_ack_inflight`, our `max_ack_pending`): a permit is freed only when its ack is
/// awaited, and a publish beyond the bound fails, so a caller that sent more than the bound
/// before awaiting any could never finish. A quarter of the bound, at most 256.
pub fn ack_chunk(in_flight: usize) -> usize {
    (in_flight / 4).clamp(1, 256)
}

/// Publishes every output and waits until all are stored, awaiting acks in chunks of
/// [`ack_chunk`]`(in_flight)`.
pub async fn send_all(
    js: &Context,
    outs: impl IntoIterator<Item = Outgoing>,
    in_flight: usize,
) -> Result<(), BusError> {
    let chunk = ack_chunk(in_flight);
    let mut acks = Vec::with_capacity(chunk);
    for out in outs {
        let subject = out.subject.clone();
        acks.push((subject, send(js, out).await?));
        if acks.len() >= chunk {
            await_all(&mut acks).await?;
        }
    }
    await_all(&mut acks).await
}

async fn await_all(acks: &mut Vec<(String, PublishAckFuture)>) -> Result<(), BusError> {
    for (subject, ack) in acks.drain(..) {
        ack.await.map_err(|e| BusError::Publish { subject, reason: e.to_string() })?;
    }
    Ok(())
}

/// Sends a message and waits for the stream to store it. Returns the stream sequence and whether
/// the server recognised it as a duplicate.
pub async fn publish(js: &Context, out: Outgoing) -> Result<(u64, bool), BusError> {
    let subject = out.subject.clone();
    let ack = send(js, out).await?.await.map_err(|e| BusError::Publish { subject, reason: e.to_string() })?;
    Ok((ack.sequence, ack.duplicate))
}

/// Where a message came from, for dead letters.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// Stream name.
    pub stream: &'a str,
    /// Subject.
    pub subject: &'a str,
    /// Stream sequence.
    pub seq: u64,
}

/// The contract's dead letter for a bad input: on `perf.dlq.<stage>`, id `dlq:<stream>:<seq>`,
/// the original bytes (the first 256 KiB, with size and hash headers when larger), the code,
/// the reason and the origin.
///
/// Each call is counted for the stage's heartbeat ([`modelperf_telemetry::dead_letters`]); a
/// dead letter is built once per refused message, just before it is sent.
pub fn dead_letter(stage: &str, origin: Origin<'_>, body: &[u8], code: ErrorCode, reason: &str) -> Outgoing {
    modelperf_telemetry::dead_letters::record(stage, code.as_str());
    let mut headers = HeaderMap::new();
    headers.insert(dlq::ERROR, code.as_str());
    headers.insert(dlq::REASON, header_safe(reason).as_str());
    headers.insert(dlq::ORIGINAL_SUBJECT, origin.subject);
    headers.insert(dlq::ORIGINAL_SEQ, origin.seq.to_string().as_str());
    let payload = if body.len() > dlq::MAX_DLQ_BODY {
        headers.insert(dlq::ORIGINAL_SIZE, body.len().to_string().as_str());
        headers.insert(dlq::SHA256, hex::encode(Sha256::digest(body)).as_str());
        Bytes::copy_from_slice(&body[..dlq::MAX_DLQ_BODY])
    } else {
        Bytes::copy_from_slice(body)
    };
    Outgoing {
        subject: format!("perf.dlq.{stage}"),
        msg_id: format!("dlq:{}:{}", origin.stream, origin.seq),
        headers,
        payload,
    }
}

/// Header values are one line of printable text; reasons may quote hostile input.
fn header_safe(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if out.len() > 1024 {
        let mut cut = 1024;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_bodies_are_truncated_with_size_and_hash() {
        let body = vec![b'x'; 300 * 1024];
        let origin = Origin { stream: "PERF_RAW", subject: "perf.raw.task_completed", seq: 42 };
        let out = dead_letter("collector", origin, &body, ErrorCode::TooLarge, "body is 307200 bytes\nreally");
        assert_eq!(out.subject, "perf.dlq.collector");
        assert_eq!(out.msg_id, "dlq:PERF_RAW:42");
        assert_eq!(out.payload.len(), 256 * 1024);
        assert_eq!(out.headers.get(dlq::ORIGINAL_SIZE).unwrap().as_str(), "307200");
        assert_eq!(out.headers.get(dlq::SHA256).unwrap().as_str(), hex::encode(Sha256::digest(&body)));
        assert_eq!(out.headers.get(dlq::REASON).unwrap().as_str(), "body is 307200 bytes really");
        let small = dead_letter("collector", origin, b"{}", ErrorCode::Schema, "x");
        assert!(small.headers.get(dlq::SHA256).is_none());
        assert_eq!(&small.payload[..], b"{}");
    }
}
