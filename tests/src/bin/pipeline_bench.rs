//! `pipeline-bench`: the whole pipeline on this machine (`make bench`; results in
//! docs/BENCHMARKS.md).
//!
//! One nats-server, one InfluxDB and one Alertmanager on loopback with temporary data; the five
//! release service binaries as child processes (8 partitions, the contract's defaults, windows
//! `10s`, `1m` and `1h` with 5 s lateness as `make run`), driven by `modelperf load` (JSON
//! bodies to `perf.raw.<kind>`, every publish ack awaited). In order:
//!
//! 1. **Plain JetStream**: `modelperf load --rate 0` into `PERF_RAW` with nothing consuming
//!    (publish-with-ack), then the stored messages drained by a plain pull consumer that acks
//!    each one (consume-with-ack).
//! 2. **Identity pipeline**: the hops that carry every event, with the same streams, durable
//!    consumers, partitions, client settings and batch sizes as the services, but stages that
//!    do not decode: `PERF_RAW` → republish the bytes to `perf.events.<kind>.<p>` (the
//!    collector's runner and in-flight bound), then `PERF_EVENTS` → the aggregator's and the RL
//!    pipeline's partition owners (the owner loop: pull, checkpoint every second, ack-all),
//!    which fold nothing. Each hop has its own connection, as the services do. Rate search.
//! 3. **The pipeline**: the same rate search on the five services.
//! 4. **Three runs** of `--run-secs` at the highest rate that held, each from purged streams,
//!    empty state and a fresh InfluxDB database; after each, the accounting (clean + dead
//!    letters = published, InfluxDB's `10s` counts = clean events) and the latencies.
//! 5. **A run at 5 000 events/s** (`--steady-rate`) for the latency target.
//!
//! A rate search steps up from `--start-rate` by `--growth` in `--step-secs` steps while a step
//! holds: the generator reaches 95 % of the rate, and at the step's end every consumer's lag
//! (pending + unacknowledged) is under 3 s of the rate and not above its lag at mid-step plus
//! 1 s of the rate.
//!
//! Latencies are read back from the streams after a run, on the server's clock, against the
//! generator's stamp on each event (`ts`, set as it sends):
//! - publish → clean event: the time `PERF_EVENTS` stored the clean event;
//! - window end → in InfluxDB: the time `PERF_METRICS` stored a window's metrics message, which
//!   the finaliser publishes after InfluxDB acknowledged the points (an event waits this plus
//!   the rest of its window);
//! - task completed → sample in a batch: the time `RL_BATCHES` stored the batch holding the
//!   task, for one task in eight (those of partition 0 of 8 by task id).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, Context, consumer};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use hdrhistogram::Histogram;
use modelperf_bus::{
    BusConfig, CheckpointStore, Failure, Handler, Incoming, Outgoing, OwnerConfig, RunnerConfig, Topology, streams,
};
use modelperf_e2e::bench::{Identity, bin, cpu_seconds, median, mix, rss_kib};
use modelperf_e2e::faults::pipeline::{Pipeline, Settings, Targets};
use modelperf_e2e::faults::servers::{Alertmanager, Recorder};
use modelperf_schema::Event;
use modelperf_schema::messages::{Batch, WindowMetrics};
use modelperf_testkit::{Influx, NatsServer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

// The same allocator as the service binaries.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    step: Duration,
    run: Duration,
    runs: usize,
    start_rate: u64,
    growth: f64,
    max_rate: u64,
    rate: Option<u64>,
    steady_rate: u64,
    baseline: Duration,
    identity: bool,
    soak: Option<Duration>,
    warmup: Duration,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        step: Duration::from_secs(60),
        run: Duration::from_secs(300),
        runs: 3,
        start_rate: 4_000,
        growth: 1.25,
        max_rate: 60_000,
        rate: None,
        steady_rate: 5_000,
        baseline: Duration::from_secs(30),
        identity: true,
        soak: None,
        warmup: Duration::from_secs(660),
    };
    let mut it = std::env::args().skip(1);
    let secs = |v: String| -> anyhow::Result<Duration> { Ok(Duration::from_secs(v.parse()?)) };
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--step-secs" => a.step = secs(value()?)?,
            "--run-secs" => a.run = secs(value()?)?,
            "--runs" => a.runs = value()?.parse()?,
            "--start-rate" => a.start_rate = value()?.parse()?,
            "--growth" => a.growth = value()?.parse()?,
            "--max-rate" => a.max_rate = value()?.parse()?,
            "--rate" => a.rate = Some(value()?.parse()?),
            "--steady-rate" => a.steady_rate = value()?.parse()?,
            "--baseline-secs" => a.baseline = secs(value()?)?,
            "--no-identity" => a.identity = false,
            "--soak-secs" => a.soak = Some(secs(value()?)?),
            "--warmup-secs" => a.warmup = secs(value()?)?,
            other => bail!(
                "unknown flag {other} (--step-secs N --run-secs N --runs N --start-rate N --growth X --max-rate N \
                 --rate N (skip the pipeline's search) --steady-rate N (0 skips) --baseline-secs N --no-identity \
                 --soak-secs N (only a soak at the steady rate) --warmup-secs N)"
            ),
        }
    }
    anyhow::ensure!(a.growth > 1.0, "--growth must be above 1");
    Ok(a)
}

