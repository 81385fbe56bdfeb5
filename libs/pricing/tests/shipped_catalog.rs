//! The catalog shipped in `deploy/prices.toml` loads with this crate's loader and prices the
//! models operators expect.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeSet;
use std::path::Path;

use chrono::{DateTime, TimeZone, Utc};
use modelperf_pricing::Catalog;
use modelperf_schema::{CostStatus, ModelRef, Tokens};

fn shipped() -> Catalog {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prices.toml");
    Catalog::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap()
}

fn now() -> DateTime<Utc> {
    at(2026, 11, 27)
}

/// (input, cached input, cache write, output) of the entry in effect at `ts`.
fn price(provider: &str, model: &str, ts: DateTime<Utc>) -> (f64, Option<f64>, Option<f64>, f64) {
    let catalog = shipped();
    let p = catalog
        .lookup(&ModelRef::new(provider, model), ts)
        .unwrap_or_else(|| panic!("{provider}/{model} is not priced at {ts}"));
    (p.input_per_mtok, p.cached_input_per_mtok, p.cache_write_per_mtok, p.output_per_mtok)
}

#[test]
fn loads_with_a_version_and_a_useful_number_of_entries() {
    let catalog = shipped();
    assert!(!catalog.version().is_empty());
    assert!((25..=60).contains(&catalog.len()), "{} entries", catalog.len());
}

#[test]
fn covers_the_providers_the_platform_uses() {
    let catalog = shipped();
    let providers: BTreeSet<&str> = catalog.prices().iter().map(|p| p.provider.as_str()).collect();
    for expected in ["openai", "anthropic", "google", "vertex", "mistral", "together", "bedrock"] {
        assert!(providers.contains(expected), "{expected} missing from {providers:?}");
    }
}

#[test]
fn every_entry_is_sourced_and_plausible() {
    let catalog = shipped();
    let version_date = chrono::NaiveDate::parse_from_str(catalog.version(), "%Y-%m-%d").unwrap();
    for p in catalog.prices() {
        assert!(p.source.starts_with("https://"), "{}: source {}", p.id, p.source);
        assert!(p.as_of <= version_date, "{}: as_of {} after the catalog version", p.id, p.as_of);
        assert!(p.effective_from.date_naive() <= p.as_of, "{}: effective after it was checked", p.id);
        assert!(p.input_per_mtok > 0.0 && p.output_per_mtok > 0.0, "{}: free?", p.id);
        // A cache hit is a discount on the input price; a cache write is not cheaper than input.
        if let Some(cached) = p.cached_input_per_mtok {
            assert!(cached < p.input_per_mtok, "{}: cached {cached} >= input", p.id);
        }
        if let Some(written) = p.cache_write_per_mtok {
            assert!(written >= p.input_per_mtok, "{}: cache write {written} < input", p.id);
        }
    }
}

#[test]
fn prices_common_models_today() {
    assert_eq!(price("openai", "gpt-4o", now()), (2.50, Some(1.25), None, 10.00));
    assert_eq!(price("openai", "gpt-4o-mini", now()), (0.15, Some(0.075), None, 0.60));
    assert_eq!(price("anthropic", "claude-sonnet-4-5", now()), (3.00, Some(0.30), Some(3.75), 15.00));
    assert_eq!(price("anthropic", "claude-haiku-4-5", now()), (1.00, Some(0.10), Some(1.25), 5.00));
    assert_eq!(price("google", "gemini-2.5-pro", now()).0, 1.25);
    assert_eq!(price("vertex", "gemini-2.5-flash", now()), (0.30, None, None, 2.50));
    assert_eq!(price("mistral", "mistral-medium-2505", now()), (0.40, None, None, 2.00));
    // Together's names are mixed-case; matching ignores ASCII case.
    assert_eq!(price("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo", now()).3, 0.88);
}

#[test]
fn price_history_is_effective_dated() {
    assert_eq!(price("openai", "o3", at(2025, 5, 1)), (10.00, Some(2.50), None, 40.00));
    assert_eq!(price("openai", "o3", at(2025, 7, 1)), (2.00, Some(0.50), None, 8.00));
    assert!(shipped().lookup(&ModelRef::new("openai", "o3"), at(2025, 4, 1)).is_none());
    assert_eq!(price("anthropic", "claude-sonnet-5-5", at(2026, 10, 6)).1, Some(0.20));
    assert_eq!(price("anthropic", "claude-sonnet-5-5", at(2026, 10, 7)).1, Some(0.10));
}

#[test]
fn a_snapshot_price_beats_the_model_price() {
    let catalog = shipped();
    let first = ModelRef::new("openai", "gpt-4o").with_version("2024-05-13");
    let later = ModelRef::new("openai", "gpt-4o").with_version("2024-11-20");
    assert_eq!(catalog.lookup(&first, now()).unwrap().id, "openai/gpt-4o@2024-05-13:2024-05-13");
    assert_eq!(catalog.lookup(&later, now()).unwrap().id, "openai/gpt-4o:2024-08-06");
}

#[test]
fn costs_an_anthropic_call_with_prompt_caching() {
    let tokens = Tokens {
        input: 120_000,
        output: 3_000,
        cached_input: Some(100_000),
        cache_write: Some(10_000),
        reasoning: Some(1_000),
    };
    let cost = shipped().cost(Some(&ModelRef::new("anthropic", "claude-sonnet-4-5")), now(), Some(&tokens));
    let expected = (10_000.0 * 3.00 + 100_000.0 * 0.30 + 10_000.0 * 3.75 + 3_000.0 * 15.00) / 1e6;
    assert!((cost.usd.unwrap() - expected).abs() < 1e-12, "{cost:?} != {expected}");
    assert_eq!(cost.price_id.as_deref(), Some("anthropic/claude-sonnet-4-5:2025-09-29"));
}

#[test]
fn unknown_models_and_missing_tokens_are_flagged() {
    let catalog = shipped();
    let tokens = Tokens { input: 10, output: 10, ..Tokens::default() };
    let unknown = ModelRef::new("openai", "gpt-4o-latest-preview");
    let aliased = ModelRef::new("mistral", "mistral-large-latest");
    let known = ModelRef::new("google", "gemini-2.5-flash");
    for model in [&unknown, &aliased] {
        assert_eq!(catalog.cost(Some(model), now(), Some(&tokens)).status, Some(CostStatus::Unpriced), "{model:?}");
    }
    assert_eq!(catalog.cost(None, now(), Some(&tokens)).status, Some(CostStatus::Unpriced));
    // Missing tokens win over a missing price: the collector's rule.
    for model in [Some(&known), Some(&unknown), None] {
        assert_eq!(catalog.cost(model, now(), None).status, Some(CostStatus::UnknownTokens), "{model:?}");
    }
}
