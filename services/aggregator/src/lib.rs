//! `modelperf-aggregator`: event-time windows over the clean events, with mergeable latency
//! sketches, persisted exactly once to InfluxDB and `perf.metrics.<window>`.
//!
//! Every replica runs the same roles, each under a lease:
//! - **partition owners** (`aggregator.p<N>`, consumer `aggregator-p<N>`): fold partition `N`'s
//!   events into windows and publish partials and watermark reports on
//!   `perf.partials.<window>.<N>`. An instance takes its fair share of the partitions (the
//!   partitions divided by the live instances, which announce themselves with a
//!   `aggregator.member.<instance>` lease) and hands extra ones back, so adding a replica
//!   spreads the work;
//! - the **finaliser** (`aggregator.final`, consumer `aggregator-final`): one replica merges the
//!   partitions' partials, rolls up long windows, and is the only writer to InfluxDB and
//!   `perf.metrics.*`; the others stand by.
//!
//! Layout:
//! - [`config`]: `[aggregator]` and the shared sections;
//! - [`window`]: one series in one window — folding events, merging partials, the metrics message;
//! - [`windows`]: a partition's event-time windows, watermark, revisions and `too_late`;
//! - [`series`]: each series stored once per window length and partition, looked up without allocating;
//! - [`owner`]: the partition owner;
//! - [`finaliser`]: the finaliser's decisions;
//! - [`persist`]: InfluxDB points, metrics messages and the finalised-window bucket;
//! - [`reaggregate`]: rebuilding the windows of a period from `PERF_EVENTS`;
//! - [`service`]: the roles' loops and the process ([`App`]).

pub mod config;
pub mod finaliser;
pub mod owner;
pub mod persist;
pub mod reaggregate;
pub mod series;
pub mod service;
pub mod window;
pub mod windows;

pub use config::Config;
pub use service::App;

/// The stage name: DLQ subject `perf.dlq.aggregator`.
pub const STAGE: &str = "aggregator";
