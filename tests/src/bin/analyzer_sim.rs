//! `analyzer-sim`: how well the analyzer's anomaly checks find injected changes, and how often
//! they fire on noise, over many seeds of simulated metrics (the scenario is documented in
//! `modelperf_analyzer::sim`; thresholds are the analyzer's defaults unless overridden through
//! the usual `MODELPERF_ANALYZER__*` keys).
//!
//! Flags: `--seeds N` (default 20), `--events E` (mean events per series per window, default
//! 300), `--series N` (default 10).

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::bail;
use modelperf_analyzer::detect::type_name;
use modelperf_analyzer::sim::{Change, Scenario, run};

fn main() -> anyhow::Result<()> {
    let mut seeds = 20u64;
    let mut scenario = Scenario::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--seeds" => seeds = value()?.parse()?,
            "--events" => scenario.events = value()?.parse()?,
            "--series" => scenario.series = value()?.parse()?,
            other => bail!("unknown flag {other} (--seeds N --events E --series N)"),
        }
    }
    let config = modelperf_analyzer::Config::load(None)?.analyzer;
    println!(
        "{} seeds × {} series × {} measured windows (after {} of warm-up), {} events per series-window; changes {:?} for {} windows",
        seeds,
        scenario.series,
        scenario.measured,
        scenario.warmup,
        scenario.events,
        scenario.changes,
        scenario.change_windows
    );
    let began = Instant::now();
    let mut delays: BTreeMap<String, Vec<Option<i64>>> = BTreeMap::new();
    let mut false_by_type: BTreeMap<&str, usize> = BTreeMap::new();
    let mut false_total = 0usize;
    for seed in 0..seeds {
        let outcome = run(&scenario, &config, seed);
        let shown: Vec<String> = outcome
            .delays
            .iter()
            .map(|(c, d)| format!("{}: {}", label(*c), d.map_or("missed".into(), |d| d.to_string())))
            .collect();
        println!(
            "seed {seed:>2}: delays (windows) {}; false anomalies {}",
            shown.join(", "),
            outcome.false_anomalies.len()
        );
        for (c, d) in outcome.delays {
            delays.entry(label(c)).or_default().push(d);
        }
        for kind in &outcome.false_anomalies {
            *false_by_type.entry(type_name(*kind)).or_default() += 1;
        }
        false_total += outcome.false_anomalies.len();
    }
    println!("summary ({:.1} s):", began.elapsed().as_secs_f64());
    for (change, ds) in &delays {
        let within = ds.iter().filter(|d| d.is_some_and(|d| d <= 3)).count();
        let mut found: Vec<i64> = ds.iter().flatten().copied().collect();
        found.sort_unstable();
        let median = found.get(found.len() / 2).copied();
        println!(
            "  {change}: detected within 3 windows in {within} of {} ({:.0} %), median delay {} windows, worst {}",
            ds.len(),
            100.0 * within as f64 / ds.len() as f64,
            median.map_or("-".into(), |m| m.to_string()),
            found.last().map_or("-".into(), |m| m.to_string()),
        );
    }
    let days = seeds as f64 * scenario.measured as f64 / 1_440.0;
    println!(
        "  false anomalies: {false_total} in {days:.0} simulated days across {} series = {:.2} per 24 h ({})",
        scenario.series,
        false_total as f64 / days,
        if false_by_type.is_empty() {
            "none".to_owned()
        } else {
            false_by_type.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
        }
    );
    Ok(())
}

fn label(c: Change) -> String {
    match c {
        Change::LatencyP95(k) => format!("p95 ×{k}"),
        Change::ErrorRate(d) => format!("error rate +{:.0} points", 100.0 * d),
        Change::Quality(d) => format!("quality {d:+}"),
    }
}