/// A progress line on stderr, with the time since the start.
fn say(t0: Instant, what: &str) {
    eprintln!("[bench {:>7.1} s] {what}", t0.elapsed().as_secs_f64());
}

/// The servers the pipeline runs against.
struct Servers {
    nats: NatsServer,
    js: Context,
    influx: Influx,
    am: Alertmanager,
    _receiver: Recorder,
    bus: BusConfig,
    topology: Topology,
}

impl Servers {
    async fn start() -> anyhow::Result<Servers> {
        let receiver = Recorder::start().await?;
        let am = Alertmanager::start(&format!(
            "route:\n  receiver: hook\n  group_by: [alertname]\nreceivers:\n  - name: hook\n    webhook_configs:\n      \
             - url: {}\n",
            receiver.url("/am")
        ))
        .await?;
        let influx = Influx::start().await?;
        let nats = NatsServer::spawn().await?;
        let js = jetstream::new(nats.client().await?);
        let bus = BusConfig::default();
        let topology = Topology::contract(&bus, 1);
        topology.ensure(&js).await?;
        Ok(Servers { nats, js, influx, am, _receiver: receiver, bus, topology })
    }

    /// Every stream of the contract and every KV bucket emptied: no message, checkpoint, lease
    /// or join survives into the next measurement. Consumers keep their configuration.
    async fn purge(&self) -> anyhow::Result<()> {
        let names = streams::ALL.iter().map(|s| (*s).to_owned());
        let kv = self.topology.buckets.iter().map(|b| format!("KV_{}", b.name));
        for name in names.chain(kv) {
            if let Ok(s) = self.js.get_stream(&name).await {
                s.purge().await.map_err(|e| anyhow::anyhow!("purge {name}: {e}"))?;
            }
        }
        Ok(())
    }

    /// The five services on a fresh database.
    async fn pipeline(&self, dir: &Path) -> anyhow::Result<(Pipeline, String)> {
        let database = self.influx.fresh_database().await?;
        let targets = Targets {
            nats: self.nats.url().to_owned(),
            replicas: 1,
            influx: self.influx.url().to_owned(),
            database: database.clone(),
            alertmanager: self.am.url(),
            webhook: String::new(),
        };
        let root = modelperf_testkit::project_root();
        let text = format!(
            "[aggregator]\nwindows = [\"10s\", \"1m\", \"1h\"]\nallowed_lateness = \"5s\"\n\n\
             [influx.retention_policies.10s]\nduration = \"1d\"\n\n\
             [rl]\njoin_grace = \"2s\"\nbatch_max_age = \"5s\"\n\n\
             [collector]\nprices_file = \"{prices}\"\n\n\
             [monitor]\nrules_file = \"{rules}\"\nalertmanager_url = \"{am}\"\n",
            prices = root.join("deploy/prices.toml").display(),
            rules = root.join("deploy/alerts.toml").display(),
            am = targets.alertmanager,
        );
        let settings =
            Settings { partitions: self.bus.partitions, ack_wait: self.bus.ack_wait, lease_ttl: self.bus.lease_ttl };
        let logs = dir.join("logs");
        Ok((Pipeline::start_with(targets, &text, settings, dir, &logs).await?, database))
    }

    /// The server processes, for memory and CPU.
    fn pids(&self) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        if let Some(p) = self.nats.pid() {
            out.push(("nats-server".to_owned(), p));
        }
        if let Some(p) = self.influx.pid() {
            out.push(("influxd".to_owned(), p));
        }
        out
    }
}

/// `modelperf load` at `rate` (0: as fast as acks allow) for `secs`.
fn load(url: &str, rate: u64, d: Duration, seed: u64) -> anyhow::Result<Child> {
    Command::new(bin("modelperf")?)
        .args(["load", "--quiet", "--rate", &rate.to_string(), "--duration", &format!("{}s", d.as_secs())])
        .args(["--seed", &seed.to_string()])
        .env("MODELPERF_NATS__URL", url)
        .env("MODELPERF_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start modelperf load")
}

/// The last sequence of every contract stream.
async fn positions(js: &Context) -> anyhow::Result<BTreeMap<&'static str, u64>> {
    let mut out = BTreeMap::new();
    for s in streams::ALL {
        out.insert(s, js.get_stream(s).await?.info().await?.state.last_sequence);
    }
    Ok(out)
}

