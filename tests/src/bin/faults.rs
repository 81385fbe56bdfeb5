//! `faults` (`make test-faults`, `docs/faults.md`): the whole pipeline — the five service
//! binaries, NATS, InfluxDB, Alertmanager and a webhook receiver on loopback — under load, one
//! fault at a time: `kill -9` of each service, `SIGSTOP` past `ack_wait`, a NATS restart,
//! InfluxDB stopped for 60 s, Alertmanager down, and one node of a three-node JetStream cluster
//! killed and brought back. After each, the exact accounting of `modelperf_e2e::faults::account`;
//! the summary goes to stdout and `.local/faults/summary.md`, and the exit code is non-zero when
//! any number is off.
//!
//! `FAULTS_ONLY=<substring>` runs only the scenarios whose name contains it (the cluster
//! scenario is `cluster`).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use modelperf_e2e::faults::account::{self, Accounting, Sources};
use modelperf_e2e::faults::load::{self, Plan};
use modelperf_e2e::faults::pipeline::{ACK_WAIT, Pipeline, SERVICES, Targets};
use modelperf_e2e::faults::servers::{Alertmanager, Cluster, Nats, Recorder};
use modelperf_e2e::faults::summary::{self, Row};
use modelperf_schema::messages::{Alert, AlertState};
use modelperf_testkit::{Influx, NatsServer, eventually, project_root};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tasks per second of every scenario's load (three events each, plus 1 in 40 undecodable).
const RATE: u64 = 40;

/// How long the scenario's tasks are slow at the start, so its alert fires and resolves.
const SLOW_FOR: Duration = Duration::from_secs(12);

/// When a fault strikes, counted from the start of the load.
const FAULT_AT: Duration = Duration::from_secs(15);

/// How long the accounting may take to converge after the load.
const DRAIN: Duration = Duration::from_secs(150);

/// What a scenario does to the pipeline.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `kill -9` of a service, then started again.
    Kill(&'static str),
    /// `SIGSTOP` of a service for this long (past `ack_wait`), then `SIGCONT`.
    Stop(&'static str, Duration),
    /// The NATS server killed and started again on its port and store.
    NatsRestart,
    /// InfluxDB stopped for this long.
    InfluxDown(Duration),
    /// Alertmanager down from the start until the scenario's alert has fired, and a little after.
    AlertmanagerDown,
    /// One cluster node killed for this long, then started again.
    ClusterNode(usize, Duration),
}

impl Fault {
    fn describe(&self) -> String {
        match self {
            Fault::Kill(s) => format!("kill -9 {s}"),
            Fault::Stop(s, d) => format!("SIGSTOP {s} {} s (ack_wait {} s)", d.as_secs(), ACK_WAIT.as_secs()),
            Fault::NatsRestart => "restart nats-server".into(),
            Fault::InfluxDown(d) => format!("InfluxDB stopped {} s", d.as_secs()),
            Fault::AlertmanagerDown => "Alertmanager down".into(),
            Fault::ClusterNode(i, d) => format!("3-node cluster, R3: node n{} killed {} s", i + 1, d.as_secs()),
        }
    }

    /// How long the load runs around the fault.
    fn load(&self) -> Duration {
        match self {
            Fault::InfluxDown(d) => *d + Duration::from_secs(15),
            Fault::AlertmanagerDown => Duration::from_secs(45),
            Fault::Stop(_, d) | Fault::ClusterNode(_, d) => FAULT_AT + *d + Duration::from_secs(10),
            _ => Duration::from_secs(35),
        }
    }
}

/// The servers and the pipeline on them.
struct Env {
    /// First, so it is dropped (the services stopped) before the servers.
    pipeline: Pipeline,
    nats: Nats,
    js: async_nats::jetstream::Context,
    influx: Influx,
    database: String,
    am: Alertmanager,
    receiver: Recorder,
}

impl Env {
    async fn start(nats: Nats, influx: Influx, am: Alertmanager, receiver: Recorder, dir: &str) -> anyhow::Result<Env> {
        let database = influx.fresh_database().await?;
        let targets = Targets {
            nats: nats.url(),
            replicas: nats.replicas(),
            influx: influx.url().to_owned(),
            database: database.clone(),
            alertmanager: am.url(),
            webhook: receiver.url("/hook"),
        };
        let out = out_dir();
        let pipeline = Pipeline::start(targets, &out.join(dir), &out.join("logs").join(dir)).await?;
        let js = nats.jetstream().await?;
        Ok(Env { nats, js, influx, database, am, receiver, pipeline })
    }

    fn sources(&self) -> Sources<'_> {
        Sources { js: &self.js, influx: &self.influx, database: &self.database, receiver: &self.receiver }
    }
}

