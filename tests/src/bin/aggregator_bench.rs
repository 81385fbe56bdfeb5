//! `aggregator-bench`: the aggregator's benchmark (`make bench`; results in docs/BENCHMARKS.md).
//!
//! 1. Drain: N clean events — a realistic mix over more than 10 000 series, spread over five
//!    minutes of recent event time — are pre-loaded once into `PERF_EVENTS` as the collector
//!    writes them (`perf.events.<kind>.<p>`, MessagePack, `Nats-Msg-Id` = event id). Then each
//!    partition's durable consumer `aggregator-p<N>` is recreated from the beginning and drained
//!    by one owner loop per partition (`modelperf_bus::run_owner`: the same pull, fetch batch,
//!    checkpoint every interval in `modelperf_state` and ack-all as the service), timed until
//!    every partition has applied its last sequence. Two owners run in this one binary with the
//!    same connection settings:
//!    - **identity**: fetches and acks, but neither decodes nor publishes anything;
//!    - **aggregator**: the real partition owner (`AggOwner`) — decode, fold into `1m` windows,
//!      publish partials to `PERF_PARTIALS` at each checkpoint.
//!
//!    Checkpoints are deleted and `PERF_PARTIALS` and `PERF_DLQ` recreated before every drain;
//!    the order of the two alternates per run. One deviation from the service: the drains'
//!    JetStream context allows [`PUBLISH_INFLIGHT`] publish acks in flight, past a stall of the
//!    service's shared bound.
//! 2. Memory: the aggregator binary (owners, finaliser, InfluxDB) drains a fresh pre-load; its
//!    resident memory is sampled every 200 ms until the owners and the finaliser have settled.
//!    When it stalls with the defaults (nothing acknowledged for 30 s), the stall is reported and
//!    the drain repeated with `MODELPERF_BUS__MAX_ACK_PENDING` = [`PUBLISH_INFLIGHT`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, Context};
use chrono::{DateTime, Utc};
use modelperf_aggregator::owner::AggOwner;
use modelperf_bus::{CheckpointStore, OwnerConfig, Topology, buckets, streams};
use modelperf_client::{EventBuilder, KindData};
use modelperf_e2e::bench::{Identity, Preloader, Running, Timed, bin, median, messages, mix, rss_kib, watch_rss};
use modelperf_schema::{Cost, Event, ModelRef, Privacy, PrivacyLevel};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

// The same allocator as the service binaries.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    events: u64,
    runs: usize,
    /// The consumers' `max_ack_pending` (default: the contract's).
    max_ack_pending: Option<i64>,
    /// Tenants: the completions cycle through 25 models × 20 task types × this.
    tenants: u64,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args { events: 500_000, runs: 3, max_ack_pending: None, tenants: 20 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--events" => a.events = value()?.parse()?,
            "--runs" => a.runs = value()?.parse()?,
            "--max-ack-pending" => a.max_ack_pending = Some(value()?.parse()?),
            "--tenants" => a.tenants = value()?.parse()?,
            other => bail!("unknown flag {other} (--events N --runs N --max-ack-pending N --tenants N)"),
        }
    }
    Ok(a)
}

// ---------------------------------------------------------------------------------------------
// The workload.

