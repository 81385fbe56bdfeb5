//! The performance event (schema v1): envelope, kinds and their `data`.
//!
//! Serialisation and deserialisation of [`Event`] are written by hand in [`crate::codec`]: the
//! envelope names its `kind` beside a `data` object whose shape depends on it, and decoding that
//! without buffering every event is worth a visitor on the hot path.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::ModelRef;

/// The newest event schema version this build understands.
pub const SCHEMA_VERSION: u32 = 1;

/// A performance event as producers send it and as the collector republishes it, enriched.
#[derive(Debug, Clone, PartialEq, JsonSchema)]
#[schemars(title = "Event")]
pub struct Event {
    /// Schema version, `1`.
    pub v: u32,
    /// 1–128 characters of `[A-Za-z0-9._:-]`; UUIDv7 recommended. When absent the collector
    /// derives one (UUIDv5 of the `Nats-Msg-Id` header, else of `PERF_RAW:<seq>`). Always set on
    /// clean events.
    #[serde(default)]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9._:-]+$"))]
    pub id: Option<String>,
    /// When it happened (RFC 3339, any offset; clean events are in UTC).
    #[schemars(with = "String", regex(pattern = r"^\d{4}-\d{2}-\d{2}T"))]
    pub ts: DateTime<Utc>,
    /// The emitting component, e.g. `arbiter.orchestrator`.
    pub source: String,
    /// Joins all events of one task.
    #[serde(default)]
    pub task_id: Option<String>,
    /// The agent that did the work.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// The model that did the work; on `judgment`, the judged model (required there).
    #[serde(default)]
    pub model: Option<ModelRef>,
    /// The kind of task, e.g. `code_edit`, `summarize`.
    #[serde(default)]
    pub task_type: Option<String>,
    /// The tenant the work was done for.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Set for offline benchmark runs; never scrubbed.
    #[serde(default)]
    pub benchmark: Option<Benchmark>,
    /// Personal data: pseudonymised by the collector.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Personal data: pseudonymised by the collector.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Free attributes: strings, numbers and booleans. Free text is scrubbed by the collector.
    #[serde(default)]
    pub attrs: BTreeMap<String, AttrValue>,
    /// The kind and its kind-specific fields.
    #[serde(flatten)]
    pub data: Data,
    /// Set by the collector: probability with which this event was kept.
    #[serde(default)]
    pub sample_rate: Option<f64>,
    /// Set by the collector on `task_completed` and on `judgment` with tokens.
    #[serde(default)]
    pub cost: Option<Cost>,
    /// Set by the collector: when it processed the event (UTC).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub received_at: Option<DateTime<Utc>>,
    /// Set by the collector: how personal data was treated.
    #[serde(default)]
    pub privacy: Option<Privacy>,
}

impl Event {
    /// A new v1 event with only the required envelope fields set.
    pub fn new(ts: DateTime<Utc>, source: impl Into<String>, data: Data) -> Self {
        Self {
            v: SCHEMA_VERSION,
            id: None,
            ts,
            source: source.into(),
            task_id: None,
            agent_id: None,
            model: None,
            task_type: None,
            tenant: None,
            benchmark: None,
            user_id: None,
            session_id: None,
            attrs: BTreeMap::new(),
            data,
            sample_rate: None,
            cost: None,
            received_at: None,
            privacy: None,
        }
    }

    /// The kind of this event, from its data.
    pub fn kind(&self) -> Kind {
        self.data.kind()
    }

    /// The key that decides the partition: the task id, else the event id.
    pub fn partition_key(&self) -> &str {
        self.task_id.as_deref().or(self.id.as_deref()).unwrap_or("")
    }
}

/// The kinds of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The orchestrator started a task.
    TaskStarted,
    /// The orchestrator finished a task (successfully or not).
    TaskCompleted,
    /// The router chose an agent and model.
    RoutingDecision,
    /// A judge model scored a result.
    Judgment,
    /// The minimal-diff evaluator scored a change.
    Minimality,
    /// The thinking-budget manager's allocation and use.
    ThinkingBudget,
    /// The constitutional validator's verdict.
    Validation,
    /// An agent's status changed.
    AgentStatus,
    /// Free numeric metrics.
    Custom,
}

impl Kind {
    /// Every kind, in declaration order.
    pub const ALL: [Kind; 9] = [
        Kind::TaskStarted,
        Kind::TaskCompleted,
        Kind::RoutingDecision,
        Kind::Judgment,
        Kind::Minimality,
        Kind::ThinkingBudget,
        Kind::Validation,
        Kind::AgentStatus,
        Kind::Custom,
    ];

