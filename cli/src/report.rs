//! `modelperf report`: the report of a period on demand, built from `PERF_METRICS` and
//! `PERF_SIGNALS` by the analyzer's own code, written as HTML, Markdown or JSON; `--publish`
//! also stores it in `modelperf_reports` and announces it on `perf.reports.adhoc` like a
//! scheduled report.

use std::path::PathBuf;

use anyhow::Context as _;
use async_nats::jetstream::Context;
use modelperf_analyzer::report::source::{self, Format};

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Start of the period: an RFC 3339 time, or a duration ago (`24h`, `7d`).
    #[arg(long, default_value = "7d")]
    since: String,
    /// End of the period (exclusive): an RFC 3339 time, or a duration ago; default now.
    #[arg(long)]
    until: Option<String>,
    /// html, md or json.
    #[arg(long, default_value = "html", value_parser = parse_format)]
    format: Format,
    /// Write here instead of to stdout.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// The window length read from PERF_METRICS (`1h` is merged from `1m`, and far fewer).
    #[arg(long, default_value = "1h")]
    window: String,
    /// At most this many points per latency line.
    #[arg(long, default_value_t = 168)]
    max_points: usize,
    /// Also store it in modelperf_reports (every format) and announce it on perf.reports.adhoc.
    #[arg(long)]
    publish: bool,
}

fn parse_format(s: &str) -> Result<Format, String> {
    Format::parse(s).ok_or_else(|| format!("{s:?}: use html, md or json"))
}

pub async fn run(js: &Context, args: &ReportArgs) -> anyhow::Result<()> {
    let start = crate::time_arg("--since", &args.since)?;
    let end = match &args.until {
        Some(u) => crate::time_arg("--until", u)?,
        None => chrono::Utc::now(),
    };
    anyhow::ensure!(start < end, "--since must be before --until");
    let window: modelperf_schema::names::WindowSpec =
        args.window.parse().map_err(|e| anyhow::anyhow!("--window {}: {e}", args.window))?;
    anyhow::ensure!(args.max_points >= 2, "--max-points must be at least 2");
    let report = source::report(js, "adhoc", start, end, window.name(), args.max_points).await?;
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    let body = args.format.render(&report);
    match &args.output {
        Some(path) => {
            std::fs::write(path, &body).with_context(|| format!("write {}", path.display()))?;
            eprintln!(
                "{} report of {} models, {} windows, {} anomalies written to {}",
                args.format.ext(),
                report.models.len(),
                report.windows,
                report.anomalies.len(),
                path.display()
            );
        }
        None => print!("{body}"),
    }
    if args.publish {
        let (a, duplicate) = source::publish(js, &report, &Format::ALL).await?;
        let how = if duplicate { "already announced" } else { "announced" };
        eprintln!("stored as {} ({}), {how} on perf.reports.adhoc", a.object, a.formats.join(", "));
    }
    Ok(())
}
