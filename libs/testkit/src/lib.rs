//! `modelperf-testkit`: real servers for tests, and waiting without sleeping.
//!
//! - [`NatsServer`] starts the upstream `nats-server` (2.10 or newer, JetStream on) on a free
//!   loopback port with a temporary store and kills it on drop; it refuses older servers and
//!   servers without JetStream, including a reused one (`MODELPERF_TEST_NATS_URL`).
//! - [`Influx`] starts Debian's `influxd` (1.x) on free ports with temporary data, or reuses
//!   `MODELPERF_TEST_INFLUX_URL`, and hands out a fresh database per test.
//! - [`Alertmanager`] starts Prometheus Alertmanager on a free loopback port with a temporary
//!   data directory and the test's configuration.
//! - [`eventually`] polls a condition until a deadline.
//! - [`read_stream`] reads everything a stream holds (optionally under a subject filter).
//! - [`grafana`] loads the provisioned dashboards, expands their InfluxQL as Grafana does and
//!   runs it on a real InfluxDB.
//!
//! Binaries are found through `MODELPERF_NATS_SERVER` / `MODELPERF_INFLUXD` /
//! `MODELPERF_ALERTMANAGER`, then the project's
//! `.tools/bin/` (filled by `deploy/local/prereqs.sh`), then `PATH`.

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

pub mod grafana;

/// The oldest NATS server the project supports.
pub const MIN_NATS: (u32, u32) = (2, 10);

