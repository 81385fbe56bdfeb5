//! A service process's connections: the health/metrics endpoint, the NATS connection and
//! JetStream context, the service's part of the topology ensured, and the ordered end (drain the
//! connection, then stop HTTP last so probes see the drain).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::Context;
use modelperf_telemetry::{Health, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::config::{BusConfig, NatsConfig};
use crate::lease::Leases;
use crate::topology::{Service, Topology};

/// What a started service process holds.
#[derive(Debug)]
pub struct Process {
    /// The NATS connection.
    pub client: async_nats::Client,
    /// JetStream on it.
    pub js: Context,
    /// The service's part of the contract's topology (ensured).
    pub topology: Topology,
    /// Readiness checks (`nats` registered; services add theirs).
    pub health: Health,
    /// This process's instance id.
    pub instance: String,
    /// Where `/healthz`, `/readyz` and `/metrics` listen.
    pub http_addr: SocketAddr,
    http_task: tokio::task::JoinHandle<()>,
    http_stop: CancellationToken,
    watch: tokio::task::JoinHandle<()>,
    watch_stop: CancellationToken,
}

impl Process {
    /// Binds HTTP on `listen` (port 0 works), connects as `<name>-<instance>`, and ensures the
    /// topology of `service`. `checks` are registered as not ready before HTTP answers.
    pub async fn start(
        name: &str,
        service: Service,
        nats: &NatsConfig,
        bus: &BusConfig,
        listen: SocketAddr,
        prometheus: PrometheusHandle,
        checks: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let health = Health::default();
        health.register("nats", "connecting");
        for (check, reason) in checks {
            health.register(check, reason);
        }
        let http_stop = CancellationToken::new();
        let (http_addr, http_task) = modelperf_telemetry::serve(listen, health.clone(), prometheus, http_stop.clone())
            .await
            .with_context(|| format!("failed to bind http on {listen}"))?;
        let instance = modelperf_telemetry::instance_id();
        let client = crate::connect(nats, &format!("{name}-{instance}")).await.context("failed to connect to nats")?;
        let js = crate::jetstream(client.clone(), Duration::from_secs(10), bus.max_ack_pending as usize);
        let topology = Topology::contract(bus, nats.replicas).for_service(service);
        topology.ensure(&js).await.context("failed to ensure streams")?;
        health.ready("nats");
        let watch_stop = CancellationToken::new();
        let watch = watch_connection(client.clone(), health.clone(), watch_stop.clone());
        Ok(Self { client, js, topology, health, instance, http_addr, http_task, http_stop, watch, watch_stop })
    }

    /// Publishes the heartbeat `perf.health.<service>.<instance>` until `stop`, naming the leases
    /// held (member leases aside).
    pub fn heartbeat(
        &self,
        service: &str,
        leases: Option<Leases>,
        stop: &CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        modelperf_telemetry::heartbeat(
            self.client.clone(),
            service,
            &self.instance,
            self.health.clone(),
            move || {
                leases
                    .as_ref()
                    .map(|l| l.held().into_iter().filter(|k| !k.contains(".member.")).collect())
                    .unwrap_or_default()
            },
            modelperf_telemetry::HEARTBEAT_INTERVAL,
            stop.clone(),
        )
    }

    /// Waits for `shutdown` (or a role ending on its own, logged as an error), then reports not
    /// ready, cancels `stop` and waits for every role to finish its drain.
    pub async fn supervise(
        &self,
        mut roles: tokio::task::JoinSet<()>,
        shutdown: impl Future<Output = ()>,
        stop: &CancellationToken,
        draining: &str,
    ) {
        tokio::select! {
            _ = shutdown => tracing::info!("shutting down: {draining}"),
            Some(r) = roles.join_next() => tracing::error!(result = ?r, "a role ended unexpectedly"),
        }
        self.health.not_ready("draining", "shutting down");
        stop.cancel();
        while roles.join_next().await.is_some() {}
    }

    /// Drains the connection (what was published reaches the server), then stops HTTP.
    pub async fn finish(self) -> anyhow::Result<()> {
        self.watch_stop.cancel();
        let _ = self.watch.await;
        self.health.not_ready("draining", "shutting down");
        let drained = self.client.drain().await.context("failed to drain the nats connection");
        self.http_stop.cancel();
        let _ = self.http_task.await;
        drained
    }
}

/// Keeps the `nats` readiness check in step with the connection.
fn watch_connection(
    client: async_nats::Client,
    health: Health,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            match client.connection_state() {
                async_nats::connection::State::Connected => health.ready("nats"),
                other => health.not_ready("nats", format!("connection {other}")),
            }
        }
    })
}
