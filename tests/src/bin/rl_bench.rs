//! `rl-bench`: the rl-pipeline's benchmark (`make bench`; results in docs/BENCHMARKS.md).
//!
//! 1. Join throughput: `--tasks` tasks (default 125 000) of four clean events each — routing
//!    decision, start, completion, judgment — are pre-loaded once into `PERF_EVENTS` as the
//!    collector writes them, interleaved as a platform emits them (the decision of one task
//!    beside the start of the previous one, the completion of the one before and the judgment
//!    of the one before that). Then, per run, with the checkpoints, consumers, `RL_BATCHES` and
//!    the ledger deleted first and the order of the two alternating:
//!    - **identity**: one owner loop per partition on the pipeline's durable `rl-p<N>` from the
//!      beginning (`modelperf_bus::run_owner`: the same bounded pull of `fetch_batch` with a
//!      1 s expiry, a checkpoint in `modelperf_state` and one ack-all every
//!      `checkpoint_interval`), which neither decodes nor publishes; timed until every
//!      partition has applied its last sequence;
//!    - **pipeline**: the real rl-pipeline ([`App`], the service's defaults except a batch age
//!      of 1 s, so the last partial batches do not wait a minute) in this process, timed from
//!      the start of its owners until the samples published (`modelperf_rl_samples_total`) equal
//!      the tasks: decode, join, reward, batch, ledger, publish.
//!
//!    Both read the same partitions through one connection with the same settings.
//! 2. Open joins: a fresh pre-load of `--open-joins` tasks (default 1 000 000) with a routing
//!    decision and a completion but no judgment, so every task stays joined (join window 1 h).
//!    The pipeline binary reads them; its resident memory is reported once the open joins
//!    (`modelperf_rl_open_joins`) equal the tasks. Then it is killed with `kill -9` and
//!    restarted: the time until every join is rebuilt from the stream, and the memory then.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::Context;
use chrono::{DateTime, Utc};
use modelperf_bus::{CheckpointStore, OwnerConfig, Topology, buckets, streams};
use modelperf_client::{EventBuilder, KindData};
use modelperf_e2e::bench::{
    CpuMeter, Identity, Preloader, Running, Timed, bin, median, messages, metric_sum, mix, rss_kib, watch_rss,
};
use modelperf_rl_pipeline::App;
use modelperf_schema::{Cost, Event, ModelRef};
use modelperf_telemetry::PrometheusHandle;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

// The same allocator as the service binaries.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    tasks: u64,
    runs: usize,
    open_joins: u64,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args { tasks: 125_000, runs: 3, open_joins: 1_000_000 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--tasks" => a.tasks = value()?.parse()?,
            "--runs" => a.runs = value()?.parse()?,
            "--open-joins" => a.open_joins = value()?.parse()?,
            other => bail!("unknown flag {other} (--tasks N --runs N --open-joins N; 0 skips a part)"),
        }
    }
    Ok(a)
}

// ---------------------------------------------------------------------------------------------
// The workload.

const MODELS: [(&str, &str); 6] = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4"),
    ("anthropic", "claude-3-5-haiku"),
    ("google", "gemini-2.5-pro"),
    ("together", "deepseek-ai/DeepSeek-V3"),
];

const TASK_TYPES: [&str; 5] = ["code_edit", "code_review", "summarize", "sql", "triage"];

/// One part of task `t` of the run `tag`.
#[derive(Debug, Clone, Copy)]
enum Part {
    Decision,
    Start,
    Completion,
    Judgment,
}

