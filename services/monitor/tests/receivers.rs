//! Direct receivers through the `PERF_OUTBOX` work queue, against a local HTTP receiver that
//! records every request: Slack's incoming-webhook message, PagerDuty Events API v2 triggers
//! and resolves keyed by the fingerprint, and the signed webhook with its `Idempotency-Key`.
//! A receiver down for 30 s gets every notification afterwards, in order; a monitor killed with
//! `kill -9` while a delivery is in flight loses nothing, and the repeat carries the same key.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Feed, LATENCY_RULE, Recorded, Recorder, Running, Stack, config, spawn_binary};
use hmac::{KeyInit, Mac};
use modelperf_monitor::config::{ReceiverConfig, RouteConfig};
use modelperf_schema::messages::{Alert, AlertState};
use modelperf_testkit::eventually;

const SECRET: &str = "webhook-secret";

/// Verifies `Modelperf-Signature-256` the way a receiver would: HMAC-SHA256 of the raw body.
fn signature_verifies(r: &Recorded) -> bool {
    let Some(sig) = r.header("Modelperf-Signature-256").and_then(|s| s.strip_prefix("sha256=")) else {
        return false;
    };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&r.body);
    mac.verify_slice(&hex::decode(sig).unwrap_or_default()).is_ok()
}

fn route(receiver: &str) -> RouteConfig {
    RouteConfig {
        receiver: receiver.into(),
        matchers: BTreeMap::new(),
        group_by: vec!["alertname".into()],
        repeat_interval: Duration::from_secs(3600),
    }
}

