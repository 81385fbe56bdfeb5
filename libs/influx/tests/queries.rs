#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
//! `docs/queries.md` against a real InfluxDB 1.x: every ```sql block of the document (each
//! preceded by `<!-- query: <id> -->`) runs on known points written through the sink, and its
//! answer must be the numbers worked out by hand in the document. The blocks are read from the
//! file, so the documented queries are the tested ones; a block without an expectation here, or
//! an expectation without a block, fails the test.
//!
//! Each block runs three ways, with the same expected answer: as documented with
//! `{from}`/`{to}` replaced by RFC 3339 literals; with `time >= {from} AND time < {to}`
//! replaced by what Grafana's `$timeFilter` expands to; and database-qualified
//! (`FROM "<db>"."1m"."model_perf"`) without the `db=` parameter.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use modelperf_influx::{InfluxConfig, Point, Sink};
use modelperf_testkit::Influx;
use serde_json::Value;

/// The clause every documented query uses for its time range.
const TIME_RANGE: &str = "time >= {from} AND time < {to}";

/// The queries the document must hold, each checked by [`expected`].
const QUERY_IDS: [&str; 10] = [
    "throughput",
    "error_rate",
    "error_rate_unweighted",
    "p95_latency",
    "p95_latency_1h",
    "cost_per_task",
    "quality",
    "unpriced",
    "kind_sums",
    "kind_means",
];

/// One documented query.
#[derive(Debug)]
struct Block {
    id: String,
    sql: String,
}

/// Every ```sql block of `markdown` with the id of the `<!-- query: id -->` comment right
/// before it (only blank lines between), and the number of ```sql fences seen.
fn sql_blocks(markdown: &str) -> (Vec<Block>, usize) {
    let mut blocks = Vec::new();
    let mut fences = 0;
    let mut pending_id: Option<String> = None;
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if trimmed.starts_with("```sql") {
            fences += 1;
            let sql: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            let id = pending_id
                .take()
                .unwrap_or_else(|| panic!("a ```sql block has no `<!-- query: id -->`:\n{}", sql.join("\n")));
            blocks.push(Block { id, sql: sql.join("\n") });
        } else if let Some(id) = trimmed.strip_prefix("<!-- query:").and_then(|rest| rest.strip_suffix("-->")) {
            pending_id = Some(id.trim().to_owned());
        } else if !trimmed.is_empty() {
            pending_id = None;
        }
    }
    (blocks, fences)
}

