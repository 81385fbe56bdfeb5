#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
//! The Grafana dashboards of `deploy/grafana/dashboards/` against what is really there.
//!
//! - Structure: every file is a Grafana dashboard (uid, title, `schemaVersion`, `panels`,
//!   `templating`), panel ids are unique, every target names a data source the dev overlay
//!   provisions (`k8s/overlays/dev/grafana/datasources.yaml`) with its type, every `$variable`
//!   is defined or one of Grafana's, every InfluxQL query filters on the model, task type and
//!   tenant variables, and a panel that takes the largest of per-window percentiles says it is
//!   approximate.
//! - Prometheus targets: every metric they read is one a service registers (a `counter!`,
//!   `gauge!` or `histogram!` in the workspace's sources, not a list kept here), every label
//!   they group or filter by is one that registration sets, and `rate`/`increase` read counters.
//! - InfluxQL: every panel and templating query runs on a real InfluxDB 1.x holding known
//!   points written through [`Sink`], with Grafana's expansions of `$timeFilter`,
//!   `$__interval`, `$__interval_ms` and the variables (All, one value, several values): no
//!   error, series with the columns the query names, and for several panels the values worked
//!   out by hand from the points below.
//!
//! The test lives beside `queries.rs` because it needs what that one needs (the sink, the test
//! kit's InfluxDB) and nothing else; the dashboards are files of the repository, read from it.
//! Loading them, Grafana's expansions and running a query are `modelperf_testkit::grafana`,
//! shared with `tests/tests/dashboards.rs`, which seeds InfluxDB through the collector and the
//! aggregator instead and checks every panel's values.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use modelperf_influx::{InfluxConfig, Point, Sink};
use modelperf_testkit::Influx;
use modelperf_testkit::grafana::{
    BUILTIN_VARIABLES, FILTER_VARIABLES, Selection, Series, expand, named_columns, panels, queries, run,
    structure_problems, variables_used,
};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every dashboard file, by file name: the four of the project at least.
fn dashboards() -> Vec<(String, Value)> {
    let all = modelperf_testkit::grafana::dashboards(&root().join("deploy/grafana/dashboards")).unwrap();
    assert!(all.len() >= 4, "the Overview, Model comparison, Cost and Pipeline health dashboards: {all:?}");
    all
}

