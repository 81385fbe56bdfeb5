//! A partition owner: folds the clean events of partition `p` into event-time windows and
//! publishes mergeable partials and watermark reports on `perf.partials.<window>.<p>`.
//!
//! Its checkpoint holds no window contents, only where to replay from (the first event of the
//! oldest open window) and each window length's marks (latest event time, close point, what is
//! published): `PERF_EVENTS` is the changelog, and a successor rebuilds the open windows by
//! replaying the partition. Message ids make every re-publication a duplicate the stream drops:
//! - a closed window's partial: `<window>:<start>:<p>:<series hash>`;
//! - a late event's revision: `<window>:<start>:<p>:<series hash>:e<event sequence>`;
//! - a watermark report: `wm:<window>:<p>:<final_through>`.

use chrono::{DateTime, Utc};
use modelperf_bus::{Checkpoint, Failure, Incoming, Outgoing, PartitionOwner};
use modelperf_schema::messages::Partial;
use modelperf_schema::names::WindowSpec;
use modelperf_schema::{ErrorCode, Event};
use serde::{Deserialize, Serialize};

use crate::window::{Dim, series_hash};
use crate::windows::{Closed, Placement, Windows, WindowsMark};

/// The checkpointed marks of one partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OwnerMarks {
    /// Window name → its marks.
    pub windows: std::collections::BTreeMap<String, WindowsMark>,
}

/// The state of one partition.
pub struct AggOwner {
    partition: u32,
    windows: Vec<(WindowSpec, Windows)>,
    /// The last event sequence applied or replayed.
    applied: u64,
    clock: Box<dyn Fn() -> DateTime<Utc> + Send>,
}

impl std::fmt::Debug for AggOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggOwner").field("partition", &self.partition).finish_non_exhaustive()
    }
}

impl AggOwner {
    /// An owner of `partition` for the owner windows, restored from a checkpoint's marks.
    pub fn new(
        partition: u32,
        specs: &[WindowSpec],
        lateness: std::time::Duration,
        max_revision_age: std::time::Duration,
        group_by: &[Dim],
        marks: Option<&OwnerMarks>,
    ) -> Self {
        let to = |d: std::time::Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        let windows = specs
            .iter()
            .map(|spec| {
                let mut w = Windows::new(to(spec.duration()), to(lateness), to(max_revision_age), group_by);
                if let Some(mark) = marks.and_then(|m| m.windows.get(spec.name())) {
                    w.restore(*mark);
                }
                (spec.clone(), w)
            })
            .collect();
        Self { partition, windows, applied: 0, clock: Box::new(Utc::now) }
    }

    /// Replaces the wall clock (tests).
    pub fn with_clock(mut self, clock: impl Fn() -> DateTime<Utc> + Send + 'static) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// Decodes the checkpoint's state.
    pub fn marks_of(cp: &Checkpoint) -> Result<OwnerMarks, String> {
        if cp.state.is_empty() {
            return Ok(OwnerMarks::default());
        }
        rmp_serde::from_slice(&cp.state).map_err(|e| format!("aggregator checkpoint state: {e}"))
    }

    /// Open series over every window length (memory and metrics).
    pub fn open_series(&self) -> usize {
        self.windows.iter().map(|(_, w)| w.open_series()).sum()
    }

    fn decode(msg: &Incoming<'_>) -> Result<Event, Failure> {
        modelperf_schema::from_msgpack::<Event>(msg.payload).map_err(|e| Failure::Terminate {
            code: e.code,
            reason: format!("a clean event that does not decode: {}", e.reason),
        })
    }
}

/// A closed series-window's partial.
fn partial(spec: &WindowSpec, partition: u32, c: Closed, msg_id: String) -> Outgoing {
    let body = Partial::Window {
        window: spec.name().to_owned(),
        partition,
        start: c.start,
        dims: c.dims,
        revision: c.revision,
        state: c.acc.to_state(),
    };
    outgoing(spec, partition, msg_id, &body)
}

fn outgoing(spec: &WindowSpec, partition: u32, msg_id: String, body: &Partial) -> Outgoing {
    // Encoding our own types cannot fail; an empty body would be refused by the finaliser.
    let bytes = modelperf_schema::to_msgpack(body).unwrap_or_default();
    Outgoing::new(format!("perf.partials.{}.{partition}", spec.name()), msg_id, bytes)
}

impl PartitionOwner for AggOwner {
    fn replay(&mut self, msg: &Incoming<'_>) {
        self.applied = msg.seq;
        if let Ok(e) = Self::decode(msg) {
            // Refused as a whole when it was applied: skipped as a whole.
            if self.windows.iter().any(|(_, w)| w.was_too_late(&e, msg.seq)) {
                return;
            }
            for (_, w) in &mut self.windows {
                w.replay(&e, msg.seq);
            }
        }
    }

