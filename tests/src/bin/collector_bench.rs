//! `collector-bench`: the collector's benchmark (`make bench`; results in docs/BENCHMARKS.md).
//!
//! 1. Drain: `modelperf load` pre-loads N raw events into `PERF_RAW`; then a stage drains them,
//!    timed until the stream is empty. Two stages run in this one binary, with the same
//!    connection settings, consumer, fetch batch and in-flight bound (`modelperf_bus::run`):
//!    the collector, and an identity stage that republishes each raw message undecoded and
//!    unchanged to `bench.identity.<n>` (stream `BENCH_IDENTITY`) with its `Nats-Msg-Id` and the
//!    same ack discipline. Streams are purged between runs; the order alternates per run.
//! 2. Steady state: the collector as its own process (the release binary) while
//!    `modelperf load --rate R` publishes; the latency from an event's `ts` (stamped by the load
//!    generator as it sends) to the clean event reaching a subscriber, and the process's resident
//!    memory, sampled every 200 ms.
//! 3. Full speed as a process: a pre-load drained by the collector binary, with its peak memory.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, Context};
use futures::StreamExt;
use hdrhistogram::Histogram;
use modelperf_bus::{Failure, Handler, Incoming, Outgoing, RunnerConfig, Topology};
use modelperf_e2e::bench::{bin, median, messages, watch_rss};
use tokio_util::sync::CancellationToken;

// The same allocator as the service binaries.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    events: u64,
    runs: usize,
    rate: u64,
    steady: Duration,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args { events: 500_000, runs: 3, rate: 5_000, steady: Duration::from_secs(60) };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--events" => a.events = value()?.parse()?,
            "--runs" => a.runs = value()?.parse()?,
            "--rate" => a.rate = value()?.parse()?,
            "--steady-secs" => a.steady = Duration::from_secs(value()?.parse()?),
            other => bail!("unknown flag {other} (--events N --runs N --rate N --steady-secs N)"),
        }
    }
    Ok(a)
}

/// Republishes each raw message as it is.
struct Identity;

impl Handler for Identity {
    fn handle(&self, msg: &Incoming<'_>) -> Result<Vec<Outgoing>, Failure> {
        let id = msg.header("Nats-Msg-Id").map_or_else(|| format!("raw:{}", msg.seq), str::to_owned);
        Ok(vec![Outgoing::new(format!("bench.identity.{}", msg.seq % 8), id, msg.payload.to_vec())])
    }
}

const IDENTITY_STREAM: &str = "BENCH_IDENTITY";

async fn purge(js: &Context) -> anyhow::Result<()> {
    for s in ["PERF_RAW", "PERF_EVENTS", "PERF_DLQ", IDENTITY_STREAM] {
        js.get_stream(s).await?.purge().await.with_context(|| format!("purge {s}"))?;
    }
    Ok(())
}

fn load(url: &str, extra: &[&str]) -> anyhow::Result<std::process::Child> {
    Command::new(bin("modelperf")?)
        .arg("load")
        .args(["--quiet"])
        .args(extra)
        .env("MODELPERF_NATS__URL", url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start modelperf load")
}

async fn preload(js: &Context, url: &str, n: u64, seed: usize) -> anyhow::Result<()> {
    let status = tokio::task::spawn_blocking({
        let url = url.to_owned();
        move || {
            load(&url, &["--rate", "0", "--count", &n.to_string(), "--seed", &seed.to_string()])?
                .wait()
                .context("modelperf load")
        }
    })
    .await??;
    anyhow::ensure!(status.success(), "modelperf load failed");
    let have = messages(js, "PERF_RAW").await?;
    anyhow::ensure!(have == n, "pre-loaded {have} of {n}");
    Ok(())
}

/// Drains `PERF_RAW` with `handler`; returns events per second.
async fn drain<H: Handler>(url: &str, handler: Arc<H>, n: u64) -> anyhow::Result<f64> {
    let nats = modelperf_bus::NatsConfig { url: url.to_owned(), ..Default::default() };
    let bus = modelperf_bus::BusConfig::default();
    let client = modelperf_bus::connect(&nats, "bench-stage").await?;
    let js = modelperf_bus::jetstream(client.clone(), Duration::from_secs(10), bus.max_ack_pending as usize);
    let consumer = js
        .get_stream("PERF_RAW")
        .await?
        .get_consumer("collector")
        .await
        .map_err(|e| anyhow::anyhow!("consumer collector: {e}"))?;
    let mut cfg = RunnerConfig::new("bench", &bus);
    cfg.in_flight_batches = modelperf_collector::config::CollectorConfig::default().in_flight_batches;
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task = {
        let (js, stop) = (js.clone(), stop.clone());
        tokio::spawn(async move { modelperf_bus::run(js, consumer, handler, &cfg, stop).await })
    };
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if messages(&js, "PERF_RAW").await? == 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("drain did not finish in 10 minutes");
        }
    }
    let elapsed = started.elapsed();
    stop.cancel();
    let stats = task.await??;
    anyhow::ensure!(stats.acked + stats.dead_lettered >= n, "settled {stats:?} of {n}");
    client.flush().await?;
    Ok(n as f64 / elapsed.as_secs_f64())
}

