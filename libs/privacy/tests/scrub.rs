//! `scrub`: each category is found, and ordinary engineering text passes unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::borrow::Cow;

use modelperf_privacy::scrub;

/// Asserts `input` scrubs to exactly `expected`.
#[track_caller]
fn scrubs_to(input: &str, expected: &str) {
    assert_eq!(scrub(input), expected, "input: {input}");
}

/// Asserts `input` passes unchanged and without allocating.
#[track_caller]
fn unchanged(input: &str) {
    let out = scrub(input);
    assert!(matches!(out, Cow::Borrowed(_)), "changed: {input:?} -> {out:?}");
}

// ---------------------------------------------------------------- recall, per category

#[test]
fn emails() {
    scrubs_to("contact alice@example.com today", "contact [email] today");
    scrubs_to("<john.doe+tag@mail.example.co.uk>", "<[email]>");
    scrubs_to("mailto:ops-team_1@corp.io.", "mailto:[email].");
    scrubs_to("a@b.cd", "[email]");
    scrubs_to("Alice.Smith@Example.COM,bob@example.org", "[email],[email]");
}

#[test]
fn international_phones() {
    scrubs_to("call +44 20 7946 0958 now", "call [phone] now");
    scrubs_to("call +49-30-123456.", "call [phone].");
    scrubs_to("sms +1-415-555-0134", "sms [phone]");
    scrubs_to("tel:+14155550134", "tel:[phone]");
    scrubs_to("+1 (415) 555-0134", "[phone]");
    scrubs_to("(+44) 20 7946 0958", "([phone]");
    scrubs_to("+44 (0)20 7946 0958", "[phone]");
    scrubs_to("+33 1 23 45 67 89", "[phone]");
    scrubs_to("+81.3.1234.5678", "[phone]");
}

#[test]
fn north_american_phones() {
    scrubs_to("call (415) 555-0134 today", "call [phone] today");
    scrubs_to("call 415-555-0134", "call [phone]");
    scrubs_to("call 415.555.0134.", "call [phone].");
    scrubs_to("call 1-415-555-0134", "call [phone]");
    scrubs_to("(415)555-0134", "[phone]");
    scrubs_to("phone=123-456-7890;", "phone=[phone];");
}

#[test]
fn ipv4() {
    scrubs_to("from 192.168.1.20 port 443", "from [ip] port 443");
    scrubs_to("10.0.0.1:8080", "[ip]:8080");
    scrubs_to("peer=8.8.8.8.", "peer=[ip].");
    scrubs_to("net 10.0.0.0/8", "net [ip]/8");
    scrubs_to("range 10.0.0.1-10.0.0.9", "range [ip]-[ip]");
    scrubs_to("http://127.0.0.1:9101/metrics", "http://[ip]:9101/metrics");
    scrubs_to("1.2.3.4", "[ip]");
}

#[test]
fn ipv6() {
    scrubs_to("from 2001:db8:85a3:0:0:8a2e:370:7334 ok", "from [ip] ok");
    scrubs_to("from 2001:0db8:85a3:0000:0000:8a2e:0370:7334", "from [ip]");
    scrubs_to("from 2001:db8::1 ok", "from [ip] ok");
    scrubs_to("link fe80::1%eth0", "link [ip]%eth0");
    scrubs_to("mapped ::ffff:1.2.3.4.", "mapped [ip].");
    scrubs_to("mapped ::ffff:192.168.1.20 ok", "mapped [ip] ok");
    scrubs_to("[2001:db8::42]:8080", "[[ip]]:8080");
    scrubs_to("2001:db8::1: connection refused", "[ip]: connection refused");
    scrubs_to("prefix 2000:0:0:1::: next", "prefix [ip]: next");
    scrubs_to("ip:2001:db8::7", "ip:[ip]");
    scrubs_to("net 2001:db8::/32", "net [ip]/32");
    scrubs_to("a 2001:db8:0:0:1:0:0:1 b", "a [ip] b");
}

#[test]
fn cards() {
    scrubs_to("card 4111 1111 1111 1111 exp", "card [card] exp");
    scrubs_to("card 4111-1111-1111-1111", "card [card]");
    scrubs_to("card 4111111111111111.", "card [card].");
    scrubs_to("amex 3782 822463 10005", "amex [card]");
    scrubs_to("amex 378282246310005", "amex [card]");
    scrubs_to("mc 5555555555554444", "mc [card]");
    scrubs_to("discover 6011 1111 1111 1117", "discover [card]");
    scrubs_to("visa13 4222222222222", "visa13 [card]");
    scrubs_to("19 digits 6250 9460 0000 0000 002", "19 digits [card]");
    scrubs_to("card 4111 1111 1111 1111 2026", "card [card] 2026");
}

