//! Where a comparison's data comes from: the period's windows from `PERF_METRICS`, and — for the
//! weighted estimates and benchmark runs — the clean routing decisions, completions and
//! judgments from `PERF_EVENTS`, read by storage time from the period's start (less a margin for
//! producers' clocks) and kept only when they are of the task type, the period and (for a run)
//! the run.

use anyhow::Context as _;
use async_nats::jetstream::Context;
use chrono::{DateTime, Utc};
use modelperf_bus::streams;
use modelperf_schema::event::{Data, Event};
use modelperf_schema::messages::WindowMetrics;
use modelperf_stats::Bootstrap;

use super::{Comparison, Correction, Input, build};
use crate::report::source::{decode, decode_all, read_messages, scan};

/// Events are read from this long before the period's start: an event's time is its producer's,
/// its storage time the server's.
const CLOCK_MARGIN: chrono::Duration = chrono::Duration::minutes(10);

/// What to compare.
#[derive(Debug, Clone)]
pub struct Query {
    /// The task type.
    pub task_type: String,
    /// The period, `[start, end)`.
    pub start: DateTime<Utc>,
    #[allow(missing_docs)]
    pub end: DateTime<Utc>,
    /// The window length read from `PERF_METRICS`.
    pub window: String,
    /// A benchmark run to compare paired.
    pub run: Option<String>,
    /// Read the routing decisions and outcomes for the weighted estimates.
    pub weighted: bool,
    /// At most this many events are kept (a bound on memory); more is an error that says so.
    pub max_events: usize,
    /// The multiple-testing correction and level.
    pub correction: Correction,
    #[allow(missing_docs)]
    pub alpha: f64,
    /// The bootstrap of the latency intervals.
    pub bootstrap: Bootstrap,
}

/// What a comparison needs, read from the streams.
pub async fn gather(js: &Context, q: &Query) -> anyhow::Result<Input> {
    let (metrics, mut undecodable) = if q.run.is_none() {
        let msgs = read_messages(js, streams::METRICS, &format!("perf.metrics.{}", q.window), Some(q.start)).await?;
        decode_all::<WindowMetrics>(&msgs)
    } else {
        (Vec::new(), 0)
    };
    let mut events = Vec::new();
    if q.run.is_some() || q.weighted {
        let kinds: &[&str] = if q.run.is_some() {
            &["task_completed", "judgment"]
        } else {
            &["routing_decision", "task_completed", "judgment"]
        };
        for kind in kinds {
            let filter = format!("perf.events.{kind}.>");
            scan(js, streams::EVENTS, &filter, Some(q.start - CLOCK_MARGIN), |m| {
                let Some(e) = decode::<Event>(&m.payload) else {
                    undecodable += 1;
                    return Ok(());
                };
                if !keep(q, &e) {
                    return Ok(());
                }
                anyhow::ensure!(
                    events.len() < q.max_events,
                    "more than {} events of task type {:?} in the period: narrow it (--since/--until) or raise --max-events",
                    q.max_events,
                    q.task_type
                );
                events.push(e);
                Ok(())
            })
            .await
            .with_context(|| format!("read {filter}"))?;
        }
        // One order for every kind: the stream's order within a kind, event time across them.
        events.sort_by_key(|e| e.ts);
    }
    Ok(Input {
        task_type: q.task_type.clone(),
        start: q.start,
        end: q.end,
        window: q.window.clone(),
        metrics,
        events,
        run: q.run.clone(),
        correction: q.correction,
        alpha: q.alpha,
        bootstrap: q.bootstrap,
        undecodable,
    })
}

fn keep(q: &Query, e: &Event) -> bool {
    let relevant = matches!(e.data, Data::RoutingDecision(_) | Data::TaskCompleted(_) | Data::Judgment(_));
    relevant
        && e.ts >= q.start
        && e.ts < q.end
        && e.task_type.as_deref() == Some(q.task_type.as_str())
        && q.run.as_ref().is_none_or(|run| e.benchmark.as_ref().is_some_and(|b| &b.run_id == run))
}

/// The comparison, read from the streams.
pub async fn compare(js: &Context, q: &Query) -> anyhow::Result<Comparison> {
    Ok(build(&gather(js, q).await?))
}
