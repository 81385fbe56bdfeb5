//! The catalog file: TOML text to validated [`Price`]s.
//!
//! Entries are read key by key from the TOML table rather than through a serde derive, so that
//! every problem, an unknown key included, is reported with the entry's number, its
//! `provider/model` and the field.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, NaiveTime, Timelike, Utc};
use serde::Deserialize;
use toml::{Table, Value};

use crate::{MAX_PRICE, Price, PricingError};

/// The keys a `[[price]]` entry may have.
pub(crate) const FIELDS: [&str; 13] = [
    "id",
    "provider",
    "model",
    "version",
    "effective_from",
    "input",
    "cached_input",
    "cache_write",
    "output",
    "reasoning",
    "request_fee",
    "source",
    "as_of",
];

/// The top level of the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    version: String,
    #[serde(default)]
    price: Vec<Table>,
}

/// Parses and validates a catalog: its version and its entries, in file order.
pub(crate) fn parse(text: &str) -> Result<(String, Vec<Price>), PricingError> {
    let raw: RawCatalog = toml::from_str(text).map_err(|e| PricingError::Syntax(e.to_string()))?;
    if raw.version.trim().is_empty() {
        return Err(PricingError::Version { reason: "must not be empty".into() });
    }

    let mut prices = Vec::with_capacity(raw.price.len());
    let mut first_of_key: HashMap<(String, String, Option<String>, DateTime<Utc>), usize> = HashMap::new();
    let mut first_of_id: HashMap<String, usize> = HashMap::new();
    for (position, table) in raw.price.iter().enumerate() {
        let index = position + 1;
        let price = parse_entry(index, table)?;
        let fail = |field: &str, reason: String| PricingError::Entry {
            index,
            label: label_of(table),
            field: field.into(),
            reason,
        };

        let key = (price.provider.clone(), price.model.clone(), price.version.clone(), price.effective_from);
        if let Some(first) = first_of_key.insert(key, index) {
            return Err(fail(
                "effective_from",
                format!("entry #{first} has the same provider, model, version and effective_from"),
            ));
        }
        if let Some(first) = first_of_id.insert(price.id.clone(), index) {
            return Err(fail("id", format!("price id {:?} is already used by entry #{first}", price.id)));
        }
        prices.push(price);
    }
    Ok((raw.version, prices))
}

/// One `[[price]]` table; `index` is its 1-based position.
fn parse_entry(index: usize, table: &Table) -> Result<Price, PricingError> {
    let fail = |field: &str, reason: String| PricingError::Entry {
        index,
        label: label_of(table),
        field: field.into(),
        reason,
    };
    let required = |field: &str| fail(field, "missing (required)".into());

    if let Some(unknown) = table.keys().find(|key| !FIELDS.contains(&key.as_str())) {
        return Err(fail(unknown, format!("unknown field; an entry has only {}", FIELDS.join(", "))));
    }

    let provider = name(table, "provider").map_err(|r| fail("provider", r))?.ok_or_else(|| required("provider"))?;
    let model = name(table, "model").map_err(|r| fail("model", r))?.ok_or_else(|| required("model"))?;
    let version = name(table, "version").map_err(|r| fail("version", r))?;

    let effective_from = text(table, "effective_from")
        .map_err(|r| fail("effective_from", r))?
        .ok_or_else(|| required("effective_from"))?;
    let effective_from = instant(&effective_from).map_err(|r| fail("effective_from", r))?;

    let price = |field: &str| amount(table, field).map_err(|r| fail(field, r));
    let input_per_mtok = price("input")?.ok_or_else(|| required("input"))?;
    let cached_input_per_mtok = price("cached_input")?;
    let cache_write_per_mtok = price("cache_write")?;
    let output_per_mtok = price("output")?.ok_or_else(|| required("output"))?;
    let reasoning_per_mtok = price("reasoning")?;
    let request_fee = price("request_fee")?;

    let source = text(table, "source").map_err(|r| fail("source", r))?.ok_or_else(|| required("source"))?;
    if source.trim().is_empty() {
        return Err(fail("source", "must not be empty".into()));
    }
    let as_of = text(table, "as_of").map_err(|r| fail("as_of", r))?.ok_or_else(|| required("as_of"))?;
    let as_of = NaiveDate::parse_from_str(&as_of, "%Y-%m-%d")
        .map_err(|_| fail("as_of", format!("expected a date YYYY-MM-DD, got {as_of:?}")))?;

    let id = match text(table, "id").map_err(|r| fail("id", r))? {
        Some(id) if id.trim().is_empty() => return Err(fail("id", "must not be empty".into())),
        Some(id) => id,
        None => derived_id(&provider, &model, version.as_deref(), effective_from),
    };

    Ok(Price {
        id,
        provider,
        model,
        version,
        effective_from,
        input_per_mtok,
        cached_input_per_mtok,
        cache_write_per_mtok,
        output_per_mtok,
        reasoning_per_mtok,
        request_fee,
        source,
        as_of,
    })
}

