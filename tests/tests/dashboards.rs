//! The Grafana dashboards on data that went through the real pipeline.
//!
//! A known workload of raw events — four models (two versions of one, one without a price),
//! three task types (`summarize` sampled at 1/4), two tenants, successes and failures, known
//! latencies, tokens priced by a price catalog the test writes, judgments with quality scores
//! by a priced and an unpriced judge, started tasks, one model absent from the last minute, and
//! a bulk of one model so each window's percentiles fall on ranks of their own — spread over
//! three fixed minutes twenty minutes ago (1875 raw events), is published to `perf.raw.<kind>`
//! and goes through the collector (validation, pricing, sampling, privacy) and the aggregator
//! (`1m` windows, 1 s allowed lateness) running in this process against a real nats-server and
//! a real InfluxDB 1.x. Then every InfluxQL
//! panel and templating query of `deploy/grafana/dashboards/` runs under Grafana's expansions
//! (`$timeFilter` over the three minutes, `$__interval` 1m, the variables at All, at every
//! value and at one model, task type and tenant), and every answer must equal what the test
//! computes from the workload itself, by the definitions of the contract and the docs:
//!
//! - the collector keeps a `summarize` task when the keyed hash of its `task_id` says so (the
//!   collector's `Sampler::keeps_task`, the documented HMAC); failed completions and judgments
//!   below 0.5 are kept by an override with `sample_rate` 1, others of a kept task at 1/4;
//! - cost = (input − cached_input) × input price + cached_input × cached price + output ×
//!   output price + the request fee, the entry chosen by (provider, name, version) then
//!   (provider, name); no tokens or no entry → counted unpriced (unweighted);
//! - the `tenant` tag is the producer's tenant unchanged: the collector pseudonymises `user_id`,
//!   `session_id` and configured attributes, not tenants (the workload sets a `user_id` too);
//! - counts, rates and costs weight each kept event by `1/sample_rate`; quality is unweighted;
//! - latency panels take the largest of per-window percentiles: they must be within the
//!   sketch's 1 % relative accuracy of the largest exact per-window percentile (the weighted
//!   lower quantile, rank ⌊q·(W−1)⌋), every other figure within 1e-9 relative.
//!
//! Every panel's value is derived here; none is only run. A series with no unpriced event has
//! no `unpriced` field (the aggregator omits a field without data), so an `unpriced` sum over
//! such rows is null, not 0, and is expected as null.
//!
//! The dashboards must also carry Grafana's schema fields (`schemaVersion`, `panels`,
//! `targets`, `templating`): the shared structural check of `modelperf_testkit::grafana`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use modelperf_client::{EventBuilder, Publisher};
use modelperf_collector::sampling::{Rate, Sampler};
use modelperf_schema::{Event, ModelRef, Tokens};
use modelperf_testkit::grafana::{self, Selection, Series};
use modelperf_testkit::{Influx, NatsServer, eventually, read_stream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const PARTITIONS: u32 = 2;
const TASKS: usize = 150;
const BULK: usize = 600;
const MINUTE: i64 = 60;

/// (provider, name, version) of the models that do the work.
const MODELS: [(&str, &str, Option<&str>); 4] = [
    ("openai", "gpt-4o", Some("2024-08-06")),
    ("openai", "gpt-4o", Some("2024-11-20")),
    ("anthropic", "claude-sonnet-4", Some("20250514")),
    ("google", "gemini-2.5-pro", None),
];
/// The judges: the first has a price, the second none.
const JUDGES: [(&str, &str); 2] = [("anthropic", "claude-sonnet-4"), ("google", "gemini-2.5-flash")];
const TASK_TYPES: &[&str] = &["code_edit", "summarize", "review"];
const TENANTS: &[&str] = &["acme", "globex"];
/// The model names, for the selection of every value.
const MODEL_NAMES: &[&str] = &["claude-sonnet-4", "gemini-2.5-pro", "gpt-4o"];
/// One model, task type and tenant.
const ONE: [&[&str]; 3] = [&["gpt-4o"], &["code_edit"], &["acme"]];
/// `summarize` is sampled at 1/4.
const SAMPLED: (&str, u64) = ("summarize", 4);

/// The catalog the collector prices with: (provider, model, version, input, cached input,
/// output, request fee), USD per million tokens and per request. gpt-4o 2024-11-20 has no entry
/// of its own and is priced by gpt-4o's; gemini has none at all.
type Price = (&'static str, &'static str, Option<&'static str>, f64, Option<f64>, f64, Option<f64>);
const PRICES: [Price; 3] = [
    ("openai", "gpt-4o", Some("2024-08-06"), 5.00, None, 15.00, None),
    ("openai", "gpt-4o", None, 2.50, Some(1.25), 10.00, None),
    ("anthropic", "claude-sonnet-4", None, 3.00, Some(0.30), 15.00, Some(0.002)),
];

fn catalog_toml() -> String {
    let mut s = String::from("version = \"dashboards-test\"\n");
    for (provider, model, version, input, cached, output, fee) in PRICES {
        s += &format!("\n[[price]]\nprovider = \"{provider}\"\nmodel = \"{model}\"\n");
        if let Some(v) = version {
            s += &format!("version = \"{v}\"\n");
        }
        s += &format!("effective_from = \"2020-01-01\"\ninput = {input:?}\noutput = {output:?}\n");
        if let Some(c) = cached {
            s += &format!("cached_input = {c:?}\n");
        }
        if let Some(f) = fee {
            s += &format!("request_fee = {f:?}\n");
        }
        s += "source = \"https://example.com/modelperf-dashboards-test\"\nas_of = \"2026-01-01\"\n";
    }
    s
}

/// The documented cost of `tokens` on `model`, or `None` (unpriced).
fn cost_of(model: &ModelRef, tokens: &Tokens) -> Option<f64> {
    let entry =
        |version: Option<&str>| PRICES.iter().find(|p| p.0 == model.provider && p.1 == model.name && p.2 == version);
    let (_, _, _, input, cached, output, fee) =
        model.version.as_deref().and_then(|v| entry(Some(v))).or(entry(None))?;
    let cached_tokens = tokens.cached_input.unwrap_or(0) as f64;
    Some(
        ((tokens.input as f64 - cached_tokens) * input
            + cached_tokens * cached.unwrap_or(*input)
            + tokens.output as f64 * output)
            / 1e6
            + fee.unwrap_or(0.0),
    )
}

fn model_ref((provider, name, version): (&str, &str, Option<&str>)) -> ModelRef {
    ModelRef { provider: provider.into(), name: name.into(), version: version.map(Into::into), vendor: None }
}

/// The raw workload: per task a start, a completion and, for every second task, a judgment,
/// all inside `[t, t + 3 min)`: [`TASKS`] mixed tasks and a bulk of [`BULK`].
fn workload(t: DateTime<Utc>) -> Vec<Event> {
    let mut events = Vec::new();
    for i in 0..TASKS + BULK {
        // The bulk: one model and tenant, half code_edit and half summarize, a hundred tasks of
        // each a minute, so per-window percentiles have ranks of their own.
        let bulk = i >= TASKS;
        let started = if bulk {
            t + chrono::Duration::milliseconds((i - TASKS) as i64 * 180_000 / BULK as i64)
        } else {
            t + chrono::Duration::milliseconds(i as i64 * 1_200)
        };
        let task = format!("task-{i}");
        // claude works in the first two minutes only: empty minutes of a series, filled with 0
        // or left out as each panel says.
        let model = model_ref(
            MODELS[match i % 4 {
                _ if bulk => 0,
                2 if i >= 100 => 1,
                m => m,
            }],
        );
        let task_type = if bulk { TASK_TYPES[i % 2] } else { TASK_TYPES[(i / 4) % 3] };
        let tenant = if bulk { TENANTS[0] } else { TENANTS[(i / 3) % 2] };
        // A log-spread, deterministic latency from 40 ms to 40 s.
        let u = ((i as u64).wrapping_mul(2_654_435_761) % 10_000) as f64 / 10_000.0;
        let latency = 40.0 * 1_000f64.powf(u);
        let envelope = Envelope { task: &task, task_type, tenant, user: format!("user-{}", i % 7) };
        events.push(
            envelope
                .on(EventBuilder::task_started().queue_ms(10.0 + i as f64), started)
                .id(format!("started-{i}"))
                .build()
                .unwrap(),
        );
        let mut done = envelope
            .on(EventBuilder::task_completed(latency, i % 6 != 5), started + chrono::Duration::milliseconds(400))
            .id(format!("completed-{i}"))
            .model(&model);
        // Every tenth completion reports no tokens; every third read part of its prompt from cache.
        if i % 10 != 7 {
            let cached_input = (i % 3 == 0).then_some(300);
            done = done.token_usage(Tokens {
                input: 1_000 + 37 * i as u64,
                output: 200 + 11 * i as u64,
                cached_input,
                ..Tokens::default()
            });
        }
        events.push(done.build().unwrap());
        if i % 2 == 0 {
            let judge = JUDGES[(i / 2) % 2];
            let score = ((i * 7) % 11) as f64 / 10.0;
            let mut judged = envelope
                .on(
                    EventBuilder::judgment(&model, format!("{}/{}", judge.0, judge.1), score),
                    started + chrono::Duration::milliseconds(500),
                )
                .id(format!("judgment-{i}"));
            if i % 3 != 1 {
                judged = judged.tokens(500, 50);
            }
            events.push(judged.build().unwrap());
        }
    }
    events
}

/// What every event of one task carries.
struct Envelope<'a> {
    task: &'a str,
    task_type: &'a str,
    tenant: &'a str,
    user: String,
}

impl Envelope<'_> {
    fn on<D: modelperf_client::KindData>(&self, b: EventBuilder<D>, ts: DateTime<Utc>) -> EventBuilder<D> {
        b.ts(ts)
            .source("test.producer")
            .task_id(self.task)
            .task_type(self.task_type)
            .tenant(self.tenant)
            .user_id(self.user.clone())
    }
}