fn out_dir() -> std::path::PathBuf {
    let root = project_root();
    root.canonicalize().unwrap_or(root).join(".local/faults")
}

fn alertmanager_config(hook: &str) -> String {
    format!(
        "route:\n  receiver: hook\n  group_by: [alertname]\n  group_wait: 100ms\n  group_interval: 500ms\n  \
         repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: {hook}\n        \
         send_resolved: true\n"
    )
}

/// A progress line, with the time since the run started.
fn say(started: Instant, what: &str) {
    eprintln!("[faults {:>6.1} s] {what}", started.elapsed().as_secs_f64());
}

/// Waits until the scenario's own alert has a firing transition on `perf.alerts.*`.
async fn own_alert_fired(env: &Env, marks: &account::Marks, tenant: &str) -> anyhow::Result<()> {
    eventually(Duration::from_secs(60), || async {
        let msgs = account::read_after(&env.js, "PERF_ALERTS", marks["PERF_ALERTS"]).await.ok()?;
        msgs.iter()
            .filter_map(|m| modelperf_schema::from_msgpack::<Alert>(&m.payload).ok())
            .any(|a| a.state == AlertState::Firing && a.labels.get("tenant").map(String::as_str) == Some(tenant))
            .then_some(())
    })
    .await
    .context("the scenario's alert never fired")
}

/// Injects `fault` into the running load; returns when the system is whole again.
async fn inject(env: &mut Env, fault: Fault, marks: &account::Marks, plan: &Plan, t0: Instant) -> anyhow::Result<()> {
    let wait_until = |at: Duration| tokio::time::sleep(at.saturating_sub(t0.elapsed()));
    match fault {
        Fault::Kill(name) => {
            wait_until(FAULT_AT).await;
            let i = env.pipeline.index(name)?;
            env.pipeline.kill9(i);
            env.pipeline.restart(i).await?;
        }
        Fault::Stop(name, d) => {
            wait_until(FAULT_AT).await;
            let i = env.pipeline.index(name)?;
            env.pipeline.signal(i, "STOP")?;
            tokio::time::sleep(d).await;
            env.pipeline.signal(i, "CONT")?;
        }
        Fault::NatsRestart => {
            wait_until(FAULT_AT).await;
            let Nats::Single(server) = &mut env.nats else { anyhow::bail!("not a single server") };
            server.kill();
            tokio::time::sleep(Duration::from_secs(2)).await;
            server.restart().await?;
        }
        Fault::InfluxDown(d) => {
            wait_until(Duration::from_secs(5)).await;
            env.influx.stop();
            tokio::time::sleep(d).await;
            env.influx.restart().await?;
        }
        Fault::AlertmanagerDown => {
            wait_until(Duration::from_secs(3)).await;
            env.am.down();
            let fired = own_alert_fired(env, marks, &plan.tenant()).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            env.am.up().await?;
            fired?;
        }
        Fault::ClusterNode(i, d) => {
            wait_until(FAULT_AT).await;
            let Nats::Cluster(cluster) = &mut env.nats else { anyhow::bail!("not a cluster") };
            cluster.kill(i);
            tokio::time::sleep(d).await;
            cluster.restart(i).await?;
        }
    }
    Ok(())
}

async fn scenario(env: &mut Env, fault: Fault, tag: &str, started: Instant) -> anyhow::Result<Row> {
    let t0 = Instant::now();
    let name = fault.describe();
    say(started, &format!("{name}: load of {} s at {RATE} tasks/s", fault.load().as_secs()));
    let marks = account::marks(&env.js).await?;
    let plan = Plan { tag: tag.to_owned(), rate: RATE, duration: fault.load(), slow_for: SLOW_FOR };
    let give_up = CancellationToken::new();
    let load = tokio::spawn(load::run(env.js.clone(), plan.clone(), give_up.clone()));
    let mut problems = Vec::new();
    if let Err(e) = inject(env, fault, &marks, &plan, t0).await {
        problems.push(format!("{name}: {e:#}"));
    }
    say(started, &format!("{name}: fault over, load running"));
    // A load that cannot publish for the whole drain has failed.
    let canceller = {
        let give_up = give_up.clone();
        let limit = fault.load() + DRAIN;
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            give_up.cancel();
        })
    };
    let published = load.await.context("load task")??;
    canceller.abort();
    say(
        started,
        &format!(
            "{name}: published {} events, {} tasks, {} invalid ({} retries); draining",
            published.event_ids.len(),
            published.task_ids.len(),
            published.invalid.len(),
            published.retries
        ),
    );
    let drain = Instant::now();
    let mut accounting = Accounting::default();
    loop {
        match account::account(&env.sources(), &marks, &plan, &published).await {
            Ok(a) => accounting = a,
            Err(e) => problems.push(format!("accounting: {e:#}")),
        }
        if accounting.exact() || drain.elapsed() >= DRAIN {
            break;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        problems.retain(|p| !p.starts_with("accounting: "));
    }
    problems.extend(env.pipeline.exited());
    let row = Row { fault: name, accounting, retries: published.retries, problems, elapsed: t0.elapsed() };
    say(
        started,
        &format!(
            "{}: {} after {:.0} s",
            row.fault,
            if row.passed() { "exact" } else { "NOT exact" },
            row.elapsed.as_secs_f64()
        ),
    );
    Ok(row)
}

