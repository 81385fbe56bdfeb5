//! Two monitor replicas: the one holding the lease `monitor` sends, the other waits; killed
//! with `kill -9`, the leader is replaced within the lease TTL by the standby, which carries on
//! from the checkpoint without paging again what was already delivered.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Feed, LATENCY_RULE, Recorder, Stack, spawn_binary};
use modelperf_schema::messages::AlertState;
use modelperf_testkit::eventually;

async fn holder(stack: &Stack) -> Option<String> {
    let kv = stack.js.get_key_value("modelperf_leases").await.unwrap();
    let entry = kv.entry("monitor").await.unwrap()?;
    (entry.operation == async_nats::jetstream::kv::Operation::Put)
        .then(|| String::from_utf8_lossy(&entry.value).into_owned())
}

fn per_key(rx: &Recorder) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in rx.requests("/hook") {
        *counts.entry(r.header("Idempotency-Key").unwrap().to_owned()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_replicas_sends_and_the_standby_takes_over_without_repaging() {
    let stack = Stack::start().await;
    let rx = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("alerts.toml");
    std::fs::write(&rules, LATENCY_RULE).unwrap();
    let config = dir.path().join("monitor.toml");
    std::fs::write(
        &config,
        format!(
            "[monitor.receivers.audit]\ntype = \"webhook\"\nurl = \"{}\"\nsecret = \"s\"\n\
             [[monitor.routes]]\nreceiver = \"audit\"\n",
            rx.url("/hook")
        ),
    )
    .unwrap();
    let ttl = Duration::from_secs(2);
    let replica = |name: &str| {
        let env = [("MODELPERF_CONFIG", config.display().to_string()), ("HOSTNAME", name.to_owned())];
        spawn_binary(stack.nats.url(), &rules, &env)
    };
    let mut replicas = BTreeMap::from([("replica-a", replica("replica-a")), ("replica-b", replica("replica-b"))]);
    let leader = eventually(Duration::from_secs(20), || holder(&stack)).await.expect("nobody took the lease");
    let leader_name = replicas.keys().copied().find(|n| leader.starts_with(&format!("{n}-"))).unwrap();

    let first = Feed::start(&stack.js, &["gpt-4o"]);
    let fired = eventually(Duration::from_secs(30), || async {
        let t = stack.transitions().await;
        (t.len() == 1 && per_key(&rx).len() == 1 && stack.outbox_len().await == 0).then_some(t)
    })
    .await
    .expect("the first alert was not delivered");
    assert_eq!(fired[0].state, AlertState::Firing);
    // A little longer with both replicas up: still one request per key (the standby sends nothing).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(per_key(&rx).values().all(|n| *n == 1), "{:?}", per_key(&rx));
    assert_eq!(holder(&stack).await.as_deref(), Some(leader.as_str()), "the lease stayed with one replica");

    let mut dead = replicas.remove(leader_name).unwrap();
    dead.kill().unwrap();
    dead.wait().unwrap();
    let killed_at = Instant::now();
    let successor = eventually(Duration::from_secs(20), || async { holder(&stack).await.filter(|h| *h != leader) })
        .await
        .expect("the standby never took over");
    let took = killed_at.elapsed();
    // The lease expires at most one TTL after its last renewal and the standby polls every
    // third of it; twice the TTL leaves room for a loaded machine.
    assert!(took <= 2 * ttl, "takeover took {took:?} with a {ttl:?} lease");
    eprintln!("takeover after {took:?} (lease TTL {ttl:?})");
    let standby = replicas.keys().next().copied().unwrap();
    assert!(successor.starts_with(&format!("{standby}-")));

    // The successor pages the new alert, resolves both, and never re-pages the first.
    let second = Feed::start(&stack.js, &["claude-sonnet-4"]);
    eventually(Duration::from_secs(30), || async { (stack.transitions().await.len() == 2).then_some(()) })
        .await
        .expect("the successor did not fire the second alert");
    first.clear();
    second.clear();
    let all = eventually(Duration::from_secs(30), || async {
        let t = stack.transitions().await;
        (t.len() == 4 && per_key(&rx).len() == 4 && stack.outbox_len().await == 0).then_some(t)
    })
    .await
    .expect("the successor did not resolve and deliver both");
    for (_, mut r) in replicas {
        r.kill().unwrap();
        r.wait().unwrap();
    }
    let firing: Vec<_> = all.iter().filter(|a| a.state == AlertState::Firing).collect();
    assert_eq!(firing.len(), 2, "{all:#?}");
    let counts = per_key(&rx);
    assert!(counts.values().all(|n| *n == 1), "a delivered alert was paged again: {counts:?}");
}
