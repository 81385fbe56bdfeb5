//! Consistent sampling: whole tasks are kept or dropped, decided by a keyed hash of the task id.
//!
//! A task is kept at rate `1/k` when the first 8 bytes of HMAC-SHA256(key, task_id), read as a
//! big-endian u64, fall below `2^64 / k`. The decision needs no state, so it is the same on every
//! replica and after every restart, and it is nested: a task kept at `1/10` is also kept at
//! `1/5`. Overrides keep an event whose task was dropped when it is interesting on its own
//! (a failure, a poor judgment, a slow or expensive completion); such an event is always kept,
//! so its `sample_rate` is 1.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, KeyInit, Mac};
use modelperf_schema::{Data, Event};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Sha256;

use crate::config::SamplingConfig;

/// A sampling rate `1/k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    k: u64,
}

impl Rate {
    /// Keep everything.
    pub const ONE: Rate = Rate { k: 1 };

    /// `1/k`; `None` for `k = 0`.
    pub fn one_in(k: u64) -> Option<Rate> {
        (k > 0).then_some(Rate { k })
    }

    /// The probability of keeping a task.
    pub fn probability(self) -> f64 {
        1.0 / self.k as f64
    }

    /// Whether a task with this hash is kept.
    fn keeps(self, hash: u64) -> bool {
        self.k == 1 || hash < u64::MAX / self.k
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "1/{}", self.k)
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let k = s.trim().strip_prefix("1/").unwrap_or(s.trim());
        k.trim()
            .parse::<u64>()
            .ok()
            .and_then(Rate::one_in)
            .ok_or_else(|| format!("sampling rate {s:?} is not of the form 1/k with k a positive integer"))
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Int(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
            Raw::Int(1) => Ok(Rate::ONE),
            Raw::Int(n) => Err(serde::de::Error::custom(format!("sampling rate {n} is not of the form \"1/k\""))),
        }
    }
}

/// Why an event was kept although its task was sampled out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Override {
    /// A failed completion or an invalid validation.
    Failure,
    /// A judgment below the threshold.
    LowJudgment,
    /// A completion slower than the threshold.
    Slow,
    /// A completion or judgment costing more than the threshold.
    Expensive,
}

impl Override {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Override::Failure => "failure",
            Override::LowJudgment => "low_judgment",
            Override::Slow => "slow",
            Override::Expensive => "expensive",
        }
    }
}

/// What to do with one event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Keep it with this `sample_rate`.
    Keep {
        /// The probability with which it was kept.
        sample_rate: f64,
        /// Set when only an override kept it.
        by: Option<Override>,
    },
    /// Its task was sampled out.
    Drop,
}

/// Decides per event; cheap and stateless.
#[derive(Clone)]
pub struct Sampler {
    mac: Hmac<Sha256>,
    cfg: SamplingConfig,
}

impl fmt::Debug for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sampler").field("default", &self.cfg.default).field("rates", &self.cfg.rates).finish()
    }
}

impl Sampler {
    /// A sampler with the configured key, rates and overrides.
    pub fn new(cfg: &SamplingConfig) -> Self {
        // HMAC accepts keys of any length, so this cannot fail; fall back to an empty key anyway.
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(cfg.key.as_bytes())
            .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
        Self { mac, cfg: cfg.clone() }
    }

    /// The rate of a task type.
    pub fn rate(&self, task_type: Option<&str>) -> Rate {
        task_type.and_then(|t| self.cfg.rates.get(t)).copied().unwrap_or(self.cfg.default)
    }