#[test]
fn api_keys() {
    for key in [
        "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",
        "sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe",
        "sk-abcdefghijklmnopqrstuvwxyz012345",
        "sk_live_51HxYzAbCdEfGhIjKlMnOp",
        "pk_live_51HxYzAbCdEfGhIjKlMnOp",
        "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
        "AKIAIOSFODNN7EXAMPLE",
        "ASIAY34FZKBOKMUTVV7A",
        "ghp_1234567890abcdefghijABCDEFGHIJ123456",
        "gho_16C7e42F292c6912E7710c838347Ae178B4a",
        "ghs_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV",
        "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        "xoxp-123456789012-123456789012-123456789012-abcdef0123456789abcdef0123456789",
        "glpat-xxxxXXXX1234yyyyZZZZ",
        "AIzaSyA1bC2dE3fG4hI5jK6lM7nO8pQ9rS0tU1v",
    ] {
        scrubs_to(&format!("key={key}"), "key=[secret]");
        scrubs_to(&format!("the key {key} leaked."), "the key [secret] leaked.");
    }
}

#[test]
fn jwts() {
    let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ.\
               SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    scrubs_to(&format!("token={jwt}"), "token=[secret]");
    scrubs_to(&format!("cookie: session={jwt}; Path=/"), "cookie: session=[secret]; Path=/");
}

