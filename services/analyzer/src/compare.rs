//! Comparison: which model is better for a task type over a period, and how sure that is.
//!
//! [`build`] is a pure function of the period's metrics windows and, where per-task data is
//! needed, its clean events ([`source`] reads both). Two designs:
//!
//! - **Observational** (production traffic; the router's choices confound it): per model, the
//!   success rate with its Wilson interval, latency p50/p95 from the merged sketches with a
//!   bootstrap interval over windows, the mean quality with its t interval (pooled from the
//!   windows' `{mean, m2, n}`), cost per task and per successful task; for every pair the
//!   two-proportion z-test (with Newcombe's interval of the difference), Welch's t-test on quality
//!   (with the Welch interval of the difference) and the bootstrap interval of the p95 ratio; all
//!   p-values adjusted together (Holm by default, or Benjamini–Hochberg); the quality-vs-cost
//!   Pareto front; a ranking in tiers of models that cannot be separated; and, where the routing
//!   decisions carry propensities, inverse-propensity-weighted (Hájek) success rates and quality.
//! - **Paired** (a benchmark run: the models answered the same `benchmark.case_id`s): for every
//!   pair, on the cases both answered, McNemar's exact test on success, Wilcoxon's signed-rank
//!   test on quality and on latency, with the mean quality difference's paired t interval and the
//!   number of shared cases; p-values adjusted together.

pub mod source;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use modelperf_schema::event::{Data, Event};
use modelperf_schema::messages::{Design, WindowMetrics};
use modelperf_sketch::Sketch;
use modelperf_stats::{
    Bootstrap, Logged, Moments, benjamini_hochberg, discordant_counts, holm, ipw_mean_self_normalised, mcnemar_exact,
    newcombe_difference_interval, two_proportion_z_test, welch_difference_interval, welch_t_test_moments,
    wilcoxon_signed_rank, wilson_interval,
};
use serde::{Deserialize, Serialize};

use crate::report::{CONFIDENCE, Estimate, Latency, Left, Tally, latest_windows, model_label, pareto_front};

/// How the p-values of one comparison are adjusted for their number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Correction {
    /// Holm's step-down method: controls the family-wise error rate.
    #[default]
    Holm,
    /// Benjamini–Hochberg: controls the false discovery rate.
    Bh,
}

impl Correction {
    /// `holm` or `bh`.
    pub fn name(self) -> &'static str {
        match self {
            Correction::Holm => "holm",
            Correction::Bh => "bh",
        }
    }

    /// Parses `holm` or `bh`.
    pub fn parse(s: &str) -> Option<Correction> {
        [Correction::Holm, Correction::Bh].into_iter().find(|c| c.name() == s)
    }

    /// The adjusted p-values, in the order given.
    pub fn adjust(self, p: &[f64]) -> Vec<f64> {
        if p.is_empty() {
            return Vec::new();
        }
        let adjusted = match self {
            Correction::Holm => holm(p),
            Correction::Bh => benjamini_hochberg(p),
        };
        // p-values come from the tests, so they are in [0, 1]: the correction cannot refuse them.
        adjusted.unwrap_or_else(|_| vec![1.0; p.len()])
    }
}

/// What a comparison is built from.
#[derive(Debug, Clone)]
pub struct Input {
    /// The task type compared.
    pub task_type: String,
    /// The period, `[start, end)`.
    pub start: DateTime<Utc>,
    #[allow(missing_docs)]
    pub end: DateTime<Utc>,
    /// The window length read, e.g. `1h`.
    pub window: String,
    /// Metrics windows (any task type, any order; the highest revision of each wins).
    pub metrics: Vec<WindowMetrics>,
    /// Clean events (routing decisions, completions, judgments) for the weighted estimates and
    /// the paired design; may be empty.
    pub events: Vec<Event>,
    /// Compare this benchmark run paired instead of the production windows.
    pub run: Option<String>,
    /// The multiple-testing correction.
    pub correction: Correction,
    /// The level at which an adjusted p-value separates two models.
    pub alpha: f64,
    /// The bootstrap of the latency intervals.
    pub bootstrap: Bootstrap,
    /// Messages that did not decode.
    pub undecodable: u64,
}

/// One pairwise test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Test {
    /// `two_proportion_z`, `welch_t`, `mcnemar_exact`, `wilcoxon_signed_rank`.
    pub test: String,
    /// The statistic (z, t, the discordant count, min(R⁺, R⁻)).
    pub statistic: f64,
    /// The p-value before and after the correction.
    pub p_value: f64,
    #[allow(missing_docs)]
    pub p_adjusted: f64,
    /// Whether `p_adjusted` ≤ α.
    pub significant: bool,
}

