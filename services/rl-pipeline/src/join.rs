//! The open joins of one partition: every event of a task gathered until the task becomes a
//! sample — its required parts present and the grace for optional parts over, or its join window
//! over with the required parts present — or expires without them (counted by reason).
//!
//! A join is the same whatever order its parts arrive in and however often one is delivered:
//! duplicates (same event id) are ignored; of several events of one kind, the routing decision
//! kept is the earliest (by `ts`, then id), the completion, validation and thinking budget the
//! latest, and several judgments are averaged. A part for a task already emitted is late and
//! counted, never a second sample.
//!
//! Time is the stream's: a join opens at the time the stream stored its first part and is
//! complete at the time it stored the last required one, and the caller's clock follows the
//! stream while a backlog is read. So a join rebuilt by a replay keeps its deadlines, and a
//! backlog is joined as it would have been live. Deadlines are kept in ordered indexes, so a
//! tick and the overflow eviction cost O(log n) per join they touch, not a scan of every open
//! join (a partition may hold a million).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use modelperf_schema::messages::{Action, Sample};
use modelperf_schema::{Data, Event, Kind, ModelRef, RoutingDecision};
use serde_json::{Value, json};

use crate::config::RlConfig;
use crate::reward::{Outcome, components, reward};

/// What happened to an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// Joined to its task.
    Joined,
    /// The same event again.
    Duplicate,
    /// Its task was already emitted (or expired).
    Late,
    /// No `task_id`: nothing to join.
    NoTask,
    /// A kind that is no part of a sample (`agent_status`, `custom`).
    Ignored,
}

/// Why a join ended without a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Expiry {
    /// The join window passed without this required part.
    Missing(Kind),
    /// The partition held `max_open_joins` joins; the oldest made room.
    Overflow,
}

impl Expiry {
    /// Metric label.
    pub fn label(&self) -> String {
        match self {
            Expiry::Missing(k) => format!("missing_{k}"),
            Expiry::Overflow => "overflow".into(),
        }
    }
}

/// An event's position for order-independent choices (`ts`, then id), with what it says; boxed,
/// as most joins lack most parts and a partition may hold a million joins.
type Ranked<T> = Option<Box<(DateTime<Utc>, String, T)>>;

/// What a sample needs of the completion (a whole event per open join would cost a million
/// copies of fields no sample reads).
#[derive(Debug, Clone)]
struct Completion {
    success: bool,
    latency_ms: f64,
    cost_usd: Option<f64>,
    sample_rate: Option<f64>,
    model: Option<ModelRef>,
}

/// A set of kinds, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Kinds(u16);

impl Kinds {
    fn insert(&mut self, k: Kind) {
        self.0 |= 1 << k as u16;
    }

    fn contains(&self, k: Kind) -> bool {
        self.0 & (1 << k as u16) != 0
    }
}

/// One task's parts.
#[derive(Debug, Clone)]
pub struct Join {
    /// The task.
    pub task_id: Arc<str>,
    /// The first stream sequence of its events (a replay must start at or before it).
    pub first_seq: u64,
    /// The last stream sequence of its events.
    pub last_seq: u64,
    /// When the stream stored its first part: the join window runs from here.
    pub opened: DateTime<Utc>,
    /// When the stream stored the part that made its required parts complete.
    pub complete_at: Option<DateTime<Utc>>,
    /// Ids of its events, sorted.
    event_ids: Vec<String>,
    kinds: Kinds,
    task_type: Option<String>,
    tenant: Option<String>,
    agent_id: Option<String>,
    routing: Ranked<RoutingDecision>,
    completion: Ranked<Completion>,
    judgments: BTreeMap<String, f64>,
    validation: Ranked<f64>,
    budget: Ranked<(u64, Option<String>)>,
}

fn earliest<T>(slot: &mut Ranked<T>, ts: DateTime<Utc>, id: &str, v: T) {
    if slot.as_deref().is_none_or(|(t, i, _)| (ts, id) < (*t, i.as_str())) {
        *slot = Some(Box::new((ts, id.to_owned(), v)));
    }
}

fn latest<T>(slot: &mut Ranked<T>, ts: DateTime<Utc>, id: &str, v: T) {
    if slot.as_deref().is_none_or(|(t, i, _)| (ts, id) > (*t, i.as_str())) {
        *slot = Some(Box::new((ts, id.to_owned(), v)));
    }
}

