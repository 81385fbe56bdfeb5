//! Re-aggregation (`modelperf reaggregate --since T [--reprice]`): rebuilds the windows of a
//! period from `PERF_EVENTS` — after a bug fix, or to re-price events from their tokens with a
//! corrected catalog — and rewrites them with the next revision.
//!
//! Only windows that are closed for good are rebuilt: those that ended `max_revision_age` or more
//! before the finaliser's close point for their length (read from its checkpoint). Nothing can
//! revise them any more (a later event for them is `too_late`), so a rebuild never races with
//! the live aggregator. Younger windows are left to it and reported.
//!
//! The events come from `PERF_EVENTS` (7 days by default): a period older than the stream's
//! first event is refused. The rebuilt windows replace what InfluxDB held for the period: its
//! points are deleted first (v1), because a rewritten point keeps any old field the new one
//! lacks — a cost that re-pricing found to be unknown would otherwise survive — and series no
//! event rebuilds any more (e.g. after a bug fix changed a series' dimensions) go with them;
//! the summary counts them. With the v2 API, which has no InfluxQL `DELETE`, the points are
//! overwritten only, and the summary says so.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use modelperf_bus::{CheckpointStore, streams};
use modelperf_influx::Sink;
use modelperf_pricing::Catalog;
use modelperf_schema::Event;
use modelperf_schema::names::WindowSpec;
use modelperf_telemetry::Health;

use crate::config::Config;
use crate::finaliser::{Dims, FinalMarks};
use crate::persist::{MEASUREMENT, Persister, SKETCH_MEASUREMENT};
use crate::service::FINAL_KEY;
use crate::window::{Accumulator, series_of};
use crate::windows::window_start;

/// How far before the period's start the read of `PERF_EVENTS` begins: events are stored a
/// little before their `ts` when a producer's clock runs ahead (the collector accepts up to
/// 5 minutes).
const READ_MARGIN: chrono::Duration = chrono::Duration::minutes(10);

/// What a re-aggregation did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Events read from `PERF_EVENTS`.
    pub events_read: u64,
    /// Events that fell in a rebuilt window.
    pub events_used: u64,
    /// Events skipped because the aggregator had refused them as `too_late`.
    pub refused: u64,
    /// Events whose cost was computed again.
    pub repriced: u64,
    /// Window length → (windows, series) rewritten.
    pub rewritten: BTreeMap<String, (usize, usize)>,
    /// Window length → the end of the rebuilt range (windows after it were too young).
    pub through: BTreeMap<String, DateTime<Utc>>,
    /// Series in InfluxDB for the period that no event rebuilt (deleted with v1).
    pub stale_series: usize,
    /// Whether the period's old points were deleted before the rewrite (v1 only).
    pub deleted_first: bool,
    /// Total weighted cost of the rebuilt `task_completed` windows before and after.
    pub cost_before: f64,
    #[allow(missing_docs)]
    pub cost_after: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "events read {}, used {}, repriced {}, skipped as too_late {}",
            self.events_read, self.events_used, self.repriced, self.refused
        )?;
        for (w, (windows, series)) in &self.rewritten {
            let through = self.through.get(w).map(modelperf_schema::format_ts).unwrap_or_default();
            writeln!(f, "{w}: {windows} windows, {series} series rewritten (closed for good through {through})")?;
        }
        if self.stale_series > 0 {
            let fate = if self.deleted_first { "were deleted" } else { "were left as they are" };
            writeln!(f, "{} series in InfluxDB had no events in PERF_EVENTS and {fate}", self.stale_series)?;
        }
        if !self.deleted_first {
            writeln!(f, "old points were overwritten, not deleted (v2 API): fields the rebuild lacks keep old values")?;
        }
        write!(f, "cost of the rebuilt windows: {:.6} USD before, {:.6} USD after", self.cost_before, self.cost_after)
    }
}

