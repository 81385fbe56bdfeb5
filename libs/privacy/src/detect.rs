//! The detectors behind [`crate::scrub()`]: each finds candidates (a regex or a byte scan) and
//! keeps those that pass its checks (boundaries, ranges, Luhn). The rules are documented in
//! [`crate::scrub`](mod@crate::scrub).
//!
//! Boundaries are checked by hand because the `regex` crate has no look-around: a candidate
//! glued to a longer word or number (`v1.2.3.4`, `x4111…`, `3.14159…`) is not a finding. All
//! candidates start and end on ASCII bytes, so every range is on character boundaries.

use std::net::Ipv6Addr;
use std::sync::LazyLock;

use regex::Regex;

use crate::scrub::{Finding, Tag};

/// Compiles a pattern literal of this module.
fn compile(pattern: &str) -> Regex {
    // The patterns are literals of this file, compiled once and covered by the tests.
    #[allow(clippy::expect_used, reason = "patterns are literals checked by the tests")]
    Regex::new(pattern).expect("valid pattern literal")
}

/// Internationalised addresses (Unicode letters and digits) included.
static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| compile(r"[\p{L}\p{N}._%+-]+@[\p{L}\p{N}-]+(?:\.[\p{L}\p{N}-]+)*\.\p{L}{2,24}"));