/// The idempotency keys every firing and resolution of `transitions` must reach a receiver with.
fn keys(transitions: &[Alert]) -> BTreeSet<String> {
    transitions
        .iter()
        .map(|a| {
            let state = if a.state == AlertState::Firing { "firing" } else { "resolved" };
            format!("{}:{state}-{}", a.fingerprint, a.starts_at.timestamp_millis())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_pagerduty_and_webhook_get_every_notification_after_a_30s_outage() {
    let stack = Stack::start().await;
    let mut rx = Recorder::start().await;
    let mut c = config(stack.nats.url());
    let m = &mut c.monitor;
    m.receivers.insert("chat".into(), ReceiverConfig::Slack { url: rx.url("/slack") });
    m.receivers.insert(
        "oncall".into(),
        ReceiverConfig::Pagerduty {
            routing_key: "R0UT1NGKEY".into(),
            url: rx.url("/pd"),
            client_url: Some("https://grafana.example".into()),
        },
    );
    m.receivers.insert("audit".into(), ReceiverConfig::Webhook { url: rx.url("/hook"), secret: SECRET.into() });
    m.routes = vec![route("chat"), route("oncall"), route("audit")];
    let monitor = Running::start(c, LATENCY_RULE).await;

    // The receivers go down before anything fires; both models fire, then clear, while down.
    rx.down().await;
    let down_at = std::time::Instant::now();
    let feed = Feed::start(&stack.js, &["gpt-4o", "claude-sonnet-4"]);
    eventually(Duration::from_secs(20), || async { (stack.transitions().await.len() == 2).then_some(()) })
        .await
        .expect("both alerts fire");
    feed.clear();
    eventually(Duration::from_secs(20), || async { (stack.transitions().await.len() == 4).then_some(()) })
        .await
        .expect("both alerts resolve");
    drop(feed);
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(down_at.elapsed())).await; // the rest of the outage
    assert!(stack.outbox_len().await > 0, "the deliveries wait in the outbox");
    rx.up().await;

    let transitions = stack.transitions().await;
    let want = keys(&transitions);
    let fingerprints: BTreeSet<&str> = transitions.iter().map(|a| a.fingerprint.as_str()).collect();
    eventually(Duration::from_secs(30), || async {
        let hooks: BTreeSet<String> =
            rx.requests("/hook").iter().filter_map(|r| r.header("Idempotency-Key").map(str::to_owned)).collect();
        let pd = rx.requests("/pd").len();
        let slack_alerts: usize =
            rx.requests("/slack").iter().map(|r| r.json()["blocks"].as_array().unwrap().len() - 1).sum();
        (hooks == want && pd >= 4 && slack_alerts >= 4).then_some(())
    })
    .await
    .expect("not every notification arrived after the outage");
    eventually(Duration::from_secs(10), || async { (stack.outbox_len().await == 0).then_some(()) })
        .await
        .expect("the outbox drains once delivered");

    // Webhook: signed, keyed, one alert transition per request, firing before resolved.
    let hooks = rx.requests("/hook");
    for r in &hooks {
        assert!(signature_verifies(r), "the signature does not verify: {:?}", r.headers);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let body = r.json();
        assert_eq!(body["idempotency_key"].as_str(), r.header("Idempotency-Key"));
        assert_eq!(body["receiver"], "audit");
        assert_eq!(body["alert"]["labels"]["alertname"], "LatencyHigh");
    }
    for fp in &fingerprints {
        let order: Vec<String> = hooks
            .iter()
            .map(|r| r.json())
            .filter(|b| b["alert"]["fingerprint"] == *fp)
            .map(|b| b["status"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(order.first().map(String::as_str), Some("firing"), "{fp}: {order:?}");
        assert_eq!(order.last().map(String::as_str), Some("resolved"), "{fp}: {order:?}");
    }
    let mut tampered = hooks[0].clone();
    tampered.body.push(b' ');
    assert!(!signature_verifies(&tampered), "a changed body must not verify");

    // PagerDuty: a trigger then a resolve per alert, dedup_key = the fingerprint.
    let pd: Vec<_> = rx.requests("/pd").iter().map(Recorded::json).collect();
    for fp in &fingerprints {
        let actions: Vec<&str> =
            pd.iter().filter(|e| e["dedup_key"] == *fp).map(|e| e["event_action"].as_str().unwrap()).collect();
        assert_eq!(actions, ["trigger", "resolve"], "{fp}");
    }
    let trigger = pd.iter().find(|e| e["event_action"] == "trigger").unwrap();
    assert_eq!(trigger["routing_key"], "R0UT1NGKEY");
    assert_eq!(trigger["payload"]["severity"], "critical");
    assert_eq!(trigger["payload"]["class"], "LatencyHigh");
    assert!(trigger["payload"]["summary"].as_str().unwrap().starts_with("p95 of "));
    assert!(trigger["payload"]["source"].as_str().unwrap().starts_with("openai/"));
    assert!(trigger["payload"]["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(trigger["client_url"], "https://grafana.example");
    assert_eq!(trigger["links"][0]["href"], "https://runbooks.example/latency");

    // Slack: messages with text and mrkdwn blocks; every alert told firing, then resolved.
    let slack: Vec<_> = rx.requests("/slack").iter().map(Recorded::json).collect();
    for msg in &slack {
        assert!(msg["text"].as_str().unwrap().contains("LatencyHigh"), "{msg}");
        assert_eq!(msg["blocks"][0]["type"], "section");
    }
    let texts: Vec<String> = slack.iter().map(|m| m["text"].as_str().unwrap().to_owned()).collect();
    assert!(texts.first().unwrap().contains("FIRING"), "{texts:?}");
    assert!(texts.last().unwrap().contains("RESOLVED"), "{texts:?}");
    monitor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_mid_delivery_loses_nothing_and_the_repeat_has_the_same_key() {
    let stack = Stack::start().await;
    let rx = Recorder::start().await;
    // Every request is recorded at once but answered only after 4 s: the monitor is killed
    // while the first one is in flight.
    rx.delay_ms.store(4_000, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("alerts.toml");
    std::fs::write(&rules, LATENCY_RULE).unwrap();
    let config = dir.path().join("monitor.toml");
    std::fs::write(
        &config,
        format!(
            "[monitor.receivers.audit]\ntype = \"webhook\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n\
             [[monitor.routes]]\nreceiver = \"audit\"\n",
            rx.url("/hook")
        ),
    )
    .unwrap();
    let env = [("MODELPERF_CONFIG", config.display().to_string())];
    let mut monitor = spawn_binary(stack.nats.url(), &rules, &env);
    let feed = Feed::start(&stack.js, &["gpt-4o"]);
    eventually(Duration::from_secs(30), || async { (!rx.requests("/hook").is_empty()).then_some(()) })
        .await
        .expect("the first delivery never started");
    monitor.kill().unwrap(); // SIGKILL, mid-delivery
    monitor.wait().unwrap();
    let in_flight = rx.requests("/hook")[0].header("Idempotency-Key").unwrap().to_owned();
    rx.delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    feed.clear();

    let mut monitor = spawn_binary(stack.nats.url(), &rules, &env);
    let transitions = eventually(Duration::from_secs(30), || async {
        let t = stack.transitions().await;
        (t.len() == 2).then_some(t)
    })
    .await
    .expect("the restarted monitor did not resolve the alert");
    let want = keys(&transitions);
    eventually(Duration::from_secs(30), || async {
        let got: BTreeSet<String> =
            rx.requests("/hook").iter().filter_map(|r| r.header("Idempotency-Key").map(str::to_owned)).collect();
        (got == want && stack.outbox_len().await == 0).then_some(())
    })
    .await
    .expect("a notification was lost across the kill");
    monitor.kill().unwrap();
    monitor.wait().unwrap();

    let hooks = rx.requests("/hook");
    let repeats: Vec<&Recorded> =
        hooks.iter().filter(|r| r.header("Idempotency-Key") == Some(in_flight.as_str())).collect();
    assert!(repeats.len() >= 2, "the delivery in flight at the kill was never repeated");
    assert!(repeats.iter().all(|r| r.body == repeats[0].body), "a repeat is the same request");
    assert!(hooks.iter().all(signature_verifies));
    // Only that delivery repeats: everything else arrived once.
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &hooks {
        *counts.entry(r.header("Idempotency-Key").unwrap()).or_default() += 1;
    }
    counts.remove(in_flight.as_str());
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
}
