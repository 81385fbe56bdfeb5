//! `modelperf-pricing` owns the price catalog: the list prices of models per billing API, the
//! TOML file they live in (`deploy/prices.toml`, `MODELPERF_COLLECTOR__PRICES_FILE`), its
//! validation, the effective-dated lookup, and the contract's cost of an event. The collector
//! puts [`Catalog::cost`] on every `task_completed` and every `judgment` with tokens; the
//! aggregator's `reaggregate --reprice` calls the same function with an updated catalog.
//!
//! Layout:
//! - [`catalog`]: [`Catalog`], loading, [`Catalog::lookup`] and [`Catalog::cost`];
//! - [`price`]: [`Price`], one entry, and the formula [`Price::usd`];
//! - `format`: the TOML file to validated entries;
//! - [`error`]: what goes wrong loading a catalog, [`PricingError`].
//!
//! # The file
//!
//! ```toml
//! version = "2026-11-27"            # the catalog's own version, free text
//!
//! [[price]]
//! provider = "openai"               # the billing API, as in the event's `model.provider`
//! model = "gpt-4o"                  # as in `model.name`
//! # version = "2024-05-13"          # optional: a price specific to one snapshot (`model.version`)
//! effective_from = "2024-08-06"     # "YYYY-MM-DD" (00:00 UTC) or RFC 3339 with an offset
//! input = 2.50                      # USD per million uncached prompt tokens
//! cached_input = 1.25               # optional: prompt tokens read from the provider's cache
//! # cache_write = 3.75              # optional: prompt tokens written to the provider's cache
//! output = 10.00                    # completion tokens
//! # reasoning = 12.00               # optional: reasoning tokens, when billed apart from output
//! # request_fee = 0.01              # optional: USD per request
//! source = "https://openai.com/api/pricing/"
//! as_of = "2026-11-27"              # when the figures were checked against `source`
//! # id = "custom-id"                # optional; default "<provider>/<model>[@<version>]:<effective_from>"
//! ```
//!
//! Token prices are USD per million tokens; numbers may be written as integers or floats, dates
//! quoted or as bare TOML dates. Every price must be finite, non-negative and at most
//! [`MAX_PRICE`]. `provider`, `model`, `effective_from`, `input`, `output`, `source` and `as_of`
//! are required. Unknown keys are errors, so a typo (`outptu`) cannot silently drop a price. Two
//! entries with the same (provider, model, version, effective_from), or the same id, are errors.
//! Errors name the file, the entry (its 1-based position among the `[[price]]` tables, and
//! `provider/model`) and the field.
//!
//! # Matching
//!
//! `provider`, `model` and `version` are compared exactly after ASCII lower-casing (the catalog
//! stores them lower-cased and folds the event's names as it compares, without allocating);
//! nothing else is normalised: no trimming, no alias resolution (`*-latest`), no stripping of
//! snapshot suffixes (`gpt-4o-2024-08-06` is a different name from `gpt-4o`). An event's model is priced by the entry for (provider, name, version) in effect at
//! its `ts`, else by the version-less entry for (provider, name) in effect at its `ts`.
//!
//! # Effective dating
//!
//! A price change is a new entry with a later `effective_from`; old entries stay, so repricing
//! history gives the same result. The entry in effect at `ts` is the one with the latest
//! `effective_from <= ts`; before the first entry of a model, its events with tokens are
//! `unpriced`.
//!
//! # Cost
//!
//! See [`Price::usd`]: uncached input, cached input, cache writes, output (with reasoning split
//! off when the entry has a reasoning price) and the per-request fee. Cached and cache-write
//! tokens of an entry without those prices are billed at the input price (what the provider
//! charges when it has no cache discount). [`Catalog::cost`] applies one precedence, the same
//! wherever an event is priced (collector, `reaggregate --reprice`):
//! 1. no tokens → `cost.status = "unknown_tokens"`, even for a model that is absent or not in
//!    the catalog (the price could not be computed either way; the tokens are what is missing);
//! 2. tokens, but no model or no entry in effect at `ts` → `"unpriced"`;
//! 3. else the cost in USD and the entry's `price_id`.
//!
//! Never a silent 0.
//!
//! Not modelled (the catalog holds one standard-tier price per token kind): long-context tiers
//! (e.g. a higher rate above 200k prompt tokens), batch/flex/priority discounts, regional or
//! data-residency premiums, 1-hour cache writes (priced as `cache_write`, the 5-minute rate),
//! cache storage, tool and search fees.

pub mod catalog;
pub mod error;
mod format;
pub mod price;

pub use catalog::Catalog;
pub use error::PricingError;
pub use price::Price;

/// The largest price a catalog accepts, in USD (per million tokens, or per request): 1 USD per
/// token. Far above any real list price, it catches unit mistakes and keeps every cost finite.
pub const MAX_PRICE: f64 = 1_000_000.0;
