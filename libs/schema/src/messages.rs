//! The other wire messages: window metrics, signals, alerts, report announcements, RL batches
//! and heartbeats. All are MessagePack with named fields on their streams.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::codec::ts;
use crate::model::ModelRef;

/// A finalised window of one series (`perf.metrics.<window>`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WindowMetrics {
    /// The window length as configured, e.g. `1m`.
    pub window: String,
    /// Window start (inclusive, UTC).
    #[serde(with = "ts")]
    #[schemars(with = "String")]
    pub start: DateTime<Utc>,
    /// Window end (exclusive, UTC).
    #[serde(with = "ts")]
    #[schemars(with = "String")]
    pub end: DateTime<Utc>,
    /// 0 for the first write; +1 for each rewrite by a late event or a re-aggregation.
    pub revision: u32,
    /// The series: `kind`, `provider`, `model`, `model_version`, `task_type`, `tenant` (those
    /// present).
    pub dims: BTreeMap<String, String>,
    /// Events seen (unweighted).
    pub count: u64,
    /// Events represented: each event weighted by `1/sample_rate`.
    pub weighted_count: f64,
    /// Successful completions (unweighted).
    #[serde(default)]
    pub success: u64,
    /// Failed completions (unweighted).
    #[serde(default)]
    pub failure: u64,
    /// Weighted success rate of completions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
    /// Weighted latency quantiles and moments from the sketch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub latency_p90_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub latency_p95_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub latency_p99_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub latency_max_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub latency_mean_ms: Option<f64>,
    /// Prompt tokens (weighted, rounded).
    #[serde(default)]
    pub tokens_input: u64,
    /// Completion tokens (weighted, rounded).
    #[serde(default)]
    pub tokens_output: u64,
    /// Weighted cost of priced events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// Events that needed a price and had none (`unpriced` or `unknown_tokens`).
    #[serde(default)]
    pub unpriced: u64,
    /// Judgment quality: mean, sum of squared deviations, and count (Welford, mergeable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub quality_m2: Option<f64>,
    #[serde(default)]
    #[allow(missing_docs)]
    pub quality_n: u64,
    /// Kind-specific sums (documented in `docs/queries.md`), e.g. `retries`, `violations`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sums: BTreeMap<String, f64>,
    /// The latency DDSketch in the DataDog binary encoding (relative accuracy 1 %).
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<u8>")]
    pub latency_sketch: Vec<u8>,
}

/// What one series accumulated in one window: every field merges exactly (sums, the sketch's
/// bins, `{mean, m2, n}` by Chan's formula), so partials of several partitions, or of several
/// `1m` windows, merge into the state of their union.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WindowState {
    /// Events seen.
    pub count: u64,
    /// Events represented, each weighted by `1/sample_rate`.
    pub weighted_count: f64,
    /// Successful and failed completions (unweighted).
    #[serde(default)]
    pub success: u64,
    #[serde(default)]
    #[allow(missing_docs)]
    pub failure: u64,
    /// Weighted successful completions and weighted completions.
    #[serde(default)]
    pub success_weighted: f64,
    #[serde(default)]
    #[allow(missing_docs)]
    pub completions_weighted: f64,
    /// The weighted latency DDSketch (DataDog encoding, relative accuracy 1 %).
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<u8>")]
    pub latency_sketch: Vec<u8>,
    /// Exact latency extremes and weighted sum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[allow(missing_docs)]
    pub latency_max: Option<f64>,
    #[serde(default)]
    #[allow(missing_docs)]
    pub latency_sum: f64,
    /// Weighted token sums.
    #[serde(default)]
    pub tokens_input: f64,
    #[serde(default)]
    #[allow(missing_docs)]
    pub tokens_output: f64,
    /// Weighted cost of priced events, and how many were priced.
    #[serde(default)]
    pub cost_usd: f64,
    #[serde(default)]
    #[allow(missing_docs)]
    pub priced: u64,
    /// Events that needed a price and had none.
    #[serde(default)]
    pub unpriced: u64,
    /// Judgment scores (unweighted): count, mean, sum of squared deviations.
    #[serde(default)]
    pub quality_n: u64,
    #[serde(default)]
    #[allow(missing_docs)]
    pub quality_mean: f64,
    #[serde(default)]
    #[allow(missing_docs)]
    pub quality_m2: f64,
    /// Kind-specific weighted sums.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sums: BTreeMap<String, f64>,
}

