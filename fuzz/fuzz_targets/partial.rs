//! The finaliser's entry point on hostile partials: a `perf.partials.<window>.<p>` body decoded
//! as the finaliser decodes it, then applied to a finaliser of two partitions with the default
//! windows. Properties: never a panic; a partial that decodes survives the trip through its wire
//! state (`Accumulator::from_state` then `to_state` is the identity on what it keeps).

#![no_main]

use libfuzzer_sys::fuzz_target;
use modelperf_aggregator::finaliser::{FinalMarks, Finaliser};
use modelperf_aggregator::window::Accumulator;
use modelperf_schema::messages::Partial;

fuzz_target!(|data: &[u8]| {
    let Ok(partial) = modelperf_schema::from_msgpack::<Partial>(data) else { return };
    if let Partial::Window { state, .. } = &partial
        && let Ok(acc) = Accumulator::from_state(state)
    {
        let again = Accumulator::from_state(&acc.to_state()).expect("our own state decodes");
        assert_eq!(again.to_state(), acc.to_state());
    }
    let config = modelperf_aggregator::Config::default();
    let mut finaliser =
        Finaliser::new(2, config.aggregator.windows.clone(), config.aggregator.rollups(), FinalMarks::default());
    let _ = finaliser.apply(1, &partial);
    let _ = finaliser.apply(2, &partial);
});
