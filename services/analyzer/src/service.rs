//! The process: the anomaly role under the lease `analyzer` (standby replicas wait for it),
//! health, heartbeats, the drain.
//!
//! The role is an owner loop of `modelperf-bus` on the durable consumer `analyzer`: metrics
//! messages are applied in stream order, the anomalies they open or resolve are published on
//! `perf.anomalies.<severity>` with `Nats-Msg-Id` = the anomaly's id (`<fingerprint>-<window
//! index>-<open|resolved>`, so a republish after a crash is dropped by the server), and every
//! `checkpoint_interval` the open anomalies and the baselines' replay position are checkpointed
//! as `analyzer.anomalies` before one ack-all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use modelperf_bus::{
    Checkpoint, CheckpointStore, Failure, Incoming, Leases, Outgoing, OwnerConfig, PartitionOwner, Process, Service,
    Topology, open_at, run_owner,
};
use modelperf_schema::ErrorCode;
use modelperf_schema::messages::{Anomaly, AnomalyState, Insight, WindowMetrics};
use modelperf_telemetry::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::analysis::{Analysis, Saved};
use crate::config::Config;
use crate::detect::{severity_name, type_name};

/// DLQ stage, heartbeat and lease name.
pub const STAGE: &str = "analyzer";
/// The lease of the anomaly role.
pub const LEASE: &str = "analyzer";
/// Its checkpoint in `modelperf_state`.
pub const CHECKPOINT: &str = "analyzer.anomalies";
/// Its durable consumer on `PERF_METRICS`.
pub const CONSUMER: &str = "analyzer";

/// A connected analyzer, ready to run.
#[derive(Debug)]
pub struct App {
    config: Config,
    process: Process,
}

impl App {
    /// Connects, ensures the analyzer's topology and binds HTTP (port 0 works).
    pub async fn build(config: Config, prometheus: PrometheusHandle) -> anyhow::Result<App> {
        let process = Process::start(
            STAGE,
            Service::Analyzer,
            &config.nats,
            &config.bus,
            config.http.listen,
            prometheus,
            &[("anomalies", "waiting for the analyzer lease")],
        )
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

    /// Runs until `shutdown` resolves, then drains: not ready, the role checkpoints and
    /// acknowledges, the lease is released, the connection drained.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let p = &self.process;
        let leases = Leases::open(&p.js, self.config.bus.lease_ttl, &p.instance).await?;
        let beat = p.heartbeat(STAGE, Some(leases.clone()), &stop);
        let ctx = Arc::new(RoleContext {
            client: p.client.clone(),
            topology: p.topology.clone(),
            config: self.config.clone(),
            leases,
            health: p.health.clone(),
        });
        let mut roles = tokio::task::JoinSet::new();
        let reports_js = modelperf_bus::jetstream(p.client.clone(), Duration::from_secs(10), 256);
        roles.spawn(crate::report::schedule::role(
            reports_js,
            ctx.leases.clone(),
            self.config.reports.clone(),
            stop.clone(),
        ));
        roles.spawn(anomaly_role(ctx, stop.clone()));
        p.supervise(roles, shutdown, &stop, "checkpointing and releasing the lease").await;
        let _ = beat.await;
        self.process.finish().await?;
        tracing::info!("stopped");
        Ok(())
    }
}

#[derive(Debug)]
struct RoleContext {
    client: async_nats::Client,
    topology: Topology,
    config: Config,
    leases: Leases,
    health: modelperf_telemetry::Health,
}

/// Runs the anomaly checks whenever this instance holds the lease; a standby is ready (it is
/// alive and connected) and waits.
async fn anomaly_role(ctx: Arc<RoleContext>, stop: CancellationToken) {
    ctx.health.ready("anomalies");
    while !stop.is_cancelled() {
        let lease = match ctx.leases.acquire(LEASE, &stop).await {
            Ok(Some(lease)) => lease,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "analyzer lease acquisition failed, will retry");
                tokio::time::sleep(ctx.config.bus.lease_ttl / 3).await;
                continue;
            }
        };
        match run_anomalies(&ctx, stop.clone(), lease.lost()).await {
            Ok(seq) => tracing::info!(checkpointed = seq, "anomaly checks stopped"),
            Err(e) => {
                tracing::warn!(error = %e, "anomaly checks stopped; restarting from the checkpoint");
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
        lease.release().await;
    }
}