/// 25 models: (provider, name, pinned version).
const MODELS: [(&str, &str, Option<&str>); 25] = [
    ("openai", "gpt-4o", Some("2024-08-06")),
    ("openai", "gpt-4o-mini", Some("2024-07-18")),
    ("openai", "gpt-4.1", None),
    ("openai", "o3", None),
    ("openai", "o4-mini", None),
    ("anthropic", "claude-sonnet-4", Some("20250514")),
    ("anthropic", "claude-opus-4", Some("20250514")),
    ("anthropic", "claude-3-5-haiku", None),
    ("anthropic", "claude-sonnet-4-5", None),
    ("anthropic", "claude-opus-4-1", None),
    ("google", "gemini-2.5-pro", None),
    ("google", "gemini-2.5-flash", None),
    ("google", "gemini-2.0-flash", Some("001")),
    ("vertex", "gemini-2.5-pro", None),
    ("vertex", "claude-sonnet-4", Some("20250514")),
    ("azure_openai", "gpt-4o", Some("2024-11-20")),
    ("azure_openai", "gpt-4.1-mini", None),
    ("bedrock", "claude-3-7-sonnet", None),
    ("bedrock", "llama-3.3-70b", None),
    ("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo", None),
    ("together", "deepseek-ai/DeepSeek-V3", None),
    ("together", "Qwen/Qwen2.5-Coder-32B-Instruct", None),
    ("mistral", "mistral-large", Some("2411")),
    ("mistral", "codestral", Some("2501")),
    ("deepseek", "deepseek-reasoner", None),
];

const TASK_TYPES: [&str; 20] = [
    "code_edit",
    "code_review",
    "refactor",
    "test_gen",
    "doc_gen",
    "summarize",
    "translate",
    "classify",
    "extract",
    "plan",
    "chat",
    "search",
    "sql",
    "debug",
    "triage",
    "rerank",
    "qa",
    "math",
    "vision",
    "agentic",
];

/// Models × task types: each tenant's share of the completions' series.
const PER_TENANT: u64 = (MODELS.len() * TASK_TYPES.len()) as u64;

/// Event time covered by a pre-load.
const SPAN: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

fn ms(x: f64) -> chrono::TimeDelta {
    chrono::TimeDelta::microseconds((x * 1000.0) as i64)
}

/// The events of task `t` at `ts`, as the collector leaves them: a completion always (tokens,
/// cost, sample rate; one in 13 failed), a start for one task in five, a routing decision for
/// one in seven, a judgment for one in seven. Completions cycle through every model × task type
/// × tenant; starts and routing decisions carry no model.
fn task_events(t: u64, ts: DateTime<Utc>, tenants: u64, tag: &str) -> anyhow::Result<Vec<Event>> {
    let h = mix(t);
    let combo = t % (PER_TENANT * tenants.max(1));
    let (provider, name, version) = MODELS[(combo % MODELS.len() as u64) as usize];
    let task_type_index = (combo / MODELS.len() as u64) as usize % TASK_TYPES.len();
    let task_type = TASK_TYPES[task_type_index];
    let tenant = format!("tenant-{:02}", combo / PER_TENANT);
    let mut model = ModelRef::new(provider, name);
    model.version = version.map(str::to_owned);
    let task_id = format!("{tag}-task-{t}");
    // Every fifth task type is sampled at 1 in 4 by the collector.
    let sample_rate = if task_type_index % 5 == 4 { 0.25 } else { 1.0 };
    let user = format!("{:016x}{:016x}{:016x}{:016x}", mix(h), mix(h ^ 1), mix(h ^ 2), mix(h ^ 3));
    let envelope = Envelope { task_id: &task_id, task_type, tenant: &tenant, user: &user, sample_rate };
    // A typical latency per model and task type (200 ms to 10 s), and a log-uniform spread of
    // 16× around it per event (a quarter to four times).
    let typical = 200.0 * 50f64.powf((mix(combo % PER_TENANT) % 1_000) as f64 / 1_000.0);
    let latency = typical * 16f64.powf((h % 10_000) as f64 / 10_000.0 - 0.5);
    let mut out = Vec::with_capacity(4);
    if (h >> 16).is_multiple_of(7) {
        let other = MODELS[((combo + 7) % MODELS.len() as u64) as usize];
        let b = EventBuilder::routing_decision("bandit", format!("agent-{}", h % 12), model.clone(), 2.5)
            .candidate(format!("agent-{}", h % 12), model.clone(), 0.71, 0.6)
            .candidate("agent-fallback", ModelRef::new(other.0, other.1), 0.52, 0.4)
            .probability(0.6)
            .feature("prompt_tokens_est", 400 + (h >> 20) % 4_000)
            .feature("complexity", "medium");
        out.push(envelope.event(b, "r", ts - ms(50.0))?);
    }
    if (h >> 24).is_multiple_of(5) {
        out.push(envelope.event(EventBuilder::task_started().queue_ms(5.0 + (h >> 28) as f64 % 200.0), "s", ts)?);
    }
    let (input, output) = (300 + (h >> 32) % 3_000, 40 + (h >> 44) % 900);
    let success = !(h >> 40).is_multiple_of(13);
    let mut done = EventBuilder::task_completed(latency, success)
        .model(model.clone())
        .tokens(input, output)
        .tool_calls((h >> 50) % 6)
        .ttft_ms(latency.min(400.0) * 0.5);
    if !success {
        done = done.error_kind("timeout");
    }
    let mut completed = envelope.event(done, "c", ts + ms(latency))?;
    completed.cost = Some(Cost::priced(input as f64 * 2.5e-6 + output as f64 * 1e-5, format!("{provider}/{name}")));
    out.push(completed);
    if (h >> 56).is_multiple_of(7) {
        let score = ((h >> 8) % 1_000) as f64 / 1_000.0;
        let b = EventBuilder::judgment(model, "openai/gpt-4o", score)
            .criterion("correctness", score)
            .passed(score >= 0.5)
            .confidence(0.8)
            .tokens(900, 60);
        let mut judged = envelope.event(b, "j", ts + ms(latency + 1_500.0))?;
        judged.cost = Some(Cost::priced(900.0 * 2.5e-6 + 60.0 * 1e-5, "openai/gpt-4o"));
        out.push(judged);
    }
    Ok(out)
}

