//! DDSketch decoding on hostile bytes (the `latency_sketch` of partials and metrics messages,
//! possibly from other implementations). Properties: never a panic; a sketch that decodes
//! re-encodes to bytes that decode to the same sketch, and its quantiles are ordered.

#![no_main]

use libfuzzer_sys::fuzz_target;
use modelperf_sketch::Sketch;

fuzz_target!(|data: &[u8]| {
    let Ok(sketch) = Sketch::from_bytes(data) else { return };
    let again = Sketch::from_bytes(&sketch.to_bytes()).expect("our own encoding decodes");
    assert_eq!(again.to_bytes(), sketch.to_bytes());
    let (p50, p99) = (sketch.quantile(0.5), sketch.quantile(0.99));
    if let (Some(a), Some(b)) = (p50, p99) {
        assert!(a <= b || a.is_nan() || b.is_nan(), "p50 {a} above p99 {b}");
    }
    let mut merged = sketch.clone();
    let _ = merged.merge(&again);
});
