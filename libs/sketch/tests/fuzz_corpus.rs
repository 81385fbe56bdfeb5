//! The committed fuzz corpus (`fuzz/corpus/sketch`, grown by `make fuzz`) replayed in every test
//! run with the fuzz target's properties: decoding never panics, and a sketch that decodes
//! re-encodes to bytes that decode to the same sketch, with ordered quantiles.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use modelperf_sketch::Sketch;

#[test]
fn the_fuzz_corpus_decodes_or_is_refused_and_round_trips() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/sketch");
    let mut decoded = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let Ok(sketch) = Sketch::from_bytes(&std::fs::read(&path).unwrap()) else { continue };
        let again = Sketch::from_bytes(&sketch.to_bytes()).unwrap();
        assert_eq!(again.to_bytes(), sketch.to_bytes(), "{}", path.display());
        if let (Some(a), Some(b)) = (sketch.quantile(0.5), sketch.quantile(0.99)) {
            assert!(a <= b, "{}: p50 {a} above p99 {b}", path.display());
        }
        decoded += 1;
    }
    assert!(decoded > 0, "no sketch in {} decodes", dir.display());
}
