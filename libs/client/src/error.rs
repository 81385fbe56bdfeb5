//! The errors of building and publishing events, classed by whether a retry can help.

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use modelperf_schema::ValidationError;

/// Why an event could not be built or published.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The event breaks the contract (the collector would dead-letter it); the error names the
    /// field and carries the collector's stable code (`schema`, `range`, `too_large`, ...).
    /// Never retryable: fix the event.
    #[error("invalid event: {0}")]
    Invalid(#[from] ValidationError),
    /// The event could not be encoded (does not happen for events that passed validation).
    #[error("failed to encode event {id}: {reason}")]
    Encode {
        /// The event id.
        id: String,
        /// The encoder's message.
        reason: String,
    },
    /// The stream did not acknowledge the publish. Retryable unless the server refused the
    /// message for good (see [`ClientError::is_retryable`]); a retry must reuse the event id so
    /// that the server drops the copy if the first attempt was stored after all.
    #[error("publish of event {id} to {subject} was not acknowledged: {source}")]
    Publish {
        /// The event id (also its `Nats-Msg-Id`).
        id: String,
        /// The subject.
        subject: String,
        /// The client's error; its kind says what happened.
        #[source]
        source: PublishError,
    },
}

impl ClientError {
    /// Whether publishing the same event again (with the same id) may succeed: a timeout, a
    /// broken connection, no stream yet for the subject, too many publishes in flight, or an
    /// error the server reported for this attempt. Invalid events and messages larger than the
    /// server's `max_payload` are not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Invalid(_) | ClientError::Encode { .. } => false,
            ClientError::Publish { source, .. } => match source.kind() {
                PublishErrorKind::TimedOut
                | PublishErrorKind::BrokenPipe
                | PublishErrorKind::MaxAckPending
                | PublishErrorKind::StreamNotFound
                | PublishErrorKind::Other => true,
                PublishErrorKind::MaxPayloadExceeded
                | PublishErrorKind::WrongLastMessageId
                | PublishErrorKind::WrongLastSequence => false,
            },
        }
    }

    /// The offending field of an invalid event, e.g. `data.score` (empty for the body as a whole).
    pub fn field(&self) -> Option<&str> {
        match self {
            ClientError::Invalid(err) => Some(&err.field),
            _ => None,
        }
    }

    /// The id of the event that failed, when it had one by then.
    pub fn event_id(&self) -> Option<&str> {
        match self {
            ClientError::Invalid(_) => None,
            ClientError::Encode { id, .. } | ClientError::Publish { id, .. } => Some(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelperf_schema::ErrorCode;

    fn publish_error(kind: PublishErrorKind) -> ClientError {
        ClientError::Publish { id: "e1".into(), subject: "perf.raw.custom".into(), source: PublishError::new(kind) }
    }

    #[test]
    fn classes() {
        let invalid = ClientError::Invalid(ValidationError::new(ErrorCode::Range, "data.score", "must be in 0..1"));
        assert!(!invalid.is_retryable());
        assert_eq!(invalid.field(), Some("data.score"));
        assert!(publish_error(PublishErrorKind::TimedOut).is_retryable());
        assert!(publish_error(PublishErrorKind::StreamNotFound).is_retryable());
        assert!(!publish_error(PublishErrorKind::MaxPayloadExceeded).is_retryable());
        assert_eq!(publish_error(PublishErrorKind::BrokenPipe).event_id(), Some("e1"));
    }
}
