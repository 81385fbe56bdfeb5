//! Event-time windows of one partition: which window an event belongs to, the partition's
//! watermark, and which windows are final.
//!
//! The contract's rules: windows are tumbling and epoch-aligned; a partition's watermark is
//! min(latest event `ts` seen, now) − allowed lateness, except that a partition without backlog
//! lets the wall clock advance it (idle partitions never hold windows open), while a partition
//! catching up closes windows by event time only (a stall never makes events late). A window
//! is final when its end is at or below the watermark. An event for a final window younger than
//! `max_revision_age` is a revision; older is `too_late`.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use modelperf_schema::Event;

use crate::window::{Accumulator, Dim, series_of};

/// Where an event goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Into an open window.
    Open,
    /// Into a window already final but young enough to be revised.
    Revision,
    /// Older than `max_revision_age`: dead-lettered with `too_late`.
    TooLate,
}

/// The start of the epoch-aligned window of `len` holding `ts`.
pub fn window_start(ts: DateTime<Utc>, len: Duration) -> DateTime<Utc> {
    let len_ms = len.num_milliseconds().max(1);
    let ms = ts.timestamp_millis();
    let start = ms - ms.rem_euclid(len_ms);
    Utc.timestamp_millis_opt(start).single().unwrap_or(ts)
}

/// A closed window of one series, ready to publish as a partial.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    /// Window start.
    pub start: DateTime<Utc>,
    /// The series.
    pub dims: BTreeMap<String, String>,
    /// What it holds.
    pub acc: Accumulator,
    /// Whether it revises a window already published.
    pub revision: bool,
}

/// The windows of one partition for one window length.
#[derive(Debug, Clone)]
pub struct Windows {
    len: Duration,
    lateness: Duration,
    max_revision_age: Duration,
    group_by: Vec<Dim>,
    /// Open windows: start → series → accumulator.
    open: BTreeMap<DateTime<Utc>, BTreeMap<BTreeMap<String, String>, Accumulator>>,
    /// Late events for final windows, published as revisions at the next close.
    late: BTreeMap<DateTime<Utc>, BTreeMap<BTreeMap<String, String>, Accumulator>>,
    /// The latest event time seen.
    latest: Option<DateTime<Utc>>,
    /// Every window ending at or before this is final.
    final_through: Option<DateTime<Utc>>,
}

impl Windows {
    /// Windows of `len`, with the contract's lateness and revision age.
    pub fn new(len: Duration, lateness: Duration, max_revision_age: Duration, group_by: &[Dim]) -> Self {
        Self {
            len,
            lateness,
            max_revision_age,
            group_by: group_by.to_vec(),
            open: BTreeMap::new(),
            late: BTreeMap::new(),
            latest: None,
            final_through: None,
        }
    }

    /// Folds an event in; `now` is the wall clock.
    pub fn add(&mut self, e: &Event, now: DateTime<Utc>) -> Placement {
        let start = window_start(e.ts, self.len);
        let end = start + self.len;
        let is_final = self.final_through.is_some_and(|f| end <= f);
        if is_final && end <= now - self.max_revision_age {
            return Placement::TooLate;
        }
        self.latest = Some(self.latest.map_or(e.ts, |l| l.max(e.ts)));
        let series = series_of(e, &self.group_by);
        let target = if is_final { &mut self.late } else { &mut self.open };
        target.entry(start).or_default().entry(series).or_default().add(e);
        if is_final { Placement::Revision } else { Placement::Open }
    }

    /// The watermark: event time while catching up on a backlog, the wall clock when idle.
    pub fn watermark(&self, now: DateTime<Utc>, caught_up: bool) -> Option<DateTime<Utc>> {
        let event_time = self.latest.map(|l| l.min(now));
        let base = if caught_up { Some(now) } else { event_time };
        base.map(|b| b - self.lateness)
    }

    /// Closes every window whose end is at or below the watermark, and hands out pending
    /// revisions. The windows come out in time order.
    pub fn close(&mut self, now: DateTime<Utc>, caught_up: bool) -> Vec<Closed> {
        let mut out = Vec::new();
        for (start, series) in std::mem::take(&mut self.late) {
            out.extend(series.into_iter().map(|(dims, acc)| Closed { start, dims, acc, revision: true }));
        }
        let Some(watermark) = self.watermark(now, caught_up) else { return out };
        // The last window end at or below the watermark.
        let through = window_start(watermark, self.len);
        if self.final_through.is_none_or(|f| through > f) {
            self.final_through = Some(through);
        }
        // Windows starting before `through` end at or before it, so at or below the watermark.
        let still_open = self.open.split_off(&through);
        for (start, series) in std::mem::replace(&mut self.open, still_open) {
            out.extend(series.into_iter().map(|(dims, acc)| Closed { start, dims, acc, revision: false }));
        }
        out
    }

    /// The start of the oldest open window: a checkpoint's replay position lies before it.
    pub fn oldest_open(&self) -> Option<DateTime<Utc>> {
        self.open.keys().next().copied()
    }

