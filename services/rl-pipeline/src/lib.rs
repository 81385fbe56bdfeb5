//! `modelperf-rl-pipeline`: joins every event of a task into one (state, action, reward)
//! sample and groups samples into exactly-once training batches on `rl.batches.<dataset>`.
//!
//! This slice holds the pure core, driven by tests: the per-task join, the reward, and batch
//! assembly with its deterministic ids. The partition owners, the ledger and the service follow.
//!
//! Layout:
//! - [`config`]: `[rl]` — batching, join window and grace, required parts, reward weights and
//!   normalisation references;
//! - [`join`]: the open joins of a partition, and when a task becomes a sample;
//! - [`reward`]: reward components, their normalisation and the weighted reward;
//! - [`batch`]: samples → batches, `batch_id`, `content_hash`, statistics, quality filters;
//! - [`state`]: a partition's joins, open batches, and batches decided before they are published.

pub mod batch;
pub mod config;
pub mod join;
pub mod reward;
pub mod state;
