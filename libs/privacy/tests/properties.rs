//! `scrub` by property. Recall: generated e-mail addresses, phone numbers, IP addresses,
//! Luhn-valid card numbers and keys, embedded in ordinary words and punctuation, never survive,
//! and the words around them do. Precision: generated UUIDs, hashes, versions, timestamps and
//! numbers pass unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::net::Ipv6Addr;

use modelperf_privacy::scrub;
use proptest::prelude::*;
use proptest::sample::select;

/// Words placed right before a dotted quad decide it is a version (documented), so the
/// surrounding words never are one of them.
const VERSION_WORDS: [&str; 4] = ["v", "ver", "version", "release"];

fn words() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-z]{1,8}".prop_filter("version words", |w| !VERSION_WORDS.contains(&w.as_str())), 0..5)
        .prop_map(|w| w.join(" "))
}

/// Punctuation right around the secret.
fn open() -> impl Strategy<Value = &'static str> {
    select(vec!["", "(", "<", "\"", "'", "=", ": "])
}

fn close() -> impl Strategy<Value = &'static str> {
    select(vec!["", ")", ">", "\"", "'", ",", ".", ";", ":"])
}

/// A secret between words and punctuation.
#[derive(Debug, Clone)]
struct Embedded {
    before: String,
    secret: String,
    after: String,
}

impl Embedded {
    fn text(&self) -> String {
        format!("{}{}{}", self.before, self.secret, self.after)
    }
}

fn embedded(secret: impl Strategy<Value = String>) -> impl Strategy<Value = Embedded> {
    (words(), open(), secret, close(), words()).prop_map(|(before, open, secret, close, after)| Embedded {
        before: format!("{before} {open}"),
        secret,
        after: format!("{close} {after}"),
    })
}

/// The secret is gone, replaced by `tag`, and the surrounding text is intact.
fn assert_scrubbed(e: &Embedded, tag: &str) -> Result<(), TestCaseError> {
    let text = e.text();
    let out = scrub(&text);
    prop_assert!(!out.contains(&e.secret), "{:?} survived in {:?}", e.secret, out);
    prop_assert!(out.contains(tag), "no {} in {:?}", tag, out);
    prop_assert!(out.starts_with(&e.before), "prefix {:?} damaged: {:?}", e.before, out);
    prop_assert!(out.ends_with(&e.after), "suffix {:?} damaged: {:?}", e.after, out);
    Ok(())
}

fn email() -> impl Strategy<Value = String> {
    ("[a-z0-9][a-z0-9._+-]{0,15}", prop::collection::vec("[a-z][a-z0-9-]{0,9}[a-z0-9]", 1..=3), "[a-z]{2,6}")
        .prop_map(|(local, labels, tld)| format!("{local}@{}.{tld}", labels.join(".")))
}

fn international_phone() -> impl Strategy<Value = String> {
    (
        "[1-9][0-9]{0,2}",
        prop::collection::vec(0u8..=9, 15),
        0usize..=7,
        prop::collection::vec(2usize..=4, 15),
        select(vec![" ", "-", "."]),
        any::<bool>(),
    )
        .prop_map(|(cc, digits, extra, chunks, sep, paren)| {
            // 8–15 digits in all.
            let national = (8 - cc.len() + extra).min(15 - cc.len());
            let digits: String = digits[..national].iter().map(|d| char::from(b'0' + d)).collect();
            let mut groups = Vec::new();
            let mut rest = digits.as_str();
            for size in chunks {
                if rest.is_empty() {
                    break;
                }
                let (group, tail) = rest.split_at(size.min(rest.len()));
                groups.push(group.to_owned());
                rest = tail;
            }
            if paren && groups.len() > 1 {
                groups[0] = format!("({})", groups[0]);
            }
            format!("+{cc}{sep}{}", groups.join(sep))
        })
}

fn north_american_phone() -> impl Strategy<Value = String> {
    ("[0-9]{3}", "[0-9]{3}", "[0-9]{4}", 0usize..7).prop_map(|(a, e, l, format)| match format {
        0 => format!("({a}) {e}-{l}"),
        1 => format!("{a}-{e}-{l}"),
        2 => format!("{a}.{e}.{l}"),
        3 => format!("1-{a}-{e}-{l}"),
        4 => format!("+1-{a}-{e}-{l}"),
        5 => format!("+1 ({a}) {e}-{l}"),
        _ => format!("({a}){e}-{l}"),
    })
}