/// One model's figures over the period (observational).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFigures {
    /// `provider/name@version`.
    pub model: String,
    /// Windows with completions (the bootstrap's units).
    pub windows: u64,
    /// Completions seen and their outcomes (unweighted).
    pub completions: u64,
    #[allow(missing_docs)]
    pub success: u64,
    #[allow(missing_docs)]
    pub failure: u64,
    /// Success rate with its Wilson interval.
    pub success_rate: Option<Estimate>,
    /// Latency percentiles (ms) of the merged sketch, with bootstrap intervals over windows.
    pub latency_p50_ms: Option<Estimate>,
    #[allow(missing_docs)]
    pub latency_p95_ms: Option<Estimate>,
    /// Mean judgment score with its t interval, and the judgments behind it.
    pub quality: Option<Estimate>,
    #[allow(missing_docs)]
    pub quality_n: u64,
    /// Cost per completion and per successful completion (USD), over fully priced windows.
    pub cost_per_task: Option<f64>,
    #[allow(missing_docs)]
    pub cost_per_success: Option<f64>,
    /// Events that needed a price and had none.
    pub unpriced: u64,
    /// On the quality-vs-cost Pareto front.
    pub pareto: bool,
}

/// Two models compared (observational); differences are `a − b`, the ratio `a / b`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    #[allow(missing_docs)]
    pub a: String,
    #[allow(missing_docs)]
    pub b: String,
    /// Success-rate difference with Newcombe's interval, and the z-test.
    pub success_diff: Option<Estimate>,
    #[allow(missing_docs)]
    pub success_test: Option<Test>,
    /// Quality difference with the Welch interval, and Welch's t-test.
    pub quality_diff: Option<Estimate>,
    #[allow(missing_docs)]
    pub quality_test: Option<Test>,
    /// The p95 latency ratio with its bootstrap interval (no p-value: an interval that excludes 1
    /// separates them).
    pub latency_p95_ratio: Option<Estimate>,
}

/// Models ranked on one metric, best first, in tiers: a model joins a tier when no test separates
/// it from any model already in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranking {
    /// `success_rate` or `quality`.
    pub metric: String,
    /// The tiers, best first; the models of one tier cannot be separated.
    pub tiers: Vec<Vec<String>>,
}

/// A model's inverse-propensity-weighted estimate of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Weighted {
    #[allow(missing_docs)]
    pub model: String,
    /// `success_rate` or `quality`.
    pub metric: String,
    /// The self-normalised (Hájek) estimate with its normal 95 % interval.
    pub estimate: Estimate,
    /// Its standard error.
    pub standard_error: f64,
    /// Kish's effective sample size of the tasks it served.
    pub effective_sample_size: f64,
    /// Tasks it served, and decisions where it was a candidate with a propensity.
    pub chosen: u64,
    #[allow(missing_docs)]
    pub decisions: u64,
}

/// The observational comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observational {
    /// Windows used (after revisions were collapsed).
    pub windows: u64,
    /// Per model, by label.
    pub models: Vec<ModelFigures>,
    /// Every pair, in label order.
    pub pairs: Vec<Pair>,
    /// Rankings by success rate and by quality.
    pub rankings: Vec<Ranking>,
    /// The quality-vs-cost Pareto front, cheapest first.
    pub pareto_front: Vec<String>,
    /// Weighted estimates, where routing decisions with propensities and outcomes were read.
    pub weighted: Vec<Weighted>,
}

/// One model in a benchmark run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedModel {
    #[allow(missing_docs)]
    pub model: String,
    /// Cases it completed.
    pub cases: u64,
    /// Success rate over its cases with the Wilson interval.
    pub success_rate: Option<Estimate>,
    /// Mean quality over its judged cases with its t interval.
    pub quality: Option<Estimate>,
    /// Median latency (ms) over its cases.
    pub latency_median_ms: Option<f64>,
    /// Completions of a case beyond the first (the first is compared).
    pub duplicates: u64,
}

/// Two models on the cases both answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedPair {
    #[allow(missing_docs)]
    pub a: String,
    #[allow(missing_docs)]
    pub b: String,
    /// Cases both completed.
    pub shared_cases: u64,
    /// Cases only `a` succeeded on, and only `b`.
    pub only_a_succeeded: u64,
    #[allow(missing_docs)]
    pub only_b_succeeded: u64,
    /// Success-rate difference on the shared cases, and McNemar's exact test.
    pub success_diff: Option<f64>,
    #[allow(missing_docs)]
    pub success_test: Option<Test>,
    /// Cases both were judged on, the mean quality difference with its paired t interval, and
    /// the signed-rank test.
    pub judged_cases: u64,
    #[allow(missing_docs)]
    pub quality_diff: Option<Estimate>,
    #[allow(missing_docs)]
    pub quality_test: Option<Test>,
    /// The median latency difference (ms) and the signed-rank test.
    pub latency_median_diff_ms: Option<f64>,
    #[allow(missing_docs)]
    pub latency_test: Option<Test>,
}