// ---------------------------------------------------------------------------------------------
// What the aggregator must have written: the `1m` rows, from the raw workload.

/// One `1m` row of `model_perf`, as the test works it out.
#[derive(Debug, Default, Clone)]
struct Window {
    count: u64,
    weighted: f64,
    completions: f64,
    succeeded: f64,
    failed: f64,
    /// Weighted cost of priced events; `None` when none was priced.
    cost: Option<f64>,
    unpriced: u64,
    scores: Vec<f64>,
    /// Latencies with their (integer) weights.
    latencies: Vec<(f64, u64)>,
}

impl Window {
    /// The weighted lower quantile, rank ⌊q·(W−1)⌋, the sketch's convention.
    fn quantile(&self, q: f64) -> Option<f64> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut v = self.latencies.clone();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total: u64 = v.iter().map(|x| x.1).sum();
        let rank = (q * (total as f64 - 1.0)).floor() as u64;
        let mut seen = 0;
        v.into_iter()
            .find(|(_, w)| {
                seen += w;
                seen > rank
            })
            .map(|x| x.0)
    }
}

/// Tag → value.
type Tags = BTreeMap<String, String>;

/// Window start (epoch seconds) and tags → the row.
type Rows = BTreeMap<(i64, Tags), Window>;

/// Applies the collector's documented sampling to each raw event and folds the kept ones into
/// their windows. Returns the rows and the number of clean events.
fn windows_of(events: &[Event], sampler: &Sampler) -> (Rows, usize) {
    let mut rows = Rows::new();
    let mut kept = 0;
    for e in events {
        let task = e.task_id.as_deref().unwrap();
        let task_kept =
            e.task_type.as_deref() != Some(SAMPLED.0) || sampler.keeps_task(task, Rate::one_in(SAMPLED.1).unwrap());
        let (cost, tokens_reported) = match &e.data {
            modelperf_schema::Data::TaskCompleted(d) => {
                (d.tokens.as_ref().and_then(|t| cost_of(e.model.as_ref().unwrap(), t)), true)
            }
            modelperf_schema::Data::Judgment(d) => {
                (d.tokens.as_ref().and_then(|t| cost_of(&d.judge_model, t)), d.tokens.is_some())
            }
            _ => (None, false),
        };
        let rescued = match &e.data {
            modelperf_schema::Data::TaskCompleted(d) => !d.success,
            modelperf_schema::Data::Judgment(d) => d.score < 0.5,
            _ => false,
        };
        let weight = match (rescued, task_kept) {
            (true, _) => 1,
            (false, true) if e.task_type.as_deref() == Some(SAMPLED.0) => SAMPLED.1,
            (false, true) => 1,
            (false, false) => continue,
        };
        kept += 1;
        let mut tags = BTreeMap::from([("kind".to_owned(), e.kind().as_str().to_owned())]);
        if let Some(m) = &e.model {
            tags.insert("provider".into(), m.provider.clone());
            tags.insert("model".into(), m.name.clone());
            if let Some(v) = &m.version {
                tags.insert("model_version".into(), v.clone());
            }
        }
        tags.insert("task_type".into(), e.task_type.clone().unwrap());
        tags.insert("tenant".into(), e.tenant.clone().unwrap());
        let start = e.ts.timestamp() - e.ts.timestamp().rem_euclid(MINUTE);
        let w = rows.entry((start, tags)).or_default();
        let weighted = weight as f64;
        w.count += 1;
        w.weighted += weighted;
        if tokens_reported {
            match cost {
                Some(usd) => w.cost = Some(w.cost.unwrap_or(0.0) + usd * weighted),
                None => w.unpriced += 1,
            }
        }
        match &e.data {
            modelperf_schema::Data::TaskCompleted(d) => {
                w.completions += weighted;
                if d.success {
                    w.succeeded += weighted;
                } else {
                    w.failed += weighted;
                }
                w.latencies.push((d.latency_ms, weight));
            }
            modelperf_schema::Data::Judgment(d) => w.scores.push(d.score),
            _ => {}
        }
    }
    (rows, kept)
}

