//! `modelperf`: the command-line tool of modelperf.
//!
//! Layout: `main.rs` parses the command line and connects; `load.rs` is the synthetic workload;
//! `dlq.rs` lists and replays dead letters; `batches.rs` lists, tails and exports RL training
//! batches; `report.rs` writes a report of a period; `compare.rs` compares the models of a task type.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use modelperf_bus::{BusConfig, NatsConfig, Service, Topology};
use serde::{Deserialize, Serialize};

mod alerts;
mod batches;
mod compare;
mod dlq;
mod load;
mod report;

/// Measure how AI models perform inside an agent platform.
#[derive(Debug, Parser)]
#[command(name = "modelperf", version)]
struct Cli {
    /// Configuration file (TOML); environment variables MODELPERF_<SECTION>__<KEY> override it.
    #[arg(long, global = true, env = "MODELPERF_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the contract's streams, consumers, KV buckets and object store (idempotent).
    Ensure,
    /// Publish synthetic agent-platform traffic to perf.raw.*.
    Load(load::LoadArgs),
    /// Message counts of every stream.
    Streams,
    /// Dead letters grouped by code (bodies with --show-body); `dlq replay` republishes them.
    Dlq(dlq::DlqArgs),
    /// Check that the NATS server is 2.10 or newer with JetStream (exit 1 otherwise).
    ServerCheck,
    /// Rebuild the windows of a period from PERF_EVENTS and rewrite them with a new revision.
    Reaggregate(ReaggregateArgs),
    /// RL training batches per dataset; `batches tail` the latest, `batches export` to JSONL.
    Batches(batches::BatchesArgs),
    /// Firing alerts and recent transitions (PERF_ALERTS), filtered by severity, labels, time.
    Alerts(alerts::AlertsArgs),
    /// A report of a period (latency, success, quality, cost, Pareto front, anomalies) as HTML,
    /// Markdown or JSON; --publish also stores and announces it.
    Report(report::ReportArgs),
    /// Compare the models of a task type over a period: success, latency, quality and cost with
    /// intervals, corrected pairwise tests, a ranking in tiers, the Pareto front; --run compares
    /// a benchmark run paired.
    Compare(compare::CompareArgs),
}

#[derive(Debug, clap::Args)]
struct ReaggregateArgs {
    /// Start of the period: an RFC 3339 time, or a duration ago (`6h`, `2d`).
    #[arg(long)]
    since: String,
    /// Compute every event's cost again from its tokens with the price catalog.
    #[arg(long)]
    reprice: bool,
    /// The price catalog for --reprice.
    #[arg(long, env = "MODELPERF_COLLECTOR__PRICES_FILE", default_value = "deploy/prices.toml")]
    prices: PathBuf,
}

impl ReaggregateArgs {
    fn since(&self) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
        time_arg("--since", &self.since)
    }
}

/// A time argument: an RFC 3339 time, or a duration ago (`6h`, `2d`).
fn time_arg(flag: &str, value: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(ts) = modelperf_schema::parse_ts(value) {
        return Ok(ts);
    }
    let ago = humantime::parse_duration(value)
        .with_context(|| format!("{flag} {value}: neither an RFC 3339 time nor a duration"))?;
    Ok(chrono::Utc::now() - chrono::Duration::from_std(ago).with_context(|| format!("{flag} {value}: too long ago"))?)
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Config {
    nats: NatsConfig,
    bus: BusConfig,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let config: Config = match modelperf_bus::config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(64);
        }
    };
    if let Err(e) = config.bus.validate() {
        eprintln!("{e}");
        std::process::exit(64);
    }
    if let Err(e) = run(cli.command, config, cli.config.as_deref()).await {
        eprintln!("modelperf: {e:#}");
        std::process::exit(1);
    }
}

