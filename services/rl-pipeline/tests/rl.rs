//! The rl-pipeline against a real NATS server: every complete task in exactly one sample across
//! all batches — also after `kill -9` under load — and a graceful stop flushing a partial batch.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream::{self, Context};
use chrono::Utc;
use modelperf_client::EventBuilder;
use modelperf_rl_pipeline::{App, Config};
use modelperf_schema::messages::Batch;
use modelperf_schema::{Cost, Event};
use modelperf_testkit::{NatsServer, eventually, read_stream};
use tokio::sync::oneshot;

const PARTITIONS: u32 = 4;

/// Task `i` of run `tag`: a routing decision, a completion and a judgment (4 events with the
/// start), in that order.
fn task(tag: &str, i: usize) -> Vec<Event> {
    let t = format!("{tag}-task-{i}");
    let ts = Utc::now();
    let task_type = if i.is_multiple_of(2) { "code_edit" } else { "summarize" };
    macro_rules! base {
        ($b:expr, $part:expr) => {
            $b.id(format!("{t}-{}", $part)).ts(ts).source("test").task_id(&t).task_type(task_type)
        };
    }
    let route = base!(
        EventBuilder::routing_decision("ucb", "coder", "openai/gpt-4o", 1.5)
            .candidate("coder", "openai/gpt-4o", 0.7, 0.6)
            .candidate("coder", "anthropic/claude-sonnet-4", 0.6, 0.4)
            .probability(0.6),
        "r"
    )
    .build()
    .unwrap();
    let started = base!(EventBuilder::task_started().queue_ms(3.0), "s").build().unwrap();
    let mut done = base!(EventBuilder::task_completed(500.0 + i as f64, !i.is_multiple_of(5)), "c")
        .model("openai/gpt-4o")
        .build()
        .unwrap();
    done.cost = Some(Cost::priced(0.001, "test"));
    let judged = base!(EventBuilder::judgment("openai/gpt-4o", "openai/gpt-4o-mini", (i % 10) as f64 / 10.0), "j")
        .build()
        .unwrap();
    vec![route, started, done, judged]
}

async fn publish(js: &Context, events: &[Event]) {
    let mut acks = Vec::new();
    for e in events {
        let p = modelperf_bus::partition_of(e.task_id.as_deref().unwrap(), PARTITIONS);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", e.id.as_deref().unwrap());
        let body = modelperf_schema::to_msgpack(e).unwrap();
        acks.push(
            js.publish_with_headers(format!("perf.events.{}.{p}", e.kind().as_str()), headers, body.into())
                .await
                .unwrap(),
        );
    }
    for a in acks {
        a.await.unwrap();
    }
}

fn config(url: &str) -> Config {
    let mut c = Config::default();
    c.nats.url = url.to_owned();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.bus.partitions = PARTITIONS;
    c.bus.lease_ttl = Duration::from_secs(1);
    c.bus.checkpoint_interval = Duration::from_millis(200);
    c.rl.join_grace = Duration::from_millis(500);
    c.rl.batch_max_age = Duration::from_secs(1);
    c.rl.batch_size = 50;
    c
}

async fn ensure(js: &Context) {
    let bus = modelperf_bus::BusConfig { partitions: PARTITIONS, ..Default::default() };
    modelperf_bus::Topology::contract(&bus, 1).ensure(js).await.unwrap();
}

async fn batches(js: &Context) -> Vec<Batch> {
    read_stream(js, "RL_BATCHES", None)
        .await
        .unwrap()
        .iter()
        .map(|m| rmp_serde::from_slice(&m.payload).unwrap())
        .collect()
}

