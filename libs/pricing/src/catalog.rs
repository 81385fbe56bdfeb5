//! The loaded catalog: effective-dated lookup and the cost of an event.

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use modelperf_schema::{Cost, CostStatus, ModelRef, Tokens};

use crate::{Price, PricingError, format};

/// `(provider, model, version)`, lower-case.
type Key = (String, String, Option<String>);

/// A validated price catalog, ready for lookups. Cheap to share behind an `Arc`; to change
/// prices, load a new one.
#[derive(Debug, Clone)]
pub struct Catalog {
    version: String,
    /// In file order.
    prices: Vec<Price>,
    /// Positions in `prices` per key, sorted by `effective_from`.
    by_key: HashMap<Key, Vec<usize>>,
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
        let mut by_key: HashMap<Key, Vec<usize>> = HashMap::new();
        for (position, price) in prices.iter().enumerate() {
            let key = (price.provider.clone(), price.model.clone(), price.version.clone());
            by_key.entry(key).or_default().push(position);
        }
        for positions in by_key.values_mut() {
            positions.sort_by_key(|&position| prices.get(position).map(|p| p.effective_from));
        }
        Ok(Catalog { version, prices, by_key })
    }

    /// The catalog's own version string (the top-level `version` of the file).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.prices.len()
    }

    /// Whether the catalog has no entries (every event would be `unpriced`).
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
        let provider = model.provider.to_ascii_lowercase();
        let name = model.name.to_ascii_lowercase();
        if let Some(version) = &model.version {
            let key = (provider.clone(), name.clone(), Some(version.to_ascii_lowercase()));
            if let Some(price) = self.in_effect(&key, ts) {
                return Some(price);
            }
        }
        self.in_effect(&(provider, name, None), ts)
    }

    /// The contract's cost: no catalog entry → Cost::missing(Unpriced); entry but tokens None →
    /// Cost::missing(UnknownTokens); else Cost::priced(usd, price_id).
    ///
    /// A model without an entry is `unpriced` whether or not the event has tokens; a price is
    /// never a silent 0.
    pub fn cost(&self, model: &ModelRef, ts: DateTime<Utc>, tokens: Option<&Tokens>) -> Cost {
        let Some(price) = self.lookup(model, ts) else {
            return Cost::missing(CostStatus::Unpriced);
        };
        match tokens {
            Some(tokens) => Cost::priced(price.usd(tokens), price.id.clone()),
            None => Cost::missing(CostStatus::UnknownTokens),
        }
    }

    /// The entry of `key` with the latest `effective_from <= ts`.
    fn in_effect(&self, key: &Key, ts: DateTime<Utc>) -> Option<&Price> {
        let positions = self.by_key.get(key)?;
        let started =
            positions.partition_point(|&p| self.prices.get(p).is_some_and(|price| price.effective_from <= ts));
        let position = positions.get(started.checked_sub(1)?)?;
        self.prices.get(*position)
    }
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
        assert_eq!(empty.cost(&ModelRef::new("openai", "gpt-4o"), now(), None), Cost::missing(CostStatus::Unpriced));
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

        assert_eq!(c.cost(&unknown, now(), Some(&tokens)), Cost::missing(CostStatus::Unpriced));
        assert_eq!(c.cost(&unknown, now(), None), Cost::missing(CostStatus::Unpriced));
        assert_eq!(c.cost(&known, now(), None), Cost::missing(CostStatus::UnknownTokens));
        // Known model, but the event predates its first price.
        assert_eq!(c.cost(&known, at(2024, 1, 1, 0, 0, 0), Some(&tokens)), Cost::missing(CostStatus::Unpriced));

        let cost = c.cost(&known, now(), Some(&tokens));
        assert_eq!(cost.status, None);
        assert_eq!(cost.price_id.as_deref(), Some("openai/gpt-4o:2024-08-06"));
        let usd = cost.usd.unwrap();
        assert!((usd - (1_000.0 * 2.5 + 100.0 * 10.0) / 1e6).abs() < 1e-12, "{usd}");
    }

    #[test]
    fn cost_uses_the_price_in_effect_at_the_event() {
        let c = catalog();
        let o3 = ModelRef::new("openai", "o3");
        let tokens = Tokens { input: 1_000_000, output: 1_000_000, cached_input: Some(500_000), ..Tokens::default() };
        let before = c.cost(&o3, at(2025, 5, 1, 0, 0, 0), Some(&tokens));
        let after = c.cost(&o3, at(2025, 7, 1, 0, 0, 0), Some(&tokens));
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
        let usd = c.cost(&sonnet, now(), Some(&tokens)).usd.unwrap();
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