/// The rebuilt windows of one length.
type Rebuilt = BTreeMap<DateTime<Utc>, BTreeMap<Dims, Accumulator>>;

/// Rebuilds every window closed for good that starts at or after `since` (rounded down to each
/// window's length), re-pricing with `reprice` when given. `progress` gets (read, total).
pub async fn reaggregate(
    js: &Context,
    config: &Config,
    since: DateTime<Utc>,
    reprice: Option<&Catalog>,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<Summary> {
    let a = &config.aggregator;
    let (_, cp) = CheckpointStore::open(js, FINAL_KEY).await?;
    let marks: FinalMarks = match cp {
        Some(cp) if !cp.state.is_empty() => rmp_serde::from_slice(&cp.state).context("finaliser checkpoint")?,
        _ => bail!("the finaliser has not finalised any window yet; nothing to re-aggregate"),
    };
    // The running finaliser's setting, when it is longer than ours: its owners decided with it.
    let max_age = chrono::Duration::from_std(a.max_revision_age.max(Duration::from_secs(marks.max_revision_age_secs)))?;
    // The end of what is closed for good, per window length.
    let mut through = BTreeMap::new();
    for w in &a.windows {
        if let Some(ft) = marks.final_through.get(w.name()) {
            through.insert(w.name().to_owned(), window_start(*ft - max_age, len(w)));
        }
    }
    let owner_windows: Vec<WindowSpec> =
        a.owner_windows().into_iter().filter(|w| through.contains_key(w.name())).collect();
    if owner_windows.is_empty() {
        bail!("no window length is closed for good yet (the finaliser's close point minus max_revision_age)");
    }
    let longest = a.windows.iter().map(len).max().unwrap_or_else(|| chrono::Duration::hours(1));
    let from = window_start(since, longest);

    // Read PERF_EVENTS from a little before the period to the last event now stored.
    let stream = js.get_stream(streams::EVENTS).await.context("stream PERF_EVENTS")?;
    let info = stream.get_info().await.context("PERF_EVENTS info")?;
    let (first_ts, last_seq) = (info.state.first_timestamp, info.state.last_sequence);
    let first_ts = DateTime::<Utc>::from_timestamp(first_ts.unix_timestamp(), 0).unwrap_or_default();
    if first_ts > from - READ_MARGIN && info.state.first_sequence > 1 {
        bail!(
            "PERF_EVENTS starts at {} (retention); windows from {} cannot be rebuilt from it",
            modelperf_schema::format_ts(&first_ts),
            modelperf_schema::format_ts(&from)
        );
    }
    let refused = too_late_letters(js).await?;
    let start = from - READ_MARGIN;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp(start.timestamp())?,
            },
            ..Default::default()
        })
        .await
        .context("ordered consumer on PERF_EVENTS")?;
    let mut messages = consumer.messages().await.context("read PERF_EVENTS")?;
    let mut rebuilt: BTreeMap<String, Rebuilt> = BTreeMap::new();
    let mut summary = Summary { through: through.clone(), ..Summary::default() };
    let mut seen_first = None;
    let mut last_read = 0;
    while last_read < last_seq {
        let msg = match tokio::time::timeout(Duration::from_secs(30), messages.next()).await {
            Ok(Some(msg)) => msg.context("reading PERF_EVENTS")?,
            Ok(None) => bail!("PERF_EVENTS ended at sequence {last_read}, before {last_seq}; nothing was written"),
            Err(_) => {
                bail!("PERF_EVENTS stalled at sequence {last_read} (of {last_seq}) for 30 s; nothing was written")
            }
        };
        let seq = msg.info().map_err(|e| anyhow::anyhow!("message metadata: {e}"))?.stream_sequence;
        last_read = seq;
        let first = *seen_first.get_or_insert(seq);
        summary.events_read += 1;
        if summary.events_read.is_multiple_of(10_000) {
            progress(seq - first + 1, last_seq.saturating_sub(first) + 1);
        }
        if refused.contains(&seq) {
            // The aggregator refused it as too_late: it is in no window.
            summary.refused += 1;
        } else if let Ok(mut e) = modelperf_schema::from_msgpack::<Event>(&msg.payload) {
            let mut used = false;
            for w in &owner_windows {
                let s = window_start(e.ts, len(w));
                if s >= window_start(from, len(w)) && s + len(w) <= through[w.name()] {
                    if !used && let Some(catalog) = reprice {
                        catalog.price_event(&mut e);
                        summary.repriced += 1;
                    }
                    used = true;
                    let series = series_of(&e, &a.group_by);
                    rebuilt
                        .entry(w.name().to_owned())
                        .or_default()
                        .entry(s)
                        .or_default()
                        .entry(series)
                        .or_default()
                        .add(&e);
                }
            }
            summary.events_used += u64::from(used);
        }
    }
    progress(summary.events_read, summary.events_read);
    // Long windows from their source windows, as the finaliser does.
    for r in a.rollups() {
        let Some(r_through) = through.get(r.window.name()).copied() else { continue };
        let mut out = Rebuilt::new();
        for (start, series) in rebuilt.get(r.source.name()).cloned().unwrap_or_default() {
            let r_start = window_start(start, len(&r.window));
            if r_start < window_start(from, len(&r.window)) || r_start + len(&r.window) > r_through {
                continue;
            }
            for (dims, acc) in series {
                // Sketches of one mapping always merge.
                let _ = out.entry(r_start).or_default().entry(dims).or_default().merge(&acc);
            }
        }
        rebuilt.insert(r.window.name().to_owned(), out);
    }

    let sink = Sink::new(config.influx.clone())?;
    sink.ensure().await.context("prepare InfluxDB")?;
    let persister =
        Persister::open(js.clone(), sink.clone(), Health::default(), config.bus.max_ack_pending as usize).await?;
    let partials_seq = js.get_stream(streams::PARTIALS).await?.get_info().await?.state.last_sequence;
    let never = tokio_util::sync::CancellationToken::new();
    for w in &a.windows {
        let Some(windows) = rebuilt.get(w.name()) else { continue };
        let existing = existing(&sink, config, w, window_start(from, len(w)), through[w.name()]).await?;
        let rebuilt_keys: BTreeSet<(DateTime<Utc>, Dims)> =
            windows.iter().flat_map(|(s, series)| series.keys().map(move |d| (*s, d.clone()))).collect();
        summary.stale_series += existing.keys().filter(|k| !rebuilt_keys.contains(*k)).count();
        summary.cost_before += existing
            .iter()
            .filter(|((_, d), _)| d.get("kind").map(String::as_str) == Some("task_completed"))
            .map(|(_, (_, cost))| cost)
            .sum::<f64>();
        // Commit every window first (its revision then survives a crash in what follows), then
        // replace the period's points.
        let mut series_count = 0;
        let mut committed = Vec::with_capacity(windows.len());
        for (start, series) in windows {
            let mut todo = Vec::with_capacity(series.len());
            for (dims, acc) in series {
                let influx_rev = existing.get(&(*start, dims.clone())).map(|(r, _)| *r);
                let kv_rev = persister.committed_revision(w, *start, dims).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                let revision = influx_rev.max(kv_rev).map_or(0, |r| r + 1);
                if dims.get("kind").map(String::as_str) == Some("task_completed") {
                    summary.cost_after += acc.cost_usd;
                }
                todo.push((dims.clone(), acc.clone(), revision));
            }
            series_count += todo.len();
            let done = persister.commit(w, *start, todo, partials_seq).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            committed.push((*start, done));
        }
        if config.influx.api == modelperf_influx::InfluxApi::V1 {
            delete_period(&sink, w, window_start(from, len(w)), through[w.name()]).await?;
            summary.deleted_first = true;
        }
        for (start, done) in committed {
            persister.derive(w, start, &done, &never).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        summary.rewritten.insert(w.name().to_owned(), (windows.len(), series_count));
    }
    Ok(summary)
}

