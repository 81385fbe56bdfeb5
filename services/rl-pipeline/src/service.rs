//! The process: partition owners under leases (`rl.p<N>`, shared among replicas), each running
//! the loop below; health, heartbeats, the drain.
//!
//! The loop of a partition: bounded pulls read to their end; every event added to the joins
//! (events at or before the checkpoint only rebuild them); every `checkpoint_interval` a tick —
//! due joins become samples and are placed in batches, full or old batches are decided and the
//! decision checkpointed, then each decided batch's tasks are entered in the create-only ledger
//! (`modelperf_rl_ledger`, `<dataset>.<task id, base64url>` → `batch_id`) and the batch is
//! published with `Nats-Msg-Id` = `batch_id`; then the checkpoint and one ack-all. After a
//! takeover, samples of tasks with any event the previous owner had been delivered are looked up
//! in the ledger and dropped when they are batched already (a late part must not make a second
//! sample), unless they belong to a batch it decided but may not have published, which is
//! rebuilt and published again.
//!
//! The joins' clock is the stream's: every part is joined at the time the stream stored it, and
//! while the partition has a backlog the clock is the storage time of the newest event read
//! (the wall clock once caught up). A rebuilt join keeps its deadlines, and a backlog read after
//! an outage is joined as it would have been live: no join expires because the pipeline was
//! behind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::Context;
use async_nats::jetstream::kv::{self, Store};
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use modelperf_bus::{
    BusError, Checkpoint, CheckpointStore, Incoming, Leases, Outgoing, Process, Service, Share, Topology, buckets,
    dead_letter, open_at, send, send_all, streams,
};
use modelperf_schema::Event;
use modelperf_schema::messages::Batch;
use modelperf_telemetry::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::state::{Marks, Partition};

/// The service name: lease and checkpoint keys `rl.p<N>`, DLQ subject `perf.dlq.rl-pipeline`.
pub const SERVICE: &str = "rl";
/// DLQ stage and heartbeat name.
pub const STAGE: &str = "rl-pipeline";

/// The ledger key of a task: `<dataset>.<task id in base64url>` (KV keys allow few characters).
pub fn ledger_key(dataset: &str, task_id: &str) -> String {
    format!("{dataset}.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(task_id))
}

/// A connected pipeline, ready to run.
#[derive(Debug)]
pub struct App {
    config: Config,
    process: Process,
}

impl App {
    /// Connects, ensures the pipeline's topology and binds HTTP (port 0 works).
    pub async fn build(config: Config, prometheus: PrometheusHandle) -> anyhow::Result<App> {
        let process =
            Process::start(STAGE, Service::RlPipeline, &config.nats, &config.bus, config.http.listen, prometheus, &[])
                .await?;
        Ok(App { config, process })
    }

    /// The bound health/metrics address.
    pub fn http_addr(&self) -> SocketAddr {
        self.process.http_addr
    }

    /// This process's instance id.
    pub fn instance(&self) -> &str {
        &self.process.instance
    }

    /// Runs the partition owners until `shutdown` resolves, then drains: each owner flushes its
    /// complete joins into batches, publishes them, checkpoints and releases its lease.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let p = &self.process;
        let leases = Leases::open(&p.js, self.config.bus.lease_ttl, &p.instance).await?;
        let (share, member) =
            Share::join(&leases, SERVICE, self.config.bus.partitions, self.config.rl.max_partitions).await?;
        let beat = p.heartbeat(STAGE, Some(leases.clone()), &stop);
        let ledger =
            p.js.get_key_value(buckets::RL_LEDGER).await.map_err(|e| BusError::js("open kv modelperf_rl_ledger", e))?;
        let ctx = Arc::new(Ctx {
            client: p.client.clone(),
            js: p.js.clone(),
            topology: p.topology.clone(),
            config: self.config.clone(),
            ledger,
        });
        let mut roles = tokio::task::JoinSet::new();
        for n in 0..self.config.bus.partitions {
            let ctx = ctx.clone();
            roles.spawn(share.clone().run(n, stop.clone(), move |p, leave, lost| {
                let ctx = ctx.clone();
                async move { own_partition(&ctx, p, leave, lost).await }
            }));
        }
        p.supervise(roles, shutdown, &stop, "flushing batches, checkpointing, releasing leases").await;
        member.release().await;
        let _ = beat.await;
        self.process.finish().await?;
        tracing::info!("stopped");
        Ok(())
    }
}

#[derive(Debug)]
struct Ctx {
    client: async_nats::Client,
    js: Context,
    topology: Topology,
    config: Config,
    ledger: Store,
}

/// Where a partition's loop stands.
struct Progress {
    applied: u64,
    checkpointed: u64,
    /// Events up to here only rebuild the joins.
    replay_until: u64,
    seen: u64,
    /// Storage time of the newest event read.
    stream_time: DateTime<Utc>,
    pending: u64,
    delivery: Option<u64>,
    last: Option<async_nats::jetstream::Message>,
}

impl Progress {
    /// The joins' clock: the stream's while behind, the wall clock once caught up.
    fn clock(&self) -> DateTime<Utc> {
        let now = Utc::now();
        if self.pending > 0 { self.stream_time.min(now) } else { now }
    }
}

