//! `modelperf compare` against a real NATS server: the production windows of one task type give
//! the libraries' figures on the pooled counts, a ranking with a tie where two models cannot be
//! separated and the quality-vs-cost front; a benchmark run's clean events are compared paired on
//! the cases every model answered.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::{self, Context};
use chrono::{DateTime, DurationRound, Utc};
use modelperf_schema::ModelRef;
use modelperf_schema::event::{Benchmark, Data, Event, Judgment, TaskCompleted};
use modelperf_schema::messages::WindowMetrics;
use modelperf_sketch::Sketch;
use modelperf_testkit::NatsServer;
use serde_json::Value;

async fn modelperf(url: &str, args: &[&str]) -> (bool, String, String) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_modelperf"))
        .args(args)
        .env("MODELPERF_NATS__URL", url)
        .env_remove("MODELPERF_CONFIG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run).await.expect("modelperf hung").unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

async fn ok(url: &str, args: &[&str]) -> String {
    let (success, stdout, stderr) = modelperf(url, args).await;
    assert!(success, "modelperf {args:?} failed: {stderr}\nstdout: {stdout}");
    stdout
}

fn dims(kind: &str, model: &str, task_type: &str) -> BTreeMap<String, String> {
    [("kind", kind), ("provider", "acme"), ("model", model), ("task_type", task_type)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// An hour of `model` on `task_type`: 100 completions at `base`..`base + 99` ms, `ok` of them
/// successful, costing `usd`; ten judgments of `q` ± 0.05.
fn hour(
    start: DateTime<Utc>,
    model: &str,
    task_type: &str,
    base: f64,
    ok: u64,
    q: f64,
    usd: f64,
) -> [WindowMetrics; 2] {
    let mut s = Sketch::new();
    (0..100).for_each(|i| s.add(base + i as f64));
    let scores: Vec<f64> = (0..10).map(|i| q + if i % 2 == 0 { 0.05 } else { -0.05 }).collect();
    let m = modelperf_stats::Moments::from_slice(&scores);
    let w = WindowMetrics { window: "1h".into(), start, end: start + chrono::Duration::hours(1), ..Default::default() };
    [
        WindowMetrics {
            dims: dims("task_completed", model, task_type),
            count: 100,
            weighted_count: 100.0,
            success: ok,
            failure: 100 - ok,
            success_rate: Some(ok as f64 / 100.0),
            cost_usd: Some(usd),
            latency_sketch: s.to_bytes(),
            ..w.clone()
        },
        WindowMetrics {
            dims: dims("judgment", model, task_type),
            count: 10,
            weighted_count: 10.0,
            quality_mean: Some(m.mean),
            quality_m2: Some(m.m2),
            quality_n: m.n,
            ..w
        },
    ]
}

/// 24 hours of four models: `swift` (90 % success, quality 0.7, $0.005 a task), `twin` (91 %, the
/// same quality, dearer), `sage` (99 %, quality 0.9, $0.015), and `chatty` on another task type.
async fn seed_windows(js: &Context) {
    let first = (Utc::now() - chrono::Duration::hours(30)).duration_trunc(chrono::Duration::hours(1)).unwrap();
    for h in 0..24 {
        let start = first + chrono::Duration::hours(h);
        let windows = [
            hour(start, "swift", "code_edit", 200.0, 90, 0.7, 0.5),
            hour(start, "twin", "code_edit", 210.0, 91, 0.7, 0.6),
            hour(start, "sage", "code_edit", 900.0, 99, 0.9, 1.5),
            hour(start, "chatty", "chat", 50.0, 100, 0.5, 0.1),
        ];
        for m in windows.into_iter().flatten() {
            let id = format!("1h:{}:{}:{}", m.start.timestamp(), m.dims["kind"], m.dims["model"]);
            let out = modelperf_bus::Outgoing::new("perf.metrics.1h", id, modelperf_schema::to_msgpack(&m).unwrap());
            modelperf_bus::publish(js, out).await.unwrap();
        }
    }
}

/// The JSON object of `model` in `models`.
fn model<'a>(models: &'a Value, name: &str) -> &'a Value {
    models.as_array().unwrap().iter().find(|m| m["model"] == name).unwrap_or_else(|| panic!("{name} in {models}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_windows_of_a_task_type_are_compared_with_intervals_tests_and_tiers() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream::new(server.client().await.unwrap());
    modelperf_bus::Topology::contract(&modelperf_bus::BusConfig::default(), 1).ensure(&js).await.unwrap();
    seed_windows(&js).await;

    let json: Value = serde_json::from_str(
        &ok(server.url(), &["compare", "--task-type", "code_edit", "--since", "7d", "--json"]).await,
    )
    .unwrap();
    assert_eq!(json["design"], "observational");
    let o = &json["observational"];
    let names: BTreeSet<&str> = o["models"].as_array().unwrap().iter().map(|m| m["model"].as_str().unwrap()).collect();
    assert_eq!(names, BTreeSet::from(["acme/swift", "acme/twin", "acme/sage"]), "chat is another task type");

    let swift = model(&o["models"], "acme/swift");
    assert_eq!((swift["completions"].as_u64(), swift["success"].as_u64()), (Some(2400), Some(2160)));
    let w = modelperf_stats::wilson_interval(2160, 2400, 0.95).unwrap();
    assert!((swift["success_rate"]["low"].as_f64().unwrap() - w.low).abs() < 1e-9, "{swift}");
    assert!((swift["success_rate"]["high"].as_f64().unwrap() - w.high).abs() < 1e-9, "{swift}");
    // 100 values 200..299 in every window: the lower p95 is 294 within the sketch's 1 %, and the
    // bootstrap over identical windows cannot move it.
    let p95 = &swift["latency_p95_ms"];
    assert!((p95["value"].as_f64().unwrap() - 294.0).abs() / 294.0 < 0.01, "{p95}");
    assert!(p95["low"].as_f64().unwrap() <= p95["value"].as_f64().unwrap());
    assert!((swift["quality"]["value"].as_f64().unwrap() - 0.7).abs() < 1e-9);
    assert!((swift["cost_per_task"].as_f64().unwrap() - 0.005).abs() < 1e-12);
    assert!((swift["cost_per_success"].as_f64().unwrap() - 12.0 / 2160.0).abs() < 1e-12);

    // The success test of swift against sage is the library's, adjusted with the other pairs.
    let pair = o["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            BTreeSet::from([p["a"].as_str().unwrap(), p["b"].as_str().unwrap()])
                == BTreeSet::from(["acme/swift", "acme/sage"])
        })
        .unwrap();
    let z = modelperf_stats::two_proportion_z_test(2160, 2400, 2376, 2400).unwrap();
    let t = &pair["success_test"];
    assert!((t["p_value"].as_f64().unwrap() - z.p_value).abs() < 1e-12, "{t} against {z:?}");
    assert!(t["p_adjusted"].as_f64().unwrap() >= t["p_value"].as_f64().unwrap() && t["significant"] == true);
    assert_eq!(json["tests"].as_u64(), Some(6), "three pairs, success and quality");

    // swift and twin (90 % and 91 % on 2400 tasks each) cannot be separated; sage can.
    let by_success = o["rankings"].as_array().unwrap().iter().find(|r| r["metric"] == "success_rate").unwrap();
    let tiers: Vec<BTreeSet<&str>> = by_success["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect())
        .collect();
    assert_eq!(tiers, vec![BTreeSet::from(["acme/sage"]), BTreeSet::from(["acme/swift", "acme/twin"])]);
    // twin costs more than swift for the same quality: off the front.
    let front: BTreeSet<&str> = o["pareto_front"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert_eq!(front, BTreeSet::from(["acme/swift", "acme/sage"]));

    let table = ok(server.url(), &["compare", "--task-type", "code_edit", "--since", "7d"]).await;
    assert!(
        table.contains("observational") && table.contains("acme/sage  >  acme/") && table.contains(" = "),
        "{table}"
    );

    let none = ok(server.url(), &["compare", "--task-type", "translate", "--since", "7d", "--json"]).await;
    let none: Value = serde_json::from_str(&none).unwrap();
    assert!(none["observational"]["models"].as_array().unwrap().is_empty(), "{none}");
    assert!(!none["notes"].as_array().unwrap().is_empty(), "an empty comparison says why: {none}");

    let (success, _, stderr) =
        modelperf(server.url(), &["compare", "--task-type", "code_edit", "--correction", "bonferroni"]).await;
    assert!(!success && stderr.contains("use holm or bh"), "{stderr}");
}

fn clean(id: String, ts: DateTime<Utc>, run: &str, case: usize, m: &str, data: Data) -> Event {
    let mut e = Event::new(ts, "benchmark.runner", data);
    e.id = Some(id);
    e.task_id = Some(format!("{run}-{m}-{case}"));
    e.task_type = Some("code_edit".into());
    e.model = Some(ModelRef::new("acme", m));
    e.benchmark = Some(Benchmark { run_id: run.into(), case_id: format!("case-{case}") });
    e.received_at = Some(ts);
    e.sample_rate = Some(1.0);
    e
}

/// A benchmark run of 40 cases: `a` answers all and fails case 1, `b` skips cases 36..39 and fails
/// every fourth case; `b` is 0.1 worse on quality and 50 ms slower.
async fn seed_run(js: &Context, run: &str) -> (Vec<(bool, bool)>, Vec<f64>) {
    let ts = Utc::now() - chrono::Duration::hours(2);
    let (mut pairs, mut quality_diffs) = (Vec::new(), Vec::new());
    for case in 0..40 {
        for (m, success, q, latency) in [
            ("a", case != 1, 0.8 + 0.002 * case as f64, 1000.0 + case as f64),
            ("b", case % 4 != 0, 0.7 + 0.003 * case as f64, 1050.0 + case as f64),
        ] {
            if m == "b" && case >= 36 {
                continue;
            }
            let done = Data::TaskCompleted(TaskCompleted { latency_ms: latency, success, ..TaskCompleted::default() });
            let judged = Data::Judgment(Judgment {
                judge_model: ModelRef::new("acme", "judge"),
                score: q,
                ..Judgment::default()
            });
            for (kind, data) in [("task_completed", done), ("judgment", judged)] {
                let e = clean(format!("{run}-{m}-{case}-{kind}"), ts, run, case, m, data);
                let out = modelperf_bus::Outgoing::new(
                    format!("perf.events.{kind}.0"),
                    e.id.clone().unwrap(),
                    modelperf_schema::to_msgpack(&e).unwrap(),
                );
                modelperf_bus::publish(js, out).await.unwrap();
            }
        }
        if case < 36 {
            pairs.push((case != 1, case % 4 != 0));
            quality_diffs.push((0.8 + 0.002 * case as f64) - (0.7 + 0.003 * case as f64));
        }
    }
    (pairs, quality_diffs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_benchmark_run_is_compared_paired_on_its_shared_cases() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream::new(server.client().await.unwrap());
    modelperf_bus::Topology::contract(&modelperf_bus::BusConfig::default(), 1).ensure(&js).await.unwrap();
    let (pairs, quality_diffs) = seed_run(&js, "r1").await;
    seed_run(&js, "r2").await;

    let out =
        ok(server.url(), &["compare", "--task-type", "code_edit", "--since", "7d", "--run", "r1", "--json"]).await;
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["design"], "paired");
    let p = &json["paired"];
    assert_eq!((p["run"].as_str(), p["cases"].as_u64()), (Some("r1"), Some(40)), "r2 is another run");
    assert_eq!(model(&p["models"], "acme/a")["cases"].as_u64(), Some(40));
    assert_eq!(model(&p["models"], "acme/b")["cases"].as_u64(), Some(36));
    let pair = &p["pairs"][0];
    assert_eq!((pair["shared_cases"].as_u64(), pair["judged_cases"].as_u64()), (Some(36), Some(36)));
    let (only_a, only_b) = modelperf_stats::discordant_counts(pairs);
    assert_eq!((pair["only_a_succeeded"].as_u64(), pair["only_b_succeeded"].as_u64()), (Some(only_a), Some(only_b)));
    let mcnemar = modelperf_stats::mcnemar_exact(only_a, only_b).unwrap();
    assert!((pair["success_test"]["p_value"].as_f64().unwrap() - mcnemar.p_value).abs() < 1e-12, "{pair}");
    let diffs = if pair["a"] == "acme/a" { quality_diffs } else { quality_diffs.iter().map(|d| -d).collect() };
    let wilcoxon = modelperf_stats::wilcoxon_signed_rank(&diffs).unwrap();
    let q = &pair["quality_test"];
    assert_eq!(q["test"], "wilcoxon_signed_rank");
    assert!((q["p_value"].as_f64().unwrap() - wilcoxon.p_value).abs() < 1e-12, "{pair}: Wilcoxon {wilcoxon:?}");

    let table = ok(server.url(), &["compare", "--task-type", "code_edit", "--since", "7d", "--run", "r1"]).await;
    assert!(table.contains("paired") && table.contains("benchmark run r1: 40 cases"), "{table}");
    assert!(table.contains("36"), "the shared cases are stated: {table}");
}
