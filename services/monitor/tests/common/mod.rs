//! What the monitor's tests share: a real NATS server with the contract's topology, the monitor
//! in-process or as its binary, windows fed to `perf.metrics.<window>`, and a local HTTP
//! receiver that records every request (standing in for Slack, PagerDuty, webhooks and
//! Alertmanager's own webhook), which can be taken down and brought back on the same port.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test binary uses a part

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, Context};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use chrono::{DateTime, TimeDelta, Utc};
use modelperf_monitor::{App, Config, Rules};
use modelperf_schema::messages::{Alert, WindowMetrics};
use modelperf_testkit::{NatsServer, read_stream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One rule on a 1 s window: p95 latency above 1 000 ms for 2 s, resolved after 1 s clear.
pub const LATENCY_RULE: &str = r#"
[[rules]]
name = "LatencyHigh"
type = "threshold"
metric = "latency_p95_ms"
value = 1000
window = "1s"
for = "2s"
keep_firing_for = "1s"
severity = "critical"
by = ["provider", "model"]
labels = { team = "ml" }
annotations = { summary = "p95 of {{model}} is {{value}} ms", runbook_url = "https://runbooks.example/latency" }
"#;

pub struct Stack {
    pub nats: NatsServer,
    pub js: Context,
}

impl Stack {
    pub async fn start() -> Stack {
        let nats = NatsServer::start().await.unwrap();
        let js = jetstream::new(nats.client().await.unwrap());
        modelperf_bus::Topology::contract(&modelperf_bus::BusConfig::default(), 1).ensure(&js).await.unwrap();
        Stack { nats, js }
    }

    /// The notified transitions (firing, resolved) published on `perf.alerts.<state>`, in order.
    pub async fn transitions(&self) -> Vec<Alert> {
        self.journal().await.into_iter().filter(|a| a.state.is_notified()).collect()
    }

    /// Every transition published on `perf.alerts.<state>` (pending and inactive too), in order.
    pub async fn journal(&self) -> Vec<Alert> {
        read_stream(&self.js, "PERF_ALERTS", None)
            .await
            .unwrap()
            .iter()
            .map(|m| modelperf_schema::from_msgpack(&m.payload).unwrap())
            .collect()
    }

    /// Messages still in the outbox (not yet acknowledged by a delivery).
    pub async fn outbox_len(&self) -> u64 {
        self.js.get_stream("PERF_OUTBOX").await.unwrap().info().await.unwrap().state.messages
    }
}

/// A configuration with short intervals for tests.
pub fn config(nats: &str) -> Config {
    let mut c = Config::default();
    c.nats.url = nats.to_owned();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.bus.lease_ttl = Duration::from_secs(2);
    c.bus.ack_wait = Duration::from_secs(2);
    c.monitor.eval_interval = Duration::from_millis(200);
    c.monitor.resend_interval = Duration::from_secs(1);
    c.monitor.delivery.base_backoff = Duration::from_millis(200);
    c.monitor.delivery.max_backoff = Duration::from_secs(2);
    c.monitor.delivery.timeout = Duration::from_secs(2);
    c
}

/// The monitor running in this process.
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<anyhow::Result<()>>,
    pub http: SocketAddr,
    pub instance: String,
}

impl Running {
    pub async fn start(config: Config, rules: &str) -> Running {
        let prometheus = modelperf_telemetry::init("monitor-test").unwrap().prometheus;
        let app = App::build(config, Rules::parse(rules).unwrap(), prometheus).await.unwrap();
        let (http, instance) = (app.http_addr(), app.instance().to_owned());
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Running { stop: Some(stop), handle, http, instance }
    }

    /// SIGTERM's path: drain and stop.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.handle).await.unwrap().unwrap();
    }

    /// The process dying: no drain, no lease release.
    pub fn abort(self) {
        self.handle.abort();
    }
}