/// Per consumer of the contract: (lag = pending + unacknowledged, messages acknowledged so far).
async fn consumers(js: &Context, topology: &Topology) -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    let mut out = BTreeMap::new();
    for c in &topology.consumers {
        let stream = js.get_stream(c.stream).await?;
        let Ok(info) = stream.consumer_info(&c.durable).await else { continue };
        out.insert(
            c.durable.clone(),
            (info.num_pending + info.num_ack_pending as u64, info.ack_floor.consumer_sequence),
        );
    }
    Ok(out)
}

/// A consumer's group: `aggregator-p3` → `aggregator-p*`.
fn group(durable: &str) -> String {
    match durable.rsplit_once("-p") {
        Some((g, n)) if n.chars().all(|c| c.is_ascii_digit()) => format!("{g}-p*"),
        _ => durable.to_owned(),
    }
}

/// Lags summed per group.
fn group_lags(c: &BTreeMap<String, (u64, u64)>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (d, (lag, _)) in c {
        *out.entry(group(d)).or_default() += lag;
    }
    out
}

/// Memory and CPU of a set of processes over a measurement.
struct Meter {
    procs: Vec<(String, u32, f64)>,
    peak_kib: Vec<u64>,
    /// The last CPU seconds read of each (a process that exited keeps its last reading).
    last_cpu: Vec<f64>,
    /// Every sample: seconds since the start, resident KiB per process.
    series: Vec<(f64, Vec<u64>)>,
    started: Instant,
}

impl Meter {
    fn start(procs: Vec<(String, u32)>) -> Meter {
        let n = procs.len();
        let procs: Vec<(String, u32, f64)> =
            procs.into_iter().map(|(name, pid)| (name, pid, cpu_seconds(pid).unwrap_or(0.0))).collect();
        let last_cpu = procs.iter().map(|p| p.2).collect();
        Meter { procs, peak_kib: vec![0; n], last_cpu, series: Vec::new(), started: Instant::now() }
    }

    fn sample(&mut self) {
        let now: Vec<u64> = self.procs.iter().map(|(_, pid, _)| rss_kib(*pid).unwrap_or(0)).collect();
        for (peak, kib) in self.peak_kib.iter_mut().zip(&now) {
            *peak = (*peak).max(*kib);
        }
        for (last, (_, pid, _)) in self.last_cpu.iter_mut().zip(&self.procs) {
            if let Some(c) = cpu_seconds(*pid) {
                *last = c;
            }
        }
        self.series.push((self.started.elapsed().as_secs_f64(), now));
    }

    /// Per process: the least-squares growth of resident memory after `warmup`, in MiB per
    /// 10 minutes; `None` with fewer than ten samples after it.
    fn growth(&self, warmup: Duration) -> Vec<(String, Option<f64>)> {
        let after: Vec<&(f64, Vec<u64>)> = self.series.iter().filter(|(t, _)| *t >= warmup.as_secs_f64()).collect();
        self.procs
            .iter()
            .enumerate()
            .map(|(i, (name, ..))| {
                let points: Vec<(f64, f64)> = after.iter().map(|(t, kib)| (*t, kib[i] as f64 / 1024.0)).collect();
                (name.clone(), slope(&points).map(|per_sec| per_sec * 600.0))
            })
            .collect()
    }

    /// Resident MiB per process at the first sample of every `every` seconds.
    fn profile(&self, every: f64) -> Vec<(f64, Vec<f64>)> {
        let mut out: Vec<(f64, Vec<f64>)> = Vec::new();
        for (t, kib) in &self.series {
            if out.last().is_none_or(|(last, _)| *t >= last + every) {
                out.push((*t, kib.iter().map(|k| *k as f64 / 1024.0).collect()));
            }
        }
        out
    }

    /// (name, CPU as % of one core, peak resident MiB, resident MiB now), over the samples.
    fn report(&self) -> Vec<(String, f64, f64, f64)> {
        let wall = self.series.last().map_or(0.0, |(t, _)| *t).max(1e-9);
        self.procs
            .iter()
            .zip(&self.peak_kib)
            .zip(&self.last_cpu)
            .map(|(((name, pid, from), peak), last)| {
                let cpu = 100.0 * (last - from) / wall;
                let now = rss_kib(*pid).unwrap_or(0) as f64 / 1024.0;
                (name.clone(), cpu, *peak as f64 / 1024.0, now)
            })
            .collect()
    }
}

/// The least-squares slope of `points` (y per x); `None` with fewer than ten points.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 10 {
        return None;
    }
    let n = points.len() as f64;
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// What one load of `rate` for `d` did.
struct Step {
    rate: u64,
    published: u64,
    achieved: f64,
    /// Lag per consumer group at mid-step and at the end.
    mid: BTreeMap<String, u64>,
    end: BTreeMap<String, u64>,
    /// Messages acknowledged per second while the load ran, per consumer group.
    acked: BTreeMap<String, f64>,
    elapsed: Duration,
    procs: Vec<(String, f64, f64, f64)>,
    meter: Meter,
}