async fn run(command: Command, config: Config, config_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    if let Command::ServerCheck = command {
        return server_check(&config.nats).await;
    }
    if let Command::Reaggregate(args) = &command {
        return reaggregate(args, config_file).await;
    }
    let client = modelperf_bus::connect(&config.nats, "modelperf-cli").await?;
    let js = modelperf_bus::jetstream(client.clone(), std::time::Duration::from_secs(10), 4096);
    match command {
        Command::Ensure => {
            let topology = Topology::contract(&config.bus, config.nats.replicas).for_service(Service::All);
            topology.ensure(&js).await?;
            println!(
                "ensured {} streams, {} consumers, {} KV buckets and the reports object store",
                topology.streams.len(),
                topology.consumers.len(),
                topology.buckets.len()
            );
        }
        Command::Load(args) => {
            Topology::contract(&config.bus, config.nats.replicas).for_service(Service::Collector).ensure(&js).await?;
            let summary = load::run(&js, &args).await?;
            println!("{summary}");
        }
        Command::ServerCheck | Command::Reaggregate(_) => unreachable!("handled before connecting"),
        Command::Dlq(args) => {
            // Replays are recorded in modelperf_state; operators' credentials may create it.
            Topology::contract(&config.bus, config.nats.replicas).for_service(Service::All).ensure(&js).await?;
            dlq::run(&js, &args).await?
        }
        Command::Batches(args) => batches::run(&js, &args).await?,
        Command::Alerts(args) => alerts::run(&js, &args).await?,
        Command::Report(args) => report::run(&js, &args).await?,
        Command::Compare(args) => compare::run(&js, &args).await?,
        Command::Streams => {
            let topology = Topology::contract(&config.bus, config.nats.replicas);
            println!("{:<16} {:>12} {:>14}", "stream", "messages", "bytes");
            for spec in &topology.streams {
                match js.get_stream(spec.name).await {
                    Ok(mut s) => {
                        let info = s.info().await.with_context(|| format!("info of {}", spec.name))?;
                        println!("{:<16} {:>12} {:>14}", spec.name, info.state.messages, info.state.bytes);
                    }
                    Err(_) => println!("{:<16} {:>12}", spec.name, "missing"),
                }
            }
        }
    }
    client.flush().await?;
    Ok(())
}

/// `modelperf reaggregate`: with the aggregator's own configuration (windows, InfluxDB).
async fn reaggregate(args: &ReaggregateArgs, file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let config = modelperf_aggregator::Config::load(file)?;
    let since = args.since()?;
    let catalog = if args.reprice {
        let c = modelperf_pricing::Catalog::load(&args.prices)?;
        eprintln!("re-pricing with {} (version {}, {} entries)", args.prices.display(), c.version(), c.len());
        Some(c)
    } else {
        None
    };
    let client = modelperf_bus::connect(&config.nats, "modelperf-cli").await?;
    let js = modelperf_bus::jetstream(client.clone(), std::time::Duration::from_secs(10), 4096);
    eprintln!("re-aggregating windows from {} (rounded down to each window)", modelperf_schema::format_ts(&since));
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events read ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let summary =
        modelperf_aggregator::reaggregate::reaggregate(&js, &config, since, catalog.as_ref(), |read, total| {
            bar.set_length(total);
            bar.set_position(read);
        })
        .await;
    bar.finish_and_clear();
    println!("{}", summary?);
    client.flush().await?;
    Ok(())
}

/// Refuses servers older than 2.10 or without JetStream, without retrying the connection.
async fn server_check(nats: &NatsConfig) -> anyhow::Result<()> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(std::time::Duration::from_secs(2))
        .connect(nats.url.as_str())
        .await
        .with_context(|| format!("no nats server at {}", nats.url))?;
    let info = client.server_info();
    let mut parts = info.version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    anyhow::ensure!((major, minor) >= (2, 10), "nats-server {} at {} is older than 2.10", info.version, nats.url);
    anyhow::ensure!(info.jetstream, "nats-server at {} runs without JetStream", nats.url);
    println!("nats-server {} with JetStream at {}", info.version, nats.url);
    Ok(())
}
