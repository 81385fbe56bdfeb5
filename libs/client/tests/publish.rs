//! The publisher against a real `nats-server -js` with the contract's topology: every kind in
//! both formats lands on `perf.raw.<kind>` with its id and content type and decodes to the same
//! event; publishing an event twice stores it once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::Duration;

use async_nats::jetstream::{self, Context};
use modelperf_bus::{BusConfig, Topology, streams};
use modelperf_client::*;
use modelperf_testkit::NatsServer;

async fn setup() -> (NatsServer, async_nats::Client, Context) {
    let server = NatsServer::start().await.unwrap();
    let client = server.client().await.unwrap();
    let js = jetstream::new(client.clone());
    Topology::contract(&BusConfig::default(), 1).ensure(&js).await.unwrap();
    (server, client, js)
}

/// One event of every kind, linked by a task id, with the optional fields filled in.
fn every_kind(task: &str) -> Vec<Event> {
    let sonnet = "anthropic/claude-sonnet-4-5";
    let builders: Vec<Result<Event, ClientError>> = vec![
        EventBuilder::task_started()
            .queue_ms(42.5)
            .user_id("u-1842")
            .session_id("s-77")
            .source("arbiter.orchestrator")
            .task_id(task)
            .build(),
        EventBuilder::routing_decision("bandit", "coder-3", sonnet, 3.2)
            .candidate("coder-3", sonnet, 1.42, 0.7)
            .candidate("coder-1", ModelRef::new("openai", "gpt-4.1"), 1.18, None)
            .probability(0.7)
            .feature("prompt_tokens_est", 12_000)
            .feature("repo_language", "rust")
            .source("arbiter.router")
            .task_id(task)
            .tenant("acme")
            .build(),
        EventBuilder::thinking_budget(4096, 400, false)
            .complexity("medium")
            .source("arbiter.thinking")
            .task_id(task)
            .build(),
        EventBuilder::task_completed(11_750.0, true)
            .ttft_ms(820.5)
            .token_usage(Tokens {
                input: 12_400,
                output: 1_830,
                cached_input: Some(8_000),
                cache_write: Some(1_200),
                reasoning: Some(400),
            })
            .retries(0)
            .tool_calls(6)
            .cpu_ms(340.0)
            .memory_mb(212.5)
            .source("arbiter.orchestrator")
            .task_id(task)
            .agent_id("coder-3")
            .model(ModelRef::new("anthropic", "claude-sonnet-4-5").with_version("20250929"))
            .task_type("code_edit")
            .attr("region", "eu-west-1")
            .attr("attempt", 1)
            .attr("streaming", true)
            .attr("temperature", 0.2)
            .build(),
        EventBuilder::judgment(sonnet, "openai/gpt-4.1-mini", 0.86)
            .criterion("correctness", 0.9)
            .criterion("style", 0.75)
            .confidence(0.8)
            .passed(true)
            .tokens(3_100, 220)
            .source("arbiter.judge")
            .task_id(task)
            .benchmark("r1", "case-17")
            .build(),
        EventBuilder::minimality(14, 3, 2, 0.92).source("arbiter.diff_evaluator").task_id(task).build(),
        EventBuilder::validation(false, 0.7, 18.0)
            .violation("medium", Some("no-secrets"), "output quotes a token")
            .violation("low", None, "comment is long")
            .source("arbiter.validator")
            .task_id(task)
            .build(),
        EventBuilder::agent_status(AgentState::Available)
            .previous(AgentState::Registered)
            .reason("warm-up finished")
            .capabilities(["code_edit", "summarize"])
            .source("arbiter.registry")
            .agent_id("coder-3")
            .build(),
        EventBuilder::custom()
            .metric("cache_hit_ratio", 0.83)
            .metric("evictions", 12.0)
            .source("arbiter.cache")
            .build(),
    ];
    let events: Vec<Event> = builders.into_iter().map(Result::unwrap).collect();
    let mut kinds: Vec<Kind> = events.iter().map(Event::kind).collect();
    kinds.sort();
    assert_eq!(kinds, Kind::ALL.to_vec(), "one event of every kind");
    events
}

/// Reads a stored message back by sequence (`PERF_RAW` is a work queue with the collector's
/// consumer on it, so direct reads by sequence rather than a second consumer).
async fn read_back(js: &Context, receipt: &PublishReceipt) -> (Event, async_nats::jetstream::message::StreamMessage) {
    let stream = js.get_stream(streams::RAW).await.unwrap();
    let msg = stream.get_raw_message(receipt.sequence).await.unwrap();
    let content_type = msg.headers.get(CONTENT_TYPE).map(|v| v.as_str().to_owned());
    let event = modelperf_schema::decode_event(&msg.payload, content_type.as_deref()).unwrap();
    (event, msg)
}

async fn stored(js: &Context) -> u64 {
    js.get_stream(streams::RAW).await.unwrap().info().await.unwrap().state.messages
}

