//! One series in one window: what a partition owner folds events into, what partials carry to
//! the finaliser, and what the finaliser merges across partitions and rolls up from `1m` to `1h`.
//!
//! Everything here merges exactly (counts, sums, the sketch's bins, Welford's `{mean, m2, n}` by
//! Chan's formula), so merging the partials of all partitions gives the same window as folding
//! every event into one accumulator, in any order.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use modelperf_schema::messages::{WindowMetrics, WindowState};
use modelperf_schema::{CostStatus, Data, Event};
use modelperf_sketch::Sketch;
use serde::{Deserialize, Serialize};

/// The default group-by of the contract.
pub const DEFAULT_GROUP_BY: [Dim; 6] =
    [Dim::Kind, Dim::Provider, Dim::Model, Dim::ModelVersion, Dim::TaskType, Dim::Tenant];

/// A dimension of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dim {
    /// The event kind.
    Kind,
    /// `model.provider` (the billing API).
    Provider,
    /// `model.name`.
    Model,
    /// `model.version`.
    ModelVersion,
    /// `task_type`.
    TaskType,
    /// `tenant`.
    Tenant,
}

impl Dim {
    /// The tag name in InfluxDB and the key in `dims`.
    pub fn tag(self) -> &'static str {
        match self {
            Dim::Kind => "kind",
            Dim::Provider => "provider",
            Dim::Model => "model",
            Dim::ModelVersion => "model_version",
            Dim::TaskType => "task_type",
            Dim::Tenant => "tenant",
        }
    }

    /// The event's value of this dimension, borrowed.
    pub fn value(self, e: &Event) -> Option<&str> {
        // A judgment's `model` is the judged model: its quality belongs to that model's series.
        let model = e.model.as_ref();
        match self {
            Dim::Kind => Some(e.kind().as_str()),
            Dim::Provider => model.map(|m| m.provider.as_str()),
            Dim::Model => model.map(|m| m.name.as_str()),
            Dim::ModelVersion => model.and_then(|m| m.version.as_deref()),
            Dim::TaskType => e.task_type.as_deref(),
            Dim::Tenant => e.tenant.as_deref(),
        }
    }
}

impl std::str::FromStr for Dim {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DEFAULT_GROUP_BY.into_iter().find(|d| d.tag() == s.trim()).ok_or_else(|| {
            let known: Vec<&str> = DEFAULT_GROUP_BY.iter().map(|d| d.tag()).collect();
            format!("unknown dimension `{s}`; known: {}", known.join(", "))
        })
    }
}

/// A stable hash of a series (16 hex digits of SHA-256 over `key=value\n` in key order): part
/// of the `Nats-Msg-Id` of partials and metrics, and of the finalised-window keys.
pub fn series_hash(dims: &BTreeMap<String, String>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (k, v) in dims {
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
        h.update(b"\n");
    }
    hex::encode(&h.finalize()[..8])
}

/// The series of an event under a group-by: the dimensions it has (a missing one is omitted).
pub fn series_of(e: &Event, group_by: &[Dim]) -> BTreeMap<String, String> {
    group_by.iter().filter_map(|d| d.value(e).map(|v| (d.tag().to_owned(), v.to_owned()))).collect()
}

/// Welford's running mean and sum of squared deviations; merged with Chan's formula.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    /// Observations.
    pub n: u64,
    /// Their mean.
    pub mean: f64,
    /// Sum of squared deviations from the mean.
    pub m2: f64,
}

impl Moments {
    /// Adds one observation.
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    /// Merges another set of observations.
    pub fn merge(&mut self, o: &Moments) {
        if o.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *o;
            return;
        }
        let n = self.n + o.n;
        let delta = o.mean - self.mean;
        self.mean += delta * o.n as f64 / n as f64;
        self.m2 += o.m2 + delta * delta * (self.n as f64 * o.n as f64) / n as f64;
        self.n = n;
    }

    /// The sample variance (n − 1), when there are two observations or more.
    pub fn variance(&self) -> Option<f64> {
        (self.n >= 2).then(|| self.m2 / (self.n - 1) as f64)
    }
}

