//! Encoding and decoding of events: JSON or MessagePack in, MessagePack (named maps) out.
//!
//! Decoding never panics and classifies every failure with a stable [`ErrorCode`]: bytes that are
//! not a JSON object or MessagePack map are `decode`, a wrong shape is `schema`, a value outside
//! its range is `range`.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::event::*;
use crate::validate::{ErrorCode, ValidationError, validate_event};

/// Largest body the collector accepts (64 KiB).
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// Nesting depth beyond which a MessagePack body is rejected as `decode`.
const MAX_MSGPACK_DEPTH: usize = 64;

/// Wire formats of event bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A JSON object.
    Json,
    /// A MessagePack map with named fields.
    MessagePack,
}

/// Decides the format of a body from its content type, else from its first byte.
///
/// `application/json` or a body starting with `{` (after whitespace) is JSON; a
/// MessagePack content type or a body starting with a map marker is MessagePack.
pub fn detect_format(body: &[u8], content_type: Option<&str>) -> Option<Format> {
    if let Some(ct) = content_type {
        let ct = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match ct.as_str() {
            "application/json" => return Some(Format::Json),
            "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => {
                return Some(Format::MessagePack);
            }
            _ => {}
        }
    }
    let first = body.iter().copied().find(|b| !b.is_ascii_whitespace())?;
    match first {
        b'{' => Some(Format::Json),
        // fixmap, map16, map32
        0x80..=0x8f | 0xde | 0xdf if body[0] == first => Some(Format::MessagePack),
        _ => None,
    }
}

/// Decodes and validates one event body (not the `ts` range rule, which needs a clock: see
/// [`crate::validate::check_ts_range`]).
pub fn decode_event(body: &[u8], content_type: Option<&str>) -> Result<Event, ValidationError> {
    if body.len() > MAX_EVENT_BYTES {
        return Err(ValidationError::new(
            ErrorCode::TooLarge,
            "",
            format!("body is {} bytes, more than the limit of {MAX_EVENT_BYTES}", body.len()),
        ));
    }
    let event = decode_unvalidated(body, content_type).map_err(|err| {
        // A newer producer may send shapes this build cannot read; say so rather than `schema`.
        match probe_version(body, content_type) {
            Some(v) if v > u64::from(SCHEMA_VERSION) => unsupported(v),
            _ => err,
        }
    })?;
    if event.v > SCHEMA_VERSION {
        return Err(unsupported(u64::from(event.v)));
    }
    validate_event(&event)?;
    Ok(event)
}

fn unsupported(v: u64) -> ValidationError {
    ValidationError::new(
        ErrorCode::UnsupportedVersion,
        "v",
        format!("schema version {v} is newer than the supported version {SCHEMA_VERSION}"),
    )
}

/// Decodes an event without validating its values (for trusted streams the services wrote).
pub fn decode_unvalidated(body: &[u8], content_type: Option<&str>) -> Result<Event, ValidationError> {
    let format = detect_format(body, content_type).ok_or_else(|| {
        ValidationError::new(ErrorCode::Decode, "", "body is neither a JSON object nor a MessagePack map")
    })?;
    let decode = |seed: EventSeed| match format {
        Format::Json => from_json_seed(body, seed),
        Format::MessagePack => from_msgpack_seed(body, seed),
    };
    match decode(EventSeed { kind_hint: None }) {
        // `data` came before `kind`: read the kind alone, then decode again knowing it. This
        // keeps unusual field orders correct without buffering `data` generically.
        Err(err) if err.reason.ends_with(DATA_BEFORE_KIND) => {
            let kind = probe_kind(body, format).ok_or(err)?;
            decode(EventSeed { kind_hint: Some(kind) })
        }
        other => other,
    }
}

const DATA_BEFORE_KIND: &str = "data precedes kind";

/// Decodes any value from a JSON body, classifying errors and naming the field.
pub fn from_json<T: de::DeserializeOwned>(body: &[u8]) -> Result<T, ValidationError> {
    from_json_seed(body, std::marker::PhantomData::<T>)
}

fn from_json_seed<'a, S: DeserializeSeed<'a> + Clone>(body: &'a [u8], seed: S) -> Result<S::Value, ValidationError> {
    // The fast path: no path tracking (serde_json checks the UTF-8 of every string it reads).
    // Only a body that fails is decoded again, tracked, to name the field in the error.
    let mut de = serde_json::Deserializer::from_slice(body);
    if let Ok(value) = seed.clone().deserialize(&mut de)
        && de.end().is_ok()
    {
        return Ok(value);
    }
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ValidationError::new(ErrorCode::Decode, "", format!("invalid UTF-8 at byte {}", e.valid_up_to())));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(&mut de, &mut track);
    let value = seed.deserialize(tracked).map_err(|inner| {
        let path = path_of(&track.path());
        let code = match inner.classify() {
            serde_json::error::Category::Data => classify_data_error(&inner.to_string()),
            _ => ErrorCode::Decode,
        };
        ValidationError::new(code, &path, strip_position(&inner.to_string()))
    })?;
    de.end().map_err(|e| ValidationError::new(ErrorCode::Decode, "", e.to_string()))?;
    Ok(value)
}

