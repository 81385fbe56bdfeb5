//! The two legacy shapes of the platform's TypeScript tracker, mapped to v1 (table and examples
//! in `docs/legacy.md`).
//!
//! - DataCollector events `{id, type, timestamp, agentId?, taskId?, metrics: {latency, accuracy,
//!   resources, compliance, cost, reliability}, context?}` become `task_completed`: the latency
//!   is the latency, success is `reliability.successRate >= 0.5`, and the rates and scores the
//!   v1 completion has no field for are kept in `attrs` (`legacy_*`). They carry no tokens, so
//!   their cost is `unknown_tokens`; the tracker's own cost estimate is kept as
//!   `attrs.legacy_cost_usd`.
//! - Tracker events `{type, timestamp, data}` with a kebab-case type naming a v1 kind
//!   (`task-completed` → `task_completed`): the camelCase keys of `data` become snake_case, and
//!   `taskId`, `agentId`, `model`, `taskType`, `tenant`, `userId`, `sessionId` move to the
//!   envelope.
//!
//! Anything else is `legacy_unmapped`, with the reason.

use modelperf_schema::{ErrorCode, Event, Kind, ValidationError};
use serde_json::{Map, Value, json};

/// Source of mapped DataCollector events.
pub const SOURCE_DATA_COLLECTOR: &str = "legacy.data_collector";
/// Source of mapped tracker events.
pub const SOURCE_TRACKER: &str = "legacy.tracker";

