//! Hostile input against the collector on a real NATS server: deeply nested JSON, MessagePack
//! with huge declared lengths, invalid UTF-8, extreme timestamps and numbers, and a flood of
//! invalid messages with valid traffic among them. Nothing crashes or stalls; each bad message is
//! in the DLQ once, with its original bytes and the code its fault deserves; every valid event
//! is collected.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, Context};
use chrono::Utc;
use modelperf_collector::{App, Config};
use modelperf_schema::dlq;
use modelperf_testkit::{NatsServer, eventually, project_root, read_stream};
use serde_json::{Value, json};
use tokio::sync::oneshot;

fn config(url: &str) -> Config {
    let mut c = Config::default();
    c.nats.url = url.to_owned();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.bus.partitions = 2;
    c.bus.ack_wait = Duration::from_secs(5);
    c.collector.privacy_key = Some("test-privacy-key".into());
    c.collector.prices_file = project_root().join("deploy/prices.toml");
    c
}

fn completed(id: &str) -> Value {
    json!({"v": 1, "id": id, "kind": "task_completed", "ts": modelperf_schema::format_ts(&Utc::now()),
        "source": "test.orchestrator", "task_id": format!("task-{id}"), "task_type": "code_edit",
        "model": "openai/gpt-4o", "data": {"latency_ms": 812.5, "success": true, "tokens": {"input": 1000, "output": 200}}})
}

/// A valid event with one field replaced by raw JSON text (numbers serde_json cannot hold).
fn with_raw(id: &str, pointer: &str, raw: &str) -> Vec<u8> {
    let mut v = completed(id);
    *v.pointer_mut(pointer).unwrap() = json!("@@RAW@@");
    serde_json::to_string(&v).unwrap().replace("\"@@RAW@@\"", raw).into_bytes()
}

/// A valid event with one field set to `value`.
fn with(id: &str, pointer: &str, value: Value) -> Vec<u8> {
    let mut v = completed(id);
    *v.pointer_mut(pointer).unwrap() = value;
    serde_json::to_vec(&v).unwrap()
}