/// Decodes any value from a MessagePack body, classifying errors and naming the field.
pub fn from_msgpack<T: de::DeserializeOwned>(body: &[u8]) -> Result<T, ValidationError> {
    from_msgpack_seed(body, std::marker::PhantomData::<T>)
}

fn from_msgpack_seed<S: for<'a> DeserializeSeed<'a> + Clone>(
    body: &[u8],
    seed: S,
) -> Result<<S as DeserializeSeed<'static>>::Value, ValidationError> {
    use rmp_serde::decode::Error as E;
    // The fast path without path tracking; a failure is decoded again, tracked, for the error.
    {
        let mut rest = body;
        let mut de = rmp_serde::Deserializer::new(&mut rest);
        de.set_max_depth(MAX_MSGPACK_DEPTH);
        if let Ok(value) = seed.clone().deserialize(&mut de) {
            drop(de);
            if rest.is_empty() {
                return Ok(value);
            }
        }
    }
    // A reader over the slice (not `from_read_ref`) so the unread rest is visible afterwards;
    // it reads declared lengths incrementally, so a hostile length allocates nothing up front.
    let mut rest = body;
    let mut de = rmp_serde::Deserializer::new(&mut rest);
    de.set_max_depth(MAX_MSGPACK_DEPTH);
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(&mut de, &mut track);
    let value = seed.deserialize(tracked).map_err(|inner| {
        let path = path_of(&track.path());
        let code = match &inner {
            E::Syntax(msg) => classify_data_error(msg),
            E::TypeMismatch(_) | E::LengthMismatch(_) => ErrorCode::Schema,
            E::OutOfRange => ErrorCode::Range,
            _ => ErrorCode::Decode,
        };
        ValidationError::new(code, &path, inner.to_string())
    })?;
    drop(de);
    if !rest.is_empty() {
        return Err(ValidationError::new(
            ErrorCode::Decode,
            "",
            format!("{} trailing bytes after the MessagePack map", rest.len()),
        ));
    }
    Ok(value)
}

/// Serde reports a negative number for an unsigned field as an invalid value; that is a range
/// violation in our terms ("counts are non-negative integers"), everything else is `schema`.
fn classify_data_error(msg: &str) -> ErrorCode {
    if msg.starts_with("invalid value: integer `-") { ErrorCode::Range } else { ErrorCode::Schema }
}

fn path_of(path: &serde_path_to_error::Path) -> String {
    let s = path.to_string();
    // `.` is the body itself, `?` a position serde cannot name: no field either way.
    if s == "." || s == "?" { String::new() } else { s }
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// Reads only `v` of a body, ignoring everything else (used to report `unsupported_version`).
fn probe_version(body: &[u8], content_type: Option<&str>) -> Option<u64> {
    #[derive(Deserialize)]
    struct Probe {
        v: u64,
    }
    let probe: Probe = match detect_format(body, content_type)? {
        Format::Json => from_json(body).ok()?,
        Format::MessagePack => from_msgpack(body).ok()?,
    };
    Some(probe.v)
}

/// Reads only `kind` of a body.
fn probe_kind(body: &[u8], format: Format) -> Option<Kind> {
    #[derive(Deserialize)]
    struct Probe {
        kind: Kind,
    }
    // The same depth-limited readers as the main decode: a probe must not recurse deeper.
    let probe: Probe = match format {
        Format::Json => from_json(body).ok()?,
        Format::MessagePack => from_msgpack(body).ok()?,
    };
    Some(probe.kind)
}

/// Encodes any wire message as MessagePack with named fields.
pub fn to_msgpack<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(value)
}

