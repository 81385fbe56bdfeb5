//! Validation of decoded events: stable error codes and reasons that name the field.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::*;

/// The stable codes of bad input, as written to the `Modelperf-Error` header of dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not a JSON object or MessagePack map: syntax, truncation, invalid UTF-8, nesting.
    Decode,
    /// Well-formed, but the wrong shape: unknown kind, missing field, wrong type.
    Schema,
    /// A value outside its range: negative or non-finite number, score outside 0..1, `ts`.
    Range,
    /// The body is larger than the limit.
    TooLarge,
    /// The subject's kind contradicts the body's.
    KindMismatch,
    /// A schema version newer than this build knows (replayable after an upgrade).
    UnsupportedVersion,
    /// A legacy event that cannot be mapped to v1.
    LegacyUnmapped,
    /// An event for a window older than `max_revision_age` (aggregator).
    TooLate,
    /// A retryable failure that kept failing until `max_deliver`.
    RetriesExhausted,
}

impl ErrorCode {
    /// Every code, for metrics and docs.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::Decode,
        ErrorCode::Schema,
        ErrorCode::Range,
        ErrorCode::TooLarge,
        ErrorCode::KindMismatch,
        ErrorCode::UnsupportedVersion,
        ErrorCode::LegacyUnmapped,
        ErrorCode::TooLate,
        ErrorCode::RetriesExhausted,
    ];

    /// The wire spelling, e.g. `unsupported_version`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Decode => "decode",
            ErrorCode::Schema => "schema",
            ErrorCode::Range => "range",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::KindMismatch => "kind_mismatch",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::LegacyUnmapped => "legacy_unmapped",
            ErrorCode::TooLate => "too_late",
            ErrorCode::RetriesExhausted => "retries_exhausted",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an input was rejected: a stable code, the field (a dotted path, empty for the whole body)
/// and a human reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {reason}")]
pub struct ValidationError {
    /// The stable code.
    pub code: ErrorCode,
    /// The offending field, e.g. `data.tokens.input`; empty when the body as a whole is bad.
    pub field: String,
    /// Human text; it starts with the field when there is one.
    pub reason: String,
}

impl ValidationError {
    /// A new error; the reason is prefixed with the field when it does not already name it.
    pub fn new(code: ErrorCode, field: &str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        let reason = if field.is_empty() || reason.starts_with(field) { reason } else { format!("{field}: {reason}") };
        Self { code, field: field.to_owned(), reason }
    }
}

/// Largest accepted event id.
pub const MAX_ID_LEN: usize = 128;

/// Whether `id` is 1–128 characters of `[A-Za-z0-9._:-]`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// How far in the future an event's `ts` may be.
pub const MAX_FUTURE: Duration = Duration::minutes(5);
/// How old an event's `ts` may be (a DLQ replay is exempt).
pub const MAX_AGE: Duration = Duration::days(7);

/// The longest duration a `*_ms` field may carry: 7 days. Longer is a unit or clock error, and
/// a value near `f64::MAX` would make window sums overflow to infinity (and be dropped).
pub const MAX_DURATION_MS: f64 = 604_800_000.0;

/// The `ts` rule: at most 5 minutes in the future and, unless replayed, at most 7 days old.
pub fn check_ts_range(ts: DateTime<Utc>, now: DateTime<Utc>, replay: bool) -> Result<(), ValidationError> {
    if ts > now + MAX_FUTURE {
        return Err(ValidationError::new(
            ErrorCode::Range,
            "ts",
            format!("{} is more than 5 minutes in the future", crate::format_ts(&ts)),
        ));
    }
    if !replay && ts < now - MAX_AGE {
        return Err(ValidationError::new(
            ErrorCode::Range,
            "ts",
            format!("{} is more than 7 days old", crate::format_ts(&ts)),
        ));
    }
    Ok(())
}

struct Checker {
    first: Option<ValidationError>,
}

impl Checker {
    fn fail(&mut self, code: ErrorCode, field: &str, reason: String) {
        if self.first.is_none() {
            self.first = Some(ValidationError::new(code, field, reason));
        }
    }

    fn duration(&mut self, field: &str, v: f64) {
        if !v.is_finite() || v < 0.0 {
            self.fail(ErrorCode::Range, field, format!("must be a finite non-negative number, got {v}"));
        }
    }

    fn opt_duration(&mut self, field: &str, v: Option<f64>) {
        if let Some(v) = v {
            self.duration(field, v);
        }
    }

    /// A duration in milliseconds: non-negative, finite, and at most [`MAX_DURATION_MS`].
    fn millis(&mut self, field: &str, v: f64) {
        self.duration(field, v);
        if v > MAX_DURATION_MS {
            self.fail(ErrorCode::Range, field, format!("must be at most {MAX_DURATION_MS} ms (7 days), got {v}"));
        }
    }

    fn opt_millis(&mut self, field: &str, v: Option<f64>) {
        if let Some(v) = v {
            self.millis(field, v);
        }
    }

