//! The finaliser's decisions: which windows are final, what they hold, what revises what.
//!
//! It reads `PERF_PARTIALS` in stream order. A window of length `w` is final once every
//! partition's watermark report for `w` has passed its end; its partials from all partitions are
//! then merged per series and handed out as [`Action::Final`]. A partial for a window already
//! final is an [`Action::Revise`]. Windows of an hour or longer are merged from their source
//! windows as those become final (and revised with them), never from raw events.
//!
//! Nothing here depends on the wall clock: the same partials in the same order give the same
//! actions. The checkpoint therefore holds only the marks ([`FinalMarks`]) and the sequence of
//! the first partial of any pending window; a successor replays from there, rebuilding pending
//! windows with [`Finaliser::replay`], which emits nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use modelperf_schema::messages::Partial;
use modelperf_schema::names::WindowSpec;
use serde::{Deserialize, Serialize};

use crate::config::Rollup;
use crate::window::Accumulator;
use crate::windows::window_start;

/// A series' dimensions.
pub type Dims = BTreeMap<String, String>;

/// What the finaliser checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FinalMarks {
    /// Window → partition → the partition's close point.
    pub watermarks: BTreeMap<String, BTreeMap<u32, DateTime<Utc>>>,
    /// Window → every window ending at or before this is final.
    pub final_through: BTreeMap<String, DateTime<Utc>>,
    /// The `max_revision_age` of the running configuration (seconds), so re-aggregation knows
    /// which windows nothing can revise any more.
    #[serde(default)]
    pub max_revision_age_secs: u64,
}

/// Something to persist.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // a handful at a time
pub enum Action {
    /// A window became final: write every series with revision 0.
    Final {
        /// The window length.
        window: WindowSpec,
        /// Its start.
        start: DateTime<Utc>,
        /// The merged series.
        series: Vec<(Dims, Accumulator)>,
        /// The last partial sequence merged into it.
        seq: u64,
    },
    /// Late data for a final window: add `delta` to what was written, with the next revision,
    /// unless the partial `seq` was already applied.
    Revise {
        /// The window length.
        window: WindowSpec,
        /// Its start.
        start: DateTime<Utc>,
        /// The series.
        dims: Dims,
        /// What to add.
        delta: Accumulator,
        /// The partial's sequence: the revision's idempotency key.
        seq: u64,
    },
}

#[derive(Debug, Clone, Default)]
struct Pending {
    first_seq: u64,
    last_seq: u64,
    series: BTreeMap<Dims, Accumulator>,
}

impl Pending {
    fn fold(&mut self, seq: u64, dims: Dims, acc: &Accumulator) -> Result<(), modelperf_sketch::SketchError> {
        if self.series.is_empty() && self.first_seq == 0 {
            self.first_seq = seq;
        }
        self.first_seq = self.first_seq.min(seq);
        self.last_seq = self.last_seq.max(seq);
        self.series.entry(dims).or_default().merge(acc)
    }
}

/// Why a partial was not used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    /// A window length this finaliser does not know (a replica with other settings wrote it).
    #[error("partial for unknown window {0}")]
    UnknownWindow(String),
    /// A partition outside `0..partitions`.
    #[error("partial from partition {0}, outside the configured partitions")]
    UnknownPartition(u32),
    /// The sketch inside does not decode.
    #[error("partial with a bad sketch: {0}")]
    BadSketch(String),
    /// A value inside is NaN or infinite.
    #[error("partial with an invalid state: {0}")]
    BadState(String),
}

fn refused(e: crate::window::StateError) -> Refused {
    match e {
        crate::window::StateError::Sketch(e) => Refused::BadSketch(e.to_string()),
        e @ crate::window::StateError::NotFinite(_) => Refused::BadState(e.to_string()),
    }
}

/// The finaliser's pending windows and marks.
#[derive(Debug)]
pub struct Finaliser {
    partitions: u32,
    sources: Vec<WindowSpec>,
    rollups: Vec<Rollup>,
    marks: FinalMarks,
    pending: BTreeMap<(WindowSpec, DateTime<Utc>), Pending>,
}