/// What one series accumulates in one window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Accumulator {
    /// Events seen.
    pub count: u64,
    /// Events represented (each weighted by `1/sample_rate`).
    pub weighted_count: f64,
    /// Successful and failed completions (unweighted).
    pub success: u64,
    #[allow(missing_docs)]
    pub failure: u64,
    /// Weighted successful and all completions, for the weighted success rate.
    pub success_weighted: f64,
    #[allow(missing_docs)]
    pub completions_weighted: f64,
    /// Latency of completions (weighted), in the DataDog encoding when serialised.
    pub latency: Sketch,
    /// Exact latency extremes and weighted sum: the encoding keeps only the bins, and these must
    /// survive a partial's trip to the finaliser unchanged.
    pub latency_min: Option<f64>,
    #[allow(missing_docs)]
    pub latency_max: Option<f64>,
    #[allow(missing_docs)]
    pub latency_sum: f64,
    /// Weighted token sums.
    pub tokens_input: f64,
    #[allow(missing_docs)]
    pub tokens_output: f64,
    /// Weighted cost of priced events, and whether any was priced.
    pub cost_usd: f64,
    #[allow(missing_docs)]
    pub priced: u64,
    /// Events that needed a price and had none.
    pub unpriced: u64,
    /// Judgment scores (unweighted: statistical tests use the real sample sizes).
    pub quality: Moments,
    /// Kind-specific weighted sums.
    pub sums: Sums,
}

/// Kind-specific weighted sums by name (`retries`, `lines_added`, ...): a short list in name
/// order, since a series sees a handful of names. Our own names are static, so an open window
/// allocates no strings for them; a name that arrives on the wire and is not one of ours is
/// kept as an owned string, so nothing a partial carries is dropped.
///
/// A `BTreeMap<String, f64>` did the same job at about ten times the memory per window (a node
/// of eleven slots and a string per name), which mattered with 10 000 series per partition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sums(Vec<(Cow<'static, str>, f64)>);

/// The names [`Accumulator::add`] sums: borrowed again when they arrive on the wire.
const SUM_NAMES: [&str; 14] = [
    "budget_exhausted",
    "budget_tokens",
    "compliance_score",
    "decision_ms",
    "invalid",
    "judgment_passed",
    "lines_added",
    "lines_removed",
    "minimality_score",
    "queue_ms",
    "retries",
    "tool_calls",
    "used_tokens",
    "violations",
];

impl Sums {
    /// Adds `v` to the sum called `name`.
    pub fn add(&mut self, name: &str, v: f64) {
        self.add_with(name, v, || match SUM_NAMES.iter().find(|&&n| n == name) {
            Some(&known) => Cow::Borrowed(known),
            None => Cow::Owned(name.to_owned()),
        });
    }

    fn add_static(&mut self, name: &'static str, v: f64) {
        self.add_with(name, v, || Cow::Borrowed(name));
    }

    fn add_with(&mut self, name: &str, v: f64, owned: impl FnOnce() -> Cow<'static, str>) {
        match self.0.binary_search_by(|(k, _)| k.as_ref().cmp(name)) {
            Ok(i) => self.0[i].1 += v,
            Err(i) => self.0.insert(i, (owned(), v)),
        }
    }

    /// The sum called `name`, if any value was added to it.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.binary_search_by(|(k, _)| k.as_ref().cmp(name)).ok().map(|i| self.0[i].1)
    }

    /// The sums in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), *v))
    }

    /// The wire form.
    pub fn to_map(&self) -> BTreeMap<String, f64> {
        self.iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// From the wire form.
    pub fn from_map(map: &BTreeMap<String, f64>) -> Self {
        let mut sums = Sums(Vec::with_capacity(map.len()));
        for (k, v) in map {
            sums.add(k, *v);
        }
        sums
    }
}

