//! The loaded catalog: effective-dated lookup and the cost of an event.

use std::cmp::Ordering;
use std::path::Path;

use chrono::{DateTime, Utc};
use modelperf_schema::{Cost, CostStatus, Data, Event, ModelRef, Tokens};

use crate::{Price, PricingError, format};

/// The entries of one `(provider, model, version)`, names lower-case.
#[derive(Debug, Clone)]
struct Series {
    provider: String,
    model: String,
    version: Option<String>,
    /// Positions in `prices`, sorted by `effective_from`.
    positions: Vec<usize>,
}

/// A validated price catalog, ready for lookups. Cheap to share behind an `Arc`; to change
/// prices, load a new one.
#[derive(Debug, Clone)]
pub struct Catalog {
    version: String,
    /// In file order.
    prices: Vec<Price>,
    /// Sorted by `(provider, model, version)`, so a lookup is a binary search that folds the
    /// case of the event's names byte by byte instead of allocating lower-cased copies.
    series: Vec<Series>,
}

impl Catalog {
    /// Reads and validates a catalog file. Errors name the file, and the entry and field.
    pub fn load(path: &Path) -> Result<Catalog, PricingError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| PricingError::Read { path: path.to_path_buf(), source })?;
        Catalog::from_toml_str(&text)
            .map_err(|source| PricingError::InFile { path: path.to_path_buf(), source: Box::new(source) })
    }

    /// Parses and validates a catalog from its TOML text (format: see the crate documentation).
    pub fn from_toml_str(text: &str) -> Result<Catalog, PricingError> {
        let (version, prices) = format::parse(text)?;
        // Grouped by key, each group by `effective_from`: one pass builds the series.
        let mut order: Vec<(usize, &Price)> = prices.iter().enumerate().collect();
        order.sort_by(|(_, a), (_, b)| series_key(a).cmp(&series_key(b)).then(a.effective_from.cmp(&b.effective_from)));
        let mut series: Vec<Series> = Vec::new();
        for (position, price) in order {
            match series.last_mut() {
                Some(last) if series_key_of(last) == series_key(price) => last.positions.push(position),
                _ => series.push(Series {
                    provider: price.provider.clone(),
                    model: price.model.clone(),
                    version: price.version.clone(),
                    positions: vec![position],
                }),
            }
        }
        Ok(Catalog { version, prices, series })
    }

    /// The catalog's own version string (the top-level `version` of the file).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.prices.len()
    }

    /// Whether the catalog has no entries (every event with tokens would be `unpriced`).
    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }

    /// Every entry, in file order.
    pub fn prices(&self) -> &[Price] {
        &self.prices
    }

    /// Entry for (provider, name, version) then (provider, name), effective-dated by ts.
    ///
    /// Names are compared exactly after ASCII lower-casing. When the model has a version, the
    /// entry for that version in effect at `ts` wins; when there is none (no such entry, or `ts`
    /// is before its first `effective_from`), the version-less entry in effect at `ts` is used.
    /// A model without a version only matches version-less entries. "In effect at `ts`" means the
    /// entry with the latest `effective_from <= ts`.
    pub fn lookup(&self, model: &ModelRef, ts: DateTime<Utc>) -> Option<&Price> {
        if let Some(version) = &model.version
            && let Some(price) = self.in_effect(&model.provider, &model.name, Some(version), ts)
        {
            return Some(price);
        }
        self.in_effect(&model.provider, &model.name, None, ts)
    }

    /// The contract's cost of an event, the same rule wherever an event is priced:
    /// 1. no `tokens` → `unknown_tokens`, whatever the model (known, unknown or absent);
    /// 2. tokens, but no `model` or no entry for it in effect at `ts` → `unpriced`;
    /// 3. else priced: [`Price::usd`] of the entry, with its id.
    ///
    /// A price is never a silent 0.
    pub fn cost(&self, model: Option<&ModelRef>, ts: DateTime<Utc>, tokens: Option<&Tokens>) -> Cost {
        let Some(tokens) = tokens else {
            return Cost::missing(CostStatus::UnknownTokens);
        };
        match model.and_then(|model| self.lookup(model, ts)) {
            Some(price) => Cost::priced(price.usd(tokens), price.id.clone()),
            None => Cost::missing(CostStatus::Unpriced),
        }
    }

    /// Prices an event the one way every stage does: a completion by its model, a judgment that
    /// reports tokens by the judge model (what the judging cost); other events carry no cost.
    /// Returns the cost set, if any.
    pub fn price_event<'e>(&self, event: &'e mut Event) -> Option<&'e Cost> {
        let model = match &event.data {
            Data::TaskCompleted(_) => event.model.as_ref(),
            Data::Judgment(j) if j.tokens.is_some() => Some(&j.judge_model),
            _ => return None,
        };
        let cost = self.cost(model, event.ts, event.data.tokens());
        event.cost = Some(cost);
        event.cost.as_ref()
    }

    /// The entry of `(provider, model, version)`, compared after ASCII lower-casing, with the
    /// latest `effective_from <= ts`.
    fn in_effect(&self, provider: &str, model: &str, version: Option<&str>, ts: DateTime<Utc>) -> Option<&Price> {
        let found = self
            .series
            .binary_search_by(|s| {
                folded_cmp(&s.provider, provider).then_with(|| folded_cmp(&s.model, model)).then_with(|| {
                    match (s.version.as_deref(), version) {
                        (Some(stored), Some(wanted)) => folded_cmp(stored, wanted),
                        (stored, wanted) => stored.is_some().cmp(&wanted.is_some()),
                    }
                })
            })
            .ok()?;
        let positions = &self.series.get(found)?.positions;
        let started =
            positions.partition_point(|&p| self.prices.get(p).is_some_and(|price| price.effective_from <= ts));
        let position = positions.get(started.checked_sub(1)?)?;
        self.prices.get(*position)
    }
}

