//! The aggregator against real NATS and InfluxDB servers: exact windows and roll-ups from known
//! events, revisions and `too_late`, and two replicas sharing the partitions.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use modelperf_aggregator::windows::window_start;
use modelperf_aggregator::{App, Config};
use modelperf_schema::messages::WindowMetrics;
use modelperf_testkit::{Influx, NatsServer, eventually, read_stream};
use tokio::sync::oneshot;

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    http: std::net::SocketAddr,
    instance: String,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

async fn start(config: Config) -> Running {
    let prometheus = modelperf_telemetry::init("aggregator-test").unwrap().prometheus;
    let app = App::build(config, prometheus).await.unwrap();
    let (http, instance) = (app.http_addr(), app.instance().to_owned());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    Running { stop, task, http, instance }
}

fn hours_ago(h: i64) -> DateTime<Utc> {
    window_start(Utc::now() - chrono::Duration::hours(h), chrono::Duration::hours(1))
}

async fn wait_for(influx: &Influx, db: &str, expected: &Expected, windows: &[&str], revisions: bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    'poll: loop {
        for w in windows {
            if let Some(m) = mismatch(expected, w, &rows(influx, db, w, "model_perf").await, revisions) {
                assert!(std::time::Instant::now() < deadline, "InfluxDB never matched: {m}");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue 'poll;
            }
        }
        return;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_events_give_exact_windows_roll_ups_and_metrics() {
    let nats = NatsServer::start().await.unwrap();
    let influx = Influx::start().await.unwrap();
    let db = format!("agg_{}", uuid_suffix());
    let config = config(nats.url(), influx.url(), &db, 2);
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    // A backlog three hours old: the owners close its windows by event time, none is late.
    ensure(&js, &config).await;
    let events = workload(hours_ago(3), chrono::Duration::hours(1), 3_000);
    publish(&js, &events, 2).await;
    let app = start(config).await;
    let expected = expected(&events, &[("1m", 60), ("1h", 3_600)]);
    wait_for(&influx, &db, &expected, &["1m", "1h"], false).await;

    // The sketch of every window is stored beside its fields and decodes to the same p95.
    let sketches = rows(&influx, &db, "1h", "model_perf_sketch").await;
    assert_eq!(sketches.len(), 6);
    for s in &sketches {
        use base64::Engine as _;
        let b64 = s.fields["latency"].as_str().unwrap();
        let sketch =
            modelperf_sketch::Sketch::from_bytes(&base64::engine::general_purpose::STANDARD.decode(b64).unwrap())
                .unwrap();
        let x = &expected["1h"][&s.time][&s.dims()];
        assert_eq!(sketch.count(), x.weighted, "{:?}", s.dims());
    }

    // One metrics message per window and series, each decodable, with the same numbers.
    let n_series: usize = expected.values().flat_map(|w| w.values()).map(BTreeMap::len).sum();
    let msgs = eventually(Duration::from_secs(10), || async {
        let m = read_stream(&js, "PERF_METRICS", None).await.ok()?;
        (m.len() >= n_series).then_some(m)
    })
    .await
    .unwrap();
    assert_eq!(msgs.len(), n_series, "exactly one message per window and series");
    for m in &msgs {
        let w: WindowMetrics = rmp_serde::from_slice(&m.payload).unwrap();
        let x = &expected[&w.window][&w.start][&w.dims];
        assert_eq!((w.count, w.success, w.failure, w.revision), (x.count, x.success, x.failure, 0));
        assert_eq!(
            w.end - w.start,
            if w.window == "1h" { chrono::Duration::hours(1) } else { chrono::Duration::minutes(1) }
        );
        let id = m.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).unwrap().as_str().to_owned();
        assert!(id.starts_with(&format!("{}:{}:", w.window, w.start.timestamp())) && id.ends_with(":0"), "{id}");
    }

    // Ready, and the heartbeat names the leases.
    let ready = modelperf_telemetry::http::get(format!("http://{}/readyz", app.http)).await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_events_revise_their_windows_and_older_ones_are_too_late() {
    let nats = NatsServer::start().await.unwrap();
    let influx = Influx::start().await.unwrap();
    let db = format!("agg_{}", uuid_suffix());
    let config = config(nats.url(), influx.url(), &db, 2);
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    ensure(&js, &config).await;
    // Ten minutes ending twenty minutes ago, then the partitions are idle and close them.
    let from = window_start(Utc::now() - chrono::Duration::minutes(30), chrono::Duration::minutes(1));
    let events = workload(from, chrono::Duration::minutes(10), 600);
    publish(&js, &events, 2).await;
    let app = start(config).await;
    let mut expected = expected(&events, &[("1m", 60)]);
    wait_for(&influx, &db, &expected, &["1m"], false).await;

    // One event late for the first minute: the window is rewritten with revision 1.
    let mut late = events[0].clone();
    late.id = Some("late-1".into());
    late.ts = from + chrono::Duration::seconds(30);
    publish(&js, std::slice::from_ref(&late), 2).await;
    let late_expected = common::expected(std::slice::from_ref(&late), &[("1m", 60)]);
    let (start, dims) = {
        let (start, series) = late_expected["1m"].iter().next().unwrap();
        (*start, series.keys().next().unwrap().clone())
    };
    let x = expected.get_mut("1m").unwrap().get_mut(&start).unwrap().get_mut(&dims).unwrap();
    x.count += 1;
    x.weighted += 1.0;
    x.cost += late.cost.as_ref().unwrap().usd.unwrap();
    let modelperf_schema::Data::TaskCompleted(d) = &late.data else { unreachable!() };
    if d.success {
        x.success += 1;
        x.success_weighted += 1.0;
    } else {
        x.failure += 1
    }
    wait_for(&influx, &db, &expected, &["1m"], true).await;
    let row =
        rows(&influx, &db, "1m", "model_perf").await.into_iter().find(|r| r.time == start && r.dims() == dims).unwrap();
    assert_eq!(row.f("revision"), Some(1.0));

    // Three hours old: beyond max_revision_age, dead-lettered with too_late, counted nowhere.
    let mut old = events[1].clone();
    old.id = Some("old-1".into());
    old.ts = Utc::now() - chrono::Duration::hours(3);
    publish(&js, std::slice::from_ref(&old), 2).await;
    let dlq = eventually(Duration::from_secs(20), || async {
        let m = read_stream(&js, "PERF_DLQ", Some("perf.dlq.aggregator")).await.ok()?;
        (!m.is_empty()).then_some(m)
    })
    .await
    .unwrap();
    assert_eq!(dlq.len(), 1);
    let headers = dlq[0].headers.as_ref().unwrap();
    assert_eq!(headers.get(modelperf_schema::dlq::ERROR).unwrap().as_str(), "too_late");
    let back: modelperf_schema::Event = rmp_serde::from_slice(&dlq[0].payload).unwrap();
    assert_eq!(back.id.as_deref(), Some("old-1"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_partitions_and_one_takes_over_from_the_other() {
    let nats = NatsServer::start().await.unwrap();
    let influx = Influx::start().await.unwrap();
    let db = format!("agg_{}", uuid_suffix());
    let partitions = 4;
    let mut config = config(nats.url(), influx.url(), &db, partitions);
    config.aggregator.windows = vec!["2s".parse().unwrap(), "10s".parse().unwrap()];
    config.aggregator.allowed_lateness = Duration::from_secs(1);
    for w in ["2s", "10s"] {
        let rp = modelperf_influx::RetentionPolicy { duration: Duration::from_secs(3_600), default: false };
        config.influx.retention_policies.insert(w.into(), rp);
    }
    let a = start(config.clone()).await;
    let b = start(config).await;
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let kv = js.get_key_value("modelperf_leases").await.unwrap();
    let holders = |kv: async_nats::jetstream::kv::Store| async move {
        let mut h = BTreeMap::new();
        for p in 0..partitions {
            if let Ok(Some(v)) = kv.get(format!("aggregator.p{p}")).await {
                h.insert(p, String::from_utf8_lossy(&v).into_owned());
            }
        }
        h
    };
    // Each replica settles on half of the partitions.
    let split = eventually(Duration::from_secs(30), || {
        let kv = kv.clone();
        let (ia, ib) = (a.instance.clone(), b.instance.clone());
        async move {
            let h = holders(kv).await;
            let na = h.values().filter(|v| **v == ia).count();
            let nb = h.values().filter(|v| **v == ib).count();
            (na == 2 && nb == 2).then_some(h)
        }
    })
    .await
    .expect("the replicas never split the partitions 2 and 2");

    let events = live(2_000);
    publish(&js, &events, partitions).await;
    let mut expected = expected(&events, &[("2s", 2), ("10s", 10)]);
    wait_for(&influx, &db, &expected, &["2s", "10s"], false).await;
    // Each replica processed the events of its partitions: at least 30 % each.
    let mut per_instance: BTreeMap<String, usize> = BTreeMap::new();
    for e in &events {
        let p = modelperf_bus::partition_of(e.task_id.as_deref().unwrap(), partitions);
        *per_instance.entry(split[&p].clone()).or_default() += 1;
    }
    for (instance, n) in &per_instance {
        assert!(*n * 10 >= events.len() * 3, "{instance} processed {n} of {}", events.len());
    }

    // B dies without a word: its leases expire and A takes every partition (and the finaliser).
    b.task.abort();
    let _ = b.task.await;
    eventually(Duration::from_secs(30), || {
        let kv = kv.clone();
        let ia = a.instance.clone();
        async move {
            let h = holders(kv).await;
            (h.len() == partitions as usize && h.values().all(|v| *v == ia)).then_some(())
        }
    })
    .await
    .expect("A never took over B's partitions");
    let more = live(1_000);
    publish(&js, &more, partitions).await;
    for (w, starts) in common::expected(&more, &[("2s", 2), ("10s", 10)]) {
        expected.get_mut(&w).unwrap().extend(starts);
    }
    wait_for(&influx, &db, &expected, &["2s", "10s"], false).await;
    a.stop().await;
}

/// `n` events stamped now, over the next half second.
fn live(n: usize) -> Vec<modelperf_schema::Event> {
    workload(Utc::now(), chrono::Duration::milliseconds(500), n)
}

async fn ensure(js: &async_nats::jetstream::Context, config: &Config) {
    modelperf_bus::Topology::contract(&config.bus, 1).ensure(js).await.unwrap();
}

fn uuid_suffix() -> String {
    format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaggregation_rewrites_closed_windows_with_new_prices_and_a_new_revision() {
    let nats = NatsServer::start().await.unwrap();
    let influx = Influx::start().await.unwrap();
    let db = format!("agg_{}", uuid_suffix());
    let config = config(nats.url(), influx.url(), &db, 2);
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    ensure(&js, &config).await;
    let hour = hours_ago(3);
    let events = workload(hour, chrono::Duration::hours(1), 1_200);
    publish(&js, &events, 2).await;
    let app = start(config.clone()).await;
    let windows = [("1m", 60), ("1h", 3_600)];
    wait_for(&influx, &db, &expected(&events, &windows), &["1m", "1h"], false).await;

    // The catalog prices the same tokens differently from what the events carry.
    let catalog =
        modelperf_pricing::Catalog::load(&modelperf_testkit::project_root().join("deploy/prices.toml")).unwrap();
    let repriced: Vec<_> = events
        .iter()
        .cloned()
        .map(|mut e| {
            catalog.price_event(&mut e);
            e
        })
        .collect();
    let want = expected(&repriced, &windows);
    // Closed for good once the finaliser's checkpointed close point is max_revision_age past it.
    let state = js.get_key_value("modelperf_state").await.unwrap();
    eventually(Duration::from_secs(30), || {
        let state = state.clone();
        async move {
            let cp: modelperf_bus::Checkpoint =
                rmp_serde::from_slice(&state.get("aggregator.final").await.ok()??).ok()?;
            let marks: modelperf_aggregator::finaliser::FinalMarks = rmp_serde::from_slice(&cp.state).ok()?;
            (marks.final_through.get("1h")? >= &(hour + chrono::Duration::hours(2))).then_some(())
        }
    })
    .await
    .unwrap();
    let summary =
        modelperf_aggregator::reaggregate::reaggregate(&js, &config, hour, Some(&catalog), |_, _| {}).await.unwrap();
    assert_eq!(summary.events_used, events.len() as u64, "{summary}");
    assert_eq!(summary.rewritten["1h"], (1, 6), "{summary}");
    assert_eq!(summary.stale_series, 0);
    assert!((summary.cost_before - summary.cost_after).abs() > 1e-9, "{summary}");
    for w in ["1m", "1h"] {
        let rows = rows(&influx, &db, w, "model_perf").await;
        assert_eq!(mismatch(&want, w, &rows, true), None);
        assert!(rows.iter().all(|r| r.f("revision") == Some(1.0)), "every window rewritten with revision 1");
    }
    // Once more: revision 2, same numbers.
    modelperf_aggregator::reaggregate::reaggregate(&js, &config, hour, Some(&catalog), |_, _| {}).await.unwrap();
    let rows = rows(&influx, &db, "1h", "model_perf").await;
    assert_eq!(mismatch(&want, "1h", &rows, true), None);
    assert!(rows.iter().all(|r| r.f("revision") == Some(2.0)));
    app.stop().await;
}

/// A tick that closes more partials than the context lets publish acks be in flight (here 100,
/// against about a thousand series-windows per partition closing at once) must go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_more_partials_than_the_ack_bound_does_not_stall() {
    let nats = NatsServer::start().await.unwrap();
    let influx = Influx::start().await.unwrap();
    let db = format!("agg_{}", uuid_suffix());
    let mut config = config(nats.url(), influx.url(), &db, 2);
    config.bus.max_ack_pending = 100;
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    ensure(&js, &config).await;
    // Two minutes, 300 tenants: both windows close in the tick that catches up.
    let from = window_start(Utc::now() - chrono::Duration::minutes(30), chrono::Duration::minutes(1));
    let mut events = workload(from, chrono::Duration::minutes(2), 3_000);
    for (i, e) in events.iter_mut().enumerate() {
        e.tenant = Some(format!("tenant-{}", i % 300));
    }
    publish(&js, &events, 2).await;
    let app = start(config).await;
    wait_for(&influx, &db, &expected(&events, &[("1m", 60)]), &["1m"], false).await;
    app.stop().await;
}