fn part(tag: &str, t: u64, part: Part, ts: DateTime<Utc>) -> anyhow::Result<Event> {
    let h = mix(t);
    let (provider, name) = MODELS[(h % MODELS.len() as u64) as usize];
    let other = MODELS[((h + 1) % MODELS.len() as u64) as usize];
    let model = ModelRef::new(provider, name);
    let task_type = TASK_TYPES[((h >> 8) % TASK_TYPES.len() as u64) as usize];
    let latency = 200.0 + ((h >> 16) % 8_000) as f64;
    let task_id = format!("{tag}-task-{t}");
    fn envelope<D: KindData>(
        b: EventBuilder<D>,
        id: String,
        task: &str,
        ty: &str,
        ts: DateTime<Utc>,
    ) -> EventBuilder<D> {
        b.id(id).ts(ts).source("arbiter.orchestrator").task_id(task).task_type(ty).tenant("acme").agent_id("agent-3")
    }
    let e = match part {
        Part::Decision => {
            let b = EventBuilder::routing_decision("bandit", "agent-3", model.clone(), 2.5)
                .candidate("agent-3", model, 0.71, 0.6)
                .candidate("agent-9", ModelRef::new(other.0, other.1), 0.52, 0.4)
                .probability(0.6)
                .feature("prompt_tokens_est", 400 + (h >> 20) % 4_000)
                .feature("complexity", "medium");
            envelope(b, format!("{task_id}-r"), &task_id, task_type, ts).build()?
        }
        Part::Start => {
            let b = EventBuilder::task_started().queue_ms(5.0 + (h >> 28) as f64 % 200.0);
            envelope(b, format!("{task_id}-s"), &task_id, task_type, ts).build()?
        }
        Part::Completion => {
            let (input, output) = (300 + (h >> 32) % 3_000, 40 + (h >> 44) % 900);
            let b = EventBuilder::task_completed(latency, !(h >> 40).is_multiple_of(13))
                .model(model)
                .tokens(input, output)
                .tool_calls((h >> 50) % 6);
            let mut e = envelope(b, format!("{task_id}-c"), &task_id, task_type, ts).build()?;
            e.cost = Some(Cost::priced(input as f64 * 2.5e-6 + output as f64 * 1e-5, format!("{provider}/{name}")));
            e
        }
        Part::Judgment => {
            let score = ((h >> 8) % 1_000) as f64 / 1_000.0;
            let b = EventBuilder::judgment(model, "openai/gpt-4o", score).passed(score >= 0.5).confidence(0.8);
            envelope(b, format!("{task_id}-j"), &task_id, task_type, ts).build()?
        }
    };
    Ok(e)
}

/// Pre-loads `tasks` tasks made of `parts`, interleaved: at step `i` part `k` of task `i - k`.
async fn preload(js: &Context, partitions: u32, tag: &str, tasks: u64, parts: &[Part]) -> anyhow::Result<Preloader> {
    let mut out = Preloader::new(js, partitions);
    // Two milliseconds per task, ending a minute ago.
    let from = Utc::now() - chrono::TimeDelta::milliseconds((tasks * 2) as i64) - chrono::TimeDelta::minutes(1);
    let lag = parts.len() as u64;
    let progress_every = (tasks / 10).max(1);
    for step in 0..tasks + lag {
        for (k, p) in parts.iter().enumerate() {
            let Some(t) = step.checked_sub(k as u64).filter(|t| *t < tasks) else { continue };
            let ts = from + chrono::TimeDelta::milliseconds((t * 2 + k as u64) as i64);
            out.publish(&part(tag, t, *p, ts)?).await?;
        }
        if step > 0 && step % progress_every == 0 {
            eprintln!("  pre-load: {step} of {tasks} tasks");
        }
    }
    let took = out.finish().await?;
    eprintln!("  pre-loaded {} events in {:.1} s", out.events, took.as_secs_f64());
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The runs.

/// Forgets everything a previous run left: checkpoints and consumers of the partitions, the
/// batches (their ids are deterministic: the stream would drop them as duplicates) and the
/// ledger (it would hold every task).
async fn reset(js: &Context, config: &modelperf_rl_pipeline::Config) -> anyhow::Result<()> {
    let state = js.get_key_value(buckets::STATE).await?;
    let events = js.get_stream(streams::EVENTS).await?;
    for p in 0..config.bus.partitions {
        state.delete(format!("rl.p{p}")).await.with_context(|| format!("delete checkpoint rl.p{p}"))?;
        let _ = events.delete_consumer(&format!("rl-p{p}")).await;
    }
    js.delete_stream(streams::RL_BATCHES).await.map_err(|e| anyhow::anyhow!("delete RL_BATCHES: {e}"))?;
    js.delete_key_value(buckets::RL_LEDGER).await.map_err(|e| anyhow::anyhow!("delete the ledger: {e}"))?;
    Topology::contract(&config.bus, 1).ensure(js).await?;
    Ok(())
}

/// The identity drain: events per second until every partition applied its last sequence.
async fn identity(
    js: &Context,
    config: &modelperf_rl_pipeline::Config,
    load: &Preloader,
    pids: &[(&str, u32)],
) -> anyhow::Result<(f64, String)> {
    let topology = Topology::contract(&config.bus, 1);
    let cfg = OwnerConfig {
        stage: "rl-identity".into(),
        fetch_batch: config.bus.fetch_batch,
        checkpoint_interval: config.bus.checkpoint_interval,
        max_in_flight: config.bus.max_ack_pending as usize,
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut ready = Vec::new();
    for p in 0..config.bus.partitions {
        let (store, _) = CheckpointStore::open(js, &format!("rl.p{p}")).await?;
        let consumer = modelperf_bus::open_at(js, &topology, &format!("rl-p{p}"), 1).await?;
        let last_seq = load.last_seq[p as usize];
        ready.push((
            store,
            consumer,
            Timed { inner: Identity, last_seq, done: (last_seq > 0).then(|| done_tx.clone()) },
        ));
    }
    drop(done_tx);
    let stop = CancellationToken::new();
    let cpu = CpuMeter::start(pids);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mut store, consumer, mut owner) in ready {
        let (js, cfg, stop) = (js.clone(), cfg.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            modelperf_bus::run_owner(&js, consumer, &mut store, &mut owner, 0, &cfg, stop, CancellationToken::new())
                .await
        }));
    }
    let mut finished = started;
    while let Some(at) =
        tokio::time::timeout(Duration::from_secs(120), done_rx.recv()).await.context("identity stalled")?
    {
        finished = finished.max(at);
    }
    let cpu = cpu.report();
    stop.cancel();
    for t in tasks {
        t.await??;
    }
    Ok((load.events as f64 / (finished - started).as_secs_f64(), cpu))
}