/// When the stream stored a message.
fn stored_at(published: &time::OffsetDateTime) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(i64::try_from(published.unix_timestamp_nanos()).unwrap_or(i64::MAX))
}

async fn own_partition(ctx: &Ctx, p: u32, leave: CancellationToken, lost: CancellationToken) -> anyhow::Result<u64> {
    // A context of the owner's own: publish-ack permits are per context.
    let role_js =
        modelperf_bus::jetstream(ctx.client.clone(), Duration::from_secs(10), ctx.config.bus.max_ack_pending as usize);
    let ctx = &Ctx {
        client: ctx.client.clone(),
        js: role_js,
        topology: ctx.topology.clone(),
        config: ctx.config.clone(),
        ledger: ctx.ledger.clone(),
    };
    let key = format!("{SERVICE}.p{p}");
    let durable = format!("rl-p{p}");
    let (mut store, cp) = CheckpointStore::open(&ctx.js, &key).await?;
    let marks: Marks = match &cp {
        Some(cp) if !cp.state.is_empty() => rmp_serde::from_slice(&cp.state).context("rl checkpoint state")?,
        _ => Marks::default(),
    };
    let applied = cp.as_ref().map_or(0, |c| c.applied_seq);
    let start = match cp.as_ref().and_then(|c| c.replay_from) {
        Some(r) if r <= applied => r,
        _ => applied + 1,
    };
    // Samples of tasks whose events the previous owner was delivered may be in its batches.
    let stream = ctx.js.get_stream(streams::EVENTS).await.map_err(|e| BusError::js("get stream PERF_EVENTS", e))?;
    let horizon = match stream.get_consumer::<async_nats::jetstream::consumer::pull::Config>(&durable).await {
        Ok(mut c) => c.info().await.map(|i| i.delivered.stream_sequence).unwrap_or(u64::MAX),
        Err(_) => 0,
    };
    let consumer = open_at(&ctx.js, &ctx.topology, &durable, start).await?;
    let pending = consumer.get_info().await.map(|i| i.num_pending).unwrap_or(u64::MAX);
    let mut part = Partition::new(ctx.config.rl.clone(), marks);
    tracing::info!(partition = p, applied, replay_from = start, recovery_horizon = horizon, "partition owned");
    let mut progress = Progress {
        applied,
        checkpointed: applied,
        replay_until: applied,
        seen: 0,
        stream_time: DateTime::<Utc>::MIN_UTC,
        pending,
        delivery: None,
        last: None,
    };
    let mut at = Instant::now();
    let every = ctx.config.bus.checkpoint_interval;
    loop {
        if lost.is_cancelled() {
            anyhow::bail!("lease {key} lost");
        }
        if leave.is_cancelled() {
            break;
        }
        let mut batch = consumer
            .fetch()
            .max_messages(ctx.config.bus.fetch_batch)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .map_err(|e| BusError::js(format!("fetch {durable}"), e))?;
        while let Some(msg) = batch.next().await {
            let Ok(msg) = msg else { continue };
            let info = msg.info().map_err(|e| anyhow::anyhow!("message metadata: {e}"))?;
            if let Some(last) = progress.delivery
                && info.consumer_sequence != last + 1
            {
                return Err(BusError::DeliveryGap {
                    consumer: durable,
                    expected: last + 1,
                    got: info.consumer_sequence,
                }
                .into());
            }
            progress.delivery = Some(info.consumer_sequence);
            progress.pending = info.pending;
            let seq = info.stream_sequence;
            progress.seen = progress.seen.max(seq);
            if seq <= progress.applied && seq > progress.replay_until {
                continue; // a redelivery of something applied since the checkpoint
            }
            let stored = stored_at(&info.published);
            progress.stream_time = progress.stream_time.max(stored);
            match modelperf_schema::from_msgpack::<Event>(&msg.payload) {
                Ok(e) => part.add(&e, seq, stored),
                Err(err) if seq > progress.replay_until => {
                    let stream_name = info.stream.to_owned();
                    let incoming = Incoming {
                        subject: &msg.subject,
                        headers: msg.headers.as_ref(),
                        payload: &msg.payload,
                        stream: &stream_name,
                        seq,
                        delivered: info.delivered,
                    };
                    let reason = format!("a clean event that does not decode: {}", err.reason);
                    let dl = dead_letter(STAGE, incoming.origin(), incoming.payload, err.code, &reason);
                    send(&ctx.js, dl).await?.await.map_err(|e| anyhow::anyhow!("dead letter not stored: {e}"))?;
                }
                Err(_) => {}
            }
            progress.applied = progress.applied.max(seq);
            progress.last = Some(msg);
        }
        if at.elapsed() >= every {
            at = Instant::now();
            tick(ctx, &key, &mut store, &mut part, &mut progress, horizon, false).await?;
        }
    }
    tick(ctx, &key, &mut store, &mut part, &mut progress, horizon, true).await?;
    Ok(progress.checkpointed)
}

