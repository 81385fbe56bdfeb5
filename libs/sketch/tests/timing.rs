//! Rough costs of the hot operations, printed, never asserted (speed targets belong in
//! benchmarks): `cargo test --release -p modelperf-sketch --test timing -- --ignored --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::hint::black_box;
use std::time::Instant;

use modelperf_sketch::Sketch;

/// Latencies from 0.1 ms to 100 s, log-spread (about 700 bins).
fn latency(i: u64) -> f64 {
    let spread = (i as f64 * 0.618_033_988_749_895).fract();
    10f64.powf(-1.0 + 6.0 * spread)
}

fn per_op(label: &str, ops: u64, run: impl FnOnce()) {
    let start = Instant::now();
    run();
    let elapsed = start.elapsed();
    println!("{label:<40} {:>10.1} ns/op ({ops} ops in {elapsed:?})", elapsed.as_nanos() as f64 / ops as f64);
}

#[test]
#[ignore = "prints timings; run in release with --ignored --nocapture"]
fn timings() {
    const N: u64 = 2_000_000;
    let mut sketch = Sketch::new();
    per_op("add_weighted", N, || {
        for i in 0..N {
            sketch.add_weighted(black_box(latency(i)), 1.0);
        }
    });
    let full = sketch.clone();
    let bytes = full.to_bytes();
    println!("encoded size: {} bytes", bytes.len());

    const M: u64 = 20_000;
    let mut merged = Sketch::new();
    per_op("merge (same range, ~700 bins)", M, || {
        for _ in 0..M {
            merged.merge(black_box(&full)).unwrap();
        }
    });
    per_op("to_bytes (~700 bins)", M, || {
        for _ in 0..M {
            black_box(black_box(&full).to_bytes());
        }
    });
    per_op("from_bytes (~700 bins)", M, || {
        for _ in 0..M {
            black_box(Sketch::from_bytes(black_box(&bytes)).unwrap());
        }
    });
    per_op("quantile (p99)", M, || {
        for _ in 0..M {
            black_box(black_box(&full).quantile(0.99));
        }
    });
}