    /// The wire name, e.g. `task_completed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::TaskStarted => "task_started",
            Kind::TaskCompleted => "task_completed",
            Kind::RoutingDecision => "routing_decision",
            Kind::Judgment => "judgment",
            Kind::Minimality => "minimality",
            Kind::ThinkingBudget => "thinking_budget",
            Kind::Validation => "validation",
            Kind::AgentStatus => "agent_status",
            Kind::Custom => "custom",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::parse(s.trim()).ok_or_else(|| {
            let known: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            format!("unknown kind `{s}`; known: {}", known.join(", "))
        })
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Kind-specific fields, tagged by the envelope's `kind`.
#[derive(Debug, Clone, PartialEq, JsonSchema)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Data {
    TaskStarted(TaskStarted),
    TaskCompleted(TaskCompleted),
    RoutingDecision(RoutingDecision),
    Judgment(Judgment),
    Minimality(Minimality),
    ThinkingBudget(ThinkingBudget),
    Validation(Validation),
    AgentStatus(AgentStatus),
    Custom(Custom),
}

impl Data {
    /// The kind these fields belong to.
    pub fn kind(&self) -> Kind {
        match self {
            Data::TaskStarted(_) => Kind::TaskStarted,
            Data::TaskCompleted(_) => Kind::TaskCompleted,
            Data::RoutingDecision(_) => Kind::RoutingDecision,
            Data::Judgment(_) => Kind::Judgment,
            Data::Minimality(_) => Kind::Minimality,
            Data::ThinkingBudget(_) => Kind::ThinkingBudget,
            Data::Validation(_) => Kind::Validation,
            Data::AgentStatus(_) => Kind::AgentStatus,
            Data::Custom(_) => Kind::Custom,
        }
    }

    /// The token usage this event reports, if any (completions and judgments).
    pub fn tokens(&self) -> Option<&Tokens> {
        match self {
            Data::TaskCompleted(d) => d.tokens.as_ref(),
            Data::Judgment(d) => d.tokens.as_ref(),
            _ => None,
        }
    }
}

/// `task_started`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskStarted {
    /// Time the task waited in a queue before it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 604_800_000))]
    pub queue_ms: Option<f64>,
}

/// `task_completed`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskCompleted {
    /// End-to-end latency of the task.
    #[schemars(range(min = 0, max = 604_800_000))]
    pub latency_ms: f64,
    /// Time to the first token, when streaming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 604_800_000))]
    pub ttft_ms: Option<f64>,
    /// Whether the task succeeded.
    pub success: bool,
    /// A short classification of the failure, e.g. `timeout`, `rate_limited`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// Token usage of the model call(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Tokens>,
    /// Retries before the final outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u64>,
    /// Tool calls made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<u64>,
    /// CPU time spent by the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 604_800_000))]
    pub cpu_ms: Option<f64>,
    /// Peak memory of the agent in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub memory_mb: Option<f64>,
}

/// Token usage. `input` counts all prompt tokens including `cached_input` and `cache_write`;
/// `output` counts all completion tokens including `reasoning`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Tokens {
    /// All prompt tokens.
    pub input: u64,
    /// All completion tokens.
    pub output: u64,
    /// Prompt tokens read from the provider's cache (part of `input`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<u64>,
    /// Prompt tokens written to the provider's cache (part of `input`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<u64>,
    /// Reasoning tokens (part of `output`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<u64>,
}

/// `routing_decision`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RoutingDecision {
    /// `bandit`, `capability_match`, `load_balance`, `random`, or another string.
    pub strategy: String,
    /// The chosen arm.
    pub chosen: Chosen,
    /// Every arm considered, the chosen one included.
    #[serde(default)]
    pub candidates: Vec<Candidate>,
    /// Propensity of the chosen arm; absent means deterministic (unusable off-policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1))]
    pub probability: Option<f64>,
    /// Decision-time context (string or number values).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub features: BTreeMap<String, Feature>,
    /// Time the router took to decide.
    #[schemars(range(min = 0, max = 604_800_000))]
    pub decision_ms: f64,
}

/// The arm a router chose.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Chosen {
    /// The chosen agent.
    pub agent_id: String,
    /// The chosen model.
    pub model: ModelRef,
}

/// An arm a router considered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Candidate {
    /// The candidate agent.
    pub agent_id: String,
    /// The candidate model.
    pub model: ModelRef,
    /// The router's own ranking value for this arm (any finite number: UCB scores exceed 1).
    pub score: f64,
    /// The probability with which the router would have chosen this arm (0..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1))]
    pub probability: Option<f64>,
}

/// A decision-time feature value.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
#[allow(missing_docs)]
pub enum Feature {
    Number(f64),
    Text(String),
}

/// `judgment`. The envelope's `model` is the judged model and is required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Judgment {
    /// The model that judged.
    pub judge_model: ModelRef,
    /// The overall score, 0..1.
    #[schemars(range(min = 0, max = 1))]
    pub score: f64,
    /// Per-criterion scores, 0..1.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub criteria: BTreeMap<String, f64>,
    /// The judge's confidence, 0..1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1))]
    pub confidence: Option<f64>,
    /// Whether the result passed the judge's bar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    /// The judge's own token usage (priced like a completion of `judge_model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Tokens>,
}

