//! The monitor against a real Prometheus Alertmanager: a rule breached longer than its `for`
//! appears in `/api/v2/alerts` with its labels, stays active past Alertmanager's
//! `resolve_timeout` while the condition holds (the monitor re-posts it every resend interval),
//! and is resolved there — with the monitor's `endsAt` — once the condition clears.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::time::{Duration, Instant};

use common::{Feed, LATENCY_RULE, Recorder, Running, Stack, config};
use modelperf_schema::messages::AlertState;
use modelperf_testkit::{Alertmanager, eventually};
use serde_json::Value;

/// Alertmanager forgets an alert not re-posted within this long.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

fn am_config(hook: &str) -> String {
    format!(
        "global:\n  resolve_timeout: {}s\n\
         route:\n  receiver: hook\n  group_by: [alertname]\n  group_wait: 100ms\n  group_interval: 500ms\n  repeat_interval: 1h\n\
         receivers:\n  - name: hook\n    webhook_configs:\n      - url: {hook}\n        send_resolved: true\n",
        RESOLVE_TIMEOUT.as_secs()
    )
}

fn ours(alerts: &[Value]) -> Vec<&Value> {
    alerts.iter().filter(|a| a["labels"]["alertname"] == "LatencyHigh").collect()
}

/// Alerts in Alertmanager's webhook notifications so far, with their status.
fn notified(hook: &Recorder) -> Vec<Value> {
    hook.requests("/am").iter().flat_map(|r| r.json()["alerts"].as_array().cloned().unwrap_or_default()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breach_is_active_in_alertmanager_past_resolve_timeout_and_resolved_when_it_clears() {
    let stack = Stack::start().await;
    let hook = Recorder::start().await;
    let am = Alertmanager::start(&am_config(&hook.url("/am"))).await.unwrap();
    let mut c = config(stack.nats.url());
    c.monitor.alertmanager_url = Some(am.url().to_owned());
    // Alertmanager's group_wait here is 100 ms.
    c.monitor.alertmanager_min_firing = Duration::from_secs(1);
    let monitor = Running::start(c, LATENCY_RULE).await;
    let feed = Feed::start(&stack.js, &["gpt-4o"]);

    let first =
        eventually(Duration::from_secs(30), || async { ours(&am.alerts().await.ok()?).first().map(|a| (*a).clone()) })
            .await
            .expect("the breach never reached Alertmanager");
    let labels = &first["labels"];
    assert_eq!(labels["model"], "gpt-4o");
    assert_eq!(labels["provider"], "openai");
    assert_eq!(labels["severity"], "critical");
    assert_eq!(labels["team"], "ml");
    assert!(labels.get("task_type").is_none(), "only the rule's `by` dimensions: {labels}");
    assert_eq!(first["annotations"]["runbook_url"], "https://runbooks.example/latency");
    assert_eq!(first["status"]["state"], "active");
    let firing = stack.transitions().await;
    assert_eq!(firing.len(), 1, "{firing:#?}");
    assert_eq!(firing[0].state, AlertState::Firing);
    assert_eq!(first["fingerprint"].as_str().map(str::len), Some(16), "Alertmanager's own fingerprint");

    // Three resolve timeouts with the condition holding: still active every time we look,
    // never resolved, and always the same alert (same start).
    let since = Instant::now();
    while since.elapsed() < 3 * RESOLVE_TIMEOUT {
        let now = am.alerts().await.unwrap();
        let now = ours(&now);
        assert_eq!(now.len(), 1, "the alert expired in Alertmanager while the condition held: {now:?}");
        assert_eq!(now[0]["startsAt"], first["startsAt"]);
        assert_eq!(now[0]["status"]["state"], "active");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        notified(&hook).iter().all(|a| a["status"] == "firing"),
        "Alertmanager notified a resolution while the condition held"
    );
    assert!(!notified(&hook).is_empty(), "Alertmanager's own route notified the firing alert");

    feed.clear();
    eventually(Duration::from_secs(30), || async { ours(&am.alerts().await.ok()?).is_empty().then_some(()) })
        .await
        .expect("the alert stayed active after the condition cleared");
    let resolved = eventually(Duration::from_secs(30), || async {
        notified(&hook).into_iter().find(|a| a["status"] == "resolved" && a["labels"]["alertname"] == "LatencyHigh")
    })
    .await
    .expect("Alertmanager did not notify the resolution");
    let transitions = stack.transitions().await;
    let states: Vec<_> = transitions.iter().map(|a| a.state).collect();
    assert_eq!(states, [AlertState::Firing, AlertState::Resolved], "{transitions:#?}");
    // Resolved by the monitor's post (its endsAt), not expired by the resolve timeout.
    let ends_at = transitions[1].ends_at.unwrap();
    let am_ends: chrono::DateTime<chrono::Utc> = resolved["endsAt"].as_str().unwrap().parse().unwrap();
    assert_eq!(am_ends, ends_at, "{resolved}");
    let am_starts: chrono::DateTime<chrono::Utc> = resolved["startsAt"].as_str().unwrap().parse().unwrap();
    assert_eq!(am_starts, transitions[0].starts_at);
    drop(feed);
    monitor.stop().await;
}
