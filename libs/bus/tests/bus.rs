//! The bus against a real `nats-server -js`: topology, runner (retry, dead letters), leases and
//! checkpoints. Cross-process crash tests (`kill -9`) live in the e2e crate.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, Context};
use futures::StreamExt;
use modelperf_bus::*;
use modelperf_schema::{ErrorCode, dlq};
use modelperf_testkit::{NatsServer, eventually};
use tokio_util::sync::CancellationToken;

fn bus() -> BusConfig {
    BusConfig {
        partitions: 2,
        ack_wait: Duration::from_secs(2),
        fetch_batch: 50,
        max_deliver: 5,
        lease_ttl: Duration::from_secs(2),
        checkpoint_interval: Duration::from_millis(200),
        ..BusConfig::default()
    }
}

async fn setup() -> (NatsServer, Context, Topology) {
    let server = NatsServer::start().await.unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client);
    let topology = Topology::contract(&bus(), 1);
    topology.ensure(&js).await.unwrap();
    (server, js, topology)
}

/// Reads every message of a subject filter from the start.
async fn read_all(js: &Context, stream: &str, filter: &str) -> Vec<async_nats::jetstream::Message> {
    let stream = js.get_stream(stream).await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: filter.into(),
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut batch = consumer.fetch().max_messages(10_000).expires(Duration::from_millis(500)).messages().await.unwrap();
    while let Some(Ok(m)) = batch.next().await {
        out.push(m);
    }
    out
}

