//! The two health conditions that need the rest of the pipeline, caused for real with the real
//! services in this process: the collector, the aggregator writing to a real InfluxDB, the
//! analyzer and the monitor, fed by a producer through `perf.raw.>`.
//!
//! - InfluxDB stopped: the aggregator's heartbeat reports its `influx_write` check failing and the
//!   monitor pages `PipelineInfluxWritesFailing` for that instance; InfluxDB back: resolved.
//! - A model missing from the price catalog: the collector marks its events unpriced, the
//!   aggregator counts them, the analyzer opens an `unpriced_model` anomaly, and the shipped rule
//!   `ModelAnomaly` of `deploy/alerts.toml` pages it with the model's name.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Running, Stack, config};
use modelperf_client::{EventBuilder, Publisher};
use modelperf_monitor::health::INFLUX_WRITES;
use modelperf_schema::messages::{Alert, AlertState};
use modelperf_testkit::{Influx, eventually, project_root};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const PARTITIONS: u32 = 2;

/// A service of the pipeline running in this process.
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

    async fn stop(self) {
        let _ = self.stop.send(());
        self.handle.await.unwrap().unwrap();
    }
}

async fn collector(nats: &str) -> Service {
    let mut c = modelperf_collector::Config::default();
    c.nats.url = nats.to_owned();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.bus.partitions = PARTITIONS;
    c.collector.privacy_key = Some("test-privacy-key".into());
    c.collector.prices_file = project_root().join("deploy/prices.toml");
    let prometheus = modelperf_telemetry::init("monitor-test").unwrap().prometheus;
    let collector = modelperf_collector::collector(&c).unwrap();
    let app = modelperf_collector::App::build(c, collector, prometheus).await.unwrap();
    Service::spawn(|stopped| async move {
        app.run_until_stopped(async move {
            let _ = stopped.await;
        })
        .await
        .map(drop)
    })
}

async fn aggregator(nats: &str, influx: &str, db: &str) -> Service {
    let mut c = modelperf_aggregator::Config::default();
    c.nats.url = nats.to_owned();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.bus.partitions = PARTITIONS;
    c.bus.lease_ttl = Duration::from_secs(2);
    c.bus.checkpoint_interval = Duration::from_millis(200);
    c.aggregator.windows = vec!["2s".parse().unwrap()];
    c.aggregator.allowed_lateness = Duration::from_secs(1);
    c.influx.url = influx.to_owned();
    c.influx.database = db.to_owned();
    c.influx.max_retries = 1;
    let rp = modelperf_influx::RetentionPolicy { duration: Duration::from_secs(3_600), default: false };
    c.influx.retention_policies.insert("2s".into(), rp);
    let prometheus = modelperf_telemetry::init("monitor-test").unwrap().prometheus;
    let app = modelperf_aggregator::App::build(c, prometheus).await.unwrap();
    Service::spawn(|stopped| {
        app.run_until_stopped(async move {
            let _ = stopped.await;
        })
    })
}

async fn analyzer(nats: &str) -> Service {
    let mut c = modelperf_analyzer::Config::default();
    c.nats.url = nats.to_owned();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.bus.lease_ttl = Duration::from_secs(2);
    c.analyzer.windows = vec!["2s".parse().unwrap()];
    let prometheus = modelperf_telemetry::init("monitor-test").unwrap().prometheus;
    let app = modelperf_analyzer::App::build(c, prometheus).await.unwrap();
    Service::spawn(|stopped| {
        app.run_until_stopped(async move {
            let _ = stopped.await;
        })
    })
}

/// A producer publishing `per_second` completed tasks of each model through `perf.raw.>` until
/// stopped.
struct Producer {
    running: Arc<AtomicBool>,
    task: JoinHandle<u64>,
}

impl Producer {
    async fn start(stack: &Stack, models: &[&str], per_second: u32) -> Producer {
        let publisher = Publisher::new(stack.nats.client().await.unwrap(), "test.producer");
        let running = Arc::new(AtomicBool::new(true));
        let flag = running.clone();
        let models: Vec<String> = models.iter().map(|m| (*m).to_owned()).collect();
        let task = tokio::spawn(async move {
            let mut sent = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while flag.load(Ordering::SeqCst) {
                tick.tick().await;
                for model in &models {
                    for i in 0..per_second / 10 {
                        let event = EventBuilder::task_completed(200.0 + f64::from(i), true)
                            .model(model.as_str())
                            .task_type("code_edit")
                            .task_id(format!("task-{sent}"))
                            .source("test.producer")
                            .tokens(1_000, 200)
                            .build()
                            .unwrap();
                        publisher.publish(&event).await.unwrap();
                        sent += 1;
                    }
                }
            }
            sent
        });
        Producer { running, task }
    }