/// The data sources the dev overlay provisions: uid → type (read from the provisioning file,
/// whose entries each have a `uid:` and a `type:` line).
fn provisioned_datasources() -> BTreeMap<String, String> {
    let path = root().join("k8s/overlays/dev/grafana/datasources.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut found = BTreeMap::new();
    let (mut uid, mut kind) = (None::<String>, None::<String>);
    let mut flush = |uid: &mut Option<String>, kind: &mut Option<String>| {
        if let (Some(u), Some(k)) = (uid.take(), kind.take()) {
            found.insert(u, k);
        }
    };
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("- name:") {
            flush(&mut uid, &mut kind);
        } else if let Some(v) = line.strip_prefix("uid:") {
            uid = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("type:") {
            kind = Some(v.trim().to_owned());
        }
    }
    flush(&mut uid, &mut kind);
    assert!(found.len() >= 2, "{}: the InfluxDB and Prometheus data sources: {found:?}", path.display());
    found
}

#[test]
fn dashboards_are_grafana_dashboards_on_provisioned_datasources() {
    let sources = provisioned_datasources();
    let mut uids = BTreeSet::new();
    for (name, d) in dashboards() {
        let problems = structure_problems(&name, &d);
        assert!(problems.is_empty(), "{problems:#?}");
        assert!(uids.insert(d["uid"].as_str().unwrap().to_owned()), "{name}: uid is unique");
        let all = panels(&d);

        let defined: BTreeSet<String> = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_owned())
            .collect();
        let qs = queries(&name, &d);
        if qs.iter().any(|q| q.datasource_type == "influxdb") {
            for v in FILTER_VARIABLES {
                assert!(defined.contains(v), "{name}: defines ${v}");
            }
        }
        for q in &qs {
            let at = format!("{}: {}", q.dashboard, q.panel);
            assert!(!q.text.trim().is_empty(), "{at}: a query");
            assert_eq!(
                sources.get(&q.datasource_uid),
                Some(&q.datasource_type),
                "{at}: data source {} ({}) is provisioned with that type",
                q.datasource_uid,
                q.datasource_type
            );
            for v in variables_used(&q.text) {
                assert!(defined.contains(&v) || BUILTIN_VARIABLES.contains(&v.as_str()), "{at}: ${v} is not defined");
            }
            if q.datasource_type == "influxdb" && !q.templating {
                assert!(q.text.contains("$timeFilter"), "{at}: the dashboard's time range");
                for v in FILTER_VARIABLES {
                    assert!(q.text.contains(&format!("\"{v}\" =~ /^${v}$/")), "{at}: filters on ${v}");
                }
            }
        }
        // A mean or maximum of percentiles is not a percentile: such panels say so.
        for p in &all {
            let takes_percentiles = p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| t["query"].as_str().is_some_and(|q| q.contains("(\"latency_p")));
            if takes_percentiles {
                let description = p["description"].as_str().unwrap_or("");
                assert!(
                    description.starts_with("approximate") || description.contains("; approximate"),
                    "{name}: {}: says approximate",
                    p["title"]
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus targets against the metrics the services register.

/// Every metric a `metrics::counter!`/`gauge!`/`histogram!` of the workspace's sources registers,
/// with its kind and the labels of its registrations.
fn registered_metrics() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut files = Vec::new();
    for top in ["libs", "services"] {
        let mut dirs = vec![root().join(top)];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if path.is_dir() && name != "tests" && name != "target" {
                    dirs.push(path);
                } else if name.ends_with(".rs") {
                    files.push(path);
                }
            }
        }
    }
    let mut metrics: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for kind in ["counter", "gauge", "histogram"] {
            let opening = format!("{kind}!(\"");
            let mut rest = text.as_str();
            while let Some(at) = rest.find(&opening) {
                rest = &rest[at + opening.len()..];
                let Some(end) = rest.find('"') else { break };
                let name = rest[..end].to_owned();
                // The labels: `"label" =>` pairs up to the macro's closing parenthesis.
                let mut depth = 1;
                let close = rest
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += i32::from(c == '(') - i32::from(c == ')');
                        depth == 0
                    })
                    .map_or(rest.len(), |(i, _)| i);
                let call = &rest[end..close];
                let labels = call
                    .split("=>")
                    .filter_map(|before| before.trim_end().strip_suffix('"'))
                    .filter_map(|before| before.rfind('"').map(|q| before[q + 1..].to_owned()));
                let entry = metrics.entry(name).or_insert_with(|| (kind.to_owned(), BTreeSet::new()));
                entry.1.extend(labels);
            }
        }
    }
    metrics
}

/// The identifiers of a PromQL expression that name our metrics, each with the labels the
/// expression filters it by (`{label="..."}`).
fn metrics_read(expr: &str) -> Vec<(String, BTreeSet<String>)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("modelperf_") {
        rest = &rest[at..];
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[name.len()..];
        let mut labels = BTreeSet::new();
        if let Some(selector) = rest.strip_prefix('{') {
            let body = &selector[..selector.find('}').unwrap()];
            for matcher in body.split(',') {
                let label: String =
                    matcher.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                labels.insert(label);
            }
        }
        out.push((name, labels));
    }
    out
}

/// The labels of every `by (...)` of a PromQL expression.
fn grouped_by(expr: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("by (") {
        rest = &rest[at + 4..];
        let list = &rest[..rest.find(')').unwrap()];
        labels.extend(list.split(',').map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()));
    }
    labels
}