/// What series are sorted and grouped by: `(provider, model, version)`.
fn series_key(price: &Price) -> (&str, &str, Option<&str>) {
    (&price.provider, &price.model, price.version.as_deref())
}

fn series_key_of(series: &Series) -> (&str, &str, Option<&str>) {
    (&series.provider, &series.model, series.version.as_deref())
}

/// `stored` (lower-case) against `wanted` ASCII-lower-cased, without allocating. Agrees with the
/// byte order the series are sorted in, since stored names are lower-case.
fn folded_cmp(stored: &str, wanted: &str) -> Ordering {
    stored.bytes().cmp(wanted.bytes().map(|b| b.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    const CATALOG: &str = r#"
version = "test-1"

[[price]]
provider = "openai"
model = "gpt-4o"
effective_from = "2024-08-06"
input = 2.50
cached_input = 1.25
output = 10.00
source = "https://openai.com/api/pricing/"
as_of = "2026-11-27"

[[price]]
provider = "openai"
model = "gpt-4o"
version = "2024-05-13"
effective_from = "2024-05-13"
input = 5.00
output = 15.00
source = "https://openai.com/api/pricing/"
as_of = "2026-11-27"

# Listed after the cheaper entry on purpose: the file order does not matter.
[[price]]
provider = "openai"
model = "o3"
effective_from = "2025-06-10"
input = 2.00
cached_input = 0.50
output = 8.00
source = "https://openai.com/api/pricing/"
as_of = "2026-11-27"

[[price]]
provider = "openai"
model = "o3"
effective_from = "2025-04-16"
input = 10.00
cached_input = 2.50
output = 40.00
source = "https://openai.com/api/pricing/"
as_of = "2026-11-27"

[[price]]
provider = "anthropic"
model = "claude-sonnet-4-5"
effective_from = "2025-09-29T17:00:00Z"
input = 3.00
cached_input = 0.30
cache_write = 3.75
output = 15.00
source = "https://platform.claude.com/docs/en/about-claude/pricing"
as_of = "2026-11-27"
"#;

    fn catalog() -> Catalog {
        Catalog::from_toml_str(CATALOG).unwrap()
    }

    fn at(y: i32, m: u32, d: u32, h: u32, min: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, s).unwrap()
    }

    fn now() -> DateTime<Utc> {
        at(2026, 11, 27, 12, 0, 0)
    }

    #[test]
    fn knows_its_size_and_version() {
        let c = catalog();
        assert_eq!((c.version(), c.len(), c.is_empty()), ("test-1", 5, false));
        assert_eq!(c.prices()[0].id, "openai/gpt-4o:2024-08-06");
        let empty = Catalog::from_toml_str("version = \"empty\"").unwrap();
        assert!(empty.is_empty());
        let tokens = Tokens { input: 1, output: 1, ..Tokens::default() };
        let gpt_4o = ModelRef::new("openai", "gpt-4o");
        assert_eq!(empty.cost(Some(&gpt_4o), now(), Some(&tokens)), Cost::missing(CostStatus::Unpriced));
    }

    #[test]
    fn a_version_falls_back_to_the_model() {
        let c = catalog();
        let pinned = ModelRef::new("openai", "gpt-4o").with_version("2024-05-13");
        assert_eq!(c.lookup(&pinned, now()).unwrap().id, "openai/gpt-4o@2024-05-13:2024-05-13");

        let other_snapshot = ModelRef::new("openai", "gpt-4o").with_version("2024-11-20");
        assert_eq!(c.lookup(&other_snapshot, now()).unwrap().id, "openai/gpt-4o:2024-08-06");

        let unpinned = ModelRef::new("openai", "gpt-4o");
        assert_eq!(c.lookup(&unpinned, now()).unwrap().id, "openai/gpt-4o:2024-08-06");
    }

    #[test]
    fn a_versioned_entry_not_yet_in_effect_falls_back_too() {
        let c = catalog();
        // Before the pinned entry starts, but after the general one: the general one.
        let text = CATALOG.replace("effective_from = \"2024-05-13\"", "effective_from = \"2025-01-01\"");
        let later = Catalog::from_toml_str(&text).unwrap();
        let pinned = ModelRef::new("openai", "gpt-4o").with_version("2024-05-13");
        assert_eq!(later.lookup(&pinned, at(2024, 12, 31, 0, 0, 0)).unwrap().input_per_mtok, 2.5);
        assert_eq!(later.lookup(&pinned, at(2025, 1, 1, 0, 0, 0)).unwrap().input_per_mtok, 5.0);
        // Before every entry of the model: nothing.
        assert!(c.lookup(&ModelRef::new("openai", "gpt-4o"), at(2024, 8, 5, 23, 59, 59)).is_none());
    }

    #[test]
    fn matching_ignores_ascii_case_only() {
        let c = catalog();
        let shouting = ModelRef::new("OpenAI", "GPT-4o").with_version("2024-05-13");
        assert_eq!(c.lookup(&shouting, now()).unwrap().input_per_mtok, 5.0);
        assert!(c.lookup(&ModelRef::new("openai", "gpt-4o-mini"), now()).is_none());
        assert!(c.lookup(&ModelRef::new("openai", " gpt-4o"), now()).is_none());
        assert!(c.lookup(&ModelRef::new("azure_openai", "gpt-4o"), now()).is_none());
    }

    proptest::proptest! {
        /// Any ASCII casing of an entry's names finds that entry, as the lower-cased names do.
        #[test]
        fn lookups_fold_ascii_case(entry in 0usize..5, flips in proptest::collection::vec(proptest::bool::ANY, 64)) {
            let c = catalog();
            let price = &c.prices()[entry];
            let mut flip = flips.iter().cycle();
            let mut shuffle = |s: &str| -> String {
                s.chars().map(|ch| if *flip.next().unwrap_or(&false) { ch.to_ascii_uppercase() } else { ch }).collect()
            };
            let mut model = ModelRef::new(shuffle(&price.provider), shuffle(&price.model));
            model.version = price.version.as_deref().map(&mut shuffle);
            let found = c.lookup(&model, price.effective_from).map(|p| &p.id);
            proptest::prop_assert_eq!(found, Some(&price.id));
        }
    }

    #[test]
    fn the_latest_entry_in_effect_wins_at_the_boundaries() {
        let c = catalog();
        let o3 = ModelRef::new("openai", "o3");
        let input_at = |ts| c.lookup(&o3, ts).map(|p| p.input_per_mtok);
        assert_eq!(input_at(at(2025, 4, 15, 23, 59, 59)), None);
        assert_eq!(input_at(at(2025, 4, 16, 0, 0, 0)), Some(10.0));
        assert_eq!(input_at(at(2025, 6, 9, 23, 59, 59)), Some(10.0));
        assert_eq!(input_at(at(2025, 6, 10, 0, 0, 0)), Some(2.0));
        assert_eq!(input_at(at(2030, 1, 1, 0, 0, 0)), Some(2.0));

        // Sub-second precision at a timestamped boundary.
        let sonnet = ModelRef::new("anthropic", "claude-sonnet-4-5");
        let boundary = at(2025, 9, 29, 17, 0, 0);
        assert!(c.lookup(&sonnet, boundary - chrono::Duration::nanoseconds(1)).is_none());
        assert_eq!(c.lookup(&sonnet, boundary).unwrap().id, "anthropic/claude-sonnet-4-5:2025-09-29T17:00:00Z");
    }

    #[test]
    fn unpriced_and_unknown_tokens_are_told_apart() {
        let c = catalog();
        let tokens = Tokens { input: 1_000, output: 100, ..Tokens::default() };
        let unknown = ModelRef::new("openai", "gpt-unknown");
        let known = ModelRef::new("openai", "gpt-4o");

        // No tokens: unknown_tokens, whatever the model.
        for model in [Some(&known), Some(&unknown), None] {
            assert_eq!(c.cost(model, now(), None), Cost::missing(CostStatus::UnknownTokens), "{model:?}");
        }
        // Before the model's first price, without tokens: still unknown_tokens.
        assert_eq!(c.cost(Some(&known), at(2024, 1, 1, 0, 0, 0), None), Cost::missing(CostStatus::UnknownTokens));

        // Tokens, but no model or no entry: unpriced.
        assert_eq!(c.cost(None, now(), Some(&tokens)), Cost::missing(CostStatus::Unpriced));
        assert_eq!(c.cost(Some(&unknown), now(), Some(&tokens)), Cost::missing(CostStatus::Unpriced));
        // Known model, but the event predates its first price.
        let early = at(2024, 1, 1, 0, 0, 0);
        assert_eq!(c.cost(Some(&known), early, Some(&tokens)), Cost::missing(CostStatus::Unpriced));

        // Tokens and an entry: priced.
        let cost = c.cost(Some(&known), now(), Some(&tokens));
        assert_eq!(cost.status, None);
        assert_eq!(cost.price_id.as_deref(), Some("openai/gpt-4o:2024-08-06"));
        let usd = cost.usd.unwrap();
        assert!((usd - (1_000.0 * 2.5 + 100.0 * 10.0) / 1e6).abs() < 1e-12, "{usd}");
    }

    #[test]
    fn lookups_need_every_part_of_the_key() {
        let c = catalog();
        // Series sort next to each other; a lookup must land on exactly its own.
        let o3_pinned = ModelRef::new("openai", "o3").with_version("2025-04-16");
        assert_eq!(c.lookup(&o3_pinned, now()).unwrap().id, "openai/o3:2025-06-10");
        let pinned_only = ModelRef::new("OPENAI", "GPT-4O").with_version("2024-05-13");
        assert_eq!(c.lookup(&pinned_only, at(2024, 6, 1, 0, 0, 0)).unwrap().id, "openai/gpt-4o@2024-05-13:2024-05-13");
        for (provider, name) in [("anthropic", "gpt-4o"), ("openai", "claude-sonnet-4-5"), ("", ""), ("openai", "o")] {
            assert!(c.lookup(&ModelRef::new(provider, name), now()).is_none(), "{provider}/{name}");
        }
        // Non-ASCII letters are not folded.
        assert!(c.lookup(&ModelRef::new("openaİ", "gpt-4o"), now()).is_none());
    }

    #[test]
    fn cost_uses_the_price_in_effect_at_the_event() {
        let c = catalog();
        let o3 = ModelRef::new("openai", "o3");
        let tokens = Tokens { input: 1_000_000, output: 1_000_000, cached_input: Some(500_000), ..Tokens::default() };
        let before = c.cost(Some(&o3), at(2025, 5, 1, 0, 0, 0), Some(&tokens));
        let after = c.cost(Some(&o3), at(2025, 7, 1, 0, 0, 0), Some(&tokens));
        assert_eq!(before.usd, Some(0.5 * 10.0 + 0.5 * 2.5 + 40.0));
        assert_eq!(after.usd, Some(0.5 * 2.0 + 0.5 * 0.5 + 8.0));
        assert_eq!(after.price_id.as_deref(), Some("openai/o3:2025-06-10"));
    }

    #[test]
    fn anthropic_cache_reads_and_writes_have_their_own_prices() {
        let c = catalog();
        let sonnet = ModelRef::new("anthropic", "claude-sonnet-4-5");
        let tokens = Tokens {
            input: 100_000,
            output: 2_000,
            cached_input: Some(80_000),
            cache_write: Some(15_000),
            reasoning: Some(1_000),
        };
        let usd = c.cost(Some(&sonnet), now(), Some(&tokens)).usd.unwrap();
        let expected = (5_000.0 * 3.0 + 80_000.0 * 0.30 + 15_000.0 * 3.75 + 2_000.0 * 15.0) / 1e6;
        assert!((usd - expected).abs() < 1e-12, "{usd} != {expected}");
    }

    #[test]
    fn load_names_the_file() {
        let missing = Path::new("/nonexistent/modelperf/prices.toml");
        let err = Catalog::load(missing).unwrap_err();
        assert!(matches!(err, PricingError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/modelperf/prices.toml"), "{err}");

        let path = std::env::temp_dir().join(format!("modelperf-pricing-{}-bad.toml", std::process::id()));
        std::fs::write(&path, CATALOG.replace("output = 8.00", "output = -8.00")).unwrap();
        let err = Catalog::load(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert_eq!((err.entry(), err.field()), (Some(3), Some("output")));
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("entry #3 (openai/o3)"), "{message}");
    }

    #[test]
    fn load_reads_a_good_file() {
        let path = std::env::temp_dir().join(format!("modelperf-pricing-{}-good.toml", std::process::id()));
        std::fs::write(&path, CATALOG).unwrap();
        let loaded = Catalog::load(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(loaded.unwrap().len(), 5);
    }
}