/// `<provider>/<model>[@<version>]:<effective_from>`, the date alone when it is midnight UTC.
fn derived_id(provider: &str, model: &str, version: Option<&str>, effective_from: DateTime<Utc>) -> String {
    let when = if effective_from.time() == NaiveTime::MIN {
        effective_from.format("%Y-%m-%d").to_string()
    } else if effective_from.nanosecond() == 0 {
        effective_from.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        effective_from.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    };
    match version {
        Some(version) => format!("{provider}/{model}@{version}:{when}"),
        None => format!("{provider}/{model}:{when}"),
    }
}

/// `provider/model[@version]` as written, for messages; `?` for what cannot be read.
fn label_of(table: &Table) -> String {
    let part = |key: &str| table.get(key).and_then(Value::as_str).unwrap_or("?").to_owned();
    let mut label = format!("{}/{}", part("provider"), part("model"));
    if let Some(version) = table.get("version").and_then(Value::as_str) {
        label.push('@');
        label.push_str(version);
    }
    label
}

/// A string field.
fn text(table: &Table, key: &str) -> Result<Option<String>, String> {
    match table.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        // Bare TOML dates (`as_of = 2026-11-27`) are accepted as well as quoted ones.
        Some(Value::Datetime(d)) if matches!(key, "effective_from" | "as_of") => Ok(Some(d.to_string())),
        Some(other) => Err(format!("expected a string, got a {}", other.type_str())),
    }
}

/// A name used for matching: non-empty, stored ASCII-lower-cased.
fn name(table: &Table, key: &str) -> Result<Option<String>, String> {
    match text(table, key)? {
        Some(s) if s.is_empty() => Err("must not be empty".into()),
        Some(s) if s.trim() != s => Err(format!("must not start or end with whitespace, got {s:?}")),
        other => Ok(other.map(|s| s.to_ascii_lowercase())),
    }
}

/// A price in USD: finite, non-negative, at most [`MAX_PRICE`].
fn amount(table: &Table, key: &str) -> Result<Option<f64>, String> {
    let value = match table.get(key) {
        None => return Ok(None),
        Some(Value::Float(f)) => *f,
        Some(Value::Integer(i)) => *i as f64,
        Some(other) => return Err(format!("expected a number of USD, got a {}", other.type_str())),
    };
    if !value.is_finite() {
        return Err(format!("must be a finite number, got {value}"));
    }
    if value < 0.0 {
        return Err(format!("must not be negative, got {value}"));
    }
    if value > MAX_PRICE {
        return Err(format!("must be at most {MAX_PRICE} USD, got {value}"));
    }
    Ok(Some(value.abs())) // abs: -0.0 becomes 0.0
}

