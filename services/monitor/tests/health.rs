//! The built-in pipeline health rules, each fired by causing its condition for real: a
//! collector that is not running (its consumer lags and its oldest message ages), a collector
//! replica that takes messages and never acknowledges them (at `max_ack_pending`), bad input
//! dead-lettered by the monitor itself (DLQ growth by code), and a required analyzer that is
//! not running, then started and stopped (instances below the minimum, a lease without a holder);
//! and two replicas scaled down to one (no page), then to none (paged).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use common::{Running, Stack, config};
use futures::StreamExt;
use modelperf_bus::{BusConfig, Service, Topology};
use modelperf_monitor::Config;
use modelperf_monitor::health::{
    AT_MAX_ACK_PENDING, CONSUMER_LAG, CONSUMER_STALLED, DLQ_GROWTH, INSTANCES_LOW, UNOWNED,
};
use modelperf_schema::messages::{Alert, AlertState};
use modelperf_testkit::eventually;
use tokio::sync::oneshot;

/// No rules file rules: only the built-ins.
const NO_RULES: &str = "";

fn health_config(nats: &str) -> Config {
    let mut c = config(nats);
    let h = &mut c.monitor.health;
    h.for_ = Duration::from_secs(1);
    h.keep_firing_for = Duration::from_secs(1);
    h.lag_pending = 10;
    h.lag_age = Duration::from_secs(2);
    h.dlq_growth = 3;
    h.dlq_window = Duration::from_secs(6);
    h.heartbeat_timeout = Duration::from_secs(6);
    c
}

