//! Samples → batches: the contract's `batch_id` and `content_hash`, statistics, and the rules
//! that close a batch (size, age, bytes; shutdown is the caller's).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use modelperf_schema::messages::{Batch, BatchSource, BatchStats, Sample};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::RlConfig;

/// First 32 hex digits of SHA-256 over the dataset and each sorted task id, each `\n`-terminated.
pub fn batch_id<'a>(dataset: &str, task_ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut ids: Vec<&str> = task_ids.into_iter().collect();
    ids.sort_unstable();
    let mut h = Sha256::new();
    h.update(dataset.as_bytes());
    h.update(b"\n");
    for id in ids {
        h.update(id.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())[..32].to_owned()
}

/// SHA-256 (hex) of the MessagePack (named fields) of `samples`.
pub fn content_hash(samples: &[Sample]) -> String {
    hex::encode(Sha256::digest(rmp_serde::to_vec_named(samples).unwrap_or_default()))
}

/// Statistics of samples (`filtered`: what the quality filters dropped, by reason).
pub fn stats(samples: &[Sample], filtered: BTreeMap<String, u64>) -> BatchStats {
    let n = samples.len() as u64;
    let rewards: Vec<f64> = samples.iter().map(|s| s.reward).collect();
    let mean = if n > 0 { rewards.iter().sum::<f64>() / n as f64 } else { 0.0 };
    let var = if n > 1 { rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
    let mut per_model = BTreeMap::new();
    for s in samples {
        *per_model.entry(format!("{}/{}", s.action.chosen.provider, s.action.chosen.name)).or_insert(0) += 1;
    }
    let (min, max) = if n == 0 {
        (0.0, 0.0)
    } else {
        (
            rewards.iter().copied().fold(f64::INFINITY, f64::min),
            rewards.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        )
    };
    BatchStats { n, reward_mean: mean, reward_std: var.sqrt(), reward_min: min, reward_max: max, per_model, filtered }
}

/// The normalisation reference a batch records: the weights and, per task type in it, the
/// latency and cost references.
pub fn reference(config: &RlConfig, samples: &[Sample]) -> BTreeMap<String, Value> {
    let mut per_type = serde_json::Map::new();
    for s in samples {
        let t = s.state.get("task_type").and_then(Value::as_str);
        let r = config.reference_of(t);
        per_type.insert(t.unwrap_or("default").to_owned(), json!({"latency_ms": r.latency_ms, "cost_usd": r.cost_usd}));
    }
    BTreeMap::from([
        ("weights".to_owned(), json!(config.reward.weights)),
        ("task_types".to_owned(), Value::Object(per_type)),
        ("formula".to_owned(), json!("docs/rl.md v1: weighted mean of present components; latency, cost: ref/(ref+x)")),
    ])
}

/// A batch being filled for one dataset.
#[derive(Debug, Clone)]
pub struct Open {
    /// The dataset.
    pub dataset: String,
    /// Its samples, with the stream sequences of their events.
    pub samples: Vec<(Sample, u64, u64)>,
    /// MessagePack bytes of the samples so far.
    pub bytes: usize,
    /// When the first sample arrived.
    pub opened: DateTime<Utc>,
}

impl Open {
    /// An empty batch of `dataset`.
    pub fn new(dataset: &str, now: DateTime<Utc>) -> Self {
        Self { dataset: dataset.to_owned(), samples: Vec::new(), bytes: 0, opened: now }
    }

    /// Whether `sample_bytes` more would exceed the byte bound (the envelope aside).
    pub fn would_overflow(&self, sample_bytes: usize, config: &RlConfig) -> bool {
        !self.samples.is_empty() && self.bytes + sample_bytes + 4_096 > config.batch_max_bytes
    }

    /// Whether it must close now by size or age.
    pub fn full_or_old(&self, now: DateTime<Utc>, config: &RlConfig) -> bool {
        self.samples.len() >= config.batch_size
            || (!self.samples.is_empty()
                && now - self.opened
                    >= chrono::Duration::from_std(config.batch_max_age).unwrap_or(chrono::Duration::MAX))
    }

    /// The finished batch, its samples moved into it. Samples are sorted by task id, so the same
    /// tasks give the same bytes.
    pub fn finish(self, config: &RlConfig, created_at: DateTime<Utc>, filtered: BTreeMap<String, u64>) -> Batch {
        let first_seq = self.samples.iter().map(|(_, f, _)| *f).min().unwrap_or(0);
        let last_seq = self.samples.iter().map(|(_, _, l)| *l).max().unwrap_or(0);
        let mut samples: Vec<Sample> = self.samples.into_iter().map(|(s, _, _)| s).collect();
        samples.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        Batch {
            batch_id: batch_id(&self.dataset, samples.iter().map(|s| s.task_id.as_str())),
            dataset: self.dataset,
            schema_v: 1,
            created_at,
            stats: stats(&samples, filtered),
            reference: reference(config, &samples),
            source: BatchSource { stream: "PERF_EVENTS".into(), first_seq, last_seq },
            content_hash: content_hash(&samples),
            samples,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use modelperf_schema::ModelRef;
    use modelperf_schema::messages::Action;
    use proptest::prelude::*;

    fn sample(task: &str, reward: f64) -> Sample {
        Sample {
            task_id: task.into(),
            state: BTreeMap::from([("task_type".into(), json!("code_edit"))]),
            action: Action {
                agent_id: None,
                chosen: ModelRef::parse_short("openai/gpt-4o").unwrap(),
                probability: Some(0.5),
            },
            reward,
            reward_components: BTreeMap::from([("quality".into(), reward)]),
            done: true,
            event_ids: vec![format!("{task}-c")],
            weight: 1.0,
        }
    }

    #[test]
    fn batch_id_follows_the_contract() {
        // sha256("code_edit\na\nb\n"), first 32 hex digits.
        let want = hex::encode(Sha256::digest(b"code_edit\na\nb\n"))[..32].to_owned();
        assert_eq!(batch_id("code_edit", ["b", "a"]), want);
        assert_eq!(batch_id("code_edit", ["a", "b"]).len(), 32);
        assert_ne!(batch_id("other", ["a", "b"]), want);
    }

    #[test]
    fn stats_of_a_batch() {
        let s = stats(&[sample("a", 0.2), sample("b", 0.6)], BTreeMap::from([("non_finite".into(), 1)]));
        assert_eq!((s.n, s.reward_min, s.reward_max), (2, 0.2, 0.6));
        assert!((s.reward_mean - 0.4).abs() < 1e-12);
        assert!((s.reward_std - (0.08f64).sqrt()).abs() < 1e-12);
        assert_eq!(s.per_model["openai/gpt-4o"], 2);
        let empty = stats(&[], BTreeMap::new());
        assert_eq!((empty.n, empty.reward_min, empty.reward_max), (0, 0.0, 0.0));
    }

    proptest! {
        /// The same tasks, in any order of arrival, make the same batch: id, hash and bytes.
        #[test]
        fn batch_id_and_content_hash_are_deterministic(
            rewards in proptest::collection::vec(0.0f64..=1.0, 1..40),
            seed in any::<u64>(),
        ) {
            let cfg = RlConfig::default();
            let now = modelperf_schema::parse_ts("2026-11-27T10:00:00Z").unwrap();
            let samples: Vec<Sample> = rewards.iter().enumerate().map(|(i, r)| sample(&format!("t{i}"), *r)).collect();
            let mut a = Open::new("code_edit", now);
            let mut b = Open::new("code_edit", now);
            for (i, s) in samples.iter().enumerate() { a.samples.push((s.clone(), i as u64, i as u64)); }
            let mut shuffled: Vec<(usize, &Sample)> = samples.iter().enumerate().collect();
            shuffled.sort_by_key(|(i, _)| (*i as u64).wrapping_mul(seed | 1).rotate_left(17));
            for (i, s) in shuffled { b.samples.push((s.clone(), i as u64, i as u64)); }
            let (x, y) = (a.finish(&cfg, now, BTreeMap::new()), b.finish(&cfg, now, BTreeMap::new()));
            prop_assert_eq!(&x.batch_id, &y.batch_id);
            prop_assert_eq!(&x.content_hash, &y.content_hash);
            prop_assert_eq!(rmp_serde::to_vec_named(&x).unwrap(), rmp_serde::to_vec_named(&y).unwrap());
            prop_assert_eq!(x.content_hash, content_hash(&x.samples));
        }
    }
}
