//! The receivers' wire formats and the HTTP request of a delivery.
//!
//! - Alertmanager v2 API: `POST <url>/api/v2/alerts` with a list of postable alerts (`labels`,
//!   `annotations`, `startsAt`, `endsAt` when resolved).
//! - Slack incoming webhook: `{text, blocks}`, one message per group.
//! - PagerDuty Events API v2: `trigger` events with `dedup_key` = fingerprint and a `payload`
//!   (`summary`, `source`, `severity`, `timestamp`, `component`, `group`, `class`,
//!   `custom_details`), `resolve` events with the same `dedup_key`.
//! - Webhook: `{version, receiver, status, transition, idempotency_key, alert}` with the headers
//!   `Idempotency-Key: <fingerprint>:<transition>` and `Modelperf-Signature-256:
//!   sha256=<hex HMAC-SHA256 of the body under the receiver's secret>`.
//!
//! Secrets (webhook URLs, routing keys, HMAC keys) come from the configuration at delivery time;
//! the outbox holds only the alerts.

use std::time::Duration;

use bytes::Bytes;
use hmac::{KeyInit, Mac};
use modelperf_schema::messages::{Alert, AlertState, Severity};
use serde_json::{Value, json};

use crate::config::ReceiverConfig;
use crate::router::{Delivery, Item};

/// The header carrying the webhook's signature.
pub const SIGNATURE_HEADER: &str = "Modelperf-Signature-256";
/// The header carrying a webhook delivery's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// Where a receiver's deliveries go.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Alertmanager's base URL.
    Alertmanager(String),
    /// A direct receiver.
    Direct {
        /// Its name.
        name: String,
        /// Its configuration.
        config: ReceiverConfig,
    },
}

impl Target {
    /// The provider, for metrics.
    pub fn provider(&self) -> &'static str {
        match self {
            Target::Alertmanager(_) => "alertmanager",
            Target::Direct { config, .. } => config.provider(),
        }
    }
}

/// One HTTP POST.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Where.
    pub url: String,
    /// Extra headers (`Content-Type: application/json` always).
    pub headers: Vec<(&'static str, String)>,
    /// The JSON body.
    pub body: Bytes,
}

/// HMAC-SHA256 of `body` under `secret`, as the signature header's value `sha256=<hex>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    #[allow(clippy::expect_used)] // HMAC takes keys of any length: new_from_slice cannot fail
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("hmac takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn rfc3339(ts: &chrono::DateTime<chrono::Utc>) -> String {
    modelperf_schema::codec::format_ts(ts)
}

fn json_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// The requests of a delivery to `target`.
pub fn render(target: &Target, d: &Delivery) -> Vec<Request> {
    match target {
        Target::Alertmanager(base) => {
            let alerts: Vec<Value> = d.items.iter().map(|i| alertmanager_alert(&i.alert)).collect();
            vec![Request {
                url: format!("{}/api/v2/alerts", base.trim_end_matches('/')),
                headers: Vec::new(),
                body: json_bytes(&Value::Array(alerts)),
            }]
        }
        Target::Direct { config: ReceiverConfig::Slack { url }, .. } => {
            vec![Request { url: url.clone(), headers: Vec::new(), body: json_bytes(&slack_message(&d.items)) }]
        }
        Target::Direct { config: ReceiverConfig::Pagerduty { routing_key, url, client_url }, .. } => d
            .items
            .iter()
            .map(|i| Request {
                url: url.clone(),
                headers: Vec::new(),
                body: json_bytes(&pagerduty_event(i, routing_key, client_url.as_deref())),
            })
            .collect(),
        Target::Direct { name, config: ReceiverConfig::Webhook { url, secret } } => d
            .items
            .iter()
            .map(|i| {
                let body = json_bytes(&webhook_body(name, i));
                Request {
                    url: url.clone(),
                    headers: vec![(IDEMPOTENCY_HEADER, i.key()), (SIGNATURE_HEADER, signature(secret, &body))],
                    body,
                }
            })
            .collect(),
    }
}

/// A postable alert of Alertmanager's v2 API. A firing alert has no `endsAt`: Alertmanager keeps
/// it active for its `resolve_timeout` after each post.
pub fn alertmanager_alert(a: &Alert) -> Value {
    let mut v = json!({
        "labels": a.labels,
        "annotations": a.annotations,
        "startsAt": rfc3339(&a.starts_at),
    });
    if a.state == AlertState::Resolved
        && let Some(ends) = &a.ends_at
    {
        v["endsAt"] = Value::String(rfc3339(ends));
    }
    v
}

fn summary(a: &Alert) -> String {
    a.annotations.get("summary").cloned().unwrap_or_else(|| a.labels.get("alertname").cloned().unwrap_or_default())
}