    async fn stop(self) -> u64 {
        self.running.store(false, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

fn of<'a>(all: &'a [Alert], rule: &str, labels: &[(&str, &str)]) -> Vec<&'a Alert> {
    all.iter()
        .filter(|a| a.labels.get("alertname").is_some_and(|n| n == rule))
        .filter(|a| labels.iter().all(|(k, v)| a.labels.get(*k).is_some_and(|have| have == v)))
        .collect()
}

async fn wait_for(stack: &Stack, rule: &str, labels: &[(&str, &str)], state: AlertState, what: &str) -> Alert {
    eventually(Duration::from_secs(90), || async {
        of(&stack.transitions().await, rule, labels).into_iter().rev().find(|a| a.state == state).cloned()
    })
    .await
    .unwrap_or_else(|e| panic!("{rule} {labels:?} never became {state:?} ({what}): {e}"))
}

fn monitor_config(nats: &str) -> modelperf_monitor::Config {
    let mut c = config(nats);
    c.monitor.health.for_ = Duration::from_secs(1);
    c.monitor.health.keep_firing_for = Duration::from_secs(1);
    c.monitor.health.heartbeat_timeout = Duration::from_secs(10);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influxdb_stopped_pages_the_aggregator_until_it_returns() {
    let stack = Stack::start().await;
    let bus = modelperf_bus::BusConfig { partitions: PARTITIONS, ..Default::default() };
    modelperf_bus::Topology::contract(&bus, 1).ensure(&stack.js).await.unwrap();
    let mut influx = Influx::start().await.unwrap();
    let db = influx.fresh_database().await.unwrap();
    let collector = collector(stack.nats.url()).await;
    let aggregator = aggregator(stack.nats.url(), influx.url(), &db).await;
    let monitor = Running::start(monitor_config(stack.nats.url()), "").await;
    let producer = Producer::start(&stack, &["openai/gpt-4o"], 50).await;

    // Windows reach InfluxDB while it runs, and nothing pages.
    eventually(Duration::from_secs(60), || async {
        let r = influx.query("SELECT count(\"count\") FROM \"2s\".\"model_perf\"", Some(&db)).await.ok()?;
        r.pointer("/results/0/series/0/values/0/1").and_then(serde_json::Value::as_u64).filter(|n| *n > 0)
    })
    .await
    .expect("the aggregator wrote no window to InfluxDB");
    assert!(of(&stack.transitions().await, INFLUX_WRITES, &[]).is_empty(), "paged while InfluxDB was up");

    influx.stop();
    let firing =
        wait_for(&stack, INFLUX_WRITES, &[("service", "aggregator")], AlertState::Firing, "InfluxDB stopped").await;
    assert!(firing.labels.contains_key("instance"), "{:?}", firing.labels);
    assert!(firing.annotations["summary"].contains("aggregator"), "{:?}", firing.annotations);

    influx.restart().await.unwrap();
    let instance = [("service", "aggregator"), ("instance", firing.labels["instance"].as_str())];
    wait_for(&stack, INFLUX_WRITES, &instance, AlertState::Resolved, "InfluxDB is back").await;
    // One page for the outage, one resolution: never a second firing while it lasted.
    let all = stack.transitions().await;
    let states: Vec<AlertState> = of(&all, INFLUX_WRITES, &instance).iter().map(|a| a.state).collect();
    assert_eq!(states, [AlertState::Firing, AlertState::Resolved], "{all:#?}");
    // Every lifecycle transition is in the stream: pending before firing, on its own subject.
    let journal = stack.journal().await;
    let states: Vec<AlertState> = of(&journal, INFLUX_WRITES, &instance).iter().map(|a| a.state).collect();
    assert_eq!(states, [AlertState::Pending, AlertState::Firing, AlertState::Resolved], "{journal:#?}");
    let subjects: Vec<String> = modelperf_testkit::read_stream(&stack.js, "PERF_ALERTS", None)
        .await
        .unwrap()
        .iter()
        .map(|m| m.subject.to_string())
        .collect();
    assert!(subjects.iter().any(|s| s == "perf.alerts.pending"), "{subjects:?}");

    assert!(producer.stop().await > 0);
    monitor.stop().await;
    aggregator.stop().await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_missing_from_the_price_catalog_is_paged_by_name() {
    let stack = Stack::start().await;
    let bus = modelperf_bus::BusConfig { partitions: PARTITIONS, ..Default::default() };
    modelperf_bus::Topology::contract(&bus, 1).ensure(&stack.js).await.unwrap();
    let influx = Influx::start().await.unwrap();
    let db = influx.fresh_database().await.unwrap();
    let collector = collector(stack.nats.url()).await;
    let aggregator = aggregator(stack.nats.url(), influx.url(), &db).await;
    let analyzer = analyzer(stack.nats.url()).await;
    let rules = std::fs::read_to_string(project_root().join("deploy/alerts.toml")).unwrap();
    let monitor = Running::start(monitor_config(stack.nats.url()), &rules).await;
    // A priced model beside one the catalog does not know.
    let producer = Producer::start(&stack, &["openai/gpt-4o", "acme/brand-new-model"], 30).await;

    let alert = wait_for(
        &stack,
        "ModelAnomaly",
        &[("model", "brand-new-model"), ("anomaly_type", "unpriced_model")],
        AlertState::Firing,
        "events of an unpriced model",
    )
    .await;
    assert_eq!(alert.labels.get("provider").map(String::as_str), Some("acme"), "{:?}", alert.labels);
    assert!(alert.annotations["summary"].contains("brand-new-model"), "{:?}", alert.annotations);
    let all = stack.transitions().await;
    assert!(
        of(&all, "ModelAnomaly", &[("model", "gpt-4o"), ("anomaly_type", "unpriced_model")]).is_empty(),
        "the priced model was paged as unpriced: {all:#?}"
    );

    assert!(producer.stop().await > 0);
    monitor.stop().await;
    analyzer.stop().await;
    aggregator.stop().await;
    collector.stop().await;
}