/// `minimality`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Minimality {
    /// Lines added by the change.
    pub lines_added: u64,
    /// Lines removed by the change.
    pub lines_removed: u64,
    /// Files the change touched.
    pub files_changed: u64,
    /// Minimality score, 0..1 (1 = minimal).
    #[schemars(range(min = 0, max = 1))]
    pub score: f64,
}

/// `thinking_budget`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ThinkingBudget {
    /// Tokens allocated for thinking.
    pub budget_tokens: u64,
    /// Tokens actually used.
    pub used_tokens: u64,
    /// Whether the budget ran out.
    pub exhausted: bool,
    /// The manager's complexity class, e.g. `low`, `high`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complexity: Option<String>,
}

/// `validation`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Validation {
    /// Whether the output passed.
    pub valid: bool,
    /// Rules the output broke.
    #[serde(default)]
    pub violations: Vec<Violation>,
    /// Compliance score, 0..1.
    #[schemars(range(min = 0, max = 1))]
    pub compliance_score: f64,
    /// Time the validator took.
    #[schemars(range(min = 0, max = 604_800_000))]
    pub duration_ms: f64,
}

/// One broken rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Violation {
    /// e.g. `low`, `medium`, `high`, `critical`.
    pub severity: String,
    /// The rule's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Free text; scrubbed by the collector.
    pub message: String,
}

/// `agent_status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentStatus {
    /// The new status.
    pub status: AgentState,
    /// The status before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<AgentState>,
    /// Why it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the agent can do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
}

/// The statuses of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum AgentState {
    Registered,
    Available,
    Busy,
    Offline,
    Maintenance,
}

/// `custom`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Custom {
    /// Named finite numbers.
    pub metrics: BTreeMap<String, f64>,
}

/// `{run_id, case_id}` of an offline benchmark run.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct Benchmark {
    /// The run; cases of one run are compared paired across models.
    pub run_id: String,
    /// The case, shared by every model in the run.
    pub case_id: String,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
#[allow(missing_docs)]
pub enum AttrValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::Text(s.to_owned())
    }
}

/// The price of an event, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Cost {
    /// Cost in US dollars (priced events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd: Option<f64>,
    /// The catalog entry that priced it (priced events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_id: Option<String>,
    /// Why there is no price (`unpriced`, `unknown_tokens`); absent when priced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<CostStatus>,
}

impl Cost {
    /// A priced cost.
    pub fn priced(usd: f64, price_id: impl Into<String>) -> Self {
        Self { usd: Some(usd), price_id: Some(price_id.into()), status: None }
    }

    /// No price, with the reason.
    pub fn missing(status: CostStatus) -> Self {
        Self { usd: None, price_id: None, status: Some(status) }
    }
}

/// Why an event has no price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CostStatus {
    /// No catalog entry for the model at the event's time.
    Unpriced,
    /// The event reports no tokens.
    UnknownTokens,
}

/// How personal data of an event was treated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Privacy {
    /// The privacy level applied.
    pub level: PrivacyLevel,
    /// The key that made the pseudonyms (for rotation); absent at level `off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// Privacy levels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PrivacyLevel {
    /// Personal data passes unchanged.
    Off,
    /// Ids become keyed pseudonyms, free text is scrubbed.
    #[default]
    Pseudonymize,
    /// As `pseudonymize`, and free text is dropped.
    Strict,
}

/// Scalars only: a nested value is refused at once, without buffering or recursion (an
/// `untagged` derive would buffer arbitrarily deep input before rejecting it).
struct ScalarVisitor;

impl<'de> serde::de::Visitor<'de> for ScalarVisitor {
    type Value = AttrValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string, number or boolean")
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<AttrValue, E> {
        Ok(AttrValue::Bool(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<AttrValue, E> {
        Ok(AttrValue::Int(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<AttrValue, E> {
        Ok(i64::try_from(v).map_or(AttrValue::Float(v as f64), AttrValue::Int))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<AttrValue, E> {
        Ok(AttrValue::Float(v))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<AttrValue, E> {
        Ok(AttrValue::Text(v.to_owned()))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<AttrValue, E> {
        Ok(AttrValue::Text(v))
    }
}

impl<'de> Deserialize<'de> for AttrValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

impl<'de> Deserialize<'de> for Feature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(ScalarVisitor)? {
            AttrValue::Text(s) => Ok(Feature::Text(s)),
            AttrValue::Int(i) => Ok(Feature::Number(i as f64)),
            AttrValue::Float(f) => Ok(Feature::Number(f)),
            AttrValue::Bool(_) => Err(serde::de::Error::custom("invalid type: boolean, expected a string or number")),
        }
    }
}
