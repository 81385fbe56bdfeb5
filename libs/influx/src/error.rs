//! Errors of the sink, each classed so the caller knows whether to try again later.

use modelperf_bus::ErrorClass;
use modelperf_bus::config::ConfigError;

/// Why a write, `ensure` or `ping` did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum InfluxError {
    /// The settings cannot be used (fatal).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The server could not be reached, timed out, or answered 5xx or 429 on every attempt.
    /// Nothing was lost: the same points can be written again later (a repeated point
    /// overwrites itself). Retryable.
    #[error("influxdb unavailable for {what} after {attempts} attempt(s), retry later: {reason}")]
    Unavailable {
        /// The request, e.g. `write to modelperf.1m`.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// The HTTP status of the last attempt, when there was a response.
        status: Option<u16>,
        /// The last failure.
        reason: String,
    },
    /// The server refused the request with a 4xx other than 429 (bad data, a field type
    /// conflict, points beyond the retention policy, bad credentials, no such database):
    /// sending it again will not help. Never retried.
    #[error("influxdb rejected {what} with {status}: {body}")]
    Rejected {
        /// The request.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The start of the response body (the server's explanation).
        body: String,
        /// Attempts made (more than one only when earlier attempts failed transiently).
        attempts: u32,
    },
    /// An InfluxQL statement of `ensure` failed (fatal: fix the server or the settings).
    #[error("influxdb statement `{statement}` failed: {message}")]
    Statement {
        /// The statement.
        statement: String,
        /// The server's error.
        message: String,
    },
    /// v2: the bucket does not exist, or the token may not see it (fatal; the sink never
    /// creates buckets).
    #[error(
        "influxdb bucket {bucket:?}{org} not found or not visible to the token: create it with the retention you want"
    )]
    MissingBucket {
        /// The bucket.
        bucket: String,
        /// ` in org "<org>"`, or empty.
        org: String,
    },
    /// The server answered something this client does not understand (fatal: is the URL an
    /// InfluxDB?).
    #[error("unexpected response from influxdb to {what}: {reason}")]
    Unexpected {
        /// The request.
        what: String,
        /// What was wrong.
        reason: String,
    },
}

impl InfluxError {
    /// The class of this error: [`ErrorClass::Retry`] when the server was unreachable or
    /// overloaded (try again later, keep the data); [`ErrorClass::Terminate`] when the server
    /// refused this data for good (400, 413, 422, ...); [`ErrorClass::Fatal`] when the settings
    /// or the server must be fixed first (401, 403, 404 such as a missing database,
    /// statements, missing bucket, bad configuration) — the data itself is fine then.
    pub fn class(&self) -> ErrorClass {
        match self {
            InfluxError::Unavailable { .. } => ErrorClass::Retry,
            InfluxError::Rejected { status: 401 | 403 | 404 | 405, .. } => ErrorClass::Fatal,
            InfluxError::Rejected { .. } => ErrorClass::Terminate,
            InfluxError::Config(_)
            | InfluxError::Statement { .. }
            | InfluxError::MissingBucket { .. }
            | InfluxError::Unexpected { .. } => ErrorClass::Fatal,
        }
    }

    /// Whether trying again later may succeed (only [`InfluxError::Unavailable`]).
    pub fn is_retryable(&self) -> bool {
        self.class() == ErrorClass::Retry
    }

    /// The HTTP status that caused the error, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            InfluxError::Unavailable { status, .. } => *status,
            InfluxError::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Attempts made by the request that failed (0 when no request was sent).
    pub fn attempts(&self) -> u32 {
        match self {
            InfluxError::Unavailable { attempts, .. } | InfluxError::Rejected { attempts, .. } => *attempts,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(status: u16) -> InfluxError {
        InfluxError::Rejected { what: "write".into(), status, body: String::new(), attempts: 1 }
    }

    #[test]
    fn classes() {
        let unavailable =
            InfluxError::Unavailable { what: "write".into(), attempts: 3, status: Some(503), reason: "busy".into() };
        assert!(unavailable.is_retryable());
        assert!(unavailable.to_string().contains("retry later"));
        assert_eq!(rejected(400).class(), ErrorClass::Terminate);
        assert_eq!(rejected(413).class(), ErrorClass::Terminate);
        assert_eq!(rejected(401).class(), ErrorClass::Fatal);
        assert_eq!(rejected(404).class(), ErrorClass::Fatal);
        assert!(!rejected(400).is_retryable());
        let missing = InfluxError::MissingBucket { bucket: "b".into(), org: String::new() };
        assert_eq!(missing.class(), ErrorClass::Fatal);
    }
}
