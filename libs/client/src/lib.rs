//! `modelperf-client` is the Rust producer SDK: components of the agent platform build
//! performance events (schema v1) with typed builders and publish them to `perf.raw.<kind>` on
//! NATS JetStream, where the collector picks them up.
//!
//! ```no_run
//! use modelperf_client::{EventBuilder, Format, Publisher};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = async_nats::connect("nats://127.0.0.1:4222").await?;
//! let publisher = Publisher::new(client, "arbiter.orchestrator").format(Format::MessagePack);
//! let event = EventBuilder::task_completed(2_100.0, true)
//!     .source("arbiter.orchestrator")
//!     .task_id("task-8f2c")
//!     .model("anthropic/claude-sonnet-4-5")
//!     .tokens(1_200, 300)
//!     .build()?; // checked as the collector would: the error names the field
//! let receipt = publisher.publish(&event).await?; // waits for the stream's ack
//! assert!(!receipt.duplicate);
//! # Ok(())
//! # }
//! ```
//!
//! Guarantees: an event that fails validation is never sent; every message carries
//! `Nats-Msg-Id` = the event id, so retries (automatic for retryable errors, or the caller's own)
//! store at most one copy within the stream's duplicate window; a publish returns only once the
//! stream has stored the event.
//!
//! Layout:
//! - [`args`]: conversions of setter arguments ([`IntoModelRef`], [`IntoAttrValue`], [`IntoFeature`]);
//! - [`builder`]: [`EventBuilder`], one constructor per kind, the envelope setters, `build`;
//! - [`publisher`]: [`Publisher`], [`PublishReceipt`], subjects and content types;
//! - [`error`]: [`ClientError`] and its retry class.

pub mod args;
pub mod builder;
pub mod error;
pub mod publisher;

pub use args::{IntoAttrValue, IntoFeature, IntoModelRef};
pub use builder::{EventBuilder, KindData, new_event_id};
pub use error::ClientError;
pub use modelperf_schema as schema;
pub use modelperf_schema::codec::Format;
pub use modelperf_schema::{
    AgentState, AttrValue, Data, ErrorCode, Event, Feature, Kind, ModelRef, Tokens, ValidationError,
};
pub use publisher::{CONTENT_TYPE, CONTENT_TYPE_JSON, CONTENT_TYPE_MSGPACK, PublishReceipt, Publisher, subject_for};
