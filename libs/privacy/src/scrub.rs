//! Scrubbing of personal data from free text.
//!
//! [`scrub`] replaces each finding with a tag naming what was there:
//!
//! | tag | what |
//! |---|---|
//! | `[email]` | e-mail addresses: `local@domain.tld` (the top-level domain is 2–24 letters) |
//! | `[phone]` | international numbers (`+` then 8–15 digits, grouped by spaces, dashes, dots or a parenthesised group: `+44 20 7946 0958`, `+49-30-123456`, `+1 (415) 555-0134`, `+14155550134`) and North American ones (`(415) 555-0134`, `415-555-0134`, `415.555.0134`, `1-415-555-0134`) |
//! | `[ip]` | IPv4 (`192.168.1.20`, each part 0–255) and IPv6 (full, compressed `2001:db8::1`, embedded IPv4 `::ffff:1.2.3.4`) |
//! | `[card]` | payment-card numbers: 13–19 digits, ungrouped or in groups separated by one space or one dash each, that pass the Luhn check |
//! | `[secret]` | API keys with known prefixes (`sk-`, `sk-ant-`, `sk_live_`/`sk_test_`, `pk_live_`/`pk_test_`, `rk_live_`/`rk_test_`, `AKIA`, `ASIA`, `ghp_`, `gho_`, `ghs_`, `ghu_`, `ghr_`, `github_pat_`, `xoxb-`/`xoxp-`/`xoxa-`/..., `glpat-`, `AIza`), JWTs (`eyJ….eyJ….…`), bearer tokens and the credentials of URLs (`https://user:pass@host`) |
//!
//! What stays (precision), and the decisions on ambiguous text:
//! - **Bearer tokens** keep the word: `Bearer abc123…` → `Bearer [secret]`. Outside an
//!   `Authorization:` header a token must look like one (8+ characters with a digit, or 24+
//!   characters), so prose such as "Bearer authentication" stays; after `Authorization:` /
//!   `Proxy-Authorization:` with `Basic`, `Bearer` or `Token`, any credential is removed.
//! - **URL credentials**: `https://user:pass@host/path` → `https://[secret]@host/path`. URLs
//!   without credentials stay, but an IP address in a URL is still an `[ip]`.
//! - **`sk-`** must be followed by 16+ characters that are not just lowercase words joined by
//!   dashes (`sk-learn-compatible-interface` stays).
//! - **Dotted quads**: `1.2.3.4` is an IP address when every part is 0–255, it is not glued to
//!   a longer dotted or alphanumeric token (`v1.2.3.4`, `1.2.3.4.5`, `lib1.2.3.4` stay), and it
//!   does not directly follow the word `v`, `ver`, `version` or `release` (`version 1.2.3.4`,
//!   `version=1.2.3.4` stay). Three-part versions (`1.2.3`, `3.11.7`) are never addresses.
//! - **IPv6** needs a decimal digit and, when compressed with `::`, one of: an embedded IPv4,
//!   three or more groups, two groups of which one has 3+ hex digits, or a single group of 4
//!   (`2001::`). So `fe80::1`, `2001:db8::` and `::ffff:1.2.3.4` go, while `::`, `::1`, `1::2`
//!   (slices like `a[1::2]`) and `a::b::c`, `std::vec::Vec`, `bad::add` (code) stay. It must not be glued to a word on the left
//!   (`Vec::new`, `T10:15:30`). Times (`10:15:30`) and MAC addresses are not valid IPv6.
//! - **Phones**: North American numbers need consistent `-` or `.` separators or a
//!   parenthesised area code; `415 555 0134` without either is not taken (it looks like any
//!   three numbers). Dates (`2026-11-27`), ids and durations never have the 3-3-4 shape.
//!   International numbers need the leading `+` not glued to a word (`1+2`), a country code
//!   not starting with 0 (so offsets like `+05:30`, `+0000` stay) and 8–15 digits; digits
//!   beyond 15 are left after the number.
//! - **Cards** must pass the Luhn check. Groups: the first has 4 digits, middle ones 3–6, the
//!   last 1–6, all separated the same way; a single group of 13–19 digits must start with 2–9
//!   (no card network uses 0, and ungrouped numbers starting with 1 are epoch timestamps in
//!   ms/µs/ns and snowflake ids). A number glued to letters, or part of a decimal (`3.14159…`),
//!   stays. A 13–19 digit id that happens to pass Luhn (one in ten) is scrubbed: the price of
//!   recall.
//! - **E-mail**: `@Override`, `foo@bar` (no top-level domain), `lodash@4.17.21` and retina
//!   assets `icon@2x.png` stay. `git@github.com:org/repo` loses `git@github.com`, and code like
//!   `x@self.weight` (matrix product) is taken for an address.
//! - UUIDs, hex hashes, timestamps, dates, times, durations, ordinary numbers, code and paths
//!   match none of the above and stay.
//!
//! Speed: one byte pass counts digits, colons, dots, `@` and `+`; detectors whose minimum is
//! not met do not run, and when nothing is found the input is returned borrowed, without
//! allocating. Every detector is linear in the length of the text, so a hostile producer gains
//! nothing by flooding an attribute with findings: in a release build, 64 KiB of `a@b.cd `,
//! `1.2.3.4 `, `+1-415-555-0134 `, `4111 1111 1111 1111 `, `Bearer abcdefgh12345678 ` or
//! `::ffff:1.2.3.4 ` each scrub in 0.3–0.8 ms (`cargo test --release -p modelperf-privacy --test
//! floods -- --nocapture` prints the times).