/// `scheme://user:password@`.
static URL_USERINFO: LazyLock<Regex> = LazyLock::new(|| compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:]+:[^\s/?#@]*@"));

static KEYS: LazyLock<Regex> = LazyLock::new(|| {
    compile(concat!(
        r"(?:sk-|(?:sk|pk|rk)_(?:live|test)_)[A-Za-z0-9_-]+",
        r"|(?:AKIA|ASIA)[A-Z0-9]{16,}",
        r"|gh[pousr]_[A-Za-z0-9]{20,}",
        r"|github_pat_[A-Za-z0-9_]{20,}",
        r"|xox[abposr]-[A-Za-z0-9-]{10,}",
        r"|glpat-[A-Za-z0-9_-]{16,}",
        r"|AIza[A-Za-z0-9_-]{20,}",
        r"|eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
    ))
});

/// A bearer token, or any credential of an `Authorization` header: the credential is what
/// follows the last blank.
static BEARER: LazyLock<Regex> = LazyLock::new(|| {
    compile(
        r#"(?i)(?:(?:proxy-)?authorization["']?[ \t]*[:=][ \t]*["']?(?:basic|bearer|token)|bearer)[ \t]+[A-Za-z0-9._~+/-]+=*"#,
    )
});

static PHONE_NA: LazyLock<Regex> = LazyLock::new(|| {
    compile(r"(?:1[ .-])?(?:\([0-9]{3}\) ?[0-9]{3}[ .-]?|[0-9]{3}-[0-9]{3}-|[0-9]{3}\.[0-9]{3}\.)[0-9]{4}")
});

/// What one pass over the bytes says about which detectors can possibly match.
#[derive(Debug, Default)]
struct Profile {
    digits: usize,
    colons: usize,
    dots: usize,
    at: bool,
    plus: bool,
}

impl Profile {
    fn of(text: &str) -> Profile {
        let mut p = Profile::default();
        for &b in text.as_bytes() {
            match b {
                b'0'..=b'9' => p.digits += 1,
                b':' => p.colons += 1,
                b'.' => p.dots += 1,
                b'@' => p.at = true,
                b'+' => p.plus = true,
                _ => {}
            }
        }
        p
    }
}

/// Appends every finding in `text` to `out`, unordered and possibly overlapping.
///
/// Every detector is linear in the length of `text`: one regex pass or byte scan, constant work
/// per candidate, and no look-back over earlier findings. A hostile producer flooding an
/// attribute with 64 KiB of one kind of finding costs about as much as 64 KiB of anything else
/// (`tests/floods.rs`).
pub(crate) fn find_all(text: &str, out: &mut Vec<Finding>) {
    // The shortest finding is an e-mail like `a@b.cd`.
    if text.len() < 6 {
        return;
    }
    let p = Profile::of(text);
    // Where each URL credential ends (at its `@`), in increasing order.
    let mut credential_ends = Vec::new();
    if p.at && p.colons >= 2 && text.contains("://") {
        url_credentials(text, out, &mut credential_ends);
    }
    if p.at && p.dots >= 1 {
        emails(text, &credential_ends, out);
    }
    // The shortest key or token is `Bearer ` and 8 characters.
    if text.len() >= 15 {
        keys(text, out);
        bearer_tokens(text, out);
    }
    if p.colons >= 2 {
        ipv6(text, out);
    }
    if p.dots >= 3 && p.digits >= 4 {
        ipv4(text, out);
    }
    if p.plus && p.digits >= 8 {
        phones_international(text, out);
    }
    if p.digits >= 10 {
        phones_north_american(text, out);
    }
    if p.digits >= 13 {
        cards(text, out);
    }
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The byte before `start`, if any.
fn before(s: &[u8], start: usize) -> Option<u8> {
    start.checked_sub(1).and_then(|i| s.get(i)).copied()
}

/// Nothing glued on the left of a number at `start`: no word character, and no digit joined by
/// `.`, `,` or `-` (a decimal, a longer dotted or dashed number).
fn free_before(s: &[u8], start: usize) -> bool {
    match before(s, start) {
        None => true,
        Some(b) if is_word(b) => false,
        Some(b'.' | b',' | b'-') => !before(s, start - 1).is_some_and(|b| b.is_ascii_digit()),
        Some(_) => true,
    }
}

/// Nothing glued on the right of a number ending at `end`: no word character, and no `.`, `,`
/// or `-` followed by a digit.
fn free_after(s: &[u8], end: usize) -> bool {
    match s.get(end) {
        None => true,
        Some(&b) if is_word(b) => false,
        Some(b'.' | b',' | b'-') => !s.get(end + 1).is_some_and(u8::is_ascii_digit),
        Some(_) => true,
    }
}

fn push(out: &mut Vec<Finding>, start: usize, end: usize, tag: Tag) {
    out.push(Finding { start, end, tag });
}

/// `scheme://user:password@`: the finding is `user:password`. The scheme has no `:` and the
/// credentials no `/`, so they start after the first `://` of the match and end before its
/// final `@`; no capture groups needed (they cost a second, slower pass per match).
fn url_credentials(text: &str, out: &mut Vec<Finding>, ends: &mut Vec<usize>) {
    for m in URL_USERINFO.find_iter(text) {
        let Some(scheme_end) = m.as_str().find("://") else { continue };
        let (start, end) = (m.start() + scheme_end + 3, m.end() - 1);
        push(out, start, end, Tag::Secret);
        ends.push(end);
    }
}

/// `credential_ends` is sorted: [`URL_USERINFO`] matches come in order and do not overlap.
fn emails(text: &str, credential_ends: &[usize], out: &mut Vec<Finding>) {
    for m in EMAIL.find_iter(text) {
        let Some(at) = m.as_str().find('@').map(|i| m.start() + i) else { continue };
        let domain = &text[at + 1..m.end()];
        // Retina assets: `icon@2x.png`.
        let first_label = domain.split('.').next().unwrap_or_default();
        if let Some(scale) = first_label.strip_suffix('x')
            && !scale.is_empty()
            && scale.bytes().all(|b| b.is_ascii_digit())
        {
            continue;
        }
        // `https://user:pass@host`: the credentials are already a finding; the host stays.
        if credential_ends.binary_search(&at).is_ok() {
            continue;
        }
        push(out, m.start(), m.end(), Tag::Email);
    }
}

fn keys(text: &str, out: &mut Vec<Finding>) {
    let s = text.as_bytes();
    for m in KEYS.find_iter(text) {
        if before(s, m.start()).is_some_and(is_word) || !plausible_key(m.as_str()) {
            continue;
        }
        push(out, m.start(), m.end(), Tag::Secret);
    }
}

/// Extra checks for the prefixes whose body the pattern leaves open.
fn plausible_key(key: &str) -> bool {
    if let Some(body) = key.strip_prefix("sk-") {
        let hyphenated_words =
            body.contains('-') && body.split('-').all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()));
        return body.len() >= 16 && !hyphenated_words;
    }
    if key.starts_with("sk_") || key.starts_with("pk_") || key.starts_with("rk_") {
        // `sk_live_`, `pk_test_`, ...: all 8 bytes.
        return key.len() >= 8 + 10;
    }
    true
}