/// The weight of an event: `1/sample_rate` (1 without a rate, and never below 1).
pub fn weight_of(e: &Event) -> f64 {
    match e.sample_rate {
        Some(r) if r > 0.0 && r <= 1.0 => 1.0 / r,
        _ => 1.0,
    }
}

impl Accumulator {
    /// Folds one event in.
    pub fn add(&mut self, e: &Event) {
        let w = weight_of(e);
        self.count += 1;
        self.weighted_count += w;
        if let Some(cost) = &e.cost {
            match (cost.usd, cost.status) {
                (Some(usd), _) if usd.is_finite() => {
                    self.cost_usd += usd * w;
                    self.priced += 1;
                }
                (_, Some(CostStatus::Unpriced | CostStatus::UnknownTokens)) | (_, None) => self.unpriced += 1,
            }
        }
        if let Some(t) = e.data.tokens() {
            self.tokens_input += t.input as f64 * w;
            self.tokens_output += t.output as f64 * w;
        }
        match &e.data {
            Data::TaskCompleted(d) => {
                self.completions_weighted += w;
                if d.success {
                    self.success += 1;
                    self.success_weighted += w;
                } else {
                    self.failure += 1;
                }
                if d.latency_ms.is_finite() && d.latency_ms >= 0.0 {
                    self.latency.add_weighted(d.latency_ms, w);
                    self.latency_min = Some(self.latency_min.map_or(d.latency_ms, |m| m.min(d.latency_ms)));
                    self.latency_max = Some(self.latency_max.map_or(d.latency_ms, |m| m.max(d.latency_ms)));
                    self.latency_sum += d.latency_ms * w;
                }
                self.sum("retries", d.retries.map(|r| r as f64), w);
                self.sum("tool_calls", d.tool_calls.map(|r| r as f64), w);
            }
            Data::Judgment(d) => {
                self.quality.add(d.score);
                self.sum("judgment_passed", d.passed.map(|p| f64::from(u8::from(p))), w);
            }
            Data::Minimality(d) => {
                self.sum("lines_added", Some(d.lines_added as f64), w);
                self.sum("lines_removed", Some(d.lines_removed as f64), w);
                self.sum("minimality_score", Some(d.score), w);
            }
            Data::ThinkingBudget(d) => {
                self.sum("budget_tokens", Some(d.budget_tokens as f64), w);
                self.sum("used_tokens", Some(d.used_tokens as f64), w);
                self.sum("budget_exhausted", Some(f64::from(u8::from(d.exhausted))), w);
            }
            Data::Validation(d) => {
                self.sum("invalid", Some(f64::from(u8::from(!d.valid))), w);
                self.sum("violations", Some(d.violations.len() as f64), w);
                self.sum("compliance_score", Some(d.compliance_score), w);
            }
            Data::RoutingDecision(d) => self.sum("decision_ms", Some(d.decision_ms), w),
            Data::TaskStarted(d) => self.sum("queue_ms", d.queue_ms, w),
            Data::AgentStatus(_) | Data::Custom(_) => {}
        }
    }

    fn sum(&mut self, name: &'static str, value: Option<f64>, w: f64) {
        if let Some(v) = value.filter(|v| v.is_finite()) {
            self.sums.add_static(name, v * w);
        }
    }