/// A message of a partition owner to the finaliser (`perf.partials.<window>.<p>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // decoded one at a time, never stored in bulk
pub enum Partial {
    /// One series of one closed window of one partition.
    Window {
        /// The window length, e.g. `1m`.
        window: String,
        /// The partition.
        partition: u32,
        /// Window start (UTC).
        #[serde(with = "ts")]
        #[schemars(with = "String")]
        start: DateTime<Utc>,
        /// The series.
        dims: BTreeMap<String, String>,
        /// `false`: the partition's share of the window when it closed. `true`: late events
        /// for a window the partition had already closed, to add to what was published.
        revision: bool,
        /// What the series accumulated.
        state: WindowState,
    },
    /// The partition's progress: every window of this length ending at or before
    /// `final_through` is closed and its partials precede this message in the stream.
    Watermark {
        /// The window length.
        window: String,
        /// The partition.
        partition: u32,
        /// Closed through here (UTC).
        #[serde(with = "ts")]
        #[schemars(with = "String")]
        final_through: DateTime<Utc>,
    },
}

/// Types of anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum AnomalyType {
    LatencySpike,
    ErrorRateIncrease,
    QualityDrop,
    CostSpike,
    ThroughputDrop,
    UnpricedModel,
}

/// Severities of signals and alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// Whether an anomaly is still happening.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum AnomalyState {
    Open,
    Resolved,
}

/// An anomaly (`perf.anomalies.<severity>`), published on state changes only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Anomaly {
    /// Unique id of this announcement.
    pub id: String,
    /// Stable for one condition on one series: a persisting condition is one anomaly.
    pub fingerprint: String,
    /// What went wrong.
    #[serde(rename = "type")]
    pub kind: AnomalyType,
    /// How bad.
    pub severity: Severity,
    /// Open or resolved.
    pub state: AnomalyState,
    /// The series' dimensions.
    pub series: BTreeMap<String, String>,
    /// The window length the detection ran on.
    pub window: String,
    /// The observed value.
    pub observed: f64,
    /// The baseline it was compared with.
    pub baseline: f64,
    /// The robust score (e.g. deviations in MAD units).
    pub score: f64,
    /// When it was first detected (window time).
    #[serde(with = "ts")]
    #[schemars(with = "String")]
    pub detected_at: DateTime<Utc>,
    /// When it resolved.
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub resolved_at: Option<DateTime<Utc>>,
    /// Human description.
    pub description: String,
}

/// How a comparison's data was gathered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Design {
    /// Production traffic: the router's choices confound it.
    Observational,
    /// Shared benchmark cases across models.
    Paired,
}

/// An insight (`perf.insights.<type>`): a comparison, a regression or a trend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Insight {
    /// Unique id.
    pub id: String,
    /// `comparison`, `regression`, `trend`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The series or models concerned.
    pub subject: BTreeMap<String, String>,
    /// What was measured, e.g. `success_rate`, `latency_p95_ratio`.
    pub metric: String,
    /// The test used, e.g. `welch_t`, `mcnemar`.
    pub test: String,
    /// The statistic.
    pub statistic: f64,
    /// The estimate and its interval.
    pub estimate: f64,
    #[allow(missing_docs)]
    pub ci_low: f64,
    #[allow(missing_docs)]
    pub ci_high: f64,
    /// The p-value after multiple-testing correction.
    pub p_adjusted: f64,
    /// Sample sizes per group (unweighted).
    pub n: BTreeMap<String, u64>,
    /// Observational or paired.
    pub design: Design,
    /// Period covered.
    #[serde(with = "ts")]
    #[schemars(with = "String")]
    pub start: DateTime<Utc>,
    #[serde(with = "ts")]
    #[schemars(with = "String")]
    #[allow(missing_docs)]
    pub end: DateTime<Utc>,
    /// Human summary.
    pub description: String,
    /// The p-value before multiple-testing correction. Added in v1 without a version bump
    /// (older senders omit it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
    /// The correction `p_adjusted` went through: `holm`, `bh` or `none`. Added in v1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correction: Option<String>,
    /// What the finding means for the model: a rising latency or cost is a decline, a rising
    /// success rate or quality an improvement. Absent when the test found nothing. Added in v1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// The window length of the series analysed (trends and regressions), e.g. `1m`. Added in v1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

/// What an insight means for the model concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Better: faster, cheaper, more successful, higher quality.
    Improvement,
    /// Worse: slower, dearer, less successful, lower quality.
    Decline,
}

/// Alert states. `firing` and `resolved` are notified; `pending` (breached, not yet for the
/// rule's `for`) and `inactive` (a pending alert that cleared before it fired) are only recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum AlertState {
    Firing,
    Resolved,
    Pending,
    Inactive,
}

impl AlertState {
    /// The state as `perf.alerts.<state>` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
            AlertState::Pending => "pending",
            AlertState::Inactive => "inactive",
        }
    }

    /// Whether receivers are told (firing and resolved); the others are only recorded.
    pub fn is_notified(self) -> bool {
        matches!(self, AlertState::Firing | AlertState::Resolved)
    }
}

