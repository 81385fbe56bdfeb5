//! `modelperf dlq` against a real NATS server and an in-process collector: dead letters listed
//! by code without their bodies (unless asked), filtered by code, replayed once with the age rule
//! waived, and still-bad letters dead-lettered again.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, Context};
use chrono::Utc;
use futures::StreamExt;
use modelperf_collector::{App, Config};
use modelperf_schema::{AttrValue, dlq};
use modelperf_testkit::{NatsServer, eventually, project_root, read_stream};
use serde_json::json;
use tokio::sync::oneshot;

const SUBJECT: &str = "perf.raw.task_completed";
const OLD_ID: &str = "old-ev-1";
/// Distinctive strings inside the bodies: they must reach stdout only with `--show-body`.
const RANGE_MARKER: &str = "range-body-marker-5f1c";
const DECODE_MARKER: &str = "decode-body-marker-9a2e";

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<modelperf_bus::RunStats>>,
}

impl Running {
    async fn stop(self) -> modelperf_bus::RunStats {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap()
    }
}

async fn start_collector(url: &str) -> Running {
    let mut config = Config::default();
    config.nats.url = url.to_owned();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.bus.partitions = 4;
    config.bus.ack_wait = Duration::from_secs(5);
    config.collector.privacy_key = Some("test-privacy-key".into());
    config.collector.prices_file = project_root().join("deploy/prices.toml");
    // Metrics first: the collector registers its counters with the recorder when built.
    let prometheus = modelperf_telemetry::init("dlq-test").unwrap().prometheus;
    let collector = modelperf_collector::collector(&config).unwrap();
    let app = App::build(config, collector, prometheus).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    Running { stop, task }
}

/// One dead letter as the stream holds it.
#[derive(Debug)]
struct Letter {
    seq: u64,
    msg_id: String,
    reason: String,
    original_subject: String,
    body: Vec<u8>,
}

/// Every letter in `PERF_DLQ`, by code, in stream order.
async fn letters(js: &Context) -> BTreeMap<String, Vec<Letter>> {
    let mut out: BTreeMap<String, Vec<Letter>> = BTreeMap::new();
    for m in read_stream(js, "PERF_DLQ", None).await.unwrap() {
        let h = m.headers.as_ref().unwrap();
        let get = |name: &str| h.get(name).map(|v| v.as_str().to_owned()).unwrap_or_default();
        out.entry(get(dlq::ERROR)).or_default().push(Letter {
            seq: m.info().unwrap().stream_sequence,
            msg_id: get("Nats-Msg-Id"),
            reason: get(dlq::REASON),
            original_subject: get(dlq::ORIGINAL_SUBJECT),
            body: m.payload.to_vec(),
        });
    }
    out
}

async fn info(js: &Context, stream: &str) -> jetstream::stream::State {
    js.get_stream(stream).await.unwrap().info().await.unwrap().state.clone()
}