/// The project root (where `.tools/` lives).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The binary `name`: from the environment variable `env`, the project's `.tools/bin/`, or
/// `PATH`.
pub fn find_binary(env: &str, name: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    let local = project_root().join(".tools/bin").join(name);
    if local.exists() {
        return Ok(local);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{name} not found: set {env}, or run deploy/local/prereqs.sh to install it into .tools/bin")
}

/// A free TCP port on loopback (the listener is dropped; a race with another process is
/// possible but unlikely on a test machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// Parses `2.14.0` or `v2.14.0` out of a version string.
pub fn parse_version(s: &str) -> Option<(u32, u32, u32)> {
    let token = s.split_whitespace().find(|t| t.trim_start_matches('v').starts_with(|c: char| c.is_ascii_digit()))?;
    let mut parts = token.trim_start_matches('v').split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((major, minor, patch))
}

fn check_nats_version(version: &str, what: &str) -> anyhow::Result<()> {
    let Some((major, minor, _)) = parse_version(version) else {
        bail!("{what}: cannot read the nats-server version from `{version}`");
    };
    if (major, minor) < MIN_NATS {
        bail!(
            "{what} is nats-server {major}.{minor}, older than the required {}.{} (Debian's 2.9 is too old); \
             run deploy/local/prereqs.sh for the upstream binary",
            MIN_NATS.0,
            MIN_NATS.1
        );
    }
    Ok(())
}

/// A `nats-server -js` of our own, or a checked reused one.
#[derive(Debug)]
pub struct NatsServer {
    url: String,
    port: u16,
    store: Option<tempfile::TempDir>,
    child: Option<Child>,
    binary: Option<PathBuf>,
    /// A configuration file, its environment and the user the kit checks readiness as.
    config: Option<ServerConfig>,
}

#[derive(Debug, Clone)]
struct ServerConfig {
    file: PathBuf,
    env: Vec<(String, String)>,
    user: String,
    password: String,
}

impl NatsServer {
    /// Reuses `MODELPERF_TEST_NATS_URL` when set (after checking version and JetStream), else
    /// starts a new server.
    pub async fn start() -> anyhow::Result<Self> {
        if let Ok(url) = std::env::var("MODELPERF_TEST_NATS_URL") {
            check_running(&url).await?;
            return Ok(Self { url, port: 0, store: None, child: None, binary: None, config: None });
        }
        Self::spawn().await
    }

    /// Always starts a new server on a free port with a temporary store.
    pub async fn spawn() -> anyhow::Result<Self> {
        Self::spawn_inner(None).await
    }

    /// Starts a new server with the configuration file `file` (included; address, ports and
    /// store still come from the kit), `env` in its
    /// environment (for `$VAR` references such as passwords), checking readiness as
    /// `user`/`password`. The server logs to a file in its store: see [`Self::log`].
    pub async fn spawn_with_config(
        file: &Path,
        env: &[(&str, &str)],
        user: &str,
        password: &str,
    ) -> anyhow::Result<Self> {
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let config = ServerConfig { file: file.to_owned(), env, user: user.to_owned(), password: password.to_owned() };
        Self::spawn_inner(Some(config)).await
    }

    async fn spawn_inner(config: Option<ServerConfig>) -> anyhow::Result<Self> {
        let binary = find_binary("MODELPERF_NATS_SERVER", "nats-server")?;
        let out =
            Command::new(&binary).arg("--version").output().with_context(|| format!("running {}", binary.display()))?;
        check_nats_version(&String::from_utf8_lossy(&out.stdout), &binary.display().to_string())?;
        let store = tempfile::tempdir()?;
        let port = free_port();
        let mut server = Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            store: Some(store),
            child: None,
            binary: Some(binary),
            config,
        };
        server.launch().await?;
        Ok(server)
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let (Some(binary), Some(store)) = (&self.binary, &self.store) else {
            bail!("a reused server cannot be restarted by the test kit");
        };
        let mut command = Command::new(binary);
        if let Some(config) = &self.config {
            // The server refuses a store directory given both in the file and on the command
            // line, so a wrapper includes the file (next to it, includes are relative) and sets
            // address, port, monitoring port and store after it.
            std::fs::copy(&config.file, store.path().join("included.conf"))
                .with_context(|| format!("copying {}", config.file.display()))?;
            let wrapper = store.path().join("nats-server.conf");
            std::fs::write(
                &wrapper,
                format!(
                    "include \"included.conf\"\nlisten: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{http}\"\n\
                     jetstream {{ store_dir: \"{store}\" }}\n",
                    port = self.port,
                    http = free_port(),
                    store = store.path().display()
                ),
            )?;
            command.arg("-c").arg(wrapper).arg("-l").arg(store.path().join("nats-server.log"));
            command.envs(config.env.iter().map(|(k, v)| (k, v)));
        } else {
            command.args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"]).arg(store.path());
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        self.child = Some(child);
        let url = self.url.clone();
        let auth = self.config.as_ref().map(|c| (c.user.clone(), c.password.clone()));
        eventually(Duration::from_secs(10), || async { check_running_as(&url, auth.clone()).await.ok() })
            .await
            .with_context(|| format!("nats-server did not come up on {url}"))?;
        Ok(())
    }

    /// The client URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// What the server logged so far (only for a server started with a configuration file,
    /// which logs to a file; empty otherwise). Permission violations are logged here.
    pub fn log(&self) -> String {
        match (&self.config, &self.store) {
            (Some(_), Some(store)) => std::fs::read_to_string(store.path().join("nats-server.log")).unwrap_or_default(),
            _ => String::new(),
        }
    }

    /// The server's process id (`None` for a reused server).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (`SIGKILL`) keeping its store, to restart it with [`Self::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed server again on the same port and store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.launch().await
    }

    /// A client connected to it.
    pub async fn client(&self) -> anyhow::Result<async_nats::Client> {
        Ok(async_nats::connect(&self.url).await?)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Connects to `url` and refuses a server older than 2.10 or without JetStream.
pub async fn check_running(url: &str) -> anyhow::Result<()> {
    check_running_as(url, None).await
}

/// [`check_running`], authenticating as `(user, password)` when given.
pub async fn check_running_as(url: &str, auth: Option<(String, String)>) -> anyhow::Result<()> {
    let options = match auth {
        Some((user, password)) => async_nats::ConnectOptions::with_user_and_password(user, password),
        None => async_nats::ConnectOptions::new(),
    };
    let client = options
        .connection_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let info = client.server_info();
    check_nats_version(&info.version, &format!("the server at {url}"))?;
    if !info.jetstream {
        bail!("the server at {url} runs without JetStream (start it with -js)");
    }
    Ok(())
}

/// An InfluxDB 1.x of our own, or a reused one.
#[derive(Debug)]
pub struct Influx {
    url: String,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
    /// The binary and its configuration, to start it again after [`Influx::stop`].
    command: Option<(PathBuf, PathBuf)>,
    http: reqwest::Client,
}

impl Influx {
    /// Reuses `MODELPERF_TEST_INFLUX_URL` when set, else starts `influxd` on free ports.
    pub async fn start() -> anyhow::Result<Self> {
        let http = modelperf_telemetry::http::client().build()?;
        if let Ok(url) = std::env::var("MODELPERF_TEST_INFLUX_URL") {
            let me = Self { url, child: None, _dir: None, command: None, http };
            me.wait_ready().await?;
            return Ok(me);
        }
        let binary = find_binary("MODELPERF_INFLUXD", "influxd")?;
        let dir = tempfile::tempdir()?;
        let (http_port, rpc_port) = (free_port(), free_port());
        let d = dir.path();
        let config = format!(
            "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc_port}\"\n\
             [meta]\n  dir = \"{m}\"\n[data]\n  dir = \"{data}\"\n  wal-dir = \"{wal}\"\n  query-log-enabled = false\n\
             [http]\n  bind-address = \"127.0.0.1:{http_port}\"\n  log-enabled = false\n\
             [monitor]\n  store-enabled = false\n[continuous_queries]\n  enabled = false\n",
            m = d.join("meta").display(),
            data = d.join("data").display(),
            wal = d.join("wal").display(),
        );
        let config_path = d.join("influxdb.conf");
        std::fs::write(&config_path, config)?;
        let child = spawn_influxd(&binary, &config_path)?;
        let me = Self {
            url: format!("http://127.0.0.1:{http_port}"),
            child: Some(child),
            _dir: Some(dir),
            command: Some((binary, config_path)),
            http,
        };
        me.wait_ready().await?;
        Ok(me)
    }

    /// Kills the server (its data stays); [`Influx::restart`] brings it back on the same port.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped server again with the same data and port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let Some((binary, config)) = self.command.clone() else { bail!("this InfluxDB is not ours to restart") };
        self.stop();
        self.child = Some(spawn_influxd(&binary, &config)?);
        self.wait_ready().await
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let ping = format!("{}/ping", self.url);
        eventually(Duration::from_secs(20), || async {
            let r = self.http.get(&ping).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await
        .with_context(|| format!("InfluxDB did not answer on {ping}"))
    }

    /// The HTTP URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The process id of our own running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Creates a database with a unique name for one test and returns the name.
    pub async fn fresh_database(&self) -> anyhow::Result<String> {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        self.query(&format!("CREATE DATABASE \"{name}\""), None).await?;
        Ok(name)
    }

    /// Runs an InfluxQL statement and returns the JSON response.
    pub async fn query(&self, q: &str, db: Option<&str>) -> anyhow::Result<serde_json::Value> {
        let mut form = vec![("q", q)];
        if let Some(db) = db {
            form.push(("db", db));
        }
        let resp = self.http.post(format!("{}/query", self.url)).form(&form).send().await?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await?;
        if !status.is_success() {
            bail!("InfluxDB query `{q}` failed with {status}: {body}");
        }
        Ok(body)
    }
}

fn spawn_influxd(binary: &Path, config: &Path) -> anyhow::Result<Child> {
    Command::new(binary)
        .arg("-config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

impl Drop for Influx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if start.elapsed() >= deadline {
            bail!("condition not met within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every message a stream holds now (under `filter` when given), in order, through an
/// ephemeral consumer that acknowledges nothing.
pub async fn read_stream(
    js: &async_nats::jetstream::Context,
    stream: &str,
    filter: Option<&str>,
) -> anyhow::Result<Vec<async_nats::jetstream::Message>> {
    read_stream_after(js, stream, filter, 0).await
}

/// [`read_stream`] from the message after sequence `after` on (`0`: all of it).
pub async fn read_stream_after(
    js: &async_nats::jetstream::Context,
    stream: &str,
    filter: Option<&str>,
    after: u64,
) -> anyhow::Result<Vec<async_nats::jetstream::Message>> {
    use async_nats::jetstream::consumer;
    use futures::StreamExt;
    let s = js.get_stream(stream).await.with_context(|| format!("stream {stream}"))?;
    let deliver_policy = if after == 0 {
        consumer::DeliverPolicy::All
    } else {
        consumer::DeliverPolicy::ByStartSequence { start_sequence: after + 1 }
    };
    let consumer = s
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            deliver_policy,
            filter_subject: filter.unwrap_or_default().to_owned(),
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .with_context(|| format!("consumer on {stream}"))?;
    let pending = consumer.cached_info().num_pending as usize;
    let mut out = Vec::with_capacity(pending);
    let mut msgs = consumer.messages().await.with_context(|| format!("read {stream}"))?;
    while out.len() < pending {
        match tokio::time::timeout(Duration::from_secs(10), msgs.next()).await {
            Ok(Some(Ok(m))) => out.push(m),
            Ok(Some(Err(e))) => bail!("reading {stream}: {e}"),
            Ok(None) | Err(_) => bail!("reading {stream}: got {} of {pending} messages", out.len()),
        }
    }
    Ok(out)
}

/// A Prometheus Alertmanager of our own (Debian's `prometheus-alertmanager`, or
/// `MODELPERF_ALERTMANAGER`), on a free loopback port with a temporary data directory, clustering
/// off; killed on drop. The test supplies the configuration (YAML).
#[derive(Debug)]
pub struct Alertmanager {
    url: String,
    child: Option<Child>,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Alertmanager {
    /// Starts Alertmanager with `config` (the contents of its `alertmanager.yml`) and waits
    /// until it is ready.
    pub async fn start(config: &str) -> anyhow::Result<Self> {
        let binary = find_binary("MODELPERF_ALERTMANAGER", "prometheus-alertmanager")
            .or_else(|_| find_binary("MODELPERF_ALERTMANAGER", "alertmanager"))?;
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("alertmanager.yml");
        std::fs::write(&config_path, config)?;
        let port = free_port();
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let me = Self {
            url: format!("http://127.0.0.1:{port}"),
            child: Some(child),
            _dir: dir,
            http: modelperf_telemetry::http::client().build()?,
        };
        let ready = format!("{}/-/ready", me.url);
        eventually(Duration::from_secs(20), || async {
            let r = me.http.get(&ready).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await
        .with_context(|| format!("Alertmanager did not answer on {ready}"))?;
        Ok(me)
    }

    /// The base URL (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `GET /api/v2/alerts`: the alerts Alertmanager holds active (resolved ones are not listed).
    pub async fn alerts(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let resp = self.http.get(format!("{}/api/v2/alerts", self.url)).send().await?;
        let status = resp.status();
        if !status.is_success() {
            bail!("GET /api/v2/alerts answered {status}");
        }
        Ok(resp.json().await?)
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_old_servers_are_refused() {
        assert_eq!(parse_version("nats-server: v2.14.0"), Some((2, 14, 0)));
        assert_eq!(parse_version("2.9.10"), Some((2, 9, 10)));
        assert!(check_nats_version("nats-server: v2.9.10", "x").is_err());
        assert!(check_nats_version("nats-server: v2.10.0", "x").is_ok());
        assert!(check_nats_version("garbage", "x").is_err());
    }

    #[tokio::test]
    async fn a_server_without_jetstream_is_refused() {
        let binary = find_binary("MODELPERF_NATS_SERVER", "nats-server").unwrap();
        let port = free_port();
        let mut child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("nats://127.0.0.1:{port}");
        let err = eventually(Duration::from_secs(10), || async {
            match check_running(&url).await {
                Err(e) if e.to_string().contains("without JetStream") => Some(e),
                _ => None,
            }
        })
        .await;
        let _ = child.kill();
        let _ = child.wait();
        assert!(err.is_ok(), "a server without JetStream was accepted");
    }

    #[tokio::test]
    async fn starts_a_jetstream_server_and_influx() {
        let nats = NatsServer::start().await.unwrap();
        check_running(nats.url()).await.unwrap();
        let influx = Influx::start().await.unwrap();
        let db = influx.fresh_database().await.unwrap();
        let dbs = influx.query("SHOW DATABASES", None).await.unwrap();
        assert!(dbs.to_string().contains(&db));
    }
}