/// The pipeline drain: events per second until every task is in a published batch.
async fn pipeline(
    config: &modelperf_rl_pipeline::Config,
    prometheus: &PrometheusHandle,
    load: &Preloader,
    tasks: u64,
    pids: &[(&str, u32)],
) -> anyhow::Result<(f64, String)> {
    let samples = || metric_sum(&prometheus.render(), "modelperf_rl_samples_total");
    let before = samples();
    let app = App::build(config.clone(), prometheus.clone()).await?;
    let (stop, stopped) = oneshot::channel::<()>();
    let cpu = CpuMeter::start(pids);
    let started = Instant::now();
    let running = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let mut last = (before, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = samples();
        if now - before >= tasks as f64 {
            break;
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            bail!("the pipeline stalled at {} of {tasks} samples", now - before);
        }
        if running.is_finished() {
            bail!("the pipeline stopped: {:?}", running.await?);
        }
    }
    let elapsed = started.elapsed();
    let cpu = cpu.report();
    let _ = stop.send(());
    running.await??;
    let published = samples() - before;
    anyhow::ensure!(published == tasks as f64, "{published} samples published for {tasks} tasks");
    Ok((load.events as f64 / elapsed.as_secs_f64(), cpu))
}

async fn throughput(url: &str, server: Option<u32>, a: &Args, prometheus: &PrometheusHandle) -> anyhow::Result<()> {
    let mut pids = vec![("bench", std::process::id())];
    pids.extend(server.map(|p| ("nats-server", p)));
    let mut config = modelperf_rl_pipeline::Config::default();
    config.nats.url = url.to_owned();
    config.http.listen = "127.0.0.1:0".parse()?;
    config.rl.batch_max_age = Duration::from_secs(1);
    let client = modelperf_bus::connect(&config.nats, "bench").await?;
    let js = modelperf_bus::jetstream(client, Duration::from_secs(10), config.bus.max_ack_pending as usize);
    Topology::contract(&config.bus, 1).ensure(&js).await?;
    let all = [Part::Decision, Part::Start, Part::Completion, Part::Judgment];
    eprintln!("join throughput: pre-loading {} tasks × 4 events", a.tasks);
    let load = preload(&js, config.bus.partitions, "t", a.tasks, &all).await?;
    let (mut ids, mut pipes) = (Vec::new(), Vec::new());
    for run in 0..a.runs {
        for first in [run % 2 == 0, run % 2 != 0] {
            reset(&js, &config).await?;
            if first {
                let (r, cpu) = identity(&js, &config, &load, &pids).await?;
                println!("run {}: identity  {r:>8.0} events/s = {:>7.0} tasks/s (CPU: {cpu})", run + 1, r / 4.0);
                ids.push(r);
            } else {
                let (r, cpu) = pipeline(&config, prometheus, &load, a.tasks, &pids).await?;
                println!("run {}: pipeline  {r:>8.0} events/s = {:>7.0} tasks/s (CPU: {cpu})", run + 1, r / 4.0);
                pipes.push(r);
            }
        }
    }
    let dead = messages(&js, streams::DLQ).await?;
    anyhow::ensure!(dead == 0, "{dead} events dead-lettered");
    let (id, pipe) = (median(ids), median(pipes));
    println!(
        "median of {}: identity {:.0} tasks/s, pipeline {:.0} joined tasks/s, ratio {:.2}",
        a.runs,
        id / 4.0,
        pipe / 4.0,
        pipe / id
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The open joins.

async fn open_joins_of(http: &str) -> Option<f64> {
    let text = modelperf_telemetry::http::get(format!("http://{http}/metrics")).await.ok()?.text().await.ok()?;
    Some(metric_sum(&text, "modelperf_rl_open_joins"))
}

fn start_pipeline(url: &str, http: &str) -> anyhow::Result<Running> {
    Ok(Running(
        Command::new(bin("modelperf-rl-pipeline")?)
            .env("MODELPERF_NATS__URL", url)
            .env("MODELPERF_HTTP__LISTEN", http)
            .env("MODELPERF_RL__JOIN_WINDOW", "1h")
            .env("MODELPERF_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start modelperf-rl-pipeline")?,
    ))
}

/// Waits until the process holds `want` open joins; returns when, and its resident memory then.
async fn joined(child: &mut Running, http: &str, want: u64, started: Instant) -> anyhow::Result<(Duration, u64)> {
    let mut last = (0.0, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(status) = child.0.try_wait()? {
            bail!("modelperf-rl-pipeline exited with {status}");
        }
        let open = open_joins_of(http).await.unwrap_or(0.0);
        if open >= want as f64 {
            anyhow::ensure!(open == want as f64, "{open} open joins for {want} tasks");
            return Ok((started.elapsed(), rss_kib(child.0.id()).unwrap_or(0)));
        }
        if open != last.0 {
            last = (open, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(120) {
            bail!("stuck at {open} of {want} open joins");
        }
    }
}

async fn open_joins(url: &str, tasks: u64) -> anyhow::Result<()> {
    let mut config = modelperf_rl_pipeline::Config::default();
    config.nats.url = url.to_owned();
    let client = modelperf_bus::connect(&config.nats, "bench").await?;
    let js = modelperf_bus::jetstream(client, Duration::from_secs(10), config.bus.max_ack_pending as usize);
    let topology = Topology::contract(&config.bus, 1);
    topology.ensure(&js).await?;
    js.delete_stream(streams::EVENTS).await.map_err(|e| anyhow::anyhow!("delete PERF_EVENTS: {e}"))?;
    topology.ensure(&js).await?;
    reset(&js, &config).await?;
    eprintln!("open joins: pre-loading {tasks} tasks × (decision, completion)");
    let load = preload(&js, config.bus.partitions, "o", tasks, &[Part::Decision, Part::Completion]).await?;
    let http = format!("127.0.0.1:{}", modelperf_testkit::free_port());
    let mib = |kib: u64| kib as f64 / 1024.0;
    let started = Instant::now();
    let mut child = start_pipeline(url, &http)?;
    let stop = CancellationToken::new();
    let peak = watch_rss(child.0.id(), stop.clone());
    let (took, rss) = joined(&mut child, &http, tasks, started).await?;
    stop.cancel();
    println!(
        "{tasks} open joins ({} events read in {:.1} s): resident memory {:.1} MiB (peak {:.1} MiB), {:.0} bytes per join",
        load.events,
        took.as_secs_f64(),
        mib(rss),
        mib(peak.await?),
        rss as f64 * 1024.0 / tasks as f64
    );
    // Until the checkpoint covers the stream: the restart then rebuilds from the stream, not
    // by reading events it had never checkpointed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut covered = true;
        for p in 0..config.bus.partitions {
            let cp = CheckpointStore::open(&js, &format!("rl.p{p}")).await?.1;
            covered &= cp.is_some_and(|c| c.applied_seq >= load.last_seq[p as usize]);
        }
        if covered || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    child.0.kill()?; // SIGKILL
    child.0.wait()?;
    // The killed process's leases run out first; the rebuild is timed from then.
    tokio::time::sleep(config.bus.lease_ttl + Duration::from_secs(1)).await;
    let started = Instant::now();
    let mut child = start_pipeline(url, &http)?;
    let (took, rss) = joined(&mut child, &http, tasks, started).await?;
    println!(
        "after kill -9, the leases' expiry ({:?}) and a restart: {tasks} joins rebuilt from the stream in {:.1} s, resident memory {:.1} MiB",
        config.bus.lease_ttl,
        took.as_secs_f64(),
        mib(rss)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let server = modelperf_testkit::NatsServer::start().await?;
    let url = server.url().to_owned();
    // The in-process pipeline's metrics are read from this handle (MODELPERF_LOG=warn quietens it).
    let prometheus = modelperf_telemetry::init("rl-bench")?.prometheus;
    if a.tasks > 0 {
        throughput(&url, server.pid(), &a, &prometheus).await?;
    }
    if a.open_joins > 0 {
        open_joins(&url, a.open_joins).await?;
    }
    Ok(())
}
