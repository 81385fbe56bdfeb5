//! One catalog entry and the cost formula of the contract.

use chrono::{DateTime, NaiveDate, Utc};
use modelperf_schema::Tokens;
use serde::Serialize;

/// Prices are per million tokens.
const PER: f64 = 1_000_000.0;

/// One entry of the catalog: the list prices of a model on one billing API from a date on.
///
/// Prices are USD per million tokens (`request_fee`: USD per request). Entries that come from a
/// [`Catalog`](crate::Catalog) are validated: every price is finite, non-negative and at most
/// [`MAX_PRICE`](crate::MAX_PRICE), names are lower-case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Price {
    /// The price id written to events (`cost.price_id`); unique in its catalog. Unless the file
    /// sets one, `<provider>/<model>[@<version>]:<effective_from>`, e.g. `openai/gpt-4o:2024-08-06`.
    pub id: String,
    /// The billing API, lower-case (`openai`, `anthropic`, `vertex`, ...).
    pub provider: String,
    /// The model name as the provider spells it, lower-case.
    pub model: String,
    /// The pinned snapshot this price is specific to, lower-case; `None` for the model in general.
    pub version: Option<String>,
    /// From when this price applies (inclusive); it applies until the next entry of the same key.
    pub effective_from: DateTime<Utc>,
    /// Uncached prompt tokens.
    pub input_per_mtok: f64,
    /// Prompt tokens read from the provider's cache; `None`: billed at the input price.
    pub cached_input_per_mtok: Option<f64>,
    /// Prompt tokens written to the provider's cache; `None`: billed at the input price.
    pub cache_write_per_mtok: Option<f64>,
    /// Completion tokens (reasoning tokens included, unless `reasoning_per_mtok` is set).
    pub output_per_mtok: f64,
    /// Reasoning tokens, where the provider bills them apart from the other output tokens.
    pub reasoning_per_mtok: Option<f64>,
    /// A fixed fee per request, in USD.
    pub request_fee: Option<f64>,
    /// The public pricing page the figures come from.
    pub source: String,
    /// When the figures were last checked against `source`.
    pub as_of: NaiveDate,
}

impl Price {
    /// The cost in USD of one event with these token counts (the contract's formula):
    ///
    /// ```text
    ///   (input − cached_input − cache_write) × input price
    /// + cached_input × cached-input price      (the input price when the entry has none)
    /// + cache_write  × cache-write price       (the input price when the entry has none)
    /// + (output − reasoning) × output price + reasoning × reasoning price   (entry has one)
    /// | output × output price                                              (entry has none)
    /// + request fee
    /// ```
    ///
    /// Absent token counts are 0. Counts that contradict each other (cached and cache-write
    /// tokens above `input`, reasoning above `output`; event validation rejects both) do not
    /// produce negative amounts: the differences saturate at 0. For a validated entry the result
    /// is finite, non-negative and never decreases when any token count grows.
    pub fn usd(&self, tokens: &Tokens) -> f64 {
        let cached = tokens.cached_input.unwrap_or(0);
        let written = tokens.cache_write.unwrap_or(0);
        let uncached = tokens.input.saturating_sub(cached).saturating_sub(written);

        let mut usd = amount(uncached, self.input_per_mtok)
            + amount(cached, self.cached_input_per_mtok.unwrap_or(self.input_per_mtok))
            + amount(written, self.cache_write_per_mtok.unwrap_or(self.input_per_mtok));

        usd += match self.reasoning_per_mtok {
            Some(reasoning_price) => {
                let reasoning = tokens.reasoning.unwrap_or(0);
                amount(tokens.output.saturating_sub(reasoning), self.output_per_mtok)
                    + amount(reasoning, reasoning_price)
            }
            None => amount(tokens.output, self.output_per_mtok),
        };

        usd + self.request_fee.unwrap_or(0.0)
    }
}