impl Step {
    /// The generator reached 95 % of the rate, and every lag is bounded and not growing.
    fn holds(&self) -> bool {
        let bound = |secs: f64| (self.rate as f64 * secs) as u64;
        self.achieved >= 0.95 * self.rate as f64
            && self
                .end
                .iter()
                .all(|(g, lag)| *lag <= bound(3.0) && *lag <= self.mid.get(g).copied().unwrap_or(0) + bound(1.0))
    }

    fn lag_text(&self) -> String {
        let worst = self.end.iter().max_by_key(|(_, l)| **l);
        worst.map_or_else(String::new, |(g, l)| format!("largest lag {l} ({g})"))
    }
}

/// Runs `modelperf load` at `rate` for `d` while sampling lags, memory and CPU every second.
async fn step(s: &Servers, rate: u64, d: Duration, seed: u64, procs: Vec<(String, u32)>) -> anyhow::Result<Step> {
    let before = positions(&s.js).await?;
    let acked_before = consumers(&s.js, &s.topology).await?;
    let mut child = load(s.nats.url(), rate, d, seed)?;
    let mut all = procs;
    all.push(("modelperf load".to_owned(), child.id()));
    all.push(("this benchmark".to_owned(), std::process::id()));
    let mut meter = Meter::start(all);
    let started = Instant::now();
    let mut mid = BTreeMap::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        meter.sample();
        if mid.is_empty() && started.elapsed() >= d / 2 {
            mid = group_lags(&consumers(&s.js, &s.topology).await?);
        }
        if let Some(status) = child.try_wait()? {
            anyhow::ensure!(status.success(), "modelperf load failed ({status})");
            break;
        }
        if started.elapsed() > d + Duration::from_secs(60) {
            let _ = child.kill();
            bail!("modelperf load did not stop after {d:?}");
        }
    }
    let elapsed = started.elapsed();
    let procs = meter.report();
    let after = positions(&s.js).await?;
    let now = consumers(&s.js, &s.topology).await?;
    let published = after[streams::RAW] - before[streams::RAW];
    let mut acked: BTreeMap<String, f64> = BTreeMap::new();
    for (d, (_, floor)) in &now {
        let from = acked_before.get(d).map_or(0, |(_, f)| *f);
        *acked.entry(group(d)).or_default() += floor.saturating_sub(from) as f64 / elapsed.as_secs_f64();
    }
    Ok(Step {
        rate,
        published,
        achieved: published as f64 / d.as_secs_f64(),
        mid,
        end: group_lags(&now),
        acked,
        elapsed,
        procs,
        meter,
    })
}

