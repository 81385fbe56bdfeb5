//! One partition's state: its open joins, the batches being filled, and the batches decided
//! (closed) but not yet known to be published.
//!
//! A batch is decided — its dataset and task ids recorded in the checkpoint — before its ledger
//! entries are written and before it is published, so a successor rebuilds exactly that batch
//! (same tasks, same `batch_id`) from the replayed events and publishes it again; the stream's
//! duplicate window and the ledger make the second publication harmless. Everything else the
//! state holds is rebuilt by replaying the partition from [`Partition::replay_from`].

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use modelperf_schema::Event;
use modelperf_schema::messages::{Batch, Sample};
use serde::{Deserialize, Serialize};

use crate::batch::Open;
use crate::config::RlConfig;
use crate::join::{Added, Expiry, Joins};

/// A batch decided but not known to be published (checkpointed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decided {
    /// Its dataset.
    pub dataset: String,
    /// Its tasks.
    pub task_ids: BTreeSet<String>,
    /// When it closed.
    pub created_at: DateTime<Utc>,
    /// The first stream sequence of its events (a successor replays from at most here).
    pub first_seq: u64,
    /// What the quality filters dropped meanwhile, by reason.
    pub filtered: BTreeMap<String, u64>,
}

/// What a checkpoint keeps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Marks {
    /// Decided, unpublished batches, oldest first.
    pub decided: Vec<Decided>,
}

/// A sample ready to be placed, with the stream sequences of its events.
#[derive(Debug, Clone)]
pub struct ReadySample {
    /// Its dataset.
    pub dataset: String,
    /// The sample.
    pub sample: Sample,
    /// First and last stream sequence of its events.
    pub first_seq: u64,
    #[allow(missing_docs)]
    pub last_seq: u64,
}

/// A decided batch's samples rebuilt so far: task → (sample, first and last sequence).
type Slots = BTreeMap<String, (Sample, u64, u64)>;

/// One partition.
#[derive(Debug)]
pub struct Partition {
    config: RlConfig,
    joins: Joins,
    open: BTreeMap<String, Open>,
    /// Quality-filter drops per dataset since its batch opened.
    filtered: BTreeMap<String, BTreeMap<String, u64>>,
    decided: Vec<(Decided, Slots)>,
}

impl Partition {
    /// A partition restored from a checkpoint's marks (before replaying).
    pub fn new(config: RlConfig, marks: Marks) -> Self {
        Self {
            joins: Joins::new(&config),
            config,
            open: BTreeMap::new(),
            filtered: BTreeMap::new(),
            decided: marks.decided.into_iter().map(|d| (d, BTreeMap::new())).collect(),
        }
    }

    /// Open joins.
    pub fn open_joins(&self) -> usize {
        self.joins.len()
    }

    /// Adds an event (replayed or new: the join does not care) that the stream stored at `at`.
    pub fn add(&mut self, e: &Event, seq: u64, at: DateTime<Utc>) {
        let (added, evicted) = self.joins.add(e, seq, at);
        match added {
            Added::Joined => {}
            Added::Duplicate => metrics::counter!("modelperf_rl_duplicate_events_total").increment(1),
            Added::Late => metrics::counter!("modelperf_rl_late_parts_total").increment(1),
            Added::NoTask | Added::Ignored => {}
        }
        if let Some((_, why)) = evicted {
            self.expire(why);
        }
    }

    fn expire(&mut self, why: Expiry) {
        metrics::counter!("modelperf_rl_joins_expired_total", "reason" => why.label()).increment(1);
    }

    /// Joins that became samples by the clock `now` (quality filters applied and counted), and
    /// expiries counted.
    pub fn take_ready(&mut self, now: DateTime<Utc>, shutdown: bool) -> Vec<ReadySample> {
        let (mut ready, expired) = self.joins.due(now);
        if shutdown {
            ready.extend(self.joins.drain_complete(now));
        }
        for (_, why) in expired {
            self.expire(why);
        }
        let mut out = Vec::with_capacity(ready.len());
        for r in ready {
            let last_seq = r.join.last_seq;
            let dataset = r.join.dataset(&self.config);
            match r.join.sample(&self.config) {
                Ok(sample) => out.push(ReadySample { dataset, sample, first_seq: r.join.first_seq, last_seq }),
                Err(reason) => {
                    *self.filtered.entry(dataset).or_default().entry(reason.into()).or_default() += 1;
                    metrics::counter!("modelperf_rl_samples_filtered_total", "reason" => reason).increment(1);
                }
            }
        }
        out
    }

