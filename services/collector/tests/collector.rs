//! The collector against a real NATS server: clean events, the dead-letter queue, duplicates,
//! consistent sampling across restarts, pseudonyms, prices and legacy events.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, Context};
use chrono::Utc;
use hmac::{Hmac, KeyInit, Mac};
use modelperf_collector::config::Profile;
use modelperf_collector::{App, Config};
use modelperf_schema::{CostStatus, Data, Event, dlq};
use modelperf_testkit::{NatsServer, eventually, project_root, read_stream};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::oneshot;

const KEY: &str = "test-privacy-key";

fn config(url: &str) -> Config {
    let mut c = Config::default();
    c.nats.url = url.to_owned();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.bus.partitions = 4;
    c.bus.ack_wait = Duration::from_secs(5);
    c.collector.profile = Profile::Prod;
    c.collector.privacy_key = Some(KEY.into());
    c.collector.privacy_key_id = Some("k1".into());
    c.collector.prices_file = project_root().join("deploy/prices.toml");
    c
}

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<modelperf_bus::RunStats>>,
    http: std::net::SocketAddr,
}

impl Running {
    async fn stop(self) -> modelperf_bus::RunStats {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap()
    }
}

async fn start(config: Config) -> Running {
    // Metrics first: the collector registers its counters with the recorder when built.
    let prometheus = modelperf_telemetry::init("collector-test").unwrap().prometheus;
    let collector = modelperf_collector::collector(&config).unwrap();
    let app = App::build(config, collector, prometheus).await.unwrap();
    let http = app.http_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    Running { stop, task, http }
}

async fn setup() -> (NatsServer, Context) {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream::new(server.client().await.unwrap());
    (server, js)
}

fn now() -> String {
    modelperf_schema::format_ts(&Utc::now())
}

fn completed(id: &str, task: &str) -> Value {
    json!({"v": 1, "id": id, "kind": "task_completed", "ts": now(), "source": "test.orchestrator",
        "task_id": task, "task_type": "code_edit", "model": "openai/gpt-4o",
        "data": {"latency_ms": 812.5, "success": true, "tokens": {"input": 1000, "output": 200, "cached_input": 400}}})
}

async fn publish(js: &Context, subject: &str, body: Vec<u8>, msg_id: Option<&str>) {
    let mut headers = HeaderMap::new();
    if let Some(id) = msg_id {
        headers.insert("Nats-Msg-Id", id);
    }
    js.publish_with_headers(subject.to_owned(), headers, body.into()).await.unwrap().await.unwrap();
}

async fn stream_count(js: &Context, stream: &str) -> u64 {
    js.get_stream(stream).await.unwrap().info().await.unwrap().state.messages
}

async fn clean_events(js: &Context) -> Vec<Event> {
    read_stream(js, "PERF_EVENTS", None)
        .await
        .unwrap()
        .iter()
        .map(|m| modelperf_schema::decode_unvalidated(&m.payload, None).unwrap())
        .collect()
}

async fn wait_raw_drained(js: &Context) {
    eventually(Duration::from_secs(30), || async { (stream_count(js, "PERF_RAW").await == 0).then_some(()) })
        .await
        .unwrap();
}