/// Waits until every consumer's lag is 0 (at most `limit`); the time it took.
async fn drained(s: &Servers, limit: Duration) -> anyhow::Result<Option<Duration>> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if consumers(&s.js, &s.topology).await?.values().all(|(lag, _)| *lag == 0) {
            return Ok(Some(started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(None)
}

/// Steps up from the start rate while a step holds; the highest rate that held (0: none).
async fn search(
    s: &Servers,
    a: &Args,
    name: &str,
    mut seed: u64,
    t0: Instant,
    procs: &dyn Fn() -> Vec<(String, u32)>,
) -> anyhow::Result<(u64, Vec<Step>)> {
    let mut rate = a.start_rate;
    let mut best = 0;
    let mut steps = Vec::new();
    while rate <= a.max_rate {
        seed += 1;
        let st = step(s, rate, a.step, seed, procs()).await?;
        let held = st.holds();
        let drain = drained(s, Duration::from_secs(90)).await?;
        println!(
            "{name} search: {rate} events/s for {:.0} s → published {} ({:.0}/s), {}; {}{}",
            st.elapsed.as_secs_f64(),
            st.published,
            st.achieved,
            st.lag_text(),
            if held { "held" } else { "did not hold" },
            drain.map_or_else(
                || ", not drained in 90 s".to_owned(),
                |d| format!(", drained {:.1} s later", d.as_secs_f64())
            )
        );
        say(t0, &format!("{name}: step at {rate}/s {}", if held { "held" } else { "did not hold" }));
        steps.push(st);
        if !held {
            break;
        }
        best = rate;
        rate = ((rate as f64 * a.growth) / 500.0).round() as u64 * 500;
        if drain.is_none() {
            break;
        }
    }
    Ok((best, steps))
}

/// The collector's hop without decoding: each raw message's bytes to `perf.events.<kind>.<p>`
/// with its `Nats-Msg-Id`.
struct RepublishRaw {
    partitions: u64,
}

impl Handler for RepublishRaw {
    fn handle(&self, msg: &Incoming<'_>) -> Result<Vec<Outgoing>, Failure> {
        let kind = msg.subject.rsplit('.').next().unwrap_or("unknown");
        let id = msg.header("Nats-Msg-Id").map_or_else(|| format!("raw:{}", msg.seq), str::to_owned);
        let p = mix(msg.seq) % self.partitions;
        Ok(vec![Outgoing::new(format!("perf.events.{kind}.{p}"), id, msg.payload.to_vec())])
    }
}

/// The identity pipeline's tasks; stopped (with a last checkpoint each) on [`IdentityPipeline::stop`].
struct IdentityPipeline {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl IdentityPipeline {
    async fn start(s: &Servers) -> anyhow::Result<IdentityPipeline> {
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let nats = modelperf_bus::NatsConfig { url: s.nats.url().to_owned(), ..Default::default() };
        let inflight = s.bus.max_ack_pending as usize;
        // The collector's hop.
        let client = modelperf_bus::connect(&nats, "identity-collector").await?;
        let js = modelperf_bus::jetstream(client, Duration::from_secs(10), inflight);
        let consumer = js
            .get_stream(streams::RAW)
            .await?
            .get_consumer("collector")
            .await
            .map_err(|e| anyhow::anyhow!("consumer collector: {e}"))?;
        let mut cfg = RunnerConfig::new("identity", &s.bus);
        cfg.in_flight_batches = modelperf_collector::config::CollectorConfig::default().in_flight_batches;
        let handler = Arc::new(RepublishRaw { partitions: u64::from(s.bus.partitions) });
        let st = stop.clone();
        tasks.push(tokio::spawn(async move {
            modelperf_bus::run(js, consumer, handler, &cfg, st).await?;
            Ok(())
        }));
        // The owners of the aggregator's and the RL pipeline's partitions, a connection each.
        for service in ["aggregator", "rl"] {
            let client = modelperf_bus::connect(&nats, &format!("identity-{service}")).await?;
            let js = modelperf_bus::jetstream(client, Duration::from_secs(10), inflight);
            let cfg = OwnerConfig {
                stage: format!("identity-{service}"),
                fetch_batch: s.bus.fetch_batch,
                checkpoint_interval: s.bus.checkpoint_interval,
                max_in_flight: inflight,
            };
            for p in 0..s.bus.partitions {
                let durable = format!("{service}-p{p}");
                let consumer = js
                    .get_stream(streams::EVENTS)
                    .await?
                    .get_consumer(&durable)
                    .await
                    .map_err(|e| anyhow::anyhow!("consumer {durable}: {e}"))?;
                let (mut store, _) = CheckpointStore::open(&js, &format!("identity.{service}.p{p}")).await?;
                let (js, cfg, st) = (js.clone(), cfg.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    let mut owner = Identity;
                    let lost = CancellationToken::new();
                    modelperf_bus::run_owner(&js, consumer, &mut store, &mut owner, 0, &cfg, st, lost).await?;
                    Ok(())
                }));
            }
        }
        Ok(IdentityPipeline { stop, tasks })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        for t in self.tasks {
            t.await??;
        }
        Ok(())
    }
}

/// Publish-with-ack and consume-with-ack of the same messages, nothing else running.
async fn plain(s: &Servers, d: Duration) -> anyhow::Result<(f64, f64, u64)> {
    s.purge().await?;
    let before = positions(&s.js).await?[streams::RAW];
    let started = Instant::now();
    let mut child = load(s.nats.url(), 0, d, 7)?;
    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    anyhow::ensure!(status.success(), "modelperf load failed ({status})");
    let published = positions(&s.js).await?[streams::RAW] - before;
    let publish_rate = published as f64 / started.elapsed().as_secs_f64();
    // The collector's durable consumer (a work queue has one), nothing else running: a plain
    // fetch loop acking each message.
    let client = s.nats.client().await?;
    let js = jetstream::new(client.clone());
    let consumer: consumer::PullConsumer = js
        .get_stream(streams::RAW)
        .await?
        .get_consumer("collector")
        .await
        .map_err(|e| anyhow::anyhow!("consumer collector: {e}"))?;
    let started = Instant::now();
    let mut got = 0u64;
    while got < published {
        let mut batch =
            consumer.fetch().max_messages(s.bus.fetch_batch).expires(Duration::from_secs(1)).messages().await?;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
            m.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
            got += 1;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("consumed {got} of {published} in 10 minutes");
        }
    }
    client.flush().await?;
    // Acknowledged means deleted from the work queue.
    while s.js.get_stream(streams::RAW).await?.info().await?.state.messages > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if started.elapsed() > Duration::from_secs(600) {
            bail!("PERF_RAW kept messages after every ack");
        }
    }
    let consume_rate = published as f64 / started.elapsed().as_secs_f64();
    Ok((publish_rate, consume_rate, published))
}

/// The stored time of a JetStream message.
fn stored_at(m: &jetstream::Message) -> anyhow::Result<DateTime<Utc>> {
    let info = m.info().map_err(|e| anyhow::anyhow!("message info: {e}"))?;
    let nanos = info.published.unix_timestamp_nanos();
    Ok(DateTime::from_timestamp_nanos(nanos as i64))
}

