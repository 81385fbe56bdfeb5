//! `modelperf-rl-pipeline`: joins every event of a task into one (state, action, reward)
//! sample and groups samples into exactly-once training batches on `rl.batches.<dataset>`.
//!
//! Partition owners (`rl.p<N>`, shared among replicas by leases) read `perf.events.*.<N>`,
//! join, and publish batches exactly once: the decision to close a batch is checkpointed before
//! the batch goes out, a create-only ledger keeps every task in at most one batch, and the
//! stream is the changelog the open joins are rebuilt from after a restart.
//!
//! Layout:
//! - [`config`]: `[rl]` — batching, join window and grace, required parts, reward weights and
//!   normalisation references;
//! - [`join`]: the open joins of a partition, and when a task becomes a sample;
//! - [`reward`]: reward components, their normalisation and the weighted reward;
//! - [`batch`]: samples → batches, `batch_id`, `content_hash`, statistics, quality filters;
//! - [`state`]: a partition's joins, open batches, and batches decided before they are published;
//! - [`service`]: the partition loop, the ledger, publishing, the process ([`App`]).

pub mod batch;
pub mod config;
pub mod join;
pub mod reward;
pub mod service;
pub mod state;

pub use config::Config;
pub use service::App;
