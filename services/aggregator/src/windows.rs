//! Event-time windows of one partition: which window an event belongs to, the partition's
//! watermark, and which windows are final.
//!
//! The contract's rules: windows are tumbling and epoch-aligned; a partition's watermark is
//! min(latest event `ts` seen, now) − allowed lateness, except that a partition without backlog
//! lets the wall clock advance it (idle partitions never hold windows open), while a partition
//! catching up closes windows by event time only (a stall never makes events late). A window
//! is final when its end is at or below the watermark. An event for a final window younger than
//! `max_revision_age` is a revision; older is `too_late`.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, TimeZone, Utc};
use modelperf_schema::Event;
use serde::{Deserialize, Serialize};

use crate::series::{SeriesId, SeriesTable};
use crate::window::{Accumulator, Dim, series_of};

/// Where an event goes.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // returned and consumed at once
pub enum Placement {
    /// Into an open window.
    Open,
    /// Into a window already closed but young enough to be revised: the event's own partial,
    /// to publish at once.
    Revision(Closed),
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
    /// Whether it revises a window already closed (it then holds one late event).
    pub revision: bool,
}

/// One open window: its series, and the first stream sequence folded into it (a checkpoint's
/// replay position must lie at or before it).
///
/// The accumulators sit in one vector in arrival order, found through an index by series id: a
/// B-tree of 300-byte entries filled in increasing id order (a new window's series arrive in
/// the order they were interned) keeps its nodes about half full, which nearly doubled the
/// owners' memory; a vector's unused capacity is never touched, so never resident.
#[derive(Debug, Clone, Default)]
struct Open {
    first_seq: u64,
    index: HashMap<SeriesId, u32>,
    series: Vec<(SeriesId, Accumulator)>,
}

/// What a checkpoint keeps of a [`Windows`]: the rest is rebuilt by replaying the partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowsMark {
    /// The latest event time seen.
    pub latest: Option<DateTime<Utc>>,
    /// Every window ending at or before this is closed (decided).
    pub final_through: Option<DateTime<Utc>>,
    /// Every window ending at or before this has its partials stored in `PERF_PARTIALS`.
    /// Between the two lie windows closed but not yet known to be published: a restarted owner
    /// rebuilds and publishes them again, under the same message ids.
    pub published_through: Option<DateTime<Utc>>,
    /// The last event sequence applied when `final_through` last moved: events up to it were
    /// judged against the close point before (`published_through`), later ones against
    /// `final_through`. A replay judges each event the same way.
    #[serde(default)]
    pub decided_seq: u64,
}