/// Calls `f` on every message of `stream` after sequence `after` up to `last`, streamed.
async fn scan(
    js: &Context,
    stream: &str,
    after: u64,
    last: u64,
    mut f: impl FnMut(&jetstream::Message) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    if last <= after {
        return Ok(0);
    }
    let s = js.get_stream(stream).await?;
    let consumer = s
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("reader on {stream}: {e}"))?;
    let mut msgs = consumer.messages().await.map_err(|e| anyhow::anyhow!("read {stream}: {e}"))?;
    let mut n = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), msgs.next()).await {
            Ok(Some(Ok(m))) => {
                n += 1;
                f(&m)?;
                if m.info().map(|i| i.stream_sequence).unwrap_or(0) >= last {
                    return Ok(n);
                }
            }
            Ok(Some(Err(e))) => bail!("reading {stream}: {e}"),
            Ok(None) | Err(_) => bail!("reading {stream}: stopped after {n} messages before sequence {last}"),
        }
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).context("histogram bounds")
}

/// p50 / p99 / max of a histogram of microseconds, in ms.
fn ms(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "none".into();
    }
    let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
    format!("p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n = {})", q(0.5), q(0.99), h.max() as f64 / 1000.0, h.len())
}

fn record(h: &mut Histogram<u64>, from: DateTime<Utc>, to: DateTime<Utc>) {
    let micros = (to - from).num_microseconds().unwrap_or(0).max(1) as u64;
    h.saturating_record(micros);
}

/// The latencies of a run, read back from the streams between two positions.
struct Latencies {
    clean: Histogram<u64>,
    influx: Histogram<u64>,
    batch: Histogram<u64>,
    samples: u64,
}

async fn latencies(
    js: &Context,
    from: &BTreeMap<&'static str, u64>,
    to: &BTreeMap<&'static str, u64>,
) -> anyhow::Result<Latencies> {
    let mut clean = histogram()?;
    let mut completed: HashMap<String, DateTime<Utc>> = HashMap::new();
    scan(js, streams::EVENTS, from[streams::EVENTS], to[streams::EVENTS], |m| {
        let e: Event = modelperf_schema::from_msgpack(&m.payload).context("a clean event that does not decode")?;
        record(&mut clean, e.ts, stored_at(m)?);
        if e.kind().as_str() == "task_completed" {
            let id = e.task_id.clone().unwrap_or_default();
            if modelperf_bus::partition_of(&id, 8) == 0 {
                completed.insert(id, e.ts);
            }
        }
        Ok(())
    })
    .await?;
    let mut influx = histogram()?;
    scan(js, streams::METRICS, from[streams::METRICS], to[streams::METRICS], |m| {
        let w: WindowMetrics =
            modelperf_schema::from_msgpack(&m.payload).context("a metrics message that does not decode")?;
        if w.window == "10s" && w.revision == 0 {
            record(&mut influx, w.end, stored_at(m)?);
        }
        Ok(())
    })
    .await?;
    let mut batch = histogram()?;
    let mut samples = 0;
    scan(js, streams::RL_BATCHES, from[streams::RL_BATCHES], to[streams::RL_BATCHES], |m| {
        let b: Batch = modelperf_schema::from_msgpack(&m.payload).context("a batch that does not decode")?;
        let at = stored_at(m)?;
        for s in &b.samples {
            samples += 1;
            if let Some(ts) = completed.get(&s.task_id) {
                record(&mut batch, *ts, at);
            }
        }
        Ok(())
    })
    .await?;
    Ok(Latencies { clean, influx, batch, samples })
}

/// `SUM("count")` of the `10s` windows in `database`.
async fn influx_count(influx: &Influx, database: &str) -> anyhow::Result<i64> {
    let r = influx.query("SELECT SUM(\"count\") FROM \"10s\".\"model_perf\"", Some(database)).await?;
    Ok(r.pointer("/results/0/series/0/values/0/1").and_then(serde_json::Value::as_i64).unwrap_or(0))
}

fn procs_text(procs: &[(String, f64, f64, f64)]) -> String {
    procs.iter().map(|(n, cpu, peak, _)| format!("{n} {cpu:.0} % CPU, {peak:.0} MiB")).collect::<Vec<_>>().join("; ")
}

/// One measured run of the pipeline from empty streams and state; what it printed's key figures.
struct RunResult {
    achieved: f64,
    exact: bool,
    clean_p99_ms: f64,
    peak_service_mib: f64,
    /// Resident memory growth after the warm-up, MiB per 10 minutes, per process.
    growth: Vec<(String, Option<f64>)>,
    /// Resident MiB per process every `PROFILE_EVERY`, for the soak's table.
    profile: Vec<(f64, Vec<f64>)>,
}

/// The interval of the soak's memory table.
const PROFILE_EVERY: f64 = 300.0;

/// The load of one measured run: the generator's seed, its rate and duration, and the warm-up
/// before memory growth is fitted.
struct Run {
    seed: u64,
    rate: u64,
    d: Duration,
    warmup: Duration,
}

