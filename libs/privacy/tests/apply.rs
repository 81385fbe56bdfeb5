//! `Privacy`: construction rules, pseudonyms against an independent HMAC, and `apply` at each
//! level.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use hmac::{Hmac, KeyInit, Mac};
use modelperf_privacy::{DEV_KEY, DEV_KEY_ID, Privacy, PrivacyConfig, PrivacyError, PrivacyLevel, RAW_MSG_ID};
use modelperf_schema::{
    AgentState, AgentStatus, AttrValue, Benchmark, Data, Event, TaskCompleted, Validation, Violation,
};
use sha2::Sha256;

const KEY: &str = "test-privacy-key";

/// HMAC-SHA256 hex, computed without the crate under test.
fn hmac_hex(key: &str, value: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(value.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn config(level: PrivacyLevel, key: Option<&str>) -> PrivacyConfig {
    PrivacyConfig {
        level,
        key: key.map(str::to_owned),
        key_id: Some("k1".into()),
        pseudonymize_attrs: vec!["customer".into(), "account_no".into(), "score".into(), RAW_MSG_ID.into()],
    }
}

fn privacy(level: PrivacyLevel) -> Privacy {
    Privacy::new(&config(level, Some(KEY)), true).unwrap()
}

fn attrs() -> BTreeMap<String, AttrValue> {
    BTreeMap::from([
        ("note".to_owned(), AttrValue::from("call me at +1-415-555-0134 or alice@example.com")),
        ("build".to_owned(), AttrValue::from("v2.10.4")),
        ("customer".to_owned(), AttrValue::from("cust-42")),
        ("account_no".to_owned(), AttrValue::Int(1234)),
        ("score".to_owned(), AttrValue::Float(0.5)),
        ("retries".to_owned(), AttrValue::Int(3)),
        ("latency".to_owned(), AttrValue::Float(12.5)),
        ("cached".to_owned(), AttrValue::Bool(true)),
        (RAW_MSG_ID.to_owned(), AttrValue::from("producer-msg-7@host.example.com")),
    ])
}

fn event(data: Data) -> Event {
    let mut e = Event::new(Utc.with_ymd_and_hms(2026, 11, 27, 10, 15, 30).unwrap(), "arbiter.validator", data);
    e.id = Some("ev-1".into());
    e.task_id = Some("task-1".into());
    e.user_id = Some("alice@example.com".into());
    e.session_id = Some("sess-9".into());
    e.benchmark = Some(Benchmark { run_id: "run alice@example.com".into(), case_id: "10.0.0.1".into() });
    e.attrs = attrs();
    e
}

fn validation() -> Data {
    Data::Validation(Validation {
        valid: false,
        violations: vec![
            Violation {
                severity: "high".into(),
                rule: Some("no-pii".into()),
                message: "output leaked bob@example.com and 4111 1111 1111 1111".into(),
            },
            Violation { severity: "low".into(), rule: None, message: "answer exceeds 200 words".into() },
        ],
        compliance_score: 0.4,
        duration_ms: 12.0,
    })
}

fn agent_status() -> Data {
    Data::AgentStatus(AgentStatus {
        status: AgentState::Offline,
        previous: Some(AgentState::Busy),
        reason: Some("host 10.1.2.3 unreachable".into()),
        capabilities: Some(vec!["code".into()]),
    })
}

fn text(e: &Event, key: &str) -> String {
    match &e.attrs[key] {
        AttrValue::Text(s) => s.clone(),
        other => panic!("{key} is not text: {other:?}"),
    }
}

// ---------------------------------------------------------------- construction

#[test]
fn production_requires_a_key() {
    for key in [None, Some(""), Some("   ")] {
        for level in [PrivacyLevel::Pseudonymize, PrivacyLevel::Strict] {
            let err = Privacy::new(&config(level, key), true).unwrap_err();
            assert_eq!(err, PrivacyError::MissingKey);
        }
    }
    // Level off needs no key, even in production.
    let off = Privacy::new(&config(PrivacyLevel::Off, None), true).unwrap();
    assert!(!off.uses_dev_key());
}

#[test]
fn development_falls_back_to_the_published_key() {
    let p = Privacy::new(&config(PrivacyLevel::Pseudonymize, None), false).unwrap();
    assert!(p.uses_dev_key());
    assert_eq!(p.key_id(), DEV_KEY_ID);
    assert_eq!(p.pseudonym("alice"), hmac_hex(DEV_KEY, "alice"));
    let mut e = event(validation());
    p.apply(&mut e);
    assert_eq!(e.privacy.unwrap().key_id.as_deref(), Some("dev"));
    // A real key is used when given, in development too.
    let p = Privacy::new(&config(PrivacyLevel::Pseudonymize, Some(KEY)), false).unwrap();
    assert!(!p.uses_dev_key());
    assert_eq!(p.key_id(), "k1");
}

#[test]
fn key_id_is_derived_from_the_key_when_absent() {
    let make = |key: &str| {
        let cfg = PrivacyConfig { key: Some(key.into()), key_id: None, ..PrivacyConfig::default() };
        Privacy::new(&cfg, true).unwrap().key_id().to_owned()
    };
    let id = make(KEY);
    assert_eq!(id, format!("k-{}", &hmac_hex(KEY, "modelperf-privacy key id")[..8]));
    assert_eq!(id, make(KEY));
    assert_ne!(id, make("another-key"));
}

#[test]
fn config_deserialises_with_defaults() {
    let cfg: PrivacyConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(cfg.level, PrivacyLevel::Pseudonymize);
    assert!(cfg.key.is_none() && cfg.key_id.is_none() && cfg.pseudonymize_attrs.is_empty());
    let cfg: PrivacyConfig =
        serde_json::from_str(r#"{"level": "strict", "key": "s3cret-value", "pseudonymize_attrs": ["customer"]}"#)
            .unwrap();
    assert_eq!(cfg.level, PrivacyLevel::Strict);
    assert_eq!(cfg.pseudonymize_attrs, ["customer"]);
    assert!(!format!("{cfg:?}").contains("s3cret-value"), "{cfg:?}");
    let p = Privacy::new(&cfg, true).unwrap();
    assert_eq!(p.level(), PrivacyLevel::Strict);
    assert!(!format!("{p:?}").contains("s3cret-value"), "{p:?}");
}

// ---------------------------------------------------------------- pseudonyms

#[test]
fn pseudonyms_are_hmac_sha256_hex() {
    let p = privacy(PrivacyLevel::Pseudonymize);
    let pseudonym = p.pseudonym("alice@example.com");
    assert_eq!(pseudonym, hmac_hex(KEY, "alice@example.com"));
    assert_eq!(pseudonym.len(), 64);
    assert!(pseudonym.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(p.pseudonym(""), hmac_hex(KEY, ""));
    assert_eq!(p.pseudonym("ünïcødé"), hmac_hex(KEY, "ünïcødé"));
}

#[test]
fn pseudonyms_are_stable_for_one_key_only() {
    let p = privacy(PrivacyLevel::Pseudonymize);
    assert_eq!(p.pseudonym("user-1"), p.pseudonym("user-1"));
    assert_eq!(p.pseudonym("user-1"), privacy(PrivacyLevel::Strict).pseudonym("user-1"));
    assert_ne!(p.pseudonym("user-1"), p.pseudonym("user-2"));
    let other = Privacy::new(&config(PrivacyLevel::Pseudonymize, Some("another-key")), true).unwrap();
    assert_ne!(p.pseudonym("user-1"), other.pseudonym("user-1"));
}

// ---------------------------------------------------------------- apply

#[test]
fn off_changes_nothing_but_records_the_level() {
    let p = privacy(PrivacyLevel::Off);
    let original = event(validation());
    let mut e = original.clone();
    p.apply(&mut e);
    assert_eq!(e.privacy, Some(modelperf_schema::Privacy { level: PrivacyLevel::Off, key_id: None }));
    e.privacy = None;
    assert_eq!(e, original);
}

#[test]
fn pseudonymize_replaces_ids_and_scrubs_free_text() {
    let p = privacy(PrivacyLevel::Pseudonymize);
    let original = event(validation());
    let mut e = original.clone();
    p.apply(&mut e);

    assert_eq!(
        e.privacy,
        Some(modelperf_schema::Privacy { level: PrivacyLevel::Pseudonymize, key_id: Some("k1".into()) })
    );
    assert_eq!(e.user_id.as_deref(), Some(hmac_hex(KEY, "alice@example.com").as_str()));
    assert_eq!(e.session_id.as_deref(), Some(hmac_hex(KEY, "sess-9").as_str()));
    // Configured attributes: text and integers become pseudonyms, floats are no ids.
    assert_eq!(text(&e, "customer"), hmac_hex(KEY, "cust-42"));
    assert_eq!(text(&e, "account_no"), hmac_hex(KEY, "1234"));
    assert_eq!(e.attrs["score"], AttrValue::Float(0.5));
    // Free text is scrubbed; text without findings, numbers and booleans stay.
    assert_eq!(text(&e, "note"), "call me at [phone] or [email]");
    assert_eq!(text(&e, "build"), "v2.10.4");
    assert_eq!(e.attrs["retries"], AttrValue::Int(3));
    assert_eq!(e.attrs["latency"], AttrValue::Float(12.5));
    assert_eq!(e.attrs["cached"], AttrValue::Bool(true));
    // The producer's message id passes unchanged, even though it is listed and looks like an address.
    assert_eq!(e.attrs[RAW_MSG_ID], original.attrs[RAW_MSG_ID]);
    // Never touched.
    assert_eq!(e.benchmark, original.benchmark);
    assert_eq!((&e.id, &e.task_id, &e.source, e.ts), (&original.id, &original.task_id, &original.source, original.ts));
    let Data::Validation(v) = &e.data else { panic!("kind changed") };
    assert_eq!(v.violations[0].message, "output leaked [email] and [card]");
    assert_eq!(v.violations[0].rule.as_deref(), Some("no-pii"));
    assert_eq!(v.violations[0].severity, "high");
    assert_eq!(v.violations[1].message, "answer exceeds 200 words");
    assert_eq!((v.valid, v.compliance_score, v.duration_ms), (false, 0.4, 12.0));
}

#[test]
fn pseudonymize_scrubs_the_agent_status_reason() {
    let p = privacy(PrivacyLevel::Pseudonymize);
    let mut e = event(agent_status());
    p.apply(&mut e);
    let Data::AgentStatus(a) = &e.data else { panic!("kind changed") };
    assert_eq!(a.reason.as_deref(), Some("host [ip] unreachable"));
    assert_eq!(a.status, AgentState::Offline);
    assert_eq!(a.capabilities, Some(vec!["code".to_owned()]));
}

#[test]
fn error_kind_is_a_code_and_stays() {
    let p = privacy(PrivacyLevel::Strict);
    let data = Data::TaskCompleted(TaskCompleted {
        latency_ms: 10.0,
        success: false,
        error_kind: Some("rate_limited".into()),
        ..TaskCompleted::default()
    });
    let mut e = event(data.clone());
    p.apply(&mut e);
    assert_eq!(e.data, data);
}

#[test]
fn strict_drops_free_text() {
    let p = privacy(PrivacyLevel::Strict);
    let original = event(validation());
    let mut e = original.clone();
    p.apply(&mut e);

    assert_eq!(e.privacy, Some(modelperf_schema::Privacy { level: PrivacyLevel::Strict, key_id: Some("k1".into()) }));
    assert_eq!(e.user_id.as_deref(), Some(hmac_hex(KEY, "alice@example.com").as_str()));
    let keys: Vec<&str> = e.attrs.keys().map(String::as_str).collect();
    assert_eq!(keys, ["account_no", "cached", "customer", "latency", RAW_MSG_ID, "retries", "score"]);
    assert_eq!(text(&e, "customer"), hmac_hex(KEY, "cust-42"));
    assert_eq!(e.attrs[RAW_MSG_ID], original.attrs[RAW_MSG_ID]);
    assert_eq!(e.attrs["retries"], AttrValue::Int(3));
    assert_eq!(e.benchmark, original.benchmark);
    let Data::Validation(v) = &e.data else { panic!("kind changed") };
    assert!(v.violations.iter().all(|v| v.message.is_empty()));
    assert_eq!(v.violations[0].rule.as_deref(), Some("no-pii"));

    let mut e = event(agent_status());
    p.apply(&mut e);
    let Data::AgentStatus(a) = &e.data else { panic!("kind changed") };
    assert_eq!(a.reason, None);
}

#[test]
fn events_without_personal_data_keep_their_fields() {
    let p = privacy(PrivacyLevel::Pseudonymize);
    let mut e = Event::new(Utc::now(), "router", Data::TaskStarted(Default::default()));
    e.attrs.insert("region".into(), AttrValue::from("eu-west-1"));
    let original = e.clone();
    p.apply(&mut e);
    assert!(e.user_id.is_none() && e.session_id.is_none());
    e.privacy = None;
    assert_eq!(e, original);
}
