//! Where a report's data comes from and where it goes: the period's windows from
//! `PERF_METRICS`, the anomaly announcements from `PERF_SIGNALS`, the rendered formats into the
//! object store `modelperf_reports` as `<period>/<start>.{md,html,json}`, and the announcement
//! `{object, formats, period, start, end, sha256}` on `perf.reports.<period>`.
//!
//! A window is published after it ends, so reading `PERF_METRICS` from the period's start (by
//! storage time) finds every window that starts in it, revisions included; [`super::build`]
//! keeps the windows that start in the period and the highest revision of each.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, Context, consumer};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use modelperf_bus::{Outgoing, buckets, streams};
use modelperf_schema::messages::{Anomaly, ReportAnnouncement, WindowMetrics};
use modelperf_schema::names::subject_token;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::{Input, Report, build, html, markdown, to_json};

/// A report format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    /// Markdown (`md`).
    Markdown,
    /// The self-contained HTML page (`html`).
    Html,
    /// JSON (`json`), the one the announcement's `sha256` is of.
    Json,
}

impl Format {
    /// Every format, in the order they are stored.
    pub const ALL: [Format; 3] = [Format::Markdown, Format::Html, Format::Json];

    /// The extension and the announcement's name of the format.
    pub fn ext(self) -> &'static str {
        match self {
            Format::Markdown => "md",
            Format::Html => "html",
            Format::Json => "json",
        }
    }

    /// Parses `md`, `html` or `json`.
    pub fn parse(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.ext() == s)
    }

    /// The rendering of `report` in this format.
    pub fn render(self, report: &Report) -> String {
        match self {
            Format::Markdown => markdown::render(report),
            Format::Html => html::render(report),
            Format::Json => to_json(report),
        }
    }
}

/// Every message `stream` holds under `filter`, stored at or after `since` when given, through
/// an ephemeral consumer that acknowledges nothing; it reads what was pending when it started.
pub async fn read_messages(
    js: &Context,
    stream: &str,
    filter: &str,
    since: Option<DateTime<Utc>>,
) -> anyhow::Result<Vec<jetstream::Message>> {
    let mut out = Vec::new();
    scan(js, stream, filter, since, |m| {
        out.push(m);
        Ok(())
    })
    .await?;
    Ok(out)
}

/// Like [`read_messages`], handing each message to `each` as it arrives instead of holding them
/// all: for reads of many messages. Returns how many were read; an error of `each` ends the read.
pub async fn scan(
    js: &Context,
    stream: &str,
    filter: &str,
    since: Option<DateTime<Utc>>,
    mut each: impl FnMut(jetstream::Message) -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    let s = js.get_stream(stream).await.with_context(|| format!("stream {stream}"))?;
    let deliver_policy = match since {
        Some(t) => consumer::DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp(t.timestamp())
                .with_context(|| format!("time {t} out of range"))?,
        },
        None => consumer::DeliverPolicy::All,
    };
    let consumer = s
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            filter_subject: filter.to_owned(),
            deliver_policy,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .with_context(|| format!("consumer on {stream}"))?;
    let pending = consumer.cached_info().num_pending as usize;
    if pending == 0 {
        return Ok(0);
    }
    let mut msgs = consumer.messages().await.with_context(|| format!("read {stream}"))?;
    let mut read = 0;
    while read < pending {
        match tokio::time::timeout(Duration::from_secs(30), msgs.next()).await {
            Ok(Some(Ok(m))) => {
                read += 1;
                each(m)?;
            }
            Ok(Some(Err(e))) => anyhow::bail!("reading {stream}: {e}"),
            Ok(None) | Err(_) => anyhow::bail!("reading {stream}: got {read} of {pending} messages"),
        }
    }
    Ok(read)
}

/// Decodes a message body, MessagePack or JSON.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Option<T> {
    modelperf_schema::from_msgpack::<T>(payload).or_else(|_| modelperf_schema::from_json(payload)).ok()
}

pub(crate) fn decode_all<T: DeserializeOwned>(msgs: &[jetstream::Message]) -> (Vec<T>, u64) {
    let mut bad = 0;
    let decoded = msgs
        .iter()
        .filter_map(|m| {
            let r = decode::<T>(&m.payload);
            if r.is_none() {
                bad += 1;
            }
            r
        })
        .collect();
    (decoded, bad)
}

