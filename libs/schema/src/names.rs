//! Names on the wire: subject tokens, dataset names and windows.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest subject token or dataset name.
pub const MAX_TOKEN_LEN: usize = 64;

/// Makes a subject token or dataset name: `[A-Za-z0-9_-]`, at most 64 characters; any other
/// character becomes `_`. An empty input becomes `_`.
pub fn subject_token(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_TOKEN_LEN)
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .collect();
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// A tumbling window length, written as configured: a number and a unit (`10s`, `1m`, `1h`, `1d`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WindowSpec {
    name: String,
    secs: u64,
}

impl WindowSpec {
    /// The name as configured, e.g. `1m`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The length.
    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.secs)
    }

    /// The length in seconds.
    pub fn secs(&self) -> u64 {
        self.secs
    }
}

impl fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl FromStr for WindowSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("window `{s}` must be a number and a unit (s, m, h, d)"))?;
        let mult = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(format!("window `{s}` has unit `{unit}`; use s, m, h or d")),
        };
        if n == 0 {
            return Err(format!("window `{s}` must be longer than zero"));
        }
        Ok(Self { name: s.to_owned(), secs: n * mult })
    }
}

impl Serialize for WindowSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for WindowSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_sanitised_and_bounded() {
        assert_eq!(subject_token("code_edit"), "code_edit");
        assert_eq!(subject_token("a.b c/d>*"), "a_b_c_d__");
        assert_eq!(subject_token(""), "_");
        assert_eq!(subject_token(&"x".repeat(100)).len(), 64);
    }

    #[test]
    fn windows_parse() {
        let w: WindowSpec = "10s".parse().unwrap();
        assert_eq!((w.name(), w.secs()), ("10s", 10));
        assert_eq!("1h".parse::<WindowSpec>().unwrap().secs(), 3600);
        assert!("0m".parse::<WindowSpec>().is_err());
        assert!("5x".parse::<WindowSpec>().is_err());
        assert!("m".parse::<WindowSpec>().is_err());
    }
}