impl Join {
    fn new(task_id: Arc<str>, seq: u64, at: DateTime<Utc>) -> Self {
        Self {
            task_id,
            first_seq: seq,
            last_seq: seq,
            opened: at,
            complete_at: None,
            event_ids: Vec::new(),
            kinds: Kinds::default(),
            task_type: None,
            tenant: None,
            agent_id: None,
            routing: None,
            completion: None,
            judgments: BTreeMap::new(),
            validation: None,
            budget: None,
        }
    }

    /// Adds a part; false when it is one already joined (same id).
    fn add(&mut self, e: &Event, id: &str, seq: u64, at: DateTime<Utc>) -> bool {
        let Err(slot) = self.event_ids.binary_search_by(|x| x.as_str().cmp(id)) else { return false };
        self.event_ids.insert(slot, id.to_owned());
        self.first_seq = self.first_seq.min(seq);
        self.last_seq = self.last_seq.max(seq);
        self.opened = self.opened.min(at);
        self.kinds.insert(e.kind());
        // Context fields: the smallest value seen, so arrival order does not matter.
        let keep_min = |slot: &mut Option<String>, v: &Option<String>| {
            if let Some(v) = v
                && slot.as_ref().is_none_or(|s| v < s)
            {
                *slot = Some(v.clone());
            }
        };
        keep_min(&mut self.task_type, &e.task_type);
        keep_min(&mut self.tenant, &e.tenant);
        keep_min(&mut self.agent_id, &e.agent_id);
        match &e.data {
            Data::RoutingDecision(d) => earliest(&mut self.routing, e.ts, id, d.clone()),
            Data::TaskCompleted(d) => {
                let c = Completion {
                    success: d.success,
                    latency_ms: d.latency_ms,
                    cost_usd: e.cost.as_ref().and_then(|c| c.usd),
                    sample_rate: e.sample_rate,
                    model: e.model.clone(),
                };
                latest(&mut self.completion, e.ts, id, c)
            }
            Data::Judgment(d) => {
                self.judgments.insert(id.to_owned(), d.score);
            }
            Data::Validation(d) => latest(&mut self.validation, e.ts, id, d.compliance_score),
            Data::ThinkingBudget(d) => latest(&mut self.budget, e.ts, id, (d.budget_tokens, d.complexity.clone())),
            Data::TaskStarted(_) | Data::Minimality(_) | Data::AgentStatus(_) | Data::Custom(_) => {}
        }
        true
    }

    fn has(&self, required: &[Kind]) -> bool {
        required.iter().all(|k| self.kinds.contains(*k))
    }

    /// The dataset of this task.
    pub fn dataset(&self, config: &RlConfig) -> String {
        let key = match config.dataset_by {
            crate::config::DatasetBy::TaskType => self.task_type.as_deref(),
            crate::config::DatasetBy::Tenant => self.tenant.as_deref(),
        };
        modelperf_schema::names::subject_token(key.unwrap_or("default"))
    }