    /// Whether `task` belongs to a decided batch (a successor rebuilding it).
    pub fn in_decided(&self, task: &str) -> bool {
        self.decided.iter().any(|(d, _)| d.task_ids.contains(task))
    }

    /// Places a sample: into its decided batch when it belongs to one, else into its dataset's
    /// open batch (deciding that batch first when the sample would overflow it).
    pub fn place(&mut self, r: ReadySample, now: DateTime<Utc>) {
        if let Some((_, slots)) = self.decided.iter_mut().find(|(d, _)| d.task_ids.contains(&r.sample.task_id)) {
            slots.insert(r.sample.task_id.clone(), (r.sample, r.first_seq, r.last_seq));
            return;
        }
        let bytes = rmp_serde::to_vec_named(&r.sample).map(|b| b.len()).unwrap_or(0);
        if self.open.get(&r.dataset).is_some_and(|o| o.would_overflow(bytes, &self.config)) {
            self.decide(&r.dataset, now);
        }
        let open = self.open.entry(r.dataset.clone()).or_insert_with(|| Open::new(&r.dataset, now));
        open.bytes += bytes;
        open.samples.push((r.sample, r.first_seq, r.last_seq));
        if open.samples.len() >= self.config.batch_size {
            self.decide(&r.dataset, now);
        }
    }

    /// Decides the open batches that are full or old (all of them on shutdown). Returns whether
    /// any was decided (the caller then checkpoints before publishing).
    pub fn decide_due(&mut self, now: DateTime<Utc>, all: bool) -> bool {
        let due: Vec<String> = self
            .open
            .iter()
            .filter(|(_, o)| !o.samples.is_empty() && (all || o.full_or_old(now, &self.config)))
            .map(|(d, _)| d.clone())
            .collect();
        for d in &due {
            self.decide(d, now);
        }
        !due.is_empty()
    }

    fn decide(&mut self, dataset: &str, now: DateTime<Utc>) {
        let Some(open) = self.open.remove(dataset) else { return };
        let filtered = self.filtered.remove(dataset).unwrap_or_default();
        let task_ids = open.samples.iter().map(|(s, _, _)| s.task_id.clone()).collect();
        let first_seq = open.samples.iter().map(|(_, f, _)| *f).min().unwrap_or(0);
        let slots = open.samples.into_iter().map(|(s, f, l)| (s.task_id.clone(), (s, f, l))).collect();
        self.decided
            .push((Decided { dataset: dataset.to_owned(), task_ids, created_at: now, first_seq, filtered }, slots));
    }

    /// Decided batches whose samples are all present, ready to publish, oldest first. Their
    /// samples move into the batches (a copy would double the memory of every decided batch);
    /// the decisions stay until [`Partition::published`], so a checkpoint still holds them, and
    /// an owner that fails to publish stops and its successor rebuilds them from a replay.
    pub fn take_publishable(&mut self) -> Vec<Batch> {
        let config = &self.config;
        self.decided
            .iter_mut()
            .filter(|(d, slots)| !slots.is_empty() && d.task_ids.len() == slots.len())
            .map(|(d, slots)| {
                let mut open = Open::new(&d.dataset, d.created_at);
                open.samples = std::mem::take(slots).into_values().collect();
                open.finish(config, d.created_at, d.filtered.clone())
            })
            .collect()
    }

    /// The batch of `dataset` with `batch_id` is stored: forget it.
    pub fn published(&mut self, batch: &Batch) {
        self.decided.retain(|(d, _)| {
            !(d.dataset == batch.dataset
                && crate::batch::batch_id(&d.dataset, d.task_ids.iter().map(String::as_str)) == batch.batch_id)
        });
    }

    /// What a checkpoint keeps.
    pub fn marks(&self) -> Marks {
        Marks { decided: self.decided.iter().map(|(d, _)| d.clone()).collect() }
    }