fn queries_md() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/queries.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_sql_block_has_an_id_a_time_range_and_a_policy() {
    let (blocks, fences) = sql_blocks(&queries_md());
    assert_eq!(blocks.len(), fences, "every ```sql block is a query with an id");
    let mut ids: Vec<&str> = blocks.iter().map(|b| b.id.as_str()).collect();
    ids.sort_unstable();
    let mut wanted = QUERY_IDS.to_vec();
    wanted.sort_unstable();
    assert_eq!(ids, wanted, "the document's query ids (unique) are the ones this test checks");
    for b in &blocks {
        assert!(b.sql.contains(TIME_RANGE), "{}: the time range is written `{TIME_RANGE}`", b.id);
        assert!(
            b.sql.contains(r#"FROM "1m"."model_perf""#) || b.sql.contains(r#"FROM "1h"."model_perf""#),
            "{}: names the retention policy",
            b.id
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The data (the table "The test's data" of the document).

struct Model {
    provider: &'static str,
    name: &'static str,
    version: &'static str,
}

const GPT_OLD: Model = Model { provider: "openai", name: "gpt-4o", version: "2024-08-06" };
const GPT_NEW: Model = Model { provider: "openai", name: "gpt-4o", version: "2024-11-20" };
const CLAUDE: Model = Model { provider: "anthropic", name: "claude-sonnet-4", version: "20250514" };

/// A row of `window` starting at `start`, task type `code_edit`, tenant `acme`, with its
/// events seen and represented.
fn row(window: &str, start: i64, kind: &str, model: Option<&Model>, count: i64, weighted: f64) -> Point {
    Point::new("model_perf", start)
        .tag("window", window)
        .tag("kind", kind)
        .tag_opt("provider", model.map(|m| m.provider))
        .tag_opt("model", model.map(|m| m.name))
        .tag_opt("model_version", model.map(|m| m.version))
        .tag("task_type", "code_edit")
        .tag("tenant", "acme")
        .int("count", count)
        .float("weighted_count", weighted)
        .int("revision", 0)
}

/// Completions: all events of a row share one sample rate, so the weighted success rate is the
/// plain one.
fn completed(p: Point, success: i64, failure: i64, p95_ms: f64, cost_usd: f64) -> Point {
    p.int("success", success)
        .int("failure", failure)
        .float("success_rate", success as f64 / (success + failure) as f64)
        .float("latency_p95_ms", p95_ms)
        .float("cost_usd", cost_usd)
        .int("unpriced", 0)
}

fn retries(p: Point, retries: f64, tool_calls: f64) -> Point {
    p.float("retries", retries).float("tool_calls", tool_calls)
}

/// Judgments of the tagged (judged) model: Welford's `{n, mean, m2}` of the scores.
fn judged(p: Point, n: i64, mean: f64, m2: f64, passed: f64) -> Point {
    p.int("quality_n", n).float("quality_mean", mean).float("quality_m2", m2).float("judgment_passed", passed)
}

fn minute_rows(t: i64) -> Vec<Point> {
    let m = |offset: i64| t + 60 * offset;
    let tc = "task_completed";
    vec![
        retries(completed(row("1m", m(0), tc, Some(&GPT_OLD), 10, 10.0), 9, 1, 400.0, 0.50), 3.0, 20.0),
        retries(
            completed(row("1m", m(0), tc, Some(&GPT_OLD), 5, 20.0).tag("task_type", "summarize"), 3, 2, 300.0, 0.40),
            4.0,
            8.0,
        ),
        retries(completed(row("1m", m(0), tc, Some(&CLAUDE), 6, 6.0), 6, 0, 900.0, 1.20), 0.0, 12.0),
        retries(
            completed(row("1m", m(1), tc, Some(&GPT_NEW), 12, 12.0), 9, 3, 350.0, 0.30).int("unpriced", 2),
            6.0,
            12.0,
        ),
        retries(completed(row("1m", m(1), tc, Some(&CLAUDE), 18, 18.0), 15, 3, 1000.0, 2.70), 9.0, 30.0),
        retries(completed(row("1m", m(2), tc, Some(&GPT_OLD), 6, 6.0), 6, 0, 450.0, 0.30), 2.0, 6.0),
        // Scores 0.5, 0.75, 0.75, 1; the judge cost 0.60.
        judged(row("1m", m(0), "judgment", Some(&GPT_OLD), 4, 4.0), 4, 0.75, 0.125, 3.0)
            .float("cost_usd", 0.60)
            .int("unpriced", 0),
        // Scores 0.25, 0.75; the judge cost 0.20.
        judged(row("1m", m(1), "judgment", Some(&GPT_NEW), 2, 2.0), 2, 0.5, 0.125, 1.0)
            .float("cost_usd", 0.20)
            .int("unpriced", 0),
        // Scores 0.8, 0.9, 1; the judge has no price.
        judged(row("1m", m(0), "judgment", Some(&CLAUDE), 3, 3.0), 3, 0.9, 0.02, 3.0).int("unpriced", 3),
        row("1m", m(0), "routing_decision", Some(&GPT_OLD), 10, 10.0).float("decision_ms", 250.0),
        row("1m", m(0), "task_started", None, 5, 20.0).float("queue_ms", 2000.0),
        row("1m", m(1), "minimality", Some(&GPT_OLD), 4, 4.0)
            .float("lines_added", 120.0)
            .float("lines_removed", 40.0)
            .float("minimality_score", 3.2),
        row("1m", m(0), "thinking_budget", Some(&CLAUDE), 5, 5.0)
            .float("budget_tokens", 50_000.0)
            .float("used_tokens", 35_000.0)
            .float("budget_exhausted", 1.0),
        row("1m", m(2), "validation", Some(&GPT_OLD), 8, 8.0)
            .float("invalid", 2.0)
            .float("violations", 3.0)
            .float("compliance_score", 7.2),
        row("1m", m(0), "agent_status", None, 3, 3.0),
        row("1m", m(0), "custom", None, 2, 2.0),
    ]
}

/// The hour's roll-up of the completions; its p95s come from merged sketches, not from the
/// minutes' p95s.
fn hour_rows(t: i64) -> Vec<Point> {
    let tc = "task_completed";
    vec![
        retries(completed(row("1h", t, tc, Some(&GPT_OLD), 16, 16.0), 15, 1, 430.0, 0.80), 5.0, 26.0),
        retries(
            completed(row("1h", t, tc, Some(&GPT_OLD), 5, 20.0).tag("task_type", "summarize"), 3, 2, 300.0, 0.40),
            4.0,
            8.0,
        ),
        retries(completed(row("1h", t, tc, Some(&GPT_NEW), 12, 12.0), 9, 3, 350.0, 0.30).int("unpriced", 2), 6.0, 12.0),
        retries(completed(row("1h", t, tc, Some(&CLAUDE), 24, 24.0), 21, 3, 980.0, 3.90), 9.0, 42.0),
    ]
}

// ---------------------------------------------------------------------------------------------
// Answers.

/// One row of an answer: the series' tags, the time (epoch seconds) and the columns.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    tags: BTreeMap<String, String>,
    time: i64,
    values: BTreeMap<String, Option<f64>>,
}

/// An expected row: its tags, its time (`None`: not checked, e.g. the epoch an aggregate over
/// a subquery reports) and its non-null columns; every other column must be null.
struct Want {
    tags: Vec<(&'static str, &'static str)>,
    time: Option<i64>,
    values: Vec<(&'static str, f64)>,
}

fn want(tags: &[(&'static str, &'static str)], time: Option<i64>, values: &[(&'static str, f64)]) -> Want {
    Want { tags: tags.to_vec(), time, values: values.to_vec() }
}

fn model(name: &'static str) -> [(&'static str, &'static str); 1] {
    [("model", name)]
}

fn model_version(m: &Model) -> [(&'static str, &'static str); 2] {
    [("model", m.name), ("model_version", m.version)]
}

/// The columns every row of a query's answer has (besides `time`).
fn columns(id: &str) -> &'static [&'static str] {
    match id {
        "throughput" => &["tasks_per_s"],
        "error_rate" | "error_rate_unweighted" => &["error_rate"],
        "p95_latency" | "p95_latency_1h" => &["p95_ms"],
        "cost_per_task" => &["usd_per_task", "unpriced_tasks"],
        "quality" => &["quality_mean", "quality_variance", "quality_n"],
        "unpriced" => &["unpriced"],
        "kind_sums" => &[
            "events",
            "retries",
            "tool_calls",
            "judgment_passed",
            "lines_added",
            "lines_removed",
            "minimality_score",
            "budget_tokens",
            "used_tokens",
            "budget_exhausted",
            "invalid",
            "violations",
            "compliance_score",
            "decision_ms",
            "queue_ms",
        ],
        "kind_means" => &[
            "retries_per_task",
            "tool_calls_per_task",
            "pass_rate",
            "lines_added_per_change",
            "lines_removed_per_change",
            "minimality_mean",
            "budget_used_share",
            "budget_exhausted_share",
            "invalid_share",
            "violations_per_validation",
            "compliance_mean",
            "decision_ms_mean",
            "queue_ms_mean",
        ],
        other => panic!("no expectation for query {other:?}"),
    }
}

/// What query `id` must answer on the data above, the range starting at `t` (the numbers of
/// the document's "On the test's data" paragraphs).
fn expected(id: &str, t: i64) -> Vec<Want> {
    let (t0, t1, t2) = (Some(t), Some(t + 60), Some(t + 120));
    let (gpt, claude) = (model("gpt-4o"), model("claude-sonnet-4"));
    let kind = |k: &'static str| [("kind", k)];
    let kind_model = |k: &'static str, m: &'static str| [("kind", k), ("model", m)];
    match id {
        "throughput" => vec![
            want(&gpt, t0, &[("tasks_per_s", 30.0 / 60.0)]),
            want(&gpt, t1, &[("tasks_per_s", 12.0 / 60.0)]),
            want(&gpt, t2, &[("tasks_per_s", 6.0 / 60.0)]),
            want(&claude, t0, &[("tasks_per_s", 6.0 / 60.0)]),
            want(&claude, t1, &[("tasks_per_s", 18.0 / 60.0)]),
            want(&claude, t2, &[("tasks_per_s", 0.0)]),
        ],
        // Weighted failures 10·0.1 + 20·0.4 + 12·0.25 + 6·0 = 12 of 48; 18·(1 − 15/18) = 3 of 24.
        "error_rate" => vec![want(&gpt, None, &[("error_rate", 0.25)]), want(&claude, None, &[("error_rate", 0.125)])],
        // Failures 1 + 2 + 3 + 0 = 6 of 33 kept completions; 3 of 24.
        "error_rate_unweighted" => {
            vec![want(&gpt, t0, &[("error_rate", 6.0 / 33.0)]), want(&claude, t0, &[("error_rate", 3.0 / 24.0)])]
        }
        "p95_latency" => vec![
            want(&model_version(&GPT_OLD), t0, &[("p95_ms", 400.0)]),
            want(&model_version(&GPT_OLD), t2, &[("p95_ms", 450.0)]),
            want(&model_version(&GPT_NEW), t1, &[("p95_ms", 350.0)]),
            want(&model_version(&CLAUDE), t0, &[("p95_ms", 900.0)]),
            want(&model_version(&CLAUDE), t1, &[("p95_ms", 1000.0)]),
        ],
        "p95_latency_1h" => vec![
            want(&model_version(&GPT_OLD), t0, &[("p95_ms", 430.0)]),
            want(&model_version(&GPT_NEW), t0, &[("p95_ms", 350.0)]),
            want(&model_version(&CLAUDE), t0, &[("p95_ms", 980.0)]),
        ],
        // Judgment rows (the judge's cost) are not in it.
        "cost_per_task" => vec![
            want(&gpt, t0, &[("usd_per_task", 1.5 / 48.0), ("unpriced_tasks", 2.0)]),
            want(&claude, t0, &[("usd_per_task", 3.9 / 24.0), ("unpriced_tasks", 0.0)]),
        ],
        // From the six scores 0.5, 0.75, 0.75, 1, 0.25, 0.75 and the three 0.8, 0.9, 1.
        "quality" => vec![
            want(&gpt, None, &[("quality_mean", 4.0 / 6.0), ("quality_variance", 1.0 / 15.0), ("quality_n", 6.0)]),
            want(&claude, None, &[("quality_mean", 0.9), ("quality_variance", 0.01), ("quality_n", 3.0)]),
        ],
        "unpriced" => vec![
            want(
                &[
                    ("provider", "openai"),
                    ("model", "gpt-4o"),
                    ("model_version", "2024-11-20"),
                    ("kind", "task_completed"),
                ],
                t0,
                &[("unpriced", 2.0)],
            ),
            want(
                &[
                    ("provider", "anthropic"),
                    ("model", "claude-sonnet-4"),
                    ("model_version", "20250514"),
                    ("kind", "judgment"),
                ],
                t0,
                &[("unpriced", 3.0)],
            ),
        ],
        "kind_sums" => vec![
            want(&kind("task_completed"), t0, &[("events", 72.0), ("retries", 24.0), ("tool_calls", 88.0)]),
            want(&kind("judgment"), t0, &[("events", 9.0), ("judgment_passed", 7.0)]),
            want(
                &kind("minimality"),
                t0,
                &[("events", 4.0), ("lines_added", 120.0), ("lines_removed", 40.0), ("minimality_score", 3.2)],
            ),
            want(
                &kind("thinking_budget"),
                t0,
                &[("events", 5.0), ("budget_tokens", 50_000.0), ("used_tokens", 35_000.0), ("budget_exhausted", 1.0)],
            ),
            want(
                &kind("validation"),
                t0,
                &[("events", 8.0), ("invalid", 2.0), ("violations", 3.0), ("compliance_score", 7.2)],
            ),
            want(&kind("routing_decision"), t0, &[("events", 10.0), ("decision_ms", 250.0)]),
            want(&kind("task_started"), t0, &[("events", 20.0), ("queue_ms", 2000.0)]),
            want(&kind("agent_status"), t0, &[("events", 3.0)]),
            want(&kind("custom"), t0, &[("events", 2.0)]),
        ],
        "kind_means" => vec![
            want(
                &kind_model("task_completed", "gpt-4o"),
                t0,
                &[("retries_per_task", 15.0 / 48.0), ("tool_calls_per_task", 46.0 / 48.0)],
            ),
            want(
                &kind_model("task_completed", "claude-sonnet-4"),
                t0,
                &[("retries_per_task", 9.0 / 24.0), ("tool_calls_per_task", 42.0 / 24.0)],
            ),
            want(&kind_model("judgment", "gpt-4o"), t0, &[("pass_rate", 4.0 / 6.0)]),
            want(&kind_model("judgment", "claude-sonnet-4"), t0, &[("pass_rate", 1.0)]),
            want(
                &kind_model("minimality", "gpt-4o"),
                t0,
                &[("lines_added_per_change", 30.0), ("lines_removed_per_change", 10.0), ("minimality_mean", 0.8)],
            ),
            want(
                &kind_model("thinking_budget", "claude-sonnet-4"),
                t0,
                &[("budget_used_share", 0.7), ("budget_exhausted_share", 0.2)],
            ),
            want(
                &kind_model("validation", "gpt-4o"),
                t0,
                &[("invalid_share", 0.25), ("violations_per_validation", 0.375), ("compliance_mean", 0.9)],
            ),
            want(&kind_model("routing_decision", "gpt-4o"), t0, &[("decision_ms_mean", 25.0)]),
            want(&kind_model("task_started", ""), t0, &[("queue_ms_mean", 100.0)]),
        ],
        other => panic!("no expectation for query {other:?}"),
    }
}

/// Equal up to the last bits a different order of float additions can change.
fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-9 * want.abs().max(1.0)
}

/// Checks `got` against `wants`, whatever the order of series and rows; the message names the
/// query and how it was run.
fn check(what: &str, id: &str, got: &[Row], wants: &[Want]) {
    assert_eq!(got.len(), wants.len(), "{what}: {} rows wanted, got {got:#?}", wants.len());
    let cols = columns(id);
    for w in wants {
        let tags: BTreeMap<String, String> = w.tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let row = got
            .iter()
            .find(|r| r.tags == tags && w.time.is_none_or(|t| t == r.time))
            .unwrap_or_else(|| panic!("{what}: no row {tags:?} at {:?} in {got:#?}", w.time));
        let names: Vec<&str> = row.values.keys().map(String::as_str).collect();
        let mut wanted_names = cols.to_vec();
        wanted_names.sort_unstable();
        assert_eq!(names, wanted_names, "{what}: columns of {tags:?}");
        for (column, value) in &row.values {
            match (w.values.iter().find(|(c, _)| c == column), value) {
                (Some((_, want)), Some(got)) => {
                    assert!(close(*got, *want), "{what}: {tags:?} {column} = {got}, want {want}")
                }
                (None, None) => {}
                (want, got) => panic!("{what}: {tags:?} {column} = {got:?}, want {:?}", want.map(|w| w.1)),
            }
        }
    }
}

/// Runs `q` (`POST /query`, times in epoch seconds) and returns the rows of its one result.
async fn run(influx: &Influx, db: Option<&str>, q: &str) -> Vec<Row> {
    let mut form = vec![("q", q), ("epoch", "s")];
    if let Some(db) = db {
        form.push(("db", db));
    }
    let reply = modelperf_telemetry::http::client()
        .build()
        .unwrap()
        .post(format!("{}/query", influx.url()))
        .form(&form)
        .send()
        .await
        .unwrap();
    let status = reply.status();
    let body: Value = reply.json().await.unwrap();
    assert!(status.is_success(), "{status} for\n{q}\n{body}");
    let result = &body["results"][0];
    assert!(result.get("error").is_none(), "{q}\n{body}");
    let mut rows = Vec::new();
    for series in result["series"].as_array().into_iter().flatten() {
        let tags: BTreeMap<String, String> = series["tags"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        let columns: Vec<&str> = series["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
        for values in series["values"].as_array().unwrap() {
            let values = values.as_array().unwrap();
            let mut row = Row { tags: tags.clone(), time: 0, values: BTreeMap::new() };
            for (column, value) in columns.iter().zip(values) {
                if *column == "time" {
                    row.time = value.as_i64().unwrap();
                } else {
                    row.values.insert((*column).to_owned(), value.as_f64());
                }
            }
            rows.push(row);
        }
    }
    rows
}

fn rfc3339(epoch_seconds: i64) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(epoch_seconds).unwrap());
    format!("'{}'", humantime::format_rfc3339_seconds(at))
}

#[tokio::test]
async fn every_documented_query_gives_the_documented_numbers() {
    let influx = Influx::start().await.unwrap();
    let db = influx.fresh_database().await.unwrap();
    let sink =
        Sink::new(InfluxConfig { url: influx.url().to_owned(), database: db.clone(), ..InfluxConfig::default() })
            .unwrap();
    sink.ensure().await.unwrap(); // policies "1m" and "1h"

    // The start of the previous hour: whole minutes and a whole hour, all in the past.
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    let t = now - now % 3_600 - 3_600;
    let (minutes, hours) = (minute_rows(t), hour_rows(t));
    assert_eq!(sink.write("1m", &minutes).await.unwrap().points, minutes.len());
    assert_eq!(sink.write("1h", &hours).await.unwrap().points, hours.len());

    let (from, to) = (t, t + 180);
    let grafana_time_filter = format!("time >= {}ms and time <= {}ms", from * 1_000, to * 1_000 - 1);
    let (blocks, fences) = sql_blocks(&queries_md());
    let mut checked = Vec::new();
    for block in &blocks {
        let id = block.id.as_str();
        let wants = expected(id, t);
        let documented = block.sql.replace("{from}", &rfc3339(from)).replace("{to}", &rfc3339(to));
        check(&format!("{id} (as documented)"), id, &run(&influx, Some(&db), &documented).await, &wants);

        let grafana = block.sql.replace(TIME_RANGE, &grafana_time_filter);
        check(&format!("{id} ($timeFilter)"), id, &run(&influx, Some(&db), &grafana).await, &wants);

        let qualified = documented
            .replace(r#"FROM "1m"."#, &format!(r#"FROM "{db}"."1m"."#))
            .replace(r#"FROM "1h"."#, &format!(r#"FROM "{db}"."1h"."#));
        check(&format!("{id} (database-qualified)"), id, &run(&influx, None, &qualified).await, &wants);
        checked.push(id);
    }
    assert_eq!(checked.len(), fences, "every ```sql block of docs/queries.md ran");
    assert_eq!(checked.len(), QUERY_IDS.len(), "every expectation was used: {checked:?}");
}