fn ipv4() -> impl Strategy<Value = String> {
    any::<[u8; 4]>().prop_map(|[a, b, c, d]| format!("{a}.{b}.{c}.{d}"))
}

fn ipv6() -> impl Strategy<Value = String> {
    let compressed =
        (prop_oneof![0x2000u16..=0x3fff, Just(0xfe80)], any::<[u16; 7]>(), any::<[bool; 7]>(), any::<bool>()).prop_map(
            |(first, rest, zero, upper)| {
                let mut segments = [first; 8];
                for (i, (&value, &zero)) in rest.iter().zip(&zero).enumerate() {
                    segments[i + 1] = if zero { 0 } else { value };
                }
                let text = Ipv6Addr::from(segments).to_string();
                if upper { text.to_uppercase() } else { text }
            },
        );
    let full = (any::<[u16; 8]>(), any::<bool>()).prop_map(|(segments, padded)| {
        let groups: Vec<String> =
            segments.iter().map(|s| if padded { format!("{s:04x}") } else { format!("{s:x}") }).collect();
        groups.join(":")
    });
    let mapped = any::<[u8; 4]>().prop_map(|[a, b, c, d]| format!("::ffff:{a}.{b}.{c}.{d}"));
    prop_oneof![compressed, full, mapped]
}

/// The Luhn check digit that completes `payload`.
fn check_digit(payload: &[u8]) -> u8 {
    let sum: u32 = payload
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 0 {
                let twice = d * 2;
                if twice > 9 { twice - 9 } else { twice }
            } else {
                d
            }
        })
        .sum();
    u8::try_from((10 - sum % 10) % 10).unwrap()
}

/// A Luhn-valid number of 13–19 digits, ungrouped (leading 2–9) or grouped like cards are
/// printed (4, then 3–6 each, the last 1–6; leading 1–9), with spaces or dashes.
fn card() -> impl Strategy<Value = String> {
    (
        13usize..=19,
        1u8..=9,
        prop::collection::vec(0u8..=9, 18),
        any::<bool>(),
        prop::collection::vec(3usize..=6, 4),
        select(vec![' ', '-']),
    )
        .prop_map(|(len, lead, body, grouped, sizes, sep)| {
            let lead = if grouped { lead } else { lead.max(2) };
            let mut digits = vec![lead];
            digits.extend_from_slice(&body[..len - 2]);
            digits.push(check_digit(&digits));
            let text: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
            if !grouped {
                return text;
            }
            let mut cuts = vec![4];
            let mut remaining = len - 4;
            for size in sizes {
                if remaining <= 6 {
                    break;
                }
                cuts.push(size);
                remaining -= size;
            }
            cuts.push(remaining);
            let mut groups = Vec::new();
            let mut rest = text.as_str();
            for cut in cuts {
                let (group, tail) = rest.split_at(cut);
                groups.push(group);
                rest = tail;
            }
            groups.join(&sep.to_string())
        })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        "sk-[A-Za-z0-9]{16,48}",
        "sk-proj-[A-Za-z0-9_-]{20,64}[A-Za-z0-9]",
        "sk-ant-api03-[A-Za-z0-9_-]{20,90}[A-Za-z0-9]",
        "(sk|pk|rk)_(live|test)_[A-Za-z0-9]{10,40}",
        "(AKIA|ASIA)[A-Z0-9]{16}",
        "gh[posur]_[A-Za-z0-9]{36}",
        "github_pat_[A-Za-z0-9_]{22,82}",
        "xox[bp]-[0-9]{10,13}-[0-9]{10,13}-[A-Za-z0-9]{24}",
        "glpat-[A-Za-z0-9_-]{19}[A-Za-z0-9]",
        "AIza[A-Za-z0-9_-]{34}[A-Za-z0-9]",
        "eyJ[A-Za-z0-9_-]{10,40}\\.eyJ[A-Za-z0-9_-]{10,80}\\.[A-Za-z0-9_-]{10,43}",
    ]
}

fn bearer() -> impl Strategy<Value = (String, String)> {
    (select(vec!["Bearer ", "bearer ", "Authorization: Bearer ", "authorization=Bearer "]), "[A-Za-z0-9_~+/-]{24,64}")
        .prop_map(|(scheme, token)| (scheme.to_owned(), token))
}

fn uuid() -> impl Strategy<Value = String> {
    (any::<[u8; 16]>(), any::<bool>()).prop_map(|(b, upper)| {
        let hex: String = b.iter().map(|b| format!("{b:02x}")).collect();
        let text = format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]);
        if upper { text.to_uppercase() } else { text }
    })
}