    /// The sample of this task, or why there is none (a quality filter's reason).
    pub fn sample(&self, config: &RlConfig) -> Result<Sample, &'static str> {
        let completed = self.completion.as_deref().map(|(_, _, c)| c);
        let quality = if self.judgments.is_empty() {
            None
        } else {
            let scores: Vec<f64> = self.judgments.values().copied().collect();
            if scores.iter().any(|s| !(s.is_finite() && (0.0..=1.0).contains(s))) {
                return Err("score_out_of_range");
            }
            Some(scores.iter().sum::<f64>() / scores.len() as f64)
        };
        let outcome = Outcome {
            quality,
            success: completed.map(|d| d.success),
            latency_ms: completed.map(|d| d.latency_ms),
            cost_usd: completed.and_then(|c| c.cost_usd),
            compliance: self.validation.as_deref().map(|(_, _, c)| *c),
        };
        if [outcome.latency_ms, outcome.cost_usd, outcome.compliance].iter().flatten().any(|v| !v.is_finite()) {
            return Err("non_finite");
        }
        let reference = config.reference_of(self.task_type.as_deref());
        let comps = components(&outcome, reference);
        let Some(r) = reward(&comps, &config.reward) else { return Err("no_reward") };
        let action = match self.routing.as_deref() {
            Some((_, _, d)) => Action {
                agent_id: Some(d.chosen.agent_id.clone()),
                chosen: d.chosen.model.clone(),
                probability: d.probability.or_else(|| {
                    d.candidates
                        .iter()
                        .find(|c| c.agent_id == d.chosen.agent_id && c.model == d.chosen.model)
                        .and_then(|c| c.probability)
                }),
            },
            None => match completed.and_then(|c| c.model.clone()) {
                Some(model) => Action { agent_id: self.agent_id.clone(), chosen: model, probability: None },
                None => return Err("no_action"),
            },
        };
        if action.probability.is_some_and(|p| !(p.is_finite() && p > 0.0 && p <= 1.0)) {
            return Err("probability_out_of_range");
        }
        let weight = match completed.and_then(|c| c.sample_rate) {
            Some(rate) if rate > 0.0 && rate <= 1.0 => 1.0 / rate,
            _ => 1.0,
        };
        Ok(Sample {
            task_id: self.task_id.to_string(),
            state: self.state(),
            action,
            reward: r,
            reward_components: comps,
            done: true,
            event_ids: self.event_ids.clone(),
            weight,
        })
    }

    /// Decision-time information only: never the outcome, never the chosen arm.
    fn state(&self) -> BTreeMap<String, Value> {
        let mut s = BTreeMap::new();
        s.insert("task_type".into(), json!(self.task_type));
        if let Some(tenant) = &self.tenant {
            s.insert("tenant".into(), json!(tenant));
        }
        if let Some((_, _, d)) = self.routing.as_deref() {
            let model = |m: &ModelRef| format!("{}/{}", m.provider, m.name);
            let candidates: Vec<Value> = d
                .candidates
                .iter()
                .map(|c| json!({"agent_id": c.agent_id, "model": model(&c.model), "score": c.score, "probability": c.probability}))
                .collect();
            s.insert("candidates".into(), Value::Array(candidates));
            s.insert("strategy".into(), json!(d.strategy));
            s.insert("features".into(), serde_json::to_value(&d.features).unwrap_or(Value::Null));
        }
        if let Some((_, _, (budget, complexity))) = self.budget.as_deref() {
            s.insert("budget_tokens".into(), json!(budget));
            if let Some(c) = complexity {
                s.insert("complexity".into(), json!(c));
            }
        }
        s
    }
}

/// A task ready to become a sample.
#[derive(Debug, Clone)]
pub struct Ready {
    /// Its parts.
    pub join: Join,
}

/// The order joins are closed in when several are due at once, and the age order of the
/// overflow eviction: stream time of the first part, then first sequence, then task.
type AgeKey = (DateTime<Utc>, u64, Arc<str>);

/// The open joins of a partition.
#[derive(Debug)]
pub struct Joins {
    required: Vec<Kind>,
    window: Duration,
    grace: Duration,
    max_open: usize,
    open: HashMap<Arc<str>, Join>,
    /// Every open join by age (window deadlines, eviction).
    by_age: BTreeSet<AgeKey>,
    /// Complete joins by the time they became complete (grace deadlines).
    by_complete: BTreeSet<(DateTime<Utc>, Arc<str>)>,
    /// Tasks emitted or expired, remembered for a join window to recognise late parts.
    closed: Closed,
}

/// Tasks closed within the last join window, each remembered by a 64-bit hash of its id under
/// a random key drawn when the partition's joins are created, not by the id: every task is remembered for the whole join window
/// (a million and more in ten minutes at 12 500 events a second), and at about 120 bytes a
/// task the ids were the largest part of the service's memory; a hash and a time take about
/// 30. Two tasks collide with a probability of about n / 2^64 for n remembered ones (below
/// 10^-13 at a million), and the key keeps a producer from choosing ids that collide; a task
/// that did collide would have its parts counted late.
#[derive(Debug, Default)]
struct Closed {
    key: RandomState,
    hashes: HashSet<u64>,
    /// (close time in ms since the epoch, hash), in the order they closed.
    order: VecDeque<(i64, u64)>,
}

impl Closed {
    fn hash(&self, task_id: &str) -> u64 {
        self.key.hash_one(task_id)
    }