#[tokio::test]
async fn clean_events_are_priced_pseudonymised_and_partitioned() {
    let (server, js) = setup().await;
    let app = start(config(server.url())).await;
    let mut e = completed("ev-1", "task-1");
    e["user_id"] = json!("alice@example.com");
    e["attrs"] = json!({"note": "call me at +1-415-555-0134", "build": "v2.10.4", "retries": 3});
    publish(&js, "perf.raw.task_completed", serde_json::to_vec(&e).unwrap(), None).await;
    let mut sample = completed("ev-2", "task-2");
    sample["model"] = json!({"provider": "nobody", "name": "unknown-model"});
    publish(&js, "perf.raw.task_completed", serde_json::to_vec(&sample).unwrap(), None).await;
    let mut no_tokens = completed("ev-3", "task-3");
    no_tokens["data"] = json!({"latency_ms": 5, "success": true});
    publish(&js, "perf.raw.task_completed", serde_json::to_vec(&no_tokens).unwrap(), None).await;
    wait_raw_drained(&js).await;

    let msgs = read_stream(&js, "PERF_EVENTS", None).await.unwrap();
    assert_eq!(msgs.len(), 3);
    let by_id: HashMap<String, (String, Event)> = msgs
        .iter()
        .map(|m| {
            let e = modelperf_schema::decode_unvalidated(&m.payload, None).unwrap();
            let id = m.headers.as_ref().unwrap().get("Nats-Msg-Id").unwrap().as_str().to_owned();
            assert_eq!(Some(&id), e.id.as_ref(), "Nats-Msg-Id is the event id");
            (id, (m.subject.to_string(), e))
        })
        .collect();
    let (subject, first) = &by_id["ev-1"];
    let p = modelperf_bus::partition_of("task-1", 4);
    assert_eq!(subject, &format!("perf.events.task_completed.{p}"));
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(KEY.as_bytes()).unwrap();
    mac.update(b"alice@example.com");
    assert_eq!(first.user_id.as_deref(), Some(hex::encode(mac.finalize().into_bytes()).as_str()));
    let privacy = first.privacy.as_ref().unwrap();
    assert_eq!(privacy.key_id.as_deref(), Some("k1"));
    let note = format!("{:?}", first.attrs["note"]);
    assert!(!note.contains("555-0134"), "phone scrubbed: {note}");
    assert_eq!(format!("{:?}", first.attrs["build"]), format!("{:?}", modelperf_schema::AttrValue::from("v2.10.4")));
    assert_eq!(first.sample_rate, Some(1.0));
    assert!(first.received_at.is_some());
    let cost = first.cost.as_ref().unwrap();
    let usd = cost.usd.unwrap();
    assert!(usd > 0.0 && usd.is_finite(), "{cost:?}");
    assert!(cost.price_id.as_deref().unwrap().contains("gpt-4o"), "{cost:?}");
    assert_eq!(by_id["ev-2"].1.cost.as_ref().unwrap().status, Some(CostStatus::Unpriced));
    assert_eq!(by_id["ev-3"].1.cost.as_ref().unwrap().status, Some(CostStatus::UnknownTokens));

    let metrics =
        modelperf_telemetry::http::get(format!("http://{}/metrics", app.http)).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("modelperf_collector_events_total{kind=\"task_completed\",outcome=\"clean\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("modelperf_collector_cost_total{status=\"unpriced\"} 1"), "{metrics}");
    let ready = modelperf_telemetry::http::get(format!("http://{}/readyz", app.http)).await.unwrap();
    assert_eq!(ready.status(), 200);
    let stats = app.stop().await;
    assert_eq!(stats.acked, 3);
}

/// Each invalid input, the subject it is sent on, and the code it must get.
fn invalid_inputs() -> Vec<(String, String, Vec<u8>)> {
    let mut out = Vec::new();
    let dir = project_root().join("schemas/examples/v1/invalid");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let code = name.split("--").next().unwrap().to_owned();
        let body = std::fs::read(&path).unwrap();
        // The subject names the body's kind where it has one, so only the body is judged.
        let kind = modelperf_schema::decode_unvalidated(&body, None)
            .map(|e| e.kind().as_str().to_owned())
            .unwrap_or_else(|_| "task_completed".into());
        out.push((code, format!("perf.raw.{kind}"), body));
    }
    let mut old = completed("old-1", "t");
    old["ts"] = json!("2020-01-01T00:00:00Z");
    out.push(("range".into(), "perf.raw.task_completed".into(), serde_json::to_vec(&old).unwrap()));
    let mismatch = completed("mm-1", "t");
    out.push(("kind_mismatch".into(), "perf.raw.judgment".into(), serde_json::to_vec(&mismatch).unwrap()));
    let mut newer = completed("v2-1", "t");
    newer["v"] = json!(2);
    newer["data"] = json!({"shape": "from the future"});
    out.push(("unsupported_version".into(), "perf.raw.task_completed".into(), serde_json::to_vec(&newer).unwrap()));
    out.push((
        "legacy_unmapped".into(),
        "perf.raw.legacy.cache-hit".into(),
        br#"{"type":"cache-hit","timestamp":"2026-11-27T10:00:00Z","data":{}}"#.to_vec(),
    ));
    out.push(("decode".into(), "perf.raw.task_completed".into(), vec![0xff, 0xfe, b'{', 0x00]));
    let mut padded = completed("big-1", "t");
    padded["attrs"] = json!({"padding": "x".repeat(70 * 1024)});
    out.push(("too_large".into(), "perf.raw.task_completed".into(), serde_json::to_vec(&padded).unwrap()));
    out
}

