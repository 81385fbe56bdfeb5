//! The analyzer against a real NATS server: a persisting condition is one anomaly, resolved
//! once; an unpriced model is announced; a `kill -9` mid-anomaly and a restart neither
//! re-announce nor lose it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream::{self, Context};
use chrono::{DateTime, TimeZone, Utc};
use modelperf_analyzer::{App, Config};
use modelperf_schema::messages::{Anomaly, AnomalyState, AnomalyType, WindowMetrics};
use modelperf_testkit::{NatsServer, eventually, read_stream};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::oneshot;

fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 8, 0, 0).unwrap()
}

/// Window `w` of model `model`: 100 events, p95 around 1 000 ms × `factor` (5 % noise).
fn window(rng: &mut StdRng, model: &str, w: i64, factor: f64, unpriced: bool) -> WindowMetrics {
    let start = epoch() + chrono::Duration::minutes(w);
    let noise: f64 = rng.random_range(-1.0..1.0) * 0.08;
    WindowMetrics {
        window: "1m".into(),
        start,
        end: start + chrono::Duration::minutes(1),
        dims: BTreeMap::from([
            ("kind".to_owned(), "task_completed".to_owned()),
            ("model".to_owned(), model.to_owned()),
            ("task_type".to_owned(), "code_edit".to_owned()),
        ]),
        count: 100,
        weighted_count: 100.0,
        success: 97,
        failure: 3,
        latency_p95_ms: Some(1000.0 * factor * noise.exp()),
        cost_usd: (!unpriced).then_some(0.2),
        unpriced: if unpriced { 100 } else { 0 },
        ..WindowMetrics::default()
    }
}