/// The paired comparison of a benchmark run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paired {
    /// The run.
    pub run: String,
    /// Distinct cases seen.
    pub cases: u64,
    #[allow(missing_docs)]
    pub models: Vec<PairedModel>,
    #[allow(missing_docs)]
    pub pairs: Vec<PairedPair>,
    /// Rankings by success rate and by quality from the paired tests.
    pub rankings: Vec<Ranking>,
}

/// A comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Schema of this JSON, `1`.
    pub v: u32,
    #[allow(missing_docs)]
    pub task_type: String,
    #[allow(missing_docs)]
    pub start: DateTime<Utc>,
    #[allow(missing_docs)]
    pub end: DateTime<Utc>,
    /// The window length read.
    pub window: String,
    /// `observational`, or `paired` for a benchmark run.
    pub design: Design,
    /// `holm` or `bh`, and the level.
    pub correction: String,
    #[allow(missing_docs)]
    pub alpha: f64,
    /// Tests adjusted together.
    pub tests: u64,
    /// The observational comparison (production windows), without `--run`.
    pub observational: Option<Observational>,
    /// The paired comparison, with `--run`.
    pub paired: Option<Paired>,
    /// What was left out and why.
    pub notes: Vec<String>,
}

/// Builds the comparison. Never fails: what cannot be used is named in `notes`.
pub fn build(input: &Input) -> Comparison {
    let mut notes = Vec::new();
    if input.undecodable > 0 {
        notes.push(format!("{} messages did not decode and are left out", input.undecodable));
    }
    let (design, observational, paired, tests) = match &input.run {
        Some(run) => {
            let (p, tests) = paired(input, run, &mut notes);
            (Design::Paired, None, Some(p), tests)
        }
        None => {
            let (o, tests) = observational(input, &mut notes);
            (Design::Observational, Some(o), None, tests)
        }
    };
    Comparison {
        v: 1,
        task_type: input.task_type.clone(),
        start: input.start,
        end: input.end,
        window: input.window.clone(),
        design,
        correction: input.correction.name().into(),
        alpha: input.alpha,
        tests,
        observational,
        paired,
        notes,
    }
}

#[derive(Default)]
struct Model {
    tally: Tally,
    /// One merged sketch per window start: the bootstrap's units.
    windows: BTreeMap<i64, Sketch>,
}

fn merged(units: &[&Sketch]) -> Sketch {
    let mut s = Sketch::new();
    for u in units {
        // Units were merged once already, so they share the mapping: merging cannot fail.
        let _ = s.merge(u);
    }
    s
}

fn quantile_of(units: &[&Sketch], q: f64) -> Option<f64> {
    merged(units).quantile(q)
}

/// A percentile of the merged windows with its bootstrap interval over windows.
fn percentile(b: &Bootstrap, units: &[Sketch], q: f64) -> Option<Estimate> {
    let i = b.interval(units, |r| quantile_of(r, q)).ok()?;
    Some(Estimate { value: i.estimate, low: i.low, high: i.high })
}

/// The p-values gathered while building, adjusted together at the end.
#[derive(Default)]
struct Family {
    p: Vec<f64>,
}

/// A test waiting for its adjusted p-value: its index in the family.
struct Pending {
    test: &'static str,
    statistic: f64,
    index: usize,
}

impl Family {
    fn add(&mut self, test: &'static str, statistic: f64, p_value: f64) -> Pending {
        self.p.push(p_value);
        Pending { test, statistic, index: self.p.len() - 1 }
    }

    fn finish(&self, pending: Option<Pending>, adjusted: &[f64], alpha: f64) -> Option<Test> {
        let p = pending?;
        let p_adjusted = adjusted[p.index];
        Some(Test {
            test: p.test.into(),
            statistic: p.statistic,
            p_value: self.p[p.index],
            p_adjusted,
            significant: p_adjusted <= alpha,
        })
    }
}

