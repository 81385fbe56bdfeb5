//! `modelperf-influx` owns the way to InfluxDB: the `[influx]` settings, points and their line
//! protocol (built with InfluxData's `influxdb-line-protocol` crate), and a [`Sink`] that
//! writes them with the v1 (`/write?db=&rp=`) or v2 (`/api/v2/write?org=&bucket=`) API,
//! creates the database and one retention policy per window (v1), and answers readiness pings.
//!
//! ```no_run
//! use modelperf_influx::{InfluxConfig, Point, Sink};
//!
//! # async fn demo() -> Result<(), modelperf_influx::InfluxError> {
//! let sink = Sink::new(InfluxConfig::default())?;
//! sink.ensure().await?; // database `modelperf`, policies `1m` (30 d) and `1h` (730 d)
//! let point = Point::new("model_perf", 1_700_000_040)
//!     .tag("window", "1m")
//!     .tag("model", "gpt-4o")
//!     .int("count", 12)
//!     .float("latency_p50_ms", 812.5);
//! let stats = sink.write("1m", &[point]).await?; // into modelperf."1m"
//! assert_eq!(stats.points, 1);
//! # Ok(())
//! # }
//! ```
//!
//! Errors say what the caller should do ([`InfluxError::class`]): retry later with the same
//! points (unreachable, timed out, 5xx, 429 — after bounded retries with backoff), give up on
//! this data (a 4xx such as a field type conflict), or fix the settings or the server first.
//!
//! Layout:
//! - [`config`]: [`InfluxConfig`], [`InfluxApi`], [`RetentionPolicy`] and their validation;
//! - [`point`]: [`Point`], [`FieldValue`], [`encode`] into batches of lines, the escaping rules;
//! - [`sink`]: [`Sink`] (`write`, `ping`), [`WriteStats`], the retry policy;
//! - `ensure`: [`Sink::ensure`], the database and retention policies (v1), the bucket check (v2);
//! - [`error`]: [`InfluxError`] and its classes.

pub mod config;
mod ensure;
pub mod error;
pub mod point;
pub mod sink;

pub use config::{InfluxApi, InfluxConfig, RetentionPolicy};
pub use error::InfluxError;
pub use modelperf_bus::ErrorClass;
pub use point::{Encoded, FieldValue, PRECISION, Point, encode};
pub use sink::{Sink, WriteStats};