fn len_of(w: &WindowSpec) -> Duration {
    Duration::seconds(w.secs() as i64)
}

impl Finaliser {
    /// A finaliser of `sources` (the owner windows) and their roll-ups, restored from marks.
    pub fn new(partitions: u32, sources: Vec<WindowSpec>, rollups: Vec<Rollup>, marks: FinalMarks) -> Self {
        Self { partitions, sources, rollups, marks, pending: BTreeMap::new() }
    }

    /// The marks to checkpoint.
    pub fn marks(&self) -> &FinalMarks {
        &self.marks
    }

    /// Where a successor must start replaying: the first partial of any pending window.
    pub fn replay_from(&self) -> Option<u64> {
        self.pending.values().map(|p| p.first_seq).min()
    }

    /// Pending windows and series (memory, metrics).
    pub fn pending_series(&self) -> usize {
        self.pending.values().map(|p| p.series.len()).sum()
    }

    fn source(&self, name: &str) -> Result<WindowSpec, Refused> {
        self.sources.iter().find(|w| w.name() == name).cloned().ok_or_else(|| Refused::UnknownWindow(name.to_owned()))
    }

    fn is_final(&self, w: &WindowSpec, start: DateTime<Utc>) -> bool {
        self.marks.final_through.get(w.name()).is_some_and(|ft| start + len_of(w) <= *ft)
    }

    fn rollups_of(&self, source: &WindowSpec) -> Vec<WindowSpec> {
        self.rollups.iter().filter(|r| r.source == *source).map(|r| r.window.clone()).collect()
    }

    /// Rebuilds state from a partial at or before the checkpoint: what was final then is
    /// skipped (it is written), except that it still feeds roll-ups that were pending.
    pub fn replay(&mut self, seq: u64, partial: &Partial) -> Result<(), Refused> {
        let Partial::Window { window, start, dims, state, partition, .. } = partial else { return Ok(()) };
        self.check_partition(*partition)?;
        let w = self.source(window)?;
        let acc = Accumulator::from_state(state).map_err(refused)?;
        if !self.is_final(&w, *start) {
            return self.fold(&w, *start, seq, dims.clone(), &acc);
        }
        for r in self.rollups_of(&w) {
            let r_start = window_start(*start, len_of(&r));
            if !self.is_final(&r, r_start) {
                self.fold(&r, r_start, seq, dims.clone(), &acc)?;
            }
        }
        Ok(())
    }

    fn check_partition(&self, p: u32) -> Result<(), Refused> {
        if p >= self.partitions { Err(Refused::UnknownPartition(p)) } else { Ok(()) }
    }

    fn fold(
        &mut self,
        w: &WindowSpec,
        start: DateTime<Utc>,
        seq: u64,
        dims: Dims,
        acc: &Accumulator,
    ) -> Result<(), Refused> {
        self.pending
            .entry((w.clone(), start))
            .or_default()
            .fold(seq, dims, acc)
            .map_err(|e| Refused::BadSketch(e.to_string()))
    }

    /// Applies a partial after the checkpoint and returns what to persist, in order.
    pub fn apply(&mut self, seq: u64, partial: &Partial) -> Result<Vec<Action>, Refused> {
        match partial {
            Partial::Window { window, partition, start, dims, state, .. } => {
                self.check_partition(*partition)?;
                let w = self.source(window)?;
                let acc = Accumulator::from_state(state).map_err(refused)?;
                if !self.is_final(&w, *start) {
                    self.fold(&w, *start, seq, dims.clone(), &acc)?;
                    return Ok(Vec::new());
                }
                let mut out = vec![Action::Revise {
                    window: w.clone(),
                    start: *start,
                    dims: dims.clone(),
                    delta: acc.clone(),
                    seq,
                }];
                for r in self.rollups_of(&w) {
                    let r_start = window_start(*start, len_of(&r));
                    if self.is_final(&r, r_start) {
                        out.push(Action::Revise {
                            window: r,
                            start: r_start,
                            dims: dims.clone(),
                            delta: acc.clone(),
                            seq,
                        });
                    } else {
                        self.fold(&r, r_start, seq, dims.clone(), &acc)?;
                    }
                }
                Ok(out)
            }
            Partial::Watermark { window, partition, final_through } => {
                self.check_partition(*partition)?;
                let w = self.source(window)?;
                let marks = self.marks.watermarks.entry(w.name().to_owned()).or_default();
                let mark = marks.entry(*partition).or_insert(*final_through);
                *mark = (*mark).max(*final_through);
                Ok(self.close(&w))
            }
        }
    }

