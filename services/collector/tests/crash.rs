//! The collector process under `kill -9`, while producers keep publishing: the clean stream must
//! hold exactly the published ids — none lost, none twice.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream::{self, Context};
use modelperf_testkit::{NatsServer, eventually, project_root, read_stream};

/// The collector process; killed on drop so a failing test leaves nothing behind.
struct Proc(Child);

impl Proc {
    fn kill9(&mut self) {
        self.0.kill().unwrap(); // SIGKILL
        self.0.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn collector(url: &str) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_modelperf-collector"))
        .env("MODELPERF_NATS__URL", url)
        .env("MODELPERF_HTTP__LISTEN", "127.0.0.1:0")
        .env("MODELPERF_BUS__ACK_WAIT", "2s")
        .env("MODELPERF_BUS__FETCH_BATCH", "200")
        .env("MODELPERF_COLLECTOR__PRICES_FILE", project_root().join("deploy/prices.toml"))
        .env("MODELPERF_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Proc(child)
}

async fn count(js: &Context, stream: &str) -> u64 {
    js.get_stream(stream).await.unwrap().info().await.unwrap().state.messages
}

fn event(i: u64) -> Vec<u8> {
    let ts = modelperf_schema::format_ts(&chrono::Utc::now());
    serde_json::to_vec(&serde_json::json!({"v": 1, "id": format!("crash-{i}"), "kind": "task_completed", "ts": ts,
        "source": "test", "task_id": format!("task-{}", i / 2), "model": "openai/gpt-4o", "task_type": "code_edit",
        "data": {"latency_ms": 100.0 + i as f64, "success": !i.is_multiple_of(7), "tokens": {"input": 100, "output": 10}}}))
    .unwrap()
}

#[tokio::test]
async fn a_collector_killed_twice_under_load_loses_and_duplicates_nothing() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream::new(server.client().await.unwrap());
    let bus = modelperf_bus::BusConfig::default();
    modelperf_bus::Topology::contract(&bus, 1).ensure(&js).await.unwrap();
    const N: u64 = 30_000;
    let producer = {
        let js = js.clone();
        tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0..N {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("raw-{i}").as_str());
                acks.push(js.publish_with_headers("perf.raw.task_completed", headers, event(i).into()).await.unwrap());
                if i % 500 == 499 {
                    for a in acks.drain(..) {
                        a.await.unwrap();
                    }
                    // About 5 000 events/s, so the kills land while producers are publishing.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            for a in acks {
                a.await.unwrap();
            }
        })
    };
    let mut c = collector(server.url());
    for threshold in [3_000, 12_000] {
        eventually(Duration::from_secs(60), || async { (count(&js, "PERF_EVENTS").await >= threshold).then_some(()) })
            .await
            .unwrap();
        c.kill9();
        c = collector(server.url());
    }
    producer.await.unwrap();
    eventually(Duration::from_secs(120), || async {
        (count(&js, "PERF_RAW").await == 0 && count(&js, "PERF_EVENTS").await >= N).then_some(())
    })
    .await
    .unwrap();
    c.kill9();

    let msgs = read_stream(&js, "PERF_EVENTS", None).await.unwrap();
    let ids: Vec<String> =
        msgs.iter().map(|m| modelperf_schema::decode_unvalidated(&m.payload, None).unwrap().id.unwrap()).collect();
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(ids.len() as u64, N, "every published event exactly once");
    assert_eq!(distinct.len() as u64, N);
    for i in 0..N {
        assert!(distinct.contains(&format!("crash-{i}")), "event {i} lost");
    }
    assert_eq!(count(&js, "PERF_DLQ").await, 0);
}

#[tokio::test]
async fn sigterm_drains_in_flight_work_and_exits_zero() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream::new(server.client().await.unwrap());
    modelperf_bus::Topology::contract(&modelperf_bus::BusConfig::default(), 1).ensure(&js).await.unwrap();
    const N: u64 = 20_000;
    let mut acks = Vec::new();
    for i in 0..N {
        acks.push(js.publish("perf.raw.task_completed", event(i).into()).await.unwrap());
        if acks.len() == 1000 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks {
        a.await.unwrap();
    }
    let mut c = collector(server.url());
    eventually(Duration::from_secs(60), || async { (count(&js, "PERF_EVENTS").await >= 2_000).then_some(()) })
        .await
        .unwrap();
    let status = Command::new("kill").args(["-TERM", &c.0.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exited = eventually(Duration::from_secs(30), || {
        let r = c.0.try_wait().unwrap();
        async move { r }
    })
    .await
    .expect("the collector exits within its grace period");
    assert!(exited.success(), "exit status {exited:?}");
    // Nothing it was handed is left waiting for ack_wait (2 s). The last acks left with the
    // drained connection; the server may take a moment to apply them, so look for up to 1 s.
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        js.get_stream("PERF_RAW").await.unwrap().get_consumer("collector").await.unwrap();
    let started = std::time::Instant::now();
    let mut info = consumer.info().await.unwrap().clone();
    while info.num_ack_pending > 0 && started.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        info = consumer.info().await.unwrap().clone();
    }
    assert_eq!(info.num_ack_pending, 0, "{info:?}");
    let (raw, clean) = (count(&js, "PERF_RAW").await, count(&js, "PERF_EVENTS").await);
    assert_eq!(raw + clean, N, "every event is either still raw or clean: {raw} + {clean}");
    assert!(raw > 0, "stopped before the end, so the drain was tested");
    // A new collector finishes the rest.
    let mut c = collector(server.url());
    eventually(Duration::from_secs(60), || async { (count(&js, "PERF_EVENTS").await == N).then_some(()) })
        .await
        .unwrap();
    c.kill9();
}
