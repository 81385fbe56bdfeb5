//! `modelperf-aggregator`: event-time windows over the clean events, with mergeable latency
//! sketches, persisted to InfluxDB. This slice holds the window accumulator; partition owners,
//! the finaliser and the InfluxDB writer follow.
//!
//! Layout:
//! - [`window`]: one series in one window — folding events, merging partials, the metrics message;
//! - [`windows`]: a partition's event-time windows, watermark, revisions and `too_late`.

pub mod window;
pub mod windows;
