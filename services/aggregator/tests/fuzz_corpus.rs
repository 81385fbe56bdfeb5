//! The committed fuzz corpus (`fuzz/corpus/partial`, grown by `make fuzz`) replayed in every test
//! run with the fuzz target's properties: decoding a partial and applying it to a finaliser never
//! panics, and a window partial's state survives the trip through the accumulator unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use modelperf_aggregator::finaliser::{FinalMarks, Finaliser};
use modelperf_aggregator::window::Accumulator;
use modelperf_schema::messages::Partial;
use modelperf_testkit::project_root;

#[test]
fn the_fuzz_corpus_is_refused_or_applied_without_a_panic() {
    let config = modelperf_aggregator::Config::default();
    let dir = project_root().join("fuzz/corpus/partial");
    let (mut windows, mut watermarks) = (0, 0);
    let mut finaliser =
        Finaliser::new(2, config.aggregator.windows.clone(), config.aggregator.rollups(), FinalMarks::default());
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let Ok(partial) = modelperf_schema::from_msgpack::<Partial>(&std::fs::read(&path).unwrap()) else { continue };
        match &partial {
            Partial::Window { state, .. } => {
                if let Ok(acc) = Accumulator::from_state(state) {
                    let again = Accumulator::from_state(&acc.to_state()).unwrap();
                    assert_eq!(again.to_state(), acc.to_state(), "{}", path.display());
                }
                windows += 1;
            }
            Partial::Watermark { .. } => watermarks += 1,
        }
        let _ = finaliser.apply(1, &partial);
    }
    assert!(windows > 0 && watermarks > 0, "{windows} window and {watermarks} watermark partials in {}", dir.display());
}
