//! The sketch's wire form, frozen: `schemas/fixtures/sketch/latency-v1.bin` was written once by
//! this crate from the values listed in `latency-v1.json`, and `python-v1.bin` by DataDog's
//! sketches-py (`tests/interop.py --bless`) from the same values. Both decode forever, to the
//! quantiles recorded in the JSON; and the values still encode to the same bytes.
//!
//! `MODELPERF_BLESS=1 cargo test -p modelperf-sketch --test fixture` writes `latency-v1.json` and
//! `latency-v1.bin` when either is missing (delete them to regenerate on purpose — but a new
//! encoding is a new version, `latency-v2`, not a rewrite of v1).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};

use modelperf_sketch::{RELATIVE_ACCURACY, Sketch};
use serde_json::{Value, json};

const QUANTILES: [f64; 11] = [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/fixtures/sketch")
}

fn bless() -> bool {
    std::env::var_os("MODELPERF_BLESS").is_some()
}

/// 300 latencies from 0.1 ms to 100 s, spread by the golden-ratio sequence, rounded to the
/// microsecond, with weights 1, 2, 4 and 10 (sample rates 1, 1/2, 1/4, 1/10), plus two zeros.
/// Values within 1e-6 of a bin boundary are left out, so that no platform's `ln` can put them in
/// another bin.
fn fixture_values() -> Vec<(f64, f64)> {
    let gamma = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY);
    let weights = [1.0, 1.0, 2.0, 4.0, 1.0, 10.0];
    let mut values = vec![(0.0, 1.0), (0.0, 2.0)];
    for i in 0..300u32 {
        let spread = (f64::from(i) * 0.618_033_988_749_895).fract();
        let value = (10f64.powf(-1.0 + 6.0 * spread) * 1000.0).round() / 1000.0;
        let position = value.ln() / gamma.ln();
        if (position - position.round()).abs() < 1e-6 {
            continue;
        }
        values.push((value, weights[i as usize % weights.len()]));
    }
    values
}

/// The exact lower quantile, as documented on `Sketch::quantile`.
fn exact_quantile(values: &[(f64, f64)], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = values.iter().map(|(_, w)| w).sum();
    let rank = q * (total - 1.0);
    let mut cumulative = 0.0;
    for (value, weight) in &sorted {
        cumulative += weight;
        if cumulative > rank {
            return *value;
        }
    }
    sorted.last().unwrap().0
}

fn sketch_of(values: &[(f64, f64)]) -> Sketch {
    let mut sketch = Sketch::new();
    for &(value, weight) in values {
        sketch.add_weighted(value, weight);
    }
    sketch
}

fn write_fixture() {
    let values = fixture_values();
    let sketch = sketch_of(&values);
    let bytes = sketch.to_bytes();
    let decoded = Sketch::from_bytes(&bytes).unwrap();
    let gamma = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY);
    let quantiles: Vec<Value> = QUANTILES
        .iter()
        .map(|&q| json!({"q": q, "exact": exact_quantile(&values, q), "sketch": decoded.quantile(q).unwrap()}))
        .collect();
    let zero_weight: f64 = values.iter().filter(|(v, _)| *v == 0.0).map(|(_, w)| w).sum();
    let description = json!({
        "description": "latency_sketch v1: a DDSketch in DataDog's protobuf encoding (ddsketch.proto of \
            sketches-go/-java/-py/-js), written by modelperf-sketch from `values` ([milliseconds, weight]). \
            `exact` is the exact weighted lower quantile (the first value whose cumulative weight exceeds \
            q * (count - 1)); `sketch` is what a reader of the bytes gets.",
        "relative_accuracy": RELATIVE_ACCURACY,
        "gamma": gamma,
        "index_offset": 0,
        "interpolation": "NONE",
        "key": "ceil(ln(v) / ln(gamma)) + index_offset; bin k represents gamma^(k - index_offset) * 2 / (1 + gamma)",
        "encoded_bytes": bytes.len(),
        "count": sketch.count(),
        "zero_count": zero_weight,
        "values": values.iter().map(|(v, w)| json!([v, w])).collect::<Vec<_>>(),
        "quantiles": quantiles,
    });
    std::fs::write(dir().join("latency-v1.bin"), &bytes).unwrap();
    std::fs::write(dir().join("latency-v1.json"), serde_json::to_string_pretty(&description).unwrap() + "\n").unwrap();
}

