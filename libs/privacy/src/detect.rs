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

/// `scheme://user:password@`: group 1 is `user:password`.
static URL_USERINFO: LazyLock<Regex> =
    LazyLock::new(|| compile(r"[A-Za-z][A-Za-z0-9+.-]*://([^\s/?#@:]+:[^\s/?#@]*)@"));

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

/// A bearer token, or any credential of an `Authorization` header: group 1 is the credential.
static BEARER: LazyLock<Regex> = LazyLock::new(|| {
    compile(
        r#"(?i)(?:(?:proxy-)?authorization["']?[ \t]*[:=][ \t]*["']?(?:basic|bearer|token)|bearer)[ \t]+([A-Za-z0-9._~+/-]+=*)"#,
    )
});

static IPV4: LazyLock<Regex> = LazyLock::new(|| compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"));

/// `+`, a country code, then digits grouped by one separator or a parenthesised group.
static PHONE_INTL: LazyLock<Regex> =
    LazyLock::new(|| compile(r"\+[1-9][0-9]{0,3}\)?(?:[0-9]|[ .-][0-9]|[ .-]?\([0-9]{1,4}\))*"));

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
pub(crate) fn find_all(text: &str, out: &mut Vec<Finding>) {
    // The shortest finding is an e-mail like `a@b.cd`.
    if text.len() < 6 {
        return;
    }
    let p = Profile::of(text);
    if p.at && p.colons >= 2 && text.contains("://") {
        url_credentials(text, out);
    }
    if p.at && p.dots >= 1 {
        emails(text, out);
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

fn url_credentials(text: &str, out: &mut Vec<Finding>) {
    for caps in URL_USERINFO.captures_iter(text) {
        if let Some(userinfo) = caps.get(1) {
            push(out, userinfo.start(), userinfo.end(), Tag::Secret);
        }
    }
}

fn emails(text: &str, out: &mut Vec<Finding>) {
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
        if out.iter().any(|f| f.tag == Tag::Secret && f.end == at) {
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
    for caps in BEARER.captures_iter(text) {
        let (Some(whole), Some(token)) = (caps.get(0), caps.get(1)) else { continue };
        if before(s, whole.start()).is_some_and(is_word) {
            continue;
        }
        let header = !whole.as_str().as_bytes().first().is_some_and(|b| b.eq_ignore_ascii_case(&b'b'));
        let t = token.as_str();
        let looks_like_token = (t.len() >= 8 && t.bytes().any(|b| b.is_ascii_digit())) || t.len() >= 24;
        if header || looks_like_token {
            push(out, token.start(), token.end(), Tag::Secret);
        }
    }
}

fn ipv4(text: &str, out: &mut Vec<Finding>) {
    let s = text.as_bytes();
    for m in IPV4.find_iter(text) {
        let glued_left = match before(s, m.start()) {
            Some(b) => is_word(b) || b == b'.',
            None => false,
        };
        let glued_right = match s.get(m.end()) {
            Some(&b) => is_word(b) || (b == b'.' && s.get(m.end() + 1).is_some_and(u8::is_ascii_digit)),
            None => false,
        };
        if glued_left || glued_right || after_version_word(s, m.start()) {
            continue;
        }
        if m.as_str().split('.').all(|part| part.parse::<u16>().is_ok_and(|n| n <= 255)) {
            push(out, m.start(), m.end(), Tag::Ip);
        }
    }
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

fn phones_international(text: &str, out: &mut Vec<Finding>) {
    let s = text.as_bytes();
    for m in PHONE_INTL.find_iter(text) {
        if before(s, m.start()).is_some_and(|b| is_word(b) || b == b'+') {
            continue;
        }
        // Count digits; past 15 (the E.164 maximum) end the number at the last separator.
        let (mut digits, mut end) = (0, m.end());
        let (mut digits_at_sep, mut last_sep) = (0, None);
        for (i, b) in m.as_str().bytes().enumerate() {
            if b.is_ascii_digit() {
                digits += 1;
                if digits > 15 {
                    let Some(sep) = last_sep else { break };
                    end = m.start() + sep;
                    digits = digits_at_sep;
                    break;
                }
            } else if matches!(b, b' ' | b'.' | b'-') {
                last_sep = Some(i);
                digits_at_sep = digits;
            }
        }
        if (8..=15).contains(&digits) {
            push(out, m.start(), end, Tag::Phone);
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
    let mut i = 0;
    while i < s.len() {
        if !s[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // A run: digit groups separated by one space or dash each.
        let run_start = i;
        let mut digits = 0;
        loop {
            let group_start = i;
            while i < s.len() && s[i].is_ascii_digit() {
                i += 1;
            }
            digits += i - group_start;
            if matches!(s.get(i), Some(b' ' | b'-')) && s.get(i + 1).is_some_and(u8::is_ascii_digit) {
                i += 1;
            } else {
                break;
            }
        }
        if digits < 13 {
            continue;
        }
        let mut groups = Vec::new();
        let mut group_start = run_start;
        for (j, b) in s[run_start..i].iter().enumerate() {
            if !b.is_ascii_digit() {
                groups.push((group_start, run_start + j));
                group_start = run_start + j + 1;
            }
        }
        groups.push((group_start, i));
        cards_in_groups(s, &groups, free_before(s, run_start), free_after(s, i), out);
    }
}

/// Finds cards among consecutive digit groups: from each first group, the longest valid window.
fn cards_in_groups(s: &[u8], groups: &[(usize, usize)], left_ok: bool, right_ok: bool, out: &mut Vec<Finding>) {
    let mut first = 0;
    while first < groups.len() {
        let mut found = None;
        if first > 0 || left_ok {
            let mut digits = 0;
            for last in first..groups.len() {
                digits += groups[last].1 - groups[last].0;
                if digits > 19 {
                    break;
                }
                let at_end = last + 1 == groups.len();
                if digits >= 13 && (right_ok || !at_end) && is_card(s, &groups[first..=last]) {
                    found = Some(last);
                }
            }
        }
        match found {
            Some(last) => {
                push(out, groups[first].0, groups[last].1, Tag::Card);
                first = last + 1;
            }
            None => first += 1,
        }
    }
}

/// The group shape and Luhn rules of a card number.
fn is_card(s: &[u8], groups: &[(usize, usize)]) -> bool {
    let (start, end) = (groups[0].0, groups[groups.len() - 1].1);
    let lead = s[start];
    if groups.len() == 1 {
        if !(b'2'..=b'9').contains(&lead) {
            return false;
        }
    } else {
        let separator = s[groups[0].1];
        let n = groups.len();
        let shaped = groups.iter().enumerate().all(|(i, &(a, b))| {
            let len = b - a;
            let len_ok = match i {
                0 => len == 4,
                i if i + 1 == n => (1..=6).contains(&len),
                _ => (3..=6).contains(&len),
            };
            len_ok && (i + 1 == n || s[b] == separator)
        });
        if !shaped || lead == b'0' {
            return false;
        }
    }
    luhn(s[start..end].iter().copied().filter(u8::is_ascii_digit))
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
        for re in [&EMAIL, &URL_USERINFO, &KEYS, &BEARER, &IPV4, &PHONE_INTL, &PHONE_NA] {
            assert!(!re.as_str().is_empty());
        }
    }
}