// ---------------------------------------------------------------------------------------------
// The panels by their definitions (the descriptions of the dashboards), over those rows.

/// A figure of a row that a panel adds up or takes the largest of.
#[derive(Debug, Clone, Copy)]
enum Field {
    Weighted,
    Succeeded,
    Failed,
    Cost,
    Unpriced,
    QualityN,
    QualitySum,
    Latency(f64),
}

impl Field {
    fn of(self, w: &Window) -> Option<f64> {
        match self {
            Field::Weighted => Some(w.weighted),
            Field::Succeeded => (w.completions > 0.0).then_some(w.succeeded),
            Field::Failed => (w.completions > 0.0).then_some(w.failed),
            Field::Cost => w.cost,
            Field::Unpriced => (w.unpriced > 0).then_some(w.unpriced as f64),
            Field::QualityN => (!w.scores.is_empty()).then_some(w.scores.len() as f64),
            Field::QualitySum => (!w.scores.is_empty()).then(|| w.scores.iter().sum()),
            Field::Latency(q) => w.quantile(q),
        }
    }
}

/// How a column combines the rows of a bucket.
#[derive(Debug, Clone, Copy)]
enum Agg {
    /// The sum per second of the 1 min interval.
    PerSecond(Field),
    Sum(Field),
    Ratio(Field, Field),
    /// The largest per-window percentile: 1 % relative.
    Max(Field),
}

