//! The wire contract, frozen: checked-in examples decode forever, invalid examples keep their
//! codes, the generated JSON Schema matches `schemas/`, and the codecs are lossless.
//!
//! `MODELPERF_BLESS=1 cargo test -p modelperf-schema --test contract` rewrites the generated
//! files (schemas and missing MessagePack fixtures); review the diff before committing it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};

use modelperf_schema::*;
use proptest::prelude::*;

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

fn bless() -> bool {
    std::env::var_os("MODELPERF_BLESS").is_some()
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    out
}

#[test]
fn every_kind_has_a_frozen_valid_example() {
    let dir = schemas_dir().join("examples/v1/valid");
    let mut kinds = std::collections::BTreeSet::new();
    for path in files(&dir, "json") {
        let body = std::fs::read(&path).unwrap();
        let event = decode_event(&body, None).unwrap_or_else(|e| panic!("{} no longer decodes: {e}", path.display()));
        kinds.insert(event.kind());
        // Frozen MessagePack twin of each JSON example, written once and decoded forever.
        let twin = path.with_extension("msgpack");
        if !twin.exists() && bless() {
            std::fs::write(&twin, to_msgpack(&event).unwrap()).unwrap();
        }
        let packed =
            std::fs::read(&twin).unwrap_or_else(|_| panic!("missing {}: run with MODELPERF_BLESS=1", twin.display()));
        let from_pack = decode_event(&packed, None).unwrap();
        assert_eq!(from_pack, event, "{} differs from its JSON example", twin.display());
    }
    assert_eq!(kinds.len(), Kind::ALL.len(), "a kind lacks a valid example: {kinds:?}");
}

#[test]
fn invalid_examples_keep_their_codes() {
    let dir = schemas_dir().join("examples/v1/invalid");
    let mut seen = 0;
    for path in files(&dir, "json").into_iter().chain(files(&dir, "msgpack")) {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let expected = name.split("--").next().unwrap();
        let body = std::fs::read(&path).unwrap();
        let err = decode_event(&body, None).expect_err(&name);
        assert_eq!(err.code.as_str(), expected, "{name}: {}", err.reason);
        assert!(!err.reason.is_empty());
        seen += 1;
    }
    assert!(seen >= 15, "only {seen} invalid examples");
}

#[test]
fn reasons_name_the_field() {
    let err = decode_event(
        br#"{"v":1,"kind":"task_completed","ts":"2026-11-20T09:15:41Z","source":"x","data":{"latency_ms":5,"success":true,"tokens":{"input":"many","output":1}}}"#,
        None,
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::Schema);
    assert_eq!(err.field, "data.tokens.input");
    assert!(err.reason.starts_with("data.tokens.input: invalid type"), "{}", err.reason);

    let err = decode_event(
        br#"{"data":{"latency_ms":5},"v":1,"kind":"task_completed","ts":"2026-11-20T09:15:41Z","source":"x"}"#,
        None,
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::Schema);
    assert!(err.reason.contains("success"), "{}", err.reason);

    // A position serde cannot name is no field: the reason does not start with `?`.
    let err = decode_event(b"{not json", None).unwrap_err();
    assert_eq!(err.code, ErrorCode::Decode);
    assert_eq!(err.field, "");
    assert!(!err.reason.starts_with('?'), "{}", err.reason);
}

#[test]
fn non_finite_numbers_in_msgpack_are_range_errors() {
    let mut body = Vec::new();
    // {"v":1,"kind":"task_completed","ts":...,"source":"x","data":{"latency_ms":NaN,"success":true}}
    let value = rmpv::Value::Map(vec![
        ("v".into(), 1.into()),
        ("kind".into(), "task_completed".into()),
        ("ts".into(), "2026-11-20T09:15:41Z".into()),
        ("source".into(), "x".into()),
        (
            "data".into(),
            rmpv::Value::Map(vec![("latency_ms".into(), rmpv::Value::F64(f64::NAN)), ("success".into(), true.into())]),
        ),
    ]);
    rmpv::encode::write_value(&mut body, &value).unwrap();
    let err = decode_event(&body, None).unwrap_err();
    assert_eq!((err.code, err.field.as_str()), (ErrorCode::Range, "data.latency_ms"));
}