fn read_description() -> (Value, Vec<(f64, f64)>) {
    let path = dir().join("latency-v1.json");
    if bless() && !(path.exists() && dir().join("latency-v1.bin").exists()) {
        write_fixture();
    }
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing {}: run with MODELPERF_BLESS=1", path.display()));
    let description: Value = serde_json::from_str(&text).unwrap();
    let values = description["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| (pair[0].as_f64().unwrap(), pair[1].as_f64().unwrap()))
        .collect();
    (description, values)
}

fn relative_difference(a: f64, b: f64) -> f64 {
    if a == b { 0.0 } else { (a - b).abs() / b.abs().max(a.abs()) }
}

/// Checks a decoded sketch against the recorded quantiles.
fn check_quantiles(name: &str, decoded: &Sketch, description: &Value, values: &[(f64, f64)]) {
    assert_eq!(decoded.count(), description["count"].as_f64().unwrap(), "{name}: count");
    for expected in description["quantiles"].as_array().unwrap() {
        let q = expected["q"].as_f64().unwrap();
        let exact = expected["exact"].as_f64().unwrap();
        let recorded = expected["sketch"].as_f64().unwrap();
        assert_eq!(exact, exact_quantile(values, q), "{name}: the exact q={q} of the listed values");
        let estimate = decoded.quantile(q).unwrap();
        // The recorded estimate again, up to the last bits of `exp` on another platform.
        assert!(relative_difference(estimate, recorded) < 1e-12, "{name}: q={q}: {estimate} vs recorded {recorded}");
        assert!(
            (estimate - exact).abs() <= RELATIVE_ACCURACY * exact * (1.0 + 1e-9),
            "{name}: q={q}: {estimate} vs exact {exact}"
        );
    }
}

#[test]
fn frozen_latency_sketch_decodes_forever() {
    let (description, values) = read_description();
    let bin = dir().join("latency-v1.bin");
    let bytes = std::fs::read(&bin).unwrap_or_else(|_| panic!("missing {}: run with MODELPERF_BLESS=1", bin.display()));
    let decoded = Sketch::from_bytes(&bytes).unwrap();
    check_quantiles("latency-v1.bin", &decoded, &description, &values);
    assert_eq!(decoded.to_bytes(), bytes, "decoding and encoding again changed the bytes");
}

#[test]
fn the_listed_values_still_encode_to_the_frozen_bytes() {
    let (description, values) = read_description();
    let bytes = std::fs::read(dir().join("latency-v1.bin")).unwrap();
    let sketch = sketch_of(&values);
    assert_eq!(sketch.to_bytes(), bytes, "the encoding or the mapping changed: that is a new version");
    assert_eq!(bytes.len() as u64, description["encoded_bytes"].as_u64().unwrap());
    assert_eq!(description["gamma"].as_f64().unwrap(), (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY));
    // The window fields come from the exact in-memory statistics.
    let max = values.iter().map(|(v, _)| *v).fold(0.0, f64::max);
    assert_eq!(sketch.max(), Some(max));
    assert_eq!(sketch.min(), Some(0.0));
}

#[test]
fn sketches_py_encoding_decodes_forever() {
    let (description, values) = read_description();
    let path = dir().join("python-v1.bin");
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|_| panic!("missing {}: run `python3 libs/sketch/tests/interop.py --bless`", path.display()));
    let decoded = Sketch::from_bytes(&bytes).unwrap();
    check_quantiles("python-v1.bin", &decoded, &description, &values);
    // Same keys as ours (both round up), same weights: the canonical form is our own fixture.
    let ours = std::fs::read(dir().join("latency-v1.bin")).unwrap();
    assert_eq!(decoded.to_bytes(), ours, "sketches-py put values in other bins");
    // And it merges with ours: the mappings agree.
    let mut merged = Sketch::from_bytes(&ours).unwrap();
    merged.merge(&decoded).unwrap();
    assert_eq!(merged.count(), 2.0 * decoded.count());
}

/// `MODELPERF_SKETCH_FOREIGN=<file>` names a sketch another DDSketch library encoded from the
/// values of `latency-v1.json` (`interop.py` sets it for a fresh sketches-py encoding); it must
/// decode to the recorded quantiles and to our own bins. Without the variable there is nothing to
/// check.
#[test]
fn foreign_encoding_named_by_the_environment() {
    let Some(path) = std::env::var_os("MODELPERF_SKETCH_FOREIGN") else { return };
    let (description, values) = read_description();
    let bytes = std::fs::read(&path).unwrap();
    let decoded = Sketch::from_bytes(&bytes).unwrap();
    check_quantiles("MODELPERF_SKETCH_FOREIGN", &decoded, &description, &values);
    let ours = std::fs::read(dir().join("latency-v1.bin")).unwrap();
    assert_eq!(decoded.to_bytes(), ours, "the foreign library put values in other bins");
}