/// The envelope shared by the events of one task.
struct Envelope<'a> {
    task_id: &'a str,
    task_type: &'a str,
    tenant: &'a str,
    user: &'a str,
    sample_rate: f64,
}

impl Envelope<'_> {
    /// The event `<task id>-<suffix>` at `ts`, with what the collector adds.
    fn event<D: KindData>(&self, b: EventBuilder<D>, suffix: &str, ts: DateTime<Utc>) -> anyhow::Result<Event> {
        let mut e = b
            .id(format!("{}-{suffix}", self.task_id))
            .ts(ts)
            .source("arbiter.orchestrator")
            .task_id(self.task_id)
            .agent_id("agent-7")
            .task_type(self.task_type)
            .tenant(self.tenant)
            .user_id(self.user)
            .attr("region", "eu-west-1")
            .build()?;
        e.sample_rate = Some(self.sample_rate);
        e.received_at = Some(ts + ms(3.0));
        e.privacy = Some(Privacy { level: PrivacyLevel::Pseudonymize, key_id: Some("k1".into()) });
        Ok(e)
    }
}

/// What a pre-load stored.
struct Preload {
    /// The last stream sequence of each partition (0: none).
    last_seq: Vec<u64>,
    events: u64,
    kinds: BTreeMap<&'static str, u64>,
    /// Distinct series under the default group-by.
    series: usize,
    /// The most series in one `1m` window.
    series_per_window: usize,
    first_ts: DateTime<Utc>,
    last_ts: DateTime<Utc>,
    elapsed: Duration,
}