fn observational(input: &Input, notes: &mut Vec<String>) -> (Observational, u64) {
    let windows = latest_windows(&input.metrics, &input.window, input.start, input.end);
    let windows: Vec<_> =
        windows.into_iter().filter(|m| m.dims.get("task_type").is_some_and(|t| *t == input.task_type)).collect();
    let mut models: BTreeMap<String, Model> = BTreeMap::new();
    let mut left = Left::default();
    for m in &windows {
        let Some(label) = model_label(&m.dims) else {
            left.no_model += 1;
            continue;
        };
        let model = models.entry(label).or_default();
        let latency = model.tally.fold(m);
        left.count(&latency);
        if let Latency::Sketch(s) = latency
            && model.windows.entry(m.start.timestamp()).or_default().merge(&s).is_err()
        {
            left.bad_sketch += 1;
        }
    }
    left.notes(notes);
    if windows.is_empty() {
        notes.push(format!("no {} windows of task type {:?} in the period", input.window, input.task_type));
    }

    let units: BTreeMap<&str, Vec<Sketch>> =
        models.iter().map(|(label, m)| (label.as_str(), m.windows.values().cloned().collect())).collect();
    let mut figures: Vec<ModelFigures> = models
        .iter()
        .map(|(label, m)| {
            let t = &m.tally;
            let u = &units[label.as_str()];
            ModelFigures {
                model: label.clone(),
                windows: u.len() as u64,
                completions: t.completions,
                success: t.success,
                failure: t.failure,
                success_rate: t.success_rate(),
                latency_p50_ms: percentile(&input.bootstrap, u, 0.50),
                latency_p95_ms: percentile(&input.bootstrap, u, 0.95),
                quality: t.quality(),
                quality_n: t.quality.n,
                cost_per_task: t.cost_per_task(),
                cost_per_success: t.cost_per_success(),
                unpriced: t.unpriced,
                pareto: false,
            }
        })
        .collect();
    let points: Vec<(usize, f64, f64)> =
        figures.iter().enumerate().filter_map(|(i, m)| Some((i, m.quality?.value, m.cost_per_task?))).collect();
    let pareto_front: Vec<String> = pareto_front(&points)
        .into_iter()
        .map(|i| {
            figures[i].pareto = true;
            figures[i].model.clone()
        })
        .collect();

    // Every pair: the tests go into one family, adjusted together.
    let mut family = Family::default();
    let mut pending = Vec::new();
    let labels: Vec<&String> = models.keys().collect();
    for (i, a) in labels.iter().enumerate() {
        for b in &labels[i + 1..] {
            let (ta, tb) = (&models[*a].tally, &models[*b].tally);
            let (na, nb) = (ta.success + ta.failure, tb.success + tb.failure);
            let success_diff =
                newcombe_difference_interval(ta.success, na, tb.success, nb, CONFIDENCE).ok().map(|i| Estimate {
                    value: ta.success as f64 / na as f64 - tb.success as f64 / nb as f64,
                    low: i.low,
                    high: i.high,
                });
            let success = two_proportion_z_test(ta.success, na, tb.success, nb)
                .ok()
                .map(|z| family.add("two_proportion_z", z.z, z.p_value));
            let quality_diff = match (ta.quality.summary(), tb.quality.summary()) {
                (Some(qa), Some(qb)) => welch_difference_interval(&qa, &qb, CONFIDENCE).ok().map(|i| Estimate {
                    value: qa.mean - qb.mean,
                    low: i.low,
                    high: i.high,
                }),
                _ => None,
            };
            let quality =
                welch_t_test_moments(&ta.quality, &tb.quality).ok().map(|t| family.add("welch_t", t.t, t.p_value));
            let (ua, ub) = (&units[a.as_str()], &units[b.as_str()]);
            let latency_p95_ratio = input
                .bootstrap
                .interval_two_sample(ua, ub, |ra, rb| Some(quantile_of(ra, 0.95)? / quantile_of(rb, 0.95)?))
                .ok()
                .map(|i| Estimate { value: i.estimate, low: i.low, high: i.high });
            pending.push(((*a).clone(), (*b).clone(), success_diff, success, quality_diff, quality, latency_p95_ratio));
        }
    }
    let adjusted = input.correction.adjust(&family.p);
    let pairs: Vec<Pair> = pending
        .into_iter()
        .map(|(a, b, success_diff, success, quality_diff, quality, latency_p95_ratio)| Pair {
            a,
            b,
            success_diff,
            success_test: family.finish(success, &adjusted, input.alpha),
            quality_diff,
            quality_test: family.finish(quality, &adjusted, input.alpha),
            latency_p95_ratio,
        })
        .collect();

    let separated = |metric: &str, a: &str, b: &str| {
        pairs.iter().find(|p| (p.a == a && p.b == b) || (p.a == b && p.b == a)).is_some_and(|p| {
            let test = if metric == "success_rate" { &p.success_test } else { &p.quality_test };
            test.as_ref().is_some_and(|t| t.significant)
        })
    };
    let rankings = ["success_rate", "quality"]
        .into_iter()
        .filter_map(|metric| {
            let scored: Vec<(String, f64)> = figures
                .iter()
                .filter_map(|m| {
                    let e = if metric == "success_rate" { m.success_rate } else { m.quality };
                    Some((m.model.clone(), e?.value))
                })
                .collect();
            (!scored.is_empty())
                .then(|| Ranking { metric: metric.into(), tiers: tiers(scored, |a, b| separated(metric, a, b)) })
        })
        .collect();

    let weighted = weighted(input, notes);
    let tests = family.p.len() as u64;
    (Observational { windows: windows.len() as u64, models: figures, pairs, rankings, pareto_front, weighted }, tests)
}

