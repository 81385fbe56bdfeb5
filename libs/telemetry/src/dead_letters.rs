//! Dead letters written by this process, counted per stage and error code, for the heartbeat
//! (`Heartbeat::dead_letters`): the monitor pages on their growth without reading `PERF_DLQ`,
//! which holds the original bytes of what failed and is for operators only.

use std::collections::BTreeMap;
use std::sync::Mutex;

static COUNTS: Mutex<BTreeMap<(String, String), u64>> = Mutex::new(BTreeMap::new());

/// Counts one dead letter of `stage` (the `<stage>` of `perf.dlq.<stage>`) with `code`.
pub fn record(stage: &str, code: &str) {
    // A poisoned lock only means another thread panicked while counting: the map is intact.
    let mut counts = COUNTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    *counts.entry((stage.to_owned(), code.to_owned())).or_default() += 1;
}

/// The dead letters of `stage` counted so far, by code (monotonic for the life of the process).
pub fn of_stage(stage: &str) -> BTreeMap<String, u64> {
    let counts = COUNTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    counts.iter().filter(|((s, _), _)| s == stage).map(|((_, code), n)| (code.clone(), *n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_per_stage_and_code() {
        record("test-stage-a", "schema");
        record("test-stage-a", "schema");
        record("test-stage-a", "too_late");
        record("test-stage-b", "schema");
        let a = of_stage("test-stage-a");
        assert_eq!(a.get("schema"), Some(&2));
        assert_eq!(a.get("too_late"), Some(&1));
        assert_eq!(of_stage("test-stage-b").get("schema"), Some(&1));
        assert!(of_stage("test-stage-none").is_empty());
    }
}
