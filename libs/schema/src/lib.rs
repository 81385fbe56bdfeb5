//! `modelperf-schema` owns the wire contract: the performance event (schema v1) and every
//! message the services write, their MessagePack/JSON codecs, validation with stable error
//! codes, the id rules, and the JSON Schema generated into `schemas/`.
//!
//! Layout:
//! - [`event`]: the envelope, kinds and kind-specific data;
//! - [`model`]: model references (`{provider, name}` or `"provider/name"`);
//! - [`codec`]: format detection, decoding with classified errors, MessagePack encoding;
//! - [`validate`]: error codes, range rules, the `ts` rule;
//! - [`id`]: derived event ids;
//! - [`names`]: subject tokens, dataset names, windows;
//! - [`messages`]: metrics, anomalies, insights, alerts, reports, RL batches, heartbeats;
//! - [`dlq`]: the dead-letter headers;
//! - [`jsonschema`]: the generated JSON Schema.

pub mod codec;
pub mod dlq;
pub mod event;
pub mod id;
pub mod jsonschema;
pub mod messages;
pub mod model;
pub mod names;
pub mod validate;

pub use codec::{
    MAX_EVENT_BYTES, decode_event, decode_unvalidated, format_ts, from_json, from_msgpack, parse_ts, to_msgpack,
};
pub use dlq::ValidationErrorDoc;
pub use event::*;
pub use model::ModelRef;
pub use validate::{ErrorCode, MAX_DURATION_MS, ValidationError, check_ts_range, validate_event};
