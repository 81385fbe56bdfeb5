//! The whole-pipeline fault harness behind `make test-faults` (`docs/faults.md`): the five
//! service binaries against real servers on loopback, a fault injected under load, and exact
//! accounting of what came out afterwards.
//!
//! Layout:
//! - [`servers`]: the NATS server (one, or a three-node JetStream cluster), InfluxDB,
//!   Alertmanager that can be stopped and started on its port, and a webhook receiver that
//!   records every request.
//! - [`pipeline`]: the five services as child processes, each restartable, stoppable (`SIGSTOP`)
//!   and killable (`kill -9`), on one configuration file.
//! - [`load`]: a publisher of tasks with known event ids that retries every publish until the
//!   stream acknowledges it (the same `Nats-Msg-Id`, so a retry is never a second event).
//! - [`account`]: reading the streams, InfluxDB and the receivers back, and the accounting.
//! - [`summary`]: the table printed and written at the end.

pub mod account;
pub mod load;
pub mod pipeline;
pub mod servers;
pub mod summary;