    /// The first stream sequence a successor must replay from: open joins, samples in open
    /// batches, and decided batches (whose samples must be rebuilt).
    pub fn replay_from(&self) -> Option<u64> {
        let open = self.open.values().flat_map(|o| o.samples.iter().map(|(_, f, _)| *f));
        let decided = self.decided.iter().map(|(d, _)| d.first_seq);
        self.joins.replay_from().into_iter().chain(open).chain(decided).min()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use modelperf_schema::{Data, Judgment, ModelRef, TaskCompleted};
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn at(s: &str) -> DateTime<Utc> {
        modelperf_schema::parse_ts(s).unwrap()
    }

    /// Task `i`'s completion and judgment; interleaved so tasks overlap in the stream.
    fn events(n: usize) -> Vec<Event> {
        let mut out = Vec::new();
        for i in 0..n {
            let mut c = Event::new(
                at("2026-11-27T10:00:00Z"),
                "t",
                Data::TaskCompleted(TaskCompleted {
                    latency_ms: 100.0 * (i + 1) as f64,
                    ttft_ms: None,
                    success: i % 3 != 0,
                    error_kind: None,
                    tokens: None,
                    retries: None,
                    tool_calls: None,
                    cpu_ms: None,
                    memory_mb: None,
                }),
            );
            c.model = Some(ModelRef::parse_short("openai/gpt-4o").unwrap());
            let mut j = Event::new(
                at("2026-11-27T10:00:01Z"),
                "t",
                Data::Judgment(Judgment {
                    judge_model: ModelRef::parse_short("openai/gpt-4o-mini").unwrap(),
                    score: 0.5,
                    criteria: BTreeMap::new(),
                    confidence: None,
                    passed: None,
                    tokens: None,
                }),
            );
            for (e, part) in [(&mut c, "c"), (&mut j, "j")] {
                e.id = Some(format!("t{i}-{part}"));
                e.task_id = Some(format!("t{i}"));
                e.task_type = Some("code_edit".into());
            }
            out.push(c);
            out.push(j);
        }
        // Task i's judgment after task i+1's completion.
        for k in (1..out.len() - 1).step_by(2) {
            out.swap(k, k + 1);
        }
        out
    }

    #[test]
    fn a_successor_republishes_the_decided_batch_and_no_task_lands_twice() {
        let config = RlConfig { batch_size: 3, join_grace: Duration::from_secs(1), ..RlConfig::default() };
        let (t0, later) = (at("2026-11-27T10:00:10Z"), at("2026-11-27T10:00:20Z"));
        let all = events(7);
        let mut ledger: BTreeMap<String, String> = BTreeMap::new();
        let mut stored: Vec<Batch> = Vec::new();

        let mut a = Partition::new(config.clone(), Marks::default());
        for (i, e) in all.iter().enumerate() {
            a.add(e, i as u64 + 1, t0);
        }
        for r in a.take_ready(later, false) {
            a.place(r, later);
        }
        let batches = a.take_publishable();
        assert_eq!(batches.len(), 2, "two full batches of three, one task still open");
        assert!(a.take_publishable().is_empty(), "their samples moved out");
        assert_eq!(a.marks().decided.len(), 2, "the decisions stay until published");
        // The first is published; the second decided and in the ledger, then the owner dies.
        for b in &batches {
            for s in &b.samples {
                ledger.insert(s.task_id.clone(), b.batch_id.clone());
            }
        }
        stored.push(batches[0].clone());
        a.published(&batches[0]);
        let (marks, from) = (a.marks(), a.replay_from().unwrap());
        assert_eq!(marks.decided.len(), 1);

        let mut b = Partition::new(config.clone(), marks);
        for (i, e) in all.iter().enumerate().skip(from as usize - 1) {
            b.add(e, i as u64 + 1, later);
        }
        for r in b.take_ready(later + chrono::Duration::seconds(5), false) {
            // The ledger keeps tasks of published batches out; decided ones are rebuilt.
            if ledger.contains_key(&r.sample.task_id) && !b.in_decided(&r.sample.task_id) {
                continue;
            }
            b.place(r, later);
        }
        let again = b.take_publishable();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].batch_id, batches[1].batch_id, "the same tasks, the same id");
        assert_eq!(again[0].content_hash, batches[1].content_hash, "and the same samples");
        stored.push(again[0].clone());
        b.published(&again[0]);
        // Shutdown flushes the partial batch.
        assert!(b.decide_due(later, true));
        stored.extend(b.take_publishable());
        let tasks: Vec<String> = stored.iter().flat_map(|b| b.samples.iter().map(|s| s.task_id.clone())).collect();
        let unique: BTreeSet<&String> = tasks.iter().collect();
        assert_eq!((tasks.len(), unique.len()), (7, 7), "{tasks:?}");
        for batch in &stored {
            assert_eq!(batch.stats.n as usize, batch.samples.len());
            assert_eq!(batch.content_hash, crate::batch::content_hash(&batch.samples));
        }
    }
}
