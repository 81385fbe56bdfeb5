//! The process: the active replica under the lease `monitor` (standbys wait for it), its
//! evaluator and its outbox worker; health, heartbeats, the drain.
//!
//! The evaluator reads `monitor-metrics` (`perf.metrics.*`) and `monitor-signals`
//! (`perf.anomalies.*`; insights and reports are skipped) with bounded pulls, feeds every window
//! and anomaly to the lifecycle, and every `eval_interval`:
//!
//! 1. lets time decide ([`Engine::tick`]) and routes the transitions and resends;
//! 2. checkpoints the decision — lifecycle, router, the sequences applied, and the outputs not yet
//!    published — in `modelperf_state` under `monitor.alerts`;
//! 3. publishes the transitions on `perf.alerts.<state>` (`Nats-Msg-Id`
//!    `alert:<fingerprint>:<transition>`) and the deliveries on `perf.outbox.<receiver>`, each
//!    with its deterministic id, awaiting every ack;
//! 4. checkpoints again without the outputs, then acknowledges both consumers (ack-all).
//!
//! A successor finds outputs decided but maybe unpublished in the checkpoint and publishes them
//! again first (the streams drop the duplicates); windows applied after the checkpoint are
//! redelivered and applied again to the checkpointed state, which makes the same transitions
//! under the same ids. On the very first start, both consumers begin `initial_lookback` ago.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, PullConsumer};
use async_nats::jetstream::message::Message;
use chrono::Utc;
use futures::StreamExt;
use modelperf_bus::{
    BusError, Checkpoint, CheckpointStore, Incoming, Leases, Outgoing, Process, Service, Topology, dead_letter,
    publish, send_all, streams,
};
use modelperf_schema::messages::{Anomaly, WindowMetrics};
use modelperf_telemetry::PrometheusHandle;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{ALERTMANAGER, Config};
use crate::delivery::{STAGE, Worker};
use crate::engine::{Engine, EngineConfig, EngineState, Transition};
use crate::health::{Checks, Heartbeats};
use crate::receivers::Target;
use crate::router::{Router, RouterState};
use crate::rules::Rules;

/// The lease of the active replica.
pub const LEASE: &str = "monitor";
/// The evaluator's checkpoint key (`monitor.<role>`).
pub const CHECKPOINT_KEY: &str = "monitor.alerts";
/// Durable consumers.
pub const METRICS_CONSUMER: &str = "monitor-metrics";
#[allow(missing_docs)]
pub const SIGNALS_CONSUMER: &str = "monitor-signals";
#[allow(missing_docs)]
pub const OUTBOX_CONSUMER: &str = "monitor-outbox";

/// A message decided but not known to be stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Unpublished {
    subject: String,
    msg_id: String,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

impl Unpublished {
    fn outgoing(&self) -> Outgoing {
        Outgoing::new(self.subject.clone(), self.msg_id.clone(), self.payload.clone())
    }
}

/// What the evaluator checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Saved {
    engine: EngineState,
    router: RouterState,
    /// Last applied stream sequence of `PERF_METRICS` and `PERF_SIGNALS`.
    metrics_seq: u64,
    signals_seq: u64,
    #[serde(default)]
    unpublished: Vec<Unpublished>,
}

/// A connected monitor, ready to run.
#[derive(Debug)]
pub struct App {
    config: Config,
    rules: Arc<Rules>,
    process: Process,
}

impl App {
    /// Connects, ensures the monitor's topology and binds HTTP (port 0 works).
    pub async fn build(config: Config, rules: Rules, prometheus: PrometheusHandle) -> anyhow::Result<App> {
        let process =
            Process::start(STAGE, Service::Monitor, &config.nats, &config.bus, config.http.listen, prometheus, &[])
                .await?;
        let rules = if config.monitor.health.enabled {
            rules.with_builtins(crate::health::rules(&config.monitor.health))?
        } else {
            rules
        };
        tracing::info!(rules = rules.rules.len(), "rules loaded");
        Ok(App { config, rules: Arc::new(rules), process })
    }