/// Every batch checks out (stats.n, content hash, id); returns task → times seen.
fn check(batches: &[Batch]) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for b in batches {
        assert_eq!(b.stats.n as usize, b.samples.len(), "stats.n of {}", b.batch_id);
        assert_eq!(b.content_hash, modelperf_rl_pipeline::batch::content_hash(&b.samples));
        assert_eq!(
            b.batch_id,
            modelperf_rl_pipeline::batch::batch_id(&b.dataset, b.samples.iter().map(|s| s.task_id.as_str()))
        );
        for s in &b.samples {
            assert!(!s.state.contains_key("chosen") && s.reward.is_finite());
            *seen.entry(s.task_id.clone()).or_insert(0) += 1;
        }
    }
    seen
}

async fn wait_for_tasks(js: &Context, want: &BTreeSet<String>) -> BTreeMap<String, usize> {
    eventually(Duration::from_secs(60), || async {
        let seen = check(&batches(js).await);
        want.iter().all(|t| seen.contains_key(t)).then_some(seen)
    })
    .await
    .expect("not every task reached a batch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_complete_task_is_in_exactly_one_sample() {
    let nats = NatsServer::start().await.unwrap();
    let js = jetstream::new(nats.client().await.unwrap());
    ensure(&js).await;
    let prometheus = modelperf_telemetry::init("rl-test").unwrap().prometheus;
    let app = App::build(config(nats.url()), prometheus).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let events: Vec<Event> = (0..300).flat_map(|i| task("a", i)).collect();
    publish(&js, &events).await;
    // An incomplete task (no judgment) never becomes a sample.
    publish(&js, &task("a", 999)[..3]).await;
    let want: BTreeSet<String> = (0..300).map(|i| format!("a-task-{i}")).collect();
    let seen = wait_for_tasks(&js, &want).await;
    // A replayed backlog — the same events again under new ids, as a producer that lost its
    // acks would resend them, so the stream stores them — adds no second sample.
    let again: Vec<Event> = events[..400]
        .iter()
        .cloned()
        .map(|mut e| {
            e.id = e.id.map(|id| format!("{id}-again"));
            e
        })
        .collect();
    publish(&js, &again).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen_after = check(&batches(&js).await);
    assert_eq!(seen, seen_after);
    assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), want, "exactly the complete tasks");
    assert!(seen.values().all(|n| *n == 1), "a task in two samples");
    let datasets: BTreeSet<String> = batches(&js).await.into_iter().map(|b| b.dataset).collect();
    assert_eq!(datasets, BTreeSet::from(["code_edit".to_owned(), "summarize".to_owned()]));
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_flushes_the_partial_batch() {
    let nats = NatsServer::start().await.unwrap();
    let js = jetstream::new(nats.client().await.unwrap());
    ensure(&js).await;
    let mut c = config(nats.url());
    c.rl.batch_size = 10_000;
    c.rl.batch_max_age = Duration::from_secs(3_600);
    let prometheus = modelperf_telemetry::init("rl-test").unwrap().prometheus;
    let app = App::build(c, prometheus).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let events: Vec<Event> = (0..40).flat_map(|i| task("g", i)).collect();
    publish(&js, &events).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(batches(&js).await.is_empty(), "neither full nor old yet");
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    let seen = check(&batches(&js).await);
    assert_eq!(seen.len(), 40);
}

/// The pipeline process; killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pipeline(url: &str) -> Proc {
    pipeline_on(url, 0)
}

