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

    fn partial(&self, spec: &WindowSpec, c: Closed, msg_id: String) -> Outgoing {
        let body = Partial::Window {
            window: spec.name().to_owned(),
            partition: self.partition,
            start: c.start,
            dims: c.dims,
            revision: c.revision,
            state: c.acc.to_state(),
        };
        outgoing(spec, self.partition, msg_id, &body)
    }
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
            out.push(self.partial(&spec, c, id));
        }
        Ok(out)
    }

    fn tick(&mut self, caught_up: bool) -> Vec<Outgoing> {
        let now = (self.clock)();
        let mut out = Vec::new();
        let mut closed = Vec::new();
        for (spec, w) in &mut self.windows {
            // A close decided before a restart and not known to be published goes out again
            // at once (within the duplicate window), moved or not.
            if !w.advance(now, caught_up, self.applied) && !w.unpublished() {
                continue;
            }
            let Some(through) = w.mark().final_through else { continue };
            closed.push((spec.clone(), w.take_closed(), through));
        }
        for (spec, windows, through) in closed {
            for c in windows {
                let id = format!("{}:{}:{}:{}", spec, c.start.timestamp(), self.partition, series_hash(&c.dims));
                out.push(self.partial(&spec, c, id));
            }
            // After the partials, so the finaliser has them when it reads the report.
            let report = Partial::Watermark {
                window: spec.name().to_owned(),
                partition: self.partition,
                final_through: through,
            };
            let id = format!("wm:{}:{}:{}", spec, self.partition, through.timestamp_millis());
            out.push(outgoing(&spec, self.partition, id, &report));
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