#[test]
fn bearer_tokens_keep_the_word() {
    scrubs_to("Authorization: Bearer abc123def456ghi789", "Authorization: Bearer [secret]");
    scrubs_to("sent bearer 0123456789abcdef to upstream", "sent bearer [secret] to upstream");
    scrubs_to("Bearer ya29.a0AfH6SMBx-3kZ_long.token", "Bearer [secret]");
    scrubs_to(r#"{"authorization": "Basic dXNlcjpwYXNz"}"#, r#"{"authorization": "Basic [secret]"}"#);
    scrubs_to("Proxy-Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l", "Proxy-Authorization: Basic [secret]");
    scrubs_to("Authorization: Bearer tokenword", "Authorization: Bearer [secret]");
    // A JWT after Bearer is one secret.
    scrubs_to("Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln", "Bearer [secret]");
}

#[test]
fn url_credentials() {
    scrubs_to("postgres://app:s3cr3t@db.internal:5432/perf", "postgres://[secret]@db.internal:5432/perf");
    scrubs_to("https://user:pa55@example.com/x", "https://[secret]@example.com/x");
}

#[test]
fn several_findings_in_one_text() {
    scrubs_to(
        "user bob@example.com from 10.1.2.3 paid with 4111 1111 1111 1111, call +1-415-555-0134 (key sk-proj-A1b2C3d4E5f6G7h8I9j0)",
        "user [email] from [ip] paid with [card], call [phone] (key [secret])",
    );
}

#[test]
fn unicode_text_around_findings() {
    scrubs_to("écrire à élodie@exemple.fr — merci", "écrire à [email] — merci");
    scrubs_to("почта: иван@пример.рф", "почта: [email]");
    scrubs_to("电话 415-555-0134 或 alice@example.cn", "电话 [phone] 或 [email]");
    unchanged("naïve café — 日本語のテキスト 🚀");
}

#[test]
fn scrubbing_is_stable_on_its_output() {
    let once = scrub("alice@example.com 10.0.0.1 +44 20 7946 0958 4111111111111111 AKIAIOSFODNN7EXAMPLE").into_owned();
    assert_eq!(once, "[email] [ip] [phone] [card] [secret]");
    unchanged(&once);
}

// ---------------------------------------------------------------- precision

#[test]
fn uuids_and_hashes_stay() {
    unchanged("request 550e8400-e29b-41d4-a716-446655440000 done");
    unchanged("id 01890a5d-ac96-774b-bcce-b302099a8057");
    unchanged("id 12345678-1234-1234-1234-123456789012");
    unchanged("commit a94a8fe5ccb19ba61c4c0873d391e987982fbbd3 (short a94a8fe)");
    unchanged("sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    unchanged("digest sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    unchanged("image registry/app@sha256:4111111111111111e3b0c44298fc1c149afbf4c8996fb924");
}

#[test]
fn versions_stay() {
    unchanged("upgraded to 1.2.3 then v2.10.4 and Python 3.11.7");
    unchanged("version 1.2.3.4, version=10.0.0.1, ver: 1.2.3.4, release 4.3.2.1");
    unchanged("v1.2.3.4 and 1.2.3.4.5 and lib1.2.3.4 and 10.0.19045.3570");
    unchanged("OID 1.3.6.1.4.1.311 and 2.5.4.3.1");
    unchanged("tokenizers==0.15.2, torch>=2.1.0, numpy~=1.26.4");
}

#[test]
fn timestamps_and_times_stay() {
    unchanged("at 2026-11-27T10:15:30.123Z and 2026-11-27T10:15:30+01:00");
    unchanged("on 2026-11-27 at 10:15:30 (10:15:30.123456) -05:00 +05:30 +0000");
    unchanged("[27/Nov/2026:10:15:30 +0000] \"GET / HTTP/1.1\" 200");
    unchanged("epoch 1732702530 ms 1732702530123 us 1732702530123456 ns 1732702530123456789");
    unchanged("2026-11-27T10:15:30.123456789+10:00");
    unchanged("window 10:00:00-10:01:00 closed");
}

#[test]
fn durations_numbers_and_ids_stay() {
    unchanged("order 12345 took 1500 ms, HTTP 404, retries 3, p99 250.5ms");
    unchanged("elapsed 1h30m, PT1.5S, timeout 30s, backoff 2.5s");
    unchanged("+1500 ms vs -1500 ms, delta +12.5%, +1 vote, 1+2=3");
    unchanged("counts 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20");
    unchanged("pi 3.14159265358979323846 e 2.71828182845904523536");
    unchanged("total 1,234,567,890,123 bytes");
    unchanged("isbn 978-3-16-148410-0, ssn-like 123-45-6789 is not a phone");
    unchanged("tokens 4096 in, 1024 out, budget 8192, seq 987654321");
    unchanged("snowflake id 1541815603606036480");
}

#[test]
fn numbers_failing_luhn_stay() {
    unchanged("card 4111 1111 1111 1112");
    unchanged("ref 4111111111111112");
    unchanged("id 0000000000000000 and 0000 0000 0000 0000");
    unchanged("run 1234567890123456789012 is too long");
    unchanged("groups 41 11 11 11 11 11 11 11");
    unchanged("glued x4111111111111111 and 4111111111111111x");
}

#[test]
fn code_stays() {
    unchanged("fn main() { let x = a::b::c; }");
    unchanged("use std::vec::Vec; Vec::new(); HashMap::<K, V>::with_capacity(8)");
    unchanged("@Override public void run() {}");
    unchanged("decorated with foo@bar and @app.route(\"/\")");
    unchanged("x = a[::2] + b[1::2] + c[::-1]; d = e[10:20:2]");
    unchanged("bad::add(cafe::face)");
    unchanged("npm i lodash@4.17.21 @types/node@20.11.5");
    unchanged("ptr::null::<u8>(); <T as Trait>::CONST; ::std::io::Result");
    unchanged("if (x > 0) { return y * 2; } // TODO(alice): fix");
    unchanged("SELECT id FROM events WHERE ts > '2026-11-27' LIMIT 100;");
    unchanged("mac 00:1a:2b:3c:4d:5e and port :8080 and ratio 16:9");
    unchanged("the sk-learn-compatible-interface and task-1234567890123456");
    unchanged("Bearer authentication, bearer tokens, Bearer <token>, Bearer ${TOKEN}");
    unchanged("risk-free disk-usage-report ask-question");
}

#[test]
fn paths_and_urls_stay() {
    unchanged("/var/log/modelperf/2026-11-27.log and C:\\Users\\build\\app.exe");
    unchanged("assets/icon@2x.png and ./src/lib.rs:42:7");
    unchanged("https://example.com/api/v1/items?id=123&page=2#top");
    unchanged("nats://nats.internal:4222 and https://docs.rs/regex/1.13.2/regex/");
    unchanged("s3://bucket/path/to/object and file:///tmp/x");
}

// ---------------------------------------------------------------- precision corpus

/// Ordinary engineering text: logs, commits, versions, timestamps, code, paths, URLs, numbers.
const CORPUS: &str = include_str!("corpus/ordinary.txt");

#[test]
fn ordinary_corpus_passes_unchanged() {
    assert!(CORPUS.lines().count() >= 40);
    for line in CORPUS.lines() {
        unchanged(line);
    }
    unchanged(CORPUS);
}