/// USD for `tokens` at `per_mtok` USD per million tokens.
fn amount(tokens: u64, per_mtok: f64) -> f64 {
    // u64 -> f64 rounds above 2^53 tokens, far beyond any real request; rounding is monotone,
    // so the cost still never decreases as counts grow.
    tokens as f64 * per_mtok / PER
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::MAX_PRICE;

    fn price(input: f64, output: f64) -> Price {
        Price {
            id: "test/model:2025-01-01".into(),
            provider: "test".into(),
            model: "model".into(),
            version: None,
            effective_from: DateTime::from_timestamp(1_735_689_600, 0).unwrap_or_default(),
            input_per_mtok: input,
            cached_input_per_mtok: None,
            cache_write_per_mtok: None,
            output_per_mtok: output,
            reasoning_per_mtok: None,
            request_fee: None,
            source: "https://example.com/pricing".into(),
            as_of: NaiveDate::from_ymd_opt(2025, 1, 1).unwrap_or_default(),
        }
    }

    fn tokens(input: u64, output: u64) -> Tokens {
        Tokens { input, output, ..Tokens::default() }
    }

    fn assert_close(actual: f64, expected: f64) {
        assert!((actual - expected).abs() < 1e-12, "expected {expected}, got {actual}");
    }

    #[test]
    fn every_token_kind_has_its_price() {
        let mut p = price(2.0, 10.0);
        p.cached_input_per_mtok = Some(0.5);
        p.cache_write_per_mtok = Some(2.5);
        p.request_fee = Some(0.01);
        let t = Tokens {
            input: 1_000_000,
            output: 500_000,
            cached_input: Some(200_000),
            cache_write: Some(100_000),
            reasoning: Some(300_000),
        };
        // 700k uncached × 2 + 200k × 0.5 + 100k × 2.5 + 500k × 10 (reasoning included) + fee
        assert_close(p.usd(&t), 1.4 + 0.1 + 0.25 + 5.0 + 0.01);
    }

    #[test]
    fn a_reasoning_price_splits_the_output() {
        let mut p = price(1.0, 10.0);
        let t = Tokens { reasoning: Some(400), ..tokens(0, 1_000) };
        assert_close(p.usd(&t), 1_000.0 * 10.0 / 1e6);

        p.reasoning_per_mtok = Some(20.0);
        assert_close(p.usd(&t), (600.0 * 10.0 + 400.0 * 20.0) / 1e6);

        // No reasoning tokens reported: everything at the output price.
        assert_close(p.usd(&tokens(0, 1_000)), 1_000.0 * 10.0 / 1e6);
    }

    #[test]
    fn cache_tokens_fall_back_to_the_input_price() {
        let p = price(3.0, 15.0);
        let t = Tokens { cached_input: Some(400), cache_write: Some(100), ..tokens(1_000, 0) };
        assert_close(p.usd(&t), 1_000.0 * 3.0 / 1e6);
    }

    #[test]
    fn the_request_fee_is_charged_even_without_tokens() {
        let mut p = price(3.0, 15.0);
        p.request_fee = Some(0.025);
        assert_close(p.usd(&tokens(0, 0)), 0.025);
    }

    #[test]
    fn contradictory_counts_saturate_instead_of_going_negative() {
        let mut p = price(1.0, 1.0);
        p.cached_input_per_mtok = Some(0.1);
        p.reasoning_per_mtok = Some(2.0);
        let t = Tokens { cached_input: Some(5_000), reasoning: Some(3_000), ..tokens(1_000, 1_000) };
        // 0 uncached, 5000 cached × 0.1, 0 plain output, 3000 reasoning × 2
        assert_close(p.usd(&t), (5_000.0 * 0.1 + 3_000.0 * 2.0) / 1e6);
    }

    /// Prices as a validated catalog may hold them.
    fn any_price() -> impl Strategy<Value = Price> {
        let amount = 0.0..=MAX_PRICE;
        (
            amount.clone(),
            proptest::option::of(amount.clone()),
            proptest::option::of(amount.clone()),
            amount.clone(),
            proptest::option::of(amount.clone()),
            proptest::option::of(amount),
        )
            .prop_map(|(input, cached, write, output, reasoning, fee)| {
                let mut p = price(input, output);
                p.cached_input_per_mtok = cached;
                p.cache_write_per_mtok = write;
                p.reasoning_per_mtok = reasoning;
                p.request_fee = fee;
                p
            })
    }

    /// Token counts as validation lets them through: parts never exceed their totals.
    fn valid_tokens() -> impl Strategy<Value = Tokens> {
        (any::<u64>(), any::<u64>(), 0.0..=1.0f64, 0.0..=1.0f64, 0.0..=1.0f64).prop_map(
            |(input, output, cached_share, write_share, reasoning_share)| {
                let cached = (input as f64 * cached_share) as u64;
                let written = ((input - cached) as f64 * write_share) as u64;
                let reasoning = (output as f64 * reasoning_share) as u64;
                Tokens {
                    input,
                    output,
                    cached_input: Some(cached),
                    cache_write: Some(written.min(input - cached)),
                    reasoning: Some(reasoning.min(output)),
                }
            },
        )
    }

    proptest! {
        #[test]
        fn cost_is_finite_and_not_negative(p in any_price(), t in valid_tokens()) {
            let usd = p.usd(&t);
            prop_assert!(usd.is_finite(), "{usd}");
            prop_assert!(usd >= 0.0, "{usd}");
        }

        #[test]
        fn cost_is_finite_even_for_contradictory_counts(
            p in any_price(),
            input in any::<u64>(), output in any::<u64>(),
            cached in proptest::option::of(any::<u64>()),
            written in proptest::option::of(any::<u64>()),
            reasoning in proptest::option::of(any::<u64>()),
        ) {
            let t = Tokens { input, output, cached_input: cached, cache_write: written, reasoning };
            let usd = p.usd(&t);
            prop_assert!(usd.is_finite() && usd >= 0.0, "{usd}");
        }

        #[test]
        fn cost_never_decreases_with_more_output(p in any_price(), t in valid_tokens(), more in any::<u64>()) {
            let bigger = Tokens { output: t.output.saturating_add(more), ..t.clone() };
            let (before, after) = (p.usd(&t), p.usd(&bigger));
            prop_assert!(after >= before, "{before} -> {after} with {more} more output tokens");
        }

        #[test]
        fn cost_grows_with_output_when_output_has_a_price(
            input in 0u64..1_000_000_000, output in 0u64..1_000_000_000, more in 1u64..1_000_000_000,
        ) {
            // Realistic magnitudes, where one more token is far above the rounding step.
            let p = price(1.0, 10.0);
            prop_assert!(p.usd(&tokens(input, output + more)) > p.usd(&tokens(input, output)));
        }
    }
}