/// The pipeline process with its health and metrics on `port` (0: any).
fn pipeline_on(url: &str, port: u16) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_modelperf-rl-pipeline"))
            .env("MODELPERF_NATS__URL", url)
            .env("MODELPERF_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("MODELPERF_BUS__PARTITIONS", PARTITIONS.to_string())
            .env("MODELPERF_BUS__LEASE_TTL", "1s")
            .env("MODELPERF_BUS__CHECKPOINT_INTERVAL", "200ms")
            .env("MODELPERF_RL__JOIN_GRACE", "500ms")
            .env("MODELPERF_RL__BATCH_MAX_AGE", "1s")
            .env("MODELPERF_RL__BATCH_SIZE", "64")
            .env("MODELPERF_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_under_load_every_task_is_still_in_exactly_one_sample() {
    let nats = NatsServer::start().await.unwrap();
    let js = jetstream::new(nats.client().await.unwrap());
    ensure(&js).await;
    let mut proc = pipeline(nats.url());
    let producer = {
        let js = js.clone();
        tokio::spawn(async move {
            for chunk in 0..40 {
                let events: Vec<Event> = (0..50).flat_map(|i| task("k", chunk * 50 + i)).collect();
                publish(&js, &events).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    for d in [1_700u64, 2_300, 1_900] {
        tokio::time::sleep(Duration::from_millis(d)).await;
        proc.0.kill().unwrap();
        proc.0.wait().unwrap();
        proc = pipeline(nats.url());
    }
    producer.await.unwrap();
    let want: BTreeSet<String> = (0..2_000).map(|i| format!("k-task-{i}")).collect();
    let seen = wait_for_tasks(&js, &want).await;
    assert_eq!(seen.len(), want.len());
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "tasks in two samples: {twice:?}");
    drop(proc);
}

/// Samples a process has published, from its `/metrics`.
async fn samples_published(port: u16) -> Option<u64> {
    let text =
        modelperf_telemetry::http::get(format!("http://127.0.0.1:{port}/metrics")).await.ok()?.text().await.ok()?;
    let total = text
        .lines()
        .filter(|l| l.starts_with("modelperf_rl_samples_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    Some(total as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_replicas_killed_every_task_is_still_in_exactly_one_sample() {
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await.unwrap();
    let js = jetstream::new(client.clone());
    ensure(&js).await;
    // Which partitions each replica owns, from the heartbeats.
    let owned: std::sync::Arc<std::sync::Mutex<BTreeMap<String, Vec<String>>>> = Default::default();
    let mut beats = client.subscribe("perf.health.rl-pipeline.*").await.unwrap();
    let recorder = {
        let owned = owned.clone();
        tokio::spawn(async move {
            use futures::StreamExt as _;
            while let Some(m) = beats.next().await {
                let beat: modelperf_schema::messages::Heartbeat = rmp_serde::from_slice(&m.payload).unwrap();
                owned.lock().unwrap().insert(beat.instance, beat.owned);
            }
        })
    };
    let (port_a, port_b) = (modelperf_testkit::free_port(), modelperf_testkit::free_port());
    let mut a = pipeline_on(nats.url(), port_a);
    let b = pipeline_on(nats.url(), port_b);
    let producer = {
        let js = js.clone();
        tokio::spawn(async move {
            for chunk in 0..40 {
                let events: Vec<Event> = (0..50).flat_map(|i| task("two", chunk * 50 + i)).collect();
                publish(&js, &events).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    // Before the kill, both replicas own partitions and have published samples.
    eventually(Duration::from_secs(30), || async {
        let a_done = samples_published(port_a).await? > 0;
        let b_done = samples_published(port_b).await? > 0;
        let split = {
            let owned = owned.lock().unwrap();
            owned.len() == 2 && owned.values().all(|o| o.iter().any(|k| k.starts_with("rl.p")))
        };
        (a_done && b_done && split).then_some(())
    })
    .await
    .expect("both replicas should own partitions and publish samples");
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    producer.await.unwrap();
    let want: BTreeSet<String> = (0..2_000).map(|i| format!("two-task-{i}")).collect();
    let seen = wait_for_tasks(&js, &want).await;
    assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), want);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "tasks in two samples: {twice:?}");
    // The survivor took every partition over.
    eventually(Duration::from_secs(20), || async {
        let owned = owned.lock().unwrap();
        owned.values().any(|o| (0..PARTITIONS).all(|p| o.contains(&format!("rl.p{p}")))).then_some(())
    })
    .await
    .expect("the surviving replica should own every partition");
    recorder.abort();
    drop(b);
}
