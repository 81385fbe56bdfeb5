//! What the benchmark binaries share: finding the service binaries next to them, child
//! processes killed on every way out, resident memory from `/proc`, medians, a deterministic
//! mixer for synthetic workloads, pre-loading clean events, and the identity partition owner.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::Context;
use async_nats::jetstream::context::PublishAckFuture;
use modelperf_bus::{Checkpoint, Failure, Incoming, Outgoing, PartitionOwner};
use modelperf_schema::Event;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The release binary `name` next to the running benchmark; an error naming the build command
/// when it is missing.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::current_exe()?.parent().context("exe dir")?.to_path_buf();
    let path = dir.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: cargo build --release --workspace --bins (or make bench)",
        path.display()
    );
    Ok(path)
}

/// A child process, killed on every way out.
#[derive(Debug)]
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Resident memory of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system) `pid` has used so far, in seconds (Linux's `USER_HZ` of 100).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// CPU used by a set of processes over an interval.
#[derive(Debug)]
pub struct CpuMeter {
    pids: Vec<(String, u32, f64)>,
    started: Instant,
}

impl CpuMeter {
    /// Starts measuring the named processes.
    pub fn start(pids: &[(&str, u32)]) -> Self {
        let pids = pids.iter().map(|(n, p)| ((*n).to_owned(), *p, cpu_seconds(*p).unwrap_or(0.0))).collect();
        Self { pids, started: Instant::now() }
    }

    /// Each process's share of one core since the start, e.g. `bench 87 %, nats-server 95 %`.
    pub fn report(&self) -> String {
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        let parts: Vec<String> = self
            .pids
            .iter()
            .map(|(name, pid, from)| {
                let used = cpu_seconds(*pid).unwrap_or(*from) - from;
                format!("{name} {:.0} %", 100.0 * used / wall)
            })
            .collect();
        parts.join(", ")
    }
}

/// Samples the resident memory of `pid` every 200 ms until `stop`; returns the peak (KiB).
pub fn watch_rss(pid: u32, stop: CancellationToken) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        while !stop.is_cancelled() {
            peak = peak.max(rss_kib(pid).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        peak
    })
}

/// The median (the upper one of an even count); `NaN` for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A deterministic pseudo-random 64-bit value of `x` (SplitMix64).
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The sum of every sample of the Prometheus metric `name` (any labels) in `text`.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Messages stored in `stream`.
pub async fn messages(js: &Context, stream: &str) -> anyhow::Result<u64> {
    Ok(js.get_stream(stream).await?.info().await?.state.messages)
}

/// Publishes clean events as the collector writes them (`perf.events.<kind>.<p>`, MessagePack,
/// `Nats-Msg-Id` = event id), with up to [`Preloader::IN_FLIGHT`] acks pipelined, and records
/// the last stream sequence of each partition.
#[derive(Debug)]
pub struct Preloader {
    js: Context,
    partitions: u32,
    acks: VecDeque<(u32, PublishAckFuture)>,
    /// The last stream sequence of each partition (0: none).
    pub last_seq: Vec<u64>,
    /// Events published.
    pub events: u64,
    started: Instant,
}

impl Preloader {
    /// Publish acks awaited at once.
    pub const IN_FLIGHT: usize = 2_000;

    pub fn new(js: &Context, partitions: u32) -> Self {
        Self {
            js: js.clone(),
            partitions,
            acks: VecDeque::new(),
            last_seq: vec![0; partitions as usize],
            events: 0,
            started: Instant::now(),
        }
    }

    /// Publishes `e` to its partition.
    pub async fn publish(&mut self, e: &Event) -> anyhow::Result<()> {
        let id = e.id.clone().context("event without id")?;
        let part = modelperf_bus::partition_of(e.partition_key(), self.partitions);
        let subject = format!("perf.events.{}.{part}", e.kind().as_str());
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        let body = modelperf_schema::to_msgpack(e)?;
        self.acks.push_back((part, self.js.publish_with_headers(subject, headers, body.into()).await?));
        if self.acks.len() >= Self::IN_FLIGHT {
            self.settle_one().await?;
        }
        self.events += 1;
        Ok(())
    }

    async fn settle_one(&mut self) -> anyhow::Result<()> {
        let (part, ack) = self.acks.pop_front().context("an ack in flight")?;
        let seq = ack.await?.sequence;
        let last = &mut self.last_seq[part as usize];
        *last = (*last).max(seq);
        Ok(())
    }

    /// Awaits every ack; returns how long the pre-load took.
    pub async fn finish(&mut self) -> anyhow::Result<Duration> {
        while !self.acks.is_empty() {
            self.settle_one().await?;
        }
        Ok(self.started.elapsed())
    }
}

/// Pulls, checkpoints and acknowledges like a partition owner, but looks at nothing.
#[derive(Debug)]
pub struct Identity;

impl PartitionOwner for Identity {
    fn apply(&mut self, _msg: &Incoming<'_>) -> Result<Vec<Outgoing>, Failure> {
        Ok(Vec::new())
    }

    fn checkpoint(&self, applied_seq: u64) -> Checkpoint {
        Checkpoint { applied_seq, ..Checkpoint::default() }
    }
}

/// An owner that reports the moment it has applied its partition's last sequence.
#[derive(Debug)]
pub struct Timed<O> {
    pub inner: O,
    pub last_seq: u64,
    pub done: Option<mpsc::UnboundedSender<Instant>>,
}

impl<O: PartitionOwner> PartitionOwner for Timed<O> {
    fn replay(&mut self, msg: &Incoming<'_>) {
        self.inner.replay(msg);
    }

    fn apply(&mut self, msg: &Incoming<'_>) -> Result<Vec<Outgoing>, Failure> {
        let out = self.inner.apply(msg);
        if msg.seq >= self.last_seq
            && let Some(done) = self.done.take()
        {
            let _ = done.send(Instant::now());
        }
        out
    }

    fn tick(&mut self, caught_up: bool) -> Vec<Outgoing> {
        self.inner.tick(caught_up)
    }

    fn published(&mut self) {
        self.inner.published();
    }

    fn checkpoint(&self, applied_seq: u64) -> Checkpoint {
        self.inner.checkpoint(applied_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_adds_every_label_set_of_one_name_only() {
        let text = "# TYPE a_total counter\na_total{d=\"x\"} 3\na_total{d=\"y\"} 4.5\na_total_other 100\na_total 1\n";
        assert_eq!(metric_sum(text, "a_total"), 8.5);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let spin: u64 = (0..20_000_000u64).fold(0, |a, x| a ^ x.wrapping_mul(2_654_435_761));
        assert!(spin != 1);
        let used = cpu_seconds(std::process::id()).expect("our own /proc/<pid>/stat");
        assert!(used > 0.0 && used < 1e6, "{used}");
    }
}
