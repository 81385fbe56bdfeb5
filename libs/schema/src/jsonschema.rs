//! JSON Schema of every wire message, generated from the Rust types into `schemas/`.

use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings};

use crate::messages::*;
use crate::{Event, ValidationErrorDoc};

fn schema_of<T: JsonSchema>() -> Schema {
    let settings = SchemaSettings::draft2020_12();
    SchemaGenerator::new(settings).into_root_schema_for::<T>()
}

/// Every wire message: file stem under `schemas/` and its schema.
pub fn all_schemas() -> Vec<(&'static str, Schema)> {
    vec![
        ("event.v1", schema_of::<Event>()),
        ("metrics.v1", schema_of::<WindowMetrics>()),
        ("partial.v1", schema_of::<Partial>()),
        ("anomaly.v1", schema_of::<Anomaly>()),
        ("insight.v1", schema_of::<Insight>()),
        ("alert.v1", schema_of::<Alert>()),
        ("report.v1", schema_of::<ReportAnnouncement>()),
        ("batch.v1", schema_of::<Batch>()),
        ("heartbeat.v1", schema_of::<Heartbeat>()),
        ("dlq.v1", schema_of::<ValidationErrorDoc>()),
    ]
}

/// The file text of a schema as checked in (pretty JSON, trailing newline).
pub fn render(schema: &Schema) -> String {
    let mut s = serde_json::to_string_pretty(schema).unwrap_or_default();
    s.push('\n');
    s
}
