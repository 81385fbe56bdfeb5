//! The HTTP side: [`Sink`] writes points with the v1 or v2 write API, in batches, retrying
//! transient failures with exponential backoff and jitter, and answers readiness pings.
//!
//! Retry policy: a timeout, a connection error, a 5xx or a 429 is retried up to `max_retries`
//! times, waiting `backoff_initial · 2ⁿ` (capped at `backoff_max`, jittered down to half,
//! stretched to a server's `Retry-After` within the cap); then [`InfluxError::Unavailable`]
//! tells the caller to try again later with the same points. Any other 4xx is permanent: it is
//! logged with the response body and returned at once as [`InfluxError::Rejected`].
//! Retrying a write is safe: InfluxDB stores a point by (measurement, tags, timestamp), so a
//! point written twice is stored once, with the fields of the last write.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use modelperf_bus::config::ConfigError;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use tracing::{debug, error, warn};

use crate::config::{InfluxApi, InfluxConfig};
use crate::error::InfluxError;
use crate::point::{PRECISION, Point, encode};

/// Response bodies kept in errors and logs are cut to this many characters.
const MAX_BODY_CHARS: usize = 1_024;

/// What one [`Sink::write`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Points (lines) the server accepted.
    pub points: usize,
    /// Write requests that succeeded (one per batch of at most `batch_size` lines).
    pub requests: usize,
    /// Attempts repeated after transient failures.
    pub retries: u32,
    /// Points not written because none of their fields could be (non-finite floats only).
    pub dropped_points: usize,
    /// Fields not written because they were non-finite floats.
    pub dropped_fields: usize,
}

/// How requests authenticate.
#[derive(Clone)]
enum Auth {
    None,
    Basic { user: String, password: Option<String> },
    Token(HeaderValue),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Basic { user, .. } => write!(f, "Basic({user}, <redacted>)"),
            Auth::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

/// An HTTP answer that is not transient: a success, or a permanent refusal for the caller
/// to classify.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: String,
    pub(crate) attempts: u32,
}

/// A failed attempt that may succeed later.
struct Transient {
    status: Option<u16>,
    reason: String,
    retry_after: Option<Duration>,
}

/// Writes points to InfluxDB. Cheap to clone; clones share the connection pool.
#[derive(Debug, Clone)]
pub struct Sink {
    config: Arc<InfluxConfig>,
    http: reqwest::Client,
    /// `url` without a trailing slash.
    base: String,
    auth: Auth,
}

impl Sink {
    /// Checks `config` and prepares the HTTP client; connects lazily (see [`Sink::ping`]).
    pub fn new(config: InfluxConfig) -> Result<Self, InfluxError> {
        config.validate()?;
        let invalid = |key: &str, reason: String| {
            InfluxError::Config(ConfigError::Invalid { key: format!("MODELPERF_INFLUX__{key}"), reason })
        };
        let http = modelperf_telemetry::http::client()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()
            .map_err(|e| invalid("URL", format!("cannot build the http client: {e}")))?;
        let token = |text: String, key: &str| {
            let mut value = HeaderValue::from_str(&text)
                .map_err(|_| invalid(key, "contains characters not allowed in a header".into()))?;
            value.set_sensitive(true);
            Ok::<_, InfluxError>(Auth::Token(value))
        };
        let auth = match (config.api, &config.user, &config.token) {
            (InfluxApi::V1, Some(user), _) => Auth::Basic { user: user.clone(), password: config.password.clone() },
            (_, _, Some(t)) => token(format!("Token {t}"), "TOKEN")?,
            // InfluxDB 1.8's v2 endpoint takes `user:password` as the token.
            (InfluxApi::V2, Some(user), None) => {
                token(format!("Token {user}:{}", config.password.as_deref().unwrap_or_default()), "PASSWORD")?
            }
            (_, None, None) => Auth::None,
        };
        let base = config.url.trim_end_matches('/').to_owned();
        Ok(Self { config: Arc::new(config), http, base, auth })
    }

