//! `modelperf-analyzer`: wires the analyzer library to the process.

use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    if let Some(code) = modelperf_bus::config::print_config_keys_if_asked::<modelperf_analyzer::Config>("analyzer") {
        return code;
    }
    let config = || modelperf_analyzer::Config::load(modelperf_bus::config::config_file().as_deref());
    modelperf_telemetry::process::service_main("analyzer", config, |config, prometheus, shutdown| async move {
        let app = modelperf_analyzer::App::build(config, prometheus).await?;
        tracing::info!(http = %app.http_addr(), instance = app.instance(), "analyzer running");
        app.run_until_stopped(shutdown).await
    })
    .await
}