/// Maps one legacy body to a validated v1 event (id rules and the `ts` range are applied by the
/// caller, as for any event).
pub fn map(body: &[u8]) -> Result<Event, ValidationError> {
    if body.len() > modelperf_schema::MAX_EVENT_BYTES {
        return Err(ValidationError::new(
            ErrorCode::TooLarge,
            "",
            format!("body is {} bytes, more than the limit of {}", body.len(), modelperf_schema::MAX_EVENT_BYTES),
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ValidationError::new(ErrorCode::Decode, "", format!("legacy events are JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(unmapped("", "a legacy event is a JSON object"));
    };
    let v1 = if obj.get("metrics").is_some_and(Value::is_object) {
        from_data_collector(&obj)?
    } else if obj.get("data").is_some_and(Value::is_object) {
        from_tracker(obj)?
    } else {
        return Err(unmapped("", "neither a DataCollector event (with metrics) nor a tracker event (with data)"));
    };
    let bytes = serde_json::to_vec(&v1).map_err(|e| unmapped("", format!("cannot re-encode: {e}")))?;
    modelperf_schema::decode_event(&bytes, Some("application/json")).map_err(|e| match e.code {
        // A mapped event that is still out of range is bad input, not an unmappable shape.
        ErrorCode::Range => e,
        _ => unmapped(&e.field, e.reason),
    })
}

fn unmapped(field: &str, reason: impl Into<String>) -> ValidationError {
    ValidationError::new(ErrorCode::LegacyUnmapped, field, reason)
}

fn from_data_collector(obj: &Map<String, Value>) -> Result<Value, ValidationError> {
    let metrics = &obj["metrics"];
    let latency =
        metrics.get("latency").and_then(Value::as_f64).ok_or_else(|| unmapped("metrics.latency", "missing number"))?;
    let reliability = metrics.get("reliability");
    let success_rate = match reliability {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::Object(r)) => r.get("successRate").and_then(Value::as_f64),
        _ => None,
    }
    .ok_or_else(|| unmapped("metrics.reliability.successRate", "missing number: success cannot be decided"))?;
    let mut data = Map::new();
    data.insert("latency_ms".into(), json!(latency));
    data.insert("success".into(), json!(success_rate >= 0.5));
    if let Some(r) = reliability.and_then(|r| r.get("retries")) {
        data.insert("retries".into(), r.clone());
    }
    if let Some(res) = metrics.get("resources").and_then(Value::as_object) {
        for (from, to) in [("cpuMs", "cpu_ms"), ("memoryMb", "memory_mb")] {
            if let Some(v) = res.get(from) {
                data.insert(to.into(), v.clone());
            }
        }
    }
    let mut attrs = Map::new();
    attrs.insert("legacy_success_rate".into(), json!(success_rate));
    for (from, to) in
        [("accuracy", "legacy_accuracy"), ("compliance", "legacy_compliance"), ("cost", "legacy_cost_usd")]
    {
        if let Some(v) = metrics.get(from).filter(|v| v.is_number()) {
            attrs.insert(to.into(), v.clone());
        }
    }
    if let Some(t) = obj.get("type").and_then(Value::as_str) {
        attrs.insert("legacy_type".into(), json!(t));
    }
    let mut event = Map::new();
    event.insert("v".into(), json!(1));
    event.insert("kind".into(), json!(Kind::TaskCompleted.as_str()));
    event.insert("ts".into(), timestamp(obj.get("timestamp"))?);
    event.insert("source".into(), json!(SOURCE_DATA_COLLECTOR));
    if let Some(id) = obj.get("id").and_then(Value::as_str) {
        event.insert("id".into(), json!(legacy_id(id)));
    }
    copy(obj, "taskId", &mut event, "task_id");
    copy(obj, "agentId", &mut event, "agent_id");
    if let Some(ctx) = obj.get("context").and_then(Value::as_object) {
        copy(ctx, "model", &mut event, "model");
        copy(ctx, "taskType", &mut event, "task_type");
        copy(ctx, "tenant", &mut event, "tenant");
        copy(ctx, "userId", &mut event, "user_id");
        copy(ctx, "sessionId", &mut event, "session_id");
    }
    event.insert("attrs".into(), Value::Object(attrs));
    event.insert("data".into(), Value::Object(data));
    Ok(Value::Object(event))
}

/// Envelope fields a tracker event carries inside `data`.
const LIFTED: [(&str, &str); 7] = [
    ("taskId", "task_id"),
    ("agentId", "agent_id"),
    ("model", "model"),
    ("taskType", "task_type"),
    ("tenant", "tenant"),
    ("userId", "user_id"),
    ("sessionId", "session_id"),
];

/// Maps whose keys are names chosen by the producer, kept as they are.
const VERBATIM_MAPS: [&str; 3] = ["features", "criteria", "metrics"];

fn from_tracker(mut obj: Map<String, Value>) -> Result<Value, ValidationError> {
    let ty = obj.get("type").and_then(Value::as_str).ok_or_else(|| unmapped("type", "missing string"))?;
    let kind = Kind::parse(&ty.replace('-', "_"))
        .ok_or_else(|| unmapped("type", format!("tracker type {ty:?} has no v1 kind")))?;
    let ts = timestamp(obj.get("timestamp"))?;
    let Some(Value::Object(raw)) = obj.remove("data") else {
        return Err(unmapped("data", "missing object"));
    };
    let mut event = Map::new();
    event.insert("v".into(), json!(1));
    event.insert("kind".into(), json!(kind.as_str()));
    event.insert("ts".into(), ts);
    event.insert("source".into(), json!(SOURCE_TRACKER));
    if let Some(id) = obj.get("id").and_then(Value::as_str) {
        event.insert("id".into(), json!(legacy_id(id)));
    }
    let mut data = Map::new();
    for (key, value) in raw {
        if let Some((_, to)) = LIFTED.iter().find(|(from, _)| *from == key) {
            event.insert((*to).into(), value);
            continue;
        }
        let key = snake_case(&key);
        let value = if VERBATIM_MAPS.contains(&key.as_str()) { value } else { snake_keys(value) };
        data.insert(key, value);
    }
    event.insert("data".into(), Value::Object(data));
    Ok(Value::Object(event))
}

fn copy(from: &Map<String, Value>, key: &str, to: &mut Map<String, Value>, as_key: &str) {
    if let Some(v) = from.get(key).filter(|v| !v.is_null()) {
        to.insert(as_key.into(), v.clone());
    }
}

/// RFC 3339 strings pass; epoch milliseconds (what `Date.now()` gives) become RFC 3339.
fn timestamp(v: Option<&Value>) -> Result<Value, ValidationError> {
    match v {
        Some(Value::String(s)) => Ok(json!(s)),
        Some(Value::Number(n)) => {
            let ms = n.as_f64().filter(|m| m.is_finite()).ok_or_else(|| unmapped("timestamp", "not finite"))?;
            let ts = chrono::DateTime::from_timestamp_millis(ms as i64)
                .ok_or_else(|| unmapped("timestamp", format!("{ms} is not a time in epoch milliseconds")))?;
            Ok(json!(modelperf_schema::format_ts(&ts)))
        }
        _ => Err(unmapped("timestamp", "missing: an RFC 3339 string or epoch milliseconds")),
    }
}

/// Legacy ids are free-form; one that is not a valid v1 id becomes a UUIDv5 of itself.
fn legacy_id(id: &str) -> String {
    if modelperf_schema::validate::is_valid_id(id) {
        id.to_owned()
    } else {
        modelperf_schema::id::derive_id(Some(&format!("legacy:{id}")), "", 0)
    }
}

fn snake_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for (i, c) in key.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn snake_keys(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let k = snake_case(&k);
                    let v = if VERBATIM_MAPS.contains(&k.as_str()) { v } else { snake_keys(v) };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(snake_keys).collect()),
        other => other,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use modelperf_schema::{AttrValue, Data};

    #[test]
    fn data_collector_events_become_completions() {
        let body = br#"{"id":"dc-1","type":"performance","timestamp":"2026-11-27T10:00:00.000Z","agentId":"agent-7",
            "taskId":"task-42","metrics":{"latency":1234,"accuracy":0.92,"resources":{"cpuMs":120,"memoryMb":256},
            "compliance":0.98,"cost":0.0031,"reliability":{"successRate":0.75,"retries":1}},
            "context":{"model":"openai/gpt-4o","taskType":"code_edit"}}"#;
        let e = map(body).unwrap();
        assert_eq!(e.id.as_deref(), Some("dc-1"));
        assert_eq!(e.source, SOURCE_DATA_COLLECTOR);
        assert_eq!(e.task_id.as_deref(), Some("task-42"));
        assert_eq!(e.agent_id.as_deref(), Some("agent-7"));
        assert_eq!(e.task_type.as_deref(), Some("code_edit"));
        assert_eq!(e.model.as_ref().unwrap().name, "gpt-4o");
        let Data::TaskCompleted(c) = &e.data else { panic!("{:?}", e.data) };
        assert_eq!(c.latency_ms, 1234.0);
        assert!(c.success);
        assert_eq!(c.retries, Some(1));
        assert_eq!(c.cpu_ms, Some(120.0));
        assert!(c.tokens.is_none());
        assert_eq!(e.attrs["legacy_success_rate"], AttrValue::Float(0.75));
        assert_eq!(e.attrs["legacy_cost_usd"], AttrValue::Float(0.0031));
        assert_eq!(e.attrs["legacy_type"], AttrValue::Text("performance".into()));
    }

    #[test]
    fn a_success_rate_below_one_half_is_a_failure_and_epoch_millis_are_times() {
        let body = br#"{"id":"x y","type":"performance","timestamp":1795000000000,
            "metrics":{"latency":5,"reliability":0.49}}"#;
        let e = map(body).unwrap();
        let Data::TaskCompleted(c) = &e.data else { panic!() };
        assert!(!c.success);
        assert_eq!(modelperf_schema::format_ts(&e.ts), "2026-11-18T11:06:40Z");
        // "x y" is not a valid id: replaced by a stable UUIDv5.
        assert_eq!(e.id.as_deref().unwrap().len(), 36);
        assert_eq!(e.id, map(body).unwrap().id);
    }

    #[test]
    fn tracker_events_map_by_type() {
        let body = br#"{"type":"task-completed","timestamp":"2026-11-27T10:00:00Z","data":{"taskId":"t-1",
            "agentId":"agent-7","model":"anthropic/claude-sonnet-4","taskType":"code_edit","latencyMs":2100,
            "success":true,"tokens":{"input":1200,"output":300,"cachedInput":200}}}"#;
        let e = map(body).unwrap();
        assert_eq!(e.source, SOURCE_TRACKER);
        assert_eq!(e.task_id.as_deref(), Some("t-1"));
        let Data::TaskCompleted(c) = &e.data else { panic!() };
        assert_eq!(c.latency_ms, 2100.0);
        assert_eq!(c.tokens.as_ref().unwrap().cached_input, Some(200));
        let judged = br#"{"type":"judgment","timestamp":"2026-11-27T10:00:00Z","data":{"model":"openai/gpt-4o",
            "judgeModel":"openai/gpt-4.1","score":0.7,"criteria":{"correctStyle":0.5}}}"#;
        let e = map(judged).unwrap();
        let Data::Judgment(j) = &e.data else { panic!() };
        assert!(j.criteria.contains_key("correctStyle"), "producer-chosen names are kept");
    }

    #[test]
    fn unmappable_input_is_classified() {
        let code = |b: &[u8]| map(b).unwrap_err().code;
        assert_eq!(
            code(br#"{"type":"cache-hit","timestamp":"2026-11-27T10:00:00Z","data":{}}"#),
            ErrorCode::LegacyUnmapped
        );
        assert_eq!(
            code(br#"{"type":"performance","timestamp":"2026-11-27T10:00:00Z","metrics":{}}"#),
            ErrorCode::LegacyUnmapped
        );
        assert_eq!(code(br#"{"type":"task-started","data":{}}"#), ErrorCode::LegacyUnmapped);
        assert_eq!(code(br#"[1,2]"#), ErrorCode::LegacyUnmapped);
        assert_eq!(code(b"{not json"), ErrorCode::Decode);
        assert_eq!(
            code(br#"{"type":"task-completed","timestamp":"2026-11-27T10:00:00Z","data":{"latencyMs":-1,"success":true}}"#),
            ErrorCode::Range
        );
        let e = map(br#"{"type":"task-completed","timestamp":"2026-11-27T10:00:00Z","data":{"success":true}}"#)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::LegacyUnmapped);
        assert!(e.reason.contains("latency_ms"), "{}", e.reason);
    }
}
