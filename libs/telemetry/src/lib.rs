//! `modelperf-telemetry`: what every service shows of itself.
//!
//! - [`init`]: `tracing` with JSON lines in Kubernetes (or `MODELPERF_LOG_FORMAT=json`) and
//!   pretty output in a terminal, filtered by `MODELPERF_LOG`; OTLP/HTTP trace export when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set; the Prometheus recorder for the `metrics` facade.
//! - [`Health`]: named readiness checks; `/readyz` answers 503 with the list of what is missing.
//! - [`serve`]: the HTTP endpoints `/healthz`, `/readyz`, `/metrics` (port 0 works; the bound
//!   address is returned).
//! - [`heartbeat`]: `perf.health.<service>.<instance>` every 5 s on core NATS.
//! - [`process::service_main`]: a service process's start, exit codes and bounded drain.
//! - [`http::client`]: an HTTP client builder with TLS ready.

pub mod dead_letters;
pub mod http;
pub mod process;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::PrometheusBuilder;
pub use metrics_exporter_prometheus::PrometheusHandle;
use modelperf_schema::messages::Heartbeat;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keep it alive for the life of the process: dropping it flushes pending spans.
#[derive(Debug)]
pub struct TelemetryGuard {
    tracer: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    /// Renders the Prometheus text of every metric recorded so far.
    pub prometheus: PrometheusHandle,
}

impl TelemetryGuard {
    /// Flushes and stops trace export.
    pub fn shutdown(mut self) {
        if let Some(provider) = self.tracer.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Starts logging, tracing and metrics for `service`. Call once, first thing in `main`.
pub fn init(service: &str) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_from_env("MODELPERF_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("MODELPERF_LOG_FORMAT")
        .map(|f| f == "json")
        .unwrap_or_else(|_| std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() || !std::io::stderr().is_terminal());
    let tracer = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => Some(otlp_provider(service)?),
        _ => None,
    };
    let otel_layer = tracer.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer().with_tracer(provider.tracer(service.to_owned()))
    });
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // A second init in one process (tests) fails and keeps the first subscriber: ignore it.
    let _ = if json {
        registry.with(fmt.json().flatten_event(true).with_current_span(true)).try_init()
    } else {
        registry.with(fmt.pretty().with_ansi(std::io::stderr().is_terminal())).try_init()
    };
    let prometheus = match PrometheusBuilder::new().install_recorder() {
        Ok(handle) => {
            spawn_upkeep(handle.clone());
            handle
        }
        // Tests may build several services in one process: record into a private registry.
        Err(_) => PrometheusBuilder::new().build_recorder().handle(),
    };
    Ok(TelemetryGuard { tracer, prometheus })
}

/// How often the recorder's histograms are drained into their summaries.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Drains the recorder's histograms every [`UPKEEP_EVERY`] on a thread of its own. The
/// recorder keeps every histogram sample until upkeep runs, and `install_recorder` leaves that
/// to the caller: without it a process that nobody scrapes grows by every sample it records.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
        loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histograms drain only when scraped");
    }
}

fn otlp_provider(service: &str) -> anyhow::Result<opentelemetry_sdk::trace::SdkTracerProvider> {
    // The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (and the other OTEL_* variables) itself,
    // and builds its own reqwest client: TLS needs the provider first.
    http::install_tls_provider();
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build()?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(format!("modelperf-{service}")).build();
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Named readiness checks. A service marks each dependency ready or not, with a reason.
#[derive(Debug, Clone, Default)]
pub struct Health {
    checks: Arc<Mutex<BTreeMap<String, Result<(), String>>>>,
}

impl Health {
    /// Declares a check, not ready yet.
    pub fn register(&self, name: &str, reason: &str) {
        self.set(name, Err(reason.to_owned()));
    }

    /// Marks a check ready.
    pub fn ready(&self, name: &str) {
        self.set(name, Ok(()));
    }

    /// Marks a check not ready, saying why.
    pub fn not_ready(&self, name: &str, reason: impl Into<String>) {
        self.set(name, Err(reason.into()));
    }

    fn set(&self, name: &str, state: Result<(), String>) {
        if let Ok(mut checks) = self.checks.lock() {
            checks.insert(name.to_owned(), state);
        }
    }

    /// What is missing: `name: reason` per failing check; empty when ready.
    pub fn missing(&self) -> Vec<String> {
        self.checks
            .lock()
            .map(|c| c.iter().filter_map(|(k, v)| v.as_ref().err().map(|r| format!("{k}: {r}"))).collect())
            .unwrap_or_else(|_| vec!["health registry poisoned".into()])
    }

    /// Whether every check is ready.
    pub fn is_ready(&self) -> bool {
        self.missing().is_empty()
    }
}

#[derive(Clone)]
struct HttpState {
    health: Health,
    prometheus: PrometheusHandle,
}

/// Binds `addr` (port 0 picks one) and serves `/healthz`, `/readyz` and `/metrics` until
/// `stop`. Returns the bound address and the server task.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    prometheus: PrometheusHandle,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let app = Router::new()
        .route(process::HTTP_PATHS.liveness, get(|| async { "ok\n" }))
        .route(process::HTTP_PATHS.readiness, get(readyz))
        .route(process::HTTP_PATHS.metrics, get(metrics))
        .with_state(HttpState { health, prometheus });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await });
        if let Err(e) = server.await {
            tracing::error!(error = %e, "http server failed");
        }
    });
    Ok((bound, task))
}