fn bearer_tokens(text: &str, out: &mut Vec<Finding>) {
    let s = text.as_bytes();
    for whole in BEARER.find_iter(text) {
        if before(s, whole.start()).is_some_and(is_word) {
            continue;
        }
        // The token has no blank and follows `[ \t]+`: it starts after the last blank of the
        // match. Found by hand rather than by capture group (a second, slower pass per match).
        let Some(blank) = whole.as_str().bytes().rposition(|b| b == b' ' || b == b'\t') else { continue };
        let (start, end) = (whole.start() + blank + 1, whole.end());
        let header = !whole.as_str().as_bytes().first().is_some_and(|b| b.eq_ignore_ascii_case(&b'b'));
        let t = &s[start..end];
        let looks_like_token = (t.len() >= 8 && t.iter().any(u8::is_ascii_digit)) || t.len() >= 24;
        if header || looks_like_token {
            push(out, start, end, Tag::Secret);
        }
    }
}

/// Dotted quads, by a byte scan (a regex pays a fixed cost per match, which a flood of
/// addresses multiplies). A candidate starts a digit run not glued on the left (no word
/// character or `.` before it) and is four runs of 1–3 digits joined by single dots, not glued
/// on the right (no word character, no `.` and digit after it).
fn ipv4(text: &str, out: &mut Vec<Finding>) {
    let s = text.as_bytes();
    let mut i = 0;
    while i < s.len() {
        if !s[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        let glued_left = before(s, start).is_some_and(|b| is_word(b) || b == b'.');
        let candidate = if glued_left { None } else { dotted_quad(s, start) };
        // The rest of this digit run cannot start a candidate: it is glued to its first digit.
        while i < s.len() && s[i].is_ascii_digit() {
            i += 1;
        }
        let Some(end) = candidate else { continue };
        let glued_right =
            s.get(end).is_some_and(|&b| is_word(b) || (b == b'.' && s.get(end + 1).is_some_and(u8::is_ascii_digit)));
        if !glued_right && !after_version_word(s, start) {
            push(out, start, end, Tag::Ip);
        }
    }
}

/// The end of four dot-joined parts from `start`, each 1–3 digits and at most 255.
fn dotted_quad(s: &[u8], start: usize) -> Option<usize> {
    let mut i = start;
    for part in 0..4 {
        if part > 0 {
            if s.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let mut value = 0u32;
        let part_start = i;
        while i < s.len() && s[i].is_ascii_digit() && i - part_start < 4 {
            value = value * 10 + u32::from(s[i] - b'0');
            i += 1;
        }
        if !(1..=3).contains(&(i - part_start)) || value > 255 {
            return None;
        }
    }
    Some(i)
}

/// True when the text before `start` ends with the word `v`, `ver`, `version` or `release`,
/// then spaces, `:` or `=`.
fn after_version_word(s: &[u8], start: usize) -> bool {
    let mut i = start;
    while i > 0 && matches!(s[i - 1], b' ' | b'\t' | b':' | b'=') {
        i -= 1;
    }
    let word_end = i;
    while i > 0 && s[i - 1].is_ascii_alphabetic() {
        i -= 1;
    }
    if i == word_end || before(s, i).is_some_and(is_word) {
        return false;
    }
    let word = &s[i..word_end];
    ["v", "ver", "version", "release"].iter().any(|w| word.eq_ignore_ascii_case(w.as_bytes()))
}

/// IPv6 candidates are maximal runs of hex digits, `:` and `.` around a colon.
fn ipv6(text: &str, out: &mut Vec<Finding>) {
    let s = text.as_bytes();
    let in_run = |b: u8| b.is_ascii_hexdigit() || b == b':' || b == b'.';
    let mut i = 0;
    while i < s.len() {
        if s[i] != b':' {
            i += 1;
            continue;
        }
        let mut start = i;
        while start > 0 && in_run(s[start - 1]) {
            start -= 1;
        }
        let mut end = i;
        while end < s.len() && in_run(s[end]) {
            end += 1;
        }
        i = end;
        if let Some((start, end)) = ipv6_in_run(text, start, end) {
            push(out, start, end, Tag::Ip);
        }
    }
}

/// The address in the run `start..end`, if there is one.
fn ipv6_in_run(text: &str, mut start: usize, mut end: usize) -> Option<(usize, usize)> {
    let s = text.as_bytes();
    while start < end && s[start] == b'.' {
        start += 1;
    }
    // A single leading colon separates a label: `ip:2001:db8::1`.
    if s.get(start) == Some(&b':') && s.get(start + 1) != Some(&b':') {
        start += 1;
    }
    // Glued to an identifier: `Vec::new`, `T10:15:30`.
    if before(s, start).is_some_and(is_word) {
        return None;
    }
    // Sentence end: `… 2001:db8::1.`
    while end > start && s[end - 1] == b'.' {
        end -= 1;
    }
    if s.get(end).is_some_and(|&b| is_word(b)) {
        return None;
    }
    if plausible_ipv6(&text[start..end]) {
        return Some((start, end));
    }
    // A trailing field separator: `2001:db8::1: refused`, `2001:db8:::`.
    (end > start && s[end - 1] == b':' && plausible_ipv6(&text[start..end - 1])).then_some((start, end - 1))
}

fn plausible_ipv6(candidate: &str) -> bool {
    if !candidate.bytes().any(|b| b.is_ascii_digit()) || candidate.parse::<Ipv6Addr>().is_err() {
        return false;
    }
    if !candidate.contains("::") {
        return true;
    }
    let (mut groups, mut longest, mut v4) = (0, 0, false);
    for group in candidate.split(':').filter(|g| !g.is_empty()) {
        groups += 1;
        longest = longest.max(group.len());
        v4 |= group.contains('.');
    }
    v4 || groups >= 3 || (groups == 2 && longest >= 3) || (groups == 1 && longest == 4)
}

/// International numbers, by a byte scan from each `+` (a regex pays a fixed cost per match,
/// which a flood of `+1` multiplies).
fn phones_international(text: &str, out: &mut Vec<Finding>) {
    let s = text.as_bytes();
    let mut i = 0;
    while let Some(offset) = s[i..].iter().position(|&b| b == b'+') {
        let start = i + offset;
        let Some(candidate_end) = international_candidate(s, start) else {
            i = start + 1;
            continue;
        };
        i = candidate_end;
        if before(s, start).is_some_and(|b| is_word(b) || b == b'+') {
            continue;
        }
        // Count digits; past 15 (the E.164 maximum) end the number at the last separator.
        let (mut digits, mut end) = (0, candidate_end);
        let (mut digits_at_sep, mut last_sep) = (0, None);
        for (j, &b) in s[start..candidate_end].iter().enumerate() {
            if b.is_ascii_digit() {
                digits += 1;
                if digits > 15 {
                    let Some(sep) = last_sep else { break };
                    end = start + sep;
                    digits = digits_at_sep;
                    break;
                }
            } else if matches!(b, b' ' | b'.' | b'-') {
                last_sep = Some(j);
                digits_at_sep = digits;
            }
        }
        if (8..=15).contains(&digits) {
            push(out, start, end, Tag::Phone);
        }
    }
}

/// The end of the longest international number at the `+` at `plus`: a country code of 1–4
/// digits not starting with 0, optionally closed by `)`, then any of: a digit, one of ` .-`
/// and a digit, or a parenthesised group of 1–4 digits (optionally after one of ` .-`). `None`
/// when no country code follows.
fn international_candidate(s: &[u8], plus: usize) -> Option<usize> {
    let digit_at = |i: usize| s.get(i).is_some_and(u8::is_ascii_digit);
    let separator_at = |i: usize| matches!(s.get(i), Some(b' ' | b'.' | b'-'));
    // The end of `(` 1–4 digits `)` at `i`.
    let group_at = |i: usize| {
        if s.get(i) != Some(&b'(') {
            return None;
        }
        let digits = s[i + 1..].iter().take(4).take_while(|b| b.is_ascii_digit()).count();
        (digits > 0 && s.get(i + 1 + digits) == Some(&b')')).then_some(i + digits + 2)
    };
    if !s.get(plus + 1).is_some_and(|b| (b'1'..=b'9').contains(b)) {
        return None;
    }
    let mut i = plus + 2;
    let mut code_digits = 1;
    while code_digits < 4 && digit_at(i) {
        i += 1;
        code_digits += 1;
    }
    if s.get(i) == Some(&b')') {
        i += 1;
    }
    loop {
        if digit_at(i) {
            i += 1;
        } else if separator_at(i) && digit_at(i + 1) {
            i += 2;
        } else if let Some(end) = group_at(i).or_else(|| if separator_at(i) { group_at(i + 1) } else { None }) {
            i = end;
        } else {
            return Some(i);
        }
    }
}

fn phones_north_american(text: &str, out: &mut Vec<Finding>) {
    let s = text.as_bytes();
    for m in PHONE_NA.find_iter(text) {
        let left_ok =
            if s[m.start()] == b'(' { !before(s, m.start()).is_some_and(is_word) } else { free_before(s, m.start()) };
        if left_ok && free_after(s, m.end()) {
            push(out, m.start(), m.end(), Tag::Phone);
        }
    }
}

fn cards(text: &str, out: &mut Vec<Finding>) {
    let s = text.as_bytes();
    // One buffer for the groups of every run.
    let mut groups = Vec::new();
    let mut i = 0;
    while i < s.len() {
        if !s[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // A run: digit groups separated by one space or dash each.
        let run_start = i;
        let mut digits = 0;
        groups.clear();
        loop {
            let group_start = i;
            while i < s.len() && s[i].is_ascii_digit() {
                i += 1;
            }
            digits += i - group_start;
            groups.push((group_start, i));
            if matches!(s.get(i), Some(b' ' | b'-')) && s.get(i + 1).is_some_and(u8::is_ascii_digit) {
                i += 1;
            } else {
                break;
            }
        }
        if digits >= 13 {
            cards_in_groups(s, &groups, free_before(s, run_start), free_after(s, i), out);
        }
    }
}

/// Finds cards among consecutive digit groups (each separated from the next by one byte): from
/// each first group, the longest card; the search goes on after it.
fn cards_in_groups(s: &[u8], groups: &[(usize, usize)], left_ok: bool, right_ok: bool, out: &mut Vec<Finding>) {
    let mut first = 0;
    while first < groups.len() {
        let found = if first > 0 || left_ok { longest_card(s, &groups[first..], right_ok) } else { None };
        match found {
            Some(count) => {
                push(out, groups[first].0, groups[first + count - 1].1, Tag::Card);
                first += count;
            }
            None => first += 1,
        }
    }
}

/// How many of `groups`, from the first, make the longest card: a single group of 13–19 digits
/// starting with 2–9, or groups shaped like a card (the first of 4 digits not starting with 0,
/// middle ones of 3–6, the last of 1–6, all separated the same way); either way passing Luhn.
///
/// The shape is checked as the window grows and the loop stops at the first group that rules
/// out every longer window, so the work per first group is bounded by the 19-digit maximum.
/// `right_ok` says whether a window may end at the last group (nothing glued after the run).
fn longest_card(s: &[u8], groups: &[(usize, usize)], right_ok: bool) -> Option<usize> {
    let (start, first_end) = groups[0];
    let (lead, first_len, separator) = (s[start], first_end - start, s.get(first_end).copied());
    let mut found = None;
    let mut digits = 0;
    for (i, &(group_start, group_end)) in groups.iter().enumerate() {
        let len = group_end - group_start;
        digits += len;
        if digits > 19 {
            break;
        }
        if i > 0 && (first_len != 4 || lead == b'0' || len > 6 || s.get(group_start - 1).copied() != separator) {
            break;
        }
        let lead_ok = i > 0 || (b'2'..=b'9').contains(&lead);
        let may_end_here = right_ok || i + 1 < groups.len();
        if digits >= 13
            && lead_ok
            && may_end_here
            && luhn(s[start..group_end].iter().copied().filter(u8::is_ascii_digit))
        {
            found = Some(i + 1);
        }
        // A longer window makes this group a middle one, which needs 3–6 digits.
        if i > 0 && len < 3 {
            break;
        }
    }
    found
}

/// The Luhn check over ASCII digits.
pub(crate) fn luhn(digits: impl DoubleEndedIterator<Item = u8>) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.rev().enumerate() {
        let mut d = u32::from(d - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> bool {
        luhn(text.bytes())
    }

    #[test]
    fn luhn_known_numbers() {
        assert!(check("4111111111111111"));
        assert!(check("378282246310005"));
        assert!(check("79927398713"));
        assert!(!check("4111111111111112"));
        assert!(!check("79927398710"));
    }

    #[test]
    fn boundaries() {
        let s = b"a1 3.14 x";
        assert!(!free_before(s, 1));
        assert!(free_before(s, 3));
        assert!(!free_before(s, 5));
        assert!(free_after(s, 2));
        assert!(!free_after(s, 3));
        assert!(free_after(s, 7));
    }

    #[test]
    fn version_words() {
        let s = b"version 1.2.3.4 server 1.2.3.4 ver=1.2.3.4 v 1.2.3.4";
        assert!(after_version_word(s, 8));
        assert!(!after_version_word(s, 23));
        assert!(after_version_word(s, 35));
        assert!(after_version_word(s, 45));
    }

    #[test]
    fn profile_counts() {
        let p = Profile::of("a@b.c +1 10:15");
        assert!(p.at && p.plus);
        assert_eq!((p.digits, p.colons, p.dots), (5, 1, 1));
    }

    #[test]
    fn patterns_compile() {
        for re in [&EMAIL, &URL_USERINFO, &KEYS, &BEARER, &PHONE_NA] {
            assert!(!re.as_str().is_empty());
        }
    }

    /// The byte scanners of dotted quads and international numbers replaced these patterns
    /// (for speed on floods); the patterns stay here as their specification.
    mod scanners_match_their_patterns {
        use proptest::prelude::*;

        use super::*;

        static IPV4: LazyLock<Regex> = LazyLock::new(|| compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"));

        static PHONE_INTL: LazyLock<Regex> =
            LazyLock::new(|| compile(r"\+[1-9][0-9]{0,3}\)?(?:[0-9]|[ .-][0-9]|[ .-]?\([0-9]{1,4}\))*"));

        /// [`ipv4`] as it was, on [`IPV4`] matches.
        fn ipv4_by_pattern(text: &str) -> Vec<Finding> {
            let (s, mut out) = (text.as_bytes(), Vec::new());
            for m in IPV4.find_iter(text) {
                let glued_left = before(s, m.start()).is_some_and(|b| is_word(b) || b == b'.');
                let glued_right = s
                    .get(m.end())
                    .is_some_and(|&b| is_word(b) || (b == b'.' && s.get(m.end() + 1).is_some_and(u8::is_ascii_digit)));
                let in_range = m.as_str().split('.').all(|part| part.parse::<u16>().is_ok_and(|n| n <= 255));
                if !glued_left && !glued_right && !after_version_word(s, m.start()) && in_range {
                    push(&mut out, m.start(), m.end(), Tag::Ip);
                }
            }
            out
        }

        /// The candidates [`phones_international`] checks, found by [`international_candidate`].
        fn international_candidates(s: &[u8]) -> Vec<(usize, usize)> {
            let (mut found, mut i) = (Vec::new(), 0);
            while let Some(offset) = s[i..].iter().position(|&b| b == b'+') {
                let start = i + offset;
                i = match international_candidate(s, start) {
                    Some(end) => {
                        found.push((start, end));
                        end
                    }
                    None => start + 1,
                };
            }
            found
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn dotted_quads(text in "[0-9.v a:=-]{0,40}|((25[5-7]|[0-9]{1,4})[.]){0,6}(25[5-7]|[0-9]{0,4})") {
                let mut found = Vec::new();
                ipv4(&text, &mut found);
                prop_assert_eq!(found, ipv4_by_pattern(&text));
            }

            #[test]
            fn international_numbers(text in "[+0-9 .()x-]{0,40}|(\\+[0-9]{1,5}[)]?([ .-]?([(][0-9]{1,5}[)]|[(]?[0-9]{1,5}[)]?))*){1,3}") {
                let by_pattern: Vec<_> = PHONE_INTL.find_iter(&text).map(|m| (m.start(), m.end())).collect();
                prop_assert_eq!(international_candidates(text.as_bytes()), by_pattern);
            }
        }
    }
}