fn state_word(s: AlertState) -> &'static str {
    s.as_str()
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Alerts shown in one Slack message; the rest are counted.
const SLACK_MAX_ALERTS: usize = 20;

/// A Slack incoming-webhook message for a group of alerts.
pub fn slack_message(items: &[Item]) -> Value {
    let firing = items.iter().filter(|i| i.alert.state == AlertState::Firing).count();
    let resolved = items.len() - firing;
    let name = items.first().and_then(|i| i.alert.labels.get("alertname")).cloned().unwrap_or_default();
    let mut counts = Vec::new();
    if firing > 0 {
        counts.push(format!("FIRING:{firing}"));
    }
    if resolved > 0 {
        counts.push(format!("RESOLVED:{resolved}"));
    }
    let title = format!("[{}] {}", counts.join(" "), name);
    let mut blocks =
        vec![json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*{}*", slack_escape(&title))}})];
    for i in items.iter().take(SLACK_MAX_ALERTS) {
        let a = &i.alert;
        let icon = if a.state == AlertState::Firing { ":red_circle:" } else { ":large_green_circle:" };
        let labels: Vec<String> = a
            .labels
            .iter()
            .filter(|(k, _)| k.as_str() != "alertname")
            .map(|(k, v)| format!("{k}={}", slack_escape(v)))
            .collect();
        let mut text =
            format!("{icon} *{}* ({})\n{}", slack_escape(&summary(a)), state_word(a.state), labels.join(", "));
        if let Some(url) = a.annotations.get("runbook_url") {
            text.push_str(&format!("\n<{}|Runbook>", slack_escape(url)));
        }
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": text}}));
    }
    if items.len() > SLACK_MAX_ALERTS {
        let more = items.len() - SLACK_MAX_ALERTS;
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("and {more} more")}]}));
    }
    json!({"text": title, "blocks": blocks})
}

fn pagerduty_severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

/// A PagerDuty Events API v2 event: `trigger` for a firing alert (also its repeats; PagerDuty
/// keeps one incident per `dedup_key`), `resolve` for a resolved one.
pub fn pagerduty_event(i: &Item, routing_key: &str, client_url: Option<&str>) -> Value {
    let a = &i.alert;
    if a.state == AlertState::Resolved {
        return json!({"routing_key": routing_key, "event_action": "resolve", "dedup_key": a.fingerprint});
    }
    let label = |k: &str| a.labels.get(k).cloned();
    let source = match (label("provider"), label("model")) {
        (Some(p), Some(m)) => format!("{p}/{m}"),
        (None, Some(m)) => m,
        _ => "modelperf".to_owned(),
    };
    // PagerDuty truncates summaries at 1024 characters.
    let summary: String = summary(a).chars().take(1024).collect();
    let mut payload = json!({
        "summary": summary,
        "source": source,
        "severity": pagerduty_severity(a.severity),
        "timestamp": rfc3339(&a.starts_at),
        "class": label("alertname").unwrap_or_default(),
        "custom_details": {"labels": a.labels, "annotations": a.annotations, "source": a.source},
    });
    if let Some(m) = label("model") {
        payload["component"] = Value::String(m);
    }
    if let Some(t) = label("task_type") {
        payload["group"] = Value::String(t);
    }
    let mut event = json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": a.fingerprint,
        "payload": payload,
        "client": "modelperf",
    });
    if let Some(url) = client_url {
        event["client_url"] = Value::String(url.to_owned());
    }
    if let Some(url) = a.annotations.get("runbook_url") {
        event["links"] = json!([{"href": url, "text": "Runbook"}]);
    }
    event
}

/// The generic webhook's body for one alert transition.
pub fn webhook_body(receiver: &str, i: &Item) -> Value {
    json!({
        "version": "1",
        "receiver": receiver,
        "status": state_word(i.alert.state),
        "transition": i.transition,
        "idempotency_key": i.key(),
        "alert": i.alert,
    })
}

/// How a request went.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Accepted (2xx).
    Delivered,
    /// Try again later (connection error, timeout, 408, 425, 429, 5xx), after the receiver's
    /// `Retry-After` when it gave one.
    Retry {
        /// Why.
        reason: String,
        /// The receiver's `Retry-After`.
        after: Option<Duration>,
    },
    /// The receiver refused it for good (another 4xx): dead-letter it.
    Rejected(String),
}