/// An alert transition (`perf.alerts.<state>`); maps 1:1 onto Alertmanager's API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Alert {
    /// Hash of the labels.
    pub fingerprint: String,
    /// Identifying labels (`alertname`, dimensions, `severity`).
    pub labels: BTreeMap<String, String>,
    /// `summary`, `description`, `runbook_url`.
    pub annotations: BTreeMap<String, String>,
    /// Firing or resolved.
    pub state: AlertState,
    /// When the condition started.
    #[serde(with = "ts")]
    #[schemars(with = "String")]
    pub starts_at: DateTime<Utc>,
    /// When it ended.
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub ends_at: Option<DateTime<Utc>>,
    /// How bad.
    pub severity: Severity,
    /// The rule or built-in check that raised it.
    pub source: String,
}

/// A report announcement (`perf.reports.<period>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReportAnnouncement {
    /// Object name in `modelperf_reports` without extension: `<period>/<start>`.
    pub object: String,
    /// Stored formats: `md`, `html`, `json`.
    pub formats: Vec<String>,
    /// `daily`, `weekly`, or `adhoc`.
    pub period: String,
    /// Period covered.
    #[serde(with = "ts")]
    #[schemars(with = "String")]
    pub start: DateTime<Utc>,
    #[serde(with = "ts")]
    #[schemars(with = "String")]
    #[allow(missing_docs)]
    pub end: DateTime<Utc>,
    /// SHA-256 (hex) of the JSON report.
    pub sha256: String,
}

/// The action of an RL sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Action {
    /// The chosen agent.
    pub agent_id: Option<String>,
    /// The chosen model.
    pub chosen: ModelRef,
    /// Its propensity; absent for deterministic decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
}

/// One (state, action, reward) sample of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Sample {
    /// The task.
    pub task_id: String,
    /// Decision-time information only: task type, candidates, features, budget, complexity.
    pub state: BTreeMap<String, serde_json::Value>,
    /// The choice and its propensity.
    pub action: Action,
    /// The reward (the formula of `docs/rl.md`).
    pub reward: f64,
    /// Each component of the reward, before weighting.
    pub reward_components: BTreeMap<String, f64>,
    /// Whether the episode ended (always true for one-step tasks).
    pub done: bool,
    /// The events joined into this sample.
    pub event_ids: Vec<String>,
    /// `1/sample_rate`.
    pub weight: f64,
}

/// Statistics of a batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BatchStats {
    /// Samples in the batch.
    pub n: u64,
    #[allow(missing_docs)]
    pub reward_mean: f64,
    #[allow(missing_docs)]
    pub reward_std: f64,
    #[allow(missing_docs)]
    pub reward_min: f64,
    #[allow(missing_docs)]
    pub reward_max: f64,
    /// Samples per chosen model (`provider/name`).
    pub per_model: BTreeMap<String, u64>,
    /// Samples dropped by the quality filters, by reason.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filtered: BTreeMap<String, u64>,
}

/// Where a batch's events came from in `PERF_EVENTS`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BatchSource {
    /// The stream, `PERF_EVENTS`.
    pub stream: String,
    /// First and last stream sequence of the batch's events.
    pub first_seq: u64,
    #[allow(missing_docs)]
    pub last_seq: u64,
}

/// A training batch (`rl.batches.<dataset>`, `Nats-Msg-Id` = `batch_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Batch {
    /// First 32 hex digits of SHA-256 over the dataset and each sorted task id, each `\n`-terminated.
    pub batch_id: String,
    /// The dataset (task type by default).
    pub dataset: String,
    /// Schema version of the batch, `1`.
    pub schema_v: u32,
    /// When the batch closed.
    #[serde(with = "ts")]
    #[schemars(with = "String")]
    pub created_at: DateTime<Utc>,
    /// The samples.
    pub samples: Vec<Sample>,
    /// Their statistics.
    pub stats: BatchStats,
    /// The normalisation reference used for latency and cost.
    pub reference: BTreeMap<String, serde_json::Value>,
    /// Where the events came from.
    pub source: BatchSource,
    /// SHA-256 (hex) of the MessagePack of `samples`.
    pub content_hash: String,
}

/// A service's heartbeat (`perf.health.<service>.<instance>`, core NATS, every 5 s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Heartbeat {
    /// e.g. `collector`.
    pub service: String,
    /// Unique per process.
    pub instance: String,
    /// Build version.
    pub version: String,
    /// Process start.
    #[serde(with = "ts")]
    #[schemars(with = "String")]
    pub started_at: DateTime<Utc>,
    /// Whether `/readyz` would answer 200.
    pub ready: bool,
    /// Lease keys this instance holds.
    pub owned: Vec<String>,
    /// The readiness checks failing now (e.g. `influx_write`), by name; empty when ready.
    /// Added in v1 without a version bump (older senders omit it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ready: Vec<String>,
    /// Dead letters this instance has written since it started, by error code (a counter: the
    /// monitor's DLQ-growth rule reads its increase, so no service but operators reads
    /// `PERF_DLQ`). Added in v1 without a version bump (older senders omit it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dead_letters: BTreeMap<String, u64>,
}
