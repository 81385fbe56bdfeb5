//! `modelperf-aggregator`: wires the aggregator library to the process.

use std::process::ExitCode;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Longest drain after SIGTERM/SIGINT; Kubernetes' grace period is longer.
const DRAIN_GRACE: Duration = Duration::from_secs(25);

#[tokio::main]
async fn main() -> ExitCode {
    let telemetry = match modelperf_telemetry::init("aggregator") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("modelperf-aggregator: telemetry: {e:#}");
            return ExitCode::from(1);
        }
    };
    let config = match modelperf_aggregator::Config::load(modelperf_bus::config::config_file().as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(64);
        }
    };
    let code = match run(config, telemetry.prometheus.clone()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "aggregator failed");
            ExitCode::from(1)
        }
    };
    telemetry.shutdown();
    code
}

async fn run(
    config: modelperf_aggregator::Config,
    prometheus: modelperf_telemetry::PrometheusHandle,
) -> anyhow::Result<()> {
    let app = modelperf_aggregator::App::build(config, prometheus).await?;
    tracing::info!(http = %app.http_addr(), instance = app.instance(), "aggregator running");
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        modelperf_telemetry::shutdown_signal().await;
        let _ = stopping_tx.send(());
    };
    let run = app.run_until_stopped(shutdown);
    tokio::pin!(run);
    tokio::select! {
        r = &mut run => r,
        _ = async { let _ = stopping_rx.await; tokio::time::sleep(DRAIN_GRACE).await } => {
            anyhow::bail!("drain did not finish within {DRAIN_GRACE:?}")
        }
    }
}