    /// The settings in use.
    pub fn config(&self) -> &InfluxConfig {
        &self.config
    }

    /// Whether the server answers `GET /ping` now (one attempt, for readiness).
    pub async fn ping(&self) -> Result<(), InfluxError> {
        let what = "ping";
        let url = format!("{}/ping", self.base);
        let reply = match self.attempt(|| self.http.get(&url)).await {
            Ok(reply) => reply,
            Err(t) => {
                return Err(InfluxError::Unavailable {
                    what: what.into(),
                    attempts: 1,
                    status: t.status,
                    reason: t.reason,
                });
            }
        };
        expect_success(what, Reply { attempts: 1, ..reply }).map(drop)
    }

    /// Writes `points` of `window` (v1: to the window's retention policy, see
    /// [`InfluxConfig::retention_policy_for`]; v2: to the bucket) in batches of at most
    /// `batch_size` lines. Non-finite floats are dropped and counted, never sent.
    ///
    /// On error, earlier batches may have been stored; writing all the points again is safe
    /// (a point overwrites itself).
    pub async fn write(&self, window: &str, points: &[Point]) -> Result<WriteStats, InfluxError> {
        let encoded = encode(points, self.config.batch_size);
        let mut stats = WriteStats {
            dropped_points: encoded.dropped_points,
            dropped_fields: encoded.dropped_fields,
            ..WriteStats::default()
        };
        if encoded.dropped_fields > 0 {
            debug!(
                window,
                dropped_fields = encoded.dropped_fields,
                dropped_points = encoded.dropped_points,
                "non-finite fields not written"
            );
        }
        let (url, params, what) = self.write_target(window);
        for body in encoded.batches {
            let body = Bytes::from(body);
            let request = || {
                self.http.post(&url).query(&params).header(CONTENT_TYPE, "text/plain; charset=utf-8").body(body.clone())
            };
            let reply = expect_success(&what, self.request(&what, request).await?)?;
            stats.requests += 1;
            stats.retries += reply.attempts - 1;
        }
        stats.points = encoded.lines;
        Ok(stats)
    }

