//! The aggregator process under faults, while events keep arriving: `kill -9` mid-window (owners
//! and finaliser die together), InfluxDB down for a minute, and a backlog after an outage. In
//! every case InfluxDB must end up with exactly the windows the events make — none lost, none
//! counted twice.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, Context};
use chrono::Utc;
use common::*;
use modelperf_schema::Event;
use modelperf_testkit::{Influx, NatsServer, read_stream};

const PARTITIONS: u32 = 2;
const WINDOWS: [(&str, i64); 2] = [("2s", 2), ("10s", 10)];

/// The aggregator process; killed on drop so a failing test leaves nothing behind.
struct Proc(Child);

impl Proc {
    fn kill9(&mut self) {
        self.0.kill().unwrap(); // SIGKILL
        self.0.wait().unwrap();
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Short windows (2 s and 10 s, each with a retention policy) so a test sees many close.
fn config_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("aggregator.toml");
    std::fs::write(
        &path,
        "[aggregator]\nwindows = [\"2s\", \"10s\"]\nallowed_lateness = \"1s\"\n\
         [influx.retention_policies.2s]\nduration = \"1h\"\n[influx.retention_policies.10s]\nduration = \"1h\"\n",
    )
    .unwrap();
    path
}

fn aggregator(nats: &str, influx: &str, db: &str, config: &std::path::Path) -> Proc {
    aggregator_on(nats, influx, db, config, 0)
}

fn aggregator_on(nats: &str, influx: &str, db: &str, config: &std::path::Path, http_port: u16) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_modelperf-aggregator"))
        .arg("--config")
        .arg(config)
        .env("MODELPERF_NATS__URL", nats)
        .env("MODELPERF_INFLUX__URL", influx)
        .env("MODELPERF_INFLUX__DATABASE", db)
        .env("MODELPERF_INFLUX__MAX_RETRIES", "1")
        .env("MODELPERF_HTTP__LISTEN", format!("127.0.0.1:{http_port}"))
        .env("MODELPERF_BUS__PARTITIONS", PARTITIONS.to_string())
        .env("MODELPERF_BUS__ACK_WAIT", "5s")
        .env("MODELPERF_BUS__LEASE_TTL", "1s")
        .env("MODELPERF_BUS__CHECKPOINT_INTERVAL", "200ms")
        .env("MODELPERF_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Proc(child)
}

/// Publishes `rate` live events per second for `secs` seconds and returns them.
async fn produce(js: Context, rate: usize, secs: u64) -> Vec<Event> {
    let mut all = Vec::new();
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while start.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        let batch = workload(Utc::now(), chrono::Duration::milliseconds(100), rate / 10);
        publish(&js, &batch, PARTITIONS).await;
        all.extend(batch);
    }
    all
}

async fn setup() -> (NatsServer, Influx, Context, String, tempfile::TempDir) {
    let nats = NatsServer::start().await.unwrap();
    let influx = Influx::start().await.unwrap();
    let js = jetstream::new(nats.client().await.unwrap());
    let bus = modelperf_bus::BusConfig { partitions: PARTITIONS, ..Default::default() };
    modelperf_bus::Topology::contract(&bus, 1).ensure(&js).await.unwrap();
    let db = format!("crash_{}", Utc::now().timestamp_nanos_opt().unwrap());
    (nats, influx, js, db, tempfile::tempdir().unwrap())
}

