//! `modelperf-collector`: the front door. It reads raw producer events from `PERF_RAW` (a work
//! queue shared by every replica through the durable consumer `collector`), and writes each
//! clean event to `perf.events.<kind>.<p>` with `Nats-Msg-Id` = its id, or the raw bytes to
//! `perf.dlq.collector` with a code and a reason. A raw message is acknowledged only after its
//! output is stored, so a crash at any moment loses nothing and the duplicate window drops what
//! a restarted replica publishes twice.
//!
//! Layout:
//! - [`config`]: `[collector]` and the shared sections;
//! - [`pipeline`]: one raw message → one clean event (decode, check, id, price, sample, privacy);
//! - [`sampling`]: consistent per-task sampling and its overrides;
//! - [`legacy`]: the tracker's legacy shapes mapped to v1;
//! - [`App`]: connecting, the runner, health and heartbeats, the ordered drain.

pub mod config;
pub mod legacy;
pub mod pipeline;
pub mod sampling;

use std::net::SocketAddr;
use std::sync::Arc;

use modelperf_bus::{BusError, ConfigError, RunStats, RunnerConfig, Service, streams};
use modelperf_pricing::Catalog;
use modelperf_privacy::{Privacy, PrivacyConfig};
use modelperf_telemetry::PrometheusHandle;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use pipeline::Collector;

use crate::config::Profile;
use crate::sampling::Sampler;

/// The durable consumer all replicas share.
pub const CONSUMER: &str = "collector";
/// The stage name: DLQ subject `perf.dlq.collector`.
pub const STAGE: &str = "collector";

/// Builds the processing from the configuration. Errors are configuration errors (exit 64):
/// a production profile without a privacy key, or a price catalog that cannot be read.
pub fn collector(config: &Config) -> Result<Collector, ConfigError> {
    let c = &config.collector;
    let privacy_cfg = PrivacyConfig {
        level: c.privacy,
        key: c.privacy_key.clone(),
        key_id: c.privacy_key_id.clone(),
        pseudonymize_attrs: c.pseudonymize_attrs.clone(),
    };
    let privacy = Privacy::new(&privacy_cfg, c.profile == Profile::Prod)
        .map_err(|e| ConfigError::Invalid { key: "MODELPERF_COLLECTOR__PRIVACY_KEY".into(), reason: e.to_string() })?;
    if privacy.uses_dev_key() {
        tracing::warn!(
            "no privacy key configured: pseudonyms use the public development key; set MODELPERF_COLLECTOR__PRIVACY_KEY"
        );
    }
    let catalog = Catalog::load(&c.prices_file)
        .map_err(|e| ConfigError::Invalid { key: "MODELPERF_COLLECTOR__PRICES_FILE".into(), reason: e.to_string() })?;
    tracing::info!(version = catalog.version(), entries = catalog.len(), "price catalog loaded");
    Ok(Collector::new(config.bus.partitions, Sampler::new(&c.sampling), privacy, catalog))
}

/// A connected collector, ready to run.
#[derive(Debug)]
pub struct App {
    config: Config,
    process: modelperf_bus::Process,
    consumer: async_nats::jetstream::consumer::PullConsumer,
    collector: Arc<Collector>,
}

impl App {
    /// Connects, ensures the collector's part of the topology and binds HTTP (port 0 works).
    pub async fn build(config: Config, collector: Collector, prometheus: PrometheusHandle) -> anyhow::Result<App> {
        let process = modelperf_bus::Process::start(
            STAGE,
            Service::Collector,
            &config.nats,
            &config.bus,
            config.http.listen,
            prometheus,
            &[],
        )
        .await?;
        let consumer = process
            .js
            .get_stream(streams::RAW)
            .await
            .map_err(|e| BusError::js("get stream PERF_RAW", e))?
            .get_consumer(CONSUMER)
            .await
            .map_err(|e| anyhow::anyhow!("failed to get consumer {CONSUMER} on PERF_RAW: {e}"))?;
        Ok(App { config, process, consumer, collector: Arc::new(collector) })
    }

    /// The bound health/metrics address.
    pub fn http_addr(&self) -> SocketAddr {
        self.process.http_addr
    }

    /// Runs until `shutdown` resolves (or the runner fails), then drains in order: report not
    /// ready, stop pulling, settle in-flight messages, drain the NATS connection, stop the
    /// heartbeat, stop HTTP last.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<RunStats> {
        let background = CancellationToken::new();
        let beat = self.process.heartbeat(STAGE, None, &background);
        let mut runner_cfg = RunnerConfig::new(STAGE, &self.config.bus);
        runner_cfg.in_flight_batches = self.config.collector.in_flight_batches;
        let stop_pulling = CancellationToken::new();
        let runner = {
            let (js, consumer, collector, stop) =
                (self.process.js.clone(), self.consumer.clone(), self.collector.clone(), stop_pulling.clone());
            tokio::spawn(async move { modelperf_bus::run(js, consumer, collector, &runner_cfg, stop).await })
        };
        tokio::pin!(runner);
        let result = tokio::select! {
            _ = shutdown => {
                tracing::info!("shutting down: draining in-flight messages");
                background.cancel();
                self.process.health.not_ready("draining", "shutting down");
                stop_pulling.cancel();
                runner.await
            }
            r = &mut runner => r,
        };
        background.cancel();
        self.process.health.not_ready("draining", "shutting down");
        let result = match result {
            Ok(Ok(stats)) => Ok(stats),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("collector runner failed")),
            Err(e) => Err(anyhow::Error::new(e).context("collector runner panicked")),
        };
        // Drain even after a failure: what was published must reach the server.
        let _ = beat.await;
        let drained = self.process.finish().await;
        let stats = result?;
        drained?;
        tracing::info!(acked = stats.acked, dead_lettered = stats.dead_lettered, retried = stats.retried, "stopped");
        Ok(stats)
    }
}
