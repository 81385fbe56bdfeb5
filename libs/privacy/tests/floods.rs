//! `scrub` on hostile floods: 64 KiB of one finding repeated. Every copy must be replaced; the
//! detectors are linear in the input, so a flood costs about as much as any other 64 KiB.
//!
//! Timing is never asserted here (see STYLE.md: speed targets live in benchmarks). To see the
//! cost of each flood, run `cargo test --release -p modelperf-privacy --test floods -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::Instant;

use modelperf_privacy::scrub;

const FLOOD_BYTES: usize = 64 * 1024;

/// `unit` repeated to at least 64 KiB.
fn flood(unit: &str) -> String {
    unit.repeat(FLOOD_BYTES.div_ceil(unit.len()))
}

/// Scrubs the flood of `unit` a few times, prints the fastest run and returns the output. The
/// first run also pays for compiling the patterns, hence the best of several.
fn scrub_flood(unit: &str) -> (String, String) {
    let input = flood(unit);
    let mut best = f64::INFINITY;
    let mut out = String::new();
    for _ in 0..5 {
        let started = Instant::now();
        out = scrub(&input).into_owned();
        best = best.min(started.elapsed().as_secs_f64() * 1e3);
    }
    println!("{:>28} {best:>8.3} ms", format!("{unit:?}"));
    (input, out)
}

#[test]
fn floods_of_each_kind_are_fully_scrubbed() {
    for (unit, replaced) in [
        ("a@b.cd ", "[email] "),
        ("1.2.3.4 ", "[ip] "),
        ("+1-415-555-0134 ", "[phone] "),
        ("4111 1111 1111 1111 ", "[card] "),
        ("Bearer abcdefgh12345678 ", "Bearer [secret] "),
        ("::ffff:1.2.3.4 ", "[ip] "),
        ("https://u:p@h.io/ ", "https://[secret]@h.io/ "),
        ("(415) 555-0134 ", "[phone] "),
        ("sk-abcdefghijklmnop0123 ", "[secret] "),
        ("2001:db8::1 ", "[ip] "),
    ] {
        let (input, out) = scrub_flood(unit);
        let copies = input.len() / unit.len();
        assert_eq!(out, replaced.repeat(copies), "flood of {unit:?}");
    }
}

#[test]
fn floods_without_findings_pass_unchanged() {
    let units = ["a:b:c:d ", "a::b ", "1.2.3 ", "+0 ", "+1", "x@y ", "x@2x.png ", "Bearer x ", "@", ":", "1.", "1 "];
    for unit in units {
        let (input, out) = scrub_flood(unit);
        assert_eq!(out, input, "flood of {unit:?}");
    }
}