/// What a report needs, read from the streams: the windows of `window` stored since `start`
/// and every anomaly announcement.
pub async fn gather(
    js: &Context,
    period: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    window: &str,
    max_points: usize,
) -> anyhow::Result<Input> {
    let msgs = read_messages(js, streams::METRICS, &format!("perf.metrics.{window}"), Some(start)).await?;
    let (metrics, bad_metrics) = decode_all::<WindowMetrics>(&msgs);
    let msgs = read_messages(js, streams::SIGNALS, "perf.anomalies.>", None).await?;
    let (anomalies, bad_anomalies) = decode_all::<Anomaly>(&msgs);
    Ok(Input {
        period: period.to_owned(),
        start,
        end,
        window: window.to_owned(),
        metrics,
        anomalies,
        undecodable: bad_metrics + bad_anomalies,
        max_points,
    })
}

/// The report of a period, read from the streams.
pub async fn report(
    js: &Context,
    period: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    window: &str,
    max_points: usize,
) -> anyhow::Result<Report> {
    Ok(build(&gather(js, period, start, end, window, max_points).await?))
}

/// The object name of a report without extension: `<period>/<start>`.
pub fn object_name(period: &str, start: &DateTime<Utc>) -> String {
    format!("{}/{}", subject_token(period), modelperf_schema::format_ts(start))
}

/// The announcement's `Nats-Msg-Id`: one per period and start.
pub fn announcement_id(period: &str, start: &DateTime<Utc>) -> String {
    format!("report:{}:{}", subject_token(period), start.timestamp())
}

/// Stores `report` in every format of `formats` (the JSON always: the announcement's hash is of
/// it) and returns the announcement to publish. Writing an object again replaces it.
pub async fn store(js: &Context, report: &Report, formats: &[Format]) -> anyhow::Result<ReportAnnouncement> {
    let objects = js.get_object_store(buckets::REPORTS).await.context("open object store modelperf_reports")?;
    let object = object_name(&report.period, &report.start);
    let mut stored = Vec::new();
    let mut sha256 = String::new();
    for f in Format::ALL {
        if f != Format::Json && !formats.contains(&f) {
            continue;
        }
        let body = f.render(report);
        if f == Format::Json {
            sha256 = hex::encode(Sha256::digest(body.as_bytes()));
        }
        let name = format!("{object}.{}", f.ext());
        objects.put(name.as_str(), &mut body.as_bytes()).await.with_context(|| format!("store {name}"))?;
        stored.push(f.ext().to_owned());
    }
    Ok(ReportAnnouncement {
        object,
        formats: stored,
        period: report.period.clone(),
        start: report.start,
        end: report.end,
        sha256,
    })
}

/// The message announcing a stored report on `perf.reports.<period>`.
pub fn announcement(a: &ReportAnnouncement) -> Outgoing {
    let body = modelperf_schema::to_msgpack(a).unwrap_or_default();
    Outgoing::new(format!("perf.reports.{}", subject_token(&a.period)), announcement_id(&a.period, &a.start), body)
}

/// The latest announcement on `perf.reports.<period>`, if any.
pub async fn last_announcement(js: &Context, period: &str) -> anyhow::Result<Option<ReportAnnouncement>> {
    let stream = js.get_stream(streams::SIGNALS).await.context("stream PERF_SIGNALS")?;
    let subject = format!("perf.reports.{}", subject_token(period));
    match stream.get_last_raw_message_by_subject(&subject).await {
        Ok(m) => Ok(modelperf_schema::from_msgpack(&m.payload).ok()),
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("last message on {subject}: {e}")),
    }
}

/// Stores and announces `report`; returns the announcement and whether the server had it
/// already (a repeat within the duplicate window).
pub async fn publish(js: &Context, report: &Report, formats: &[Format]) -> anyhow::Result<(ReportAnnouncement, bool)> {
    let a = store(js, report, formats).await?;
    let (_, duplicate) = modelperf_bus::publish(js, announcement(&a)).await?;
    Ok((a, duplicate))
}
