//! Points and their line protocol, built with InfluxData's `influxdb-line-protocol` crate.
//!
//! The rules of the contract are applied here, once, so every writer gets them:
//! - tags are sorted by key (InfluxDB's canonical order); a tag's key and value lose
//!   backslashes and line breaks (`\`, LF, CR), and a tag left empty is omitted, like a missing
//!   dimension; commas, equals signs and spaces are escaped by the builder; the measurement
//!   and field keys lose backslashes and line breaks too (string field *values* keep them);
//! - fields are integers (`i` suffix), floats, strings or booleans; a non-finite float is never
//!   written: the field is dropped, and a point left without fields is dropped, both counted;
//! - the timestamp is in whole seconds, sent with `precision=s` (windows start on whole
//!   seconds; both write APIs accept `s`).

use std::collections::BTreeMap;

use influxdb_line_protocol::LineProtocolBuilder;

/// The precision of every timestamp the sink writes (`precision=` of both write APIs).
pub const PRECISION: &str = "s";

/// The typed value of a field.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// Signed integer, written with the `i` suffix.
    Integer(i64),
    /// Float; NaN and ±infinity are never written.
    Float(f64),
    /// String, quoted; `"` and `\` are escaped, anything else (line breaks included) is kept.
    String(String),
    /// Boolean.
    Boolean(bool),
}

impl From<i64> for FieldValue {
    fn from(v: i64) -> Self {
        FieldValue::Integer(v)
    }
}

impl From<f64> for FieldValue {
    fn from(v: f64) -> Self {
        FieldValue::Float(v)
    }
}

impl From<bool> for FieldValue {
    fn from(v: bool) -> Self {
        FieldValue::Boolean(v)
    }
}

impl From<String> for FieldValue {
    fn from(v: String) -> Self {
        FieldValue::String(v)
    }
}

impl From<&str> for FieldValue {
    fn from(v: &str) -> Self {
        FieldValue::String(v.to_owned())
    }
}

/// One point: measurement, tags, fields and a timestamp in seconds since the Unix epoch.
///
/// ```
/// use modelperf_influx::Point;
///
/// let point = Point::new("model_perf", 1_700_000_040)
///     .tag("window", "1m")
///     .tag("model", "gpt 4o, mini")
///     .tag_opt("tenant", None::<&str>)
///     .int("count", 12)
///     .float("latency_p50_ms", 812.5)
///     .float("quality_mean", f64::NAN); // never written
/// assert_eq!(
///     point.to_line().unwrap(),
///     "model_perf,model=gpt\\ 4o\\,\\ mini,window=1m count=12i,latency_p50_ms=812.5 1700000040\n"
/// );
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    measurement: String,
    tags: BTreeMap<String, String>,
    fields: BTreeMap<String, FieldValue>,
    timestamp: i64,
}

impl Point {
    /// A point of `measurement` at `timestamp` (seconds since the Unix epoch). The
    /// measurement loses backslashes and line breaks, like tags.
    pub fn new(measurement: impl AsRef<str>, timestamp: i64) -> Self {
        Self { measurement: clean(measurement.as_ref()), tags: BTreeMap::new(), fields: BTreeMap::new(), timestamp }
    }

    /// Sets a tag (a later value for the same key wins). Backslashes and line breaks are
    /// removed from key and value; a tag whose key or value is then empty is omitted.
    pub fn tag(mut self, key: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        let (key, value) = (clean(key.as_ref()), clean(value.as_ref()));
        if !key.is_empty() && !value.is_empty() {
            self.tags.insert(key, value);
        }
        self
    }

    /// Sets a tag when there is a value: a missing dimension is omitted.
    pub fn tag_opt(self, key: impl AsRef<str>, value: Option<impl AsRef<str>>) -> Self {
        match value {
            Some(value) => self.tag(key, value),
            None => self,
        }
    }

    /// Sets a field (a later value for the same key wins). The key loses backslashes and line
    /// breaks; a field whose key is then empty is dropped (and counted) on encoding.
    pub fn field(mut self, key: impl AsRef<str>, value: impl Into<FieldValue>) -> Self {
        self.fields.insert(clean(key.as_ref()), value.into());
        self
    }

