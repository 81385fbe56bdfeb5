//! The process: connecting, the roles' loops under their leases, health, heartbeats, the drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;
use modelperf_bus::{
    BusError, CheckpointStore, Incoming, Leases, OwnerConfig, Process, Service, Share, Topology, dead_letter, open_at,
    run_owner, send, streams,
};
use modelperf_influx::Sink;
use modelperf_schema::ErrorCode;
use modelperf_schema::messages::Partial;
use modelperf_telemetry::{Health, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::STAGE;
use crate::config::Config;
use crate::finaliser::{FinalMarks, Finaliser};
use crate::owner::AggOwner;
use crate::persist::{PersistError, Persister};

/// Lease and checkpoint key of the finaliser.
pub const FINAL_KEY: &str = "aggregator.final";
/// Durable consumer of the finaliser.
pub const FINAL_CONSUMER: &str = "aggregator-final";

/// A connected aggregator, ready to run.
#[derive(Debug)]
pub struct App {
    config: Config,
    process: Process,
    sink: Sink,
}

impl App {
    /// Connects, ensures the aggregator's topology and binds HTTP (port 0 works). InfluxDB may
    /// be down: the finaliser waits for it and `/readyz` says so.
    pub async fn build(config: Config, prometheus: PrometheusHandle) -> anyhow::Result<App> {
        let process = Process::start(
            STAGE,
            Service::Aggregator,
            &config.nats,
            &config.bus,
            config.http.listen,
            prometheus,
            &[("influx", "not checked yet")],
        )
        .await?;
        let sink = Sink::new(config.influx.clone()).context("invalid influx settings")?;
        Ok(App { config, process, sink })
    }

    /// The bound health/metrics address.
    pub fn http_addr(&self) -> SocketAddr {
        self.process.http_addr
    }

    /// This process's instance id.
    pub fn instance(&self) -> &str {
        &self.process.instance
    }

    /// Runs every role until `shutdown` resolves, then drains: not ready, each role stops
    /// pulling, checkpoints and acknowledges, leases are released, the connection drained.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let p = &self.process;
        let leases = Leases::open(&p.js, self.config.bus.lease_ttl, &p.instance).await?;
        let (share, member) =
            Share::join(&leases, STAGE, self.config.bus.partitions, self.config.aggregator.max_partitions).await?;
        let beat = p.heartbeat(STAGE, Some(leases.clone()), &stop);
        let watch = watch_influx(self.sink.clone(), p.health.clone(), stop.clone());
        let ctx = Arc::new(RoleContext {
            client: p.client.clone(),
            topology: p.topology.clone(),
            config: self.config.clone(),
            leases: leases.clone(),
            health: p.health.clone(),
            sink: self.sink.clone(),
        });
        let mut roles = tokio::task::JoinSet::new();
        for n in 0..self.config.bus.partitions {
            let ctx = ctx.clone();
            roles.spawn(share.clone().run(n, stop.clone(), move |p, leave, lost| {
                let ctx = ctx.clone();
                async move { own_partition(&ctx, p, leave, lost).await }
            }));
        }
        if self.config.aggregator.finaliser {
            roles.spawn(finaliser_role(ctx.clone(), stop.clone()));
        }
        p.supervise(roles, shutdown, &stop, "checkpointing and releasing leases").await;
        member.release().await;
        let _ = watch.await;
        let _ = beat.await;
        self.process.finish().await?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// What every role needs.
#[derive(Debug)]
struct RoleContext {
    client: async_nats::Client,
    topology: Topology,
    config: Config,
    leases: Leases,
    health: Health,
    sink: Sink,
}

impl RoleContext {
    /// A JetStream context of the role's own: publish-ack permits are per context, so roles
    /// sharing one could wait for each other's permits.
    fn role_js(&self) -> Context {
        modelperf_bus::jetstream(self.client.clone(), Duration::from_secs(10), self.config.bus.max_ack_pending as usize)
    }

    fn owner_config(&self) -> OwnerConfig {
        OwnerConfig {
            stage: STAGE.into(),
            fetch_batch: self.config.bus.fetch_batch,
            checkpoint_interval: self.config.bus.checkpoint_interval,
            max_in_flight: self.config.bus.max_ack_pending as usize,
        }
    }
}

async fn own_partition(
    ctx: &RoleContext,
    p: u32,
    stop: CancellationToken,
    lost: CancellationToken,
) -> Result<u64, BusError> {
    let key = format!("aggregator.p{p}");
    let js = ctx.role_js();
    let (mut store, cp) = CheckpointStore::open(&js, &key).await?;
    let marks = match &cp {
        Some(cp) => Some(AggOwner::marks_of(cp).map_err(|reason| BusError::Corrupt { what: key.clone(), reason })?),
        None => None,
    };
    let applied = cp.as_ref().map_or(0, |c| c.applied_seq);
    let start = match cp.as_ref().and_then(|c| c.replay_from) {
        Some(r) if r <= applied => r,
        _ => applied + 1,
    };
    let a = &ctx.config.aggregator;
    let mut owner =
        AggOwner::new(p, &a.owner_windows(), a.allowed_lateness, a.max_revision_age, &a.group_by, marks.as_ref());
    let consumer = open_at(&js, &ctx.topology, &format!("aggregator-p{p}"), start).await?;
    tracing::info!(partition = p, applied, replay_from = start, "partition owned");
    run_owner(&js, consumer, &mut store, &mut owner, applied, &ctx.owner_config(), stop, lost).await
}

/// Runs the finaliser whenever this instance holds `aggregator.final`.
async fn finaliser_role(ctx: Arc<RoleContext>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let lease = match ctx.leases.acquire(FINAL_KEY, &stop).await {
            Ok(Some(lease)) => lease,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "finaliser lease acquisition failed, will retry");
                tokio::time::sleep(ctx.config.bus.lease_ttl / 3).await;
                continue;
            }
        };
        let halt = stop.child_token();
        let lost = lease.lost();
        let relay = {
            let halt = halt.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = lost.cancelled() => halt.cancel(),
                    _ = halt.cancelled() => {}
                }
            })
        };
        let result = run_finaliser(&ctx, halt.clone(), lease.lost()).await;
        halt.cancel();
        let _ = relay.await;
        match result {
            Ok(seq) => tracing::info!(checkpointed = seq, "finaliser stopped"),
            Err(e) => {
                tracing::warn!(error = %e, "finaliser stopped; restarting from its checkpoint");
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
        lease.release().await;
    }
}

