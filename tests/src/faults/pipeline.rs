//! The five services as child processes of the harness — the real release binaries, configured
//! through one TOML file and environment overrides, each on its own HTTP port — which a
//! scenario kills (`kill -9`), stops (`SIGSTOP`), continues (`SIGCONT`) and restarts.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use modelperf_testkit::{eventually, free_port};

use crate::bench::bin;

/// The services, in pipeline order.
pub const SERVICES: [&str; 5] = ["collector", "aggregator", "rl-pipeline", "analyzer", "monitor"];

/// Partitions of `PERF_EVENTS`.
pub const PARTITIONS: u32 = 4;

/// `ack_wait` of every consumer: a `SIGSTOP` longer than this makes the server redeliver.
pub const ACK_WAIT: Duration = Duration::from_secs(5);

/// The rule that fires while a scenario's tasks are slow: p95 above 5 s on a 10 s window, per
/// model and tenant (each scenario has a tenant of its own), resolved by the next clear window.
pub const RULES: &str = r#"[[rules]]
name = "FaultsLatencyHigh"
type = "threshold"
metric = "latency_p95_ms"
op = ">"
value = 5000
window = "10s"
for = "0s"
keep_firing_for = "0s"
match = { kind = "task_completed" }
by = ["model", "tenant"]
min_count = 5
severity = "warning"
annotations = { summary = "p95 of {{model}} for {{tenant}} is {{value}} ms" }
"#;

/// Where the pipeline sends and stores things.
#[derive(Debug, Clone)]
pub struct Targets {
    /// `MODELPERF_NATS__URL`.
    pub nats: String,
    /// Stream replicas.
    pub replicas: usize,
    /// InfluxDB's URL and the database.
    pub influx: String,
    pub database: String,
    /// Alertmanager's URL.
    pub alertmanager: String,
    /// The monitor's webhook receiver.
    pub webhook: String,
}

/// How the services run besides their configuration file.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `MODELPERF_BUS__PARTITIONS`.
    pub partitions: u32,
    /// `MODELPERF_BUS__ACK_WAIT`.
    pub ack_wait: Duration,
    /// `MODELPERF_BUS__LEASE_TTL`.
    pub lease_ttl: Duration,
}

impl Settings {
    /// The fault harness's: [`PARTITIONS`], [`ACK_WAIT`], a 3 s lease.
    pub fn faults() -> Settings {
        Settings { partitions: PARTITIONS, ack_wait: ACK_WAIT, lease_ttl: Duration::from_secs(3) }
    }
}

/// The configuration all five services read: short windows like `deploy/local/demo.toml`, only
/// the `10s` window, the webhook route, Alertmanager.
fn config_text(t: &Targets, rules: &Path) -> String {
    format!(
        r#"[aggregator]
windows = ["10s"]
allowed_lateness = "5s"

[influx.retention_policies.10s]
duration = "1d"

[rl]
join_grace = "2s"
batch_max_age = "5s"

[analyzer]
windows = ["10s"]

[monitor]
rules_file = "{rules}"
eval_interval = "1s"
resend_interval = "5s"
alertmanager_url = "{am}"
# Alertmanager's group_wait in the harness is 100 ms.
alertmanager_min_firing = "2s"

[monitor.delivery]
base_backoff = "200ms"
max_backoff = "2s"
timeout = "2s"

[monitor.receivers.audit]
type = "webhook"
url = "{hook}"
secret = "faults-webhook-secret"

[[monitor.routes]]
receiver = "audit"
"#,
        rules = rules.display(),
        am = t.alertmanager,
        hook = t.webhook,
    )
}

