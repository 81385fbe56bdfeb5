//! `modelperf-collector`: wires the collector library to the process.

use std::process::ExitCode;

// Events are many small allocations; mimalloc handles them markedly faster than glibc's malloc
// (see docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    if let Some(code) = modelperf_bus::config::print_config_keys_if_asked::<modelperf_collector::Config>("collector") {
        return code;
    }
    // Both are configuration errors (exit 64): an invalid key, or a production profile without
    // a privacy key / a price catalog that cannot be read.
    let config = || {
        let config = modelperf_collector::Config::load(modelperf_bus::config::config_file().as_deref())?;
        let collector = modelperf_collector::collector(&config)?;
        Ok::<_, modelperf_bus::ConfigError>((config, collector))
    };
    modelperf_telemetry::process::service_main(
        "collector",
        config,
        |(config, collector), prometheus, shutdown| async move {
            let app = modelperf_collector::App::build(config, collector, prometheus).await?;
            tracing::info!(http = %app.http_addr(), "collector running");
            app.run_until_stopped(shutdown).await.map(|_| ())
        },
    )
    .await
}