/// Ranks `(model, estimate)` best first into tiers: walking down from the best, a model starts a
/// new tier when a test separates it from a model of the current tier.
fn tiers(mut scored: Vec<(String, f64)>, separated: impl Fn(&str, &str) -> bool) -> Vec<Vec<String>> {
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut tiers: Vec<Vec<String>> = Vec::new();
    for (model, _) in scored {
        match tiers.last_mut() {
            Some(tier) if !tier.iter().any(|m| separated(m, &model)) => tier.push(model),
            _ => tiers.push(vec![model]),
        }
    }
    tiers
}

fn in_period(input: &Input, e: &Event) -> bool {
    e.ts >= input.start && e.ts < input.end && e.task_type.as_deref() == Some(input.task_type.as_str())
}

/// The Hájek estimates of each candidate model's success rate and quality from the routing
/// decisions of the period that carry propensities, with the outcome of the task they routed.
fn weighted(input: &Input, notes: &mut Vec<String>) -> Vec<Weighted> {
    let mut success: HashMap<&str, bool> = HashMap::new();
    let mut quality: HashMap<&str, Moments> = HashMap::new();
    for e in input.events.iter().filter(|e| in_period(input, e)) {
        let Some(task) = e.task_id.as_deref() else { continue };
        match &e.data {
            // The latest completion of a task is its outcome (events are in stream order).
            Data::TaskCompleted(c) => {
                success.insert(task, c.success);
            }
            Data::Judgment(j) if j.score.is_finite() => quality.entry(task).or_default().push(j.score),
            _ => {}
        }
    }
    // Per candidate model: (success log, quality log).
    let mut logs: BTreeMap<String, (Vec<Logged>, Vec<Logged>)> = BTreeMap::new();
    let (mut decisions, mut deterministic, mut no_outcome) = (0u64, 0u64, 0u64);
    for e in input.events.iter().filter(|e| in_period(input, e)) {
        let (Data::RoutingDecision(d), Some(task)) = (&e.data, e.task_id.as_deref()) else { continue };
        decisions += 1;
        let Some(&succeeded) = success.get(task) else {
            no_outcome += 1;
            continue;
        };
        let chosen = d.chosen.model.to_string();
        let propensity = |c: &modelperf_schema::event::Candidate| {
            let label = c.model.to_string();
            c.probability.or_else(|| (label == chosen).then_some(d.probability).flatten()).map(|p| (label, p))
        };
        let arms: Vec<(String, f64)> = d.candidates.iter().filter_map(propensity).collect();
        if !arms.iter().any(|(label, p)| *label == chosen && *p > 0.0 && *p <= 1.0) {
            deterministic += 1;
            continue;
        }
        let q = quality.get(task).map(|m| m.mean);
        for (label, p) in arms.into_iter().filter(|(_, p)| *p > 0.0 && *p <= 1.0) {
            let served = label == chosen;
            let (s, ql) = logs.entry(label).or_default();
            s.push(Logged { chosen: served, propensity: p, outcome: f64::from(u8::from(succeeded)) });
            if let Some(q) = q {
                ql.push(Logged { chosen: served, propensity: p, outcome: q });
            }
        }
    }
    if deterministic > 0 {
        notes.push(format!(
            "{deterministic} of {decisions} routing decisions carry no propensity for the chosen model; \
             left out of the weighted estimates"
        ));
    }
    if no_outcome > 0 {
        notes.push(format!("{no_outcome} of {decisions} routing decisions have no completion in the period"));
    }
    let z = 1.959_963_984_540_054; // Φ⁻¹(0.975)
    let mut out = Vec::new();
    for (model, (s, q)) in &logs {
        for (metric, log) in [("success_rate", s), ("quality", q)] {
            let Ok(est) = ipw_mean_self_normalised(log) else { continue };
            let (low, high) = (est.mean - z * est.standard_error, est.mean + z * est.standard_error);
            let (low, high) = if metric == "success_rate" { (low.max(0.0), high.min(1.0)) } else { (low, high) };
            out.push(Weighted {
                model: model.clone(),
                metric: metric.into(),
                estimate: Estimate { value: est.mean, low, high },
                standard_error: est.standard_error,
                effective_sample_size: est.effective_sample_size,
                chosen: est.chosen as u64,
                decisions: est.n as u64,
            });
        }
    }
    out
}