/// Formats a timestamp as the services write it: RFC 3339 in UTC with a `Z`.
pub fn format_ts(ts: &DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Parses an RFC 3339 timestamp with any offset into UTC.
pub fn parse_ts(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(s).map(|d| d.with_timezone(&Utc))
}

/// Serde helpers for timestamps as RFC 3339 strings (`#[serde(with = "modelperf_schema::ts")]`).
pub mod ts {
    use super::*;

    /// Serialises as RFC 3339 UTC.
    pub fn serialize<S: Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_ts(ts))
    }

    /// Deserialises from RFC 3339 with any offset.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        d.deserialize_str(TsVisitor)
    }

    /// The same for optional timestamps.
    pub mod option {
        use super::*;

        /// Serialises as RFC 3339 UTC, or nothing.
        pub fn serialize<S: Serializer>(ts: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
            match ts {
                Some(ts) => s.serialize_some(&format_ts(ts)),
                None => s.serialize_none(),
            }
        }

        /// Deserialises from RFC 3339 with any offset, or null.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
            Option::<Ts>::deserialize(d).map(|o| o.map(|t| t.0))
        }
    }
}

struct Ts(DateTime<Utc>);

impl<'de> Deserialize<'de> for Ts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TsVisitor).map(Ts)
    }
}

struct TsVisitor;

impl Visitor<'_> for TsVisitor {
    type Value = DateTime<Utc>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 timestamp")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        parse_ts(v).map_err(|e| E::custom(format!("`{v}` is not an RFC 3339 timestamp: {e}")))
    }
}

struct TsRef<'a>(&'a DateTime<Utc>);

impl Serialize for TsRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_ts(self.0))
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let optional = [
            self.id.is_some(),
            self.task_id.is_some(),
            self.agent_id.is_some(),
            self.model.is_some(),
            self.task_type.is_some(),
            self.tenant.is_some(),
            self.benchmark.is_some(),
            self.user_id.is_some(),
            self.session_id.is_some(),
            !self.attrs.is_empty(),
            self.sample_rate.is_some(),
            self.cost.is_some(),
            self.received_at.is_some(),
            self.privacy.is_some(),
        ];
        let len = 5 + optional.iter().filter(|present| **present).count();
        let mut m = s.serialize_map(Some(len))?;
        m.serialize_entry("v", &self.v)?;
        if let Some(id) = &self.id {
            m.serialize_entry("id", id)?;
        }
        m.serialize_entry("kind", self.kind().as_str())?;
        m.serialize_entry("ts", &TsRef(&self.ts))?;
        m.serialize_entry("source", &self.source)?;
        macro_rules! opt {
            ($($field:ident),*) => {$(
                if let Some(value) = &self.$field {
                    m.serialize_entry(stringify!($field), value)?;
                }
            )*};
        }
        opt!(task_id, agent_id, model, task_type, tenant, benchmark, user_id, session_id);
        if !self.attrs.is_empty() {
            m.serialize_entry("attrs", &self.attrs)?;
        }
        match &self.data {
            Data::TaskStarted(d) => m.serialize_entry("data", d)?,
            Data::TaskCompleted(d) => m.serialize_entry("data", d)?,
            Data::RoutingDecision(d) => m.serialize_entry("data", d)?,
            Data::Judgment(d) => m.serialize_entry("data", d)?,
            Data::Minimality(d) => m.serialize_entry("data", d)?,
            Data::ThinkingBudget(d) => m.serialize_entry("data", d)?,
            Data::Validation(d) => m.serialize_entry("data", d)?,
            Data::AgentStatus(d) => m.serialize_entry("data", d)?,
            Data::Custom(d) => m.serialize_entry("data", d)?,
        }
        opt!(sample_rate, cost);
        if let Some(at) = &self.received_at {
            m.serialize_entry("received_at", &TsRef(at))?;
        }
        opt!(privacy);
        m.end()
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    V,
    Id,
    Kind,
    Ts,
    Source,
    TaskId,
    AgentId,
    Model,
    TaskType,
    Tenant,
    Benchmark,
    UserId,
    SessionId,
    Attrs,
    Data,
    SampleRate,
    Cost,
    ReceivedAt,
    Privacy,
    #[serde(other)]
    Other,
}

/// Deserialises the `data` of a known kind straight into its type.
struct DataSeed(Kind);

impl<'de> DeserializeSeed<'de> for DataSeed {
    type Value = Data;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Data, D::Error> {
        Ok(match self.0 {
            Kind::TaskStarted => Data::TaskStarted(Deserialize::deserialize(d)?),
            Kind::TaskCompleted => Data::TaskCompleted(Deserialize::deserialize(d)?),
            Kind::RoutingDecision => Data::RoutingDecision(Deserialize::deserialize(d)?),
            Kind::Judgment => Data::Judgment(Deserialize::deserialize(d)?),
            Kind::Minimality => Data::Minimality(Deserialize::deserialize(d)?),
            Kind::ThinkingBudget => Data::ThinkingBudget(Deserialize::deserialize(d)?),
            Kind::Validation => Data::Validation(Deserialize::deserialize(d)?),
            Kind::AgentStatus => Data::AgentStatus(Deserialize::deserialize(d)?),
            Kind::Custom => Data::Custom(Deserialize::deserialize(d)?),
        })
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        EventSeed { kind_hint: None }.deserialize(d)
    }
}