#[test]
fn prometheus_targets_read_metrics_the_services_register() {
    let registered = registered_metrics();
    assert!(registered.contains_key("modelperf_runner_messages_total"), "the scan finds registrations: {registered:?}");
    let mut checked = 0;
    for (name, d) in dashboards() {
        for q in queries(&name, &d).iter().filter(|q| q.datasource_type == "prometheus") {
            let at = format!("{}: {}: {}", q.dashboard, q.panel, q.text);
            let depth = q.text.chars().try_fold(0_i32, |depth, c| {
                let depth = depth + i32::from(c == '(') - i32::from(c == ')');
                (depth >= 0).then_some(depth)
            });
            assert_eq!(depth, Some(0), "{at}: balanced parentheses");
            let read = metrics_read(&q.text);
            assert!(!read.is_empty(), "{at}: reads one of our metrics");
            let grouped = grouped_by(&q.text);
            for (metric, filtered) in &read {
                let (kind, labels) =
                    registered.get(metric).unwrap_or_else(|| panic!("{at}: no service registers {metric}"));
                for label in filtered.iter().chain(&grouped) {
                    assert!(labels.contains(label), "{at}: {metric} has no label {label:?} (it has {labels:?})");
                }
                let over_time =
                    q.text.contains(&format!("rate({metric}")) || q.text.contains(&format!("increase({metric}"));
                assert_eq!(
                    over_time,
                    kind == "counter",
                    "{at}: rate/increase exactly on counters ({metric} is a {kind})"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "the pipeline-health dashboard has Prometheus targets");
}

// ---------------------------------------------------------------------------------------------
// The data: three 1m windows from T, written through the sink.

const GPT_OLD: (&str, &str, &str) = ("openai", "gpt-4o", "2024-08-06");
const GPT_NEW: (&str, &str, &str) = ("openai", "gpt-4o", "2024-11-20");
const CLAUDE: (&str, &str, &str) = ("anthropic", "claude-sonnet-4", "20250514");

fn row(
    start: i64,
    kind: &str,
    model: Option<(&str, &str, &str)>,
    task_type: &str,
    tenant: &str,
    count: i64,
    weighted: f64,
) -> Point {
    Point::new("model_perf", start)
        .tag("window", "1m")
        .tag("kind", kind)
        .tag_opt("provider", model.map(|m| m.0))
        .tag_opt("model", model.map(|m| m.1))
        .tag_opt("model_version", model.map(|m| m.2))
        .tag("task_type", task_type)
        .tag("tenant", tenant)
        .int("count", count)
        .float("weighted_count", weighted)
        .int("revision", 0)
}

/// Completions of one row (one sample rate per row): successes and failures seen, latency
/// percentiles, cost and unpriced completions.
fn completed(p: Point, success: i64, failure: i64, [p50, p95, p99]: [f64; 3], cost_usd: f64, unpriced: i64) -> Point {
    p.int("success", success)
        .int("failure", failure)
        .float("success_rate", success as f64 / (success + failure) as f64)
        .float("latency_p50_ms", p50)
        .float("latency_p95_ms", p95)
        .float("latency_p99_ms", p99)
        .float("cost_usd", cost_usd)
        .int("unpriced", unpriced)
}

fn points(t: i64) -> Vec<Point> {
    let m = |offset: i64| t + 60 * offset;
    let tc = "task_completed";
    vec![
        completed(row(m(0), tc, Some(GPT_OLD), "code_edit", "acme", 10, 10.0), 9, 1, [200.0, 400.0, 500.0], 0.50, 0),
        // Sampled at 1/4: 5 events seen stand for 20.
        completed(row(m(0), tc, Some(GPT_OLD), "summarize", "globex", 5, 20.0), 3, 2, [150.0, 300.0, 350.0], 0.40, 0),
        completed(row(m(0), tc, Some(CLAUDE), "code_edit", "acme", 6, 6.0), 6, 0, [600.0, 900.0, 950.0], 1.20, 0),
        completed(row(m(1), tc, Some(GPT_NEW), "code_edit", "acme", 12, 12.0), 9, 3, [180.0, 350.0, 420.0], 0.30, 2),
        completed(
            row(m(1), tc, Some(CLAUDE), "code_edit", "globex", 18, 18.0),
            15,
            3,
            [700.0, 1000.0, 1200.0],
            2.70,
            0,
        ),
        completed(row(m(2), tc, Some(GPT_OLD), "code_edit", "acme", 6, 6.0), 6, 0, [220.0, 450.0, 480.0], 0.30, 0),
        // Scores 0.5, 0.75, 0.75, 1; the judge cost 0.60.
        row(m(0), "judgment", Some(GPT_OLD), "code_edit", "acme", 4, 4.0)
            .int("quality_n", 4)
            .float("quality_mean", 0.75)
            .float("quality_m2", 0.125)
            .float("cost_usd", 0.60)
            .int("unpriced", 0),
        // Scores 0.8, 0.9, 1; the judge has no price.
        row(m(1), "judgment", Some(CLAUDE), "code_edit", "globex", 3, 3.0)
            .int("quality_n", 3)
            .float("quality_mean", 0.9)
            .float("quality_m2", 0.02)
            .int("unpriced", 3),
        row(m(0), "task_started", None, "code_edit", "acme", 5, 20.0).float("queue_ms", 2000.0),
    ]
}

// ---------------------------------------------------------------------------------------------
// Running the dashboards' queries.

fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("a number, got {v}"))
}

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-9 * want.abs().max(1.0)
}