    fn apply(&mut self, msg: &Incoming<'_>) -> Result<Vec<Outgoing>, Failure> {
        self.applied = msg.seq;
        let e = Self::decode(msg)?;
        // Refused whole, so a replay from the dead-letter stream cannot count it twice.
        if let Some((spec, _)) = self.windows.iter().find(|(_, w)| w.too_late(&e)) {
            return Err(Failure::Terminate {
                code: ErrorCode::TooLate,
                reason: format!(
                    "ts {} falls in a {spec} window closed more than max_revision_age before the partition's close point",
                    modelperf_schema::format_ts(&e.ts)
                ),
            });
        }
        let mut out = Vec::new();
        let mut revisions = Vec::new();
        for (spec, w) in &mut self.windows {
            if let Placement::Revision(c) = w.add(&e, msg.seq) {
                revisions.push((spec.clone(), c));
            }
        }
        for (spec, c) in revisions {
            let id =
                format!("{}:{}:{}:{}:e{}", spec, c.start.timestamp(), self.partition, series_hash(&c.dims), msg.seq);
            metrics::counter!("modelperf_aggregator_revisions_total", "window" => spec.name().to_owned()).increment(1);
            out.push(partial(&spec, self.partition, c, id));
        }
        Ok(out)
    }

    fn tick(&mut self, caught_up: bool) -> Vec<Outgoing> {
        let now = (self.clock)();
        let mut out = Vec::new();
        let partition = self.partition;
        for (spec, w) in &mut self.windows {
            // A close decided before a restart and not known to be published goes out again
            // at once (within the duplicate window), moved or not.
            if !w.advance(now, caught_up, self.applied) && !w.unpublished() {
                continue;
            }
            let Some(through) = w.mark().final_through else { continue };
            w.drain_closed(|c| {
                let id = format!("{}:{}:{}:{}", spec, c.start.timestamp(), partition, series_hash(&c.dims));
                out.push(partial(spec, partition, c, id));
            });
            // After the partials, so the finaliser has them when it reads the report.
            let report = Partial::Watermark { window: spec.name().to_owned(), partition, final_through: through };
            let id = format!("wm:{}:{}:{}", spec, partition, through.timestamp_millis());
            out.push(outgoing(spec, partition, id, &report));
        }
        out
    }

    fn published(&mut self) {
        for (_, w) in &mut self.windows {
            w.published();
        }
        metrics::gauge!("modelperf_aggregator_open_series", "partition" => self.partition.to_string())
            .set(self.open_series() as f64);
    }

