//! Cross-service end-to-end and fault tests of modelperf; the `bus-worker` binary is a small
//! process built on `modelperf-bus` that the crash tests kill with `kill -9`; the benchmark
//! binaries (`collector-bench`, `aggregator-bench`, `rl-bench`) share [`bench`]; the `faults`
//! binary (`make test-faults`) is built on [`faults`].

pub mod bench;
pub mod faults;