/// One model's answer to one case.
struct Answer {
    success: bool,
    latency_ms: f64,
    quality: Moments,
}

fn paired(input: &Input, run: &str, notes: &mut Vec<String>) -> (Paired, u64) {
    let of_run = |e: &&Event| in_period(input, e) && e.benchmark.as_ref().is_some_and(|b| b.run_id == run);
    // model → case → the first completion; judgments joined to it by (model, case).
    let mut answers: BTreeMap<String, BTreeMap<String, Answer>> = BTreeMap::new();
    let mut duplicates: BTreeMap<String, u64> = BTreeMap::new();
    let mut judgments: Vec<(String, String, f64)> = Vec::new();
    let mut unlabelled = 0u64;
    let mut events: Vec<&Event> = input.events.iter().filter(of_run).collect();
    events.sort_by_key(|e| e.ts);
    for e in events {
        let (Some(model), Some(b)) = (e.model.as_ref(), e.benchmark.as_ref()) else {
            unlabelled += 1;
            continue;
        };
        let label = model.to_string();
        match &e.data {
            Data::TaskCompleted(c) => {
                let cases = answers.entry(label.clone()).or_default();
                if cases.contains_key(&b.case_id) {
                    *duplicates.entry(label).or_default() += 1;
                } else {
                    cases.insert(
                        b.case_id.clone(),
                        Answer { success: c.success, latency_ms: c.latency_ms, quality: Moments::default() },
                    );
                }
            }
            Data::Judgment(j) if j.score.is_finite() => judgments.push((label, b.case_id.clone(), j.score)),
            _ => {}
        }
    }
    let mut unjoined = 0u64;
    for (model, case, score) in judgments {
        match answers.get_mut(&model).and_then(|c| c.get_mut(&case)) {
            Some(a) => a.quality.push(score),
            None => unjoined += 1,
        }
    }
    if unlabelled > 0 {
        notes.push(format!("{unlabelled} events of the run name no model; left out"));
    }
    if unjoined > 0 {
        notes.push(format!("{unjoined} judgments of the run have no completion of their model and case; left out"));
    }
    let mut all_cases: Vec<&String> = answers.values().flat_map(|c| c.keys()).collect();
    all_cases.sort();
    all_cases.dedup();
    if answers.is_empty() {
        notes
            .push(format!("no completions of benchmark run {run:?} for task type {:?} in the period", input.task_type));
    }

    let models: Vec<PairedModel> = answers
        .iter()
        .map(|(model, cases)| {
            let n = cases.len() as u64;
            let successes = cases.values().filter(|a| a.success).count() as u64;
            let success_rate = wilson_interval(successes, n, CONFIDENCE).ok().map(|i| Estimate {
                value: successes as f64 / n as f64,
                low: i.low,
                high: i.high,
            });
            let mut q = Moments::default();
            cases.values().filter(|a| a.quality.n > 0).for_each(|a| q.push(a.quality.mean));
            let quality = (q.n > 0).then(|| {
                let i = q.mean_interval(CONFIDENCE).ok();
                let (low, high) = i.map_or((q.mean, q.mean), |i| (i.low, i.high));
                Estimate { value: q.mean, low, high }
            });
            let mut latencies: Vec<f64> = cases.values().map(|a| a.latency_ms).collect();
            PairedModel {
                model: model.clone(),
                cases: n,
                success_rate,
                quality,
                latency_median_ms: median(&mut latencies),
                duplicates: duplicates.get(model).copied().unwrap_or(0),
            }
        })
        .collect();

    let mut family = Family::default();
    let mut pending = Vec::new();
    let labels: Vec<&String> = answers.keys().collect();
    for (i, a) in labels.iter().enumerate() {
        for b in &labels[i + 1..] {
            let (ca, cb) = (&answers[*a], &answers[*b]);
            let shared: Vec<(&Answer, &Answer)> =
                ca.iter().filter_map(|(case, x)| cb.get(case).map(|y| (x, y))).collect();
            let n = shared.len() as u64;
            let (only_a, only_b) = discordant_counts(shared.iter().map(|(x, y)| (x.success, y.success)));
            let success_diff = (n > 0).then(|| (only_a as f64 - only_b as f64) / n as f64);
            let success =
                mcnemar_exact(only_a, only_b).ok().map(|t| family.add("mcnemar_exact", t.statistic, t.p_value));
            let judged: Vec<f64> = shared
                .iter()
                .filter(|(x, y)| x.quality.n > 0 && y.quality.n > 0)
                .map(|(x, y)| x.quality.mean - y.quality.mean)
                .collect();
            let q = Moments::from_slice(&judged);
            let quality_diff = (q.n > 1).then(|| q.mean_interval(CONFIDENCE).ok()).flatten().map(|i| Estimate {
                value: q.mean,
                low: i.low,
                high: i.high,
            });
            let quality =
                wilcoxon_signed_rank(&judged).ok().map(|w| family.add("wilcoxon_signed_rank", w.statistic, w.p_value));
            let mut latency: Vec<f64> = shared.iter().map(|(x, y)| x.latency_ms - y.latency_ms).collect();
            let latency_test =
                wilcoxon_signed_rank(&latency).ok().map(|w| family.add("wilcoxon_signed_rank", w.statistic, w.p_value));
            pending.push((
                PairedPair {
                    a: (*a).clone(),
                    b: (*b).clone(),
                    shared_cases: n,
                    only_a_succeeded: only_a,
                    only_b_succeeded: only_b,
                    success_diff,
                    success_test: None,
                    judged_cases: judged.len() as u64,
                    quality_diff,
                    quality_test: None,
                    latency_median_diff_ms: median(&mut latency),
                    latency_test: None,
                },
                success,
                quality,
                latency_test,
            ));
        }
    }
    let adjusted = input.correction.adjust(&family.p);
    let pairs: Vec<PairedPair> = pending
        .into_iter()
        .map(|(mut p, success, quality, latency)| {
            p.success_test = family.finish(success, &adjusted, input.alpha);
            p.quality_test = family.finish(quality, &adjusted, input.alpha);
            p.latency_test = family.finish(latency, &adjusted, input.alpha);
            p
        })
        .collect();
    let separated = |metric: &str, a: &str, b: &str| {
        pairs.iter().find(|p| (p.a == a && p.b == b) || (p.a == b && p.b == a)).is_some_and(|p| {
            let test = if metric == "success_rate" { &p.success_test } else { &p.quality_test };
            test.as_ref().is_some_and(|t| t.significant)
        })
    };
    let rankings = ["success_rate", "quality"]
        .into_iter()
        .filter_map(|metric| {
            let scored: Vec<(String, f64)> = models
                .iter()
                .filter_map(|m| {
                    let e = if metric == "success_rate" { m.success_rate } else { m.quality };
                    Some((m.model.clone(), e?.value))
                })
                .collect();
            (!scored.is_empty())
                .then(|| Ranking { metric: metric.into(), tiers: tiers(scored, |a, b| separated(metric, a, b)) })
        })
        .collect();
    let tests = family.p.len() as u64;
    (Paired { run: run.to_owned(), cases: all_cases.len() as u64, models, pairs, rankings }, tests)
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) { (values[mid - 1] + values[mid]) / 2.0 } else { values[mid] })
}