    /// Finalises what every partition's watermark has passed, then the roll-ups that closes.
    fn close(&mut self, w: &WindowSpec) -> Vec<Action> {
        let Some(marks) = self.marks.watermarks.get(w.name()) else { return Vec::new() };
        // Only the configured partitions count (marks of partitions removed since are ignored).
        let current: Vec<DateTime<Utc>> = marks.range(0..self.partitions).map(|(_, t)| *t).collect();
        if current.len() < self.partitions as usize {
            return Vec::new();
        }
        let Some(through) = current.into_iter().min() else { return Vec::new() };
        if self.marks.final_through.get(w.name()).is_some_and(|ft| *ft >= through) {
            return Vec::new();
        }
        let mut out = self.finalise(w, through);
        for r in self.rollups_of(w) {
            let r_through = window_start(through, len_of(&r));
            out.extend(self.finalise(&r, r_through));
        }
        out
    }

    /// Finalises every pending window of `w` ending at or before `through`; a source window's
    /// series feed its pending roll-ups.
    fn finalise(&mut self, w: &WindowSpec, through: DateTime<Utc>) -> Vec<Action> {
        if self.marks.final_through.get(w.name()).is_some_and(|ft| *ft >= through) {
            return Vec::new();
        }
        self.marks.final_through.insert(w.name().to_owned(), through);
        let len = len_of(w);
        let keys: Vec<_> =
            self.pending.keys().filter(|(pw, start)| pw == w && *start + len <= through).cloned().collect();
        let rollups = self.rollups_of(w);
        let mut out = Vec::new();
        for key in keys {
            let Some(p) = self.pending.remove(&key) else { continue };
            for r in &rollups {
                let r_start = window_start(key.1, len_of(r));
                let hour = self.pending.entry((r.clone(), r_start)).or_default();
                for (dims, acc) in &p.series {
                    // Merging decoded sketches of one mapping cannot fail.
                    let _ = hour.fold(p.first_seq, dims.clone(), acc);
                }
                hour.last_seq = hour.last_seq.max(p.last_seq);
            }
            out.push(Action::Final {
                window: w.clone(),
                start: key.1,
                series: p.series.into_iter().collect(),
                seq: p.last_seq,
            });
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use modelperf_schema::messages::WindowState;

    fn at(s: &str) -> DateTime<Utc> {
        modelperf_schema::parse_ts(s).unwrap()
    }

    fn spec(s: &str) -> WindowSpec {
        s.parse().unwrap()
    }

    fn finaliser() -> Finaliser {
        let rollups = vec![Rollup { window: spec("1h"), source: spec("1m") }];
        Finaliser::new(2, vec![spec("1m")], rollups, FinalMarks::default())
    }

    fn part(p: u32, start: &str, model: &str, count: u64) -> Partial {
        Partial::Window {
            window: "1m".into(),
            partition: p,
            start: at(start),
            dims: BTreeMap::from([("model".to_owned(), model.to_owned())]),
            revision: false,
            state: WindowState { count, weighted_count: count as f64, ..WindowState::default() },
        }
    }

    fn wm(p: u32, through: &str) -> Partial {
        Partial::Watermark { window: "1m".into(), partition: p, final_through: at(through) }
    }

    fn finals(actions: &[Action]) -> Vec<(String, DateTime<Utc>, u64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Final { window, start, series, .. } => {
                    Some((window.to_string(), *start, series.iter().map(|(_, a)| a.count).sum()))
                }
                Action::Revise { .. } => None,
            })
            .collect()
    }