fn collector_process(url: &str) -> anyhow::Result<std::process::Child> {
    let root = modelperf_testkit::project_root();
    Command::new(bin("modelperf-collector")?)
        .env("MODELPERF_NATS__URL", url)
        .env("MODELPERF_HTTP__LISTEN", "127.0.0.1:0")
        .env("MODELPERF_COLLECTOR__PRICES_FILE", root.join("deploy/prices.toml"))
        .env("MODELPERF_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start modelperf-collector")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let server = modelperf_testkit::NatsServer::start().await?;
    let url = server.url().to_owned();
    let js = jetstream::new(server.client().await?);
    Topology::contract(&modelperf_bus::BusConfig::default(), 1).ensure(&js).await?;
    js.create_stream(jetstream::stream::Config {
        name: IDENTITY_STREAM.into(),
        subjects: vec!["bench.identity.>".into()],
        storage: jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("create {IDENTITY_STREAM}: {e}"))?;

    let mut config = modelperf_collector::Config::default();
    config.collector.prices_file = modelperf_testkit::project_root().join("deploy/prices.toml");
    let collector = Arc::new(modelperf_collector::collector(&config)?);
    let identity = Arc::new(Identity);

    println!("collector benchmark: {} events per drain, {} runs, nats-server at {url}", a.events, a.runs);
    let (mut ids, mut cols) = (Vec::new(), Vec::new());
    for run in 1..=a.runs {
        let order: [bool; 2] = if run % 2 == 1 { [true, false] } else { [false, true] };
        for is_identity in order {
            purge(&js).await?;
            preload(&js, &url, a.events, run).await?;
            let rate = if is_identity {
                drain(&url, identity.clone(), a.events).await?
            } else {
                drain(&url, collector.clone(), a.events).await?
            };
            let stage = if is_identity { "identity " } else { "collector" };
            println!("run {run}: {stage} {rate:>9.0} events/s");
            if is_identity {
                ids.push(rate)
            } else {
                cols.push(rate)
            }
            if !is_identity {
                let clean = messages(&js, "PERF_EVENTS").await?;
                let dead = messages(&js, "PERF_DLQ").await?;
                anyhow::ensure!(
                    clean + dead == a.events,
                    "collector wrote {clean} clean + {dead} dead of {}",
                    a.events
                );
            }
        }
    }
    let (id_med, col_med) = (median(ids.clone()), median(cols.clone()));
    println!("median: identity {id_med:.0} events/s, collector {col_med:.0} events/s, ratio {:.2}", col_med / id_med);

    // The collector binary draining a pre-load at full speed, with its peak memory.
    purge(&js).await?;
    preload(&js, &url, a.events, 99).await?;
    let mut proc = collector_process(&url)?;
    let stop = CancellationToken::new();
    let rss = watch_rss(proc.id(), stop.clone());
    let started = Instant::now();
    while messages(&js, "PERF_RAW").await? > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let process_rate = a.events as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    let drain_peak = rss.await?;
    proc.kill()?;
    proc.wait()?;
    println!("process drain: {process_rate:.0} events/s, peak resident memory {:.1} MiB", drain_peak as f64 / 1024.0);

    // Steady state: latency from the producer's stamp to the clean event, and memory.
    purge(&js).await?;
    let mut proc = collector_process(&url)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sub_client = server.client().await?;
    let mut sub = sub_client.subscribe("perf.events.>").await?;
    let stop = CancellationToken::new();
    let rss = watch_rss(proc.id(), stop.clone());
    let mut generator =
        load(&url, &["--rate", &a.rate.to_string(), "--duration", &format!("{}s", a.steady.as_secs())])?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let deadline = Instant::now() + a.steady + Duration::from_secs(10);
    let mut received = 0u64;
    while Instant::now() < deadline {
        let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await else {
            if generator.try_wait()?.is_some() {
                break;
            }
            continue;
        };
        let now = chrono::Utc::now();
        let event = modelperf_schema::decode_unvalidated(&msg.payload, None)?;
        let micros = (now - event.ts).num_microseconds().unwrap_or(0).max(1) as u64;
        hist.saturating_record(micros);
        received += 1;
    }
    generator.wait()?;
    stop.cancel();
    let steady_peak = rss.await?;
    proc.kill()?;
    proc.wait()?;
    let stored = messages(&js, "PERF_EVENTS").await?;
    println!(
        "steady {} events/s for {:?}: {received} clean events ({stored} stored), publish → clean event p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; peak resident memory {:.1} MiB",
        a.rate,
        a.steady,
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.max() as f64 / 1000.0,
        steady_peak as f64 / 1024.0
    );
    Ok(())
}