async fn run_all(only: Option<&str>, started: Instant) -> anyhow::Result<Vec<Row>> {
    let mut single: Vec<Fault> = SERVICES.iter().map(|s| Fault::Kill(s)).collect();
    single.push(Fault::Stop("collector", ACK_WAIT * 2 + Duration::from_secs(2)));
    single.push(Fault::Stop("aggregator", ACK_WAIT * 2 + Duration::from_secs(2)));
    single.push(Fault::NatsRestart);
    single.push(Fault::InfluxDown(Duration::from_secs(60)));
    single.push(Fault::AlertmanagerDown);
    let cluster = [Fault::ClusterNode(1, Duration::from_secs(15))];
    let wanted = |f: &Fault| only.is_none_or(|o| f.describe().contains(o));
    let run_id = chrono::Utc::now().format("%H%M%S").to_string();

    let mut receiver = Recorder::start().await?;
    let mut am = Alertmanager::start(&alertmanager_config(&receiver.url("/am"))).await?;
    let mut influx = Influx::start().await?;
    let mut rows = Vec::new();
    if single.iter().any(wanted) {
        say(started, "starting nats-server, InfluxDB, Alertmanager, the webhook receiver and the five services");
        let nats = Nats::Single(NatsServer::spawn().await?);
        let mut env = Env::start(nats, influx, am, receiver, "single").await?;
        for (n, f) in single.iter().enumerate().filter(|(_, f)| wanted(f)) {
            rows.push(scenario(&mut env, *f, &format!("r{run_id}s{n}"), started).await?);
        }
        // The services stop (SIGTERM) before their server; the other servers stay for the cluster.
        let Env { nats, pipeline, influx: i, am: a, receiver: r, .. } = env;
        drop(pipeline);
        drop(nats);
        (influx, am, receiver) = (i, a, r);
    }
    if cluster.iter().any(wanted) {
        say(started, "starting a three-node JetStream cluster and the five services on it (streams with 3 replicas)");
        let logs = out_dir().join("logs").join("cluster");
        std::fs::create_dir_all(&logs)?;
        let nats = Nats::Cluster(Cluster::start(&logs).await?);
        let mut env = Env::start(nats, influx, am, receiver, "cluster").await?;
        for (n, f) in cluster.iter().enumerate().filter(|(_, f)| wanted(f)) {
            rows.push(scenario(&mut env, *f, &format!("r{run_id}c{n}"), started).await?);
        }
    }
    Ok(rows)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let only = std::env::var("FAULTS_ONLY").ok();
    let out = out_dir();
    let _ = std::fs::remove_dir_all(out.join("logs"));
    std::fs::create_dir_all(&out)?;
    let rows = run_all(only.as_deref(), started).await?;
    anyhow::ensure!(!rows.is_empty(), "no scenario matches FAULTS_ONLY={}", only.unwrap_or_default());
    let table = summary::markdown(&rows);
    let passed = rows.iter().filter(|r| r.passed()).count();
    let text = format!(
        "# make test-faults\n\n{} of {} faults with exact accounting, {:.0} s in all ({RATE} tasks/s of three events, \
         1 in 40 followed by an undecodable message; service logs in .local/faults/logs/).\n\n{table}",
        passed,
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    let file = out.join("summary.md");
    std::fs::write(&file, &text)?;
    println!("{text}");
    eprintln!("summary written to {}", file.display());
    anyhow::ensure!(passed == rows.len(), "{} of {} faults broke the accounting", rows.len() - passed, rows.len());
    Ok(())
}