#[test]
fn oversized_bodies_are_too_large() {
    let body = vec![b' '; MAX_EVENT_BYTES + 1];
    assert_eq!(decode_event(&body, None).unwrap_err().code, ErrorCode::TooLarge);
}

#[test]
fn deep_nesting_is_rejected_not_crashed() {
    let deep = |field: &str, depth: usize| {
        let mut body = String::from(r#"{"v":1,"kind":"custom","ts":"2026-11-20T09:15:41Z","source":"x","#);
        body.push_str(&format!(r#""{field}":{{"a":"#));
        body.push_str(&"[".repeat(depth));
        body.push_str(&"]".repeat(depth));
        body.push_str(r#"},"data":{"metrics":{}}}"#);
        body
    };
    // Beyond 64 KiB: too large, before any parsing.
    assert_eq!(decode_event(deep("attrs", 40_000).as_bytes(), None).unwrap_err().code, ErrorCode::TooLarge);
    // Deep nesting where a scalar belongs: refused at the first level.
    assert_eq!(decode_event(deep("attrs", 20_000).as_bytes(), None).unwrap_err().code, ErrorCode::Schema);
    // `data` before `kind` is skipped, then decoded knowing the kind: refused at the first level.
    let mut early = String::from(r#"{"data":{"metrics":{"a":"#);
    early.push_str(&"[".repeat(20_000));
    early.push_str(&"]".repeat(20_000));
    early.push_str(r#"}},"v":1,"kind":"custom","ts":"2026-11-20T09:15:41Z","source":"x"}"#);
    assert_eq!(decode_event(early.as_bytes(), None).unwrap_err().code, ErrorCode::Schema);
    // Deep nesting in an unknown field: skipped without recursion (fields are additive).
    assert!(decode_event(deep("extra", 20_000).as_bytes(), None).is_ok());
    // The same in MessagePack: a depth limit, not a stack overflow.
    let mut packed = vec![0x85, 0xa1, b'v', 0x01, 0xa4, b'k', b'i', b'n', b'd', 0xa6];
    packed.extend(b"custom");
    packed.extend([0xa5]);
    packed.extend(b"attrs");
    packed.extend([0x81, 0xa1, b'a']);
    packed.extend(std::iter::repeat_n(0x91, 30_000));
    packed.push(0xc0);
    assert_eq!(decode_event(&packed, None).unwrap_err().code, ErrorCode::Schema);
    let mut packed = vec![0x84, 0xa4, b'd', b'a', b't', b'a', 0x81, 0xa1, b'a'];
    packed.extend(std::iter::repeat_n(0x91, 30_000));
    packed.push(0xc0);
    assert_eq!(decode_event(&packed, None).unwrap_err().code, ErrorCode::Decode);
}

#[test]
fn generated_json_schema_matches_checked_in_files() {
    let mut drift = Vec::new();
    for (stem, schema) in jsonschema::all_schemas() {
        let path = schemas_dir().join(format!("{stem}.json"));
        let want = jsonschema::render(&schema);
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            if bless() {
                std::fs::write(&path, &want).unwrap();
            } else {
                drift.push(path.display().to_string());
            }
        }
    }
    assert!(
        drift.is_empty(),
        "JSON Schema drifted from the Rust types: {drift:?}; run `make schemas` and review the diff"
    );
}

#[test]
fn the_event_schema_ties_data_to_kind() {
    let (_, schema) = jsonschema::all_schemas().into_iter().next().unwrap();
    let text = serde_json::to_string(&schema).unwrap();
    for kind in Kind::ALL {
        assert!(text.contains(&format!("\"const\":\"{kind}\"")), "no branch for {kind}");
    }
}

// ---- property tests -------------------------------------------------------------------------

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,11}"
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,24}"
}

fn model() -> impl Strategy<Value = ModelRef> {
    (name(), "[a-z0-9][a-z0-9.-]{0,15}", proptest::option::of("[0-9]{8}"), proptest::option::of(name()))
        .prop_map(|(p, n, v, vendor)| ModelRef { provider: p, name: n, version: v, vendor })
}

fn ms() -> impl Strategy<Value = f64> {
    prop_oneof![0.0..1.0e7f64, Just(0.0)]
}

fn unit() -> impl Strategy<Value = f64> {
    0.0..=1.0f64
}

fn count() -> impl Strategy<Value = u64> {
    0..1_000_000_000u64
}

fn tokens() -> impl Strategy<Value = Tokens> {
    (count(), count(), 0..=100u64, 0..=100u64).prop_map(|(input, output, c, r)| Tokens {
        input,
        output,
        cached_input: Some(input * c / 200),
        cache_write: (c % 2 == 0).then_some(input * c / 400),
        reasoning: (r % 3 != 0).then_some(output * r / 100),
    })
}

fn data() -> impl Strategy<Value = Data> {
    prop_oneof![
        proptest::option::of(ms()).prop_map(|q| Data::TaskStarted(TaskStarted { queue_ms: q })),
        (
            ms(),
            proptest::option::of(ms()),
            any::<bool>(),
            proptest::option::of(name()),
            proptest::option::of(tokens()),
            proptest::option::of(0..10u64)
        )
            .prop_map(|(l, t, s, e, tok, r)| Data::TaskCompleted(TaskCompleted {
                latency_ms: l,
                ttft_ms: t,
                success: s,
                error_kind: e,
                tokens: tok,
                retries: r,
                tool_calls: r,
                cpu_ms: t,
                memory_mb: None,
            })),
        (
            name(),
            model(),
            proptest::collection::vec((name(), model(), -10.0..10.0f64, unit()), 0..4),
            proptest::option::of(unit()),
            proptest::collection::btree_map(
                name(),
                prop_oneof![(-1.0e9..1.0e9f64).prop_map(Feature::Number), name().prop_map(Feature::Text)],
                0..4
            ),
            ms()
        )
            .prop_map(|(s, m, c, p, f, d)| Data::RoutingDecision(RoutingDecision {
                strategy: s,
                chosen: Chosen { agent_id: "a".into(), model: m },
                candidates: c
                    .into_iter()
                    .map(|(a, m, sc, pr)| Candidate { agent_id: a, model: m, score: sc, probability: Some(pr) })
                    .collect(),
                probability: p,
                features: f,
                decision_ms: d,
            })),
        (
            model(),
            unit(),
            proptest::collection::btree_map(name(), unit(), 0..3),
            proptest::option::of(unit()),
            proptest::option::of(any::<bool>()),
            proptest::option::of(tokens())
        )
            .prop_map(|(j, s, c, conf, p, t)| Data::Judgment(Judgment {
                judge_model: j,
                score: s,
                criteria: c,
                confidence: conf,
                passed: p,
                tokens: t
            })),
        (count(), count(), count(), unit()).prop_map(|(a, r, f, s)| Data::Minimality(Minimality {
            lines_added: a,
            lines_removed: r,
            files_changed: f,
            score: s
        })),
        (count(), count(), any::<bool>(), proptest::option::of(name())).prop_map(|(b, u, e, c)| Data::ThinkingBudget(
            ThinkingBudget { budget_tokens: b, used_tokens: u, exhausted: e, complexity: c }
        )),
        (any::<bool>(), proptest::collection::vec((name(), proptest::option::of(name()), text()), 0..3), unit(), ms())
            .prop_map(|(v, viol, c, d)| Data::Validation(Validation {
                valid: v,
                violations: viol.into_iter().map(|(s, r, m)| Violation { severity: s, rule: r, message: m }).collect(),
                compliance_score: c,
                duration_ms: d
            })),
        (
            prop_oneof![Just(AgentState::Available), Just(AgentState::Busy), Just(AgentState::Offline)],
            proptest::option::of(Just(AgentState::Registered)),
            proptest::option::of(text()),
            proptest::option::of(proptest::collection::vec(name(), 0..3))
        )
            .prop_map(|(s, p, r, c)| Data::AgentStatus(AgentStatus {
                status: s,
                previous: p,
                reason: r,
                capabilities: c
            })),
        proptest::collection::btree_map(name(), -1.0e12..1.0e12f64, 0..4)
            .prop_map(|m| Data::Custom(Custom { metrics: m })),
    ]
}

fn attr() -> impl Strategy<Value = AttrValue> {
    prop_oneof![
        any::<bool>().prop_map(AttrValue::Bool),
        any::<i64>().prop_map(AttrValue::Int),
        (-1.0e15..1.0e15f64).prop_map(AttrValue::Float),
        text().prop_map(AttrValue::Text),
    ]
}

prop_compose! {
    fn event()(
        data in data(),
        secs in 0i64..4_000_000_000,
        nanos in 0u32..1_000_000_000,
        id in proptest::option::of("[A-Za-z0-9._:-]{1,40}"),
        task in proptest::option::of("[A-Za-z0-9-]{1,20}"),
        m in model(),
        task_type in proptest::option::of(name()),
        tenant in proptest::option::of(name()),
        user in proptest::option::of(text()),
        attrs in proptest::collection::btree_map(name(), attr(), 0..4),
        bench in proptest::option::of((name(), name())),
        rate in proptest::option::of(1u32..100),
    ) -> Event {
        let ts = chrono::DateTime::from_timestamp(secs, nanos).unwrap();
        let mut e = Event::new(ts, "prop.source", data);
        e.id = id;
        e.task_id = task;
        e.model = Some(m);
        e.task_type = task_type;
        e.tenant = tenant;
        e.user_id = user;
        e.attrs = attrs;
        e.benchmark = bench.map(|(r, c)| Benchmark { run_id: r, case_id: c });
        e.sample_rate = rate.map(|k| 1.0 / f64::from(k));
        e
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn json_to_types_to_msgpack_is_lossless(e in event()) {
        let json = serde_json::to_vec(&e).unwrap();
        let from_json = decode_event(&json, None).unwrap();
        prop_assert_eq!(&from_json, &e);
        let packed = to_msgpack(&from_json).unwrap();
        let from_pack = decode_event(&packed, None).unwrap();
        prop_assert_eq!(from_pack, e);
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_event(&body, None);
        let _ = decode_event(&body, Some("application/json"));
        let _ = decode_event(&body, Some("application/msgpack"));
    }

    #[test]
    fn arbitrary_msgpack_maps_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut framed = vec![0x85u8];
        framed.extend(body);
        let _ = decode_event(&framed, None);
    }

    #[test]
    fn arbitrary_json_never_panics(value in arb_json()) {
        let body = serde_json::to_vec(&value).unwrap();
        if let Err(err) = decode_event(&body, None) {
            prop_assert!(!err.reason.is_empty());
        }
    }

    #[test]
    fn mutated_valid_events_never_panic(e in event(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        for mut body in [serde_json::to_vec(&e).unwrap(), to_msgpack(&e).unwrap()] {
            let i = pos.index(body.len());
            body[i] = byte;
            let _ = decode_event(&body, None);
        }
    }
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![
            Just("v".to_string()),
            Just("kind".to_string()),
            Just("data".to_string()),
            Just("task_completed".to_string()),
            Just("2026-11-20T09:15:41Z".to_string()),
            text()
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("v".to_string()),
                    Just("kind".to_string()),
                    Just("ts".to_string()),
                    Just("source".to_string()),
                    Just("data".to_string()),
                    Just("latency_ms".to_string()),
                    Just("model".to_string()),
                    name()
                ],
                inner,
                0..7
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .prop_map(|v| match v {
        serde_json::Value::Object(_) => v,
        other => serde_json::json!({"v": 1, "kind": "custom", "data": other}),
    })
}