/// The JSON of a comparison (pretty).
pub fn to_json(c: &Comparison) -> String {
    // Plain data with finite numbers or nulls: serialising cannot fail.
    serde_json::to_string_pretty(c).unwrap_or_default()
}

fn est(e: &Option<Estimate>, digits: usize, scale: f64) -> String {
    match e {
        Some(e) => format!("{:.d$} [{:.d$}, {:.d$}]", e.value * scale, e.low * scale, e.high * scale, d = digits),
        None => "-".into(),
    }
}

fn test_cell(t: &Option<Test>) -> String {
    match t {
        Some(t) => format!("p={:.2e} adj={:.2e}{}", t.p_value, t.p_adjusted, if t.significant { " *" } else { "" }),
        None => "-".into(),
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// Lays out rows as a table with aligned columns.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (cell, w) in cells.zip(&widths) {
            let _ = write!(s, "{cell:<w$}  ");
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(out, &mut header.iter().copied());
    for row in rows {
        line(out, &mut row.iter().map(String::as_str));
    }
}

fn rankings(out: &mut String, rankings: &[Ranking]) {
    for r in rankings {
        let tiers: Vec<String> = r.tiers.iter().map(|t| t.join(" = ")).collect();
        let _ = writeln!(out, "ranking by {}: {}", r.metric, tiers.join("  >  "));
    }
}

/// The comparison as text tables, for a terminal.
pub fn render_table(c: &Comparison) -> String {
    let mut out = String::new();
    let design = match c.design {
        Design::Observational => "observational: production traffic, confounded by the router's choices",
        Design::Paired => "paired: the same benchmark cases for every model",
    };
    let _ = writeln!(
        out,
        "task type {} from {} to {} ({} windows), {design}\n{} tests, {} correction, α = {}; intervals 95 %; \
         * = separated after correction\n",
        c.task_type,
        modelperf_schema::format_ts(&c.start),
        modelperf_schema::format_ts(&c.end),
        c.window,
        c.tests,
        c.correction,
        c.alpha
    );
    if let Some(o) = &c.observational {
        let rows: Vec<Vec<String>> = o
            .models
            .iter()
            .map(|m| {
                vec![
                    format!("{}{}", m.model, if m.pareto { " (pareto)" } else { "" }),
                    m.completions.to_string(),
                    est(&m.success_rate, 3, 1.0),
                    est(&m.latency_p50_ms, 0, 1.0),
                    est(&m.latency_p95_ms, 0, 1.0),
                    format!("{} (n={})", est(&m.quality, 3, 1.0), m.quality_n),
                    opt(m.cost_per_task, 5),
                    opt(m.cost_per_success, 5),
                    m.unpriced.to_string(),
                ]
            })
            .collect();
        table(
            &mut out,
            &["model", "tasks", "success", "p50 ms", "p95 ms", "quality", "$/task", "$/success", "unpriced"],
            &rows,
        );
        out.push('\n');
        let rows: Vec<Vec<String>> = o
            .pairs
            .iter()
            .map(|p| {
                vec![
                    format!("{} vs {}", p.a, p.b),
                    est(&p.success_diff, 3, 1.0),
                    test_cell(&p.success_test),
                    est(&p.quality_diff, 3, 1.0),
                    test_cell(&p.quality_test),
                    est(&p.latency_p95_ratio, 2, 1.0),
                ]
            })
            .collect();
        if !rows.is_empty() {
            table(&mut out, &["pair (a vs b)", "success a−b", "z-test", "quality a−b", "Welch t", "p95 a/b"], &rows);
            out.push('\n');
        }
        rankings(&mut out, &o.rankings);
        if !o.pareto_front.is_empty() {
            let _ = writeln!(out, "quality-vs-cost Pareto front (cheapest first): {}", o.pareto_front.join(", "));
        }
        if !o.weighted.is_empty() {
            out.push_str("\ninverse-propensity-weighted (Hájek) estimates, from the routing decisions:\n");
            let rows: Vec<Vec<String>> = o
                .weighted
                .iter()
                .map(|w| {
                    vec![
                        w.model.clone(),
                        w.metric.clone(),
                        est(&Some(w.estimate), 3, 1.0),
                        format!("{:.1}", w.effective_sample_size),
                        format!("{}/{}", w.chosen, w.decisions),
                    ]
                })
                .collect();
            table(&mut out, &["model", "metric", "estimate", "ESS", "served/decisions"], &rows);
        }
    }
    if let Some(p) = &c.paired {
        let _ = writeln!(out, "benchmark run {}: {} cases", p.run, p.cases);
        let rows: Vec<Vec<String>> = p
            .models
            .iter()
            .map(|m| {
                vec![
                    m.model.clone(),
                    m.cases.to_string(),
                    est(&m.success_rate, 3, 1.0),
                    est(&m.quality, 3, 1.0),
                    opt(m.latency_median_ms, 0),
                    m.duplicates.to_string(),
                ]
            })
            .collect();
        table(&mut out, &["model", "cases", "success", "quality", "median ms", "repeats"], &rows);
        out.push('\n');
        let rows: Vec<Vec<String>> = p
            .pairs
            .iter()
            .map(|x| {
                vec![
                    format!("{} vs {}", x.a, x.b),
                    x.shared_cases.to_string(),
                    format!("{}/{}", x.only_a_succeeded, x.only_b_succeeded),
                    test_cell(&x.success_test),
                    format!("{} (n={})", est(&x.quality_diff, 3, 1.0), x.judged_cases),
                    test_cell(&x.quality_test),
                    opt(x.latency_median_diff_ms, 0),
                    test_cell(&x.latency_test),
                ]
            })
            .collect();
        if !rows.is_empty() {
            table(
                &mut out,
                &[
                    "pair (a vs b)",
                    "shared",
                    "only a/only b ok",
                    "McNemar",
                    "quality a−b",
                    "Wilcoxon",
                    "median Δms",
                    "Wilcoxon",
                ],
                &rows,
            );
            out.push('\n');
        }
        rankings(&mut out, &p.rankings);
    }
    for note in &c.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

#[cfg(test)]
mod tests;