#[tokio::test]
async fn every_invalid_category_lands_in_the_dlq_once_with_its_code() {
    let (server, js) = setup().await;
    let app = start(config(server.url())).await;
    let inputs = invalid_inputs();
    let codes: HashSet<&str> = inputs.iter().map(|(c, _, _)| c.as_str()).collect();
    for want in ["decode", "schema", "range", "too_large", "kind_mismatch", "unsupported_version", "legacy_unmapped"] {
        assert!(codes.contains(want), "no invalid example for {want}");
    }
    for (i, (_, subject, body)) in inputs.iter().enumerate() {
        publish(&js, subject, body.clone(), Some(&format!("bad-{i}"))).await;
    }
    // A 300 KiB body is too large for an event and is truncated in the DLQ.
    let huge: Vec<u8> = std::iter::once(b'{').chain(std::iter::repeat_n(b' ', 300 * 1024)).chain([b'}']).collect();
    publish(&js, "perf.raw.custom", huge.clone(), Some("huge")).await;
    // A good event among them goes through.
    publish(&js, "perf.raw.task_completed", serde_json::to_vec(&completed("good-1", "t")).unwrap(), None).await;
    wait_raw_drained(&js).await;

    let dead = read_stream(&js, "PERF_DLQ", None).await.unwrap();
    assert_eq!(dead.len(), inputs.len() + 1, "one dead letter per bad input");
    let mut seen_huge = false;
    for m in &dead {
        let h = m.headers.as_ref().unwrap();
        assert_eq!(m.subject.as_str(), "perf.dlq.collector");
        let code = h.get(dlq::ERROR).unwrap().as_str();
        let seq: u64 = h.get(dlq::ORIGINAL_SEQ).unwrap().as_str().parse().unwrap();
        assert_eq!(h.get("Nats-Msg-Id").unwrap().as_str(), format!("dlq:PERF_RAW:{seq}"));
        assert!(!h.get(dlq::REASON).unwrap().as_str().is_empty());
        let subject = h.get(dlq::ORIGINAL_SUBJECT).unwrap().as_str();
        if m.payload.len() == dlq::MAX_DLQ_BODY {
            seen_huge = true;
            assert_eq!(code, "too_large");
            assert_eq!(h.get(dlq::ORIGINAL_SIZE).unwrap().as_str(), huge.len().to_string());
            use sha2::Digest;
            assert_eq!(h.get(dlq::SHA256).unwrap().as_str(), hex::encode(Sha256::digest(&huge)));
            assert_eq!(&m.payload[..], &huge[..dlq::MAX_DLQ_BODY]);
            continue;
        }
        let (want, want_subject, _) =
            inputs.iter().find(|(_, _, b)| b[..] == m.payload[..]).expect("original bytes kept");
        assert_eq!(code, want, "for a body sent on {subject}: {:?}", h.get(dlq::REASON));
        assert_eq!(subject, want_subject);
    }
    assert!(seen_huge);
    assert_eq!(clean_events(&js).await.len(), 1);
    let stats = app.stop().await;
    assert_eq!(stats.dead_lettered as usize, inputs.len() + 1);
}

