//! Reports against a real NATS server: the report of seeded windows and anomalies has the
//! figures the raw data gives, is stored in `modelperf_reports` and announced on
//! `perf.reports.<period>`; scheduled reports under the lease `analyzer.reports` are stored and
//! announced once per tick with two replicas running, and a restart makes up the ticks it missed
//! once each and repeats none; the HTML page renders in headless Chromium with its charts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{self, Context};
use chrono::{DateTime, TimeZone, Utc};
use modelperf_analyzer::config::ScheduleConfig;
use modelperf_analyzer::report::source::{self, Format};
use modelperf_analyzer::report::{self, Report};
use modelperf_analyzer::{App, Config};
use modelperf_schema::messages::{Anomaly, AnomalyState, AnomalyType, ReportAnnouncement, Severity, WindowMetrics};
use modelperf_sketch::Sketch;
use modelperf_testkit::{NatsServer, eventually, read_stream};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

fn day() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap()
}

fn dims(kind: &str, model: &str) -> BTreeMap<String, String> {
    [("kind", kind), ("provider", "acme"), ("model", model), ("task_type", "code_edit")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// What was seeded for one model: every latency and outcome and score, to check the report by.
#[derive(Default)]
struct Truth {
    latencies: Vec<f64>,
    success: u64,
    failure: u64,
    scores: Vec<f64>,
    cost: f64,
}

/// 24 hourly windows per model: latencies log-normal around `median` ms, success with
/// probability `p`, judgment scores around `q`, `usd` per task.
fn seed(rng: &mut StdRng, model: &str, median: f64, p: f64, q: f64, usd: f64) -> (Vec<WindowMetrics>, Truth) {
    let mut truth = Truth::default();
    let mut out = Vec::new();
    for h in 0..24 {
        let start = day() + chrono::Duration::hours(h);
        let mut sketch = Sketch::new();
        let (mut ok, mut bad) = (0, 0);
        for _ in 0..200 {
            let z: f64 = (0..12).map(|_| rng.random_range(0.0..1.0)).sum::<f64>() - 6.0;
            let v = median * (0.3 * z).exp();
            sketch.add(v);
            truth.latencies.push(v);
            if rng.random_range(0.0..1.0) < p { ok += 1 } else { bad += 1 }
        }
        truth.success += ok;
        truth.failure += bad;
        truth.cost += 200.0 * usd;
        let base = WindowMetrics {
            window: "1h".into(),
            start,
            end: start + chrono::Duration::hours(1),
            revision: 0,
            ..WindowMetrics::default()
        };
        out.push(WindowMetrics {
            dims: dims("task_completed", model),
            count: 200,
            weighted_count: 200.0,
            success: ok,
            failure: bad,
            success_rate: Some(ok as f64 / 200.0),
            cost_usd: Some(200.0 * usd),
            latency_sketch: sketch.to_bytes(),
            ..base.clone()
        });
        let scores: Vec<f64> = (0..20).map(|_| (q + rng.random_range(-0.1..0.1f64)).clamp(0.0, 1.0)).collect();
        let m = modelperf_stats::Moments::from_slice(&scores);
        truth.scores.extend(&scores);
        out.push(WindowMetrics {
            dims: dims("judgment", model),
            count: 20,
            weighted_count: 20.0,
            quality_mean: Some(m.mean),
            quality_m2: Some(m.m2),
            quality_n: m.n,
            ..base
        });
    }
    (out, truth)
}

async fn publish_metrics(js: &Context, windows: &[WindowMetrics]) {
    for m in windows {
        let id = format!("1h:{}:{}:{}:{}", m.start.timestamp(), m.dims["kind"], m.dims["model"], m.revision);
        let out = modelperf_bus::Outgoing::new("perf.metrics.1h", id, modelperf_schema::to_msgpack(m).unwrap());
        modelperf_bus::publish(js, out).await.unwrap();
    }
}

async fn publish_anomaly(js: &Context, a: &Anomaly) {
    let out =
        modelperf_bus::Outgoing::new("perf.anomalies.warning", a.id.clone(), modelperf_schema::to_msgpack(a).unwrap());
    modelperf_bus::publish(js, out).await.unwrap();
}

fn anomaly(model: &str, state: AnomalyState, at: DateTime<Utc>) -> Anomaly {
    Anomaly {
        id: format!("fp-{model}-{}", at.timestamp()),
        fingerprint: format!("fp-{model}"),
        kind: AnomalyType::LatencySpike,
        severity: Severity::Warning,
        state,
        series: dims("task_completed", model),
        window: "1m".into(),
        observed: 2400.0,
        baseline: 1200.0,
        score: 8.0,
        detected_at: at,
        resolved_at: (state == AnomalyState::Resolved).then_some(at),
        description: "p95 2400 ms against 1200 ms".into(),
    }
}

async fn ensure(js: &Context) {
    modelperf_bus::Topology::contract(&modelperf_bus::BusConfig::default(), 1).ensure(js).await.unwrap();
}

/// The seeded models, their truth, in label order.
const MODELS: [(&str, f64, f64, f64, f64); 3] =
    [("alpha", 800.0, 0.95, 0.82, 0.004), ("beta", 1500.0, 0.80, 0.90, 0.012), ("gamma", 400.0, 0.60, 0.55, 0.010)];

async fn seeded(js: &Context) -> BTreeMap<String, Truth> {
    let mut rng = StdRng::seed_from_u64(42);
    let mut truths = BTreeMap::new();
    for (name, median, p, q, usd) in MODELS {
        let (w, t) = seed(&mut rng, name, median, p, q, usd);
        publish_metrics(js, &w).await;
        truths.insert(format!("acme/{name}"), t);
    }
    // A window of the next day: not in the period.
    let (next, _) = seed(&mut rng, "alpha", 800.0, 0.95, 0.82, 0.004);
    let mut later = next[0].clone();
    later.start += chrono::Duration::days(1);
    later.end += chrono::Duration::days(1);
    publish_metrics(js, &[later]).await;
    publish_anomaly(js, &anomaly("beta", AnomalyState::Open, day() + chrono::Duration::hours(6))).await;
    publish_anomaly(js, &anomaly("beta", AnomalyState::Resolved, day() + chrono::Duration::hours(9))).await;
    publish_anomaly(js, &anomaly("gamma", AnomalyState::Open, day() + chrono::Duration::hours(20))).await;
    truths
}

fn lower_quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[(q * (v.len() - 1) as f64).floor() as usize]
}

fn check_figures(r: &Report, truths: &BTreeMap<String, Truth>) {
    assert_eq!(
        r.models.iter().map(|m| m.model.clone()).collect::<Vec<_>>(),
        truths.keys().cloned().collect::<Vec<_>>()
    );
    assert_eq!(r.windows, 3 * 48, "the next day's window is not in the period");
    for m in &r.models {
        let t = &truths[&m.model];
        assert_eq!((m.success, m.failure), (t.success, t.failure), "{}", m.model);
        let sr = m.success_rate.unwrap();
        let w = modelperf_stats::wilson_interval(t.success, t.success + t.failure, 0.95).unwrap();
        assert!((sr.low - w.low).abs() < 1e-12 && (sr.high - w.high).abs() < 1e-12);
        let all = modelperf_stats::Moments::from_slice(&t.scores);
        let q = m.quality.unwrap();
        let qi = all.mean_interval(0.95).unwrap();
        assert!((q.value - all.mean).abs() < 1e-9 && (q.low - qi.low).abs() < 1e-9 && (q.high - qi.high).abs() < 1e-9);
        let l = m.latency.unwrap();
        for (got, q) in [(l.p50_ms, 0.5), (l.p95_ms, 0.95), (l.p99_ms, 0.99)] {
            let exact = lower_quantile(&t.latencies, q);
            assert!((got - exact).abs() / exact <= 0.011, "{} p{q}: sketch {got}, exact {exact}", m.model);
        }
        assert_eq!(m.latency_series.len(), 24);
        let cost = m.cost_per_task.unwrap();
        assert!((cost - t.cost / (t.success + t.failure) as f64).abs() < 1e-12, "{}", m.model);
    }
    // alpha is cheapest with good quality, beta best and dearest; gamma is dominated by alpha.
    assert_eq!(r.pareto_front, vec!["acme/alpha", "acme/beta"]);
    let spans: Vec<_> = r.anomalies.iter().map(|a| (a.model.as_str(), a.resolved_at.is_some())).collect();
    assert_eq!(spans, vec![("acme/beta", true), ("acme/gamma", false)]);
}

async fn object(js: &Context, name: &str) -> Vec<u8> {
    let store = js.get_object_store("modelperf_reports").await.unwrap();
    let mut obj = store.get(name).await.unwrap_or_else(|e| panic!("object {name}: {e}"));
    let mut buf = Vec::new();
    obj.read_to_end(&mut buf).await.unwrap();
    buf
}

async fn announcements(js: &Context, period: &str) -> Vec<ReportAnnouncement> {
    read_stream(js, "PERF_SIGNALS", Some(&format!("perf.reports.{period}")))
        .await
        .unwrap()
        .iter()
        .map(|m| rmp_serde::from_slice(&m.payload).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_of_seeded_windows_is_stored_and_announced() {
    let nats = NatsServer::start().await.unwrap();
    let js = jetstream::new(nats.client().await.unwrap());
    ensure(&js).await;
    let truths = seeded(&js).await;
    let end = day() + chrono::Duration::days(1);
    let r = source::report(&js, "adhoc", day(), end, "1h", 48).await.unwrap();
    check_figures(&r, &truths);
    let (a, duplicate) = source::publish(&js, &r, &Format::ALL).await.unwrap();
    assert!(!duplicate);
    assert_eq!(a.object, "adhoc/2026-03-02T00:00:00Z");
    assert_eq!(a.formats, vec!["md", "html", "json"]);
    assert_eq!((a.start, a.end), (day(), end));
    let json = object(&js, "adhoc/2026-03-02T00:00:00Z.json").await;
    assert_eq!(a.sha256, hex::encode(Sha256::digest(&json)));
    let back: Report = serde_json::from_slice(&json).unwrap();
    assert_eq!(back, r);
    let md = String::from_utf8(object(&js, "adhoc/2026-03-02T00:00:00Z.md").await).unwrap();
    assert!(md.contains("| acme/alpha |"), "{md}");
    let html = String::from_utf8(object(&js, "adhoc/2026-03-02T00:00:00Z.html").await).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("id=\"pareto\""));
    assert_eq!(announcements(&js, "adhoc").await, vec![a.clone()]);
    // The same report again is one announcement: the server drops the repeat.
    let (_, duplicate) = source::publish(&js, &r, &Format::ALL).await.unwrap();
    assert!(duplicate);
    assert_eq!(announcements(&js, "adhoc").await.len(), 1);
}

fn config(url: &str) -> Config {
    let mut c = Config::default();
    c.nats.url = url.to_owned();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.bus.lease_ttl = Duration::from_secs(1);
    c.bus.checkpoint_interval = Duration::from_millis(200);
    c.reports.window = "1h".parse().unwrap();
    c.reports.delay = Duration::ZERO;
    c.reports.catch_up = Duration::from_secs(3600);
    c.reports.schedules = BTreeMap::from([(
        "tick".to_owned(),
        ScheduleConfig { cron: "*/2 * * * * *".into(), span: Duration::from_secs(2) },
    )]);
    c
}

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(url: &str, prometheus: &modelperf_telemetry::PrometheusHandle) -> Running {
    let app = App::build(config(url), prometheus.clone()).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    Running { stop, task }
}

impl Running {
    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

/// The ticks announced are distinct, two seconds apart with none missing, and each is stored in
/// every format with the announced hash.
async fn check_ticks(js: &Context, seen: &[ReportAnnouncement]) {
    let objects: BTreeSet<&str> = seen.iter().map(|a| a.object.as_str()).collect();
    assert_eq!(objects.len(), seen.len(), "a tick was announced twice: {seen:#?}");
    for pair in seen.windows(2) {
        assert_eq!(pair[1].start - pair[0].start, chrono::Duration::seconds(2), "a tick is missing: {seen:#?}");
    }
    for a in seen {
        assert_eq!(a.end - a.start, chrono::Duration::seconds(2));
        assert_eq!(a.formats, vec!["md", "html", "json"]);
        let json = object(js, &format!("{}.json", a.object)).await;
        assert_eq!(a.sha256, hex::encode(Sha256::digest(&json)), "{}", a.object);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tick_is_reported_once_by_the_lease_holder_and_a_restart_repeats_none() {
    let nats = NatsServer::start().await.unwrap();
    let js = jetstream::new(nats.client().await.unwrap());
    ensure(&js).await;
    let prometheus = modelperf_telemetry::init("analyzer-test").unwrap().prometheus;
    // Two replicas: only the holder of analyzer.reports renders.
    let (a, b) = (start(nats.url(), &prometheus).await, start(nats.url(), &prometheus).await);
    eventually(Duration::from_secs(30), || async { (announcements(&js, "tick").await.len() >= 4).then_some(()) })
        .await
        .expect("the schedule did not tick four times");
    a.stop().await;
    b.stop().await;
    let before = announcements(&js, "tick").await;
    check_ticks(&js, &before).await;
    // Down for a while: ticks are missed.
    let down = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let c = start(nats.url(), &prometheus).await;
    let n = before.len();
    eventually(Duration::from_secs(30), || async { (announcements(&js, "tick").await.len() >= n + 4).then_some(()) })
        .await
        .expect("the restarted analyzer did not report");
    c.stop().await;
    let after = announcements(&js, "tick").await;
    assert_eq!(&after[..n], &before[..], "what was announced stays as it was");
    check_ticks(&js, &after).await;
    // The ticks of the outage were made up: the first after the restart follows the last before.
    assert!(down.elapsed() > Duration::from_secs(5));
    assert_eq!(after[n].start - before[n - 1].start, chrono::Duration::seconds(2));
    let kv = js.get_key_value("modelperf_state").await.unwrap();
    let cp: modelperf_bus::Checkpoint =
        rmp_serde::from_slice(&kv.get("analyzer.reports").await.unwrap().unwrap()).unwrap();
    let saved: report::schedule::Saved = rmp_serde::from_slice(&cp.state).unwrap();
    assert_eq!(saved.last["tick"], after.last().unwrap().end, "the checkpoint holds the last tick reported");
}

/// Runs headless Chromium as the contract of this test says; fails clearly when it is missing.
fn chromium(args: &[&str], profile: &Path) -> std::process::Output {
    let bin = std::env::var("MODELPERF_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let mut cmd = std::process::Command::new(&bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args);
    match cmd.output() {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run {bin:?} ({e}): the HTML report test needs Debian's chromium \
             (`apt-get install -y chromium`, done by deploy/local/prereqs.sh) or MODELPERF_CHROMIUM"
        ),
    }
}

fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_html_report_renders_in_headless_chromium() {
    let nats = NatsServer::start().await.unwrap();
    let js = jetstream::new(nats.client().await.unwrap());
    ensure(&js).await;
    let truths = seeded(&js).await;
    let r = source::report(&js, "adhoc", day(), day() + chrono::Duration::days(1), "1h", 48).await.unwrap();
    check_figures(&r, &truths);
    let dir: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-chromium");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("report.html");
    std::fs::write(&page, report::html::render(&r)).unwrap();
    let blank = dir.join("blank.html");
    std::fs::write(&blank, "<!DOCTYPE html><html><body></body></html>").unwrap();
    let url = format!("file://{}", page.display());

    let profile = tempfile::tempdir().unwrap();
    let dom = chromium(&["--dump-dom", &url], profile.path());
    assert!(dom.status.success(), "chromium --dump-dom failed: {}", String::from_utf8_lossy(&dom.stderr));
    let dom = String::from_utf8(dom.stdout).unwrap();
    std::fs::write(dir.join("dom.html"), &dom).unwrap();
    // The parsed page has every chart as an SVG element, with the models' names and values.
    for id in ["latency-0", "latency-1", "latency-2", "success-rate", "quality", "cost", "pareto", "anomalies"] {
        assert!(dom.contains(&format!("class=\"chart\" id=\"{id}\"")), "chart {id} missing from the DOM");
    }
    assert_eq!(dom.matches("<polyline").count(), 3 * 3 + 1, "three percentile lines per model and the front");
    for m in &r.models {
        assert!(dom.contains(&format!("data-series=\"{} p95\"", m.model)), "{} has no p95 line", m.model);
        let sr = m.success_rate.unwrap().value;
        assert!(dom.contains(&format!("{} {:.1} %", m.model, sr * 100.0)), "{} success rate not drawn", m.model);
        let q = m.quality.unwrap().value;
        assert!(dom.contains(&format!("{} quality {q:.3}", m.model)), "{} not on the Pareto chart", m.model);
        let p95 = m.latency_series[0].p95_ms;
        assert!(dom.contains(&format!("{} p95 {p95:.0} ms", m.model)), "{} p95 point missing", m.model);
    }
    assert_eq!(dom.matches("class=\"span\"").count(), 2, "two anomaly spans");

    let shot = dir.join("report.png");
    let profile = tempfile::tempdir().unwrap();
    let out = chromium(&[&format!("--screenshot={}", shot.display()), "--window-size=1000,3000", &url], profile.path());
    assert!(out.status.success(), "chromium --screenshot failed: {}", String::from_utf8_lossy(&out.stderr));
    let empty = dir.join("blank.png");
    let profile = tempfile::tempdir().unwrap();
    let blank_url = format!("file://{}", blank.display());
    let out = chromium(
        &[&format!("--screenshot={}", empty.display()), "--window-size=1000,3000", &blank_url],
        profile.path(),
    );
    assert!(out.status.success(), "chromium --screenshot of a blank page failed");
    let (png, blank_png) = (std::fs::read(&shot).unwrap(), std::fs::read(&empty).unwrap());
    assert_eq!(png_size(&png), (1000, 3000));
    // Drawn charts compress far worse than a blank page of the same size.
    assert!(png.len() > 5 * blank_png.len(), "screenshot {} bytes, blank page {} bytes", png.len(), blank_png.len());
    println!("report screenshot kept at {}", shot.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_announced_before_a_lost_checkpoint_is_not_announced_again() {
    use chrono::SubsecRound;
    let nats = NatsServer::start().await.unwrap();
    let js = jetstream::new(nats.client().await.unwrap());
    ensure(&js).await;
    // The checkpoint says the tick t0 is done; the tick t0 + 2 s was stored and announced, and the
    // process died before its checkpoint.
    let now = Utc::now().trunc_subsecs(0);
    let t0 = now - chrono::Duration::seconds(now.timestamp() % 2 + 4);
    let (mut store, _) = modelperf_bus::CheckpointStore::open(&js, "analyzer.reports").await.unwrap();
    let saved = report::schedule::Saved { last: BTreeMap::from([("tick".to_owned(), t0)]) };
    let state = rmp_serde::to_vec_named(&saved).unwrap();
    store.save(&modelperf_bus::Checkpoint { applied_seq: 0, replay_from: None, state }).await.unwrap();
    let before_crash = ReportAnnouncement {
        object: source::object_name("tick", &t0),
        formats: vec!["json".into()],
        period: "tick".into(),
        start: t0,
        end: t0 + chrono::Duration::seconds(2),
        sha256: "announced before the crash".into(),
    };
    // Under another message id: the duplicate window is not what keeps it single.
    let mut out = source::announcement(&before_crash);
    out.msg_id = "the-crashed-run".into();
    modelperf_bus::publish(&js, out).await.unwrap();

    let prometheus = modelperf_telemetry::init("analyzer-test").unwrap().prometheus;
    let app = start(nats.url(), &prometheus).await;
    eventually(Duration::from_secs(30), || async { (announcements(&js, "tick").await.len() >= 4).then_some(()) })
        .await
        .expect("the schedule did not go on");
    app.stop().await;
    let seen = announcements(&js, "tick").await;
    assert_eq!(seen[0], before_crash);
    assert_eq!(seen.iter().filter(|a| a.start == t0).count(), 1, "{seen:#?}");
    assert_eq!(seen[1].start, t0 + chrono::Duration::seconds(2), "the next tick follows: {seen:#?}");
    check_ticks(&js, &seen[1..]).await;
}