/// Publishes `n` clean events to `perf.events.<kind>.<p>` with their ids, acks pipelined.
async fn preload(js: &Context, n: u64, partitions: u32, tenants: u64, tag: &str) -> anyhow::Result<Preload> {
    let group_by = modelperf_aggregator::config::AggregatorConfig::default().group_by;
    // Ending a minute ago: the latest completion (task time + latency) is still in the past, so
    // a drain's watermark never depends on when it runs.
    let from = Utc::now() - SPAN - chrono::TimeDelta::minutes(1);
    let mut p = Preload {
        last_seq: vec![0; partitions as usize],
        events: 0,
        kinds: BTreeMap::new(),
        series: 0,
        series_per_window: 0,
        first_ts: DateTime::<Utc>::MAX_UTC,
        last_ts: DateTime::<Utc>::MIN_UTC,
        elapsed: Duration::ZERO,
    };
    let mut series_ids: HashMap<BTreeMap<String, String>, u32> = HashMap::new();
    let mut per_window: HashMap<DateTime<Utc>, HashSet<u32>> = HashMap::new();
    let mut out = Preloader::new(js, partitions);
    let mut t = 0u64;
    'tasks: loop {
        let ts = from + SPAN * (out.events as i32) / (n.max(1) as i32);
        for e in task_events(t, ts, tenants, tag)? {
            if out.events == n {
                break 'tasks;
            }
            out.publish(&e).await?;
            *p.kinds.entry(e.kind().as_str()).or_default() += 1;
            p.first_ts = p.first_ts.min(e.ts);
            p.last_ts = p.last_ts.max(e.ts);
            let next = series_ids.len() as u32;
            let series = *series_ids.entry(modelperf_aggregator::window::series_of(&e, &group_by)).or_insert(next);
            let start = modelperf_aggregator::windows::window_start(e.ts, chrono::TimeDelta::minutes(1));
            per_window.entry(start).or_default().insert(series);
        }
        t += 1;
    }
    p.elapsed = out.finish().await?;
    p.events = out.events;
    p.last_seq = out.last_seq;
    p.series = series_ids.len();
    p.series_per_window = per_window.values().map(HashSet::len).max().unwrap_or(0);
    Ok(p)
}

// ---------------------------------------------------------------------------------------------
// The drain.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Identity,
    Aggregator,
}

struct Drained {
    /// Events per second until every partition applied its last sequence.
    rate: f64,
    /// Until every partition's consumer has acknowledged (checkpointed) its last sequence.
    settled: Duration,
    partials: u64,
    /// Peak resident memory of this process during the drain (KiB).
    peak_rss: u64,
}

/// Messages of the partition consumers not yet acknowledged (pending or in flight); `None`
/// while a consumer is missing.
async fn unacknowledged(js: &Context, partitions: u32) -> anyhow::Result<Option<u64>> {
    let stream = js.get_stream(streams::EVENTS).await?;
    let mut total = 0;
    for p in 0..partitions {
        let Ok(info) = stream.consumer_info(format!("aggregator-p{p}")).await else { return Ok(None) };
        total += info.num_pending + info.num_ack_pending as u64;
    }
    Ok(Some(total))
}

/// How long nothing may move before a drain counts as stalled.
const STALL: Duration = Duration::from_secs(30);

/// Notices when the unacknowledged count stops moving.
struct Watchdog {
    last: Option<u64>,
    since: Instant,
}

impl Watchdog {
    fn new() -> Self {
        Self { last: None, since: Instant::now() }
    }

    fn moved(&mut self) {
        self.since = Instant::now();
    }

    /// Whether nothing moved for [`STALL`].
    fn stalled(&mut self, unacknowledged: Option<u64>) -> bool {
        if unacknowledged != self.last {
            self.last = unacknowledged;
            self.moved();
        }
        self.since.elapsed() >= STALL
    }
}

/// Deletes the streams `names` and ensures the topology again. Purging is not enough: a stream
/// keeps its duplicate-detection state, and partials and metrics have deterministic ids, so the
/// next drain's outputs would be dropped as duplicates instead of stored.
async fn recreate(js: &Context, bus: &modelperf_bus::BusConfig, names: &[&str]) -> anyhow::Result<()> {
    for name in names {
        js.delete_stream(name).await.map_err(|e| anyhow::anyhow!("delete stream {name}: {e}"))?;
    }
    Topology::contract(bus, 1).ensure(js).await?;
    Ok(())
}

/// Deletes the checkpoints of the partition owners and the finaliser.
async fn forget_checkpoints(js: &Context, partitions: u32) -> anyhow::Result<()> {
    let kv = js.get_key_value(buckets::STATE).await?;
    for key in (0..partitions).map(|p| format!("aggregator.p{p}")).chain(["aggregator.final".to_owned()]) {
        kv.delete(&key).await.with_context(|| format!("delete checkpoint {key}"))?;
    }
    Ok(())
}