    fn unit(&mut self, field: &str, v: f64) {
        if !(0.0..=1.0).contains(&v) {
            self.fail(ErrorCode::Range, field, format!("must be a number in 0..1, got {v}"));
        }
    }

    fn opt_unit(&mut self, field: &str, v: Option<f64>) {
        if let Some(v) = v {
            self.unit(field, v);
        }
    }

    fn finite(&mut self, field: &str, v: f64) {
        if !v.is_finite() {
            self.fail(ErrorCode::Range, field, format!("must be a finite number, got {v}"));
        }
    }

    fn non_empty(&mut self, field: &str, v: Option<&str>) {
        if v.is_some_and(str::is_empty) {
            self.fail(ErrorCode::Schema, field, "must not be empty".to_owned());
        }
    }

    fn tokens(&mut self, field: &str, t: &Tokens) {
        let cached = t.cached_input.unwrap_or(0).saturating_add(t.cache_write.unwrap_or(0));
        if cached > t.input {
            self.fail(
                ErrorCode::Range,
                field,
                format!("cached_input + cache_write ({cached}) exceed input ({})", t.input),
            );
        }
        if t.reasoning.unwrap_or(0) > t.output {
            self.fail(
                ErrorCode::Range,
                field,
                format!("reasoning ({}) exceeds output ({})", t.reasoning.unwrap_or(0), t.output),
            );
        }
    }
}

/// Checks the rules of the contract that types alone do not express. Returns the first
/// violation found.
pub fn validate_event(e: &Event) -> Result<(), ValidationError> {
    let mut c = Checker { first: None };
    if e.v < 1 {
        c.fail(ErrorCode::Schema, "v", format!("must be {SCHEMA_VERSION}, got {}", e.v));
    }
    if let Some(id) = &e.id
        && !is_valid_id(id)
    {
        c.fail(ErrorCode::Schema, "id", "must be 1-128 characters of [A-Za-z0-9._:-]".into());
    }
    if e.source.is_empty() {
        c.fail(ErrorCode::Schema, "source", "must not be empty".into());
    }
    c.non_empty("task_id", e.task_id.as_deref());
    c.non_empty("agent_id", e.agent_id.as_deref());
    c.non_empty("task_type", e.task_type.as_deref());
    c.non_empty("tenant", e.tenant.as_deref());
    for (k, v) in &e.attrs {
        if let AttrValue::Float(f) = v {
            c.finite(&format!("attrs.{k}"), *f);
        }
    }
    match &e.data {
        Data::TaskStarted(d) => c.opt_millis("data.queue_ms", d.queue_ms),
        Data::TaskCompleted(d) => {
            c.millis("data.latency_ms", d.latency_ms);
            c.opt_millis("data.ttft_ms", d.ttft_ms);
            c.opt_millis("data.cpu_ms", d.cpu_ms);
            c.opt_duration("data.memory_mb", d.memory_mb);
            if let Some(t) = &d.tokens {
                c.tokens("data.tokens", t);
            }
        }
        Data::RoutingDecision(d) => {
            c.millis("data.decision_ms", d.decision_ms);
            c.opt_unit("data.probability", d.probability);
            for (i, cand) in d.candidates.iter().enumerate() {
                c.finite(&format!("data.candidates[{i}].score"), cand.score);
                c.opt_unit(&format!("data.candidates[{i}].probability"), cand.probability);
            }
            for (k, f) in &d.features {
                if let Feature::Number(n) = f {
                    c.finite(&format!("data.features.{k}"), *n);
                }
            }
        }
        Data::Judgment(d) => {
            if e.model.is_none() {
                c.fail(ErrorCode::Schema, "model", "is required on judgment (the judged model)".into());
            }
            c.unit("data.score", d.score);
            c.opt_unit("data.confidence", d.confidence);
            for (k, s) in &d.criteria {
                c.unit(&format!("data.criteria.{k}"), *s);
            }
            if let Some(t) = &d.tokens {
                c.tokens("data.tokens", t);
            }
        }
        Data::Minimality(d) => c.unit("data.score", d.score),
        Data::ThinkingBudget(_) | Data::AgentStatus(_) => {}
        Data::Validation(d) => {
            c.unit("data.compliance_score", d.compliance_score);
            c.millis("data.duration_ms", d.duration_ms);
        }
        Data::Custom(d) => {
            for (k, v) in &d.metrics {
                c.finite(&format!("data.metrics.{k}"), *v);
            }
        }
    }
    if let Some(rate) = e.sample_rate
        && !(rate > 0.0 && rate <= 1.0)
    {
        c.fail(ErrorCode::Range, "sample_rate", format!("must be in (0, 1], got {rate}"));
    }
    if let Some(usd) = e.cost.as_ref().and_then(|c| c.usd) {
        c.duration("cost.usd", usd);
    }
    match c.first {
        Some(err) => Err(err),
        None => Ok(()),
    }
}