/// The monitor binary with `env` on top of short test intervals.
pub fn spawn_binary(nats: &str, rules_file: &std::path::Path, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modelperf-monitor"));
    cmd.env("MODELPERF_NATS__URL", nats)
        .env("MODELPERF_HTTP__LISTEN", "127.0.0.1:0")
        .env("MODELPERF_BUS__LEASE_TTL", "2s")
        .env("MODELPERF_BUS__ACK_WAIT", "2s")
        .env("MODELPERF_MONITOR__EVAL_INTERVAL", "200ms")
        .env("MODELPERF_MONITOR__RESEND_INTERVAL", "1s")
        .env("MODELPERF_MONITOR__RULES_FILE", rules_file)
        .env("MODELPERF_MONITOR__DELIVERY__BASE_BACKOFF", "200ms")
        .env("MODELPERF_MONITOR__DELIVERY__MAX_BACKOFF", "1s")
        .env("MODELPERF_LOG", "warn")
        .stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// A window of `len` seconds of `model` starting at `start`, with this p95.
pub fn window(model: &str, start: DateTime<Utc>, len: i64, p95: f64) -> WindowMetrics {
    WindowMetrics {
        window: format!("{len}s"),
        start,
        end: start + TimeDelta::seconds(len),
        dims: BTreeMap::from([
            ("kind".to_owned(), "task_completed".to_owned()),
            ("provider".to_owned(), "openai".to_owned()),
            ("model".to_owned(), model.to_owned()),
            ("task_type".to_owned(), "code_edit".to_owned()),
        ]),
        count: 100,
        weighted_count: 100.0,
        success: 100,
        latency_p95_ms: Some(p95),
        ..WindowMetrics::default()
    }
}

pub async fn publish(js: &Context, windows: &[WindowMetrics]) {
    for m in windows {
        let id = format!("{}:{}:{}:{}", m.window, m.start.timestamp_millis(), m.dims["model"], m.revision);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        let body = modelperf_schema::to_msgpack(m).unwrap();
        js.publish_with_headers(format!("perf.metrics.{}", m.window), headers, body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// The start of the 1 s window that just ended.
pub fn last_second() -> DateTime<Utc> {
    let now = Utc::now().timestamp();
    DateTime::from_timestamp(now - 1, 0).unwrap()
}

/// Publishes one 1 s window per model every second, breaching (`p95` 5 000 ms) while
/// `breach` is set, clear (100 ms) otherwise, as an aggregator would close them.
pub struct Feed {
    pub breach: Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<()>,
}

impl Feed {
    pub fn start(js: &Context, models: &[&str]) -> Feed {
        let breach = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (js, flag) = (js.clone(), breach.clone());
        let models: Vec<String> = models.iter().map(|m| (*m).to_owned()).collect();
        let task = tokio::spawn(async move {
            let mut last = None;
            loop {
                let start = last_second();
                if last != Some(start) {
                    last = Some(start);
                    let p95 = if flag.load(std::sync::atomic::Ordering::SeqCst) { 5_000.0 } else { 100.0 };
                    let ws: Vec<_> = models.iter().map(|m| window(m, start, 1, p95)).collect();
                    publish(&js, &ws).await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Feed { breach, task }
    }

    pub fn clear(&self) {
        self.breach.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

/// A local HTTP receiver: answers 200 to every POST and records it.
pub struct Recorder {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    /// Milliseconds each request waits, after it is recorded, before it is answered.
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
    server: Option<JoinHandle<()>>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut r = Recorder { addr, requests: Arc::default(), delay_ms: Arc::default(), server: None };
        r.serve(listener);
        r
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let requests = self.requests.clone();
        let delay = self.delay_ms.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let (requests, delay) = (requests.clone(), delay.clone());
            async move {
                let headers = headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
                    .collect();
                requests.lock().unwrap().push(Recorded { path: uri.path().to_owned(), headers, body: body.to_vec() });
                let wait = delay.load(std::sync::atomic::Ordering::SeqCst);
                if wait > 0 {
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                StatusCode::OK
            }
        });
        self.server = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops listening: connections are refused until [`Recorder::up`].
    pub async fn down(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
            let _ = s.await;
        }
    }

    /// Listens again on the same port.
    pub async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    /// Requests to `path` so far.
    pub fn requests(&self, path: &str) -> Vec<Recorded> {
        self.requests.lock().unwrap().iter().filter(|r| r.path == path).cloned().collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
        }
    }
}