impl Agg {
    fn of(self, rows: &[&Window]) -> Option<f64> {
        let sum = |f: Field| rows.iter().filter_map(|w| f.of(w)).reduce(|a, b| a + b);
        match self {
            Agg::PerSecond(f) => sum(f).map(|s| s / MINUTE as f64),
            Agg::Sum(f) => sum(f),
            Agg::Ratio(n, d) => Some(sum(n)? / sum(d)?),
            Agg::Max(f) => rows.iter().filter_map(|w| f.of(w)).reduce(f64::max),
        }
    }

    fn tolerance(self) -> f64 {
        if matches!(self, Agg::Max(_)) { 0.01 } else { 1e-9 }
    }
}

/// What a panel's query computes: which rows (kinds, only rows with unpriced events), grouped
/// by which tags, per minute (filling empty minutes with 0, or leaving them out) or over the
/// whole range, and its columns.
struct Panel {
    kinds: &'static [&'static str],
    only_unpriced: bool,
    by: &'static [&'static str],
    over_time: Option<Fill>,
    columns: &'static [(&'static str, Agg)],
}

#[derive(Clone, Copy, PartialEq)]
enum Fill {
    Zero,
    None,
}

const TC: &[&str] = &["task_completed"];
const MVT: &[&str] = &["model", "model_version", "task_type"];