/// `YYYY-MM-DD` (midnight UTC) or an RFC 3339 timestamp with an offset.
fn instant(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date.and_time(NaiveTime::MIN).and_utc());
    }
    DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).map_err(|_| {
        format!("expected a date YYYY-MM-DD (midnight UTC) or an RFC 3339 timestamp with an offset, got {text:?}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "version = \"test\"\n";

    /// A file with one valid entry, with `extra` lines added to it.
    fn one_entry(extra: &str) -> String {
        format!(
            "{HEADER}[[price]]\nprovider = \"OpenAI\"\nmodel = \"GPT-4o\"\neffective_from = \"2024-08-06\"\n\
             input = 2.5\noutput = 10\nsource = \"https://openai.com/api/pricing/\"\nas_of = \"2026-11-27\"\n{extra}"
        )
    }

    /// The same entry without the line that starts with `key =`.
    fn without(key: &str) -> String {
        one_entry("").lines().filter(|l| !l.starts_with(&format!("{key} ="))).collect::<Vec<_>>().join("\n")
    }

    fn entry_error(text: &str) -> (usize, String, String, String) {
        match parse(text) {
            Err(PricingError::Entry { index, label, field, reason }) => (index, label, field, reason),
            other => panic!("expected an entry error, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_entry_is_normalised() {
        let (version, prices) = parse(&one_entry("")).unwrap();
        assert_eq!(version, "test");
        let p = &prices[0];
        assert_eq!((p.provider.as_str(), p.model.as_str(), p.version.as_deref()), ("openai", "gpt-4o", None));
        assert_eq!(p.id, "openai/gpt-4o:2024-08-06");
        assert_eq!(p.effective_from.to_rfc3339(), "2024-08-06T00:00:00+00:00");
        assert_eq!((p.input_per_mtok, p.output_per_mtok), (2.5, 10.0)); // an integer is accepted
        assert_eq!(p.as_of, NaiveDate::from_ymd_opt(2026, 11, 27).unwrap());
    }

    #[test]
    fn ids_are_derived_or_taken_from_the_file() {
        let (_, prices) = parse(&one_entry("version = \"2024-05-13\"\n")).unwrap();
        assert_eq!(prices[0].id, "openai/gpt-4o@2024-05-13:2024-08-06");

        let text = one_entry("").replace("\"2024-08-06\"", "\"2024-08-06T12:30:00+02:00\"");
        let (_, prices) = parse(&text).unwrap();
        assert_eq!(prices[0].id, "openai/gpt-4o:2024-08-06T10:30:00Z");

        let (_, prices) = parse(&one_entry("id = \"my-price\"\n")).unwrap();
        assert_eq!(prices[0].id, "my-price");
    }

    #[test]
    fn bare_toml_dates_are_accepted() {
        let text = one_entry("").replace("\"2024-08-06\"", "2024-08-06").replace("\"2026-11-27\"", "2026-11-27");
        let (_, prices) = parse(&text).unwrap();
        assert_eq!(prices[0].id, "openai/gpt-4o:2024-08-06");
        assert_eq!(prices[0].as_of, NaiveDate::from_ymd_opt(2026, 11, 27).unwrap());
    }

    #[test]
    fn a_negative_price_names_entry_and_field() {
        let (index, label, field, reason) = entry_error(&one_entry("cached_input = -1.25\n"));
        assert_eq!((index, label.as_str(), field.as_str()), (1, "OpenAI/GPT-4o", "cached_input"));
        assert!(reason.contains("negative"), "{reason}");
    }

    #[test]
    fn non_finite_prices_are_rejected() {
        for (value, field) in [("nan", "output"), ("inf", "input"), ("-inf", "reasoning")] {
            let text = without(field) + &format!("\n{field} = {value}\n");
            let (index, _, got, reason) = entry_error(&text);
            assert_eq!((index, got.as_str()), (1, field), "{value}");
            assert!(reason.contains("finite"), "{reason}");
        }
    }

    #[test]
    fn absurd_prices_are_rejected() {
        let (_, _, field, reason) = entry_error(&one_entry("request_fee = 1e7\n"));
        assert_eq!(field, "request_fee");
        assert!(reason.contains("at most"), "{reason}");
    }

    #[test]
    fn a_missing_required_field_is_named() {
        for field in ["provider", "model", "effective_from", "input", "output", "source", "as_of"] {
            let (index, _, got, reason) = entry_error(&without(field));
            assert_eq!((index, got.as_str()), (1, field));
            assert!(reason.contains("missing"), "{reason}");
        }
    }

    #[test]
    fn an_unknown_field_is_named() {
        let (index, label, field, reason) = entry_error(&one_entry("outptu = 10\n"));
        assert_eq!((index, label.as_str(), field.as_str()), (1, "OpenAI/GPT-4o", "outptu"));
        assert!(reason.contains("unknown field"), "{reason}");
    }

    #[test]
    fn an_unknown_top_level_key_is_a_syntax_error() {
        let text = one_entry("").replace("version = \"test\"", "version = \"test\"\nverison = \"typo\"");
        match parse(&text) {
            Err(PricingError::Syntax(message)) => assert!(message.contains("verison"), "{message}"),
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn a_missing_or_empty_version_is_rejected() {
        let text = one_entry("").replace("version = \"test\"\n", "");
        assert!(matches!(parse(&text), Err(PricingError::Syntax(m)) if m.contains("version")));
        let text = one_entry("").replace("version = \"test\"", "version = \" \"");
        assert!(matches!(parse(&text), Err(PricingError::Version { .. })));
    }

    #[test]
    fn wrong_types_are_named() {
        let text = without("input") + "\ninput = \"2.5\"\n";
        let (_, _, field, reason) = entry_error(&text);
        assert_eq!(field, "input");
        assert!(reason.contains("expected a number"), "{reason}");

        let text = without("model") + "\nmodel = 4\n";
        let (_, label, field, _) = entry_error(&text);
        assert_eq!((label.as_str(), field.as_str()), ("OpenAI/?", "model"));
    }

    #[test]
    fn bad_dates_are_named() {
        let text = one_entry("").replace("\"2024-08-06\"", "\"06/08/2024\"");
        assert_eq!(entry_error(&text).2, "effective_from");
        let text = one_entry("").replace("\"2024-08-06\"", "\"2024-08-06T00:00:00\""); // no offset
        assert_eq!(entry_error(&text).2, "effective_from");
        let text = one_entry("").replace("\"2026-11-27\"", "\"yesterday\"");
        assert_eq!(entry_error(&text).2, "as_of");
    }

    #[test]
    fn duplicates_name_both_entries() {
        // Same key once the case is folded: the second entry is the duplicate.
        let second = one_entry("").replace(HEADER, "").replace("OpenAI", "openai");
        let (index, _, field, reason) = entry_error(&(one_entry("") + &second));
        assert_eq!((index, field.as_str()), (2, "effective_from"));
        assert!(reason.contains("#1"), "{reason}");

        // Different keys, same explicit id.
        let second = one_entry("id = \"x\"\n").replace(HEADER, "").replace("2024-08-06", "2025-01-01");
        let (index, _, field, reason) = entry_error(&(one_entry("id = \"x\"\n") + &second));
        assert_eq!((index, field.as_str()), (2, "id"));
        assert!(reason.contains("#1"), "{reason}");
    }

    #[test]
    fn names_must_be_usable() {
        assert_eq!(entry_error(&one_entry("version = \"\"\n")).2, "version");
        let text = one_entry("").replace("\"GPT-4o\"", "\"gpt-4o \"");
        assert_eq!(entry_error(&text).2, "model");
    }

    #[test]
    fn a_file_without_entries_is_an_empty_catalog() {
        let (version, prices) = parse(HEADER).unwrap();
        assert_eq!((version.as_str(), prices.len()), ("test", 0));
    }

    #[test]
    fn the_second_bad_entry_is_numbered_two() {
        let second = one_entry("").replace(HEADER, "").replace("2.5", "-2.5").replace("2024-08-06", "2025-01-01");
        let (index, _, field, _) = entry_error(&(one_entry("") + &second));
        assert_eq!((index, field.as_str()), (2, "input"));
    }
}