/// The `PERF_EVENTS` sequences the aggregator refused as `too_late` (its dead letters).
async fn too_late_letters(js: &Context) -> anyhow::Result<BTreeSet<u64>> {
    use modelperf_schema::dlq;
    let stream = js.get_stream(streams::DLQ).await.context("stream PERF_DLQ")?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("perf.dlq.{}", crate::STAGE),
            ..Default::default()
        })
        .await
        .context("ordered consumer on PERF_DLQ")?;
    let pending = consumer.cached_info().num_pending;
    let mut out = BTreeSet::new();
    if pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await.context("read PERF_DLQ")?;
    let mut read = 0;
    while read < pending {
        let msg = match tokio::time::timeout(Duration::from_secs(30), messages.next()).await {
            Ok(Some(m)) => m.context("reading PERF_DLQ")?,
            _ => bail!("PERF_DLQ stalled after {read} of {pending} letters"),
        };
        read += 1;
        let h = msg.headers.as_ref();
        let code = h.and_then(|h| h.get(dlq::ERROR)).map(|v| v.as_str().to_owned());
        let origin = h.and_then(|h| h.get(dlq::ORIGINAL_SEQ)).and_then(|v| v.as_str().parse::<u64>().ok());
        if code.as_deref() == Some("too_late")
            && let Some(seq) = origin
        {
            out.insert(seq);
        }
    }
    Ok(out)
}