async fn measured(s: &Servers, run: Run, label: &str, dir: &Path, t0: Instant) -> anyhow::Result<RunResult> {
    let Run { seed, rate, d, warmup } = run;
    s.purge().await?;
    let (mut pipeline, database) = s.pipeline(dir).await?;
    let from = positions(&s.js).await?;
    say(t0, &format!("{label}: {rate} events/s for {} s", d.as_secs()));
    let mut procs: Vec<(String, u32)> =
        pipeline.services.iter().filter_map(|sv| Some((sv.name.to_owned(), sv.pid()?))).collect();
    procs.extend(s.pids());
    let st = step(s, rate, d, seed, procs).await?;
    let drain = drained(s, Duration::from_secs(120)).await?;
    let to_clean = positions(&s.js).await?;
    let published = to_clean[streams::RAW] - from[streams::RAW];
    let clean = to_clean[streams::EVENTS] - from[streams::EVENTS];
    let dead = to_clean[streams::DLQ] - from[streams::DLQ];
    // The last windows close 5 s after their end and are written by the finaliser.
    let started = Instant::now();
    let mut counted = 0;
    while started.elapsed() < Duration::from_secs(90) {
        counted = influx_count(&s.influx, &database).await?;
        if counted as u64 >= clean {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Batches close within `batch_max_age` after the last join.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let to = positions(&s.js).await?;
    let exited = pipeline.exited();
    drop(pipeline);
    say(t0, &format!("{label}: reading the latencies back"));
    let lat = latencies(&s.js, &from, &to).await?;
    let exact = clean + dead == published && counted as u64 == clean && exited.is_empty();
    let stages: Vec<String> = st.acked.iter().map(|(g, r)| format!("{g} {r:.0}/s")).collect();
    println!(
        "{label}: {rate} events/s for {:.0} s: published {published} ({:.0}/s), clean {clean}, dead-lettered {dead}, \
         InfluxDB 10s count {counted} → {}; {}; drained {}",
        st.elapsed.as_secs_f64(),
        st.achieved,
        if exact { "nothing lost" } else { "NOT exact" },
        st.lag_text(),
        drain.map_or_else(|| "NOT within 120 s".to_owned(), |d| format!("{:.1} s after the load", d.as_secs_f64())),
    );
    for e in &exited {
        println!("{label}: {e}");
    }
    println!("{label}: acknowledged per consumer group while loaded: {}", stages.join(", "));
    println!(
        "{label}: stream growth per second while loaded: {}",
        [streams::EVENTS, streams::PARTIALS, streams::METRICS, streams::RL_BATCHES]
            .iter()
            .map(|n| format!("{n} {:.0}/s", (to_clean[n] - from[n]) as f64 / st.elapsed.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("{label}: publish → clean event {}", ms(&lat.clean));
    println!("{label}: 10s window end → in InfluxDB (metrics message stored) {}", ms(&lat.influx));
    println!("{label}: task completed → sample in a batch {} ({} samples in all)", ms(&lat.batch), lat.samples);
    println!("{label}: processes: {}", procs_text(&st.procs));
    let peak_service_mib = st
        .procs
        .iter()
        .filter(|(n, ..)| modelperf_e2e::faults::pipeline::SERVICES.contains(&n.as_str()))
        .map(|(_, _, peak, _)| *peak)
        .fold(0.0, f64::max);
    let clean_p99_ms = lat.clean.value_at_quantile(0.99) as f64 / 1000.0;
    let growth = st.meter.growth(warmup);
    let profile = st.meter.profile(PROFILE_EVERY);
    Ok(RunResult { achieved: st.achieved, exact, clean_p99_ms, peak_service_mib, growth, profile })
}

/// `make soak`: one run at the steady rate for `d`, with the growth of every process's resident
/// memory after the warm-up.
async fn soak(s: &Servers, a: &Args, d: Duration, dir: &Path, t0: Instant) -> anyhow::Result<()> {
    println!(
        "soak: {} events/s for {} s, memory growth fitted after a warm-up of {} s (resident memory sampled every second)",
        a.steady_rate,
        d.as_secs(),
        a.warmup.as_secs()
    );
    let r =
        measured(s, Run { seed: 300, rate: a.steady_rate, d, warmup: a.warmup }, "soak", &dir.join("soak"), t0).await?;
    let names: Vec<&str> = r.growth.iter().map(|(n, _)| n.as_str()).collect();
    println!(
        "soak: resident MiB by minute\n{:>6} {}",
        "min",
        names.iter().map(|n| format!(" {n:>14}")).collect::<String>()
    );
    for (t, mib) in &r.profile {
        println!("{:>6.0} {}", t / 60.0, mib.iter().map(|m| format!(" {m:>14.1}")).collect::<String>());
    }
    let mut over = Vec::new();
    for (name, g) in &r.growth {
        let text = g.map_or_else(|| "too few samples".to_owned(), |g| format!("{g:+.2} MiB per 10 min"));
        println!("soak: resident memory of {name} after the warm-up: {text}");
        let service = modelperf_e2e::faults::pipeline::SERVICES.contains(&name.as_str());
        if service && g.is_none_or(|g| g >= 5.0 / 1.048_576) {
            over.push(name.clone());
        }
    }
    println!(
        "soak: {}; {}",
        if r.exact { "nothing lost" } else { "NOT exact" },
        if over.is_empty() {
            "every service grew less than 5 MB per 10 minutes".to_owned()
        } else {
            format!("grew 5 MB or more per 10 minutes (or unmeasured): {}", over.join(", "))
        }
    );
    anyhow::ensure!(r.exact && over.is_empty(), "the soak missed its targets");
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let t0 = Instant::now();
    let dir = tempfile::tempdir()?;
    say(t0, "starting nats-server, InfluxDB and Alertmanager");
    let s = Servers::start().await?;
    if let Some(d) = a.soak {
        return soak(&s, &a, d, dir.path(), t0).await;
    }
    println!(
        "pipeline benchmark: steps of {} s from {} events/s (×{}), {} runs of {} s, {} partitions, fetch batch {}, \
         max ack pending {}, nats-server at {}",
        a.step.as_secs(),
        a.start_rate,
        a.growth,
        a.runs,
        a.run.as_secs(),
        s.bus.partitions,
        s.bus.fetch_batch,
        s.bus.max_ack_pending,
        s.nats.url()
    );

    say(t0, "plain JetStream: publish-with-ack, then consume-with-ack");
    let (publish, consume, n) = plain(&s, a.baseline).await?;
    println!(
        "plain JetStream: publish-with-ack {publish:.0} events/s ({n} events), consume-with-ack {consume:.0} events/s"
    );

    let mut identity_best = None;
    if a.identity {
        s.purge().await?;
        let id = IdentityPipeline::start(&s).await?;
        say(t0, "identity pipeline: rate search");
        let servers = s.pids();
        let (best, _) = search(&s, &a, "identity", 1000, t0, &|| servers.clone()).await?;
        id.stop().await?;
        println!("identity pipeline: highest rate that held {best} events/s");
        identity_best = Some(best);
    }

    let best = match a.rate {
        Some(r) => r,
        None => {
            s.purge().await?;
            let (pipeline, _) = s.pipeline(&dir.path().join("search")).await?;
            let mut procs: Vec<(String, u32)> =
                pipeline.services.iter().filter_map(|sv| Some((sv.name.to_owned(), sv.pid()?))).collect();
            procs.extend(s.pids());
            say(t0, "pipeline: rate search");
            let (best, steps) = search(&s, &a, "pipeline", 2000, t0, &|| procs.clone()).await?;
            if let Some(last) = steps.iter().rev().find(|st| st.rate == best) {
                println!("pipeline search: processes at {best} events/s: {}", procs_text(&last.procs));
            }
            drop(pipeline);
            println!("pipeline: highest rate that held {best} events/s");
            best
        }
    };
    anyhow::ensure!(best > 0, "no rate held, not even {} events/s", a.start_rate);

    let mut runs = Vec::new();
    for r in 1..=a.runs {
        let label = format!("run {r}");
        // A seed of its own: the same seed gives the same task ids, hence the same batch ids,
        // which `RL_BATCHES` would drop as duplicates of the last run's.
        let seed = 100 + r as u64;
        runs.push(
            measured(&s, Run { seed, rate: best, d: a.run, warmup: a.warmup }, &label, &dir.path().join(&label), t0)
                .await?,
        );
    }
    let achieved = median(runs.iter().map(|r| r.achieved).collect());
    let all_exact = runs.iter().all(|r| r.exact);
    println!(
        "median of {} runs at {best} events/s: {achieved:.0} events/s published and processed, {}; largest service \
         peak {:.0} MiB",
        runs.len(),
        if all_exact { "nothing lost in any run" } else { "SOME RUN LOST OR DUPLICATED EVENTS" },
        runs.iter().map(|r| r.peak_service_mib).fold(0.0, f64::max)
    );
    if let Some(id) = identity_best.filter(|b| *b > 0) {
        println!(
            "pipeline / identity pipeline (highest rates that held): {best} / {id} = {:.2}",
            best as f64 / id as f64
        );
    }
    println!("pipeline / plain consume-with-ack: {:.2}", achieved / consume);

    if a.steady_rate > 0 {
        let r = measured(
            &s,
            Run { seed: 200, rate: a.steady_rate, d: a.step, warmup: a.warmup },
            "steady",
            &dir.path().join("steady"),
            t0,
        )
        .await?;
        println!(
            "steady {} events/s: publish → clean event p99 {:.1} ms; largest service peak {:.0} MiB",
            a.steady_rate, r.clean_p99_ms, r.peak_service_mib
        );
    }
    say(t0, "done");
    anyhow::ensure!(all_exact, "a measured run was not exact");
    Ok(())
}