/// Each hostile input, named, with the codes that classify it correctly.
fn hostile() -> Vec<(&'static str, Vec<u8>, &'static [&'static str])> {
    let depth = 20_000;
    let nested_arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let nested_objects = format!("{}1{}", "{\"a\":".repeat(depth / 3), "}".repeat(depth / 3));
    let mut invalid_utf8_json = serde_json::to_vec(&completed("utf8-json")).unwrap();
    let at = invalid_utf8_json.windows(9).position(|w| w == b"code_edit").unwrap();
    invalid_utf8_json[at..at + 2].copy_from_slice(&[0xff, 0xfe]);
    let mut invalid_utf8_msgpack = modelperf_schema::to_msgpack(
        &modelperf_schema::decode_event(&serde_json::to_vec(&completed("utf8-mp")).unwrap(), None).unwrap(),
    )
    .unwrap();
    let at = invalid_utf8_msgpack.windows(9).position(|w| w == b"code_edit").unwrap();
    invalid_utf8_msgpack[at] = 0xc3; // a lead byte followed by ASCII: not UTF-8
    vec![
        ("nested arrays", with_raw("deep-a", "/data/tokens", &nested_arrays), &["schema", "decode"]),
        ("nested objects", with_raw("deep-o", "/data/tokens", &nested_objects), &["schema", "decode"]),
        ("nested attrs", with_raw("deep-attrs", "/task_type", &nested_arrays), &["schema", "decode"]),
        // fixmap of one entry whose key is a str32 declaring 4 GiB.
        ("msgpack huge str", vec![0x81, 0xdb, 0xff, 0xff, 0xff, 0xff, b'v'], &["decode"]),
        // map32 declaring 4 billion entries.
        ("msgpack huge map", vec![0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, b'v', 0x01], &["decode"]),
        // {"v": 1, "attrs": array32 declaring 4 billion items}.
        (
            "msgpack huge array",
            [&[0x82, 0xa1, b'v', 0x01, 0xa5][..], b"attrs", &[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01]].concat(),
            &["decode", "schema"],
        ),
        // bin32 declaring 4 GiB as the whole body.
        ("msgpack huge bin", vec![0xc6, 0xff, 0xff, 0xff, 0xff, 0x00], &["decode"]),
        ("invalid UTF-8 in JSON", invalid_utf8_json, &["decode", "schema"]),
        ("invalid UTF-8 in MessagePack", invalid_utf8_msgpack, &["decode", "schema"]),
        ("ts in year 9999", with("ts-9999", "/ts", json!("9999-12-31T23:59:59Z")), &["range"]),
        ("ts before year 0", with("ts-neg", "/ts", json!("-000001-01-01T00:00:00Z")), &["schema", "range"]),
        ("ts impossible date", with("ts-bad", "/ts", json!("2026-13-45T99:99:99Z")), &["schema"]),
        ("ts a huge number", with_raw("ts-num", "/ts", "1e30"), &["schema"]),
        ("latency 1e400", with_raw("lat-inf", "/data/latency_ms", "1e400"), &["decode", "schema", "range"]),
        ("latency -1", with("lat-neg", "/data/latency_ms", json!(-1.0)), &["range"]),
        ("latency 1e308", with("lat-big", "/data/latency_ms", json!(1e308)), &["range"]),
        ("tokens past u64", with_raw("tok-big", "/data/tokens/input", "18446744073709551616"), &["schema", "range"]),
        ("tokens negative", with("tok-neg", "/data/tokens/input", json!(-5)), &["range", "schema"]),
        ("empty body", Vec::new(), &["decode"]),
        ("NUL bytes", vec![0u8; 512], &["decode"]),
    ]
}

async fn publish(js: &Context, subject: &str, body: Vec<u8>, msg_id: &str) {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    js.publish_with_headers(subject.to_owned(), headers, body.into()).await.unwrap().await.unwrap();
}

async fn count(js: &Context, stream: &str) -> u64 {
    js.get_stream(stream).await.unwrap().info().await.unwrap().state.messages
}

/// [`count`] from a panic message (blocking on the runtime's behalf).
fn count_now(js: &Context, stream: &str) -> u64 {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(count(js, stream)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_dead_lettered_with_its_code_and_valid_traffic_flows() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream::new(server.client().await.unwrap());
    let prometheus = modelperf_telemetry::init("collector-test").unwrap().prometheus;
    let config = config(server.url());
    let collector = modelperf_collector::collector(&config).unwrap();
    let app = App::build(config, collector, prometheus).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));

    let inputs = hostile();
    for (i, (_, body, _)) in inputs.iter().enumerate() {
        publish(&js, "perf.raw.task_completed", body.clone(), &format!("hostile-{i}")).await;
    }
    // A flood: 4 000 invalid messages of four shapes, a valid event after every 20.
    let (flood, mut valid) = (4_000, 0);
    let garbage = |i: usize| -> Vec<u8> {
        match i % 4 {
            0 => vec![0xdf, 0xff, 0xff, 0xff, 0xff],
            1 => b"{\"v\":1,\"kind\":".to_vec(),
            2 => with("flood", "/data/latency_ms", json!(-1.0)),
            _ => format!("{}{}", "[".repeat(5_000), "]".repeat(5_000)).into_bytes(),
        }
    };
    for i in 0..flood {
        publish(&js, "perf.raw.task_completed", garbage(i), &format!("flood-{i}")).await;
        if i % 20 == 0 {
            publish(
                &js,
                "perf.raw.task_completed",
                serde_json::to_vec(&completed(&format!("ok-{i}"))).unwrap(),
                &format!("ok-{i}"),
            )
            .await;
            valid += 1;
        }
    }
    let bad = inputs.len() + flood;
    eventually(Duration::from_secs(120), || async {
        let settled = count(&js, "PERF_DLQ").await + count(&js, "PERF_EVENTS").await;
        (count(&js, "PERF_RAW").await == 0 && settled == (bad + valid as usize) as u64).then_some(())
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "the collector did not drain the flood into the DLQ ({e}): {} raw left, {} of {bad} dead letters, {} clean",
            count_now(&js, "PERF_RAW"),
            count_now(&js, "PERF_DLQ"),
            count_now(&js, "PERF_EVENTS")
        )
    });
    let clean: Vec<String> = read_stream(&js, "PERF_EVENTS", None)
        .await
        .unwrap()
        .iter()
        .map(|m| modelperf_schema::decode_unvalidated(&m.payload, None).unwrap().id.unwrap_or_default())
        .filter(|id| !id.starts_with("ok-"))
        .collect();
    assert!(clean.is_empty(), "hostile input collected as clean events: {clean:?}");
    assert_eq!(count(&js, "PERF_EVENTS").await, valid, "every valid event among the flood collected");

    let letters = read_stream(&js, "PERF_DLQ", None).await.unwrap();
    let mut by_id: BTreeMap<String, (String, Vec<u8>)> = BTreeMap::new();
    for m in &letters {
        let h = m.headers.as_ref().unwrap();
        let seq: u64 = h.get(dlq::ORIGINAL_SEQ).unwrap().as_str().parse().unwrap();
        assert!(!h.get(dlq::REASON).unwrap().as_str().is_empty());
        let code = h.get(dlq::ERROR).unwrap().as_str().to_owned();
        assert!(by_id.insert(format!("{seq}"), (code, m.payload.to_vec())).is_none(), "a letter twice");
    }
    let mut report = Vec::new();
    for (name, body, codes) in &inputs {
        let (code, _) = by_id
            .values()
            .find(|(_, kept)| kept == body)
            .unwrap_or_else(|| panic!("{name}: not in the DLQ with its original bytes"));
        report.push(format!("{name}: {code}"));
        assert!(codes.contains(&code.as_str()), "{name}: dead-lettered as {code}, expected one of {codes:?}");
    }
    println!("{}", report.join("\n"));
    let _ = stop.send(());
    let stats = task.await.unwrap().unwrap();
    assert_eq!(stats.dead_lettered as usize, bad);
}
