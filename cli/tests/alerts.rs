//! `modelperf alerts` against a real NATS server holding alert transitions on
//! `perf.alerts.<state>` as the monitor publishes them: the firing set is the latest transition
//! per fingerprint, filters by severity and label apply to both lists, the JSON form carries
//! the same, and a message that does not decode is counted, not dropped silently.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, TimeZone, Utc};
use modelperf_schema::messages::{Alert, AlertState, Severity};
use modelperf_testkit::NatsServer;
use serde_json::Value;

fn alert(name: &str, model: &str, severity: Severity, state: AlertState, minute: u32) -> Alert {
    let labels: BTreeMap<String, String> =
        [("alertname", name), ("model", model)].into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    let start: DateTime<Utc> = Utc.with_ymd_and_hms(2026, 3, 1, 12, minute, 0).unwrap();
    Alert {
        fingerprint: format!("{name}/{model}"),
        labels,
        annotations: [("summary".to_owned(), format!("{name} on {model}\u{1b}[31m"))].into(),
        state,
        starts_at: start,
        ends_at: (state == AlertState::Resolved).then(|| start + chrono::Duration::minutes(5)),
        severity,
        source: "rule".into(),
    }
}

async fn modelperf(url: &str, args: &[&str]) -> String {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_modelperf"))
        .args(args)
        .env("MODELPERF_NATS__URL", url)
        .env_remove("MODELPERF_CONFIG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run).await.expect("modelperf hung").unwrap();
    let (stdout, stderr) = (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap());
    assert!(out.status.success(), "modelperf {args:?} failed: {stderr}\nstdout: {stdout}");
    format!("{stdout}\n--stderr--\n{stderr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firing_alerts_are_the_latest_transition_per_fingerprint() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream::new(server.client().await.unwrap());
    modelperf_bus::Topology::contract(&modelperf_bus::BusConfig::default(), 1).ensure(&js).await.unwrap();

    let transitions = [
        alert("HighLatency", "gpt-x", Severity::Critical, AlertState::Firing, 0),
        alert("ErrorRate", "claude-y", Severity::Warning, AlertState::Firing, 1),
        alert("CostPerTask", "gpt-x", Severity::Info, AlertState::Firing, 2),
        // ErrorRate on claude-y resolves: it must leave the firing set but stay a transition.
        alert("ErrorRate", "claude-y", Severity::Warning, AlertState::Resolved, 1),
    ];
    for a in &transitions {
        let state = if a.state == AlertState::Firing { "firing" } else { "resolved" };
        js.publish(format!("perf.alerts.{state}"), modelperf_schema::to_msgpack(a).unwrap().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    js.publish("perf.alerts.firing", b"not an alert".as_slice().into()).await.unwrap().await.unwrap();

    let text = modelperf(server.url(), &["alerts"]).await;
    let (stdout, stderr) = text.split_once("\n--stderr--\n").unwrap();
    let (firing, recent) = stdout.split_once("transitions since").unwrap();
    assert!(firing.starts_with("2 firing"), "{stdout}");
    assert!(firing.contains("HighLatency") && firing.contains("CostPerTask"), "{stdout}");
    assert!(!firing.contains("ErrorRate"), "a resolved alert is not firing: {stdout}");
    // Critical first.
    assert!(firing.find("HighLatency").unwrap() < firing.find("CostPerTask").unwrap(), "{stdout}");
    assert_eq!(recent.matches("model=claude-y").count(), 2, "both transitions listed: {stdout}");
    assert!(recent.contains("resolved"), "{stdout}");
    // The escape sequence in the summary is printed escaped, never raw to the terminal.
    assert!(!stdout.contains('\u{1b}') && stdout.contains("\\u{1b}"), "{stdout}");
    assert!(stderr.contains("1 messages of PERF_ALERTS do not decode"), "{stderr}");

    let text = modelperf(server.url(), &["alerts", "--severity", "warning", "--json"]).await;
    let (stdout, _) = text.split_once("\n--stderr--\n").unwrap();
    let json: Value = serde_json::from_str(stdout).unwrap();
    let names = |list: &Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let a = a.get("alert").unwrap_or(a);
                a["labels"]["alertname"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    assert_eq!(names(&json["firing"]), ["HighLatency"], "{stdout}");
    assert_eq!(names(&json["transitions"]), ["HighLatency", "ErrorRate", "ErrorRate"], "{stdout}");
    assert_eq!(json["undecodable"], 1);

    let text = modelperf(server.url(), &["alerts", "--label", "model=claude-y", "--json"]).await;
    let json: Value = serde_json::from_str(text.split_once("\n--stderr--\n").unwrap().0).unwrap();
    assert!(json["firing"].as_array().unwrap().is_empty(), "{json}");
    assert_eq!(json["transitions"].as_array().unwrap().len(), 2, "{json}");
    // An explicit start time; the limit keeps the latest transitions.
    let text = modelperf(server.url(), &["alerts", "--since", "2000-01-01T00:00:00Z", "--limit", "1", "--json"]).await;
    let json: Value = serde_json::from_str(text.split_once("\n--stderr--\n").unwrap().0).unwrap();
    assert_eq!(names(&json["transitions"]), ["ErrorRate"], "the limit keeps the latest: {json}");
}
