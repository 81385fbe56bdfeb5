//! `modelperf-monitor`: alert rules over the window metrics (`perf.metrics.*`) and the
//! analyzer's anomalies (`perf.anomalies.*`), the alert lifecycle, and notifications to
//! Prometheus Alertmanager, Slack, PagerDuty and signed webhooks through the `PERF_OUTBOX` work
//! queue.
//!
//! One replica is active (lease `monitor`); the others wait for the lease. The active replica
//! checkpoints its alerts in `modelperf_state` (`monitor.alerts`), publishes every transition on
//! `perf.alerts.<state>` and enqueues deliveries with deterministic message ids; its outbox
//! worker delivers them at least once, in order per receiver, with retries, backoff and jitter,
//! and idempotency keys `<fingerprint>:<transition>`.
//!
//! Layout:
//! - [`config`]: `[monitor]` — rules file, intervals, Alertmanager, receivers, routes, delivery;
//! - [`rules`]: the rules file, its validation, and what one rule sees in a window or anomaly;
//! - [`engine`]: the lifecycle (pending → firing → resolved, flap damping), pure;
//! - [`health`]: the built-in pipeline health rules and their checks;
//! - [`router`]: routes, grouping, repeats and Alertmanager resends → deliveries, pure;
//! - [`receivers`]: the receivers' payloads, signatures, and one HTTP request;
//! - [`delivery`]: the outbox worker;
//! - [`service`]: the evaluator loop, checkpoints, the lease, the process ([`App`]).

pub mod config;
pub mod delivery;
pub mod engine;
pub mod health;
pub mod receivers;
pub mod router;
pub mod rules;
pub mod service;

pub use config::Config;
pub use rules::Rules;
pub use service::App;