    /// The bound health/metrics address.
    pub fn http_addr(&self) -> SocketAddr {
        self.process.http_addr
    }

    /// This process's instance id.
    pub fn instance(&self) -> &str {
        &self.process.instance
    }

    /// Runs until `shutdown` resolves: waits for the lease, then evaluates and delivers while
    /// holding it. The drain stops pulling, checkpoints, hands held deliveries back and
    /// releases the lease.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let p = &self.process;
        let leases = Leases::open(&p.js, self.config.bus.lease_ttl, &p.instance).await?;
        let beat = p.heartbeat(STAGE, Some(leases.clone()), &stop);
        let heartbeats = Heartbeats::watch(&p.client, stop.clone()).await?;
        let ctx = Arc::new(Ctx {
            heartbeats,
            client: p.client.clone(),
            topology: p.topology.clone(),
            config: self.config.clone(),
            rules: self.rules.clone(),
            leases,
        });
        let mut roles = tokio::task::JoinSet::new();
        roles.spawn(active_role(ctx, stop.clone()));
        p.supervise(roles, shutdown, &stop, "checkpointing, handing deliveries back, releasing the lease").await;
        let _ = beat.await;
        self.process.finish().await?;
        tracing::info!("stopped");
        Ok(())
    }
}

#[derive(Debug)]
struct Ctx {
    client: async_nats::Client,
    topology: Topology,
    config: Config,
    rules: Arc<Rules>,
    leases: Leases,
    heartbeats: Heartbeats,
}

impl Ctx {
    fn role_js(&self) -> Context {
        modelperf_bus::jetstream(self.client.clone(), Duration::from_secs(10), self.config.bus.max_ack_pending as usize)
    }

    fn targets(&self) -> BTreeMap<String, Target> {
        let m = &self.config.monitor;
        let mut t: BTreeMap<String, Target> = m
            .receivers
            .iter()
            .map(|(name, c)| (name.clone(), Target::Direct { name: name.clone(), config: c.clone() }))
            .collect();
        if let Some(url) = &m.alertmanager_url {
            t.insert(ALERTMANAGER.into(), Target::Alertmanager(url.clone()));
        }
        t
    }
}

/// Holds the lease whenever it can, and runs the evaluator and the outbox worker under it.
async fn active_role(ctx: Arc<Ctx>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let lease = match ctx.leases.acquire(LEASE, &stop).await {
            Ok(Some(lease)) => lease,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "monitor lease acquisition failed, will retry");
                tokio::time::sleep(ctx.config.bus.lease_ttl / 3).await;
                continue;
            }
        };
        tracing::info!("active: evaluating rules and delivering");
        let halt = stop.child_token();
        let lost = lease.lost();
        let relay = {
            let (halt, lost) = (halt.clone(), lost.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = lost.cancelled() => halt.cancel(),
                    _ = halt.cancelled() => {}
                }
            })
        };
        let evaluating = async {
            let r = evaluate(&ctx, halt.clone(), lost.clone()).await;
            halt.cancel();
            r
        };
        let delivering = async {
            let r = deliver(&ctx, halt.clone()).await;
            halt.cancel();
            r
        };
        let (evaluated, delivered) = tokio::join!(evaluating, delivering);
        let _ = relay.await;
        let failed = [evaluated.err(), delivered.err()].into_iter().flatten().collect::<Vec<_>>();
        for e in &failed {
            tracing::warn!(error = format!("{e:#}"), "monitor role stopped; restarting from its checkpoint");
        }
        if !failed.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        lease.release().await;
    }
}