fn panel(dashboard: &str, title: &str) -> Panel {
    let p = |kinds, by, over_time, columns| Panel { kinds, only_unpriced: false, by, over_time, columns };
    match (dashboard, title) {
        ("overview.json", "Events per second by kind") => {
            p(&[], &["kind"], Some(Fill::Zero), &[("events_per_s", Agg::PerSecond(Field::Weighted))])
        }
        ("overview.json", "Completed tasks per second by model") => {
            p(TC, &["model"], Some(Fill::Zero), &[("tasks_per_s", Agg::PerSecond(Field::Weighted))])
        }
        ("overview.json", "Error rate by model") => {
            p(TC, &["model"], Some(Fill::None), &[("error_rate", Agg::Ratio(Field::Failed, Field::Weighted))])
        }
        ("overview.json", "p95 latency by model") => {
            p(TC, &["model"], Some(Fill::None), &[("p95_ms", Agg::Max(Field::Latency(0.95)))])
        }
        ("model-comparison.json", "Latency p50 / p95 / p99 by model, version and task type") => p(
            TC,
            MVT,
            None,
            &[
                ("p50_ms", Agg::Max(Field::Latency(0.5))),
                ("p95_ms", Agg::Max(Field::Latency(0.95))),
                ("p99_ms", Agg::Max(Field::Latency(0.99))),
            ],
        ),
        ("model-comparison.json", "p95 latency over time by model and version") => {
            p(TC, &["model", "model_version"], Some(Fill::None), &[("p95_ms", Agg::Max(Field::Latency(0.95)))])
        }
        ("model-comparison.json", "Success rate over time by model and version") => p(
            TC,
            &["model", "model_version"],
            Some(Fill::None),
            &[("success_rate", Agg::Ratio(Field::Succeeded, Field::Weighted))],
        ),
        ("model-comparison.json", "Success rate by model, version and task type") => p(
            TC,
            MVT,
            None,
            &[
                ("success_rate", Agg::Ratio(Field::Succeeded, Field::Weighted)),
                ("completed", Agg::Sum(Field::Weighted)),
            ],
        ),
        ("model-comparison.json", "Quality by model, version and task type") => p(
            &["judgment"],
            MVT,
            None,
            &[
                ("quality_mean", Agg::Ratio(Field::QualitySum, Field::QualityN)),
                ("quality_n", Agg::Sum(Field::QualityN)),
            ],
        ),
        ("model-comparison.json", "Cost per task by model, version and task type") => p(
            TC,
            MVT,
            None,
            &[
                ("usd_per_task", Agg::Ratio(Field::Cost, Field::Weighted)),
                ("unpriced_tasks", Agg::Sum(Field::Unpriced)),
            ],
        ),
        ("cost.json", "Spend per model") => {
            p(TC, &["model"], Some(Fill::Zero), &[("spend_usd", Agg::Sum(Field::Cost))])
        }
        ("cost.json", "Spend per model and version") => p(
            TC,
            &["provider", "model", "model_version"],
            None,
            &[("spend_usd", Agg::Sum(Field::Cost)), ("unpriced_tasks", Agg::Sum(Field::Unpriced))],
        ),
        ("cost.json", "Spend per tenant") => {
            p(&["task_completed", "judgment"], &["tenant", "kind"], None, &[("spend_usd", Agg::Sum(Field::Cost))])
        }
        ("cost.json", "Unpriced events over time") => Panel {
            only_unpriced: true,
            ..p(&[], &["model", "kind"], Some(Fill::None), &[("unpriced", Agg::Sum(Field::Unpriced))])
        },
        ("cost.json", "Unpriced events by model, version and kind") => Panel {
            only_unpriced: true,
            ..p(&[], &["provider", "model", "model_version", "kind"], None, &[("unpriced", Agg::Sum(Field::Unpriced))])
        },
        _ => panic!("{dashboard}: {title}: a panel this test does not know; add its definition"),
    }
}

/// The selected values of `$model`, `$task_type`, `$tenant`; `None` is All (`.*`, which also
/// matches a row without the tag).
type Chosen = [Option<&'static [&'static str]>; 3];

/// The answer a panel must give: series by tags → rows (minute start, or `None` over the whole
/// range) → column → value (`None`: null).
type Answer = BTreeMap<BTreeMap<String, String>, Vec<(Option<i64>, BTreeMap<String, Option<f64>>)>>;