#[tokio::test]
async fn every_kind_round_trips_in_both_formats() {
    let (_server, client, js) = setup().await;
    for (format, content_type) in [(Format::MessagePack, CONTENT_TYPE_MSGPACK), (Format::Json, CONTENT_TYPE_JSON)] {
        let publisher = Publisher::new(client.clone(), "test.client").format(format);
        let events = every_kind(&format!("task-{format:?}"));
        let receipts = publisher.publish_all(&events).await.unwrap();
        assert_eq!(receipts.len(), events.len());
        for (event, receipt) in events.iter().zip(&receipts) {
            assert_eq!(receipt.stream, streams::RAW);
            assert!(!receipt.duplicate);
            assert_eq!(Some(&receipt.id), event.id.as_ref());
            let (decoded, msg) = read_back(&js, receipt).await;
            assert_eq!(msg.subject.as_str(), format!("perf.raw.{}", event.kind()));
            assert_eq!(msg.headers.get("Nats-Msg-Id").unwrap().as_str(), receipt.id);
            assert_eq!(msg.headers.get(CONTENT_TYPE).unwrap().as_str(), content_type);
            assert_eq!(&decoded, event, "{format:?} {}", event.kind());
        }
    }
    assert_eq!(stored(&js).await, 2 * Kind::ALL.len() as u64);
}

#[tokio::test]
async fn the_same_event_twice_is_stored_once() {
    let (_server, client, js) = setup().await;
    let publisher = Publisher::new(client, "test.client");
    let event = EventBuilder::task_completed(900.0, true).source("test.client").task_id("t-dup").build().unwrap();
    let first = publisher.publish(&event).await.unwrap();
    let second = publisher.publish(&event).await.unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate, "the server recognised the id");
    assert_eq!(first.sequence, second.sequence);
    // In one pipelined batch as well: the second copy is a duplicate of the first.
    let other = EventBuilder::custom().metric("x", 1.0).source("test.client").build().unwrap();
    let receipts = publisher.publish_all([&other, &other, &event]).await.unwrap();
    assert_eq!(receipts.iter().map(|r| r.duplicate).collect::<Vec<_>>(), [false, true, true]);
    assert_eq!(stored(&js).await, 2);
}

#[tokio::test]
async fn events_without_id_or_source_are_completed_by_the_publisher() {
    let (_server, client, js) = setup().await;
    let publisher = Publisher::new(client, "arbiter.orchestrator").format(Format::Json);
    let bare = Event::new(chrono::Utc::now(), "", Data::TaskStarted(Default::default()));
    let receipt = publisher.publish(&bare).await.unwrap();
    let (decoded, _) = read_back(&js, &receipt).await;
    assert_eq!(decoded.id.as_deref(), Some(receipt.id.as_str()));
    assert_eq!(decoded.source, "arbiter.orchestrator");
    let emitted = publisher.emit(EventBuilder::minimality(1, 0, 1, 1.0).task_id("t-emit")).await.unwrap();
    let (decoded, _) = read_back(&js, &emitted).await;
    assert_eq!((decoded.source.as_str(), decoded.task_id.as_deref()), ("arbiter.orchestrator", Some("t-emit")));
}

#[tokio::test]
async fn invalid_events_are_never_sent() {
    let (_server, client, js) = setup().await;
    let publisher = Publisher::new(client, "test.client");
    let mut event = EventBuilder::judgment("openai/gpt-4.1", "openai/gpt-4.1-mini", 0.5).source("s").build().unwrap();
    event.model = None; // the judged model is required on a judgment
    let good = EventBuilder::custom().source("s").build().unwrap();
    let err = publisher.publish_all([&good, &event]).await.unwrap_err();
    assert_eq!(err.field(), Some("model"));
    assert!(!err.is_retryable());
    assert_eq!(stored(&js).await, 0, "nothing of a batch with an invalid event is sent");
}

#[tokio::test]
async fn a_missing_stream_is_a_retryable_failure_and_a_retry_stores_once() {
    let server = NatsServer::start().await.unwrap();
    let client = server.client().await.unwrap();
    let publisher = Publisher::new(client.clone(), "test.client").retry(2, Duration::from_millis(10));
    let event = EventBuilder::task_started().source("test.client").build().unwrap();
    let err = publisher.publish(&event).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(err.event_id(), event.id.as_deref());
    // Once the topology exists, the caller's own retry of the same event succeeds.
    let js = jetstream::new(client);
    Topology::contract(&BusConfig::default(), 1).ensure(&js).await.unwrap();
    let receipt = publisher.publish(&event).await.unwrap();
    assert!(!receipt.duplicate);
    assert!(publisher.publish(&event).await.unwrap().duplicate);
    assert_eq!(stored(&js).await, 1);
}

#[tokio::test]
async fn a_batch_larger_than_the_pipeline_is_stored_in_order() {
    let (_server, client, js) = setup().await;
    let publisher = Publisher::new(client, "test.client").max_in_flight(4);
    let events: Vec<Event> = (0..50)
        .map(|i| {
            EventBuilder::custom()
                .metric("i", f64::from(i))
                .source("test.client")
                .task_id(format!("t-{i}"))
                .build()
                .unwrap()
        })
        .collect();
    let receipts = publisher.publish_all(&events).await.unwrap();
    assert_eq!(receipts.iter().map(|r| r.sequence).collect::<Vec<_>>(), (1..=50).collect::<Vec<u64>>());
    assert!(receipts.iter().zip(&events).all(|(r, e)| Some(&r.id) == e.id.as_ref() && !r.duplicate));
    assert_eq!(stored(&js).await, 50);
}