async fn readyz(State(s): State<HttpState>) -> (StatusCode, String) {
    let missing = s.health.missing();
    if missing.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready:\n{}\n", missing.join("\n")))
    }
}

async fn metrics(State(s): State<HttpState>) -> String {
    s.prometheus.render()
}

/// What a heartbeat says, refreshed on every beat.
pub trait HeartbeatSource: Send + Sync + 'static {
    /// Lease keys held now.
    fn owned(&self) -> Vec<String>;
}

impl<F: Fn() -> Vec<String> + Send + Sync + 'static> HeartbeatSource for F {
    fn owned(&self) -> Vec<String> {
        self()
    }
}

/// Heartbeat interval of the contract.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// Publishes `perf.health.<service>.<instance>` every `interval` until `stop`.
pub fn heartbeat(
    client: async_nats::Client,
    service: &str,
    instance: &str,
    health: Health,
    source: impl HeartbeatSource,
    interval: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let started_at: DateTime<Utc> = Utc::now();
    let subject = format!("perf.health.{service}.{}", modelperf_schema::names::subject_token(instance));
    let (service, instance) = (service.to_owned(), instance.to_owned());
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let beat = Heartbeat {
                service: service.clone(),
                instance: instance.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                started_at,
                ready: health.is_ready(),
                owned: source.owned(),
                // `missing` is `name: reason`; the names alone are the contract.
                not_ready: health
                    .missing()
                    .iter()
                    .map(|m| m.split_once(": ").map_or(m.as_str(), |(name, _)| name).to_owned())
                    .collect(),
                dead_letters: dead_letters::of_stage(&service),
            };
            match rmp_serde::to_vec_named(&beat) {
                Ok(body) => {
                    if let Err(e) = client.publish(subject.clone(), body.into()).await {
                        tracing::debug!(error = %e, "heartbeat not sent");
                    }
                }
                Err(e) => tracing::error!(error = %e, "heartbeat not encoded"),
            }
        }
    })
}

/// A process-unique instance id: the pod name in Kubernetes (`HOSTNAME`), plus a random suffix.
pub fn instance_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endpoints_say_what_is_missing() {
        let guard = init("test").unwrap();
        let health = Health::default();
        health.register("nats", "not connected");
        metrics::counter!("modelperf_test_things_total").increment(3);
        let stop = CancellationToken::new();
        let (addr, task) =
            serve("127.0.0.1:0".parse().unwrap(), health.clone(), guard.prometheus.clone(), stop.clone())
                .await
                .unwrap();
        let http = crate::http::client().build().unwrap();
        let get = |path: &str| {
            let http = http.clone();
            let url = format!("http://{addr}{path}");
            async move {
                let r = http.get(url).send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        };
        assert_eq!(get("/healthz").await.0, 200);
        let (status, body) = get("/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("nats: not connected"), "{body}");
        health.ready("nats");
        assert_eq!(get("/readyz").await.0, 200);
        let (_, metrics) = get("/metrics").await;
        assert!(metrics.contains("modelperf_test_things_total 3"), "{metrics}");
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn heartbeats_carry_readiness_and_leases() {
        let server = modelperf_testkit::NatsServer::start().await.unwrap();
        let client = server.client().await.unwrap();
        let mut sub = client.subscribe("perf.health.collector.>").await.unwrap();
        let health = Health::default();
        let stop = CancellationToken::new();
        let task = heartbeat(
            client.clone(),
            "collector",
            "pod-1",
            health,
            || vec!["aggregator.p1".to_owned()],
            Duration::from_millis(100),
            stop.clone(),
        );
        use futures::StreamExt;
        let msg = tokio::time::timeout(Duration::from_secs(5), sub.next()).await.unwrap().unwrap();
        assert_eq!(msg.subject.as_str(), "perf.health.collector.pod-1");
        let beat: Heartbeat = rmp_serde::from_slice(&msg.payload).unwrap();
        assert!(beat.ready);
        assert_eq!(beat.owned, vec!["aggregator.p1".to_owned()]);
        stop.cancel();
        task.await.unwrap();
    }
}