/// Publish acks the drains' JetStream context may await at once. The service sizes its one
/// shared context from `MODELPERF_BUS__MAX_ACK_PENDING` (10 000); an owner loop holds the ack
/// of everything a checkpoint publishes until all of it is sent, so when the owners close more
/// series than that at once they wait on each other for ever (docs/BENCHMARKS.md, "Aggregator").
/// Set high enough that the drains measure the work, not that stall; consumers keep the default.
const PUBLISH_INFLIGHT: usize = 1_000_000;

/// Drains every partition from the beginning with `stage`, one owner loop per partition.
async fn drain(
    url: &str,
    stage: Stage,
    config: &modelperf_aggregator::Config,
    load: &Preload,
) -> anyhow::Result<Drained> {
    let partitions = config.bus.partitions;
    let nats = modelperf_bus::NatsConfig { url: url.to_owned(), ..Default::default() };
    let client = modelperf_bus::connect(&nats, "bench-owners").await?;
    let js = modelperf_bus::jetstream(client.clone(), Duration::from_secs(10), PUBLISH_INFLIGHT);
    let topology = Topology::contract(&config.bus, 1);
    forget_checkpoints(&js, partitions).await?;
    recreate(&js, &config.bus, &[streams::PARTIALS, streams::DLQ]).await?;
    let a = &config.aggregator;
    let owner_cfg = OwnerConfig {
        stage: modelperf_aggregator::STAGE.into(),
        fetch_batch: config.bus.fetch_batch,
        checkpoint_interval: config.bus.checkpoint_interval,
        max_in_flight: config.bus.max_ack_pending as usize,
    };
    // Open everything first, so that the clock times the owners only.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut ready = Vec::new();
    for p in 0..partitions {
        let key = format!("aggregator.p{p}");
        let (store, cp) = CheckpointStore::open(&js, &key).await?;
        anyhow::ensure!(cp.is_none(), "checkpoint {key} survived its deletion");
        let consumer = modelperf_bus::open_at(&js, &topology, &format!("aggregator-p{p}"), 1).await?;
        let last_seq = load.last_seq[p as usize];
        let done = (last_seq > 0).then(|| done_tx.clone());
        ready.push((p, store, consumer, last_seq, done));
    }
    drop(done_tx);
    let mut waiting = load.last_seq.iter().filter(|s| **s > 0).count();
    let stop = CancellationToken::new();
    let rss = watch_rss(std::process::id(), stop.clone());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (p, mut store, consumer, last_seq, done) in ready {
        let (js, cfg, stop) = (js.clone(), owner_cfg.clone(), stop.clone());
        let task = match stage {
            Stage::Identity => {
                let mut owner = Timed { inner: Identity, last_seq, done };
                tokio::spawn(async move {
                    let lost = CancellationToken::new();
                    modelperf_bus::run_owner(&js, consumer, &mut store, &mut owner, 0, &cfg, stop, lost).await
                })
            }
            Stage::Aggregator => {
                let agg =
                    AggOwner::new(p, &a.owner_windows(), a.allowed_lateness, a.max_revision_age, &a.group_by, None);
                let mut owner = Timed { inner: agg, last_seq, done };
                tokio::spawn(async move {
                    let lost = CancellationToken::new();
                    modelperf_bus::run_owner(&js, consumer, &mut store, &mut owner, 0, &cfg, stop, lost).await
                })
            }
        };
        tasks.push(task);
    }
    // Until every partition applied its last sequence (reported by `Timed`), then until every
    // consumer acknowledged it (the last checkpoint). Consumer state is polled once a second
    // while timed, to keep the polling off the measurement.
    let mut finished = started;
    let mut applied = None;
    let mut watchdog = Watchdog::new();
    loop {
        let poll = if applied.is_none() { Duration::from_secs(1) } else { Duration::from_millis(50) };
        if let Ok(Some(at)) = tokio::time::timeout(poll, done_rx.recv()).await {
            finished = finished.max(at);
            waiting -= 1;
            watchdog.moved();
            if waiting > 0 {
                continue;
            }
        }
        if waiting == 0 && applied.is_none() {
            applied = Some(finished - started);
        }
        if let Some(p) = tasks.iter().position(|t| t.is_finished()) {
            let result = tasks.remove(p).await?;
            bail!("the owner of partition {p} stopped before it settled: {result:?}");
        }
        let left = unacknowledged(&js, partitions).await?;
        if applied.is_some() && left == Some(0) {
            break;
        }
        if watchdog.stalled(left) {
            bail!(
                "{stage:?} drain stalled: nothing moved for {STALL:?}, {} partitions still applying, {left:?} messages unacknowledged",
                waiting
            );
        }
    }
    let applied = applied.context("applied")?;
    let settled = started.elapsed();
    stop.cancel();
    let peak_rss = rss.await?;
    for (p, task) in tasks.into_iter().enumerate() {
        let checkpointed = task.await??;
        anyhow::ensure!(checkpointed >= load.last_seq[p], "partition {p} checkpointed {checkpointed}");
    }
    let dead = messages(&js, streams::DLQ).await?;
    anyhow::ensure!(dead == 0, "{dead} events dead-lettered");
    let partials = messages(&js, streams::PARTIALS).await?;
    client.drain().await?;
    Ok(Drained { rate: load.events as f64 / applied.as_secs_f64(), settled, partials, peak_rss })
}

