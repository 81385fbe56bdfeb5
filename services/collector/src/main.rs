//! `modelperf-collector`: wires the collector library to the process.

use std::process::ExitCode;
use std::time::Duration;

// Events are many small allocations; mimalloc handles them markedly faster than glibc's malloc
// (see docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Longest drain after SIGTERM/SIGINT; Kubernetes' grace period is longer.
const DRAIN_GRACE: Duration = Duration::from_secs(25);

#[tokio::main]
async fn main() -> ExitCode {
    let telemetry = match modelperf_telemetry::init("collector") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("modelperf-collector: telemetry: {e:#}");
            return ExitCode::from(1);
        }
    };
    let file = modelperf_bus::config::config_file();
    let config = match modelperf_collector::Config::load(file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(64);
        }
    };
    let collector = match modelperf_collector::collector(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(64);
        }
    };
    let code = match run(config, collector, telemetry.prometheus.clone()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "collector failed");
            ExitCode::from(1)
        }
    };
    telemetry.shutdown();
    code
}

async fn run(
    config: modelperf_collector::Config,
    collector: modelperf_collector::Collector,
    prometheus: modelperf_telemetry::PrometheusHandle,
) -> anyhow::Result<()> {
    let app = modelperf_collector::App::build(config, collector, prometheus).await?;
    tracing::info!(http = %app.http_addr(), "collector running");
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        modelperf_telemetry::shutdown_signal().await;
        let _ = stopping_tx.send(());
    };
    let run = app.run_until_stopped(shutdown);
    tokio::pin!(run);
    tokio::select! {
        r = &mut run => r.map(|_| ()),
        _ = async { let _ = stopping_rx.await; tokio::time::sleep(DRAIN_GRACE).await } => {
            anyhow::bail!("drain did not finish within {DRAIN_GRACE:?}")
        }
    }
}