    fn checkpoint(&self, applied_seq: u64) -> Checkpoint {
        let marks = OwnerMarks { windows: self.windows.iter().map(|(s, w)| (s.name().to_owned(), w.mark())).collect() };
        Checkpoint {
            applied_seq,
            replay_from: self.windows.iter().filter_map(|(_, w)| w.replay_from()).min(),
            state: rmp_serde::to_vec_named(&marks).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::window::DEFAULT_GROUP_BY;
    use modelperf_schema::{Data, TaskStarted};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    fn at(s: &str) -> DateTime<Utc> {
        modelperf_schema::parse_ts(s).unwrap()
    }

    fn body(ts: &str, task_type: &str) -> Vec<u8> {
        let mut e = Event::new(at(ts), "t", Data::TaskStarted(TaskStarted { queue_ms: Some(1.0) }));
        e.task_type = Some(task_type.into());
        modelperf_schema::to_msgpack(&e).unwrap()
    }

    fn incoming(payload: &[u8], seq: u64) -> Incoming<'_> {
        Incoming {
            subject: "perf.events.task_started.0",
            headers: None,
            payload,
            stream: "PERF_EVENTS",
            seq,
            delivered: 1,
        }
    }

    fn owner(clock: Arc<Mutex<DateTime<Utc>>>, marks: Option<&OwnerMarks>) -> AggOwner {
        let specs: Vec<WindowSpec> = vec!["1m".parse().unwrap()];
        AggOwner::new(0, &specs, Duration::from_secs(120), Duration::from_secs(3600), &DEFAULT_GROUP_BY, marks)
            .with_clock(move || *clock.lock().unwrap())
    }

    /// (msg id, body) of every output, to compare publications.
    fn ids(out: &[Outgoing]) -> Vec<(String, Vec<u8>)> {
        out.iter().map(|o| (o.msg_id.clone(), o.payload.to_vec())).collect()
    }

    /// The owner dies after checkpointing a close and before its partials are stored; the
    /// successor, replaying from that checkpoint, publishes exactly the same partials under the
    /// same ids on its first tick, and late events after the close stay revisions.
    #[test]
    fn a_crash_between_the_decision_and_the_publish_republishes_the_same_partials() {
        let clock = Arc::new(Mutex::new(at("2026-11-27T10:10:00Z")));
        let events: Vec<Vec<u8>> = [
            ("2026-11-27T10:00:05Z", "a"),
            ("2026-11-27T10:00:30Z", "b"),
            ("2026-11-27T10:01:10Z", "a"),
            ("2026-11-27T10:00:40Z", "a"),
        ]
        .iter()
        .map(|(ts, tt)| body(ts, tt))
        .collect();
        let mut first = owner(clock.clone(), None);
        for (i, b) in events.iter().take(3).enumerate() {
            assert!(first.apply(&incoming(b, i as u64 + 1)).unwrap().is_empty());
        }
        // Idle: the clock closes everything up to 10:08; the loop checkpoints, then publishes.
        let published = first.tick(true);
        let decision = first.checkpoint(3);
        assert_eq!(decision.replay_from, Some(1), "the replay must reach the unpublished windows");
        assert_eq!(published.len(), 2 + 1 + 1, "three series in two minutes, and the report");
        // ... and dies before `published()`.

        let marks = AggOwner::marks_of(&decision).unwrap();
        let mut next = owner(clock.clone(), Some(&marks));
        for (i, b) in events.iter().take(3).enumerate() {
            let seq = i as u64 + 1;
            if seq >= decision.replay_from.unwrap() {
                next.replay(&incoming(b, seq));
            }
        }
        // A late event for 10:00 arrives before the successor's first tick: a revision.
        let late = next.apply(&incoming(&events[3], 4)).unwrap();
        assert_eq!(late.len(), 1);
        assert!(late[0].msg_id.ends_with(":e4"), "{}", late[0].msg_id);
        // The close point has not moved, yet the successor republishes the same partials.
        assert_eq!(ids(&next.tick(true)), ids(&published));
        next.published();
        assert!(next.tick(true).is_empty(), "nothing more until the clock moves");
        *clock.lock().unwrap() = at("2026-11-27T10:11:00Z");
        let report = next.tick(true);
        assert_eq!(report.len(), 1, "only the watermark report: {:?}", ids(&report));
    }
}
