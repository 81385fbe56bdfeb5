//! Errors of the bus, each classed so callers know what to do with the message at hand.

/// What a failure means for the message being processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient: nak with backoff, it may succeed later.
    Retry,
    /// Permanent: dead-letter and terminate, it will never succeed.
    Terminate,
    /// The process cannot go on (lost lease, bad configuration, conflicting topology).
    Fatal,
}

/// Errors of NATS plumbing.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Bad connection settings.
    #[error("invalid nats configuration: {0}")]
    Config(String),
    /// The server could not be reached.
    #[error("failed to connect to nats: {0}")]
    Connect(String),
    /// An existing stream, consumer or bucket has settings that conflict with the contract.
    #[error(
        "{what} exists with {field} = {existing}, but modelperf needs {wanted}; fix or delete it by hand (never changed automatically)"
    )]
    Conflict {
        /// e.g. `stream PERF_RAW`.
        what: String,
        /// The setting.
        field: String,
        /// What the server has.
        existing: String,
        /// What the contract needs.
        wanted: String,
    },
    /// A JetStream API call failed.
    #[error("{op}: {source}")]
    JetStream {
        /// What was attempted.
        op: String,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A publish was not acknowledged by the stream.
    #[error("publish to {subject} was not acknowledged: {reason}")]
    Publish {
        /// The subject.
        subject: String,
        /// Why.
        reason: String,
    },
    /// This instance no longer holds the lease it needs.
    #[error("lease {0} lost")]
    LeaseLost(String),
    /// A checkpoint write lost a compare-and-set: someone else owns the key now.
    #[error("checkpoint {0} was written by another owner")]
    CheckpointConflict(String),
    /// A delivery went missing between the server and this client (the consumer sequence
    /// skipped): the owner must restart from its checkpoint, or an ack-all would cover it.
    #[error("delivery gap on consumer {consumer}: expected delivery {expected}, got {got}")]
    DeliveryGap {
        /// The durable consumer.
        consumer: String,
        /// The delivery sequence expected.
        expected: u64,
        /// The one received.
        got: u64,
    },
    /// Stored data could not be decoded.
    #[error("corrupt {what}: {reason}")]
    Corrupt {
        /// What was read.
        what: String,
        /// Why it is unusable.
        reason: String,
    },
}

impl BusError {
    /// Wraps a client error with what was attempted.
    pub fn js(op: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        BusError::JetStream { op: op.into(), source: Box::new(source) }
    }

    /// The class of this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            BusError::JetStream { .. }
            | BusError::Publish { .. }
            | BusError::Connect(_)
            | BusError::DeliveryGap { .. } => ErrorClass::Retry,
            BusError::Corrupt { .. } => ErrorClass::Terminate,
            BusError::Config(_)
            | BusError::Conflict { .. }
            | BusError::LeaseLost(_)
            | BusError::CheckpointConflict(_) => ErrorClass::Fatal,
        }
    }
}