/// Short and full git SHAs, SHA-256.
fn hash() -> impl Strategy<Value = String> {
    prop_oneof!["[0-9a-f]{7}", "[0-9a-f]{8}", "[0-9a-f]{12}", "[0-9a-f]{40}", "[0-9a-f]{64}", "sha256:[0-9a-f]{64}"]
}

fn version() -> impl Strategy<Value = String> {
    (0u32..100, 0u32..100, 0u32..1000, 0u32..10_000, 0usize..5).prop_map(|(a, b, c, d, form)| match form {
        0 => format!("{a}.{b}.{c}"),
        1 => format!("v{a}.{b}.{c}"),
        2 => format!("v{a}.{b}.{c}.{d}"),
        3 => format!("version {a}.{b}.{c}.{d}"),
        _ => format!("{a}.{b}.{c}-rc.{d}"),
    })
}

fn timestamp() -> impl Strategy<Value = String> {
    use chrono::{DateTime, FixedOffset, SecondsFormat};
    (0i64..4_102_444_800, 0u32..1_000_000_000, -50_400i32..=50_400, 0usize..6).prop_map(
        |(secs, nanos, offset, form)| {
            let utc = DateTime::from_timestamp(secs, nanos).unwrap();
            let local = utc.with_timezone(&FixedOffset::east_opt(offset / 900 * 900).unwrap());
            match form {
                0 => utc.to_rfc3339_opts(SecondsFormat::Millis, true),
                1 => utc.to_rfc3339_opts(SecondsFormat::Nanos, true),
                2 => local.to_rfc3339_opts(SecondsFormat::Secs, false),
                3 => local.to_rfc3339_opts(SecondsFormat::Micros, false),
                4 => utc.format("%Y-%m-%d").to_string(),
                _ => utc.format("%H:%M:%S").to_string(),
            }
        },
    )
}

fn ordinary_number() -> impl Strategy<Value = String> {
    (any::<u32>(), 0usize..4).prop_map(|(n, form)| match form {
        0 => format!("order {n}"),
        1 => format!("took {} ms", n % 100_000),
        2 => format!("HTTP {}", 100 + n % 500),
        _ => format!("{}.{}s", n % 1000, n % 10),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn ordinary_tokens_pass_unchanged(
        before in words(),
        token in prop_oneof![uuid(), hash(), version(), timestamp(), ordinary_number()],
        close in close(),
        after in words(),
    ) {
        let text = format!("{before} {token}{close} {after}");
        prop_assert!(matches!(scrub(&text), std::borrow::Cow::Borrowed(_)), "changed: {:?} -> {:?}", text, scrub(&text));
    }

    #[test]
    fn emails_are_removed(e in embedded(email())) {
        assert_scrubbed(&e, "[email]")?;
    }

    #[test]
    fn international_phones_are_removed(e in embedded(international_phone())) {
        assert_scrubbed(&e, "[phone]")?;
    }

    #[test]
    fn north_american_phones_are_removed(e in embedded(north_american_phone())) {
        assert_scrubbed(&e, "[phone]")?;
    }

    #[test]
    fn ipv4_addresses_are_removed(e in embedded(ipv4())) {
        assert_scrubbed(&e, "[ip]")?;
    }

    #[test]
    fn ipv6_addresses_are_removed(e in embedded(ipv6())) {
        assert_scrubbed(&e, "[ip]")?;
    }

    #[test]
    fn luhn_valid_cards_are_removed(e in embedded(card())) {
        assert_scrubbed(&e, "[card]")?;
    }

    #[test]
    fn keys_are_removed(e in embedded(key())) {
        assert_scrubbed(&e, "[secret]")?;
    }

    #[test]
    fn bearer_tokens_are_removed((scheme, token) in bearer(), before in words(), after in words()) {
        let text = format!("{before} {scheme}{token} {after}");
        let out = scrub(&text);
        prop_assert!(!out.contains(&token), "{:?} survived in {:?}", token, out);
        let expected = format!("{before} {scheme}[secret] {after}");
        prop_assert_eq!(out, expected);
    }

    #[test]
    fn ordinary_words_pass_borrowed(text in prop::collection::vec("[A-Za-z]{1,12}", 0..20)) {
        let text = text.join(" ");
        prop_assert!(matches!(scrub(&text), std::borrow::Cow::Borrowed(_)));
    }
}