/// The finaliser's loop: bounded pulls read to their end; each partial replayed (at or before
/// the checkpoint) or applied and persisted; every `checkpoint_interval` a checkpoint, then one
/// ack-all. Returns the last checkpointed sequence.
async fn run_finaliser(ctx: &RoleContext, halt: CancellationToken, lost: CancellationToken) -> anyhow::Result<u64> {
    let js = ctx.role_js();
    let (mut store, cp) = CheckpointStore::open(&js, FINAL_KEY).await?;
    let marks: FinalMarks = match &cp {
        Some(cp) if !cp.state.is_empty() => rmp_serde::from_slice(&cp.state).context("finaliser checkpoint state")?,
        _ => FinalMarks::default(),
    };
    let applied = cp.as_ref().map_or(0, |c| c.applied_seq);
    let start = match cp.as_ref().and_then(|c| c.replay_from) {
        Some(r) if r <= applied => r,
        _ => applied + 1,
    };
    // Everything the previous holder may have persisted lies at or below what it was delivered.
    let stream = js.get_stream(streams::PARTIALS).await.map_err(|e| BusError::js("get stream PERF_PARTIALS", e))?;
    let horizon = match stream.get_consumer::<async_nats::jetstream::consumer::pull::Config>(FINAL_CONSUMER).await {
        Ok(mut c) => c.info().await.map(|i| i.delivered.stream_sequence).unwrap_or(u64::MAX),
        Err(_) => 0,
    };
    let a = &ctx.config.aggregator;
    let mut marks = marks;
    marks.max_revision_age_secs = a.max_revision_age.as_secs();
    let mut fin = Finaliser::new(ctx.config.bus.partitions, a.owner_windows(), a.rollups(), marks);
    let persister =
        Persister::open(js.clone(), ctx.sink.clone(), ctx.health.clone(), ctx.config.bus.max_ack_pending as usize)
            .await?;
    let consumer = open_at(&js, &ctx.topology, FINAL_CONSUMER, start).await?;
    tracing::info!(applied, replay_from = start, recovery_horizon = horizon, "finaliser active");
    ensure_influx(ctx, &halt).await;
    let mut progress =
        FinalProgress { applied, checkpointed: applied, replayed: 0, delivery: None, last: None, at: Instant::now() };
    loop {
        if lost.is_cancelled() {
            anyhow::bail!("lease {FINAL_KEY} lost");
        }
        if halt.is_cancelled() {
            break;
        }
        let batch = fetch(&consumer, ctx.config.bus.fetch_batch).await;
        let messages = match batch {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "finaliser pull failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        for msg in messages {
            let info = msg.info().map_err(|e| anyhow::anyhow!("message metadata: {e}"))?;
            let seq = info.stream_sequence;
            // Ack-all would acknowledge a delivery never received: restart from the checkpoint.
            if let Some(last) = progress.delivery
                && info.consumer_sequence != last + 1
            {
                return Err(BusError::DeliveryGap {
                    consumer: FINAL_CONSUMER.into(),
                    expected: last + 1,
                    got: info.consumer_sequence,
                }
                .into());
            }
            progress.delivery = Some(info.consumer_sequence);
            if seq <= progress.applied {
                if seq <= applied && seq > progress.replayed {
                    // Rebuilding pending windows; acknowledged with the next checkpoint.
                    if let Ok(partial) = modelperf_schema::from_msgpack::<Partial>(&msg.payload) {
                        let _ = fin.replay(seq, &partial);
                    }
                    progress.replayed = seq;
                    progress.last = Some(msg);
                }
                continue;
            }
            let stream_name = info.stream.to_owned();
            let incoming = Incoming {
                subject: &msg.subject,
                headers: msg.headers.as_ref(),
                payload: &msg.payload,
                stream: &stream_name,
                seq,
                delivered: info.delivered,
            };
            let refused = match modelperf_schema::from_msgpack::<Partial>(&msg.payload) {
                Ok(partial) => match fin.apply(seq, &partial) {
                    Ok(actions) => {
                        match persister.run(actions, seq <= horizon, &halt).await {
                            Ok(()) => None,
                            Err(PersistError::Stopped) => {
                                // Nothing after the last checkpoint counts: the successor redoes it.
                                if lost.is_cancelled() {
                                    anyhow::bail!("lease {FINAL_KEY} lost");
                                }
                                return Ok(progress.checkpointed);
                            }
                            Err(PersistError::Bus(e)) => return Err(e.into()),
                            Err(e @ PersistError::Fenced(_)) => return Err(e.into()),
                        }
                    }
                    Err(e) => Some((ErrorCode::Schema, e.to_string())),
                },
                Err(e) => Some((e.code, format!("partial does not decode: {}", e.reason))),
            };
            if let Some((code, reason)) = refused {
                tracing::warn!(seq, %reason, "partial refused");
                let dl = dead_letter(STAGE, incoming.origin(), incoming.payload, code, &reason);
                send(&js, dl).await?.await.map_err(|e| anyhow::anyhow!("dead letter not stored: {e}"))?;
            }
            progress.applied = seq;
            progress.last = Some(msg);
        }
        metrics::gauge!("modelperf_aggregator_pending_series").set(fin.pending_series() as f64);
        if progress.at.elapsed() >= ctx.config.bus.checkpoint_interval {
            progress.checkpoint(&mut store, &fin).await?;
        }
    }
    progress.checkpoint(&mut store, &fin).await?;
    Ok(progress.checkpointed)
}