// ---------------------------------------------------------------------------------------------
// The process.

/// Whether the finaliser has read and acknowledged every partial stored so far.
async fn finaliser_settled(js: &Context) -> anyhow::Result<bool> {
    let stream = js.get_stream(streams::PARTIALS).await?;
    let Ok(info) = stream.consumer_info("aggregator-final").await else { return Ok(false) };
    Ok(info.num_pending == 0 && info.num_ack_pending == 0 && info.delivered.stream_sequence > 0)
}

/// The most series-windows the aggregator held at once, from its gauges.
#[derive(Debug, Default)]
struct Held {
    /// `modelperf_aggregator_open_series`, summed over the partitions.
    open: u64,
    /// `modelperf_aggregator_pending_series` (the finaliser's pending windows and roll-ups).
    pending: u64,
    /// The largest sum of both in one sample.
    together: u64,
}

/// Samples the aggregator's `/metrics` every 200 ms until `stop`; a scrape that fails (the
/// process still starting) is skipped.
fn watch_series(addr: &str, stop: CancellationToken) -> tokio::task::JoinHandle<Held> {
    let url = format!("http://{addr}/metrics");
    tokio::spawn(async move {
        let mut held = Held::default();
        let Ok(client) = modelperf_telemetry::http::client().timeout(Duration::from_secs(2)).build() else {
            return held;
        };
        let value = |line: &str| line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as u64;
        while !stop.is_cancelled() {
            if let Ok(text) = async { client.get(&url).send().await?.text().await }.await {
                let (mut open, mut pending) = (0, 0);
                for line in text.lines() {
                    if line.starts_with("modelperf_aggregator_open_series{") {
                        open += value(line);
                    } else if line.starts_with("modelperf_aggregator_pending_series") {
                        pending += value(line);
                    }
                }
                held.open = held.open.max(open);
                held.pending = held.pending.max(pending);
                held.together = held.together.max(open + pending);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        held
    })
}

/// The aggregator binary draining a fresh pre-load with `env` on top of the defaults; prints
/// its peak resident memory. Returns whether it drained (rather than stalled).
async fn process_drain(
    js: &Context,
    url: &str,
    influx: &str,
    n: u64,
    tenants: u64,
    bus: &modelperf_bus::BusConfig,
    env: &[(&str, &str)],
) -> anyhow::Result<bool> {
    let partitions = bus.partitions;
    forget_checkpoints(js, bus.partitions).await?;
    recreate(js, bus, &[streams::EVENTS, streams::PARTIALS, streams::METRICS, streams::DLQ]).await?;
    // Until the process recreates them, the consumers are missing (not "nothing pending").
    for p in 0..bus.partitions {
        js.get_stream(streams::EVENTS).await?.delete_consumer(&format!("aggregator-p{p}")).await?;
    }
    js.get_stream(streams::PARTIALS).await?.delete_consumer("aggregator-final").await?;
    let tag = format!("m{:x}", Utc::now().timestamp_millis());
    let load = preload(js, n, partitions, tenants, &tag).await?;
    let settings = if env.is_empty() {
        "defaults".to_owned()
    } else {
        env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
    };
    let http = format!("127.0.0.1:{}", modelperf_testkit::free_port());
    let mut child = Running(
        Command::new(bin("modelperf-aggregator")?)
            .env("MODELPERF_NATS__URL", url)
            .env("MODELPERF_BUS__PARTITIONS", partitions.to_string())
            .env("MODELPERF_INFLUX__URL", influx)
            .env("MODELPERF_INFLUX__DATABASE", format!("bench_{tag}"))
            .env("MODELPERF_HTTP__LISTEN", &http)
            .env("MODELPERF_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start modelperf-aggregator")?,
    );
    let pid = child.0.id();
    let stop = CancellationToken::new();
    let rss = watch_rss(pid, stop.clone());
    let held = watch_series(&http, stop.clone());
    let started = Instant::now();
    let mut owners = None;
    let mut watchdog = Watchdog::new();
    let mut last_check = Instant::now();
    let outcome = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(status) = child.0.try_wait()? {
            bail!("modelperf-aggregator exited with {status}");
        }
        let left = unacknowledged(js, partitions).await?;
        if owners.is_none() && left == Some(0) {
            owners = Some(started.elapsed());
        }
        if owners.is_some() && finaliser_settled(js).await? {
            break Ok(started.elapsed());
        }
        if last_check.elapsed() >= Duration::from_secs(1) {
            last_check = Instant::now();
            if watchdog.stalled(left) {
                break Err(left.unwrap_or(n));
            }
        }
    };
    let at_end = rss_kib(pid).unwrap_or(0);
    stop.cancel();
    let peak = rss.await?;
    let held = held.await?;
    drop(child);
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "process drain ({settings}): at most {} series-windows open in the owners, {} pending in the finaliser, {} together (sampled every 200 ms from /metrics); {:.0} bytes of peak resident memory per series-window held",
        held.open,
        held.pending,
        held.together,
        peak as f64 * 1024.0 / held.together.max(1) as f64
    );
    match outcome {
        Ok(finaliser) => {
            let owners = owners.context("owners settled")?;
            let (partials, metrics) = (messages(js, streams::PARTIALS).await?, messages(js, streams::METRICS).await?);
            println!(
                "process drain ({settings}): {} events, {} distinct series (up to {} in one 1m window); owners settled after {:.1} s ({:.0} events/s), finaliser after {:.1} s; {partials} partials, {metrics} metrics messages; peak resident memory {:.1} MiB",
                load.events,
                load.series,
                load.series_per_window,
                owners.as_secs_f64(),
                load.events as f64 / owners.as_secs_f64(),
                finaliser.as_secs_f64(),
                mib(peak)
            );
            Ok(true)
        }
        Err(left) => {
            let stalled_at = started.elapsed() - STALL;
            println!(
                "process drain ({settings}): STALLED — nothing acknowledged for {:?} from {:.0} s on, {} of {} events acknowledged, {} partials stored; resident memory {:.1} MiB at the stall (peak {:.1} MiB)",
                STALL,
                stalled_at.as_secs_f64(),
                load.events.saturating_sub(left),
                load.events,
                messages(js, streams::PARTIALS).await?,
                mib(at_end),
                mib(peak)
            );
            Ok(false)
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    anyhow::ensure!(a.events > 0, "--events must be positive");
    // Fail before minutes of work when the binary is missing.
    bin("modelperf-aggregator")?;
    let server = modelperf_testkit::NatsServer::start().await?;
    let url = server.url().to_owned();
    let mut config = modelperf_aggregator::Config::default();
    config.nats.url = url.clone();
    if let Some(m) = a.max_ack_pending {
        config.bus.max_ack_pending = m;
    }
    let partitions = config.bus.partitions;
    let js = jetstream::new(server.client().await?);
    Topology::contract(&config.bus, 1).ensure(&js).await?;

    println!(
        "aggregator benchmark: {} events, {} runs, {partitions} partitions, fetch batch {}, max ack pending {}, checkpoint every {:?}, windows {}, nats-server at {url}",
        a.events,
        a.runs,
        config.bus.fetch_batch,
        config.bus.max_ack_pending,
        config.bus.checkpoint_interval,
        config.aggregator.owner_windows().iter().map(|w| w.name().to_owned()).collect::<Vec<_>>().join(",")
    );
    let tag = format!("d{:x}", Utc::now().timestamp_millis());
    let load = preload(&js, a.events, partitions, a.tenants, &tag).await?;
    let kinds: Vec<String> = load.kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    println!(
        "pre-loaded {} events in {:.1} s ({}); {} distinct series, up to {} in one 1m window; event time {} .. {}",
        load.events,
        load.elapsed.as_secs_f64(),
        kinds.join(", "),
        load.series,
        load.series_per_window,
        load.first_ts.format("%H:%M:%S"),
        load.last_ts.format("%H:%M:%S"),
    );
    let (mut ids, mut aggs) = (Vec::new(), Vec::new());
    for run in 1..=a.runs {
        let order =
            if run % 2 == 1 { [Stage::Identity, Stage::Aggregator] } else { [Stage::Aggregator, Stage::Identity] };
        for stage in order {
            let d = drain(&url, stage, &config, &load).await?;
            match stage {
                Stage::Identity => {
                    println!(
                        "run {run}: identity   {:>9.0} events/s (settled after {:.1} s; this process {:.0} MiB)",
                        d.rate,
                        d.settled.as_secs_f64(),
                        d.peak_rss as f64 / 1024.0
                    );
                    ids.push(d.rate);
                }
                Stage::Aggregator => {
                    println!(
                        "run {run}: aggregator {:>9.0} events/s (settled after {:.1} s, {} partials; this process {:.0} MiB)",
                        d.rate,
                        d.settled.as_secs_f64(),
                        d.partials,
                        d.peak_rss as f64 / 1024.0
                    );
                    aggs.push(d.rate);
                }
            }
        }
    }
    if a.runs > 0 {
        let (id_med, agg_med) = (median(ids), median(aggs));
        println!(
            "median: identity {id_med:.0} events/s, aggregator {agg_med:.0} events/s, ratio {:.2}",
            agg_med / id_med
        );
    }

    let influx = modelperf_testkit::Influx::start().await?;
    let max_ack_pending = config.bus.max_ack_pending.to_string();
    let env: Vec<(&str, &str)> =
        a.max_ack_pending.map(|_| ("MODELPERF_BUS__MAX_ACK_PENDING", max_ack_pending.as_str())).into_iter().collect();
    if !process_drain(&js, &url, influx.url(), a.events, a.tenants, &config.bus, &env).await? {
        // The stall of the shared publish-ack bound (see PUBLISH_INFLIGHT); measure memory past it.
        let mut bus = config.bus.clone();
        bus.max_ack_pending = PUBLISH_INFLIGHT as i64;
        let inflight = PUBLISH_INFLIGHT.to_string();
        let env = [("MODELPERF_BUS__MAX_ACK_PENDING", inflight.as_str())];
        process_drain(&js, &url, influx.url(), a.events, a.tenants, &bus, &env).await?;
    }
    Ok(())
}
