//! The reward of a sample (formula and defaults: `docs/rl.md`).
//!
//! Each component lies in [0, 1], higher is better:
//! - `quality`: the judgment's score;
//! - `success`: 1 for a successful completion, 0 otherwise;
//! - `latency`: `ref / (ref + latency_ms)` — 1 for an instant answer, 0.5 at the task type's
//!   reference latency, towards 0 for slow ones;
//! - `cost`: `ref / (ref + cost_usd)` likewise, against the reference cost;
//! - `compliance`: the validation's compliance score.
//!
//! The reward is the weighted mean of the components present: `Σ wᵢ·cᵢ / Σ wᵢ` over the
//! components the task has (a task without a validation is not punished for it). It is
//! therefore finite, within [0, 1], and non-decreasing in every component; it depends only on the
//! task's events, the weights and the reference, which the batch records, so a rebuilt sample
//! has the same reward.

use std::collections::BTreeMap;

use crate::config::{Reference, RewardConfig};

/// What a task's events say, before normalisation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Outcome {
    /// Judgment score, 0..1.
    pub quality: Option<f64>,
    /// Completion success.
    pub success: Option<bool>,
    /// Completion latency.
    pub latency_ms: Option<f64>,
    /// Priced cost of the completion.
    pub cost_usd: Option<f64>,
    /// Validation compliance, 0..1.
    pub compliance: Option<f64>,
}

/// The components of an outcome, normalised against `reference`; only finite values in range.
pub fn components(o: &Outcome, reference: Reference) -> BTreeMap<String, f64> {
    let mut c = BTreeMap::new();
    let unit = |v: f64| (v.is_finite() && (0.0..=1.0).contains(&v)).then_some(v);
    let against = |v: f64, r: f64| (v.is_finite() && v >= 0.0).then(|| r / (r + v));
    let entries = [
        ("quality", o.quality.and_then(unit)),
        ("success", o.success.map(|s| if s { 1.0 } else { 0.0 })),
        ("latency", o.latency_ms.and_then(|v| against(v, reference.latency_ms))),
        ("cost", o.cost_usd.and_then(|v| against(v, reference.cost_usd))),
        ("compliance", o.compliance.and_then(unit)),
    ];
    for (name, value) in entries {
        if let Some(v) = value {
            c.insert(name.to_owned(), v);
        }
    }
    c
}

/// The weighted mean of the components present with a positive weight; `None` when none is.
pub fn reward(components: &BTreeMap<String, f64>, config: &RewardConfig) -> Option<f64> {
    let (mut num, mut den) = (0.0, 0.0);
    for (name, c) in components {
        let w = config.weights.get(name).copied().unwrap_or(0.0);
        if w > 0.0 {
            num += w * c;
            den += w;
        }
    }
    (den > 0.0).then(|| (num / den).clamp(0.0, 1.0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const REF: Reference = Reference { latency_ms: 2_000.0, cost_usd: 0.02 };

    fn full(q: f64, s: bool, l: f64, c: f64, v: f64) -> Outcome {
        Outcome { quality: Some(q), success: Some(s), latency_ms: Some(l), cost_usd: Some(c), compliance: Some(v) }
    }

    #[test]
    fn the_documented_example() {
        // docs/rl.md: quality 0.8, success, 2 s at a 2 s reference, $0.01 at $0.02, compliance 1.
        let c = components(&full(0.8, true, 2_000.0, 0.01, 1.0), REF);
        assert_eq!(c["latency"], 0.5);
        assert!((c["cost"] - 2.0 / 3.0).abs() < 1e-12);
        let r = reward(&c, &RewardConfig::default()).unwrap();
        let want = 0.4 * 0.8 + 0.3 * 1.0 + 0.1 * 0.5 + 0.1 * (2.0 / 3.0) + 0.1 * 1.0;
        assert!((r - want).abs() < 1e-12, "{r} vs {want}");
    }

    #[test]
    fn missing_components_are_left_out_not_zeroed() {
        let o = Outcome { quality: Some(0.9), success: Some(true), ..Outcome::default() };
        let r = reward(&components(&o, REF), &RewardConfig::default()).unwrap();
        assert!((r - (0.4 * 0.9 + 0.3) / 0.7).abs() < 1e-12);
        assert_eq!(reward(&components(&Outcome::default(), REF), &RewardConfig::default()), None);
        // Out-of-range and non-finite inputs are no data.
        let bad =
            Outcome { quality: Some(f64::NAN), compliance: Some(1.5), latency_ms: Some(-1.0), ..Outcome::default() };
        assert!(components(&bad, REF).is_empty());
    }

    proptest! {
        #[test]
        fn bounded_finite_and_monotone_in_every_component(
            q in 0.0f64..=1.0, s in any::<bool>(), l in 0.0f64..1e7, c in 0.0f64..100.0, v in 0.0f64..=1.0,
            dq in 0.0f64..=1.0, dl in 0.0f64..1e6, dc in 0.0f64..10.0, dv in 0.0f64..=1.0,
        ) {
            let cfg = RewardConfig::default();
            let r = |o: Outcome| reward(&components(&o, REF), &cfg).unwrap();
            let base = r(full(q, s, l, c, v));
            prop_assert!(base.is_finite() && (0.0..=1.0).contains(&base));
            // Better quality, success, compliance, lower latency or cost: never a lower reward.
            prop_assert!(r(full((q + dq).min(1.0), s, l, c, v)) >= base - 1e-12);
            prop_assert!(r(full(q, true, l, c, v)) >= base - 1e-12);
            prop_assert!(r(full(q, s, (l - dl).max(0.0), c, v)) >= base - 1e-12);
            prop_assert!(r(full(q, s, l, (c - dc).max(0.0), v)) >= base - 1e-12);
            prop_assert!(r(full(q, s, l, c, (v + dv).min(1.0))) >= base - 1e-12);
        }
    }
}
