//! `modelperf-monitor`: wires the monitor library to the process.

use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    if let Some(code) = modelperf_bus::config::print_config_keys_if_asked::<modelperf_monitor::Config>("monitor") {
        return code;
    }
    // The rules are configuration too: an invalid rule exits 64 like an invalid key.
    let config = || {
        let config = modelperf_monitor::Config::load(modelperf_bus::config::config_file().as_deref())?;
        let rules = config.load_rules()?;
        Ok::<_, modelperf_bus::ConfigError>((config, rules))
    };
    modelperf_telemetry::process::service_main("monitor", config, |(config, rules), prometheus, shutdown| async move {
        let app = modelperf_monitor::App::build(config, rules, prometheus).await?;
        tracing::info!(http = %app.http_addr(), instance = app.instance(), "monitor running");
        app.run_until_stopped(shutdown).await
    })
    .await
}