    /// Merges another accumulator of the same series and window.
    pub fn merge(&mut self, o: &Accumulator) -> Result<(), modelperf_sketch::SketchError> {
        self.latency.merge(&o.latency)?;
        self.latency_min = match (self.latency_min, o.latency_min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.latency_max = match (self.latency_max, o.latency_max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.latency_sum += o.latency_sum;
        self.count += o.count;
        self.weighted_count += o.weighted_count;
        self.success += o.success;
        self.failure += o.failure;
        self.success_weighted += o.success_weighted;
        self.completions_weighted += o.completions_weighted;
        self.tokens_input += o.tokens_input;
        self.tokens_output += o.tokens_output;
        self.cost_usd += o.cost_usd;
        self.priced += o.priced;
        self.unpriced += o.unpriced;
        self.quality.merge(&o.quality);
        for (k, v) in o.sums.iter() {
            self.sums.add(k, v);
        }
        Ok(())
    }

    /// A weighted latency quantile (DDSketch, 1 % relative accuracy), kept within the exact
    /// extremes.
    pub fn latency_quantile(&self, q: f64) -> Option<f64> {
        let v = self.latency.quantile(q)?;
        Some(match (self.latency_min, self.latency_max) {
            (Some(lo), Some(hi)) => v.clamp(lo, hi),
            _ => v,
        })
    }

    /// The metrics message of this window. Fields without data are `None` (and are then not
    /// written); non-finite values never leave here.
    pub fn metrics(
        &self,
        window: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        revision: u32,
        dims: BTreeMap<String, String>,
    ) -> WindowMetrics {
        let finite = |v: Option<f64>| v.filter(|x| x.is_finite());
        let q = |p: f64| finite(self.latency_quantile(p));
        let has_quality = self.quality.n > 0;
        WindowMetrics {
            window: window.to_owned(),
            start,
            end,
            revision,
            dims,
            count: self.count,
            weighted_count: self.weighted_count,
            success: self.success,
            failure: self.failure,
            success_rate: finite(
                (self.completions_weighted > 0.0).then(|| self.success_weighted / self.completions_weighted),
            ),
            latency_p50_ms: q(0.5),
            latency_p90_ms: q(0.9),
            latency_p95_ms: q(0.95),
            latency_p99_ms: q(0.99),
            latency_max_ms: finite(self.latency_max),
            latency_mean_ms: finite(
                (self.completions_weighted > 0.0 && !self.latency.is_empty())
                    .then(|| self.latency_sum / self.latency.count()),
            ),
            tokens_input: self.tokens_input.round() as u64,
            tokens_output: self.tokens_output.round() as u64,
            cost_usd: finite((self.priced > 0).then_some(self.cost_usd)),
            unpriced: self.unpriced,
            quality_mean: finite(has_quality.then_some(self.quality.mean)),
            quality_m2: finite(has_quality.then_some(self.quality.m2)),
            quality_n: self.quality.n,
            sums: self.sums.iter().filter(|(_, v)| v.is_finite()).map(|(k, v)| (k.to_owned(), v)).collect(),
            latency_sketch: if self.latency.is_empty() { Vec::new() } else { self.latency.to_bytes() },
        }
    }
}

impl Accumulator {
    /// The wire form of a partial (`WindowState`), with the sketch in its DataDog encoding.
    pub fn to_state(&self) -> WindowState {
        WindowState {
            count: self.count,
            weighted_count: self.weighted_count,
            success: self.success,
            failure: self.failure,
            success_weighted: self.success_weighted,
            completions_weighted: self.completions_weighted,
            latency_sketch: if self.latency.is_empty() { Vec::new() } else { self.latency.to_bytes() },
            latency_min: self.latency_min,
            latency_max: self.latency_max,
            latency_sum: self.latency_sum,
            tokens_input: self.tokens_input,
            tokens_output: self.tokens_output,
            cost_usd: self.cost_usd,
            priced: self.priced,
            unpriced: self.unpriced,
            quality_n: self.quality.n,
            quality_mean: self.quality.mean,
            quality_m2: self.quality.m2,
            sums: self.sums.to_map(),
        }
    }

    /// Back from the wire; fails on a sketch that does not decode and on a value that is not
    /// finite (NaN or infinite: our own states never hold one, so it is a corrupt or hostile
    /// partial, and it would poison every merge after it).
    pub fn from_state(s: &WindowState) -> Result<Self, StateError> {
        let values = [
            ("weighted_count", Some(s.weighted_count)),
            ("success_weighted", Some(s.success_weighted)),
            ("completions_weighted", Some(s.completions_weighted)),
            ("latency_min", s.latency_min),
            ("latency_max", s.latency_max),
            ("latency_sum", Some(s.latency_sum)),
            ("tokens_input", Some(s.tokens_input)),
            ("tokens_output", Some(s.tokens_output)),
            ("cost_usd", Some(s.cost_usd)),
            ("quality_mean", Some(s.quality_mean)),
            ("quality_m2", Some(s.quality_m2)),
        ];
        let named = values.iter().filter_map(|(name, v)| v.map(|v| (Cow::Borrowed(*name), v)));
        let sums = s.sums.iter().map(|(name, v)| (Cow::Owned(format!("sums.{name}")), *v));
        if let Some((field, _)) = named.chain(sums).find(|(_, v)| !v.is_finite()) {
            return Err(StateError::NotFinite(field.into_owned()));
        }
        let latency = if s.latency_sketch.is_empty() { Sketch::new() } else { Sketch::from_bytes(&s.latency_sketch)? };
        Ok(Self {
            count: s.count,
            weighted_count: s.weighted_count,
            success: s.success,
            failure: s.failure,
            success_weighted: s.success_weighted,
            completions_weighted: s.completions_weighted,
            latency,
            latency_min: s.latency_min,
            latency_max: s.latency_max,
            latency_sum: s.latency_sum,
            tokens_input: s.tokens_input,
            tokens_output: s.tokens_output,
            cost_usd: s.cost_usd,
            priced: s.priced,
            unpriced: s.unpriced,
            quality: Moments { n: s.quality_n, mean: s.quality_mean, m2: s.quality_m2 },
            sums: Sums::from_map(&s.sums),
        })
    }
}

/// Why a window state from the wire (a partial, a persisted window) was refused.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Its latency sketch does not decode.
    #[error("sketch: {0}")]
    Sketch(#[from] modelperf_sketch::SketchError),
    /// A value that is NaN or infinite, named by its field.
    #[error("{0} is not finite")]
    NotFinite(String),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use modelperf_schema::{Cost, Judgment, ModelRef, TaskCompleted, Tokens};
    use proptest::prelude::*;

    fn completion(latency_ms: f64, success: bool, rate: f64, usd: Option<f64>) -> Event {
        let mut e = Event::new(
            Utc::now(),
            "t",
            Data::TaskCompleted(TaskCompleted {
                latency_ms,
                ttft_ms: None,
                success,
                error_kind: None,
                tokens: Some(Tokens { input: 100, output: 10, ..Tokens::default() }),
                retries: Some(1),
                tool_calls: None,
                cpu_ms: None,
                memory_mb: None,
            }),
        );
        e.model = Some(ModelRef::new("openai", "gpt-4o"));
        e.task_type = Some("code_edit".into());
        e.sample_rate = Some(rate);
        e.cost = Some(match usd {
            Some(v) => Cost::priced(v, "p"),
            None => Cost::missing(CostStatus::Unpriced),
        });
        e
    }

    fn judgment(score: f64) -> Event {
        let mut e = Event::new(
            Utc::now(),
            "t",
            Data::Judgment(Judgment {
                judge_model: ModelRef::new("openai", "gpt-4.1"),
                score,
                criteria: BTreeMap::new(),
                confidence: None,
                passed: Some(score > 0.5),
                tokens: None,
            }),
        );
        e.model = Some(ModelRef::new("openai", "gpt-4o"));
        e
    }

    #[test]
    fn a_state_with_a_value_that_is_not_finite_is_refused_by_name() {
        let mut acc = Accumulator::default();
        acc.add(&completion(100.0, true, 1.0, Some(0.01)));
        let good = acc.to_state();
        assert!(Accumulator::from_state(&good).is_ok());
        let mut nan_sum = good.clone();
        nan_sum.sums.insert("tool_calls".into(), f64::NAN);
        let err = Accumulator::from_state(&nan_sum).unwrap_err();
        assert!(matches!(&err, StateError::NotFinite(f) if f == "sums.tool_calls"), "{err}");
        let mut inf_cost = good.clone();
        inf_cost.cost_usd = f64::INFINITY;
        let err = Accumulator::from_state(&inf_cost).unwrap_err();
        assert!(matches!(&err, StateError::NotFinite(f) if f == "cost_usd"), "{err}");
        let mut nan_min = good;
        nan_min.latency_min = Some(f64::NAN);
        assert!(matches!(Accumulator::from_state(&nan_min), Err(StateError::NotFinite(_))));
    }

    #[test]
    fn weights_counts_and_rates() {
        let mut a = Accumulator::default();
        a.add(&completion(100.0, true, 0.5, Some(0.01)));
        a.add(&completion(300.0, false, 1.0, None));
        assert_eq!((a.count, a.success, a.failure), (2, 1, 1));
        assert_eq!(a.weighted_count, 3.0);
        let m =
            a.metrics("1m", Utc::now(), Utc::now(), 0, series_of(&completion(1.0, true, 1.0, None), &DEFAULT_GROUP_BY));
        assert_eq!(m.success_rate, Some(2.0 / 3.0), "weighted: 2 of 3 represented completions");
        assert_eq!(m.cost_usd, Some(0.02));
        assert_eq!(m.unpriced, 1);
        assert_eq!(m.tokens_input, 300);
        assert_eq!(m.sums["retries"], 3.0);
        assert_eq!(m.dims["model"], "gpt-4o");
        assert!(!m.dims.contains_key("tenant"), "missing dimensions are omitted");
        assert!(!m.latency_sketch.is_empty());
        // Lower weighted quantile: 100 ms carries 2 of the 3 represented completions.
        let p99 = m.latency_p99_ms.unwrap();
        assert!((p99 - 100.0).abs() <= 1.0, "{p99}");
        assert_eq!(m.latency_max_ms, Some(300.0));
        assert!((m.latency_mean_ms.unwrap() - 500.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn sums_keep_every_name_in_order_and_borrow_ours() {
        let mut s = Sums::default();
        s.add("retries", 1.0);
        s.add("zeta_from_a_newer_version", 2.0);
        s.add("retries", 2.0);
        s.add("budget_tokens", 5.0);
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            [("budget_tokens", 5.0), ("retries", 3.0), ("zeta_from_a_newer_version", 2.0)]
        );
        assert_eq!(s.get("retries"), Some(3.0));
        assert_eq!(s.get("lines_added"), None);
        let back = Sums::from_map(&s.to_map());
        assert_eq!(back, s);
        let borrowed: Vec<bool> = back.0.iter().map(|(k, _)| matches!(k, Cow::Borrowed(_))).collect();
        assert_eq!(borrowed, [true, true, false]);
    }

    #[test]
    fn every_name_the_fold_sums_is_interned() {
        // The names `Accumulator::add` passes to `sum`, read from this file: one missing from
        // SUM_NAMES would cost a string per series and window in the finaliser.
        let source = include_str!("window.rs");
        let names: Vec<&str> = source.split("self.sum(\"").skip(1).filter_map(|rest| rest.split('"').next()).collect();
        assert!(names.len() >= 14, "found {names:?}");
        for name in names {
            assert!(SUM_NAMES.contains(&name), "`{name}` is summed but not in SUM_NAMES");
        }
    }

    #[test]
    fn empty_fields_stay_empty() {
        let mut a = Accumulator::default();
        a.add(&judgment(0.8));
        let m = a.metrics("1m", Utc::now(), Utc::now(), 0, BTreeMap::new());
        assert_eq!(m.success_rate, None);
        assert_eq!(m.latency_p50_ms, None);
        assert_eq!(m.cost_usd, None);
        assert!(m.latency_sketch.is_empty());
        assert_eq!((m.quality_n, m.quality_mean), (1, Some(0.8)));
    }

    proptest! {
        #[test]
        fn merging_partials_equals_folding_everything(
            events in proptest::collection::vec((0.1f64..60_000.0, any::<bool>(), 1u32..5, 0.0f64..1.0), 1..200),
            split in 0usize..200,
        ) {
            let evs: Vec<Event> = events
                .iter()
                .map(|(lat, ok, k, q)| if *k == 4 { judgment(*q) } else { completion(*lat, *ok, 1.0 / f64::from(*k), Some(lat / 1e6)) })
                .collect();
            let split = split.min(evs.len());
            let (mut whole, mut left, mut right) = (Accumulator::default(), Accumulator::default(), Accumulator::default());
            for e in &evs { whole.add(e); }
            for e in &evs[..split] { left.add(e); }
            for e in &evs[split..] { right.add(e); }
            right.merge(&left).unwrap();
            prop_assert_eq!(whole.count, right.count);
            prop_assert_eq!(whole.success, right.success);
            prop_assert!((whole.weighted_count - right.weighted_count).abs() < 1e-9);
            prop_assert!((whole.cost_usd - right.cost_usd).abs() < 1e-9);
            prop_assert_eq!(whole.quality.n, right.quality.n);
            prop_assert!((whole.quality.mean - right.quality.mean).abs() < 1e-9);
            prop_assert!((whole.quality.m2 - right.quality.m2).abs() < 1e-6);
            for p in [0.5, 0.9, 0.99] {
                prop_assert_eq!(whole.latency_quantile(p), right.latency_quantile(p));
            }
            prop_assert_eq!(whole.latency_min, right.latency_min);
            prop_assert_eq!(whole.latency_max, right.latency_max);
            // And through the wire: the partial survives MessagePack with its sketch.
            let bytes = rmp_serde::to_vec_named(&right.to_state()).unwrap();
            let back = Accumulator::from_state(&rmp_serde::from_slice(&bytes).unwrap()).unwrap();
            for p in [0.0, 0.5, 0.9, 0.99, 1.0] {
                prop_assert_eq!(back.latency_quantile(p), right.latency_quantile(p));
            }
            prop_assert_eq!(back.latency_max, right.latency_max);
        }
    }

    /// Keeping each task with probability 1/k and weighting what is kept by k estimates the
    /// full stream without bias: over many independent samplings the mean estimate of the count
    /// and of the success total is within a few standard errors of the truth, and every single
    /// estimate within 5 standard deviations.
    #[test]
    fn weighted_counts_are_unbiased_under_one_in_k_sampling() {
        fn mix(mut x: u64) -> u64 {
            // splitmix64: a well-spread hash of (seed, task), like the collector's keyed hash.
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        }
        const N: u64 = 20_000;
        const SEEDS: u64 = 40;
        let successes = (0..N).filter(|i| i % 7 != 0).count() as f64;
        for k in [2u64, 4, 10] {
            let (mut sum_count, mut sum_success) = (0.0, 0.0);
            let sd = ((N * (k - 1)) as f64).sqrt();
            for seed in 0..SEEDS {
                let mut acc = Accumulator::default();
                for i in (0..N).filter(|i| mix(seed << 32 | i).is_multiple_of(k)) {
                    acc.add(&completion(100.0, i % 7 != 0, 1.0 / k as f64, None));
                }
                assert!((acc.weighted_count - N as f64).abs() < 5.0 * sd, "k={k} seed={seed}: {}", acc.weighted_count);
                sum_count += acc.weighted_count;
                sum_success += acc.success_weighted;
            }
            let (mean_count, mean_success) = (sum_count / SEEDS as f64, sum_success / SEEDS as f64);
            let se = sd / (SEEDS as f64).sqrt();
            assert!((mean_count - N as f64).abs() < 4.0 * se, "k={k}: mean estimate {mean_count} of {N}");
            assert!((mean_success - successes).abs() < 4.0 * se, "k={k}: mean successes {mean_success} of {successes}");
        }
    }

    #[test]
    fn welford_matches_the_textbook_variance() {
        let xs = [0.2, 0.4, 0.9, 0.5, 0.7];
        let mut m = Moments::default();
        xs.iter().for_each(|x| m.add(*x));
        let mean = xs.iter().sum::<f64>() / 5.0;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 4.0;
        assert!((m.mean - mean).abs() < 1e-12);
        assert!((m.variance().unwrap() - var).abs() < 1e-12);
    }
}
