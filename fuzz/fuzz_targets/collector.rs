//! The collector's decode-and-validate entry point on hostile input: `Collector::handle`, exactly
//! as the runner calls it for a message of `perf.raw.>` (or a legacy subject), with the shipped
//! price catalog. The first byte picks the subject, the content type and whether it is a DLQ
//! replay; the rest is the body.
//!
//! Properties: it never panics; a refusal is `Terminate` with a code (what the DLQ records),
//! never a retry; and every clean event it emits decodes and validates again from its bytes.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use modelperf_bus::{Failure, Handler, Incoming};
use modelperf_collector::pipeline::LEGACY_PREFIX;
use modelperf_collector::{Collector, Config};
use modelperf_schema::Kind;

static COLLECTOR: LazyLock<Collector> = LazyLock::new(|| {
    let mut config = Config::default();
    config.collector.privacy_key = Some("fuzz-privacy-key".into());
    config.collector.prices_file = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prices.toml").into();
    // An invariant of the fuzz build: the shipped configuration loads.
    modelperf_collector::collector(&config).unwrap_or_else(|e| panic!("collector: {e}"))
});

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
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
    match COLLECTOR.handle(&msg) {
        Ok(outputs) => {
            for out in outputs {
                if let Err(e) = modelperf_schema::decode_event(&out.payload, Some("application/msgpack")) {
                    panic!("a clean event on {} does not decode again: {e}", out.subject);
                }
            }
        }
        Err(Failure::Terminate { reason, .. }) => assert!(!reason.is_empty(), "a refusal without a reason"),
        Err(Failure::Retry(reason)) => panic!("hostile input retried, not dead-lettered: {reason}"),
    }
});