/// The windows of one partition for one window length.
///
/// Every decision depends only on the order of the partition's events and on the close points,
/// which the owner checkpoints before publishing what they close; so replaying the partition
/// from a checkpoint rebuilds exactly the windows that were open, with the same contents.
#[derive(Debug, Clone)]
pub struct Windows {
    len: Duration,
    lateness: Duration,
    max_revision_age: Duration,
    group_by: Vec<Dim>,
    /// Open windows by start.
    open: BTreeMap<DateTime<Utc>, Open>,
    /// The series the open windows hold.
    table: SeriesTable,
    /// The first event sequence of windows closed but not yet published (the replay position
    /// must reach back to them until they are).
    unpublished_first: Option<u64>,
    mark: WindowsMark,
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
            table: SeriesTable::new(group_by),
            unpublished_first: None,
            mark: WindowsMark::default(),
        }
    }

    /// The window length.
    pub fn len(&self) -> Duration {
        self.len
    }

    /// Folds an event (stream sequence `seq`) in. A window counts as closed once its end is at
    /// or below `final_through`; a revision is refused as `too_late` once the window ended
    /// `max_revision_age` before that point (event time, so a replay decides the same way).
    pub fn add(&mut self, e: &Event, seq: u64) -> Placement {
        let start = window_start(e.ts, self.len);
        let end = start + self.len;
        if let Some(ft) = self.mark.final_through.filter(|ft| end <= *ft) {
            if end <= ft - self.max_revision_age {
                return Placement::TooLate;
            }
            self.see(e.ts);
            let mut acc = Accumulator::default();
            acc.add(e);
            return Placement::Revision(Closed { start, dims: series_of(e, &self.group_by), acc, revision: true });
        }
        self.see(e.ts);
        self.fold(e, start, seq);
        Placement::Open
    }

    /// Whether an event falls in a window closed more than `max_revision_age` before the close
    /// point: it is refused as `too_late`.
    pub fn too_late(&self, e: &Event) -> bool {
        self.too_late_against(e, self.mark.final_through)
    }

    fn too_late_against(&self, e: &Event, close: Option<DateTime<Utc>>) -> bool {
        let end = window_start(e.ts, self.len) + self.len;
        close.is_some_and(|ft| end <= ft - self.max_revision_age)
    }

    /// The close point an event at `seq` was judged against when it was applied.
    fn close_at(&self, seq: u64) -> Option<DateTime<Utc>> {
        if seq <= self.mark.decided_seq { self.mark.published_through } else { self.mark.final_through }
    }

    /// Whether the event at `seq` was refused as `too_late` when it was applied (replay).
    pub fn was_too_late(&self, e: &Event, seq: u64) -> bool {
        self.too_late_against(e, self.close_at(seq))
    }

    /// Re-applies an event at or before the checkpoint, deciding as [`Windows::add`] did: what
    /// went into a window closed since is rebuilt (it may still have to be published); what was
    /// a revision or refused is skipped (its partial is stored). The caller skips an event
    /// [`Windows::was_too_late`] refused in any window length.
    pub fn replay(&mut self, e: &Event, seq: u64) {
        let start = window_start(e.ts, self.len);
        if self.close_at(seq).is_some_and(|c| start + self.len <= c) {
            return;
        }
        self.see(e.ts);
        self.fold(e, start, seq);
    }

    fn fold(&mut self, e: &Event, start: DateTime<Utc>, seq: u64) {
        let id = self.table.id_of(e);
        let open = self.open.entry(start).or_insert_with(|| Open { first_seq: seq, ..Open::default() });
        open.first_seq = open.first_seq.min(seq);
        match open.index.get(&id) {
            Some(&i) => open.series[i as usize].1.add(e),
            None => {
                self.table.hold(id);
                let mut acc = Accumulator::default();
                acc.add(e);
                open.index.insert(id, open.series.len() as u32);
                open.series.push((id, acc));
            }
        }
    }

    fn see(&mut self, ts: DateTime<Utc>) {
        self.mark.latest = Some(self.mark.latest.map_or(ts, |l| l.max(ts)));
    }

    /// The watermark: event time while catching up on a backlog, the wall clock when idle.
    pub fn watermark(&self, now: DateTime<Utc>, caught_up: bool) -> Option<DateTime<Utc>> {
        let event_time = self.mark.latest.map(|l| l.min(now));
        let base = if caught_up { Some(now) } else { event_time };
        base.map(|b| b - self.lateness)
    }

    /// Decides the close point for the watermark, with `applied_seq` the last event applied:
    /// `true` when `final_through` advanced (the owner then checkpoints before publishing what
    /// [`Windows::take_closed`] hands out).
    pub fn advance(&mut self, now: DateTime<Utc>, caught_up: bool, applied_seq: u64) -> bool {
        let Some(watermark) = self.watermark(now, caught_up) else { return false };
        // The last window end at or below the watermark.
        let through = window_start(watermark, self.len);
        if self.mark.final_through.is_none_or(|f| through > f) {
            self.mark.final_through = Some(through);
            self.mark.decided_seq = applied_seq;
            return true;
        }
        false
    }

    /// Whether windows are closed but not known to be published (after a restart).
    pub fn unpublished(&self) -> bool {
        self.mark.final_through != self.mark.published_through
    }

    /// Hands the windows closed but not yet handed out to `f`, one series at a time: in time
    /// order, and within a window in series order, whatever order the series first arrived in.
    /// One at a time, because a closing window holds every series of the partition: their
    /// dimensions as maps, all at once, were the owners' peak of memory.
    pub fn drain_closed(&mut self, mut f: impl FnMut(Closed)) {
        let Some(through) = self.mark.final_through else { return };
        // Windows starting before `through` end at or before it.
        let still_open = self.open.split_off(&through);
        for (start, open) in std::mem::replace(&mut self.open, still_open) {
            self.unpublished_first = Some(self.unpublished_first.map_or(open.first_seq, |f| f.min(open.first_seq)));
            drop(open.index);
            let mut series = open.series;
            series.sort_unstable_by(|(a, _), (b, _)| self.table.cmp_dims(*a, *b));
            for (id, acc) in series {
                f(Closed { start, dims: self.table.dims(id), acc, revision: false });
                self.table.release(id);
            }
        }
    }

    /// [`Windows::drain_closed`] into a vector.
    #[cfg(test)]
    pub fn take_closed(&mut self) -> Vec<Closed> {
        let mut out = Vec::new();
        self.drain_closed(|c| out.push(c));
        out
    }

    /// Records that everything closed so far is stored.
    pub fn published(&mut self) {
        self.mark.published_through = self.mark.final_through;
        self.unpublished_first = None;
    }

    /// `advance` then `take_closed`, for tests that need no checkpoint in between.
    #[cfg(test)]
    pub fn close(&mut self, now: DateTime<Utc>, caught_up: bool) -> Vec<Closed> {
        self.advance(now, caught_up, 0);
        let closed = self.take_closed();
        self.published();
        closed
    }

    /// What a checkpoint keeps.
    pub fn mark(&self) -> WindowsMark {
        self.mark
    }

    /// Restores a checkpoint's mark (before replaying).
    pub fn restore(&mut self, mark: WindowsMark) {
        self.mark = mark;
    }

    /// The first stream sequence of any open or unpublished window: where a replay must start.
    pub fn replay_from(&self) -> Option<u64> {
        self.open.values().map(|o| o.first_seq).chain(self.unpublished_first).min()
    }

    /// The start of the oldest open window.
    #[cfg(test)]
    pub fn oldest_open(&self) -> Option<DateTime<Utc>> {
        self.open.keys().next().copied()
    }

    /// Open windows and series (for memory bounds and metrics).
    pub fn open_series(&self) -> usize {
        self.open.values().map(|o| o.series.len()).sum()
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
        for (i, t) in ["2026-11-27T11:00:10Z", "2026-11-27T11:01:10Z", "2026-11-27T11:05:30Z"].iter().enumerate() {
            assert_eq!(w.add(&ev(t), i as u64 + 1), Placement::Open);
        }
        assert_eq!(w.replay_from(), Some(1));
        let closed = w.close(now, false);
        let starts: Vec<_> = closed.iter().map(|c| c.start).collect();
        assert_eq!(starts, [at("2026-11-27T11:00:00Z"), at("2026-11-27T11:01:00Z")], "11:05 - 2m = 11:03");
        assert_eq!(w.oldest_open(), Some(at("2026-11-27T11:05:00Z")));
        assert_eq!(w.replay_from(), Some(3));
        // Idle (caught up): the clock advances the watermark and the last window closes.
        let closed = w.close(now, true);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].start, at("2026-11-27T11:05:00Z"));
        assert_eq!(w.open_series(), 0);
        assert_eq!(w.replay_from(), None);
    }

    #[test]
    fn windows_close_exactly_at_the_watermark() {
        let mut w = windows();
        w.add(&ev("2026-11-27T11:00:59.999Z"), 1);
        w.add(&ev("2026-11-27T11:01:00Z"), 2);
        // Watermark 11:01:00 (latest 11:03:00 − 2 min): [11:00, 11:01) ends at it and closes.
        w.add(&ev("2026-11-27T11:03:00Z"), 3);
        let closed = w.close(at("2026-11-27T12:00:00Z"), false);
        assert_eq!(closed.iter().map(|c| c.start).collect::<Vec<_>>(), [at("2026-11-27T11:00:00Z")]);
        // One millisecond short of the next end keeps [11:01, 11:02) open.
        w.add(&ev("2026-11-27T11:03:59.999Z"), 4);
        assert!(w.close(at("2026-11-27T12:00:00Z"), false).is_empty());
        // An event at the closed window's last instant is now a revision.
        assert!(matches!(w.add(&ev("2026-11-27T11:00:59.999Z"), 5), Placement::Revision(_)));
        assert_eq!(w.add(&ev("2026-11-27T11:01:00Z"), 6), Placement::Open);
    }

    #[test]
    fn late_events_revise_young_windows_and_old_ones_are_too_late() {
        let mut w = windows();
        let now = at("2026-11-27T12:00:00Z");
        w.add(&ev("2026-11-27T11:50:10Z"), 1);
        assert_eq!(w.close(now, true).len(), 1);
        // Closed, but younger than an hour before the close point: a revision of its own.
        match w.add(&ev("2026-11-27T11:50:20Z"), 2) {
            Placement::Revision(c) => {
                assert!(c.revision);
                assert_eq!((c.start, c.acc.count), (at("2026-11-27T11:50:00Z"), 1));
            }
            other => panic!("expected a revision, got {other:?}"),
        }
        // final_through is 11:58; a window ending at or before 10:58 is too late.
        assert!(matches!(w.add(&ev("2026-11-27T10:58:00Z"), 3), Placement::Revision(_)));
        assert_eq!(w.add(&ev("2026-11-27T10:57:59Z"), 4), Placement::TooLate);
    }

    #[test]
    fn a_replay_rebuilds_what_was_open_and_skips_what_was_published() {
        let now = at("2026-11-27T12:00:00Z");
        let events = ["2026-11-27T11:00:10Z", "2026-11-27T11:01:10Z", "2026-11-27T11:05:30Z", "2026-11-27T11:00:20Z"];
        let mut w = windows();
        for (i, t) in events.iter().take(3).enumerate() {
            w.add(&ev(t), i as u64 + 1);
        }
        // A close is decided, its windows taken, and the decision checkpointed; the owner dies
        // before they are published.
        assert!(w.advance(now, false, 3));
        let published = w.take_closed();
        let (mark, replay_from, applied) = (w.mark(), w.replay_from().unwrap(), 3u64);
        assert_eq!(replay_from, 1, "the replay reaches back to the closed, unpublished windows");
        w.published();
        // A late event after the close: a revision.
        assert!(matches!(w.add(&ev(events[3]), 4), Placement::Revision(_)));

        // The successor restores the mark and replays from the checkpoint's position.
        let mut again = windows();
        again.restore(mark);
        assert!(again.unpublished());
        for (i, t) in events.iter().take(applied as usize).enumerate() {
            let seq = i as u64 + 1;
            if seq >= replay_from {
                assert!(!again.was_too_late(&ev(t), seq));
                again.replay(&ev(t), seq);
            }
        }
        assert!(!again.advance(now, false, 3), "the close point has not moved");
        assert_eq!(again.take_closed(), published, "the same partials, under the same ids");
        again.published();
        assert!(matches!(again.add(&ev(events[3]), 4), Placement::Revision(_)));
        assert_eq!(again.open_series(), w.open_series());
    }

    #[test]
    fn a_replay_judges_each_event_against_the_close_point_it_met() {
        let now = at("2026-11-27T12:00:00Z");
        let mut w = windows();
        w.add(&ev("2026-11-27T11:30:10Z"), 1);
        // The close point jumps from nothing to 11:58 at seq 1.
        assert!(w.advance(now, true, 1));
        let _ = w.take_closed();
        // After it: a revision (11:30) and a refusal (10:30), then the checkpoint dies with
        // the close decided but unpublished.
        assert!(matches!(w.add(&ev("2026-11-27T11:30:20Z"), 2), Placement::Revision(_)));
        assert!(w.too_late(&ev("2026-11-27T10:30:00Z")));
        let mark = w.mark();
        let mut again = windows();
        again.restore(mark);
        // Seq 1 met no close point: rebuilt. Seq 2 met 11:58: its revision is stored, skipped.
        again.replay(&ev("2026-11-27T11:30:10Z"), 1);
        again.replay(&ev("2026-11-27T11:30:20Z"), 2);
        assert!(!again.was_too_late(&ev("2026-11-27T10:30:00Z"), 1));
        assert!(again.was_too_late(&ev("2026-11-27T10:30:00Z"), 3));
        let closed = again.take_closed();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].acc.count, 1, "the revision is not folded into the republished window");
    }

    #[test]
    fn series_are_kept_apart() {
        let mut w = windows();
        let now = at("2026-11-27T12:00:00Z");
        let mut a = ev("2026-11-27T11:00:10Z");
        a.task_type = Some("summarize".into());
        let mut b = ev("2026-11-27T11:00:20Z");
        b.task_type = Some("code_edit".into());
        w.add(&a, 1);
        w.add(&b, 2);
        w.add(&b, 3);
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
            let (mut accepted, mut counted, mut too_late) = (0u64, 0u64, 0u64);
            for (i, (offset, close)) in offsets.iter().enumerate() {
                now = now.max(base + Duration::seconds(i as i64 * 20));
                let e = ev(&modelperf_schema::format_ts(&(base + Duration::seconds(*offset))));
                match w.add(&e, i as u64 + 1) {
                    Placement::TooLate => too_late += 1,
                    Placement::Revision(c) => {
                        accepted += 1;
                        counted += c.acc.count;
                    }
                    Placement::Open => accepted += 1,
                }
                if *close {
                    counted += w.close(now, i % 3 == 0).iter().map(|c| c.acc.count).sum::<u64>();
                }
            }
            let far = now + Duration::hours(3);
            counted += w.close(far, true).iter().map(|c| c.acc.count).sum::<u64>();
            proptest::prop_assert_eq!(w.open_series(), 0);
            proptest::prop_assert_eq!(counted, accepted);
            proptest::prop_assert_eq!(accepted + too_late, offsets.len() as u64);
        }
    }
}
