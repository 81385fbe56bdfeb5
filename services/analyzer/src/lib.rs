//! `modelperf-analyzer`: anomalies, trends and regressions from the metrics windows; model
//! comparisons and reports.
//!
//! One active replica holds the lease `analyzer` and reads `PERF_METRICS` in order; it keeps a
//! robust baseline per series and metric, opens an anomaly when a window's evidence is strong
//! and its effect large, resolves it with hysteresis, and announces only the changes on
//! `perf.anomalies.<severity>`. Time is the windows' own, so a day of metrics replays in
//! seconds and a replay after a restart reproduces the baselines.
//!
//! Layout:
//! - [`config`]: `[analyzer]` — windows analysed, thresholds;
//! - [`baseline`]: the robust, drift-corrected baseline of one metric;
//! - [`detect`]: one series' checks and their open → resolved state machine;
//! - [`analysis`]: every series, the frames that drive them, what a checkpoint holds;
//! - [`trend`]: Mann–Kendall (Hamed–Rao) and Theil–Sen trends per series and metric;
//! - [`regression`]: each series' current period against its own baseline (bootstrap p95
//!   ratio, z and Welch tests, Holm over a run), on a schedule;
//! - [`compare`]: model comparison for a task type and period — observational (Wilson, bootstrap
//!   percentiles, pairwise tests with Holm or Benjamini–Hochberg, tiers, Pareto front,
//!   inverse-propensity weighting) and paired for benchmark runs (McNemar, Wilcoxon, paired t);
//! - [`report`]: reports (Markdown, JSON, HTML with SVG charts), scheduled under the lease
//!   `analyzer.reports`;
//! - [`sim`]: simulated streams with injected changes (the detection benchmark);
//! - [`service`]: the lease, the owner loop, publishing, the process ([`App`]).

pub mod analysis;
pub mod baseline;
pub mod compare;
pub mod config;
pub mod detect;
pub mod regression;
pub mod report;
pub mod service;
pub mod sim;
pub mod trend;

pub use config::Config;
pub use service::App;