/// Deletes the points of window length `w` in `[from, to)` from both measurements (InfluxQL
/// `DELETE` applies to every retention policy; the `window` tag keeps it to this length).
async fn delete_period(sink: &Sink, w: &WindowSpec, from: DateTime<Utc>, to: DateTime<Utc>) -> anyhow::Result<()> {
    for m in [MEASUREMENT, SKETCH_MEASUREMENT] {
        let q = format!(
            "DELETE FROM \"{m}\" WHERE \"window\" = '{}' AND time >= '{}' AND time < '{}'",
            w.name(),
            modelperf_schema::format_ts(&from),
            modelperf_schema::format_ts(&to)
        );
        sink.query(&q).await.with_context(|| format!("delete the old {m} points of {w}"))?;
    }
    Ok(())
}

fn len(w: &WindowSpec) -> chrono::Duration {
    chrono::Duration::seconds(w.secs() as i64)
}

/// The revision and cost of every series InfluxDB holds for `w` in `[from, to)`.
async fn existing(
    sink: &Sink,
    config: &Config,
    w: &WindowSpec,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<BTreeMap<(DateTime<Utc>, Dims), (u32, f64)>> {
    let rp = config.influx.retention_policy_for(w.name()).map(|rp| format!("\"{rp}\".")).unwrap_or_default();
    let q = format!(
        "SELECT revision, cost_usd FROM {rp}\"{MEASUREMENT}\" WHERE \"window\" = '{}' AND time >= '{}' AND time < '{}' GROUP BY *",
        w.name(),
        modelperf_schema::format_ts(&from),
        modelperf_schema::format_ts(&to)
    );
    let result = sink.query(&q).await?;
    let mut out = BTreeMap::new();
    for s in result["series"].as_array().into_iter().flatten() {
        let dims: Dims = s["tags"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| *k != "window" && v.as_str().is_some_and(|v| !v.is_empty()))
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        for row in s["values"].as_array().into_iter().flatten() {
            let Some(ts) = row[0].as_str().and_then(|t| modelperf_schema::parse_ts(t).ok()) else { continue };
            let revision = row[1].as_u64().unwrap_or(0) as u32;
            let cost = row[2].as_f64().unwrap_or(0.0);
            out.insert((ts, dims.clone()), (revision, cost));
        }
    }
    Ok(out)
}