#[tokio::test]
async fn producer_retries_and_repeated_ids_give_one_event() {
    let (server, js) = setup().await;
    let app = start(config(server.url())).await;
    let body = serde_json::to_vec(&completed("dup-1", "task-d")).unwrap();
    // A producer retrying with the same Nats-Msg-Id: the raw stream keeps one.
    for _ in 0..3 {
        publish(&js, "perf.raw.task_completed", body.clone(), Some("producer-msg-1")).await;
    }
    // The same event sent again under another message id: the clean stream keeps one.
    publish(&js, "perf.raw.task_completed", body.clone(), Some("producer-msg-2")).await;
    // An event without a body id gets a stable id derived from its Nats-Msg-Id.
    let mut anonymous = completed("x", "task-e");
    anonymous.as_object_mut().unwrap().remove("id");
    for _ in 0..2 {
        publish(&js, "perf.raw.task_completed", serde_json::to_vec(&anonymous).unwrap(), Some("anon-1")).await;
    }
    wait_raw_drained(&js).await;
    let events = clean_events(&js).await;
    let ids: Vec<_> = events.iter().map(|e| e.id.clone().unwrap()).collect();
    assert_eq!(events.len(), 2, "{ids:?}");
    assert!(ids.contains(&"dup-1".to_owned()));
    assert!(ids.contains(&modelperf_schema::id::derive_id(Some("anon-1"), "PERF_RAW", 0)));
    let first = events.iter().find(|e| e.id.as_deref() == Some("dup-1")).unwrap();
    // The body id won; the first producer's message id is kept.
    assert_eq!(
        format!("{:?}", first.attrs["raw_msg_id"]),
        format!("{:?}", modelperf_schema::AttrValue::from("producer-msg-1"))
    );
    let metrics =
        modelperf_telemetry::http::get(format!("http://{}/metrics", app.http)).await.unwrap().text().await.unwrap();
    let dup_line = metrics.lines().find(|l| l.starts_with("modelperf_runner_duplicates_total")).unwrap_or_default();
    assert!(dup_line.ends_with(" 1"), "one duplicate counted: {dup_line:?}");
    app.stop().await;
}

#[tokio::test]
async fn sampling_keeps_whole_tasks_and_the_same_ones_after_a_restart() {
    let (server, js) = setup().await;
    let mut cfg = config(server.url());
    cfg.collector.sampling.rates.insert("code_edit".into(), "1/4".parse().unwrap());
    const TASKS: usize = 1000;
    let send = |round: usize| {
        let js = js.clone();
        async move {
            let mut acks = Vec::new();
            for t in 0..TASKS {
                for (part, success) in [("a", true), ("b", true)] {
                    let mut e = completed(&format!("r{round}-{t}-{part}"), &format!("task-{t}"));
                    e["data"]["success"] = json!(success);
                    acks.push(
                        js.publish("perf.raw.task_completed", serde_json::to_vec(&e).unwrap().into()).await.unwrap(),
                    );
                }
            }
            // A failure in every tenth task is kept whether or not its task was.
            for t in (0..TASKS).step_by(10) {
                let mut failed = completed(&format!("r{round}-{t}-fail"), &format!("task-{t}"));
                failed["data"]["success"] = json!(false);
                let body = serde_json::to_vec(&failed).unwrap();
                acks.push(js.publish("perf.raw.task_completed", body.into()).await.unwrap());
            }
            for a in acks {
                a.await.unwrap();
            }
        }
    };
    let kept = |events: &[Event], round: usize| -> BTreeMap<String, Vec<(String, f64)>> {
        let mut by_task: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
        for e in events.iter().filter(|e| e.id.as_ref().unwrap().starts_with(&format!("r{round}-"))) {
            by_task
                .entry(e.task_id.clone().unwrap())
                .or_default()
                .push((e.id.clone().unwrap(), e.sample_rate.unwrap()));
        }
        by_task
    };
    let app = start(cfg.clone()).await;
    send(0).await;
    wait_raw_drained(&js).await;
    app.stop().await;
    let app = start(cfg).await;
    send(1).await;
    wait_raw_drained(&js).await;
    app.stop().await;
    let events = clean_events(&js).await;
    let (first, second) = (kept(&events, 0), kept(&events, 1));
    let tasks = |m: &BTreeMap<String, Vec<(String, f64)>>| -> BTreeMap<String, usize> {
        m.iter().map(|(t, ev)| (t.clone(), ev.iter().filter(|(_, r)| *r == 0.25).count())).collect()
    };
    assert_eq!(tasks(&first), tasks(&second), "the same tasks are kept after a restart");
    for (task, events) in &first {
        let sampled = events.iter().filter(|(_, r)| *r == 0.25).count();
        assert!(sampled == 0 || sampled == 2, "task {task} split: {events:?}");
    }
    let kept_tasks = first.values().filter(|ev| ev.iter().any(|(_, r)| *r == 0.25)).count();
    assert!((150..=350).contains(&kept_tasks), "kept {kept_tasks} of {TASKS} tasks at 1/4");
    let mut rescued = 0;
    for t in (0..TASKS).step_by(10) {
        let events = &first[&format!("task-{t}")];
        let fail = events.iter().find(|(id, _)| id.ends_with("-fail")).expect("every failure is kept");
        assert_eq!(fail.1, 1.0, "an override keeps with rate 1");
        rescued += usize::from(events.len() == 1);
    }
    assert!(rescued >= 40, "failures of sampled-out tasks are kept ({rescued} of 100)");
}

