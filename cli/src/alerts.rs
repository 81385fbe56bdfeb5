//! `modelperf alerts`: the firing alerts and the recent transitions, from `PERF_ALERTS`
//! (`perf.alerts.<state>`).
//!
//! The stream holds every transition the monitor published (90 days): an alert is firing when its
//! fingerprint's latest transition is `firing`. A message that does not decode is counted and
//! named on stderr, never skipped silently.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{Context, consumer};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use modelperf_schema::messages::{Alert, AlertState, Severity};
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct AlertsArgs {
    /// Only alerts of at least this severity (info, warning, critical).
    #[arg(long, value_parser = parse_severity)]
    severity: Option<Severity>,
    /// Transitions since: an RFC 3339 time, or a duration ago (`30m`, `6h`, `2d`).
    #[arg(long, default_value = "24h")]
    since: String,
    /// Only alerts whose labels match, `key=value` (repeatable), e.g. `alertname=ModelAnomaly`.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// At most this many transitions, the latest (0: all).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// JSON on stdout: `{firing: [alert], transitions: [{at, seq, alert}], undecodable}`.
    #[arg(long)]
    json: bool,
}

fn parse_severity(s: &str) -> Result<Severity, String> {
    match s {
        "info" => Ok(Severity::Info),
        "warning" => Ok(Severity::Warning),
        "critical" => Ok(Severity::Critical),
        _ => Err(format!("{s:?}: use info, warning or critical")),
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?}: use key=value"))?;
    Ok((k.to_owned(), v.to_owned()))
}

/// One transition as the stream holds it.
#[derive(Debug, Serialize)]
struct Transition {
    /// When the monitor published it.
    at: DateTime<Utc>,
    /// Its sequence in `PERF_ALERTS`.
    seq: u64,
    alert: Alert,
}

#[derive(Debug, Serialize)]
struct Listing<'a> {
    firing: Vec<&'a Alert>,
    transitions: Vec<&'a Transition>,
    undecodable: u64,
}

pub async fn run(js: &Context, args: &AlertsArgs) -> anyhow::Result<()> {
    let since = crate::time_arg("--since", &args.since)?;
    let (all, undecodable) = read(js).await?;
    let wanted = |a: &Alert| {
        args.severity.is_none_or(|s| a.severity >= s)
            && args.labels.iter().all(|(k, v)| a.labels.get(k).is_some_and(|have| have == v))
    };
    // The latest transition per fingerprint decides what fires now.
    let mut latest: BTreeMap<&str, &Alert> = BTreeMap::new();
    for t in &all {
        latest.insert(&t.alert.fingerprint, &t.alert);
    }
    let mut firing: Vec<&Alert> = latest.into_values().filter(|a| a.state == AlertState::Firing && wanted(a)).collect();
    firing.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.starts_at.cmp(&b.starts_at)));
    let mut transitions: Vec<&Transition> = all.iter().filter(|t| t.at >= since && wanted(&t.alert)).collect();
    if args.limit > 0 && transitions.len() > args.limit {
        transitions.drain(..transitions.len() - args.limit);
    }
    if undecodable > 0 {
        eprintln!("{undecodable} messages of PERF_ALERTS do not decode as alerts (left out)");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&Listing { firing, transitions, undecodable })?);
        return Ok(());
    }
    if firing.is_empty() {
        println!("no alerts firing");
    } else {
        println!("{} firing", firing.len());
        println!("{:<20}  {:<8}  {:<32}  labels / summary", "since", "severity", "alert");
        for a in &firing {
            row(&fmt_ts(&a.starts_at), a);
        }
    }
    println!("\ntransitions since {} ({}):", fmt_ts(&since), transitions.len());
    if !transitions.is_empty() {
        println!("{:<20}  {:<8}  {:<8}  {:<32}  labels / summary", "at", "state", "severity", "alert");
    }
    for t in &transitions {
        let state = t.alert.state.as_str();
        print!("{:<20}  {state:<8}  ", fmt_ts(&t.at));
        row("", &t.alert);
    }
    Ok(())
}

fn fmt_ts(ts: &DateTime<Utc>) -> String {
    ts.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn severity_word(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}

/// One alert: when (if given), severity, name, the other labels, and the summary.
fn row(when: &str, a: &Alert) {
    let name = a.labels.get("alertname").map_or("?", String::as_str);
    let labels: Vec<String> = a
        .labels
        .iter()
        .filter(|(k, _)| *k != "alertname" && *k != "severity")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let summary = a.annotations.get("summary").map_or("", String::as_str);
    if when.is_empty() {
        println!("{:<8}  {name:<32}  {}  {}", severity_word(a.severity), labels.join(","), printable(summary));
    } else {
        println!(
            "{when:<20}  {:<8}  {name:<32}  {}  {}",
            severity_word(a.severity),
            labels.join(","),
            printable(summary)
        );
    }
}

/// Control characters (terminal escapes among them) escaped.
fn printable(s: &str) -> String {
    s.chars().flat_map(char::escape_debug).collect()
}

/// Every transition in `PERF_ALERTS`, in order, and how many messages did not decode.
async fn read(js: &Context) -> anyhow::Result<(Vec<Transition>, u64)> {
    let stream =
        js.get_stream(modelperf_bus::streams::ALERTS).await.context("stream PERF_ALERTS (run `modelperf ensure`)")?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .context("reading PERF_ALERTS")?;
    let pending = consumer.cached_info().num_pending;
    let (mut out, mut undecodable) = (Vec::new(), 0);
    if pending == 0 {
        return Ok((out, undecodable));
    }
    let mut messages = consumer.messages().await?;
    let mut seen = 0;
    while seen < pending {
        let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(10), messages.next()).await else {
            anyhow::bail!("PERF_ALERTS stopped delivering after {seen} of {pending} messages");
        };
        let m = m?;
        seen += 1;
        let (seq, at) = match m.info() {
            Ok(i) => (i.stream_sequence, DateTime::<Utc>::from(std::time::SystemTime::from(i.published))),
            Err(_) => (0, Utc::now()),
        };
        match modelperf_schema::from_msgpack::<Alert>(&m.payload) {
            Ok(alert) => out.push(Transition { at, seq, alert }),
            Err(e) => {
                undecodable += 1;
                eprintln!("PERF_ALERTS seq {seq} ({}): {e}", m.subject);
            }
        }
    }
    Ok((out, undecodable))
}