fn expected(panel: &Panel, rows: &Rows, chosen: &Chosen, from: i64, to: i64) -> Answer {
    let tag = |tags: &BTreeMap<String, String>, k: &str| tags.get(k).cloned().unwrap_or_default();
    let mut groups: BTreeMap<Tags, BTreeMap<Option<i64>, Vec<&Window>>> = BTreeMap::new();
    for ((start, tags), w) in rows {
        let selected = ["model", "task_type", "tenant"]
            .iter()
            .zip(chosen)
            .all(|(k, values)| values.is_none_or(|v| v.contains(&tag(tags, k).as_str())));
        let kind_ok = panel.kinds.is_empty() || panel.kinds.contains(&tag(tags, "kind").as_str());
        if !selected || !kind_ok || (panel.only_unpriced && w.unpriced == 0) || *start < from || *start >= to {
            continue;
        }
        let series = panel.by.iter().map(|k| ((*k).to_owned(), tag(tags, k))).collect();
        let bucket = panel.over_time.map(|_| *start);
        groups.entry(series).or_default().entry(bucket).or_default().push(w);
    }
    let mut answer = Answer::new();
    for (series, buckets) in groups {
        let values = |ws: &[&Window]| -> BTreeMap<String, Option<f64>> {
            panel.columns.iter().map(|(name, agg)| ((*name).to_owned(), agg.of(ws))).collect()
        };
        let mut out = Vec::new();
        match panel.over_time {
            Some(Fill::Zero) => {
                for start in (from..to).step_by(MINUTE as usize) {
                    let v = values(buckets.get(&Some(start)).map_or(&[][..], Vec::as_slice));
                    out.push((Some(start), v.into_iter().map(|(k, v)| (k, Some(v.unwrap_or(0.0)))).collect()));
                }
            }
            _ => {
                for (bucket, ws) in &buckets {
                    out.push((*bucket, values(ws)));
                }
            }
        }
        // A bucket (or a whole-range row) without any value is no row; a series without rows is
        // no series.
        let any = |v: &BTreeMap<String, Option<f64>>| v.values().any(Option::is_some);
        if panel.over_time != Some(Fill::Zero) {
            out.retain(|(_, v)| any(v));
        }
        let has_data = buckets.values().flatten().any(|w| panel.columns.iter().any(|(_, agg)| agg.of(&[w]).is_some()));
        if !out.is_empty() && has_data {
            answer.insert(series, out);
        }
    }
    answer
}