    /// Open windows and series (for memory bounds and metrics).
    pub fn open_series(&self) -> usize {
        self.open.values().map(BTreeMap::len).sum()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::window::DEFAULT_GROUP_BY;
    use modelperf_schema::{Data, TaskStarted};

    fn at(s: &str) -> DateTime<Utc> {
        modelperf_schema::parse_ts(s).unwrap()
    }

    fn ev(ts: &str) -> Event {
        Event::new(at(ts), "t", Data::TaskStarted(TaskStarted { queue_ms: Some(1.0) }))
    }

    fn windows() -> Windows {
        Windows::new(Duration::minutes(1), Duration::minutes(2), Duration::hours(1), &DEFAULT_GROUP_BY)
    }

    #[test]
    fn windows_are_epoch_aligned() {
        assert_eq!(window_start(at("2026-11-27T10:03:59.999Z"), Duration::minutes(1)), at("2026-11-27T10:03:00Z"));
        assert_eq!(window_start(at("2026-11-27T10:59:00Z"), Duration::hours(1)), at("2026-11-27T10:00:00Z"));
        assert_eq!(window_start(at("1969-12-31T23:59:30Z"), Duration::minutes(1)), at("1969-12-31T23:59:00Z"));
    }

    #[test]
    fn a_backlog_closes_by_event_time_and_idle_partitions_by_the_clock() {
        let mut w = windows();
        let now = at("2026-11-27T12:00:00Z");
        // Catching up on events from an hour ago: only windows older than the lateness close.
        for t in ["2026-11-27T11:00:10Z", "2026-11-27T11:01:10Z", "2026-11-27T11:05:30Z"] {
            assert_eq!(w.add(&ev(t), now), Placement::Open);
        }
        let closed = w.close(now, false);
        let starts: Vec<_> = closed.iter().map(|c| c.start).collect();
        assert_eq!(starts, [at("2026-11-27T11:00:00Z"), at("2026-11-27T11:01:00Z")], "11:05 - 2m = 11:03");
        assert_eq!(w.oldest_open(), Some(at("2026-11-27T11:05:00Z")));
        // Idle (caught up): the clock advances the watermark and the last window closes.
        let closed = w.close(now, true);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].start, at("2026-11-27T11:05:00Z"));
        assert_eq!(w.open_series(), 0);
    }

    #[test]
    fn late_events_revise_young_windows_and_old_ones_are_too_late() {
        let mut w = windows();
        let now = at("2026-11-27T12:00:00Z");
        w.add(&ev("2026-11-27T11:50:10Z"), now);
        assert_eq!(w.close(now, true).len(), 1);
        // Final, but younger than an hour: a revision, published at the next close.
        assert_eq!(w.add(&ev("2026-11-27T11:50:20Z"), now), Placement::Revision);
        let revised = w.close(now, true);
        assert_eq!(revised.len(), 1);
        assert!(revised[0].revision);
        assert_eq!(revised[0].acc.count, 1, "a revision carries the late events only");
        // Older than max_revision_age.
        w.add(&ev("2026-11-27T10:30:00Z"), now);
        assert_eq!(w.add(&ev("2026-11-27T10:58:59Z"), now), Placement::TooLate);
    }

    #[test]
    fn series_are_kept_apart() {
        let mut w = windows();
        let now = at("2026-11-27T12:00:00Z");
        let mut a = ev("2026-11-27T11:00:10Z");
        a.task_type = Some("summarize".into());
        let mut b = ev("2026-11-27T11:00:20Z");
        b.task_type = Some("code_edit".into());
        w.add(&a, now);
        w.add(&b, now);
        w.add(&b, now);
        let closed = w.close(now, true);
        let counts: BTreeMap<String, u64> = closed.iter().map(|c| (c.dims["task_type"].clone(), c.acc.count)).collect();
        assert_eq!(counts, BTreeMap::from([("code_edit".into(), 2), ("summarize".into(), 1)]));
    }

    proptest::proptest! {
        /// Whatever the arrival order and however often windows are closed, every event is
        /// counted once — in a closed window, a revision or a still-open window — or refused.
        #[test]
        fn every_event_is_counted_once_or_refused(
            offsets in proptest::collection::vec((0i64..7_200, proptest::bool::ANY), 1..300),
        ) {
            let mut w = windows();
            let base = at("2026-11-27T10:00:00Z");
            let mut now = base;
            let (mut accepted, mut closed_count, mut too_late) = (0u64, 0u64, 0u64);
            for (i, (offset, close)) in offsets.iter().enumerate() {
                now = now.max(base + Duration::seconds(i as i64 * 20));
                let e = ev(&modelperf_schema::format_ts(&(base + Duration::seconds(*offset))));
                match w.add(&e, now) {
                    Placement::TooLate => too_late += 1,
                    _ => accepted += 1,
                }
                if *close {
                    closed_count += w.close(now, i % 3 == 0).iter().map(|c| c.acc.count).sum::<u64>();
                }
            }
            let far = now + Duration::hours(3);
            closed_count += w.close(far, true).iter().map(|c| c.acc.count).sum::<u64>();
            proptest::prop_assert_eq!(w.open_series(), 0);
            proptest::prop_assert_eq!(closed_count, accepted);
            proptest::prop_assert_eq!(accepted + too_late, offsets.len() as u64);
        }
    }
}
