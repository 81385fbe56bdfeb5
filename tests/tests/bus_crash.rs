//! The bus under `kill -9`: a separate process (`bus-worker`) is killed mid-work and restarted;
//! the streams must hold exactly what was published — nothing lost, nothing twice.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, Context};
use futures::StreamExt;
use modelperf_bus::{BusConfig, Checkpoint, Topology, buckets, streams};
use modelperf_testkit::{NatsServer, eventually};

fn worker(url: &str, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_bus-worker"))
        .args(args)
        .env("MODELPERF_NATS__URL", url)
        .env("MODELPERF_BUS__ACK_WAIT", "2s")
        .env("MODELPERF_BUS__FETCH_BATCH", "100")
        .env("MODELPERF_BUS__LEASE_TTL", "2s")
        .env("MODELPERF_BUS__CHECKPOINT_INTERVAL", "100ms")
        .env("MODELPERF_BUS__PARTITIONS", "2")
        .env("MODELPERF_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn kill9(child: &mut Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

async fn setup() -> (NatsServer, Context) {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream::new(server.client().await.unwrap());
    let bus = BusConfig { partitions: 2, ack_wait: Duration::from_secs(2), fetch_batch: 100, ..BusConfig::default() };
    Topology::contract(&bus, 1).ensure(&js).await.unwrap();
    (server, js)
}

async fn count(js: &Context, stream: &str) -> u64 {
    js.get_stream(stream).await.unwrap().info().await.unwrap().state.messages
}

async fn payloads(js: &Context, stream: &str) -> Vec<String> {
    let consumer = js
        .get_stream(stream)
        .await
        .unwrap()
        .create_consumer(jetstream::consumer::pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut msgs = consumer.fetch().max_messages(100_000).expires(Duration::from_secs(1)).messages().await.unwrap();
    while let Some(Ok(m)) = msgs.next().await {
        out.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    out
}

async fn publish_raw(js: &Context, from: u64, to: u64) {
    let mut acks = Vec::new();
    for i in from..to {
        let msg =
            jetstream::message::PublishMessage::build().payload(i.to_string().into()).message_id(format!("m-{i}"));
        acks.push(js.send_publish("perf.raw.custom", msg).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
}

#[tokio::test]
async fn a_runner_killed_mid_batch_twice_loses_and_duplicates_nothing() {
    let (server, js) = setup().await;
    const N: u64 = 4000;
    publish_raw(&js, 0, N).await;
    for threshold in [600, 1800] {
        let mut w = worker(server.url(), &["echo", "w"]);
        eventually(Duration::from_secs(60), || async {
            (count(&js, streams::EVENTS).await >= threshold).then_some(())
        })
        .await
        .unwrap();
        kill9(&mut w);
    }
    let mut w = worker(server.url(), &["echo", "w"]);
    eventually(Duration::from_secs(90), || async {
        (count(&js, streams::RAW).await == 0 && count(&js, streams::EVENTS).await >= N).then_some(())
    })
    .await
    .unwrap();
    kill9(&mut w);
    let out = payloads(&js, streams::EVENTS).await;
    let distinct: HashSet<_> = out.iter().collect();
    assert_eq!(out.len() as u64, N, "every input exactly once in the output");
    assert_eq!(distinct.len() as u64, N);
    for i in 0..N {
        assert!(distinct.contains(&format!("w|{i}")), "input {i} lost");
    }
}

#[tokio::test]
async fn two_runners_contend_for_one_lease_and_the_survivor_takes_over() {
    let (server, js) = setup().await;
    let kv = js.get_key_value(buckets::LEASES).await.unwrap();
    let mut a = worker(server.url(), &["echo", "alpha", "--lease"]);
    eventually(Duration::from_secs(20), || async {
        let e = kv.get("aggregator.p0").await.ok()??;
        (&e[..] == b"alpha").then_some(())
    })
    .await
    .unwrap();
    let mut b = worker(server.url(), &["echo", "bravo", "--lease"]);

    // Traffic while both run: only the lease holder processes.
    publish_raw(&js, 0, 500).await;
    eventually(Duration::from_secs(30), || async { (count(&js, streams::EVENTS).await >= 500).then_some(()) })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = payloads(&js, streams::EVENTS).await;
    assert!(before.iter().all(|p| p.starts_with("alpha|")), "bravo processed while alpha held the lease");

    // Kill the holder: bravo takes over within the lease TTL (2 s) plus its polling period.
    kill9(&mut a);
    let killed = Instant::now();
    eventually(Duration::from_secs(10), || async {
        let e = kv.get("aggregator.p0").await.ok()??;
        (&e[..] == b"bravo").then_some(())
    })
    .await
    .unwrap();
    let takeover = killed.elapsed();
    assert!(takeover <= Duration::from_millis(2000 + 667 + 700), "takeover took {takeover:?}");
    publish_raw(&js, 500, 1000).await;
    eventually(Duration::from_secs(30), || async { (count(&js, streams::EVENTS).await >= 1000).then_some(()) })
        .await
        .unwrap();
    let after = payloads(&js, streams::EVENTS).await;
    assert_eq!(after.len(), 1000, "each input once");
    assert!(after[500..].iter().all(|p| p.starts_with("bravo|")));
    kill9(&mut b);
}

async fn checkpoint(js: &Context) -> Option<(u64, u64, u64)> {
    let kv = js.get_key_value(buckets::STATE).await.unwrap();
    let raw = kv.get("test.p0").await.ok()??;
    let cp: Checkpoint = rmp_serde::from_slice(&raw).unwrap();
    let sum = u64::from_be_bytes(cp.state[..8].try_into().unwrap());
    let n = u64::from_be_bytes(cp.state[8..16].try_into().unwrap());
    Some((cp.applied_seq, sum, n))
}

#[tokio::test]
async fn a_checkpointed_owner_killed_with_sigkill_resumes_without_reapplying() {
    let (server, js) = setup().await;
    const N: u64 = 6000;
    let mut acks = Vec::new();
    for i in 1..=N {
        acks.push(js.publish("perf.events.custom.0", i.to_string().into()).await.unwrap());
        // The context bounds unacknowledged publishes; settle them in chunks.
        if acks.len() == 1000 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks {
        a.await.unwrap();
    }
    for threshold in [1000, 3000] {
        let mut w = worker(server.url(), &["sum", "s"]);
        eventually(Duration::from_secs(60), || async {
            let (_, _, n) = checkpoint(&js).await?;
            (n >= threshold).then_some(())
        })
        .await
        .unwrap();
        kill9(&mut w);
    }
    let mut w = worker(server.url(), &["sum", "s"]);
    let (seq, sum, n) = eventually(Duration::from_secs(60), || async {
        let cp = checkpoint(&js).await?;
        (cp.2 >= N).then_some(cp)
    })
    .await
    .unwrap();
    // Let it idle past a few checkpoint intervals: nothing more may be applied.
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill9(&mut w);
    assert_eq!((seq, n), (N, N), "each message applied exactly once");
    assert_eq!(sum, N * (N + 1) / 2);
    assert_eq!(checkpoint(&js).await.unwrap(), (seq, sum, n));
}