    fn contains(&self, task_id: &str) -> bool {
        self.hashes.contains(&self.hash(task_id))
    }

    fn insert(&mut self, task_id: &str, at: DateTime<Utc>) {
        let h = self.hash(task_id);
        self.hashes.insert(h);
        self.order.push_back((at.timestamp_millis(), h));
    }

    /// Forgets the tasks closed a `window` or more before `now`.
    fn forget_older(&mut self, now: DateTime<Utc>, window: Duration) {
        // In milliseconds: `now` may be the clock's minimum before a partition has read anything,
        // and `now - window` would overflow there.
        let (now, window) = (now.timestamp_millis(), window.num_milliseconds());
        while let Some(&(t, h)) = self.order.front()
            && t.saturating_add(window) <= now
        {
            self.order.pop_front();
            self.hashes.remove(&h);
        }
    }
}

fn age_key(j: &Join) -> AgeKey {
    (j.opened, j.first_seq, j.task_id.clone())
}

impl Joins {
    /// Empty joins with the configuration's window, grace, required parts and cap.
    pub fn new(config: &RlConfig) -> Self {
        let to = |d: std::time::Duration| Duration::from_std(d).unwrap_or(Duration::MAX);
        Self {
            required: config.required.clone(),
            window: to(config.join_window),
            grace: to(config.join_grace),
            max_open: config.max_open_joins,
            open: HashMap::new(),
            by_age: BTreeSet::new(),
            by_complete: BTreeSet::new(),
            closed: Closed::default(),
        }
    }

    /// Open joins.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// The first stream sequence of any open join.
    pub fn replay_from(&self) -> Option<u64> {
        self.open.values().map(|j| j.first_seq).min()
    }

    /// Adds an event (stream sequence `seq`, stored by the stream at `at`). A join beyond the
    /// cap expires the oldest one, returned in the second value.
    pub fn add(&mut self, e: &Event, seq: u64, at: DateTime<Utc>) -> (Added, Option<(Join, Expiry)>) {
        if matches!(e.kind(), Kind::AgentStatus | Kind::Custom) {
            return (Added::Ignored, None);
        }
        let Some(task_id) = e.task_id.as_deref() else { return (Added::NoTask, None) };
        if self.closed.contains(task_id) {
            return (Added::Late, None);
        }
        let id = e.id.clone().unwrap_or_else(|| format!("seq-{seq}"));
        let mut evicted = None;
        if !self.open.contains_key(task_id)
            && self.open.len() >= self.max_open
            && let Some((_, _, oldest)) = self.by_age.first().cloned()
        {
            evicted = self.close(&oldest, at).map(|j| (j, Expiry::Overflow));
        }
        let join = match self.open.get_mut(task_id) {
            Some(j) => j,
            None => {
                let task: Arc<str> = Arc::from(task_id);
                let j = Join::new(task.clone(), seq, at);
                self.by_age.insert(age_key(&j));
                self.open.entry(task).or_insert(j)
            }
        };
        let before = age_key(join);
        if !join.add(e, &id, seq, at) {
            return (Added::Duplicate, evicted);
        }
        let after = age_key(join);
        if after != before {
            self.by_age.remove(&before);
            self.by_age.insert(after);
        }
        if join.complete_at.is_none() && join.has(&self.required) {
            join.complete_at = Some(at);
            self.by_complete.insert((at, join.task_id.clone()));
        }
        (Added::Joined, evicted)
    }

    fn close(&mut self, task_id: &str, now: DateTime<Utc>) -> Option<Join> {
        let join = self.open.remove(task_id)?;
        self.by_age.remove(&age_key(&join));
        if let Some(c) = join.complete_at {
            self.by_complete.remove(&(c, join.task_id.clone()));
        }
        self.closed.insert(&join.task_id, now);
        Some(join)
    }