#[tokio::test]
async fn ensuring_twice_is_idempotent_and_conflicts_are_reported() {
    let (server, js, topology) = setup().await;
    topology.ensure(&js).await.unwrap();

    // A stream created by hand with the wrong retention is reported, not changed.
    let client = async_nats::connect(server.url()).await.unwrap();
    let js2 = jetstream::new(client);
    js2.delete_stream(streams::OUTBOX).await.unwrap();
    js2.create_stream(jetstream::stream::Config {
        name: streams::OUTBOX.into(),
        subjects: vec!["perf.outbox.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let err = topology.ensure(&js).await.unwrap_err();
    assert!(matches!(&err, BusError::Conflict { field, .. } if field == "retention"), "{err}");
    assert_eq!(err.class(), ErrorClass::Fatal);
    let info = js.get_stream(streams::OUTBOX).await.unwrap().info().await.unwrap().config.retention;
    assert_eq!(info, jetstream::stream::RetentionPolicy::Limits, "the stream was changed");
}

/// Republishes each raw message to `perf.events.custom.0`; payload `flaky` fails its first two
/// deliveries, payload `poison` is permanently bad.
struct Echo {
    attempts: Mutex<Vec<(String, Instant)>>,
}

impl Handler for Echo {
    fn handle(&self, msg: &Incoming<'_>) -> Result<Vec<Outgoing>, Failure> {
        let body = String::from_utf8_lossy(msg.payload).into_owned();
        self.attempts.lock().unwrap().push((body.clone(), Instant::now()));
        match body.as_str() {
            "flaky" if msg.delivered < 3 => Err(Failure::Retry("downstream busy".into())),
            "poison" => Err(Failure::Terminate { code: ErrorCode::Schema, reason: "data.latency_ms: missing".into() }),
            "always-busy" => Err(Failure::Retry("never gets better".into())),
            _ => Ok(vec![Outgoing::new("perf.events.custom.0", format!("echo:{}", msg.seq), msg.payload.to_vec())]),
        }
    }
}

#[tokio::test]
async fn retries_back_off_and_permanent_failures_are_dead_lettered_once() {
    let (_server, js, topology) = setup().await;
    for body in ["ok-1", "flaky", "poison", "ok-2", "always-busy"] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(TRACEPARENT, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        js.publish_with_headers("perf.raw.custom", headers, body.into()).await.unwrap().await.unwrap();
    }
    let consumer = js.get_stream(streams::RAW).await.unwrap().get_consumer("collector").await.unwrap();
    let handler = std::sync::Arc::new(Echo { attempts: Mutex::default() });
    let mut cfg = RunnerConfig::new("collector", &topology.bus);
    cfg.base_backoff = Duration::from_millis(200);
    let stop = CancellationToken::new();
    let runner = run(js.clone(), consumer, handler.clone(), &cfg, stop.clone());
    let check = async {
        eventually(Duration::from_secs(30), || async {
            let dl = read_all(&js, streams::DLQ, "perf.dlq.collector").await;
            (dl.len() == 2).then_some(dl)
        })
        .await
        .unwrap()
    };
    let (stats, dead) = tokio::join!(runner, async {
        let dead = check.await;
        stop.cancel();
        dead
    });
    let stats = stats.unwrap();

    let attempts = handler.attempts.lock().unwrap().clone();
    let flaky: Vec<Instant> = attempts.iter().filter(|(b, _)| b == "flaky").map(|(_, t)| *t).collect();
    assert_eq!(flaky.len(), 3, "flaky should succeed on its third delivery");
    assert!(flaky[1] - flaky[0] >= Duration::from_millis(150), "no backoff: {:?}", flaky[1] - flaky[0]);
    assert!(flaky[2] - flaky[1] >= Duration::from_millis(300), "backoff did not grow: {:?}", flaky[2] - flaky[1]);
    assert_eq!(attempts.iter().filter(|(b, _)| b == "always-busy").count(), 5, "max_deliver attempts");

    let events = read_all(&js, streams::EVENTS, "perf.events.>").await;
    let bodies: Vec<_> = events.iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect();
    assert_eq!(bodies.len(), 3, "{bodies:?}");
    for m in &events {
        assert_eq!(
            m.headers.as_ref().unwrap().get(TRACEPARENT).unwrap().as_str(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }

    let codes: Vec<_> =
        dead.iter().map(|m| m.headers.as_ref().unwrap().get(dlq::ERROR).unwrap().as_str().to_owned()).collect();
    assert!(codes.contains(&"schema".to_owned()) && codes.contains(&"retries_exhausted".to_owned()), "{codes:?}");
    let poison = dead.iter().find(|m| &m.payload[..] == b"poison").unwrap();
    let h = poison.headers.as_ref().unwrap();
    assert_eq!(h.get(dlq::REASON).unwrap().as_str(), "data.latency_ms: missing");
    assert_eq!(h.get(dlq::ORIGINAL_SUBJECT).unwrap().as_str(), "perf.raw.custom");
    assert_eq!(h.get(dlq::ORIGINAL_SEQ).unwrap().as_str(), "3");
    assert_eq!(h.get("Nats-Msg-Id").unwrap().as_str(), "dlq:PERF_RAW:3");
    assert_eq!((stats.dead_lettered, stats.acked), (2, 3));

    // The work queue is empty: everything was acked or terminated.
    let raw = js.get_stream(streams::RAW).await.unwrap().info().await.unwrap().state.messages;
    assert_eq!(raw, 0);
}

#[tokio::test]
async fn one_lease_holder_at_a_time_and_takeover_within_ttl() {
    let (_server, js, topology) = setup().await;
    let a = Leases::open(&js, topology.bus.lease_ttl, "instance-a").await.unwrap();
    let b = Leases::open(&js, topology.bus.lease_ttl, "instance-b").await.unwrap();
    let lease_a = a.try_acquire("aggregator.p0").await.unwrap().expect("a gets the free lease");
    assert!(b.try_acquire("aggregator.p0").await.unwrap().is_none());
    // Renewals keep it past several TTLs.
    tokio::time::sleep(topology.bus.lease_ttl * 2).await;
    assert!(lease_a.is_held());
    assert_eq!(b.holder("aggregator.p0").await.unwrap().as_deref(), Some("instance-a"));
    assert_eq!(a.held(), vec!["aggregator.p0".to_owned()]);

    // A dies without releasing: b takes over within one TTL (plus its polling period).
    drop(lease_a);
    let died = Instant::now();
    let stop = CancellationToken::new();
    let lease_b = b.acquire("aggregator.p0", &stop).await.unwrap().unwrap();
    let takeover = died.elapsed();
    assert!(
        takeover <= topology.bus.lease_ttl + topology.bus.lease_ttl / 3 + Duration::from_millis(500),
        "{takeover:?}"
    );

    // Releasing hands over at once.
    lease_b.release().await;
    assert!(a.try_acquire("aggregator.p0").await.unwrap().is_some());
}

#[tokio::test]
async fn a_stolen_lease_is_reported_lost() {
    let (_server, js, topology) = setup().await;
    let a = Leases::open(&js, topology.bus.lease_ttl, "instance-a").await.unwrap();
    let lease = a.try_acquire("monitor").await.unwrap().unwrap();
    // Someone overwrites the key (as after a long pause of the holder).
    let kv = js.get_key_value(buckets::LEASES).await.unwrap();
    kv.put("monitor", "intruder".into()).await.unwrap();
    let lost = lease.lost();
    tokio::time::timeout(topology.bus.lease_ttl, lost.cancelled()).await.expect("loss noticed within a TTL");
}

/// Sums the numbers it is given; its checkpoint is the sum.
#[derive(Default)]
struct Summer {
    sum: u64,
    applied: u64,
}

impl PartitionOwner for Summer {
    fn apply(&mut self, msg: &Incoming<'_>) -> Result<Vec<Outgoing>, Failure> {
        self.sum += std::str::from_utf8(msg.payload).unwrap().parse::<u64>().unwrap();
        self.applied += 1;
        Ok(Vec::new())
    }

    fn checkpoint(&self, applied_seq: u64) -> Checkpoint {
        Checkpoint { applied_seq, replay_from: None, state: self.sum.to_be_bytes().to_vec() }
    }
}

#[tokio::test]
async fn an_owner_checkpoints_acks_and_resumes_where_it_stopped() {
    let (_server, js, topology) = setup().await;
    for i in 1..=100u64 {
        js.publish("perf.events.custom.0", i.to_string().into()).await.unwrap().await.unwrap();
    }
    let cfg = OwnerConfig {
        stage: "test".into(),
        fetch_batch: 10,
        checkpoint_interval: Duration::from_millis(100),
        max_in_flight: 10_000,
    };
    let (mut store, cp) = CheckpointStore::open(&js, "test.p0").await.unwrap();
    assert!(cp.is_none());
    let consumer = open_at(&js, &topology, "aggregator-p0", 1).await.unwrap();
    let mut owner = Summer::default();
    let stop = CancellationToken::new();
    let applied = AtomicU64::new(0);
    let (res, ()) = tokio::join!(
        run_owner(&js, consumer, &mut store, &mut owner, 0, &cfg, stop.clone(), CancellationToken::new()),
        async {
            let consumer = js.get_stream(streams::EVENTS).await.unwrap();
            eventually(Duration::from_secs(10), || async {
                let info = consumer.consumer_info("aggregator-p0").await.ok()?;
                applied.store(info.ack_floor.stream_sequence, Ordering::Relaxed);
                (info.ack_floor.stream_sequence == 100).then_some(())
            })
            .await
            .unwrap();
            stop.cancel();
        }
    );
    assert_eq!(res.unwrap(), 100);
    assert_eq!(owner.sum, 5050);

    // More events arrive; a new owner resumes from the checkpoint and applies only those.
    for i in 101..=110u64 {
        js.publish("perf.events.custom.0", i.to_string().into()).await.unwrap().await.unwrap();
    }
    let (mut store, cp) = CheckpointStore::open(&js, "test.p0").await.unwrap();
    let cp = cp.unwrap();
    assert_eq!(cp.applied_seq, 100);
    let mut owner = Summer { sum: u64::from_be_bytes(cp.state.try_into().unwrap()), applied: 0 };
    let consumer = open_at(&js, &topology, "aggregator-p0", cp.applied_seq + 1).await.unwrap();
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        stopper.cancel();
    });
    run_owner(&js, consumer, &mut store, &mut owner, cp.applied_seq, &cfg, stop, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(owner.applied, 10);
    assert_eq!(owner.sum, (1..=110).sum::<u64>());

    // A stale owner (older revision) cannot overwrite the checkpoint.
    let (mut stale, _) = CheckpointStore::open(&js, "test.p0").await.unwrap();
    store.save(&Checkpoint { applied_seq: 111, ..Default::default() }).await.unwrap();
    let err = stale.save(&Checkpoint { applied_seq: 5, ..Default::default() }).await.unwrap_err();
    assert!(matches!(err, BusError::CheckpointConflict(_)), "{err}");
}
