//! Dead letters: the headers every service writes on `perf.dlq.<stage>`.
//!
//! The body of a dead letter is the original bytes (the first 256 KiB when larger), so its
//! "schema" is the set of headers documented here.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::ErrorCode;

/// The stable error code.
pub const ERROR: &str = "Modelperf-Error";
/// Human text naming the field.
pub const REASON: &str = "Modelperf-Reason";
/// Subject the original message arrived on.
pub const ORIGINAL_SUBJECT: &str = "Modelperf-Original-Subject";
/// Stream sequence of the original message.
pub const ORIGINAL_SEQ: &str = "Modelperf-Original-Seq";
/// Size of the original body, when it was truncated.
pub const ORIGINAL_SIZE: &str = "Modelperf-Original-Size";
/// SHA-256 (hex) of the whole original body, when it was truncated.
pub const SHA256: &str = "Modelperf-Sha256";
/// On a replayed message: the DLQ sequence it came from.
pub const REPLAY: &str = "Modelperf-Replay";
/// Largest body kept in a dead letter (256 KiB).
pub const MAX_DLQ_BODY: usize = 256 * 1024;

/// The headers of a dead letter, as a document (for the JSON Schema and the CLI's `--json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "DeadLetter")]
pub struct ValidationErrorDoc {
    /// `Modelperf-Error`: the stable code.
    pub error: ErrorCode,
    /// `Modelperf-Reason`: human text naming the field.
    pub reason: String,
    /// `Modelperf-Original-Subject`.
    pub original_subject: String,
    /// `Modelperf-Original-Seq`.
    pub original_seq: u64,
    /// `Modelperf-Original-Size`, when truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_size: Option<u64>,
    /// `Modelperf-Sha256`, when truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}