/// Expected values of some panels (all variables at All, the range `[T, T + 3 min)`): for each
/// series (by its tags) the rows (time offset in seconds from T, or `None` for a whole-range
/// row) with their columns. Every series of the answer must be listed.
type Expected = Vec<(Vec<(&'static str, &'static str)>, Vec<(Option<i64>, Vec<(&'static str, f64)>)>)>;

fn expected(dashboard: &str, panel: &str) -> Option<Expected> {
    let row = |t: Option<i64>, values: &[(&'static str, f64)]| (t, values.to_vec());
    let minutes = |column: &'static str, values: [f64; 3]| {
        (0..3).map(|i| row(Some(60 * i), &[(column, values[i as usize])])).collect::<Vec<_>>()
    };
    let mvt = |m: (&'static str, &'static str, &'static str), task: &'static str| {
        vec![("model", m.1), ("model_version", m.2), ("task_type", task)]
    };
    Some(match (dashboard, panel) {
        // Events represented per second: completions 10 + 20 + 6, 12 + 18, 6; judgments 4, 3;
        // started tasks 20 (sampled at 1/4).
        ("overview.json", "Events per second by kind") => vec![
            (vec![("kind", "task_completed")], minutes("events_per_s", [36.0 / 60.0, 30.0 / 60.0, 6.0 / 60.0])),
            (vec![("kind", "judgment")], minutes("events_per_s", [4.0 / 60.0, 3.0 / 60.0, 0.0])),
            (vec![("kind", "task_started")], minutes("events_per_s", [20.0 / 60.0, 0.0, 0.0])),
        ],
        // Weighted failures: gpt-4o 10·0.1 + 20·0.4 = 9 of 30, then 3 of 12, 0 of 6;
        // claude 0 of 6, 3 of 18 (no completion at T + 2 min: no row, fill(none)).
        ("overview.json", "Error rate by model") => vec![
            (vec![("model", "gpt-4o")], minutes("error_rate", [9.0 / 30.0, 3.0 / 12.0, 0.0])),
            (
                vec![("model", "claude-sonnet-4")],
                vec![row(Some(0), &[("error_rate", 0.0)]), row(Some(60), &[("error_rate", 3.0 / 18.0)])],
            ),
        ],
        // The larger of the two gpt-4o rows at T (400, 300).
        ("overview.json", "p95 latency by model") => vec![
            (vec![("model", "gpt-4o")], minutes("p95_ms", [400.0, 350.0, 450.0])),
            (
                vec![("model", "claude-sonnet-4")],
                vec![row(Some(0), &[("p95_ms", 900.0)]), row(Some(60), &[("p95_ms", 1000.0)])],
            ),
        ],
        ("model-comparison.json", "Latency p50 / p95 / p99 by model, version and task type") => vec![
            (mvt(GPT_OLD, "code_edit"), vec![row(None, &[("p50_ms", 220.0), ("p95_ms", 450.0), ("p99_ms", 500.0)])]),
            (mvt(GPT_OLD, "summarize"), vec![row(None, &[("p50_ms", 150.0), ("p95_ms", 300.0), ("p99_ms", 350.0)])]),
            (mvt(GPT_NEW, "code_edit"), vec![row(None, &[("p50_ms", 180.0), ("p95_ms", 350.0), ("p99_ms", 420.0)])]),
            (mvt(CLAUDE, "code_edit"), vec![row(None, &[("p50_ms", 700.0), ("p95_ms", 1000.0), ("p99_ms", 1200.0)])]),
        ],
        // Weighted successes over completions: (9 + 6) / 16, 12 / 20, 9 / 12, (6 + 15) / 24.
        ("model-comparison.json", "Success rate by model, version and task type") => vec![
            (mvt(GPT_OLD, "code_edit"), vec![row(None, &[("success_rate", 15.0 / 16.0), ("completed", 16.0)])]),
            (mvt(GPT_OLD, "summarize"), vec![row(None, &[("success_rate", 0.6), ("completed", 20.0)])]),
            (mvt(GPT_NEW, "code_edit"), vec![row(None, &[("success_rate", 0.75), ("completed", 12.0)])]),
            (mvt(CLAUDE, "code_edit"), vec![row(None, &[("success_rate", 21.0 / 24.0), ("completed", 24.0)])]),
        ],
        ("model-comparison.json", "Quality by model, version and task type") => vec![
            (mvt(GPT_OLD, "code_edit"), vec![row(None, &[("quality_mean", 0.75), ("quality_n", 4.0)])]),
            (mvt(CLAUDE, "code_edit"), vec![row(None, &[("quality_mean", 0.9), ("quality_n", 3.0)])]),
        ],
        // Completions only (the judge's 0.60 is not gpt-4o's cost).
        ("model-comparison.json", "Cost per task by model, version and task type") => vec![
            (mvt(GPT_OLD, "code_edit"), vec![row(None, &[("usd_per_task", 0.80 / 16.0), ("unpriced_tasks", 0.0)])]),
            (mvt(GPT_OLD, "summarize"), vec![row(None, &[("usd_per_task", 0.40 / 20.0), ("unpriced_tasks", 0.0)])]),
            (mvt(GPT_NEW, "code_edit"), vec![row(None, &[("usd_per_task", 0.30 / 12.0), ("unpriced_tasks", 2.0)])]),
            (mvt(CLAUDE, "code_edit"), vec![row(None, &[("usd_per_task", 3.90 / 24.0), ("unpriced_tasks", 0.0)])]),
        ],
        // acme: completions 0.50 + 1.20 + 0.30 + 0.30, its judge 0.60; globex: 0.40 + 2.70 and an
        // unpriced judge (no cost field, no row).
        ("cost.json", "Spend per tenant") => vec![
            (vec![("tenant", "acme"), ("kind", "task_completed")], vec![row(None, &[("spend_usd", 2.30)])]),
            (vec![("tenant", "acme"), ("kind", "judgment")], vec![row(None, &[("spend_usd", 0.60)])]),
            (vec![("tenant", "globex"), ("kind", "task_completed")], vec![row(None, &[("spend_usd", 3.10)])]),
        ],
        ("cost.json", "Unpriced events by model, version and kind") => vec![
            (
                vec![
                    ("provider", "openai"),
                    ("model", "gpt-4o"),
                    ("model_version", "2024-11-20"),
                    ("kind", "task_completed"),
                ],
                vec![row(None, &[("unpriced", 2.0)])],
            ),
            (
                vec![
                    ("provider", "anthropic"),
                    ("model", "claude-sonnet-4"),
                    ("model_version", "20250514"),
                    ("kind", "judgment"),
                ],
                vec![row(None, &[("unpriced", 3.0)])],
            ),
        ],
        _ => return None,
    })
}

fn check_expected(at: &str, got: &[Series], want: &Expected, t: i64) {
    assert_eq!(got.len(), want.len(), "{at}: {} series wanted, got {got:#?}", want.len());
    for (tags, rows) in want {
        let tags: BTreeMap<String, String> = tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let series =
            got.iter().find(|s| s.tags == tags).unwrap_or_else(|| panic!("{at}: no series {tags:?} in {got:#?}"));
        assert_eq!(series.rows.len(), rows.len(), "{at}: rows of {tags:?}: {series:#?}");
        for (offset, values) in rows {
            let found = match offset {
                Some(offset) => series.rows.iter().find(|(time, _)| *time == Some(t + offset)),
                None => series.rows.first(),
            };
            let (_, columns) =
                found.unwrap_or_else(|| panic!("{at}: {tags:?} has no row at T + {offset:?} s: {series:#?}"));
            for (column, value) in values {
                let got = number(&columns[*column]);
                assert!(close(got, *value), "{at}: {tags:?} {column} at T + {offset:?} s = {got}, want {value}");
            }
        }
    }
}

#[tokio::test]
async fn every_influxql_query_runs_on_the_pipelines_data() {
    let influx = Influx::start().await.unwrap();
    let db = influx.fresh_database().await.unwrap();
    let sink =
        Sink::new(InfluxConfig { url: influx.url().to_owned(), database: db.clone(), ..InfluxConfig::default() })
            .unwrap();
    sink.ensure().await.unwrap(); // policies "1m" and "1h"
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    let t = now - now % 3_600 - 3_600; // the start of the previous hour: whole minutes, past
    let seeded = points(t);
    assert_eq!(sink.write("1m", &seeded).await.unwrap().points, seeded.len());
    let (from, to) = (t, t + 180);

    let all = Selection::all();
    let every_value = Selection::of(
        "every value selected",
        &["claude-sonnet-4", "gpt-4o"],
        &["code_edit", "summarize"],
        &["acme", "globex"],
    );
    let one = Selection::of("gpt-4o, code_edit, acme", &["gpt-4o"], &["code_edit"], &["acme"]);

    let (mut ran, mut valued) = (0, 0);
    for (name, d) in dashboards() {
        for q in queries(&name, &d).iter().filter(|q| q.datasource_type == "influxdb") {
            let columns = named_columns(&q.text);
            for selection in [&all, &every_value, &one] {
                let at = format!("{}: {} ({})", q.dashboard, q.panel, selection.name);
                let sent = expand(&q.text, selection, from, to);
                let answer = run(&influx, &db, &sent).await.unwrap();
                assert!(!answer.is_empty(), "{at}: no series for\n{sent}");
                for series in &answer {
                    assert_eq!(series.columns, columns, "{at}: columns");
                    assert!(!series.rows.is_empty(), "{at}: rows");
                    if selection.name == one.name {
                        // Only the selected values, where the answer is grouped by them.
                        for (tag, value) in [("model", "gpt-4o"), ("task_type", "code_edit"), ("tenant", "acme")] {
                            assert!(series.tags.get(tag).is_none_or(|v| v == value), "{at}: {tag} of {series:?}");
                        }
                    }
                }
                if q.templating {
                    let tag = q.panel.trim_start_matches("variable ");
                    let values: BTreeSet<&str> =
                        answer[0].rows.iter().map(|(_, r)| r["value"].as_str().unwrap()).collect();
                    let want: BTreeSet<&str> = match tag {
                        "model" => ["claude-sonnet-4", "gpt-4o"].into(),
                        "task_type" => ["code_edit", "summarize"].into(),
                        "tenant" => ["acme", "globex"].into(),
                        other => panic!("{at}: unexpected variable {other}"),
                    };
                    assert_eq!(values, want, "{at}: the seeded values");
                } else if selection.name == all.name
                    && let Some(want) = expected(&q.dashboard, &q.panel)
                {
                    check_expected(&at, &answer, &want, t);
                    valued += 1;
                }
                ran += 1;
            }
        }
    }
    assert!(ran >= 3 * 20, "every InfluxQL query ran under each selection: {ran}");
    assert_eq!(valued, 9, "every panel with expected values was found by its title");

    // With one model, task type and tenant selected, the figures are that slice's: gpt-4o's
    // code_edit completions of acme, 0.80 / 16 (version 2024-08-06) and 0.30 / 12 (2024-11-20).
    let (_, comparison) = dashboards().into_iter().find(|(n, _)| n == "model-comparison.json").unwrap();
    let cost = queries("model-comparison.json", &comparison)
        .into_iter()
        .find(|q| q.panel == "Cost per task by model, version and task type")
        .unwrap();
    let answer = run(&influx, &db, &expand(&cost.text, &one, from, to)).await.unwrap();
    let want: Expected = vec![
        (
            vec![("model", "gpt-4o"), ("model_version", "2024-08-06"), ("task_type", "code_edit")],
            vec![(None, vec![("usd_per_task", 0.80 / 16.0), ("unpriced_tasks", 0.0)])],
        ),
        (
            vec![("model", "gpt-4o"), ("model_version", "2024-11-20"), ("task_type", "code_edit")],
            vec![(None, vec![("usd_per_task", 0.30 / 12.0), ("unpriced_tasks", 2.0)])],
        ),
    ];
    check_expected("cost per task of one slice", &answer, &want, t);
}