#[tokio::test]
async fn an_output_stream_outage_delays_events_but_loses_none() {
    let (server, js) = setup().await;
    let mut cfg = config(server.url());
    cfg.bus.max_deliver = 2;
    cfg.bus.ack_wait = Duration::from_secs(2);
    let app = start(cfg.clone()).await;
    js.delete_stream("PERF_EVENTS").await.unwrap();
    for i in 0..5 {
        let body = serde_json::to_vec(&completed(&format!("outage-{i}"), "task-o")).unwrap();
        publish(&js, "perf.raw.task_completed", body, None).await;
    }
    // Longer than max_deliver × ack_wait: a nak-based retry would have given up by now.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(stream_count(&js, "PERF_RAW").await, 5, "inputs are kept while the output is down");
    modelperf_bus::Topology::contract(&cfg.bus, 1).ensure(&js).await.unwrap();
    wait_raw_drained(&js).await;
    let ids: HashSet<String> = clean_events(&js).await.into_iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, (0..5).map(|i| format!("outage-{i}")).collect());
    assert_eq!(stream_count(&js, "PERF_DLQ").await, 0, "an outage is not the input's fault");
    let stats = app.stop().await;
    assert_eq!((stats.acked, stats.dead_lettered), (5, 0), "each input acknowledged once: {stats:?}");
    let consumer = js
        .get_stream("PERF_RAW")
        .await
        .unwrap()
        .get_consumer::<jetstream::consumer::pull::Config>("collector")
        .await
        .unwrap();
    assert_eq!(consumer.cached_info().num_redelivered, 0, "the outage used up no deliveries");
}

#[tokio::test]
async fn legacy_events_are_mapped_and_a_missing_key_stops_prod() {
    let (server, js) = setup().await;
    let mut no_key = config(server.url());
    no_key.collector.privacy_key = None;
    let err = modelperf_collector::collector(&no_key).unwrap_err();
    assert!(err.to_string().contains("MODELPERF_COLLECTOR__PRIVACY_KEY"), "{err}");
    no_key.collector.profile = Profile::Dev;
    assert!(modelperf_collector::collector(&no_key).is_ok(), "dev runs with the development key");

    let app = start(config(server.url())).await;
    let dc = json!({"id": "dc-1", "type": "performance", "timestamp": now(), "agentId": "agent-7", "taskId": "task-42",
        "metrics": {"latency": 1234, "accuracy": 0.92, "compliance": 0.98, "cost": 0.0031,
                    "reliability": {"successRate": 0.75, "retries": 1}},
        "context": {"model": "openai/gpt-4o", "taskType": "code_edit"}});
    publish(&js, "perf.raw.legacy.performance", serde_json::to_vec(&dc).unwrap(), Some("dc-1")).await;
    let tracker = json!({"type": "task-started", "timestamp": now(),
        "data": {"taskId": "task-42", "agentId": "agent-7", "taskType": "code_edit", "queueMs": 35}});
    publish(&js, "perf.raw.legacy.task-started", serde_json::to_vec(&tracker).unwrap(), Some("trk-1")).await;
    wait_raw_drained(&js).await;
    let events = clean_events(&js).await;
    assert_eq!(events.len(), 2);
    let done = events.iter().find(|e| e.id.as_deref() == Some("dc-1")).unwrap();
    let Data::TaskCompleted(c) = &done.data else { panic!("{:?}", done.data) };
    assert!(c.success);
    assert_eq!(done.cost.as_ref().unwrap().status, Some(CostStatus::UnknownTokens));
    let started = events.iter().find(|e| e.id.as_deref() != Some("dc-1")).unwrap();
    assert_eq!(started.id.as_deref(), Some(modelperf_schema::id::derive_id(Some("trk-1"), "", 0).as_str()));
    let Data::TaskStarted(s) = &started.data else { panic!() };
    assert_eq!(s.queue_ms, Some(35.0));
    app.stop().await;
}