    /// The keyed hash of a task id.
    pub fn hash(&self, task_id: &str) -> u64 {
        let mut mac = self.mac.clone();
        mac.update(task_id.as_bytes());
        let out = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&out[..8]);
        u64::from_be_bytes(first)
    }

    /// Whether the task of `key` (its `task_id`, else the event id) is kept at `rate`.
    pub fn keeps_task(&self, key: &str, rate: Rate) -> bool {
        rate.keeps(self.hash(key))
    }

    /// The decision for a priced event (overrides look at its cost).
    pub fn decide(&self, event: &Event) -> Decision {
        let rate = self.rate(event.task_type.as_deref());
        let task_kept = rate == Rate::ONE || self.keeps_task(event.partition_key(), rate);
        match self.override_of(event) {
            // Always kept, so counted with weight 1, whether or not its task was kept.
            Some(by) => Decision::Keep { sample_rate: 1.0, by: (!task_kept).then_some(by) },
            None if task_kept => Decision::Keep { sample_rate: rate.probability(), by: None },
            None => Decision::Drop,
        }
    }

    fn override_of(&self, event: &Event) -> Option<Override> {
        let c = &self.cfg;
        let cost = event.cost.as_ref().and_then(|c| c.usd);
        let expensive = matches!((cost, c.keep_cost_above_usd), (Some(v), Some(t)) if v > t);
        match &event.data {
            Data::TaskCompleted(d) => {
                if c.keep_failures && !d.success {
                    Some(Override::Failure)
                } else if c.keep_latency_above_ms.is_some_and(|t| d.latency_ms > t) {
                    Some(Override::Slow)
                } else if expensive {
                    Some(Override::Expensive)
                } else {
                    None
                }
            }
            Data::Validation(d) if c.keep_failures && !d.valid => Some(Override::Failure),
            Data::Judgment(d) => {
                if c.keep_judgment_below.is_some_and(|t| d.score < t) {
                    Some(Override::LowJudgment)
                } else if expensive {
                    Some(Override::Expensive)
                } else {
                    None
                }
            }
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::Utc;
    use modelperf_schema::{Cost, Judgment, ModelRef, TaskCompleted, TaskStarted};

    fn sampler(rate: &str) -> Sampler {
        let mut cfg = SamplingConfig::default();
        cfg.rates.insert("summarize".into(), rate.parse().unwrap());
        Sampler::new(&cfg)
    }

    fn event(task: &str, data: Data) -> Event {
        let mut e = Event::new(Utc::now(), "test", data);
        e.task_id = Some(task.into());
        e.task_type = Some("summarize".into());
        e
    }

    fn completed(success: bool, latency_ms: f64) -> Data {
        Data::TaskCompleted(TaskCompleted {
            latency_ms,
            ttft_ms: None,
            success,
            error_kind: None,
            tokens: None,
            retries: None,
            tool_calls: None,
            cpu_ms: None,
            memory_mb: None,
        })
    }

    #[test]
    fn rates_parse_and_refuse_nonsense() {
        assert_eq!("1/10".parse::<Rate>().unwrap(), Rate::one_in(10).unwrap());
        assert_eq!(" 1/3 ".parse::<Rate>().unwrap().to_string(), "1/3");
        assert_eq!("7".parse::<Rate>().unwrap(), Rate::one_in(7).unwrap());
        for bad in ["1/0", "2/3", "0.1", "", "1/-2"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        let cfg: SamplingConfig = toml::from_str("rates = { summarize = \"1/4\", code_edit = 1 }").unwrap();
        assert_eq!(cfg.rates["summarize"], Rate::one_in(4).unwrap());
        assert_eq!(cfg.rates["code_edit"], Rate::ONE);
        assert!(toml::from_str::<SamplingConfig>("rates = { summarize = 0.25 }").is_err());
    }

    #[test]
    fn the_kept_fraction_matches_the_rate_and_tasks_stay_whole() {
        let s = sampler("1/10");
        let n = 100_000;
        let mut kept = 0;
        for i in 0..n {
            let task = format!("task-{i}");
            let a = s.decide(&event(&task, Data::TaskStarted(TaskStarted { queue_ms: None })));
            let b = s.decide(&event(&task, completed(true, 10.0)));
            assert_eq!(a, b, "a task is never split without an override");
            if let Decision::Keep { sample_rate, .. } = a {
                assert_eq!(sample_rate, 0.1);
                kept += 1;
            }
        }
        let fraction = kept as f64 / n as f64;
        assert!((fraction - 0.1).abs() <= 0.1 * 0.02, "kept {fraction}");
    }

    #[test]
    fn decisions_depend_only_on_key_and_task() {
        let a = sampler("1/3");
        let b = sampler("1/3");
        let mut other_cfg = SamplingConfig { key: "another".into(), ..SamplingConfig::default() };
        other_cfg.rates.insert("summarize".into(), Rate::one_in(3).unwrap());
        let other = Sampler::new(&other_cfg);
        let mut differ = 0;
        for i in 0..2000 {
            let e = event(&format!("t{i}"), completed(true, 1.0));
            assert_eq!(a.decide(&e), b.decide(&e));
            differ += usize::from(a.decide(&e) != other.decide(&e));
        }
        assert!(differ > 100, "another key gives other decisions ({differ})");
    }

    #[test]
    fn rates_are_nested() {
        let s = Sampler::new(&SamplingConfig::default());
        for i in 0..5000 {
            let key = format!("t{i}");
            if s.keeps_task(&key, Rate::one_in(10).unwrap()) {
                assert!(s.keeps_task(&key, Rate::one_in(5).unwrap()));
            }
        }
    }

    #[test]
    fn overrides_keep_interesting_events_with_rate_one() {
        let mut cfg = SamplingConfig {
            keep_latency_above_ms: Some(5000.0),
            keep_cost_above_usd: Some(1.0),
            ..SamplingConfig::default()
        };
        cfg.rates.insert("summarize".into(), Rate::one_in(1_000_000).unwrap());
        let s = Sampler::new(&cfg);
        let keep = |by| Decision::Keep { sample_rate: 1.0, by: Some(by) };
        assert_eq!(s.decide(&event("t", completed(false, 10.0))), keep(Override::Failure));
        assert_eq!(s.decide(&event("t", completed(true, 9000.0))), keep(Override::Slow));
        let mut pricey = event("t", completed(true, 10.0));
        pricey.cost = Some(Cost::priced(2.5, "p"));
        assert_eq!(s.decide(&pricey), keep(Override::Expensive));
        let judged = |score| {
            event(
                "t",
                Data::Judgment(Judgment {
                    judge_model: ModelRef::new("openai", "gpt-4o"),
                    score,
                    criteria: Default::default(),
                    confidence: None,
                    passed: None,
                    tokens: None,
                }),
            )
        };
        assert_eq!(s.decide(&judged(0.2)), keep(Override::LowJudgment));
        // An ordinary event of the same (almost surely dropped) task is dropped.
        assert_eq!(s.decide(&judged(0.9)), Decision::Drop);
        assert_eq!(s.decide(&event("t", completed(true, 10.0))), Decision::Drop);
        // When the task is kept anyway, the override did not change anything: not counted.
        let all = Sampler::new(&SamplingConfig::default());
        assert_eq!(all.decide(&event("t", completed(false, 10.0))), Decision::Keep { sample_rate: 1.0, by: None });
    }
}