use std::borrow::Cow;

use crate::detect;

/// What a finding is replaced by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tag {
    Email,
    Phone,
    Ip,
    Card,
    Secret,
}

impl Tag {
    fn as_str(self) -> &'static str {
        match self {
            Tag::Email => "[email]",
            Tag::Phone => "[phone]",
            Tag::Ip => "[ip]",
            Tag::Card => "[card]",
            Tag::Secret => "[secret]",
        }
    }
}

/// A byte range of the text to replace by its tag. Both ends are on character boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Finding {
    pub start: usize,
    pub end: usize,
    pub tag: Tag,
}

/// Replaces every e-mail address, phone number, IP address, Luhn-valid card number and API
/// key or token in `text` by a tag (`[email]`, `[phone]`, `[ip]`, `[card]`, `[secret]`); see
/// the [module docs](self) for the exact rules. Returns the input borrowed when nothing was
/// found.
pub fn scrub(text: &str) -> Cow<'_, str> {
    let mut findings = Vec::new();
    detect::find_all(text, &mut findings);
    if findings.is_empty() {
        return Cow::Borrowed(text);
    }
    Cow::Owned(replace(text, &mut findings))
}

/// `text` with each finding replaced by its tag. Overlapping findings are merged into one, so
/// every byte any detector found is removed; the merged range keeps the tag of the finding that
/// starts first (the longest one on a tie).
fn replace(text: &str, findings: &mut [Finding]) -> String {
    // Each detector appends its findings in order, so this is a few sorted runs back to back:
    // the stable sort merges runs (O(n log runs)) where an unstable one would sort from scratch.
    findings.sort_by_key(|f| (f.start, std::cmp::Reverse(f.end)));
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    let mut current: Option<Finding> = None;
    for &f in findings.iter() {
        match current.as_mut() {
            Some(c) if f.start < c.end => c.end = c.end.max(f.end),
            _ => {
                if let Some(c) = current.replace(f) {
                    out.push_str(&text[pos..c.start]);
                    out.push_str(c.tag.as_str());
                    pos = c.end;
                }
            }
        }
    }
    if let Some(c) = current {
        out.push_str(&text[pos..c.start]);
        out.push_str(c.tag.as_str());
        pos = c.end;
    }
    out.push_str(&text[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_findings_are_merged() {
        let text = "0123456789";
        let mut findings = vec![
            Finding { start: 5, end: 8, tag: Tag::Card },
            Finding { start: 1, end: 3, tag: Tag::Ip },
            Finding { start: 2, end: 6, tag: Tag::Phone },
        ];
        assert_eq!(replace(text, &mut findings), "0[ip]89");
        let mut findings = vec![Finding { start: 0, end: 10, tag: Tag::Email }];
        assert_eq!(replace(text, &mut findings), "[email]");
        let mut findings =
            vec![Finding { start: 0, end: 1, tag: Tag::Email }, Finding { start: 9, end: 10, tag: Tag::Secret }];
        assert_eq!(replace(text, &mut findings), "[email]12345678[secret]");
    }
}