struct FinalProgress {
    applied: u64,
    checkpointed: u64,
    replayed: u64,
    delivery: Option<u64>,
    last: Option<async_nats::jetstream::Message>,
    at: Instant,
}

impl FinalProgress {
    async fn checkpoint(&mut self, store: &mut CheckpointStore, fin: &Finaliser) -> anyhow::Result<()> {
        self.at = Instant::now();
        if self.applied == self.checkpointed {
            // Only replayed messages since: the checkpoint covers them already.
            if let Some(last) = self.last.take() {
                let _ = last.ack().await;
            }
            return Ok(());
        }
        let state = rmp_serde::to_vec_named(fin.marks()).context("encode finaliser marks")?;
        store
            .save(&modelperf_bus::Checkpoint { applied_seq: self.applied, replay_from: fin.replay_from(), state })
            .await?;
        self.checkpointed = self.applied;
        if let Some(last) = self.last.take()
            && let Err(e) = last.ack().await
        {
            tracing::warn!(error = %e, "finaliser ack-all failed; redeliveries are skipped by sequence");
        }
        Ok(())
    }
}

/// Creates the database and retention policies (v1) when missing, retrying while InfluxDB is
/// unreachable; a refusal (e.g. no rights) is logged and writing is tried anyway.
async fn ensure_influx(ctx: &RoleContext, halt: &CancellationToken) {
    let mut wait = Duration::from_millis(500);
    loop {
        match ctx.sink.ensure().await {
            Ok(()) => return,
            Err(e) if e.is_retryable() => {
                ctx.health.not_ready("influx_write", format!("cannot prepare the database: {e}"));
                tracing::warn!(error = %e, "influxdb not reachable yet; waiting before finalising windows");
            }
            Err(e) => {
                tracing::error!(error = %e, "influxdb refused to create the database or retention policies");
                return;
            }
        }
        tokio::select! {
            _ = halt.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

/// One bounded pull, read to its end.
async fn fetch(consumer: &PullConsumer, n: usize) -> Result<Vec<async_nats::jetstream::Message>, BusError> {
    let mut batch = consumer
        .fetch()
        .max_messages(n)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .map_err(|e| BusError::js("fetch partials", e))?;
    let mut out = Vec::new();
    while let Some(m) = batch.next().await {
        match m {
            Ok(m) => out.push(m),
            Err(e) => tracing::debug!(error = %e, "fetch ended"),
        }
    }
    Ok(out)
}

/// Keeps the `influx` readiness check in step (the periodic ping).
fn watch_influx(sink: Sink, health: Health, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            match sink.ping().await {
                Ok(()) => health.ready("influx"),
                Err(e) => health.not_ready("influx", format!("unreachable: {e}")),
            }
        }
    })
}