/// Transitions of `rule` whose labels include `labels`.
fn of<'a>(all: &'a [Alert], rule: &str, labels: &[(&str, &str)]) -> Vec<&'a Alert> {
    all.iter()
        .filter(|a| {
            a.labels["alertname"] == rule
                && labels.iter().all(|(k, v)| a.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

async fn wait_for(stack: &Stack, rule: &str, labels: &[(&str, &str)], state: AlertState, what: &str) -> Alert {
    eventually(Duration::from_secs(40), || async {
        of(&stack.transitions().await, rule, labels).into_iter().rev().find(|a| a.state == state).cloned()
    })
    .await
    .unwrap_or_else(|_| panic!("{rule} {labels:?} never {state:?}: {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_then_stalled_collector_lags_ages_and_sits_at_max_ack_pending() {
    let stack = Stack::start().await;
    // The collector's consumer as a collector with MODELPERF_BUS__MAX_ACK_PENDING=5 declares it.
    let raw = stack.js.get_stream("PERF_RAW").await.unwrap();
    raw.delete_consumer("collector").await.unwrap();
    let bus = BusConfig { max_ack_pending: 5, ..BusConfig::default() };
    Topology::contract(&bus, 1).for_service(Service::Collector).ensure(&stack.js).await.unwrap();
    let monitor = Running::start(health_config(stack.nats.url()), NO_RULES).await;

    // Producers publish; no collector runs.
    for i in 0..30 {
        let body = format!(
            r#"{{"v":1,"id":"e{i}","kind":"custom","ts":"2026-01-01T00:00:00Z","source":"t","data":{{"metrics":{{}}}}}}"#
        );
        stack.js.publish("perf.raw.custom", body.into()).await.unwrap().await.unwrap();
    }
    let labels = [("stream", "PERF_RAW"), ("consumer", "collector")];
    let lag = wait_for(&stack, CONSUMER_LAG, &labels, AlertState::Firing, "30 undelivered > 10").await;
    assert_eq!(lag.labels["severity"], "warning");
    assert!(lag.annotations["summary"].contains("30 undelivered"), "{:?}", lag.annotations);
    wait_for(&stack, CONSUMER_STALLED, &labels, AlertState::Firing, "the oldest message is older than 2 s").await;

    // A collector replica that takes what it may and never acknowledges.
    let mut consumer: PullConsumer = raw.get_consumer("collector").await.unwrap();
    let mut held = Vec::new();
    let mut batch = consumer.batch().max_messages(20).expires(Duration::from_secs(1)).messages().await.unwrap();
    while let Some(m) = batch.next().await {
        if let Ok(m) = m {
            held.push(m);
        }
    }
    assert_eq!(held.len(), 5, "the server stops at max_ack_pending");
    let at_max = wait_for(&stack, AT_MAX_ACK_PENDING, &labels, AlertState::Firing, "5 of 5 pending").await;
    assert_eq!(at_max.labels["severity"], "critical");

    // The collector recovers: everything is processed and acknowledged.
    for m in held.drain(..) {
        m.ack().await.unwrap();
    }
    while consumer.info().await.unwrap().num_pending > 0 {
        let mut batch = consumer.fetch().max_messages(100).messages().await.unwrap();
        while let Some(m) = batch.next().await {
            m.unwrap().double_ack().await.unwrap();
        }
    }
    for rule in [CONSUMER_LAG, CONSUMER_STALLED, AT_MAX_ACK_PENDING] {
        wait_for(&stack, rule, &labels, AlertState::Resolved, "the backlog is gone").await;
    }
    let all = stack.transitions().await;
    for rule in [CONSUMER_LAG, CONSUMER_STALLED, AT_MAX_ACK_PENDING] {
        let states: Vec<_> = of(&all, rule, &labels).iter().map(|a| a.state).collect();
        assert_eq!(states, [AlertState::Firing, AlertState::Resolved], "{rule}: one page, one resolution");
    }
    // Nothing else is unhealthy: every other consumer of the contract is idle.
    let others: Vec<_> = all.iter().filter(|a| a.labels.get("consumer").is_some_and(|c| c != "collector")).collect();
    assert!(others.is_empty(), "{others:#?}");
    monitor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_grows_the_dlq_and_pages_by_stage_and_code() {
    let stack = Stack::start().await;
    let monitor = Running::start(health_config(stack.nats.url()), NO_RULES).await;
    // Five windows that are not windows: the monitor dead-letters each once, code `schema`.
    for i in 0..5 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("garbage-{i}").as_str());
        stack.js.publish_with_headers("perf.metrics.1m", headers, "not a window".into()).await.unwrap().await.unwrap();
    }
    let labels = [("stage", "monitor"), ("code", "schema")];
    let fired = wait_for(&stack, DLQ_GROWTH, &labels, AlertState::Firing, "5 dead letters > 3").await;
    assert!(
        fired.annotations["summary"].starts_with("5 dead letters from monitor with code schema"),
        "{:?}",
        fired.annotations
    );
    let dlq = modelperf_testkit::read_stream(&stack.js, "PERF_DLQ", Some("perf.dlq.monitor")).await.unwrap();
    assert_eq!(dlq.len(), 5, "each bad window dead-lettered once");
    // No more growth: once the letters are older than the window, it resolves.
    wait_for(&stack, DLQ_GROWTH, &labels, AlertState::Resolved, "the window passes").await;
    monitor.stop().await;
}

struct Analyzer {
    stop: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_analyzer(nats: &str) -> Analyzer {
    let mut c = modelperf_analyzer::Config::default();
    c.nats.url = nats.to_owned();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.bus.lease_ttl = Duration::from_secs(2);
    let prometheus = modelperf_telemetry::init("monitor-test").unwrap().prometheus;
    let app = modelperf_analyzer::App::build(c, prometheus).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    Analyzer { stop, handle }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_service_down_pages_instances_low_and_its_lease_unowned() {
    let stack = Stack::start().await;
    let mut c = health_config(stack.nats.url());
    c.monitor.health.min_ready.insert("analyzer".into(), 1);
    let monitor = Running::start(c, NO_RULES).await;
    let service = [("service", "analyzer")];
    let lease = [("service", "analyzer"), ("lease", "analyzer")];

    // Required but not running.
    let low = wait_for(&stack, INSTANCES_LOW, &service, AlertState::Firing, "0 ready < 1").await;
    assert!(low.annotations["summary"].starts_with("analyzer has 0 ready instances"), "{:?}", low.annotations);
    wait_for(&stack, UNOWNED, &lease, AlertState::Firing, "nobody holds the lease analyzer").await;

    // Started: ready, and its lease is held.
    let analyzer = start_analyzer(stack.nats.url()).await;
    wait_for(&stack, INSTANCES_LOW, &service, AlertState::Resolved, "the analyzer's heartbeat says ready").await;
    wait_for(&stack, UNOWNED, &lease, AlertState::Resolved, "the analyzer holds its lease").await;

    // Stopped again: paged again.
    analyzer.stop.send(()).unwrap();
    analyzer.handle.await.unwrap().unwrap();
    eventually(Duration::from_secs(40), || async {
        let all = stack.transitions().await;
        (of(&all, INSTANCES_LOW, &service).len() == 3 && of(&all, UNOWNED, &lease).len() == 3).then_some(())
    })
    .await
    .expect("stopping the analyzer did not page again");
    // The monitor's own lease is held all along.
    let all = stack.transitions().await;
    assert!(of(&all, UNOWNED, &[("lease", "monitor")]).is_empty(), "{all:#?}");
    monitor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_down_to_the_minimum_does_not_page_and_below_it_does() {
    let stack = Stack::start().await;
    let mut c = health_config(stack.nats.url());
    c.monitor.health.min_ready.insert("analyzer".into(), 1);
    let service = [("service", "analyzer")];
    let (first, second) = (start_analyzer(stack.nats.url()).await, start_analyzer(stack.nats.url()).await);
    let monitor = Running::start(c, NO_RULES).await;
    // Both replicas heartbeat ready before one is scaled away.
    tokio::time::sleep(modelperf_telemetry::HEARTBEAT_INTERVAL * 2).await;
    first.stop.send(()).unwrap();
    first.handle.await.unwrap().unwrap();
    // Past the heartbeat timeout and the rule's `for`, one ready replica is still enough.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let all = stack.transitions().await;
    assert!(of(&all, INSTANCES_LOW, &service).is_empty(), "scaling 2 → 1 paged: {all:#?}");
    // Below the minimum it pages: the check above could have failed.
    second.stop.send(()).unwrap();
    second.handle.await.unwrap().unwrap();
    wait_for(&stack, INSTANCES_LOW, &service, AlertState::Firing, "0 ready < 1").await;
    monitor.stop().await;
}