/// Sends one request.
pub async fn send(http: &reqwest::Client, req: &Request) -> Outcome {
    let mut builder = http.post(&req.url).header("Content-Type", "application/json").body(req.body.clone());
    for (name, value) in &req.headers {
        builder = builder.header(*name, value);
    }
    let resp = match builder.send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Retry { reason: format!("request failed: {e}"), after: None },
    };
    let status = resp.status();
    if status.is_success() {
        return Outcome::Delivered;
    }
    let after = resp
        .headers()
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body: String = resp.text().await.unwrap_or_default().chars().take(300).collect();
    let reason = format!("HTTP {status}: {body}");
    match status.as_u16() {
        408 | 425 | 429 | 500..=599 => Outcome::Retry { reason, after },
        _ => Outcome::Rejected(reason),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::{DateTime, TimeDelta};

    use super::*;

    fn item(state: AlertState) -> Item {
        let labels = BTreeMap::from([
            ("alertname".to_owned(), "P95High".to_owned()),
            ("model".to_owned(), "gpt-4o".to_owned()),
            ("provider".to_owned(), "openai".to_owned()),
            ("severity".to_owned(), "critical".to_owned()),
        ]);
        let starts_at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        Item {
            alert: Alert {
                fingerprint: "0123456789abcdef".into(),
                labels,
                annotations: BTreeMap::from([
                    ("summary".to_owned(), "p95 <high> & rising".to_owned()),
                    ("runbook_url".to_owned(), "https://runbooks.example/p95".to_owned()),
                ]),
                state,
                starts_at,
                ends_at: (state == AlertState::Resolved).then_some(starts_at + TimeDelta::minutes(3)),
                severity: Severity::Critical,
                source: "rule:P95High".into(),
            },
            transition: crate::engine::transition_id(state, starts_at),
        }
    }

    fn delivery(items: Vec<Item>) -> Delivery {
        Delivery { receiver: "r".into(), msg_id: "m".into(), created_at: chrono::Utc::now(), expires_at: None, items }
    }

    #[test]
    fn alertmanager_posts_resolved_alerts_with_ends_at_only() {
        let d = delivery(vec![item(AlertState::Firing), item(AlertState::Resolved)]);
        let reqs = render(&Target::Alertmanager("http://am:9093/".into()), &d);
        assert_eq!(reqs[0].url, "http://am:9093/api/v2/alerts");
        let body: Value = serde_json::from_slice(&reqs[0].body).unwrap();
        assert_eq!(body[0]["labels"]["alertname"], "P95High");
        assert_eq!(body[0]["startsAt"], "2023-11-14T22:13:20Z");
        assert!(body[0].get("endsAt").is_none());
        assert_eq!(body[1]["endsAt"], "2023-11-14T22:16:20Z");
    }

    #[test]
    fn pagerduty_triggers_and_resolves_by_fingerprint() {
        let trigger = pagerduty_event(&item(AlertState::Firing), "key", Some("https://grafana.example"));
        assert_eq!(trigger["event_action"], "trigger");
        assert_eq!(trigger["dedup_key"], "0123456789abcdef");
        assert_eq!(trigger["routing_key"], "key");
        assert_eq!(trigger["payload"]["severity"], "critical");
        assert_eq!(trigger["payload"]["source"], "openai/gpt-4o");
        assert_eq!(trigger["payload"]["summary"], "p95 <high> & rising");
        assert_eq!(trigger["links"][0]["href"], "https://runbooks.example/p95");
        let resolve = pagerduty_event(&item(AlertState::Resolved), "key", None);
        assert_eq!(resolve, json!({"routing_key": "key", "event_action": "resolve", "dedup_key": "0123456789abcdef"}));
    }

    #[test]
    fn webhooks_are_signed_and_carry_the_idempotency_key() {
        let target = Target::Direct {
            name: "audit".into(),
            config: ReceiverConfig::Webhook { url: "http://hook/".into(), secret: "s3cret".into() },
        };
        let reqs = render(&target, &delivery(vec![item(AlertState::Firing)]));
        let r = &reqs[0];
        let key = r.headers.iter().find(|(h, _)| *h == IDEMPOTENCY_HEADER).unwrap();
        assert_eq!(key.1, "0123456789abcdef:firing-1700000000000");
        let sig = r.headers.iter().find(|(h, _)| *h == SIGNATURE_HEADER).unwrap();
        assert_eq!(sig.1, signature("s3cret", &r.body));
        // The known answer of HMAC-SHA256 (RFC 4231, test case 2).
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["status"], "firing");
        assert_eq!(body["alert"]["labels"]["model"], "gpt-4o");
        assert_eq!(body["idempotency_key"], key.1);
    }

    #[test]
    fn slack_groups_alerts_in_one_message() {
        let msg = slack_message(&[item(AlertState::Firing), item(AlertState::Resolved)]);
        assert_eq!(msg["text"], "[FIRING:1 RESOLVED:1] P95High");
        let first = msg["blocks"][1]["text"]["text"].as_str().unwrap();
        assert!(first.contains("p95 &lt;high&gt; &amp; rising"), "{first}");
        assert!(first.contains("<https://runbooks.example/p95|Runbook>"));
        assert_eq!(msg["blocks"].as_array().unwrap().len(), 3);
    }
}
