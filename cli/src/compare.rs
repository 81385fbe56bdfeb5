//! `modelperf compare`: which model is better for a task type over a period, with intervals,
//! corrected pairwise tests and a ranking that says when models cannot be separated — built from
//! `PERF_METRICS` (and `PERF_EVENTS` for `--weighted` and `--run`) by the analyzer's own code.

use async_nats::jetstream::Context;
use modelperf_analyzer::compare::source::{self, Query};
use modelperf_analyzer::compare::{Correction, render_table, to_json};
use modelperf_stats::Bootstrap;

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The task type compared.
    #[arg(long)]
    task_type: String,
    /// Start of the period: an RFC 3339 time, or a duration ago (`24h`, `7d`).
    #[arg(long, default_value = "7d")]
    since: String,
    /// End of the period (exclusive): an RFC 3339 time, or a duration ago; default now.
    #[arg(long)]
    until: Option<String>,
    /// Compare this benchmark run paired (shared `benchmark.case_id`s) from PERF_EVENTS.
    #[arg(long)]
    run: Option<String>,
    /// The window length read from PERF_METRICS.
    #[arg(long, default_value = "1h")]
    window: String,
    /// Multiple-testing correction: holm (family-wise error) or bh (false discovery rate).
    #[arg(long, default_value = "holm", value_parser = parse_correction)]
    correction: Correction,
    /// The level at which an adjusted p-value separates two models.
    #[arg(long, default_value_t = 0.05)]
    alpha: f64,
    /// Also read the period's routing decisions and outcomes from PERF_EVENTS for
    /// inverse-propensity-weighted estimates.
    #[arg(long)]
    weighted: bool,
    /// At most this many events are read for --weighted or --run.
    #[arg(long, default_value_t = 2_000_000)]
    max_events: usize,
    /// Bootstrap resamples of the latency intervals, and the generator's seed.
    #[arg(long, default_value_t = 2000)]
    resamples: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

fn parse_correction(s: &str) -> Result<Correction, String> {
    Correction::parse(s).ok_or_else(|| format!("{s:?}: use holm or bh"))
}

pub async fn run(js: &Context, args: &CompareArgs) -> anyhow::Result<()> {
    let start = crate::time_arg("--since", &args.since)?;
    let end = match &args.until {
        Some(u) => crate::time_arg("--until", u)?,
        None => chrono::Utc::now(),
    };
    anyhow::ensure!(start < end, "--since must be before --until");
    anyhow::ensure!(args.alpha > 0.0 && args.alpha < 0.5, "--alpha must be between 0 and 0.5");
    anyhow::ensure!(args.resamples >= 100, "--resamples must be at least 100");
    let window: modelperf_schema::names::WindowSpec =
        args.window.parse().map_err(|e| anyhow::anyhow!("--window {}: {e}", args.window))?;
    let query = Query {
        task_type: args.task_type.clone(),
        start,
        end,
        window: window.name().to_owned(),
        run: args.run.clone(),
        weighted: args.weighted,
        max_events: args.max_events,
        correction: args.correction,
        alpha: args.alpha,
        bootstrap: Bootstrap { resamples: args.resamples, confidence: 0.95, seed: args.seed },
    };
    let comparison = source::compare(js, &query).await?;
    if args.json {
        println!("{}", to_json(&comparison));
    } else {
        print!("{}", render_table(&comparison));
    }
    Ok(())
}
