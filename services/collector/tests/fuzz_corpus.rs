//! The committed fuzz corpus (`fuzz/corpus/collector`, grown by `make fuzz`) replayed through
//! `Collector::handle` in every test run, with the fuzz target's properties: no panic, a refusal
//! is a dead letter with a code and a reason (never a retry), and every clean event decodes again.
//! The input format is the fuzz target's: the first byte picks the subject, content type and replay.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use modelperf_bus::{Failure, Handler, Incoming};
use modelperf_collector::Config;
use modelperf_collector::pipeline::LEGACY_PREFIX;
use modelperf_schema::Kind;
use modelperf_testkit::project_root;

#[test]
fn the_fuzz_corpus_is_refused_cleanly_or_collected() {
    let mut config = Config::default();
    config.collector.privacy_key = Some("fuzz-privacy-key".into());
    config.collector.prices_file = project_root().join("deploy/prices.toml");
    let collector = modelperf_collector::collector(&config).unwrap();
    let dir = project_root().join("fuzz/corpus/collector");
    let (mut collected, mut refused) = (0, 0);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let Some((&selector, body)) = data.split_first() else { continue };
        let subject = match usize::from(selector % 11) {
            9 => format!("{LEGACY_PREFIX}task_completed"),
            10 => "perf.raw.unknown".to_owned(),
            k => format!("perf.raw.{}", Kind::ALL[k].as_str()),
        };
        let mut headers = async_nats::HeaderMap::new();
        match (selector / 11) % 3 {
            0 => {}
            1 => headers.insert("Content-Type", "application/json"),
            _ => headers.insert("Content-Type", "application/msgpack"),
        }
        // Half the inputs as a DLQ replay, which waives the age rule: the contract's examples have
        // fixed timestamps, and without it nothing past the `ts` check would be reached.
        if (selector / 33) % 2 == 1 {
            headers.insert(modelperf_schema::dlq::REPLAY, "1");
            headers.insert("Nats-Msg-Id", "replay:1");
        }
        let msg = Incoming {
            subject: &subject,
            headers: Some(&headers),
            payload: body,
            stream: "PERF_RAW",
            seq: 1,
            delivered: 1,
        };
        match collector.handle(&msg) {
            Ok(outputs) => {
                for out in outputs {
                    modelperf_schema::decode_event(&out.payload, Some("application/msgpack"))
                        .unwrap_or_else(|e| panic!("{}: the clean event does not decode again: {e}", path.display()));
                }
                collected += 1;
            }
            Err(Failure::Terminate { reason, .. }) => {
                assert!(!reason.is_empty(), "{}: refused without a reason", path.display());
                refused += 1;
            }
            Err(Failure::Retry(reason)) => panic!("{}: retried, not dead-lettered: {reason}", path.display()),
        }
    }
    // The corpus starts from the contract's valid and invalid examples: both outcomes occur.
    assert!(collected > 0 && refused > 0, "collected {collected}, refused {refused} in {}", dir.display());
}