async fn deliver(ctx: &Ctx, halt: CancellationToken) -> anyhow::Result<()> {
    let js = ctx.role_js();
    let spec = ctx.topology.consumer(OUTBOX_CONSUMER).context("no monitor-outbox consumer in the topology")?;
    let stream = js.get_stream(spec.stream).await.map_err(|e| BusError::js("get stream PERF_OUTBOX", e))?;
    let consumer: PullConsumer =
        stream.get_consumer(OUTBOX_CONSUMER).await.map_err(|e| anyhow::anyhow!("get consumer monitor-outbox: {e}"))?;
    let b = &ctx.config.bus;
    let worker = Worker::new(js, ctx.targets(), ctx.config.monitor.delivery, b.fetch_batch, b.ack_wait)?;
    worker.run(consumer, halt).await?;
    Ok(())
}

/// Recreates `durable` to deliver after `applied` (a checkpoint), or from `lookback` ago.
async fn open(
    js: &Context,
    topology: &Topology,
    durable: &str,
    applied: Option<u64>,
    lookback: Duration,
) -> Result<(PullConsumer, u64), BusError> {
    let spec =
        topology.consumer(durable).ok_or_else(|| BusError::Config(format!("no consumer {durable} in the topology")))?;
    let stream =
        js.get_stream(spec.stream).await.map_err(|e| BusError::js(format!("get stream {}", spec.stream), e))?;
    let _ = stream.delete_consumer(durable).await;
    let mut config = topology.consumer_config(spec);
    config.deliver_policy = match applied {
        Some(seq) => DeliverPolicy::ByStartSequence { start_sequence: seq + 1 },
        None => {
            let since = time::OffsetDateTime::now_utc() - lookback;
            DeliverPolicy::ByStartTime { start_time: since }
        }
    };
    let mut consumer =
        stream.create_consumer(config).await.map_err(|e| BusError::js(format!("create consumer {durable}"), e))?;
    // A consumer starting by time reports the sequence before its first message as delivered.
    let before = match applied {
        Some(seq) => seq,
        None => consumer.info().await.map(|i| i.delivered.stream_sequence).unwrap_or(0),
    };
    Ok((consumer, before))
}

/// One consumer's reading position.
struct Reader {
    durable: &'static str,
    consumer: PullConsumer,
    applied: u64,
    delivery: Option<u64>,
    last: Option<Message>,
}

impl Reader {
    /// What is there now, at most `n`; checks the delivery sequence has no gap (ack-all would
    /// cover a message never received).
    async fn pull(&mut self, n: usize) -> Result<Vec<Message>, BusError> {
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(n)
            .messages()
            .await
            .map_err(|e| BusError::js(format!("fetch {}", self.durable), e))?;
        let mut out = Vec::new();
        while let Some(m) = batch.next().await {
            let Ok(m) = m else { continue };
            let info =
                m.info().map_err(|e| BusError::Corrupt { what: "message metadata".into(), reason: e.to_string() })?;
            if let Some(last) = self.delivery
                && info.consumer_sequence != last + 1
            {
                return Err(BusError::DeliveryGap {
                    consumer: self.durable.into(),
                    expected: last + 1,
                    got: info.consumer_sequence,
                });
            }
            self.delivery = Some(info.consumer_sequence);
            if info.stream_sequence <= self.applied {
                continue; // applied before the checkpoint: a redelivery
            }
            out.push(m);
        }
        Ok(out)
    }

    async fn ack_all(&mut self) {
        if let Some(last) = self.last.take()
            && let Err(e) = last.ack().await
        {
            tracing::warn!(consumer = self.durable, error = %e, "ack-all after checkpoint failed; redeliveries are skipped by sequence");
        }
    }
}

