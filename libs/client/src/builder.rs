//! Typed event builders: one constructor per kind taking the kind's required fields, setters for
//! its optional fields, and the envelope setters shared by every kind.
//!
//! ```
//! use modelperf_client::EventBuilder;
//!
//! let event = EventBuilder::task_completed(2_100.0, true)
//!     .source("arbiter.orchestrator")
//!     .task_id("task-8f2c")
//!     .model("anthropic/claude-sonnet-4-5")
//!     .task_type("code_edit")
//!     .tokens(1_200, 300)
//!     .attr("region", "eu-west-1")
//!     .build()
//!     .unwrap();
//! assert_eq!(event.kind().as_str(), "task_completed");
//! assert!(event.id.is_some());
//! ```

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use modelperf_schema::{
    AgentState, AgentStatus, AttrValue, Benchmark, Candidate, Chosen, Custom, Data, ErrorCode, Event, Judgment,
    Minimality, ModelRef, RoutingDecision, TaskCompleted, TaskStarted, ThinkingBudget, Tokens, Validation,
    ValidationError, Violation, check_ts_range, validate_event,
};

use crate::args::{IntoAttrValue, IntoFeature, IntoModelRef};
use crate::error::ClientError;

/// A new event id: a UUIDv7, so ids sort by creation time.
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The kind-specific `data` types an [`EventBuilder`] can hold (every per-kind struct of
/// `modelperf-schema`, and [`Data`] itself).
pub trait KindData {
    /// Wraps the fields into [`Data`], which carries the kind.
    fn into_data(self) -> Data;
}

macro_rules! kind_data {
    ($($ty:ident),*) => {$(
        impl KindData for $ty {
            fn into_data(self) -> Data {
                Data::$ty(self)
            }
        }
    )*};
}

kind_data!(
    TaskStarted,
    TaskCompleted,
    RoutingDecision,
    Judgment,
    Minimality,
    ThinkingBudget,
    Validation,
    AgentStatus,
    Custom
);

impl KindData for Data {
    fn into_data(self) -> Data {
        self
    }
}

/// Builds one event of the kind `D`. Start with a kind's constructor
/// ([`EventBuilder::task_completed`], [`EventBuilder::judgment`], ...), or [`EventBuilder::new`]
/// with a hand-made data struct; set envelope fields; then [`EventBuilder::build`].
///
/// Nothing is checked until `build`, which reports the first problem with the field it is about.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build`"]
pub struct EventBuilder<D> {
    data: D,
    id: Option<String>,
    ts: Option<DateTime<Utc>>,
    source: Option<String>,
    task_id: Option<String>,
    agent_id: Option<String>,
    model: Option<ModelRef>,
    task_type: Option<String>,
    tenant: Option<String>,
    benchmark: Option<Benchmark>,
    user_id: Option<String>,
    session_id: Option<String>,
    attrs: BTreeMap<String, AttrValue>,
    /// The first problem found while setting fields (a model string that does not parse),
    /// reported by `build` so that setters can chain.
    problem: Option<ValidationError>,
}

impl<D: KindData> EventBuilder<D> {
    /// A builder around kind-specific fields made by hand (every optional field reachable).
    pub fn new(data: D) -> Self {
        Self {
            data,
            id: None,
            ts: None,
            source: None,
            task_id: None,
            agent_id: None,
            model: None,
            task_type: None,
            tenant: None,
            benchmark: None,
            user_id: None,
            session_id: None,
            attrs: BTreeMap::new(),
            problem: None,
        }
    }

    /// The event id: 1–128 characters of `[A-Za-z0-9._:-]`. Default: a new UUIDv7. Set it when
    /// the event must keep its identity across process restarts (a re-sent event with the same
    /// id is the same event).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// When it happened. Default: now. At most 5 minutes ahead and 7 days old.
    pub fn ts(mut self, ts: DateTime<Utc>) -> Self {
        self.ts = Some(ts);
        self
    }

    /// The emitting component, e.g. `arbiter.orchestrator`. Required by [`Self::build`];
    /// [`crate::Publisher::emit`] uses the publisher's source when unset.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The task this event belongs to; joins all events of one task.
    pub fn task_id(mut self, task_id: impl Into<String>) -> Self {
        self.task_id = Some(task_id.into());
        self
    }

    /// The agent that did the work.
    pub fn agent_id(mut self, agent_id: impl Into<String>) -> Self {
        self.agent_id = Some(agent_id.into());
        self
    }

    /// The model that did the work (on a judgment: the judged model), as a [`ModelRef`] or
    /// `"provider/name"`.
    pub fn model(mut self, model: impl IntoModelRef) -> Self {
        self.model = self.model_arg("model", model);
        self
    }

    /// The kind of task, e.g. `code_edit`.
    pub fn task_type(mut self, task_type: impl Into<String>) -> Self {
        self.task_type = Some(task_type.into());
        self
    }

    /// The tenant the work was done for.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// The end user (personal data: the collector pseudonymises it).
    pub fn user_id(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    /// The session (personal data: the collector pseudonymises it).
    pub fn session_id(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    /// Marks the event as part of an offline benchmark run and case.
    pub fn benchmark(mut self, run_id: impl Into<String>, case_id: impl Into<String>) -> Self {
        self.benchmark = Some(Benchmark { run_id: run_id.into(), case_id: case_id.into() });
        self
    }

    /// Adds an attribute (string, number or boolean; free text is scrubbed by the collector).
    pub fn attr(mut self, key: impl Into<String>, value: impl IntoAttrValue) -> Self {
        self.attrs.insert(key.into(), value.into_attr_value());
        self
    }

    /// Changes the kind-specific fields directly, for fields without a setter.
    pub fn with_data(mut self, edit: impl FnOnce(&mut D)) -> Self {
        edit(&mut self.data);
        self
    }

    /// The event: assigns a UUIDv7 id and the current time where unset, then checks it as the
    /// collector would (`modelperf_schema::validate_event` and the `ts` range rule). The error
    /// names the offending field ([`ClientError::field`]).
    pub fn build(self) -> Result<Event, ClientError> {
        self.build_with_source(None)
    }

    /// [`Self::build`], using `default_source` when no source was set.
    pub(crate) fn build_with_source(self, default_source: Option<&str>) -> Result<Event, ClientError> {
        if let Some(problem) = self.problem {
            return Err(problem.into());
        }
        let Some(source) = self.source.or_else(|| default_source.map(str::to_owned)) else {
            return Err(ValidationError::new(
                ErrorCode::Schema,
                "source",
                "must be set (EventBuilder::source, or publish the builder with Publisher::emit)",
            )
            .into());
        };
        let mut event = Event::new(self.ts.unwrap_or_else(Utc::now), source, self.data.into_data());
        event.id = Some(self.id.unwrap_or_else(new_event_id));
        event.task_id = self.task_id;
        event.agent_id = self.agent_id;
        event.model = self.model;
        event.task_type = self.task_type;
        event.tenant = self.tenant;
        event.benchmark = self.benchmark;
        event.user_id = self.user_id;
        event.session_id = self.session_id;
        event.attrs = self.attrs;
        check(&event)?;
        Ok(event)
    }

    /// Converts a model argument, remembering the first one that does not parse.
    fn model_arg(&mut self, field: &str, model: impl IntoModelRef) -> Option<ModelRef> {
        match model.into_model_ref() {
            Ok(model) => Some(model),
            Err(reason) => {
                if self.problem.is_none() {
                    self.problem = Some(ValidationError::new(ErrorCode::Schema, field, reason));
                }
                None
            }
        }
    }

    /// Like [`Self::model_arg`] for required model fields, which get a placeholder that `build`
    /// never lets out (the remembered problem fails it first).
    fn required_model(&mut self, field: &str, model: impl IntoModelRef) -> ModelRef {
        self.model_arg(field, model).unwrap_or_default()
    }
}

/// The checks the collector applies that need no stream context: the contract's field rules and
/// the `ts` range (at most 5 minutes ahead, at most 7 days old).
pub(crate) fn check(event: &Event) -> Result<(), ValidationError> {
    validate_event(event)?;
    check_ts_range(event.ts, Utc::now(), false)
}

impl EventBuilder<TaskStarted> {
    /// `task_started`: the orchestrator started a task.
    pub fn task_started() -> Self {
        Self::new(TaskStarted::default())
    }

    /// Time the task waited in a queue before it started.
    pub fn queue_ms(self, ms: f64) -> Self {
        self.with_data(|d| d.queue_ms = Some(ms))
    }
}

impl EventBuilder<TaskCompleted> {
    /// `task_completed`: the orchestrator finished a task, successfully or not.
    pub fn task_completed(latency_ms: f64, success: bool) -> Self {
        Self::new(TaskCompleted { latency_ms, success, ..TaskCompleted::default() })
    }

    /// Time to the first token, when streaming.
    pub fn ttft_ms(self, ms: f64) -> Self {
        self.with_data(|d| d.ttft_ms = Some(ms))
    }

    /// A short classification of a failure, e.g. `timeout`, `rate_limited`.
    pub fn error_kind(self, kind: impl Into<String>) -> Self {
        let kind = kind.into();
        self.with_data(|d| d.error_kind = Some(kind))
    }

    /// Prompt and completion tokens of the model call(s).
    pub fn tokens(self, input: u64, output: u64) -> Self {
        self.token_usage(Tokens { input, output, ..Tokens::default() })
    }

    /// Token usage with cache and reasoning detail (`input` includes `cached_input` and
    /// `cache_write`; `output` includes `reasoning`).
    pub fn token_usage(self, tokens: Tokens) -> Self {
        self.with_data(|d| d.tokens = Some(tokens))
    }

    /// Retries before the final outcome.
    pub fn retries(self, n: u64) -> Self {
        self.with_data(|d| d.retries = Some(n))
    }

    /// Tool calls made.
    pub fn tool_calls(self, n: u64) -> Self {
        self.with_data(|d| d.tool_calls = Some(n))
    }

    /// CPU time spent by the agent.
    pub fn cpu_ms(self, ms: f64) -> Self {
        self.with_data(|d| d.cpu_ms = Some(ms))
    }

    /// Peak memory of the agent in MiB.
    pub fn memory_mb(self, mb: f64) -> Self {
        self.with_data(|d| d.memory_mb = Some(mb))
    }
}

impl EventBuilder<RoutingDecision> {
    /// `routing_decision`: the router chose `chosen_agent` with `chosen_model` using `strategy`
    /// (`bandit`, `capability_match`, `load_balance`, `random`, or another string).
    pub fn routing_decision(
        strategy: impl Into<String>,
        chosen_agent: impl Into<String>,
        chosen_model: impl IntoModelRef,
        decision_ms: f64,
    ) -> Self {
        let mut builder = Self::new(RoutingDecision {
            strategy: strategy.into(),
            decision_ms,
            chosen: Chosen { agent_id: chosen_agent.into(), model: ModelRef::default() },
            ..RoutingDecision::default()
        });
        let model = builder.required_model("data.chosen.model", chosen_model);
        builder.data.chosen.model = model;
        builder
    }

    /// Adds an arm the router considered (the chosen one included): the router's own score and,
    /// for stochastic policies, the probability of choosing it.
    pub fn candidate(
        mut self,
        agent_id: impl Into<String>,
        model: impl IntoModelRef,
        score: f64,
        probability: impl Into<Option<f64>>,
    ) -> Self {
        let field = format!("data.candidates[{}].model", self.data.candidates.len());
        let model = self.required_model(&field, model);
        self.with_data(|d| {
            d.candidates.push(Candidate { agent_id: agent_id.into(), model, score, probability: probability.into() })
        })
    }

    /// The propensity of the chosen arm (absent: a deterministic decision, unusable off-policy).
    pub fn probability(self, p: f64) -> Self {
        self.with_data(|d| d.probability = Some(p))
    }

    /// Adds decision-time context (a string or a number), e.g. `prompt_tokens_est`.
    pub fn feature(self, name: impl Into<String>, value: impl IntoFeature) -> Self {
        let (name, value) = (name.into(), value.into_feature());
        self.with_data(|d| {
            d.features.insert(name, value);
        })
    }
}

impl EventBuilder<Judgment> {
    /// `judgment`: `judge_model` scored (0..1) a result of `judged_model` (the envelope's `model`).
    pub fn judgment(judged_model: impl IntoModelRef, judge_model: impl IntoModelRef, score: f64) -> Self {
        let mut builder = Self::new(Judgment { score, ..Judgment::default() });
        builder.model = builder.model_arg("model", judged_model);
        let judge = builder.required_model("data.judge_model", judge_model);
        builder.data.judge_model = judge;
        builder
    }

    /// A per-criterion score, 0..1.
    pub fn criterion(self, name: impl Into<String>, score: f64) -> Self {
        let name = name.into();
        self.with_data(|d| {
            d.criteria.insert(name, score);
        })
    }

    /// The judge's confidence, 0..1.
    pub fn confidence(self, confidence: f64) -> Self {
        self.with_data(|d| d.confidence = Some(confidence))
    }

    /// Whether the result passed the judge's bar.
    pub fn passed(self, passed: bool) -> Self {
        self.with_data(|d| d.passed = Some(passed))
    }

    /// The judge's own token usage (priced like a completion of the judge model).
    pub fn tokens(self, input: u64, output: u64) -> Self {
        self.token_usage(Tokens { input, output, ..Tokens::default() })
    }

    /// The judge's own token usage with cache and reasoning detail.
    pub fn token_usage(self, tokens: Tokens) -> Self {
        self.with_data(|d| d.tokens = Some(tokens))
    }
}

impl EventBuilder<Minimality> {
    /// `minimality`: the minimal-diff evaluator's verdict on a change (score 0..1, 1 = minimal).
    pub fn minimality(lines_added: u64, lines_removed: u64, files_changed: u64, score: f64) -> Self {
        Self::new(Minimality { lines_added, lines_removed, files_changed, score })
    }
}

impl EventBuilder<ThinkingBudget> {
    /// `thinking_budget`: tokens allocated for thinking, tokens used, and whether it ran out.
    pub fn thinking_budget(budget_tokens: u64, used_tokens: u64, exhausted: bool) -> Self {
        Self::new(ThinkingBudget { budget_tokens, used_tokens, exhausted, complexity: None })
    }

    /// The manager's complexity class, e.g. `low`, `high`.
    pub fn complexity(self, complexity: impl Into<String>) -> Self {
        let complexity = complexity.into();
        self.with_data(|d| d.complexity = Some(complexity))
    }
}

impl EventBuilder<Validation> {
    /// `validation`: the constitutional validator's verdict (compliance score 0..1).
    pub fn validation(valid: bool, compliance_score: f64, duration_ms: f64) -> Self {
        Self::new(Validation { valid, violations: Vec::new(), compliance_score, duration_ms })
    }

    /// Adds a broken rule: a severity (`low`, `medium`, `high`, `critical`), the rule's name when
    /// known, and free text (scrubbed by the collector).
    pub fn violation(self, severity: impl Into<String>, rule: Option<&str>, message: impl Into<String>) -> Self {
        let violation = Violation { severity: severity.into(), rule: rule.map(str::to_owned), message: message.into() };
        self.with_data(|d| d.violations.push(violation))
    }
}

impl EventBuilder<AgentStatus> {
    /// `agent_status`: an agent's status changed.
    pub fn agent_status(status: AgentState) -> Self {
        Self::new(AgentStatus { status, previous: None, reason: None, capabilities: None })
    }

    /// The status before.
    pub fn previous(self, previous: AgentState) -> Self {
        self.with_data(|d| d.previous = Some(previous))
    }

    /// Why it changed.
    pub fn reason(self, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        self.with_data(|d| d.reason = Some(reason))
    }

    /// What the agent can do.
    pub fn capabilities<S: Into<String>>(self, capabilities: impl IntoIterator<Item = S>) -> Self {
        let capabilities = capabilities.into_iter().map(Into::into).collect();
        self.with_data(|d| d.capabilities = Some(capabilities))
    }
}

impl EventBuilder<Custom> {
    /// `custom`: free named numbers; add them with [`Self::metric`].
    pub fn custom() -> Self {
        Self::new(Custom::default())
    }

    /// Adds a named finite number.
    pub fn metric(self, name: impl Into<String>, value: f64) -> Self {
        let name = name.into();
        self.with_data(|d| {
            d.metrics.insert(name, value);
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use modelperf_schema::Kind;

    use super::*;

    fn source<D: KindData>(b: EventBuilder<D>) -> EventBuilder<D> {
        b.source("test.builder")
    }

    #[test]
    fn build_assigns_a_uuidv7_id_and_now() {
        let before = Utc::now();
        let e = source(EventBuilder::task_started()).queue_ms(12.0).build().unwrap();
        let id = uuid::Uuid::parse_str(e.id.as_deref().unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 7);
        assert!(e.ts >= before && e.ts <= Utc::now());
        assert_eq!(e.kind(), Kind::TaskStarted);
        assert_eq!(e.v, 1);
    }

    #[test]
    fn envelope_setters_land_in_the_event() {
        let ts = Utc::now() - Duration::seconds(3);
        let e = EventBuilder::task_completed(1234.0, false)
            .id("evt-1")
            .ts(ts)
            .source("arbiter.orchestrator")
            .task_id("t1")
            .agent_id("coder-3")
            .model(ModelRef::new("openai", "gpt-4.1"))
            .task_type("code_edit")
            .tenant("acme")
            .user_id("u-1")
            .session_id("s-1")
            .benchmark("r1", "case-1")
            .attr("attempt", 2)
            .attr("streaming", true)
            .attr("temperature", 0.2)
            .attr("region", "eu")
            .error_kind("timeout")
            .token_usage(Tokens { input: 100, output: 20, cached_input: Some(50), ..Tokens::default() })
            .retries(1)
            .build()
            .unwrap();
        assert_eq!(e.id.as_deref(), Some("evt-1"));
        assert_eq!(e.ts, ts);
        assert_eq!(e.model, Some(ModelRef::new("openai", "gpt-4.1")));
        assert_eq!(e.benchmark.as_ref().map(|b| b.case_id.as_str()), Some("case-1"));
        assert_eq!(e.attrs.get("attempt"), Some(&AttrValue::Int(2)));
        assert_eq!(e.attrs.get("streaming"), Some(&AttrValue::Bool(true)));
        let Data::TaskCompleted(d) = &e.data else { panic!("wrong kind") };
        assert_eq!(d.error_kind.as_deref(), Some("timeout"));
        assert_eq!(d.tokens.as_ref().and_then(|t| t.cached_input), Some(50));
    }

    #[test]
    fn judgment_sets_the_judged_model_on_the_envelope() {
        let e = source(EventBuilder::judgment("openai/gpt-4.1", "anthropic/claude-opus-4-1", 0.8))
            .criterion("correctness", 0.9)
            .build()
            .unwrap();
        assert_eq!(e.model, Some(ModelRef::new("openai", "gpt-4.1")));
        let Data::Judgment(d) = &e.data else { panic!("wrong kind") };
        assert_eq!(d.judge_model, ModelRef::new("anthropic", "claude-opus-4-1"));
    }

    #[test]
    fn errors_name_the_field() {
        let field = |r: Result<Event, ClientError>| r.unwrap_err().field().unwrap().to_owned();
        assert_eq!(field(source(EventBuilder::judgment("openai/gpt-4.1", "x/y", 1.5)).build()), "data.score");
        assert_eq!(field(source(EventBuilder::judgment("gpt-4.1", "x/y", 0.5)).build()), "model");
        assert_eq!(field(source(EventBuilder::task_completed(-1.0, true)).build()), "data.latency_ms");
        assert_eq!(field(EventBuilder::task_completed(1.0, true).build()), "source");
        assert_eq!(field(source(EventBuilder::custom()).id("a b").build()), "id");
        assert_eq!(field(source(EventBuilder::custom()).attr("x", f64::NAN).build()), "attrs.x");
        assert_eq!(
            field(
                source(EventBuilder::routing_decision("bandit", "a", "p/m", 1.0))
                    .candidate("b", "nope", 1.0, 0.5)
                    .build()
            ),
            "data.candidates[0].model"
        );
        assert_eq!(field(source(EventBuilder::custom()).ts(Utc::now() - Duration::days(8)).build()), "ts");
        let err =
            source(EventBuilder::routing_decision("bandit", "a", "p/m", 1.0)).probability(2.0).build().unwrap_err();
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("data.probability"), "{err}");
    }
}