/// One service process; it keeps its HTTP port across restarts and appends to one log.
#[derive(Debug)]
pub struct Service {
    /// `collector`, `aggregator`, ...
    pub name: &'static str,
    binary: PathBuf,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Service {
    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

/// The five services on one configuration.
#[derive(Debug)]
pub struct Pipeline {
    /// The services, in [`SERVICES`] order.
    pub services: Vec<Service>,
    config: PathBuf,
    targets: Targets,
    settings: Settings,
    http: reqwest::Client,
}

impl Pipeline {
    /// Writes the configuration and rule files into `dir`, starts every service and waits until
    /// each is ready. Logs go to `logs/<service>.log`.
    pub async fn start(targets: Targets, dir: &Path, logs: &Path) -> anyhow::Result<Pipeline> {
        std::fs::create_dir_all(dir)?;
        let rules = dir.join("rules.toml");
        std::fs::write(&rules, RULES)?;
        let text = config_text(&targets, &rules);
        Pipeline::start_with(targets, &text, Settings::faults(), dir, logs).await
    }

    /// Starts every service on the configuration `text` (written into `dir`) and `settings`, and
    /// waits until each is ready. Logs go to `logs/<service>.log`.
    pub async fn start_with(
        targets: Targets,
        text: &str,
        settings: Settings,
        dir: &Path,
        logs: &Path,
    ) -> anyhow::Result<Pipeline> {
        std::fs::create_dir_all(dir)?;
        std::fs::create_dir_all(logs)?;
        let config = dir.join("modelperf.toml");
        std::fs::write(&config, text)?;
        let mut services = Vec::new();
        for name in SERVICES {
            let binary = bin(&format!("modelperf-{name}"))?;
            services.push(Service {
                name,
                binary,
                port: free_port(),
                log: logs.join(format!("{name}.log")),
                child: None,
            });
        }
        let http = modelperf_telemetry::http::client().timeout(Duration::from_secs(2)).build()?;
        let mut pipeline = Pipeline { services, config, targets, settings, http };
        for i in 0..pipeline.services.len() {
            pipeline.spawn(i)?;
            pipeline.wait_ready(i).await?;
        }
        Ok(pipeline)
    }

    /// The index of service `name`.
    pub fn index(&self, name: &str) -> anyhow::Result<usize> {
        self.services.iter().position(|s| s.name == name).with_context(|| format!("no service {name}"))
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let t = &self.targets;
        let s = &mut self.services[i];
        let log = OpenOptions::new().create(true).append(true).open(&s.log)?;
        let child = Command::new(&s.binary)
            .env("MODELPERF_CONFIG", &self.config)
            .env("MODELPERF_NATS__URL", &t.nats)
            .env("MODELPERF_NATS__REPLICAS", t.replicas.to_string())
            .env("MODELPERF_BUS__PARTITIONS", self.settings.partitions.to_string())
            .env("MODELPERF_BUS__ACK_WAIT", format!("{}ms", self.settings.ack_wait.as_millis()))
            .env("MODELPERF_BUS__LEASE_TTL", format!("{}ms", self.settings.lease_ttl.as_millis()))
            .env("MODELPERF_INFLUX__URL", &t.influx)
            .env("MODELPERF_INFLUX__DATABASE", &t.database)
            .env("MODELPERF_COLLECTOR__PRIVACY_KEY", "faults-privacy-key")
            .env("MODELPERF_HTTP__LISTEN", format!("127.0.0.1:{}", s.port))
            .env("MODELPERF_LOG", std::env::var("MODELPERF_FAULTS_LOG").unwrap_or_else(|_| "warn".into()))
            .env("MODELPERF_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", s.binary.display()))?;
        s.child = Some(child);
        Ok(())
    }

    /// Waits until `/readyz` of service `i` answers 200 (60 s at most).
    pub async fn wait_ready(&mut self, i: usize) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/readyz", self.services[i].port);
        let ready = eventually(Duration::from_secs(60), || async {
            let r = self.http.get(&url).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        if ready.is_err() {
            let s = &mut self.services[i];
            if let Some(status) = s.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("{} exited ({status}); see {}", s.name, s.log.display());
            }
            bail!("{} not ready within 60 s; see {}", s.name, s.log.display());
        }
        Ok(())
    }

    /// `kill -9` of service `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.services[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts service `i` again (after [`Pipeline::kill9`]) and waits until it is ready.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill9(i);
        self.spawn(i)?;
        self.wait_ready(i).await
    }

    /// Sends `signal` (`STOP`, `CONT`) to service `i`.
    pub fn signal(&self, i: usize, signal: &str) -> anyhow::Result<()> {
        let pid = self.services[i].pid().with_context(|| format!("{} is not running", self.services[i].name))?;
        let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    /// Services that exited on their own (not killed by the harness), with their status.
    pub fn exited(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for s in &mut self.services {
            if let Some(status) = s.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                out.push(format!("{} exited ({status}); see {}", s.name, s.log.display()));
            }
        }
        out
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // SIGTERM first, so each service drains and the next run starts clean; then SIGKILL.
        for s in &self.services {
            if let Some(pid) = s.pid() {
                let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
            }
        }
        for s in &mut self.services {
            if let Some(mut c) = s.child.take() {
                for _ in 0..100 {
                    if c.try_wait().ok().flatten().is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