async fn publish(js: &Context, windows: &[WindowMetrics]) {
    let mut acks = Vec::new();
    for m in windows {
        let id = format!("1m:{}:{}:0", m.start.timestamp(), m.dims["model"]);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        let body = modelperf_schema::to_msgpack(m).unwrap();
        acks.push(js.publish_with_headers("perf.metrics.1m", headers, body.into()).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
}

/// Windows `from..to` of the steady model and of `model` (p95 × `factor`).
fn windows(rng: &mut StdRng, from: i64, to: i64, factor: f64) -> Vec<WindowMetrics> {
    (from..to).flat_map(|w| [window(rng, "steady", w, 1.0, false), window(rng, "spiky", w, factor, false)]).collect()
}

async fn anomalies(js: &Context) -> Vec<Anomaly> {
    read_stream(js, "PERF_SIGNALS", Some("perf.anomalies.>"))
        .await
        .unwrap()
        .iter()
        .map(|m| rmp_serde::from_slice(&m.payload).unwrap())
        .collect()
}

async fn ensure(js: &Context) {
    modelperf_bus::Topology::contract(&modelperf_bus::BusConfig::default(), 1).ensure(js).await.unwrap();
}

fn config(url: &str) -> Config {
    let mut c = Config::default();
    c.nats.url = url.to_owned();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.bus.lease_ttl = Duration::from_secs(1);
    c.bus.checkpoint_interval = Duration::from_millis(200);
    c
}

fn of(all: &[Anomaly], kind: AnomalyType, state: AnomalyState) -> Vec<&Anomaly> {
    all.iter().filter(|a| a.kind == kind && a.state == state).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisting_condition_is_one_anomaly_resolved_once() {
    let nats = NatsServer::start().await.unwrap();
    let js = jetstream::new(nats.client().await.unwrap());
    ensure(&js).await;
    let prometheus = modelperf_telemetry::init("analyzer-test").unwrap().prometheus;
    let app = App::build(config(nats.url()), prometheus).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let mut rng = StdRng::seed_from_u64(7);
    // 60 normal windows, the spike for 50, 10 normal again, one more to close the last frame;
    // an unpriced model in windows 70..75.
    let mut all = windows(&mut rng, 0, 60, 1.0);
    all.extend(windows(&mut rng, 60, 110, 1.6));
    all.extend(windows(&mut rng, 110, 121, 1.0));
    all.extend((0..121).map(|w| window(&mut rng, "new-model", w, 1.0, (70..75).contains(&w))));
    all.sort_by_key(|m| m.start);
    publish(&js, &all).await;
    let seen = eventually(Duration::from_secs(60), || async {
        let a = anomalies(&js).await;
        (of(&a, AnomalyType::LatencySpike, AnomalyState::Resolved).len() == 1
            && of(&a, AnomalyType::UnpricedModel, AnomalyState::Resolved).len() == 1)
            .then_some(a)
    })
    .await
    .expect("the latency spike and the unpriced model were not both announced and resolved");
    let opened = of(&seen, AnomalyType::LatencySpike, AnomalyState::Open);
    let resolved = of(&seen, AnomalyType::LatencySpike, AnomalyState::Resolved);
    assert_eq!(opened.len(), 1, "{seen:#?}");
    assert_eq!(opened[0].series["model"], "spiky");
    assert_eq!(opened[0].fingerprint, resolved[0].fingerprint);
    assert_eq!(opened[0].detected_at, epoch() + chrono::Duration::minutes(61), "opened by the first spiked window");
    let held = resolved[0].resolved_at.unwrap() - opened[0].detected_at;
    assert!((50..=54).contains(&held.num_minutes()), "resolved {} windows after opening", held.num_minutes());
    assert!(opened[0].observed / opened[0].baseline > 1.4, "{:?}", opened[0]);
    let unpriced = of(&seen, AnomalyType::UnpricedModel, AnomalyState::Open);
    assert_eq!(unpriced.len(), 1);
    assert_eq!(unpriced[0].series["model"], "new-model");
    assert_eq!(unpriced[0].detected_at, epoch() + chrono::Duration::minutes(71));
    // Nothing else: the steady series and the new model's latency stay quiet.
    assert_eq!(seen.len(), 4, "{seen:#?}");
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}

fn spawn_binary(url: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_modelperf-analyzer"))
        .env("MODELPERF_NATS__URL", url)
        .env("MODELPERF_HTTP__LISTEN", "127.0.0.1:0")
        .env("MODELPERF_BUS__LEASE_TTL", "1s")
        .env("MODELPERF_BUS__CHECKPOINT_INTERVAL", "200ms")
        .env("MODELPERF_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// The checkpoint's last applied sequence.
async fn checkpointed(js: &Context) -> u64 {
    let kv = js.get_key_value("modelperf_state").await.unwrap();
    match kv.get("analyzer.anomalies").await.unwrap() {
        Some(v) => rmp_serde::from_slice::<modelperf_bus::Checkpoint>(&v).unwrap().applied_seq,
        None => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_mid_anomaly_neither_reannounces_nor_loses_it() {
    let nats = NatsServer::start().await.unwrap();
    let js = jetstream::new(nats.client().await.unwrap());
    ensure(&js).await;
    let mut rng = StdRng::seed_from_u64(11);
    let mut analyzer = spawn_binary(nats.url());
    publish(&js, &windows(&mut rng, 0, 60, 1.0)).await;
    publish(&js, &windows(&mut rng, 60, 80, 1.6)).await;
    eventually(Duration::from_secs(60), || async {
        (of(&anomalies(&js).await, AnomalyType::LatencySpike, AnomalyState::Open).len() == 1).then_some(())
    })
    .await
    .expect("the spike was not announced");
    // Killed once its checkpoint holds the open anomaly and covers every window published.
    let last = js.get_stream("PERF_METRICS").await.unwrap().info().await.unwrap().state.last_sequence;
    eventually(Duration::from_secs(30), || async { (checkpointed(&js).await >= last).then_some(()) })
        .await
        .expect("the checkpoint did not catch up");
    analyzer.kill().unwrap();
    analyzer.wait().unwrap();
    let mut analyzer = spawn_binary(nats.url());
    publish(&js, &windows(&mut rng, 80, 110, 1.6)).await;
    publish(&js, &windows(&mut rng, 110, 121, 1.0)).await;
    let seen = eventually(Duration::from_secs(60), || async {
        let a = anomalies(&js).await;
        (!of(&a, AnomalyType::LatencySpike, AnomalyState::Resolved).is_empty()).then_some(a)
    })
    .await
    .expect("the spike did not resolve after the restart");
    analyzer.kill().unwrap();
    analyzer.wait().unwrap();
    assert_eq!(of(&seen, AnomalyType::LatencySpike, AnomalyState::Open).len(), 1, "{seen:#?}");
    assert_eq!(of(&seen, AnomalyType::LatencySpike, AnomalyState::Resolved).len(), 1, "{seen:#?}");
    assert_eq!(seen.len(), 2, "{seen:#?}");
    let held = seen[1].resolved_at.unwrap() - seen[0].detected_at;
    assert!(
        (50..=54).contains(&held.num_minutes()),
        "resolved {} windows after opening: {seen:#?}",
        held.num_minutes()
    );
}