/// Waits until InfluxDB holds exactly the windows of `events` (revisions allowed when
/// `revisions`), failing with the last difference.
async fn converge(influx: &Influx, db: &str, events: &[Event], revisions: bool) {
    let expected = expected(events, &WINDOWS);
    let deadline = Instant::now() + Duration::from_secs(120);
    'poll: loop {
        for (w, _) in WINDOWS {
            if let Some(m) = mismatch(&expected, w, &rows(influx, db, w, "model_perf").await, revisions) {
                assert!(Instant::now() < deadline, "InfluxDB never matched: {m}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue 'poll;
            }
        }
        return;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_random_moments_mid_window_the_totals_are_exact() {
    let (nats, influx, js, db, dir) = setup().await;
    let config = config_file(dir.path());
    let mut proc = aggregator(nats.url(), influx.url(), &db, &config);
    let producer = tokio::spawn(produce(js.clone(), 500, 20));
    // Five kills 1.2–3.4 s apart, each after the restarted process has taken the leases over
    // (1 s TTL); a different pattern every run (printed for a rerun), so they land at different
    // points of the apply → decide → checkpoint → publish → ack cycle.
    let seed = Utc::now().timestamp_subsec_nanos() as u64;
    let mut delays = Vec::new();
    for i in 0..5u64 {
        let jitter =
            (seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i * 1_442_695_040_888_963_407) >> 33) % 2_200;
        delays.push(1_200 + jitter);
    }
    eprintln!("kill -9 after {delays:?} ms");
    for d in delays {
        tokio::time::sleep(Duration::from_millis(d)).await;
        proc.kill9();
        proc = aggregator(nats.url(), influx.url(), &db, &config);
    }
    let events = producer.await.unwrap();
    converge(&influx, &db, &events, true).await;
    // Nothing was judged too late.
    assert!(read_stream(&js, "PERF_DLQ", None).await.unwrap().is_empty());
    drop(proc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influxdb_down_for_a_minute_loses_nothing_and_memory_stays_flat() {
    let (nats, mut influx, js, db, dir) = setup().await;
    let config = config_file(dir.path());
    let port = modelperf_testkit::free_port();
    let proc = aggregator_on(nats.url(), influx.url(), &db, &config, port);
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let producer = tokio::spawn(produce(js.clone(), 500, 80));
    tokio::time::sleep(Duration::from_secs(8)).await;
    let before = proc.rss_kib();
    influx.stop();
    let stopped = Instant::now();
    let mut peak = before;
    let mut said_why = None;
    while stopped.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(proc.rss_kib());
        if let Ok(r) = modelperf_telemetry::http::get(&readyz).await
            && r.status() == 503
        {
            said_why = Some(r.text().await.unwrap());
        }
    }
    let said_why = said_why.expect("/readyz never reported the outage");
    assert!(said_why.contains("influx"), "{said_why}");
    influx.restart().await.unwrap();
    let events = producer.await.unwrap();
    converge(&influx, &db, &events, true).await;
    let ready = modelperf_telemetry::http::get(&readyz).await.unwrap();
    assert_eq!(ready.status(), 200, "ready again once InfluxDB is back: {}", ready.text().await.unwrap());
    eprintln!("resident memory: {before} KiB before the outage, peak {peak} KiB during it");
    // The finaliser stops pulling partials while it cannot write: memory does not follow the
    // backlog (30 000 events, about 1 000 partials). A generous bound, not a timing.
    assert!(peak < before + 32 * 1024, "resident memory grew from {before} KiB to {peak} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_after_an_outage_is_exact_and_nothing_is_late() {
    let (nats, influx, js, db, dir) = setup().await;
    let config = config_file(dir.path());
    // Running, then stopped: its partitions' close points are set by the clock.
    let mut proc = aggregator(nats.url(), influx.url(), &db, &config);
    let first = produce(js.clone(), 200, 3).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    proc.kill9();
    // Thirty seconds of events (fifteen 2 s windows, three 10 s windows) while it is down.
    let backlog = produce(js.clone(), 500, 30).await;
    let _proc = aggregator(nats.url(), influx.url(), &db, &config);
    let mut all = first;
    all.extend(backlog);
    // Caught up by event time: exact, and no window needed a revision.
    converge(&influx, &db, &all, false).await;
    assert!(read_stream(&js, "PERF_DLQ", None).await.unwrap().is_empty());
}
