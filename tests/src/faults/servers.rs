//! The servers the pipeline runs against, each on free loopback ports with temporary data: the
//! NATS server (the test kit's single server, or a three-node JetStream cluster started here),
//! InfluxDB (the test kit's), Alertmanager that can be taken down and brought back on the same
//! port, and a webhook receiver that records every request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use modelperf_testkit::{NatsServer, eventually, find_binary, free_port};
use tokio::task::JoinHandle;

/// The first of `names` the test kit finds (through `env`, `.tools/bin/`, `PATH`).
fn find(env: &str, names: &[&str]) -> anyhow::Result<PathBuf> {
    names
        .iter()
        .find_map(|name| find_binary(env, name).ok())
        .with_context(|| format!("{} not found: run deploy/local/prereqs.sh", names.join(" or ")))
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// One node of a JetStream cluster on loopback.
#[derive(Debug)]
struct Node {
    name: String,
    client_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Three `nats-server` processes routed to each other, JetStream on each with its own store.
#[derive(Debug)]
pub struct Cluster {
    binary: PathBuf,
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the three nodes and waits until JetStream answers on each (a meta leader exists).
    pub async fn start(logs: &Path) -> anyhow::Result<Cluster> {
        let binary = find("MODELPERF_NATS_SERVER", &["nats-server"])?;
        let dir = tempfile::tempdir()?;
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_list: Vec<String> = routes.iter().map(|p| format!("nats-route://127.0.0.1:{p}")).collect();
        let mut nodes = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let client_port = free_port();
            let store = dir.path().join(&name);
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: \"127.0.0.1:{client_port}\"\n\
                     jetstream {{ store_dir: \"{store}\" }}\n\
                     cluster {{\n  name: faults\n  listen: \"127.0.0.1:{route}\"\n  routes: [{routes}]\n}}\n",
                    store = store.display(),
                    routes = route_list.join(", ")
                ),
            )?;
            let log = logs.join(format!("nats-{name}.log"));
            nodes.push(Node { name, client_port, config, log, child: None });
        }
        let mut cluster = Cluster { binary, nodes, _dir: dir };
        for i in 0..3 {
            cluster.launch(i)?;
        }
        for i in 0..3 {
            cluster.wait_ready(i).await?;
        }
        Ok(cluster)
    }

    fn launch(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&node.config)
            .arg("-l")
            .arg(&node.log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        node.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&self, i: usize) -> anyhow::Result<()> {
        let url = self.node_url(i);
        eventually(Duration::from_secs(30), || async {
            let client = async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(2))
                .connect(url.as_str())
                .await
                .ok()?;
            async_nats::jetstream::new(client).query_account().await.ok()
        })
        .await
        .with_context(|| format!("cluster node {} did not serve JetStream on {url}", self.nodes[i].name))?;
        Ok(())
    }

    fn node_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// Every node's URL, comma-separated (what `MODELPERF_NATS__URL` takes).
    pub fn urls(&self) -> String {
        (0..self.nodes.len()).map(|i| self.node_url(i)).collect::<Vec<_>>().join(",")
    }

    /// The node's name (`n1`..`n3`).
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// Kills node `i` with `SIGKILL`; its store stays.
    pub fn kill(&mut self, i: usize) {
        kill(&mut self.nodes[i].child);
    }

    /// Starts node `i` again on its ports and store and waits until it serves JetStream.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.launch(i)?;
        self.wait_ready(i).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            kill(&mut node.child);
        }
    }
}

/// The NATS the pipeline runs on.
#[derive(Debug)]
pub enum Nats {
    /// One server (the test kit's).
    Single(NatsServer),
    /// Three nodes, streams with three replicas.
    Cluster(Cluster),
}

impl Nats {
    /// What `MODELPERF_NATS__URL` is set to.
    pub fn url(&self) -> String {
        match self {
            Nats::Single(s) => s.url().to_owned(),
            Nats::Cluster(c) => c.urls(),
        }
    }

    /// Stream replicas (`MODELPERF_NATS__REPLICAS`).
    pub fn replicas(&self) -> usize {
        match self {
            Nats::Single(_) => 1,
            Nats::Cluster(_) => 3,
        }
    }

    /// A JetStream context of a client that knows every server.
    pub async fn jetstream(&self) -> anyhow::Result<async_nats::jetstream::Context> {
        let urls: Vec<async_nats::ServerAddr> =
            self.url().split(',').map(str::parse).collect::<Result<_, _>>().context("nats url")?;
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(urls)
            .await
            .context("connecting to nats")?;
        Ok(async_nats::jetstream::new(client))
    }
}

/// Prometheus Alertmanager on a fixed free port, which can be stopped and started again there
/// (the data directory stays).
#[derive(Debug)]
pub struct Alertmanager {
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    http: reqwest::Client,
}

impl Alertmanager {
    /// Starts it with `config` (its YAML) and waits until it is ready.
    pub async fn start(config: &str) -> anyhow::Result<Alertmanager> {
        let binary = find("MODELPERF_ALERTMANAGER", &["prometheus-alertmanager", "alertmanager"])?;
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("alertmanager.yml"), config)?;
        let http = modelperf_telemetry::http::client().build()?;
        let mut am = Alertmanager { binary, port: free_port(), dir, child: None, http };
        am.up().await?;
        Ok(am)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills it (`SIGKILL`): connections are refused until [`Alertmanager::up`].
    pub fn down(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it (again) on the same port and data and waits until it is ready.
    pub async fn up(&mut self) -> anyhow::Result<()> {
        self.down();
        let d = self.dir.path();
        let child = Command::new(&self.binary)
            .arg(format!("--config.file={}", d.join("alertmanager.yml").display()))
            .arg(format!("--storage.path={}", d.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .arg("--cluster.listen-address=")
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        let ready = format!("{}/-/ready", self.url());
        eventually(Duration::from_secs(20), || async {
            let r = self.http.get(&ready).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await
        .with_context(|| format!("Alertmanager did not answer on {ready}"))
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        self.down();
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The request path.
    pub path: String,
    /// Headers, names lowercase.
    pub headers: BTreeMap<String, String>,
    /// The body.
    pub body: Vec<u8>,
}

/// A local HTTP receiver: answers 200 to every request and records it. The monitor's webhook
/// route posts to `/hook`, Alertmanager's webhook to `/am`.
#[derive(Debug)]
pub struct Recorder {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    server: JoinHandle<()>,
}

impl Recorder {
    /// Listens on a free loopback port.
    pub async fn start() -> anyhow::Result<Recorder> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let seen = requests.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            async move {
                let headers = headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
                    .collect();
                let r = Recorded { path: uri.path().to_owned(), headers, body: body.to_vec() };
                if let Ok(mut all) = seen.lock() {
                    all.push(r);
                }
                StatusCode::OK
            }
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Recorder { addr, requests, server })
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The requests to `path` so far.
    pub fn requests(&self, path: &str) -> Vec<Recorded> {
        self.requests.lock().map(|all| all.iter().filter(|r| r.path == path).cloned().collect()).unwrap_or_default()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.server.abort();
    }
}