async fn evaluate(ctx: &Ctx, halt: CancellationToken, lost: CancellationToken) -> anyhow::Result<()> {
    let js = ctx.role_js();
    let m = &ctx.config.monitor;
    let (mut store, cp) = CheckpointStore::open(&js, CHECKPOINT_KEY).await?;
    let saved: Option<Saved> = match &cp {
        Some(cp) if !cp.state.is_empty() => Some(rmp_serde::from_slice(&cp.state).context("monitor checkpoint state")?),
        _ => None,
    };
    let in_flight = ctx.config.bus.max_ack_pending as usize;
    let mut saved = match saved {
        Some(s) => {
            if !s.unpublished.is_empty() {
                tracing::info!(outputs = s.unpublished.len(), "publishing what the previous owner decided");
                send_all(&js, s.unpublished.iter().map(Unpublished::outgoing), in_flight).await?;
            }
            Saved { unpublished: Vec::new(), ..s }
        }
        None => Saved::default(),
    };
    let fresh = cp.is_none();
    let (metrics, metrics_before) =
        open(&js, &ctx.topology, METRICS_CONSUMER, (!fresh).then_some(saved.metrics_seq), m.initial_lookback).await?;
    let (signals, signals_before) =
        open(&js, &ctx.topology, SIGNALS_CONSUMER, (!fresh).then_some(saved.signals_seq), m.initial_lookback).await?;
    saved.metrics_seq = metrics_before;
    saved.signals_seq = signals_before;
    let mut metrics =
        Reader { durable: METRICS_CONSUMER, consumer: metrics, applied: metrics_before, delivery: None, last: None };
    let mut signals =
        Reader { durable: SIGNALS_CONSUMER, consumer: signals, applied: signals_before, delivery: None, last: None };
    let engine_config = EngineConfig {
        absent_after: m.absent_after,
        clock_lag: m.clock_lag,
        flap_window: m.flap.window,
        max_flap_level: m.flap.max_level,
    };
    let mut engine = Engine::new(ctx.rules.clone(), engine_config, std::mem::take(&mut saved.engine));
    let providers = m.receivers.iter().map(|(k, v)| (k.clone(), v.provider())).collect();
    let router = Router::new(m.routes()?, providers, m.alertmanager_url.is_some(), m.resend_interval)
        .with_alertmanager_min_firing(m.alertmanager_min_firing);
    let mut router_state = std::mem::take(&mut saved.router);
    let mut checks = m.health.enabled.then(|| {
        Checks::new(js.clone(), m.health.clone(), &ctx.config.bus, ctx.config.nats.replicas, ctx.heartbeats.clone())
    });
    if fresh {
        // The first checkpoint fixes where reading began.
        save(&mut store, &engine, &router_state, &metrics, &signals, Vec::new()).await?;
    }
    tracing::info!(metrics_after = metrics.applied, signals_after = signals.applied, "evaluator active");
    let mut transitions: Vec<Transition> = Vec::new();
    let mut changed = false;
    let mut next_tick = Instant::now();
    let fetch = ctx.config.bus.fetch_batch;
    loop {
        if lost.is_cancelled() {
            anyhow::bail!("lease {LEASE} lost");
        }
        if halt.is_cancelled() {
            break;
        }
        let mut read = 0;
        for msg in metrics.pull(fetch).await? {
            read += 1;
            let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(metrics.applied);
            match modelperf_schema::from_msgpack::<WindowMetrics>(&msg.payload) {
                Ok(w) => transitions.extend(engine.observe_metrics(&w)),
                Err(e) => refuse(&js, &msg, streams::METRICS, seq, e.code, &e.reason).await?,
            }
            metrics.applied = seq;
            metrics.last = Some(msg);
            changed = true;
        }
        for msg in signals.pull(fetch).await? {
            read += 1;
            let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(signals.applied);
            if msg.subject.starts_with("perf.anomalies.") {
                match modelperf_schema::from_msgpack::<Anomaly>(&msg.payload) {
                    Ok(a) => transitions.extend(engine.observe_anomaly(&a)),
                    Err(e) => refuse(&js, &msg, streams::SIGNALS, seq, e.code, &e.reason).await?,
                }
            }
            signals.applied = seq;
            signals.last = Some(msg);
            changed = true;
        }
        if Instant::now() >= next_tick {
            next_tick = Instant::now() + m.eval_interval;
            let now = Utc::now();
            if let Some(checks) = &mut checks {
                let seen = checks.observe(now).await;
                transitions.extend(engine.observe_health(seen, now));
            }
            transitions.extend(engine.tick(now));
            let mut deliveries = router.route(&mut router_state, &transitions, now);
            deliveries.extend(router.tick(&mut router_state, &engine.firing(), now));
            let outputs = outputs(&engine.take_journal(), &deliveries)?;
            if !outputs.is_empty() {
                // The decision first: a successor publishes exactly these again.
                save(&mut store, &engine, &router_state, &metrics, &signals, outputs.clone()).await?;
                send_all(&js, outputs.iter().map(Unpublished::outgoing), in_flight).await?;
                for t in &transitions {
                    tracing::info!(fingerprint = %t.alert.fingerprint, transition = %t.id, labels = ?t.alert.labels, "alert transition");
                }
                changed = true;
            }
            if changed {
                save(&mut store, &engine, &router_state, &metrics, &signals, Vec::new()).await?;
                metrics.ack_all().await;
                signals.ack_all().await;
                changed = false;
            }
            transitions.clear();
            let (pending, firing) = engine.counts();
            metrics::gauge!("modelperf_monitor_alerts", "state" => "pending").set(pending as f64);
            metrics::gauge!("modelperf_monitor_alerts", "state" => "firing").set(firing as f64);
        }
        if read == 0 {
            let until = next_tick.min(Instant::now() + Duration::from_millis(100));
            tokio::select! {
                _ = halt.cancelled() => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }
    // Transitions applied but not yet routed are made again from the redelivered windows.
    Ok(())
}

/// The messages of one evaluation: every transition on `perf.alerts.<state>` (the journal,
/// pending and inactive ones too), then the deliveries.
fn outputs(transitions: &[Transition], deliveries: &[crate::router::Delivery]) -> anyhow::Result<Vec<Unpublished>> {
    let mut out = Vec::with_capacity(transitions.len() + deliveries.len());
    for t in transitions {
        out.push(Unpublished {
            subject: format!("perf.alerts.{}", t.alert.state.as_str()),
            msg_id: format!("alert:{}:{}", t.alert.fingerprint, t.id),
            payload: modelperf_schema::to_msgpack(&t.alert).context("encode alert")?,
        });
    }
    for d in deliveries {
        out.push(Unpublished {
            subject: d.subject(),
            msg_id: d.msg_id.clone(),
            payload: rmp_serde::to_vec_named(d).context("encode delivery")?,
        });
    }
    Ok(out)
}

async fn save(
    store: &mut CheckpointStore,
    engine: &Engine,
    router: &RouterState,
    metrics: &Reader,
    signals: &Reader,
    unpublished: Vec<Unpublished>,
) -> anyhow::Result<()> {
    let saved = Saved {
        engine: engine.state().clone(),
        router: router.clone(),
        metrics_seq: metrics.applied,
        signals_seq: signals.applied,
        unpublished,
    };
    let state = rmp_serde::to_vec_named(&saved).context("encode monitor state")?;
    store.save(&Checkpoint { applied_seq: metrics.applied, replay_from: None, state }).await?;
    Ok(())
}

/// A message that will never decode: one dead letter, then it counts as applied.
async fn refuse(
    js: &Context,
    msg: &Message,
    stream: &str,
    seq: u64,
    code: modelperf_schema::ErrorCode,
    reason: &str,
) -> Result<(), BusError> {
    let incoming = Incoming {
        subject: &msg.subject,
        headers: msg.headers.as_ref(),
        payload: &msg.payload,
        stream,
        seq,
        delivered: 1,
    };
    tracing::warn!(subject = %msg.subject, seq, reason, "message refused");
    publish(js, dead_letter(STAGE, incoming.origin(), incoming.payload, code, reason)).await?;
    Ok(())
}