/// Places due samples, decides batches (checkpointing the decision), enters them in the ledger,
/// publishes them, checkpoints, and acknowledges with one ack-all.
async fn tick(
    ctx: &Ctx,
    key: &str,
    store: &mut CheckpointStore,
    part: &mut Partition,
    progress: &mut Progress,
    horizon: u64,
    shutdown: bool,
) -> anyhow::Result<()> {
    let rebuilding = progress.seen < progress.replay_until && progress.pending > 0;
    if !rebuilding {
        let now = progress.clock();
        for r in part.take_ready(now, shutdown) {
            // Any part delivered to the previous owner: the task may be in one of its batches.
            if r.first_seq <= horizon && !part.in_decided(&r.sample.task_id) {
                let lkey = ledger_key(&r.dataset, &r.sample.task_id);
                if ctx.ledger.get(&lkey).await.map_err(|e| BusError::js(format!("read ledger {lkey}"), e))?.is_some() {
                    metrics::counter!("modelperf_rl_samples_already_batched_total").increment(1);
                    continue;
                }
            }
            part.place(r, now);
        }
        let decided = part.decide_due(now, shutdown);
        let batches = part.take_publishable();
        if decided || !batches.is_empty() {
            // The decision first: a successor rebuilds and publishes exactly these batches.
            save(store, part, progress).await?;
            publish(ctx, &batches).await?;
            for batch in &batches {
                part.published(batch);
            }
            save(store, part, progress).await?;
        }
        metrics::gauge!("modelperf_rl_open_joins", "partition" => key.to_owned()).set(part.open_joins() as f64);
    }
    // While rebuilding, `applied` has not moved: the checkpoint stays as it was.
    if progress.applied != progress.checkpointed {
        save(store, part, progress).await?;
    }
    if let Some(last) = progress.last.take()
        && let Err(e) = last.ack().await
    {
        tracing::warn!(key, error = %e, "ack-all after checkpoint failed; redeliveries are skipped by sequence");
    }
    Ok(())
}

async fn save(store: &mut CheckpointStore, part: &Partition, progress: &mut Progress) -> anyhow::Result<()> {
    let state = rmp_serde::to_vec_named(&part.marks()).context("encode rl marks")?;
    store.save(&Checkpoint { applied_seq: progress.applied, replay_from: part.replay_from(), state }).await?;
    progress.checkpointed = progress.applied;
    Ok(())
}

/// Ledger entries written at once: each is a round trip to the server, and a batch holds up to
/// `batch_size` tasks.
const LEDGER_IN_FLIGHT: usize = 128;

/// Enters every task of `batch` in the create-only ledger ([`LEDGER_IN_FLIGHT`] at a time; the
/// batch goes out only once all are in). A task already entered for this batch (a
/// republication) is fine; for another batch, this owner is not the only one: it stops.
async fn enter_in_ledger(ctx: &Ctx, batch: &Batch) -> anyhow::Result<()> {
    let value = Bytes::from(batch.batch_id.clone());
    // Owned futures: a stream of futures borrowing the batch is not `Send` for every lifetime.
    let creates: Vec<_> = batch
        .samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (ledger, key, value) = (ctx.ledger.clone(), ledger_key(&batch.dataset, &s.task_id), value.clone());
            async move {
                let created = ledger.create(&key, value).await;
                (i, key, created)
            }
        })
        .collect();
    let mut entries = futures::stream::iter(creates).buffer_unordered(LEDGER_IN_FLIGHT);
    while let Some((i, key, created)) = entries.next().await {
        let s = &batch.samples[i];
        match created {
            Ok(_) => {}
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let held = ctx.ledger.get(&key).await.map_err(|e| BusError::js(format!("read ledger {key}"), e))?;
                if held.as_deref() != Some(batch.batch_id.as_bytes()) {
                    anyhow::bail!(
                        "task {} is already in batch {} of {}; another owner is active, stopping",
                        s.task_id,
                        String::from_utf8_lossy(held.as_deref().unwrap_or_default()),
                        batch.dataset
                    );
                }
            }
            Err(e) => return Err(BusError::js(format!("write ledger {key}"), e).into()),
        }
    }
    Ok(())
}

/// Enters the tasks of `batches` in the ledger, then publishes them all, their acks pipelined.
async fn publish(ctx: &Ctx, batches: &[Batch]) -> anyhow::Result<()> {
    let mut outs = Vec::with_capacity(batches.len());
    for batch in batches {
        enter_in_ledger(ctx, batch).await?;
        let body = rmp_serde::to_vec_named(batch).context("encode batch")?;
        outs.push(Outgoing::new(format!("rl.batches.{}", batch.dataset), batch.batch_id.clone(), body));
    }
    send_all(&ctx.js, outs, ctx.config.bus.max_ack_pending as usize).await?;
    for batch in batches {
        metrics::counter!("modelperf_rl_batches_total", "dataset" => batch.dataset.clone()).increment(1);
        metrics::counter!("modelperf_rl_samples_total", "dataset" => batch.dataset.clone()).increment(batch.stats.n);
        tracing::debug!(batch = %batch.batch_id, dataset = %batch.dataset, n = batch.stats.n, "batch published");
    }
    Ok(())
}