    /// Sets an integer field (`12i`).
    pub fn int(self, key: impl AsRef<str>, value: i64) -> Self {
        self.field(key, FieldValue::Integer(value))
    }

    /// Sets a float field; a non-finite value is dropped when the point is encoded.
    pub fn float(self, key: impl AsRef<str>, value: f64) -> Self {
        self.field(key, FieldValue::Float(value))
    }

    /// Sets a string field.
    pub fn string(self, key: impl AsRef<str>, value: impl Into<String>) -> Self {
        self.field(key, FieldValue::String(value.into()))
    }

    /// Sets a boolean field.
    pub fn boolean(self, key: impl AsRef<str>, value: bool) -> Self {
        self.field(key, FieldValue::Boolean(value))
    }

    /// Sets a field when there is a value: a field without data is omitted.
    pub fn field_opt(self, key: impl AsRef<str>, value: Option<impl Into<FieldValue>>) -> Self {
        match value {
            Some(value) => self.field(key, value),
            None => self,
        }
    }

    /// The measurement.
    pub fn measurement(&self) -> &str {
        &self.measurement
    }

    /// The tags as they will be written (cleaned, sorted).
    pub fn tags(&self) -> &BTreeMap<String, String> {
        &self.tags
    }

    /// The fields, sorted by key (non-finite floats included: they are dropped on encoding).
    pub fn fields(&self) -> &BTreeMap<String, FieldValue> {
        &self.fields
    }

    /// The timestamp in seconds since the Unix epoch.
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }

    /// This point's line (ending in `\n`), or `None` when it has nothing to write.
    pub fn to_line(&self) -> Option<String> {
        let mut buf = Vec::new();
        self.encode_into(&mut buf, &mut 0);
        if buf.is_empty() { None } else { String::from_utf8(buf).ok() }
    }

    /// Appends this point's line to `buf` and returns whether it wrote one; dropped fields are
    /// added to `dropped_fields`.
    fn encode_into(&self, buf: &mut Vec<u8>, dropped_fields: &mut usize) -> bool {
        if self.measurement.is_empty() {
            return false;
        }
        let writable =
            |(k, v): &(&String, &FieldValue)| !k.is_empty() && !matches!(v, FieldValue::Float(f) if !f.is_finite());
        let (fields, dropped): (Vec<_>, Vec<_>) = self.fields.iter().partition(writable);
        *dropped_fields += dropped.len();
        let Some(((first_key, first_value), rest)) = fields.split_first() else { return false };
        let mut line = LineProtocolBuilder::new_with(std::mem::take(buf)).measurement(&self.measurement);
        for (key, value) in &self.tags {
            line = line.tag(key, value);
        }
        let mut line = add_field_first(line, first_key, first_value);
        for (key, value) in rest {
            line = add_field(line, key, value);
        }
        *buf = line.timestamp(self.timestamp).close_line().build();
        true
    }
}

type AfterMeasurement = LineProtocolBuilder<Vec<u8>, influxdb_line_protocol::builder::AfterMeasurement>;
type AfterField = LineProtocolBuilder<Vec<u8>, influxdb_line_protocol::builder::AfterField>;

fn add_field_first(line: AfterMeasurement, key: &str, value: &FieldValue) -> AfterField {
    match value {
        FieldValue::Integer(v) => line.field(key, *v),
        FieldValue::Float(v) => line.field(key, *v),
        FieldValue::String(v) => line.field(key, v.as_str()),
        FieldValue::Boolean(v) => line.field(key, *v),
    }
}

fn add_field(line: AfterField, key: &str, value: &FieldValue) -> AfterField {
    match value {
        FieldValue::Integer(v) => line.field(key, *v),
        FieldValue::Float(v) => line.field(key, *v),
        FieldValue::String(v) => line.field(key, v.as_str()),
        FieldValue::Boolean(v) => line.field(key, *v),
    }
}

/// A name or tag value without backslashes and line breaks (the contract's rule for tags:
/// InfluxDB 1.x does not unescape `\\` there, and a line break would end the line; applied to
/// the measurement and field keys too, for the same reasons).
fn clean(s: &str) -> String {
    s.chars().filter(|c| !matches!(c, '\\' | '\n' | '\r')).collect()
}