    #[test]
    fn a_window_is_final_when_every_partition_has_passed_it() {
        let mut f = finaliser();
        f.apply(1, &part(0, "2026-11-27T10:00:00Z", "a", 2)).unwrap();
        f.apply(2, &part(1, "2026-11-27T10:00:00Z", "a", 3)).unwrap();
        assert!(f.apply(3, &wm(0, "2026-11-27T10:01:00Z")).unwrap().is_empty(), "partition 1 has not reported");
        let out = f.apply(4, &wm(1, "2026-11-27T10:05:00Z")).unwrap();
        assert_eq!(finals(&out), [("1m".into(), at("2026-11-27T10:00:00Z"), 5)]);
        // A partial for it now is a revision of the minute and feeds the pending hour.
        let out = f.apply(5, &part(1, "2026-11-27T10:00:00Z", "a", 1)).unwrap();
        assert!(matches!(&out[..], [Action::Revise { seq: 5, .. }]));
        // The hour closes when both partitions pass 11:00 and holds every minute and revision.
        f.apply(6, &wm(0, "2026-11-27T11:00:00Z")).unwrap();
        let out = f.apply(7, &wm(1, "2026-11-27T11:00:00Z")).unwrap();
        assert_eq!(finals(&out), [("1h".into(), at("2026-11-27T10:00:00Z"), 6)]);
        // A late minute now revises both.
        let out = f.apply(8, &part(0, "2026-11-27T10:30:00Z", "b", 1)).unwrap();
        let windows: Vec<String> = out
            .iter()
            .map(|a| match a {
                Action::Revise { window, .. } => window.to_string(),
                Action::Final { .. } => "final".into(),
            })
            .collect();
        assert_eq!(windows, ["1m", "1h"]);
        assert_eq!(f.replay_from(), None);
    }

    #[test]
    fn a_replay_rebuilds_pending_windows_and_roll_ups() {
        let log = [
            part(0, "2026-11-27T10:00:00Z", "a", 2),
            part(1, "2026-11-27T10:00:00Z", "a", 3),
            wm(0, "2026-11-27T10:01:00Z"),
            wm(1, "2026-11-27T10:01:00Z"),
            part(0, "2026-11-27T10:01:00Z", "a", 4),
            part(1, "2026-11-27T10:00:00Z", "a", 1),
            wm(0, "2026-11-27T10:02:00Z"),
        ];
        let tail = [wm(1, "2026-11-27T10:02:00Z"), wm(0, "2026-11-27T11:00:00Z"), wm(1, "2026-11-27T11:00:00Z")];
        // One run straight through.
        let mut whole = finaliser();
        let mut expected = Vec::new();
        for (i, p) in log.iter().chain(&tail).enumerate() {
            expected.extend(finals(&whole.apply(i as u64 + 1, p).unwrap()));
        }
        // A crash after the log: a successor restores the marks and replays from replay_from.
        let mut first = finaliser();
        let mut before = Vec::new();
        for (i, p) in log.iter().enumerate() {
            before.extend(finals(&first.apply(i as u64 + 1, p).unwrap()));
        }
        let (marks, from) = (first.marks().clone(), first.replay_from().unwrap());
        let mut next =
            Finaliser::new(2, vec![spec("1m")], vec![Rollup { window: spec("1h"), source: spec("1m") }], marks);
        for (i, p) in log.iter().enumerate().skip(from as usize - 1) {
            next.replay(i as u64 + 1, p).unwrap();
        }
        let mut after = Vec::new();
        for (i, p) in tail.iter().enumerate() {
            after.extend(finals(&next.apply((log.len() + i) as u64 + 1, p).unwrap()));
        }
        before.extend(after);
        assert_eq!(before, expected);
        assert!(expected.contains(&("1h".into(), at("2026-11-27T10:00:00Z"), 10)), "{expected:?}");
    }

    #[test]
    fn strangers_are_refused() {
        let mut f = finaliser();
        assert_eq!(f.apply(1, &wm(5, "2026-11-27T10:00:00Z")), Err(Refused::UnknownPartition(5)));
        let p = Partial::Watermark { window: "5m".into(), partition: 0, final_through: at("2026-11-27T10:00:00Z") };
        assert_eq!(f.apply(2, &p), Err(Refused::UnknownWindow("5m".into())));
    }
}
