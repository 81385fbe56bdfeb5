//! `modelperf report` against a real NATS server holding the windows and anomalies of the last
//! two days: the HTML, Markdown and JSON reports of `--since 7d` carry the seeded models'
//! figures, and `--publish` stores and announces the report once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, Context};
use chrono::{DateTime, DurationRound, Utc};
use modelperf_schema::messages::{Anomaly, AnomalyState, AnomalyType, ReportAnnouncement, Severity, WindowMetrics};
use modelperf_sketch::Sketch;
use modelperf_testkit::{NatsServer, read_stream};
use serde_json::Value;

async fn modelperf(url: &str, args: &[&str]) -> String {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_modelperf"))
        .args(args)
        .env("MODELPERF_NATS__URL", url)
        .env_remove("MODELPERF_CONFIG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run).await.expect("modelperf hung").unwrap();
    let (stdout, stderr) = (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap());
    assert!(out.status.success(), "modelperf {args:?} failed: {stderr}\nstdout: {stdout}");
    format!("{stdout}\n--stderr--\n{stderr}")
}

fn dims(kind: &str, model: &str) -> BTreeMap<String, String> {
    [("kind", kind), ("provider", "acme"), ("model", model)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Hour `h` of `model`: 100 completions at `base`..`base + 99` ms, `ok` of them successful, and
/// ten judgments of `q` ± 0.05, costing `usd` in all.
fn windows(start: DateTime<Utc>, model: &str, base: f64, ok: u64, q: f64, usd: f64) -> [WindowMetrics; 2] {
    let mut s = Sketch::new();
    (0..100).for_each(|i| s.add(base + i as f64));
    let scores: Vec<f64> = (0..10).map(|i| q + if i % 2 == 0 { 0.05 } else { -0.05 }).collect();
    let m = modelperf_stats::Moments::from_slice(&scores);
    let w = WindowMetrics { window: "1h".into(), start, end: start + chrono::Duration::hours(1), ..Default::default() };
    [
        WindowMetrics {
            dims: dims("task_completed", model),
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
            dims: dims("judgment", model),
            count: 10,
            weighted_count: 10.0,
            quality_mean: Some(m.mean),
            quality_m2: Some(m.m2),
            quality_n: m.n,
            ..w
        },
    ]
}

async fn seed(js: &Context) -> DateTime<Utc> {
    let first = (Utc::now() - chrono::Duration::hours(48)).duration_trunc(chrono::Duration::hours(1)).unwrap();
    for h in 0..24 {
        let start = first + chrono::Duration::hours(h);
        for m in windows(start, "swift", 200.0, 90, 0.7, 0.5).into_iter().chain(windows(
            start,
            "<b>sage</b>",
            900.0,
            99,
            0.9,
            1.5,
        )) {
            let id = format!("1h:{}:{}:{}", m.start.timestamp(), m.dims["kind"], m.dims["model"]);
            let out = modelperf_bus::Outgoing::new("perf.metrics.1h", id, modelperf_schema::to_msgpack(&m).unwrap());
            modelperf_bus::publish(js, out).await.unwrap();
        }
    }
    let a = Anomaly {
        id: "fp-swift-open".into(),
        fingerprint: "fp-swift".into(),
        kind: AnomalyType::ErrorRateIncrease,
        severity: Severity::Critical,
        state: AnomalyState::Open,
        series: dims("task_completed", "swift"),
        window: "1m".into(),
        observed: 0.3,
        baseline: 0.1,
        score: 7.0,
        detected_at: first + chrono::Duration::hours(5),
        resolved_at: None,
        description: "error rate 30 % against 10 %".into(),
    };
    let out = modelperf_bus::Outgoing::new(
        "perf.anomalies.critical",
        a.id.clone(),
        modelperf_schema::to_msgpack(&a).unwrap(),
    );
    modelperf_bus::publish(js, out).await.unwrap();
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_of_the_last_seven_days_in_every_format() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream::new(server.client().await.unwrap());
    modelperf_bus::Topology::contract(&modelperf_bus::BusConfig::default(), 1).ensure(&js).await.unwrap();
    seed(&js).await;
    let dir = tempfile::tempdir().unwrap();
    let path = |ext: &str| dir.path().join(format!("report.{ext}")).display().to_string();

    let out = modelperf(server.url(), &["report", "--since", "7d", "--format", "json", "-o", &path("json")]).await;
    assert!(out.contains("2 models, 96 windows, 1 anomalies"), "{out}");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(path("json")).unwrap()).unwrap();
    let models = json["models"].as_array().unwrap();
    let by_name: BTreeMap<&str, &Value> = models.iter().map(|m| (m["model"].as_str().unwrap(), m)).collect();
    let swift = by_name["acme/swift"];
    assert_eq!((swift["success"].as_u64(), swift["failure"].as_u64()), (Some(24 * 90), Some(24 * 10)));
    let w = modelperf_stats::wilson_interval(24 * 90, 2400, 0.95).unwrap();
    assert!((swift["success_rate"]["low"].as_f64().unwrap() - w.low).abs() < 1e-12);
    assert!((swift["quality"]["value"].as_f64().unwrap() - 0.7).abs() < 1e-9);
    // 100 values 200..299 per window: the lower p95 is 294 within the sketch's 1 %.
    let p95 = swift["latency"]["p95_ms"].as_f64().unwrap();
    assert!((p95 - 294.0).abs() / 294.0 < 0.01, "{p95}");
    assert!((swift["cost_per_task"].as_f64().unwrap() - 0.005).abs() < 1e-12);
    assert_eq!(json["pareto_front"], serde_json::json!(["acme/swift", "acme/<b>sage</b>"]));
    assert_eq!(json["anomalies"][0]["model"], "acme/swift");

    modelperf(server.url(), &["report", "--since", "7d", "--format", "html", "-o", &path("html")]).await;
    let html = std::fs::read_to_string(path("html")).unwrap();
    assert!(html.contains("<svg") && html.contains("data-series=\"acme/swift p95\""));
    assert!(html.contains("acme/&lt;b&gt;sage&lt;/b&gt;") && !html.contains("<b>sage"), "names are escaped");
    let md = modelperf(server.url(), &["report", "--since", "7d", "--format", "md"]).await;
    assert!(md.contains("| acme/swift | 2400 | 90.0 % ("), "{md}");

    let out = modelperf(
        server.url(),
        &["report", "--since", "3d", "--until", "1h", "--format", "md", "--publish", "-o", &path("md")],
    )
    .await;
    assert!(out.contains("announced on perf.reports.adhoc"), "{out}");
    let announced: Vec<ReportAnnouncement> = read_stream(&js, "PERF_SIGNALS", Some("perf.reports.adhoc"))
        .await
        .unwrap()
        .iter()
        .map(|m| rmp_serde::from_slice(&m.payload).unwrap())
        .collect();
    assert_eq!(announced.len(), 1);
    assert_eq!(announced[0].formats, vec!["md", "html", "json"]);
    assert!(announced[0].object.starts_with("adhoc/"));
}
