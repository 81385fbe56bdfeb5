//! `modelperf-bus` owns everything between the services and NATS JetStream: connecting with
//! every authentication option, the contract's topology ensured at start-up, the partition
//! function, publishing with `Nats-Msg-Id`, the stateless consume → process → publish → ack
//! runner with its dead-letter handling, leases, checkpoints and the stateful owner loop.
//!
//! Layout:
//! - [`config`]: `[nats]` and `[bus]` settings and the layered configuration loader;
//! - [`connect`]: connecting and the JetStream context;
//! - [`topology`]: the declarative table of streams, consumers, buckets, and `ensure`;
//! - [`partition`]: the partition function;
//! - [`publish`]: [`Outgoing`], publish with an awaited ack, dead letters;
//! - [`runner`]: the stateless runner and its [`Handler`] trait;
//! - [`lease`]: one owner at a time per key;
//! - [`checkpoint`]: compare-and-set checkpoints;
//! - [`owner`]: the stateful apply → checkpoint → ack-all loop;
//! - [`process`]: a service process's HTTP endpoint, connection, topology and ordered end;
//! - [`share`]: partitions shared among replicas by leases, fair share and hand-over;
//! - [`error`]: [`BusError`] and its classes.

pub mod checkpoint;
pub mod config;
pub mod connect;
pub mod error;
pub mod lease;
pub mod owner;
pub mod partition;
pub mod process;
pub mod publish;
pub mod runner;
pub mod share;
pub mod topology;

pub use checkpoint::{Checkpoint, CheckpointStore};
pub use config::{BusConfig, ConfigError, HttpConfig, NatsConfig};
pub use connect::{connect, jetstream};
pub use error::{BusError, ErrorClass};
pub use lease::{Lease, Leases};
pub use owner::{OwnerConfig, PartitionOwner, open_at, run_owner};
pub use partition::partition_of;
pub use process::Process;
pub use publish::{Origin, Outgoing, TRACEPARENT, ack_chunk, dead_letter, publish, send, send_all};
pub use runner::{Failure, Handler, Incoming, RunStats, RunnerConfig, run};
pub use share::Share;
pub use topology::{Service, Topology, buckets, streams};
