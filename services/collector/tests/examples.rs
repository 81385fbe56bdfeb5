//! The producers of `examples/` (Python with nats-py, TypeScript with nats.js, and the legacy
//! adapter) publish to a real server; every event they report must arrive clean.
//! `examples/setup.sh` (run by `make test`) installs their packages.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream;
use modelperf_collector::{App, Config};
use modelperf_testkit::{NatsServer, eventually, project_root, read_stream};

fn run_example(program: &str, script: &str, url: &str) -> Vec<String> {
    let root = project_root();
    let needs = if program == "node" { "examples/typescript/node_modules" } else { ".tools/venv" };
    assert!(root.join(needs).exists(), "{needs} is missing: run examples/setup.sh (make test does)");
    let out = Command::new(program)
        .arg(root.join(script))
        .args(["--url", url, "--tasks", "4"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(out.status.success(), "{script} failed: {}", String::from_utf8_lossy(&out.stderr));
    let ids: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect();
    assert!(ids.len() >= 8, "{script} published only {ids:?}");
    ids
}

#[tokio::test]
async fn example_producers_publish_events_that_arrive_clean() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream::new(server.client().await.unwrap());
    let mut config = Config::default();
    config.nats.url = server.url().to_owned();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.collector.prices_file = project_root().join("deploy/prices.toml");
    let prometheus = modelperf_telemetry::init("collector-test").unwrap().prometheus;
    let collector = modelperf_collector::collector(&config).unwrap();
    let app = App::build(config, collector, prometheus).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));

    let mut expected: HashSet<String> = HashSet::new();
    expected.extend(run_example("python3", "examples/python/producer.py", server.url()));
    expected.extend(run_example("node", "examples/typescript/producer.mjs", server.url()));
    // The adapter prints message ids; events without a body id get an id derived from them.
    for msg_id in run_example("node", "examples/typescript/legacy-adapter.mjs", server.url()) {
        if msg_id.starts_with("dc-") {
            expected.insert(msg_id);
        } else {
            expected.insert(modelperf_schema::id::derive_id(Some(&msg_id), "", 0));
        }
    }
    let clean = eventually(Duration::from_secs(30), || async {
        let msgs = read_stream(&js, "PERF_EVENTS", None).await.ok()?;
        let ids: HashSet<String> =
            msgs.iter().filter_map(|m| modelperf_schema::decode_unvalidated(&m.payload, None).ok()?.id).collect();
        (ids.len() >= expected.len()).then_some(ids)
    })
    .await
    .unwrap();
    assert_eq!(clean, expected, "every reported event arrives clean, and nothing else");
    let dead = read_stream(&js, "PERF_DLQ", None).await.unwrap();
    let reasons: Vec<String> = dead
        .iter()
        .map(|m| format!("{:?}", m.headers.as_ref().and_then(|h| h.get("Modelperf-Reason")).map(|v| v.as_str())))
        .collect();
    assert!(dead.is_empty(), "dead letters: {reasons:?}");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