/// Runs the `modelperf` binary against `url`; it must succeed. Returns stdout.
async fn modelperf(url: &str, args: &[&str]) -> String {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_modelperf"))
        .args(args)
        .env("MODELPERF_NATS__URL", url)
        .env_remove("MODELPERF_CONFIG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run).await.expect("modelperf hung").unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "modelperf {args:?}: {}\nstdout: {stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// A NATS server, a running collector, and two dead letters made by it: an event 10 days old
/// (`range`) and a body that is not JSON (`decode`).
struct Fixture {
    server: NatsServer,
    js: Context,
    app: Running,
    old_body: Vec<u8>,
    old_ts: String,
    bad_body: Vec<u8>,
}

impl Fixture {
    async fn new() -> Fixture {
        let server = NatsServer::start().await.unwrap();
        let js = jetstream::new(server.client().await.unwrap());
        let app = start_collector(server.url()).await;
        let old_ts = modelperf_schema::format_ts(&(Utc::now() - chrono::Duration::days(10)));
        let old = json!({"v": 1, "id": OLD_ID, "kind": "task_completed", "ts": old_ts,
            "source": "test.orchestrator", "task_id": "task-old", "task_type": "code_edit",
            "model": "openai/gpt-4o", "attrs": {"note": RANGE_MARKER},
            "data": {"latency_ms": 120.0, "success": true, "tokens": {"input": 100, "output": 20}}});
        let old_body = serde_json::to_vec(&old).unwrap();
        let bad_body = format!("{{not json {DECODE_MARKER}").into_bytes();
        for (body, msg_id) in [(&old_body, "producer-old"), (&bad_body, "producer-bad")] {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", msg_id);
            js.publish_with_headers(SUBJECT, headers, body.clone().into()).await.unwrap().await.unwrap();
        }
        let fixture = Fixture { server, js, app, old_body, old_ts, bad_body };
        fixture.settled(2).await;
        let dead = letters(&fixture.js).await;
        assert_eq!(dead.keys().map(String::as_str).collect::<Vec<_>>(), ["decode", "range"], "{dead:?}");
        assert_eq!(dead["range"][0].body, fixture.old_body, "the DLQ keeps the original bytes");
        assert_eq!(dead["decode"][0].body, fixture.bad_body, "the DLQ keeps the original bytes");
        fixture
    }

    fn url(&self) -> &str {
        self.server.url()
    }

    /// Waits until the collector has taken everything from `PERF_RAW` and `PERF_DLQ` holds `dlq`.
    async fn settled(&self, dlq: u64) {
        eventually(Duration::from_secs(30), || async {
            (info(&self.js, "PERF_RAW").await.messages == 0 && info(&self.js, "PERF_DLQ").await.messages == dlq)
                .then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("PERF_DLQ never held {dlq} letters with PERF_RAW drained: {e}"));
    }

    async fn letter(&self, code: &str) -> Letter {
        let mut dead = letters(&self.js).await;
        let mut group = dead.remove(code).unwrap_or_default();
        assert_eq!(group.len(), 1, "one {code} letter: {group:?}");
        group.remove(0)
    }
}

#[tokio::test]
async fn dlq_lists_letters_by_code_with_reasons_and_hides_bodies() {
    let f = Fixture::new().await;
    let range = f.letter("range").await;
    let decode = f.letter("decode").await;
    assert!(range.reason.starts_with("ts: ") && range.reason.contains("more than 7 days old"), "{range:?}");
    assert!(range.reason.contains(&f.old_ts), "the reason names the timestamp: {range:?}");
    assert!(!decode.reason.is_empty(), "{decode:?}");

    let out = modelperf(f.url(), &["dlq"]).await;
    assert!(out.starts_with("2 dead letters\n"), "{out}");
    assert!(out.contains(&format!("\nrange: 1 (seq {0}..{0})\n", range.seq)), "{out}");
    assert!(out.contains(&format!("\ndecode: 1 (seq {0}..{0})\n", decode.seq)), "{out}");
    assert!(out.contains(&format!("1 × {}\n", range.reason)), "{out}");
    assert!(out.contains(&format!("1 × {}\n", decode.reason)), "{out}");
    assert!(!out.contains(RANGE_MARKER) && !out.contains(DECODE_MARKER), "bodies printed without --show-body: {out}");
    assert!(!out.contains("not json"), "bodies printed without --show-body: {out}");
    assert!(out.contains("--show-body"), "says how to see the bodies: {out}");

    let out = modelperf(f.url(), &["dlq", "--show-body"]).await;
    assert!(out.contains(RANGE_MARKER) && out.contains(DECODE_MARKER), "{out}");
    assert!(out.contains(&format!("seq {} from {SUBJECT} (original seq ", range.seq)), "{out}");

    let out = modelperf(f.url(), &["dlq", "--code", "range"]).await;
    assert!(out.starts_with("1 dead letters\n"), "{out}");
    assert!(out.contains(&format!("\nrange: 1 (seq {0}..{0})\n", range.seq)), "{out}");
    assert!(!out.contains("decode:") && !out.contains(&decode.reason), "--code range shows only range: {out}");

    let out = modelperf(f.url(), &["dlq", "--code", "range", "--show-body"]).await;
    assert!(out.contains(RANGE_MARKER) && !out.contains(DECODE_MARKER), "{out}");

    let out = modelperf(f.url(), &["dlq", "--code", "too_large"]).await;
    assert_eq!(out, "the dead-letter queue holds nothing that matches\n");

    // Listing reads without consuming: the letters are all still there.
    assert_eq!(info(&f.js, "PERF_DLQ").await.messages, 2);
    let stats = f.app.stop().await;
    assert_eq!((stats.acked, stats.dead_lettered), (0, 2), "{stats:?}");
}

#[tokio::test]
async fn replay_lands_an_old_event_once() {
    let f = Fixture::new().await;
    let range = f.letter("range").await;
    let raw_before = info(&f.js, "PERF_RAW").await.last_sequence;

    let out = modelperf(f.url(), &["dlq", "replay", "--code", "range", "--dry-run"]).await;
    assert_eq!(out, format!("would replay seq {} to {SUBJECT} (range)\n", range.seq));
    assert_eq!(info(&f.js, "PERF_RAW").await.last_sequence, raw_before, "a dry run publishes nothing");

    // Watch the replayed raw message itself, headers included (core NATS sees JetStream publishes).
    let watcher = f.server.client().await.unwrap();
    let mut raw = watcher.subscribe("perf.raw.>").await.unwrap();
    watcher.flush().await.unwrap();

    let out = modelperf(f.url(), &["dlq", "replay", "--code", "range"]).await;
    assert_eq!(out, "replayed 1, already replayed 0, not replayable 0\n");
    let msg = tokio::time::timeout(Duration::from_secs(10), raw.next()).await.unwrap().unwrap();
    assert_eq!(msg.subject.as_str(), SUBJECT, "replayed to the original subject");
    assert_eq!(msg.payload.to_vec(), f.old_body, "replayed with the original bytes");
    let headers = msg.headers.as_ref().unwrap();
    assert_eq!(headers.get("Nats-Msg-Id").unwrap().as_str(), format!("replay:{}", range.seq));
    assert_eq!(headers.get(dlq::REPLAY).unwrap().as_str(), range.seq.to_string());

    // The collector accepts it this time: the age rule does not apply to a replay.
    f.settled(2).await;
    assert_eq!(info(&f.js, "PERF_RAW").await.last_sequence, raw_before + 1, "only the range letter was replayed");
    let events = read_stream(&f.js, "PERF_EVENTS", None).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].headers.as_ref().unwrap().get("Nats-Msg-Id").unwrap().as_str(), OLD_ID);
    let event = modelperf_schema::decode_unvalidated(&events[0].payload, None).unwrap();
    assert_eq!(event.id.as_deref(), Some(OLD_ID));
    assert_eq!(modelperf_schema::format_ts(&event.ts), f.old_ts, "the event keeps its own time");
    assert_eq!(
        event.attrs.get(modelperf_schema::id::RAW_MSG_ID_ATTR),
        Some(&AttrValue::Text(format!("replay:{}", range.seq))),
        "the replay's Nats-Msg-Id is kept on the clean event"
    );

    // Again, within the duplicate window, and with the filter given before `replay`: nothing new.
    let out = modelperf(f.url(), &["dlq", "--code", "range", "replay"]).await;
    assert_eq!(out, "replayed 0, already replayed 1, not replayable 0\n");
    assert_eq!(info(&f.js, "PERF_RAW").await.last_sequence, raw_before + 1, "nothing was published again");
    let events = read_stream(&f.js, "PERF_EVENTS", None).await.unwrap();
    assert_eq!(events.len(), 1, "the event is held once");
    assert_eq!(info(&f.js, "PERF_DLQ").await.messages, 2, "replaying does not consume the letter");

    let stats = f.app.stop().await;
    assert_eq!((stats.acked, stats.dead_lettered, stats.duplicates), (1, 2, 0), "{stats:?}");
}

#[tokio::test]
async fn replayed_decode_letters_are_dead_lettered_again() {
    let f = Fixture::new().await;
    let first = f.letter("decode").await;
    let range = f.letter("range").await;

    let out = modelperf(f.url(), &["dlq", "replay", "--code", "decode"]).await;
    assert_eq!(out, "replayed 1, already replayed 0, not replayable 0\n");
    f.settled(3).await;

    let dead = letters(&f.js).await;
    assert_eq!(dead["range"].len(), 1, "{dead:?}");
    let decode = &dead["decode"];
    assert_eq!(decode.len(), 2, "exactly one new letter, with the same code: {dead:?}");
    let again = &decode[1];
    assert_eq!(decode[0].seq, first.seq);
    assert!(again.seq > first.seq && again.seq > range.seq, "{dead:?}");
    assert_eq!(again.body, f.bad_body);
    assert_eq!(again.reason, first.reason);
    assert_eq!(again.original_subject, SUBJECT);
    assert!(again.msg_id.starts_with("dlq:PERF_RAW:") && again.msg_id != first.msg_id, "{dead:?}");
    assert_eq!(info(&f.js, "PERF_EVENTS").await.messages, 0);

    let out = modelperf(f.url(), &["dlq", "--code", "decode"]).await;
    assert!(out.contains(&format!("\ndecode: 2 (seq {}..{})\n", first.seq, again.seq)), "{out}");
    assert!(out.contains(&format!("2 × {}\n", first.reason)), "{out}");

    let stats = f.app.stop().await;
    assert_eq!((stats.acked, stats.dead_lettered), (0, 3), "{stats:?}");
}