fn check(at: &str, panel: &Panel, got: &[Series], want: &Answer) {
    let got_tags: BTreeSet<_> = got.iter().map(|s| &s.tags).collect();
    let want_tags: BTreeSet<_> = want.keys().collect();
    assert_eq!(got_tags, want_tags, "{at}: series\n{got:#?}");
    for series in got {
        let rows = &want[&series.tags];
        assert_eq!(series.rows.len(), rows.len(), "{at}: rows of {:?}: {series:#?}\nwant {rows:#?}", series.tags);
        for ((time, columns), (want_time, want_columns)) in series.rows.iter().zip(rows) {
            if want_time.is_some() {
                assert_eq!(time, want_time, "{at}: {:?}: the minutes", series.tags);
            }
            for (name, agg) in panel.columns {
                let got = &columns[*name];
                match want_columns[*name] {
                    None => assert!(got.is_null(), "{at}: {:?} {name} at {time:?} = {got}, want null", series.tags),
                    Some(want) => {
                        let got = got.as_f64().unwrap_or_else(|| {
                            panic!("{at}: {:?} {name} at {time:?} = {got}, want {want}", series.tags)
                        });
                        assert!(
                            (got - want).abs() <= agg.tolerance() * want.abs() + 1e-12,
                            "{at}: {:?} {name} at {time:?} = {got}, want {want}",
                            series.tags
                        );
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The pipeline in this process.

struct Service {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    fn spawn<F>(run: impl FnOnce(oneshot::Receiver<()>) -> F) -> Service
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        Service { stop, handle: tokio::spawn(run(stopped)) }
    }

    async fn stop(self, what: &str) {
        let _ = self.stop.send(());
        if let Err(e) = self.handle.await.unwrap() {
            panic!("{what} stopped with an error: {e:#}");
        }
    }
}

fn sampling() -> modelperf_collector::config::SamplingConfig {
    let mut s = modelperf_collector::config::SamplingConfig::default();
    s.rates.insert(SAMPLED.0.into(), Rate::one_in(SAMPLED.1).unwrap());
    s
}

async fn collector(url: &str, prices: &std::path::Path) -> Service {
    let mut c = modelperf_collector::Config::default();
    c.nats.url = url.to_owned();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.bus.partitions = PARTITIONS;
    c.collector.privacy_key = Some("dashboards-test-privacy-key".into());
    c.collector.prices_file = prices.to_owned();
    c.collector.sampling = sampling();
    let collector = modelperf_collector::collector(&c).unwrap();
    let prometheus = modelperf_telemetry::init("dashboards-test").unwrap().prometheus;
    let app = modelperf_collector::App::build(c, collector, prometheus).await.unwrap();
    Service::spawn(|stopped| async move {
        app.run_until_stopped(async move {
            let _ = stopped.await;
        })
        .await
        .map(drop)
    })
}

async fn aggregator(url: &str, influx: &str, db: &str) -> Service {
    let mut c = modelperf_aggregator::Config::default();
    c.nats.url = url.to_owned();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.bus.partitions = PARTITIONS;
    c.bus.lease_ttl = Duration::from_secs(2);
    c.bus.checkpoint_interval = Duration::from_millis(200);
    c.aggregator.windows = vec!["1m".parse().unwrap()];
    c.aggregator.allowed_lateness = Duration::from_secs(1);
    c.influx.url = influx.to_owned();
    c.influx.database = db.to_owned();
    let prometheus = modelperf_telemetry::init("dashboards-test").unwrap().prometheus;
    let app = modelperf_aggregator::App::build(c, prometheus).await.unwrap();
    Service::spawn(|stopped| {
        app.run_until_stopped(async move {
            let _ = stopped.await;
        })
    })
}

#[test]
fn dashboards_carry_grafanas_schema_fields() {
    let all = grafana::dashboards(&grafana::dashboards_dir()).unwrap();
    assert!(all.len() >= 4, "the Overview, Model comparison, Cost and Pipeline health dashboards");
    for (name, d) in &all {
        let problems = grafana::structure_problems(name, d);
        assert!(problems.is_empty(), "{problems:#?}");
        let targets: usize = grafana::panels(d).iter().filter_map(|p| p["targets"].as_array()).map(Vec::len).sum();
        assert!(targets > 0, "{name}: targets");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_influxql_panel_shows_the_workload_seeded_through_the_pipeline() {
    let nats = NatsServer::start().await.unwrap();
    let influx = Influx::start().await.unwrap();
    let db = influx.fresh_database().await.unwrap();
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let bus = modelperf_collector::Config::default().bus;
    modelperf_bus::Topology::contract(&modelperf_bus::BusConfig { partitions: PARTITIONS, ..bus }, 1)
        .ensure(&js)
        .await
        .unwrap();
    let prices = Removed(std::env::temp_dir().join(format!("modelperf-dashboards-{}.toml", uuid_suffix())));
    std::fs::write(&prices.0, catalog_toml()).unwrap();

    // Three whole minutes, twenty minutes ago: past, well inside the revision age.
    let now = Utc::now().timestamp();
    let from = now - now.rem_euclid(MINUTE) - 20 * MINUTE;
    let to = from + 3 * MINUTE;
    let events = workload(DateTime::from_timestamp(from, 0).unwrap());
    let (rows, kept) = windows_of(&events, &Sampler::new(&sampling()));
    // The workload exercises what it claims to: sampled-out tasks, kept tasks weighted 4,
    // rescued failures, unpriced events and both kinds of cost.
    let weights: BTreeSet<u64> = rows.values().flat_map(|w| w.latencies.iter().map(|l| l.1)).collect();
    assert!(
        kept < events.len() && weights == BTreeSet::from([1, SAMPLED.1]),
        "{kept} of {}, weights {weights:?}",
        events.len()
    );
    assert!(rows.values().any(|w| w.unpriced > 0) && rows.values().any(|w| w.cost.is_some()));

    // Producer → collector: every kept event cleaned onto PERF_EVENTS.
    let collector = collector(nats.url(), &prices.0).await;
    let publisher = Publisher::new(nats.client().await.unwrap(), "test.producer");
    publisher.publish_all(&events).await.unwrap();
    eventually(Duration::from_secs(60), || async {
        let n = read_stream(&js, "PERF_EVENTS", None).await.ok()?.len();
        (n == kept).then_some(())
    })
    .await
    .unwrap_or_else(|_| panic!("the collector did not publish exactly the {kept} kept events"));

    // Then the aggregator, on that backlog: the windows close by event time, and once the
    // partitions are idle by the clock; the finaliser writes them to InfluxDB.
    let aggregator = aggregator(nats.url(), influx.url(), &db).await;
    let written = eventually(Duration::from_secs(90), || async {
        let body = influx.query("SELECT \"count\" FROM \"1m\".\"model_perf\" GROUP BY *", Some(&db)).await.ok()?;
        let series = body["results"][0]["series"].as_array()?;
        let points: usize = series.iter().map(|s| s["values"].as_array().map_or(0, Vec::len)).sum();
        let total: u64 = series
            .iter()
            .flat_map(|s| s["values"].as_array().into_iter().flatten())
            .filter_map(|v| v[1].as_u64())
            .sum();
        (points == rows.len() && total == kept as u64).then_some(points)
    })
    .await
    .unwrap_or_else(|_| panic!("InfluxDB never held the {} expected 1m rows of {kept} events", rows.len()));

    let selections: [(Selection, Chosen); 3] = [
        (Selection::all(), [None; 3]),
        (
            Selection::of("every value selected", MODEL_NAMES, TASK_TYPES, TENANTS),
            [Some(MODEL_NAMES), Some(TASK_TYPES), Some(TENANTS)],
        ),
        (Selection::of("gpt-4o, code_edit, acme", ONE[0], ONE[1], ONE[2]), ONE.map(Some)),
    ];
    let tag_values = |k: &str| -> BTreeSet<String> { rows.keys().filter_map(|(_, t)| t.get(k).cloned()).collect() };

    let (mut panels, mut variables, mut influxql) = (BTreeSet::new(), 0, BTreeSet::new());
    for (name, d) in grafana::dashboards(&grafana::dashboards_dir()).unwrap() {
        for q in grafana::queries(&name, &d).iter().filter(|q| q.datasource_type == "influxdb") {
            influxql.insert((q.dashboard.clone(), q.panel.clone()));
            let columns = grafana::named_columns(&q.text);
            for (selection, chosen) in &selections {
                let at = format!("{}: {} ({})", q.dashboard, q.panel, selection.name);
                let sent = grafana::expand(&q.text, selection, from, to);
                let answer = grafana::run(&influx, &db, &sent).await.unwrap_or_else(|e| panic!("{at}: {e:#}"));
                assert!(!answer.is_empty(), "{at}: no series for\n{sent}");
                for series in &answer {
                    assert_eq!(series.columns, columns, "{at}: columns");
                }
                if q.templating {
                    let tag = q.panel.trim_start_matches("variable ");
                    let values: BTreeSet<String> =
                        answer[0].rows.iter().map(|(_, r)| r["value"].as_str().unwrap().to_owned()).collect();
                    assert_eq!(values, tag_values(tag), "{at}: the values of the workload");
                    variables += 1;
                } else {
                    let spec = panel(&q.dashboard, &q.panel);
                    let want = expected(&spec, &rows, chosen, from, to);
                    assert!(!want.is_empty(), "{at}: the workload gives this panel something to show");
                    check(&at, &spec, &answer, &want);
                    panels.insert((q.dashboard.clone(), q.panel.clone()));
                }
            }
        }
    }
    // Every InfluxQL query was one of a panel checked against its values or of a variable.
    let variable_queries = influxql.iter().filter(|(_, p)| p.starts_with("variable ")).count();
    assert_eq!(panels.len() + variable_queries, influxql.len());
    assert!(!panels.is_empty() && variable_queries > 0, "{influxql:#?}");
    assert_eq!(variables, variable_queries * selections.len(), "every variable under every selection");
    eprintln!(
        "{written} 1m rows of {kept} clean events ({} raw); {} panels and {variables} variable queries checked",
        events.len(),
        panels.len()
    );

    aggregator.stop("aggregator").await;
    collector.stop("collector").await;
}

/// A file removed when the test ends, failed or not.
struct Removed(std::path::PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn uuid_suffix() -> String {
    format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
}
