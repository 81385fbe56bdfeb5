//! `modelperf-rl-pipeline`: wires the rl-pipeline library to the process.

use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    if let Some(code) =
        modelperf_bus::config::print_config_keys_if_asked::<modelperf_rl_pipeline::Config>("rl-pipeline")
    {
        return code;
    }
    let config = || modelperf_rl_pipeline::Config::load(modelperf_bus::config::config_file().as_deref());
    modelperf_telemetry::process::service_main("rl-pipeline", config, |config, prometheus, shutdown| async move {
        let app = modelperf_rl_pipeline::App::build(config, prometheus).await?;
        tracing::info!(http = %app.http_addr(), instance = app.instance(), "rl-pipeline running");
        app.run_until_stopped(shutdown).await
    })
    .await
}