async fn run_anomalies(ctx: &RoleContext, stop: CancellationToken, lost: CancellationToken) -> anyhow::Result<u64> {
    let bus = &ctx.config.bus;
    let js = modelperf_bus::jetstream(ctx.client.clone(), Duration::from_secs(10), bus.max_ack_pending as usize);
    let (mut store, cp) = CheckpointStore::open(&js, CHECKPOINT).await?;
    let mut analysis = Analysis::new(ctx.config.analyzer.clone());
    if let Some(cp) = cp.as_ref().filter(|c| !c.state.is_empty()) {
        let saved: Saved = rmp_serde::from_slice(&cp.state)
            .map_err(|e| anyhow::anyhow!("checkpoint {CHECKPOINT} does not decode: {e}"))?;
        analysis = analysis.restoring(saved);
    }
    let applied = cp.as_ref().map_or(0, |c| c.applied_seq);
    let start = match cp.as_ref().and_then(|c| c.replay_from) {
        Some(r) if r <= applied => r,
        _ => applied + 1,
    };
    let consumer = open_at(&js, &ctx.topology, CONSUMER, start).await?;
    tracing::info!(applied, replay_from = start, "anomaly checks active");
    let cfg = OwnerConfig {
        stage: STAGE.into(),
        fetch_batch: bus.fetch_batch,
        checkpoint_interval: bus.checkpoint_interval,
        max_in_flight: bus.max_ack_pending as usize,
    };
    let mut owner = Owner { analysis };
    Ok(run_owner(&js, consumer, &mut store, &mut owner, applied, &cfg, stop, lost).await?)
}

/// The analysis behind the owner loop.
#[derive(Debug)]
pub struct Owner {
    /// The state.
    pub analysis: Analysis,
}

impl Owner {
    fn decode(msg: &Incoming<'_>) -> Result<WindowMetrics, Failure> {
        modelperf_schema::from_msgpack(msg.payload)
            .or_else(|_| modelperf_schema::from_json(msg.payload))
            .map_err(|e| Failure::Terminate { code: ErrorCode::Decode, reason: format!("metrics message: {e}") })
    }
}

impl PartitionOwner for Owner {
    fn replay(&mut self, msg: &Incoming<'_>) {
        // Announced before the checkpoint: only the baselines are rebuilt.
        if let Ok(m) = Self::decode(msg) {
            let _ = self.analysis.ingest(&m, msg.seq);
            let _ = self.analysis.take_insights();
        }
    }

    fn apply(&mut self, msg: &Incoming<'_>) -> Result<Vec<Outgoing>, Failure> {
        self.analysis.finish_restore();
        let m = Self::decode(msg)?;
        let changes = self.analysis.ingest(&m, msg.seq);
        metrics::counter!("modelperf_analyzer_metrics_total").increment(1);
        let mut out: Vec<Outgoing> = changes.iter().map(announcement).collect();
        out.extend(self.analysis.take_insights().iter().map(insight_message));
        Ok(out)
    }

    fn tick(&mut self, _caught_up: bool) -> Vec<Outgoing> {
        self.analysis.finish_restore();
        metrics::gauge!("modelperf_analyzer_series").set(self.analysis.series() as f64);
        metrics::gauge!("modelperf_analyzer_open_anomalies").set(self.analysis.open_anomalies().len() as f64);
        Vec::new()
    }

    fn checkpoint(&self, applied_seq: u64) -> Checkpoint {
        // The saved state is plain data; encoding it cannot fail.
        let state = rmp_serde::to_vec_named(&self.analysis.saved()).unwrap_or_default();
        Checkpoint { applied_seq, replay_from: self.analysis.replay_from(), state }
    }
}

/// The message of an insight: `perf.insights.<type>`, `Nats-Msg-Id` = its id.
pub fn insight_message(i: &Insight) -> Outgoing {
    metrics::counter!("modelperf_analyzer_insights_total", "type" => i.kind.clone()).increment(1);
    let body = modelperf_schema::to_msgpack(i).unwrap_or_default();
    Outgoing::new(format!("perf.insights.{}", i.kind), i.id.clone(), body)
}

/// The message announcing an anomaly's change.
pub fn announcement(a: &Anomaly) -> Outgoing {
    let state = match a.state {
        AnomalyState::Open => "open",
        AnomalyState::Resolved => "resolved",
    };
    metrics::counter!("modelperf_analyzer_anomalies_total", "type" => type_name(a.kind), "state" => state).increment(1);
    let body = modelperf_schema::to_msgpack(a).unwrap_or_default();
    Outgoing::new(format!("perf.anomalies.{}", severity_name(a.severity)), a.id.clone(), body)
}