/// Decodes an event; `kind_hint` is the kind read beforehand when `data` precedes `kind`.
#[derive(Clone, Copy)]
struct EventSeed {
    kind_hint: Option<Kind>,
}

impl<'de> DeserializeSeed<'de> for EventSeed {
    type Value = Event;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Event, D::Error> {
        d.deserialize_map(EventVisitor { kind_hint: self.kind_hint })
    }
}

struct EventVisitor {
    kind_hint: Option<Kind>,
}

macro_rules! set_once {
    ($slot:ident, $name:literal, $value:expr) => {{
        if $slot.is_some() {
            return Err(de::Error::duplicate_field($name));
        }
        $slot = Some($value);
    }};
}

impl<'de> Visitor<'de> for EventVisitor {
    type Value = Event;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event, A::Error> {
        let (mut v, mut id, mut kind, mut ts, mut source) = (None, None, None, None, None);
        let (mut task_id, mut agent_id, mut model, mut task_type) = (None, None, None, None);
        let (mut tenant, mut benchmark, mut user_id, mut session_id) = (None, None, None, None);
        let (mut attrs, mut data, mut data_skipped) = (None, None, false);
        let (mut sample_rate, mut cost, mut received_at, mut privacy) = (None, None, None, None);
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::V => set_once!(v, "v", map.next_value::<u32>()?),
                Field::Id => set_once!(id, "id", map.next_value::<Option<String>>()?),
                Field::Kind => set_once!(kind, "kind", map.next_value::<Kind>()?),
                Field::Ts => set_once!(ts, "ts", map.next_value::<Ts>()?.0),
                Field::Source => set_once!(source, "source", map.next_value::<String>()?),
                Field::TaskId => set_once!(task_id, "task_id", map.next_value()?),
                Field::AgentId => set_once!(agent_id, "agent_id", map.next_value()?),
                Field::Model => set_once!(model, "model", map.next_value()?),
                Field::TaskType => set_once!(task_type, "task_type", map.next_value()?),
                Field::Tenant => set_once!(tenant, "tenant", map.next_value()?),
                Field::Benchmark => set_once!(benchmark, "benchmark", map.next_value()?),
                Field::UserId => set_once!(user_id, "user_id", map.next_value()?),
                Field::SessionId => set_once!(session_id, "session_id", map.next_value()?),
                Field::Attrs => set_once!(attrs, "attrs", map.next_value::<Option<_>>()?),
                Field::Data => {
                    if data.is_some() || data_skipped {
                        return Err(de::Error::duplicate_field("data"));
                    }
                    match kind.or(self.kind_hint) {
                        Some(k) => data = Some(map.next_value_seed(DataSeed(k))?),
                        // Unknown kind so far: skip, and let the caller decode again.
                        None => {
                            map.next_value::<IgnoredAny>()?;
                            data_skipped = true;
                        }
                    }
                }
                Field::SampleRate => set_once!(sample_rate, "sample_rate", map.next_value()?),
                Field::Cost => set_once!(cost, "cost", map.next_value()?),
                Field::ReceivedAt => {
                    set_once!(received_at, "received_at", map.next_value::<Option<Ts>>()?)
                }
                Field::Privacy => set_once!(privacy, "privacy", map.next_value()?),
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let v = v.ok_or_else(|| de::Error::missing_field("v"))?;
        let kind = kind.ok_or_else(|| de::Error::missing_field("kind"))?;
        if self.kind_hint.is_some_and(|hint| hint != kind) {
            return Err(de::Error::custom("kind changed between reads"));
        }
        let data = match data {
            Some(data) => data,
            None if data_skipped => return Err(de::Error::custom(DATA_BEFORE_KIND)),
            None => return Err(de::Error::missing_field("data")),
        };
        Ok(Event {
            v,
            id: id.flatten(),
            ts: ts.ok_or_else(|| de::Error::missing_field("ts"))?,
            source: source.ok_or_else(|| de::Error::missing_field("source"))?,
            task_id: task_id.flatten(),
            agent_id: agent_id.flatten(),
            model: model.flatten(),
            task_type: task_type.flatten(),
            tenant: tenant.flatten(),
            benchmark: benchmark.flatten(),
            user_id: user_id.flatten(),
            session_id: session_id.flatten(),
            attrs: attrs.flatten().unwrap_or_default(),
            data,
            sample_rate: sample_rate.flatten(),
            cost: cost.flatten(),
            received_at: received_at.flatten().map(|t| t.0),
            privacy: privacy.flatten(),
        })
    }
}