    /// URL, query parameters and a description of the write target of `window`.
    fn write_target(&self, window: &str) -> (String, Vec<(&'static str, String)>, String) {
        let c = &self.config;
        match c.api {
            InfluxApi::V1 => {
                let mut params = vec![("db", c.database.clone())];
                let rp = c.retention_policy_for(window);
                if let Some(rp) = rp {
                    params.push(("rp", rp.to_owned()));
                }
                params.push(("precision", PRECISION.to_owned()));
                let what = format!("write to {}.{}", c.database, rp.unwrap_or("<default policy>"));
                (format!("{}/write", self.base), params, what)
            }
            InfluxApi::V2 => {
                let bucket = c.bucket.clone().unwrap_or_default();
                let mut params = Vec::new();
                if let Some(org) = &c.org {
                    params.push(("org", org.clone()));
                }
                params.push(("bucket", bucket.clone()));
                params.push(("precision", PRECISION.to_owned()));
                (format!("{}/api/v2/write", self.base), params, format!("write to bucket {bucket}"))
            }
        }
    }

    /// The base URL (without a trailing slash).
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// The HTTP client.
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends the request `make` builds until it gets a non-transient answer or runs out of
    /// attempts. A 4xx comes back as a [`Reply`] for the caller to classify.
    pub(crate) async fn request(
        &self,
        what: &str,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Reply, InfluxError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let failure = match self.attempt(&make).await {
                Ok(reply) => return Ok(Reply { attempts, ..reply }),
                Err(failure) => failure,
            };
            if attempts > self.config.max_retries {
                return Err(InfluxError::Unavailable {
                    what: what.to_owned(),
                    attempts,
                    status: failure.status,
                    reason: failure.reason,
                });
            }
            let delay = self.backoff(attempts, failure.retry_after);
            warn!(what, attempt = attempts, delay_ms = delay.as_millis() as u64, error = %failure.reason, "influxdb request failed, retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// One attempt: a reply, or a failure worth retrying.
    async fn attempt(&self, make: impl Fn() -> reqwest::RequestBuilder) -> Result<Reply, Transient> {
        let response = match self.authorize(make()).send().await {
            Ok(response) => response,
            Err(e) => return Err(Transient { status: None, reason: error_chain(&e), retry_after: None }),
        };
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let body = match response.text().await {
            Ok(body) => body,
            Err(e) => {
                let reason = format!("{status}, then reading the body failed: {}", error_chain(&e));
                return Err(Transient { status: Some(status), reason, retry_after });
            }
        };
        if status >= 500 || status == 429 {
            return Err(Transient { status: Some(status), reason: format!("{status}: {}", cut(&body)), retry_after });
        }
        Ok(Reply { status, body, attempts: 1 })
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Auth::None => request,
            Auth::Basic { user, password } => request.basic_auth(user, password.as_ref()),
            Auth::Token(value) => request.header(AUTHORIZATION, value.clone()),
        }
    }

    /// The delay before retry number `retry` (1-based): exponential, capped, jittered down to
    /// half so that replicas do not retry in lockstep, never shorter than the server asked.
    fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let c = &self.config;
        let exponential = c.backoff_initial.saturating_mul(2u32.saturating_pow(retry.saturating_sub(1)));
        let capped = exponential.min(c.backoff_max);
        let jittered = capped.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        jittered.max(retry_after.unwrap_or_default()).min(c.backoff_max)
    }
}

/// A success, or the permanent error a 4xx (or an unexpected status) means, logged with the
/// server's explanation.
pub(crate) fn expect_success(what: &str, reply: Reply) -> Result<Reply, InfluxError> {
    if (200..300).contains(&reply.status) {
        return Ok(reply);
    }
    let body = cut(&reply.body);
    error!(what, status = reply.status, body = %body, "influxdb rejected the request; not retrying");
    Err(InfluxError::Rejected { what: what.to_owned(), status: reply.status, body, attempts: reply.attempts })
}

/// `Retry-After` in seconds (the HTTP-date form is ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?;
    text.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// An error with its sources (`connection refused` sits a few levels down in reqwest's).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The start of a response body, trimmed.
pub(crate) fn cut(body: &str) -> String {
    let body = body.trim();
    match body.char_indices().nth(MAX_BODY_CHARS) {
        Some((end, _)) => format!("{}…", &body[..end]),
        None => body.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let sink = Sink::new(InfluxConfig {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..InfluxConfig::default()
        })
        .unwrap();
        for _ in 0..50 {
            let first = sink.backoff(1, None);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100), "{first:?}");
            let third = sink.backoff(3, None);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400), "{third:?}");
            assert!(sink.backoff(40, None) <= Duration::from_secs(1));
            assert_eq!(sink.backoff(1, Some(Duration::from_millis(700))), Duration::from_millis(700));
            assert_eq!(sink.backoff(1, Some(Duration::from_secs(60))), Duration::from_secs(1));
        }
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let sink = Sink::new(InfluxConfig {
            user: Some("writer".into()),
            password: Some("pw-secret".into()),
            ..InfluxConfig::default()
        })
        .unwrap();
        let text = format!("{sink:?}");
        assert!(!text.contains("pw-secret"), "{text}");
        let sink = Sink::new(InfluxConfig { token: Some("tok-secret".into()), ..InfluxConfig::default() }).unwrap();
        let text = format!("{sink:?}");
        assert!(!text.contains("tok-secret"), "{text}");
    }

    #[test]
    fn bodies_are_cut() {
        let long = "é".repeat(MAX_BODY_CHARS + 10);
        assert_eq!(cut(&long).chars().count(), MAX_BODY_CHARS + 1);
        assert_eq!(cut(" short \n"), "short");
    }
}