/// Points encoded as line protocol, split into request bodies of at most `batch_size` lines.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Encoded {
    /// Request bodies, each a run of complete lines.
    pub batches: Vec<Vec<u8>>,
    /// Lines written (points with at least one writable field).
    pub lines: usize,
    /// Points dropped because no field could be written (all non-finite, or none at all).
    pub dropped_points: usize,
    /// Fields dropped because they were non-finite floats (or had an empty key).
    pub dropped_fields: usize,
}

/// Encodes `points` into bodies of at most `batch_size` lines (a `batch_size` of 0 counts as 1).
pub fn encode(points: &[Point], batch_size: usize) -> Encoded {
    let batch_size = batch_size.max(1);
    let mut out = Encoded::default();
    let mut body = Vec::new();
    let mut in_body = 0;
    for point in points {
        if !point.encode_into(&mut body, &mut out.dropped_fields) {
            out.dropped_points += 1;
            continue;
        }
        out.lines += 1;
        in_body += 1;
        if in_body == batch_size {
            out.batches.push(std::mem::take(&mut body));
            in_body = 0;
        }
    }
    if !body.is_empty() {
        out.batches.push(body);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn field_types_and_sorted_tags() {
        let p = Point::new("model_perf", 60)
            .tag("window", "1m")
            .tag("kind", "task_completed")
            .int("count", -3)
            .float("cost_usd", 0.25)
            .float("weighted_count", 2.0)
            .string("note", "say \"hi\" \\ bye")
            .boolean("ok", true);
        assert_eq!(
            p.to_line().unwrap(),
            "model_perf,kind=task_completed,window=1m cost_usd=0.25,count=-3i,note=\"say \\\"hi\\\" \\\\ bye\",ok=true,weighted_count=2 60\n"
        );
    }

    #[test]
    fn tags_lose_backslashes_and_line_breaks() {
        let p = Point::new("m", 0)
            .tag("t", "a\\b\nc\r d,e=f")
            .tag("gone", "\\\n")
            .tag_opt("none", None::<String>)
            .int("v", 1);
        assert_eq!(p.tags().len(), 1);
        assert_eq!(p.to_line().unwrap(), "m,t=abc\\ d\\,e\\=f v=1i 0\n");
    }

    #[test]
    fn names_lose_backslashes_and_line_breaks() {
        let p = Point::new("model\n_perf\n", 0).int("co\nunt", 1).int("\\", 2).string("s", "a\\b\nc");
        let e = encode(&[p], 10);
        assert_eq!(e.batches, vec![b"model_perf count=1i,s=\"a\\\\b\nc\" 0\n".to_vec()]);
        assert_eq!(e.dropped_fields, 1, "the field whose key is left empty");
    }

    #[test]
    fn non_finite_floats_are_never_written() {
        let points = [
            Point::new("m", 1).float("a", f64::NAN).float("b", 1.5).float("c", f64::INFINITY),
            Point::new("m", 2).float("a", f64::NEG_INFINITY),
            Point::new("m", 3),
            Point::new("", 4).int("a", 1),
        ];
        let e = encode(&points, 10);
        assert_eq!(e.batches, vec![b"m b=1.5 1\n".to_vec()]);
        assert_eq!((e.lines, e.dropped_points, e.dropped_fields), (1, 3, 3));
    }

    #[test]
    fn batches_hold_whole_lines() {
        let points: Vec<_> = (0..5).map(|i| Point::new("m", i).string("s", "two\nlines")).collect();
        let e = encode(&points, 2);
        assert_eq!(e.batches.len(), 3);
        assert_eq!(e.lines, 5);
        assert_eq!(e.batches[2], b"m s=\"two\nlines\" 4\n".to_vec());
    }

    #[test]
    fn floats_keep_their_value() {
        for v in [0.1, 1e300, -1e-300, 123_456_789.123_456_78, f64::MAX, f64::MIN_POSITIVE, -0.0] {
            let line = Point::new("m", 0).float("v", v).to_line().unwrap();
            let text = line.strip_prefix("m v=").unwrap().strip_suffix(" 0\n").unwrap();
            assert_eq!(text.parse::<f64>().unwrap().to_bits(), v.to_bits(), "{line}");
        }
    }
}
