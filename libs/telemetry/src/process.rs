//! What every service's `main` does: telemetry first, the configuration (one line naming the
//! key and exit 64 when it is invalid), then the service until SIGTERM/SIGINT, with a bounded
//! drain (exit 1 when it overruns or the service fails).

use std::process::ExitCode;
use std::time::Duration;

use crate::PrometheusHandle;

/// The paths every service serves on its HTTP port.
#[derive(Debug, Clone, Copy)]
pub struct HttpPaths {
    /// Liveness: the process answers.
    pub liveness: &'static str,
    /// Readiness: connected, streams ensured, sinks reachable.
    pub readiness: &'static str,
    /// Prometheus text exposition.
    pub metrics: &'static str,
}

/// `/healthz`, `/readyz` and `/metrics`, as [`crate::serve`] routes them.
pub const HTTP_PATHS: HttpPaths = HttpPaths { liveness: "/healthz", readiness: "/readyz", metrics: "/metrics" };

/// Longest drain after SIGTERM/SIGINT; Kubernetes' grace period is longer.
pub const DRAIN_GRACE: Duration = Duration::from_secs(25);

/// Runs a service process. `config` loads and checks the configuration; `run` builds the
/// service and runs it until the future it is given (the signal) resolves, then drains.
pub async fn service_main<C, E, F, Fut>(service: &str, config: impl FnOnce() -> Result<C, E>, run: F) -> ExitCode
where
    E: std::fmt::Display,
    F: FnOnce(C, PrometheusHandle, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let telemetry = match crate::init(service) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("modelperf-{service}: telemetry: {e:#}");
            return ExitCode::from(1);
        }
    };
    let config = match config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(64);
        }
    };
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = Box::pin(async move {
        crate::shutdown_signal().await;
        let _ = stopping_tx.send(());
    });
    let running = run(config, telemetry.prometheus.clone(), shutdown);
    tokio::pin!(running);
    let result = tokio::select! {
        r = &mut running => r,
        _ = async { let _ = stopping_rx.await; tokio::time::sleep(DRAIN_GRACE).await } => {
            Err(anyhow::anyhow!("drain did not finish within {DRAIN_GRACE:?}"))
        }
    };
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "{service} failed");
            ExitCode::from(1)
        }
    };
    telemetry.shutdown();
    code
}