    /// Tasks whose grace is over (ready) and joins whose window passed (ready when the required
    /// parts are present, else expired with the first missing part), by the clock `now`.
    pub fn due(&mut self, now: DateTime<Utc>) -> (Vec<Ready>, Vec<(Join, Expiry)>) {
        // Forget closed tasks older than a window: a part that late is a new, incomplete join
        // that expires (the ledger still keeps it out of a second batch).
        self.closed.forget_older(now, self.window);
        let mut due: BTreeSet<AgeKey> =
            self.by_age.iter().take_while(|(opened, _, _)| *opened + self.window <= now).cloned().collect();
        for (_, task) in self.by_complete.iter().take_while(|(c, _)| *c + self.grace <= now) {
            if let Some(j) = self.open.get(task) {
                due.insert(age_key(j));
            }
        }
        let (mut ready, mut expired) = (Vec::new(), Vec::new());
        for (_, _, task_id) in due {
            let Some(join) = self.close(&task_id, now) else { continue };
            match self.required.iter().find(|k| !join.kinds.contains(**k)) {
                None => ready.push(Ready { join }),
                Some(missing) => expired.push((join, Expiry::Missing(*missing))),
            }
        }
        (ready, expired)
    }

    /// Closes every complete join now (shutdown): they are ready; the incomplete ones stay for
    /// the successor's replay.
    pub fn drain_complete(&mut self, now: DateTime<Utc>) -> Vec<Ready> {
        let complete: Vec<Arc<str>> = self.by_complete.iter().map(|(_, t)| t.clone()).collect();
        complete.into_iter().filter_map(|t| self.close(&t, now)).map(|join| Ready { join }).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use modelperf_schema::{Candidate, Chosen, Cost, Judgment, TaskCompleted, TaskStarted, ThinkingBudget, Validation};
    use proptest::prelude::*;

    fn at(s: &str) -> DateTime<Utc> {
        modelperf_schema::parse_ts(s).unwrap()
    }

    fn model(s: &str) -> ModelRef {
        ModelRef::parse_short(s).unwrap()
    }

    fn ev(id: &str, task: &str, ts: &str, data: Data) -> Event {
        let mut e = Event::new(at(ts), "t", data);
        e.id = Some(id.into());
        e.task_id = Some(task.into());
        e.task_type = Some("code_edit".into());
        e
    }

    /// Every part of task `t`: routing, start, budget, completion, two judgments, validation.
    fn parts(t: &str) -> Vec<Event> {
        let routing = RoutingDecision {
            strategy: "ucb".into(),
            chosen: Chosen { agent_id: "coder".into(), model: model("openai/gpt-4o") },
            candidates: vec![
                Candidate {
                    agent_id: "coder".into(),
                    model: model("openai/gpt-4o"),
                    score: 0.7,
                    probability: Some(0.6),
                },
                Candidate {
                    agent_id: "coder".into(),
                    model: model("anthropic/claude-sonnet-4"),
                    score: 0.5,
                    probability: Some(0.4),
                },
            ],
            probability: None,
            features: BTreeMap::from([("files".into(), modelperf_schema::Feature::Number(3.0))]),
            decision_ms: 2.0,
        };
        let mut done = ev(
            &format!("{t}-c"),
            t,
            "2026-11-27T10:00:05Z",
            Data::TaskCompleted(TaskCompleted {
                latency_ms: 4_000.0,
                ttft_ms: None,
                success: true,
                error_kind: None,
                tokens: None,
                retries: None,
                tool_calls: None,
                cpu_ms: None,
                memory_mb: None,
            }),
        );
        done.model = Some(model("openai/gpt-4o"));
        done.cost = Some(Cost::priced(0.02, "p"));
        done.sample_rate = Some(0.5);
        let judgment = |id: &str, score: f64| {
            ev(
                id,
                t,
                "2026-11-27T10:00:06Z",
                Data::Judgment(Judgment {
                    judge_model: model("openai/gpt-4o-mini"),
                    score,
                    criteria: BTreeMap::new(),
                    confidence: None,
                    passed: None,
                    tokens: None,
                }),
            )
        };
        vec![
            ev(&format!("{t}-r"), t, "2026-11-27T10:00:00Z", Data::RoutingDecision(routing)),
            ev(&format!("{t}-s"), t, "2026-11-27T10:00:01Z", Data::TaskStarted(TaskStarted { queue_ms: Some(5.0) })),
            ev(
                &format!("{t}-b"),
                t,
                "2026-11-27T10:00:01Z",
                Data::ThinkingBudget(ThinkingBudget {
                    budget_tokens: 4_000,
                    used_tokens: 1_000,
                    exhausted: false,
                    complexity: Some("medium".into()),
                }),
            ),
            done,
            judgment(&format!("{t}-j1"), 0.8),
            judgment(&format!("{t}-j2"), 0.6),
            ev(
                &format!("{t}-v"),
                t,
                "2026-11-27T10:00:07Z",
                Data::Validation(Validation {
                    valid: true,
                    violations: vec![],
                    compliance_score: 0.9,
                    duration_ms: 1.0,
                }),
            ),
        ]
    }

    #[test]
    fn a_complete_task_waits_for_the_grace_then_becomes_one_sample() {
        let cfg = RlConfig::default();
        let mut j = Joins::new(&cfg);
        let t0 = at("2026-11-27T10:00:10Z");
        for (i, e) in parts("t1").iter().enumerate() {
            assert_eq!(j.add(e, i as u64 + 1, t0).0, Added::Joined);
        }
        assert!(j.due(t0 + Duration::seconds(4)).0.is_empty(), "within the grace");
        let (ready, expired) = j.due(t0 + Duration::seconds(5));
        assert!(expired.is_empty());
        let s = ready[0].join.sample(&cfg).unwrap();
        assert_eq!(s.task_id, "t1");
        assert_eq!(s.action.chosen, model("openai/gpt-4o"));
        assert_eq!(s.action.probability, Some(0.6), "the chosen candidate's propensity");
        assert_eq!(s.weight, 2.0);
        assert!((s.reward_components["quality"] - 0.7).abs() < 1e-12, "two judgments averaged");
        assert_eq!(s.event_ids.len(), 7);
        // The state holds what the router knew, not what happened.
        for k in ["candidates", "features", "strategy", "budget_tokens", "complexity", "task_type"] {
            assert!(s.state.contains_key(k), "{k}");
        }
        for k in ["chosen", "success", "latency_ms", "reward", "score", "cost_usd"] {
            assert!(!s.state.contains_key(k), "{k} leaks the outcome or the arm");
        }
        // A part arriving later is late, never a second sample.
        let again = &parts("t1")[4];
        assert_eq!(j.add(again, 99, t0 + Duration::seconds(6)).0, Added::Late);
        assert!(j.is_empty());
    }

    #[test]
    fn a_closed_task_is_remembered_for_one_join_window_and_other_tasks_are_not_late() {
        let cfg = RlConfig::default();
        let window = Duration::from_std(cfg.join_window).unwrap();
        let mut j = Joins::new(&cfg);
        let t0 = at("2026-11-27T10:00:10Z");
        for (i, e) in parts("t1").iter().enumerate() {
            j.add(e, i as u64 + 1, t0);
        }
        let (ready, _) = j.due(t0 + Duration::seconds(5));
        assert_eq!(ready.len(), 1);
        let late = &parts("t1")[4];
        assert_eq!(j.add(late, 50, t0 + window).0, Added::Late, "within the window of its close");
        assert_eq!(j.add(&parts("t2")[4], 51, t0 + window).0, Added::Joined, "another task is not late");
        j.due(t0 + Duration::seconds(5) + window);
        assert_eq!(j.add(late, 52, t0 + Duration::seconds(6) + window).0, Added::Joined, "forgotten after a window");
        // A partition that has read nothing yet ticks at the clock's minimum.
        assert!(j.due(DateTime::<Utc>::MIN_UTC).0.is_empty());
    }

    #[test]
    fn incomplete_joins_expire_with_the_missing_part_and_the_cap_evicts_the_oldest() {
        let cfg = RlConfig { max_open_joins: 2, ..RlConfig::default() };
        let mut j = Joins::new(&cfg);
        let t0 = at("2026-11-27T10:00:10Z");
        j.add(&parts("a")[3], 1, t0); // a completion without a judgment
        j.add(&parts("b")[4], 2, t0 + Duration::seconds(1)); // a judgment without a completion
        let (_, evicted) = j.add(&parts("c")[3], 3, t0 + Duration::seconds(2));
        assert_eq!(evicted.map(|(j, why)| (j.task_id, why)), Some(("a".into(), Expiry::Overflow)));
        let (ready, expired) = j.due(t0 + Duration::minutes(11));
        assert!(ready.is_empty());
        let why: Vec<_> = expired.iter().map(|(j, e)| (j.task_id.clone(), e.label())).collect();
        assert_eq!(why, [("b".into(), "missing_task_completed".into()), ("c".into(), "missing_judgment".into())]);
    }

    #[test]
    fn a_rebuilt_join_keeps_the_deadlines_of_the_stream_times_it_was_stored_at() {
        let cfg = RlConfig::default();
        let stored = at("2026-11-27T10:00:10Z");
        // Rebuilt an hour later: the window ran from when the stream stored the part.
        let mut j = Joins::new(&cfg);
        j.add(&parts("t")[3], 7, stored);
        assert!(j.due(stored + Duration::minutes(10) - Duration::milliseconds(1)).1.is_empty());
        let (_, expired) = j.due(stored + Duration::minutes(10));
        assert_eq!(expired.len(), 1);
        // A part stored earlier but read later (a redelivery) moves the opening back.
        let mut j = Joins::new(&cfg);
        j.add(&parts("t")[3], 9, stored);
        j.add(&parts("t")[0], 5, stored - Duration::minutes(3));
        let (_, expired) = j.due(stored + Duration::minutes(7));
        assert_eq!(expired.iter().map(|(j, _)| j.first_seq).collect::<Vec<_>>(), [5]);
        // The grace runs from when the stream stored the last required part.
        let mut j = Joins::new(&cfg);
        j.add(&parts("t")[3], 1, stored);
        j.add(&parts("t")[4], 2, stored + Duration::seconds(30));
        assert!(j.due(stored + Duration::seconds(34)).0.is_empty());
        assert_eq!(j.due(stored + Duration::seconds(35)).0.len(), 1);
    }

    #[test]
    fn the_cap_evicts_in_age_order_and_the_indexes_stay_consistent() {
        let cfg = RlConfig { max_open_joins: 1_000, ..RlConfig::default() };
        let mut j = Joins::new(&cfg);
        let t0 = at("2026-11-27T10:00:00Z");
        let mut evicted = Vec::new();
        for i in 0..5_000u64 {
            let mut e = parts("x")[3].clone();
            e.task_id = Some(format!("task-{i:05}"));
            // Every other task is complete as soon as it opens.
            let (_, out) = j.add(&e, i + 1, t0 + Duration::milliseconds(i as i64));
            evicted.extend(out.map(|(j, why)| (j.task_id.to_string(), why)));
            if i % 2 == 0 {
                let mut judged = parts("x")[4].clone();
                judged.task_id = e.task_id.clone();
                j.add(&judged, i + 1, t0 + Duration::milliseconds(i as i64));
            }
        }
        let want: Vec<_> = (0..4_000).map(|i| (format!("task-{i:05}"), Expiry::Overflow)).collect();
        assert_eq!(evicted, want, "the oldest first, each once");
        assert_eq!((j.len(), j.by_age.len()), (1_000, 1_000));
        assert_eq!(j.by_complete.len(), 500, "evicted complete joins left the grace index");
        let (ready, expired) = j.due(t0 + Duration::hours(1));
        assert_eq!((ready.len(), expired.len()), (500, 500));
        assert!(j.is_empty() && j.by_age.is_empty() && j.by_complete.is_empty());
    }

    proptest! {
        /// Any arrival order, with duplicates: the same sample.
        #[test]
        fn the_sample_does_not_depend_on_arrival_order_or_duplicates(
            order in Just((0..7usize).collect::<Vec<_>>()).prop_shuffle(),
            dups in proptest::collection::vec(0..7usize, 0..5),
        ) {
            let cfg = RlConfig::default();
            let all = parts("t");
            let reference = {
                let mut j = Joins::new(&cfg);
                for (i, e) in all.iter().enumerate() { j.add(e, i as u64 + 1, at("2026-11-27T10:00:10Z")); }
                j.due(at("2026-11-27T11:00:00Z")).0.pop().unwrap().join.sample(&cfg).unwrap()
            };
            let mut j = Joins::new(&cfg);
            for (n, i) in order.iter().chain(dups.iter()).enumerate() {
                j.add(&all[*i], n as u64 + 1, at("2026-11-27T10:00:10Z"));
            }
            let (ready, expired) = j.due(at("2026-11-27T11:00:00Z"));
            prop_assert!(expired.is_empty());
            prop_assert_eq!(ready.len(), 1);
            prop_assert_eq!(ready[0].join.sample(&cfg).unwrap(), reference);
        }
    }
}
