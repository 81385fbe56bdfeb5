//! The example server configuration `deploy/nats/nats-server.conf`, unmodified, on a real
//! nats-server (passwords come from its environment, as in a deployment):
//!
//! - every service runs its real workload with its own user — collector, aggregator (writing a
//!   real InfluxDB), rl-pipeline, analyzer and monitor in this process, fed by a producer through
//!   `perf.raw.>` — and the server logs no permission violation while they do;
//! - a producer cannot publish to `perf.events.>`, read `rl.batches.>` or snoop other inboxes;
//! - an RL job reads every batch through its own durable consumer, but cannot publish to any
//!   `perf.>` or `rl.>` subject;
//! - only an operator can read `PERF_DLQ`.
//!
//! Every negative check waits for the server's own permission error on that client (not a
//! timeout, which could have another cause).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use chrono::Utc;
use futures::StreamExt;
use modelperf_client::{EventBuilder, Publisher};
use modelperf_schema::messages::Batch;
use modelperf_testkit::{Influx, NatsServer, eventually, project_root, read_stream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const PARTITIONS: u32 = 2;
const TASKS: usize = 40;

/// (user, the suffix of its password's environment variable in the configuration).
const USERS: [(&str, &str); 8] = [
    ("collector", "COLLECTOR"),
    ("aggregator", "AGGREGATOR"),
    ("analyzer", "ANALYZER"),
    ("monitor", "MONITOR"),
    ("rl-pipeline", "RL_PIPELINE"),
    ("producer", "PRODUCER"),
    ("rl-job", "RL_JOB"),
    ("operator", "OPERATOR"),
];

fn password(user: &str) -> String {
    format!("test-password-of-{user}")
}

async fn server() -> NatsServer {
    let env: Vec<(String, String)> =
        USERS.iter().map(|(u, var)| (format!("MODELPERF_NATS_PASSWORD_{var}"), password(u))).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let conf = project_root().join("deploy/nats/nats-server.conf");
    NatsServer::spawn_with_config(&conf, &env, "operator", &password("operator")).await.unwrap()
}

fn nats(url: &str, user: &str) -> modelperf_bus::NatsConfig {
    let mut c = modelperf_collector::Config::default().nats;
    c.url = url.to_owned();
    c.user = Some(user.to_owned());
    c.password = Some(password(user));
    c
}

/// A client of `user` that records the errors the server sends it.
struct Client {
    client: async_nats::Client,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Client {
    async fn connect(url: &str, user: &str, inbox_prefix: Option<&str>) -> Client {
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        let mut opts = async_nats::ConnectOptions::with_user_and_password(user.to_owned(), password(user))
            .event_callback(move |event| {
                let sink = sink.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        sink.lock().unwrap().push(e.to_string());
                    }
                }
            });
        if let Some(prefix) = inbox_prefix {
            opts = opts.custom_inbox_prefix(prefix);
        }
        Client { client: opts.connect(url).await.unwrap(), errors }
    }

    /// Waits for the server's `Permissions Violation for <op> to "<subject>"` on this client.
    async fn denied(&self, op: &str, subject: &str) {
        let want = format!("permissions violation for {op} to \"{subject}\"").to_lowercase();
        let seen = eventually(Duration::from_secs(5), || async {
            self.errors.lock().unwrap().iter().any(|e| e.to_lowercase().contains(&want)).then_some(())
        })
        .await;
        if seen.is_err() {
            panic!("no permission error `{want}`; the server sent: {:?}", self.errors.lock().unwrap());
        }
    }

    async fn publish_denied(&self, subject: &str) {
        self.client.publish(subject.to_owned(), "{}".into()).await.unwrap();
        self.client.flush().await.unwrap();
        self.denied("publish", subject).await;
    }

    async fn subscribe_denied(&self, subject: &str) {
        let _sub = self.client.subscribe(subject.to_owned()).await.unwrap();
        self.client.flush().await.unwrap();
        self.denied("subscription", subject).await;
    }

    /// Reading `PERF_DLQ` in every way JetStream offers is refused.
    async fn dlq_denied(&self) {
        for api in [
            "$JS.API.CONSUMER.CREATE.PERF_DLQ",
            "$JS.API.CONSUMER.CREATE.PERF_DLQ.snoop",
            "$JS.API.CONSUMER.CREATE.PERF_DLQ.snoop.perf.dlq.collector",
            "$JS.API.DIRECT.GET.PERF_DLQ",
            "$JS.API.DIRECT.GET.PERF_DLQ.perf.dlq.collector",
            "$JS.API.STREAM.MSG.GET.PERF_DLQ",
        ] {
            self.publish_denied(api).await;
        }
        self.subscribe_denied("perf.dlq.>").await;
    }
}

/// A service of the pipeline running in this process.
struct Service {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    fn spawn<F>(run: impl FnOnce(oneshot::Receiver<()>) -> F) -> Service
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        Service { stop, handle: tokio::spawn(run(stopped)) }
    }

    /// The drain of SIGTERM; any error (a refused checkpoint, ack or publish among them) fails.
    async fn stop(self, what: &str) {
        let _ = self.stop.send(());
        if let Err(e) = self.handle.await.unwrap() {
            panic!("{what} stopped with an error: {e:#}");
        }
    }
}

async fn collector(url: &str) -> Service {
    let mut c = modelperf_collector::Config { nats: nats(url, "collector"), ..Default::default() };
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.bus.partitions = PARTITIONS;
    c.collector.privacy_key = Some("test-privacy-key".into());
    c.collector.prices_file = project_root().join("deploy/prices.toml");
    let collector = modelperf_collector::collector(&c).unwrap();
    let app = modelperf_collector::App::build(
        c,
        collector,
        modelperf_telemetry::init("permissions-test").unwrap().prometheus,
    )
    .await
    .unwrap();
    Service::spawn(|stopped| async move {
        app.run_until_stopped(async move {
            let _ = stopped.await;
        })
        .await
        .map(drop)
    })
}

async fn aggregator(url: &str, influx: &str, db: &str) -> Service {
    let mut c = modelperf_aggregator::Config { nats: nats(url, "aggregator"), ..Default::default() };
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.bus.partitions = PARTITIONS;
    c.bus.lease_ttl = Duration::from_secs(2);
    c.bus.checkpoint_interval = Duration::from_millis(200);
    c.aggregator.windows = vec!["2s".parse().unwrap()];
    c.aggregator.allowed_lateness = Duration::from_secs(1);
    c.influx.url = influx.to_owned();
    c.influx.database = db.to_owned();
    let rp = modelperf_influx::RetentionPolicy { duration: Duration::from_secs(3_600), default: false };
    c.influx.retention_policies.insert("2s".into(), rp);
    let app = modelperf_aggregator::App::build(c, modelperf_telemetry::init("permissions-test").unwrap().prometheus)
        .await
        .unwrap();
    Service::spawn(|stopped| {
        app.run_until_stopped(async move {
            let _ = stopped.await;
        })
    })
}

async fn rl_pipeline(url: &str) -> Service {
    let mut c = modelperf_rl_pipeline::Config { nats: nats(url, "rl-pipeline"), ..Default::default() };
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.bus.partitions = PARTITIONS;
    c.bus.lease_ttl = Duration::from_secs(2);
    c.bus.checkpoint_interval = Duration::from_millis(200);
    c.rl.join_grace = Duration::from_millis(500);
    c.rl.batch_max_age = Duration::from_secs(1);
    c.rl.batch_size = 16;
    let app = modelperf_rl_pipeline::App::build(c, modelperf_telemetry::init("permissions-test").unwrap().prometheus)
        .await
        .unwrap();
    Service::spawn(|stopped| {
        app.run_until_stopped(async move {
            let _ = stopped.await;
        })
    })
}

async fn analyzer(url: &str) -> Service {
    let mut c = modelperf_analyzer::Config { nats: nats(url, "analyzer"), ..Default::default() };
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.bus.lease_ttl = Duration::from_secs(2);
    c.analyzer.windows = vec!["2s".parse().unwrap()];
    let app = modelperf_analyzer::App::build(c, modelperf_telemetry::init("permissions-test").unwrap().prometheus)
        .await
        .unwrap();
    Service::spawn(|stopped| {
        app.run_until_stopped(async move {
            let _ = stopped.await;
        })
    })
}

async fn monitor(url: &str) -> Service {
    let mut c = modelperf_monitor::Config { nats: nats(url, "monitor"), ..Default::default() };
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.bus.lease_ttl = Duration::from_secs(2);
    c.monitor.eval_interval = Duration::from_millis(200);
    let rules = std::fs::read_to_string(project_root().join("deploy/alerts.toml")).unwrap();
    let rules = modelperf_monitor::Rules::parse(&rules).unwrap();
    let app =
        modelperf_monitor::App::build(c, rules, modelperf_telemetry::init("permissions-test").unwrap().prometheus)
            .await
            .unwrap();
    Service::spawn(|stopped| {
        app.run_until_stopped(async move {
            let _ = stopped.await;
        })
    })
}

fn violations(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.to_lowercase().contains("violation")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_user_can_do_its_work_and_nothing_else() {
    let server = server().await;
    let url = server.url().to_owned();
    let operator = jetstream::new(Client::connect(&url, "operator", None).await.client);
    let influx = Influx::start().await.unwrap();
    let db = influx.fresh_database().await.unwrap();

    // Each service ensures its own part of the topology with its own user.
    let collector = collector(&url).await;
    let aggregator = aggregator(&url, influx.url(), &db).await;
    let rl = rl_pipeline(&url).await;
    let analyzer = analyzer(&url).await;
    let monitor = monitor(&url).await;

    // The producer: JetStream publishes with acks on its own inbox prefix.
    let producer = Client::connect(&url, "producer", Some("_INBOX_producer")).await;
    let publisher = Publisher::new(producer.client.clone(), "test.producer");
    let tag = format!("{:x}", Utc::now().timestamp_micros());
    let mut tasks = BTreeSet::new();
    for i in 0..TASKS {
        let task = format!("{tag}-task-{i}");
        let model = ["openai/gpt-4o", "anthropic/claude-sonnet-4"][i % 2];
        let done = EventBuilder::task_completed(100.0 + i as f64, i % 5 != 0)
            .task_id(&task)
            .model(model)
            .task_type("code_edit")
            .tenant("acme")
            .source("test.producer")
            .tokens(1_000, 200)
            .build()
            .unwrap();
        let judged = EventBuilder::judgment(model, "openai/gpt-4o-mini", (i % 10) as f64 / 10.0)
            .task_id(&task)
            .task_type("code_edit")
            .source("test.judge")
            .build()
            .unwrap();
        publisher.publish(&done).await.unwrap();
        publisher.publish(&judged).await.unwrap();
        tasks.insert(task);
    }
    // One bad event, for the collector's dead-letter path.
    let ack = jetstream::new(producer.client.clone())
        .publish("perf.raw.task_completed", r#"{"v":1,"kind":"task_completed"}"#.into())
        .await
        .unwrap();
    ack.await.unwrap();

    // collector: every event cleaned onto PERF_EVENTS, the bad one dead-lettered.
    eventually(Duration::from_secs(60), || async {
        let n = read_stream(&operator, "PERF_EVENTS", None).await.ok()?.len();
        (n == 2 * TASKS).then_some(())
    })
    .await
    .expect("the collector did not clean every event");
    let dlq = eventually(Duration::from_secs(30), || async {
        let m = read_stream(&operator, "PERF_DLQ", None).await.ok()?;
        (!m.is_empty()).then_some(m)
    })
    .await
    .expect("the collector dead-lettered nothing");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].subject.as_str(), "perf.dlq.collector");
    assert!(dlq[0].headers.as_ref().and_then(|h| h.get("Modelperf-Error")).is_some());

    // aggregator: the windows reach InfluxDB and PERF_METRICS.
    eventually(Duration::from_secs(60), || async {
        let r = influx
            .query("SELECT sum(\"count\") FROM \"2s\".\"model_perf\" WHERE \"kind\" = 'task_completed'", Some(&db))
            .await
            .ok()?;
        let n = r.pointer("/results/0/series/0/values/0/1").and_then(serde_json::Value::as_u64)?;
        (n == TASKS as u64).then_some(())
    })
    .await
    .expect("the aggregator did not write every completion to InfluxDB");
    // The finaliser writes InfluxDB first and announces the window afterwards.
    eventually(Duration::from_secs(30), || async {
        let metrics = read_stream(&operator, "PERF_METRICS", None).await.ok()?;
        (!metrics.is_empty()).then_some(())
    })
    .await
    .expect("no window on PERF_METRICS");

    // rl-pipeline: every task in a batch.
    eventually(Duration::from_secs(60), || async {
        let batches = read_stream(&operator, "RL_BATCHES", None).await.ok()?;
        let seen: BTreeSet<String> = batches
            .iter()
            .flat_map(|m| rmp_serde::from_slice::<Batch>(&m.payload).unwrap().samples)
            .map(|s| s.task_id)
            .collect();
        (seen == tasks).then_some(())
    })
    .await
    .expect("the rl-pipeline did not batch every task");

    // analyzer and monitor: their durable consumers have read and acknowledged every window.
    for durable in ["analyzer", "monitor-metrics"] {
        eventually(Duration::from_secs(60), || async {
            let mut stream = operator.get_stream("PERF_METRICS").await.ok()?;
            let total = stream.info().await.ok()?.state.messages;
            let info = stream.consumer_info(durable).await.ok()?;
            (info.ack_floor.stream_sequence >= total && info.num_pending == 0).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{durable} did not acknowledge every window: {e}"));
    }
    // ... and hold their leases (taken, renewed: KV writes with their users).
    let leases = operator.get_key_value(modelperf_bus::buckets::LEASES).await.unwrap();
    for key in ["aggregator.final", "rl.p0", "analyzer", "monitor"] {
        eventually(Duration::from_secs(20), || async { leases.get(key).await.ok().flatten() })
            .await
            .unwrap_or_else(|e| panic!("lease {key} never taken: {e}"));
    }
    // The monitor sees every service's heartbeat through its subscription on perf.health.>.
    // The server logged no violation while all of this ran.
    assert_eq!(violations(&server.log()), Vec::<&str>::new(), "a service needed a permission it lacks");

    // A producer publishes only to perf.raw.>, and reads nothing but its own replies.
    producer.publish_denied("perf.events.task_completed.0").await;
    producer.publish_denied("rl.batches.code_edit").await;
    producer.subscribe_denied("rl.batches.>").await;
    producer.subscribe_denied("_INBOX.>").await;
    producer.publish_denied("$JS.API.CONSUMER.CREATE.RL_BATCHES.snoop").await;
    producer.publish_denied("$JS.API.DIRECT.GET.RL_BATCHES").await;
    producer.dlq_denied().await;

    // An RL job: its own durable consumer on RL_BATCHES reads every batch.
    let job = Client::connect(&url, "rl-job", Some("_INBOX_rljob")).await;
    let js = jetstream::new(job.client.clone());
    let stream = js.get_stream("RL_BATCHES").await.unwrap();
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("rljob-train".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let pending = consumer.cached_info().num_pending;
    assert!(pending > 0);
    let mut read = BTreeSet::new();
    let mut messages = consumer.fetch().max_messages(pending as usize).messages().await.unwrap();
    let mut got = 0;
    while got < pending {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next()).await.unwrap().unwrap().unwrap();
        let batch: Batch = rmp_serde::from_slice(&m.payload).unwrap();
        read.extend(batch.samples.into_iter().map(|s| s.task_id));
        m.double_ack().await.unwrap();
        got += 1;
    }
    assert_eq!(read, tasks, "the job read other tasks than the pipeline batched");
    let mut consumer = consumer;
    let info = consumer.info().await.unwrap();
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0), "every batch acknowledged");
    // ... and publishes nowhere under perf.> or rl.>, reads no event.
    for subject in ["perf.raw.task_completed", "perf.events.task_completed.0", "rl.batches.code_edit", "perf.dlq.rl"] {
        job.publish_denied(subject).await;
    }
    job.subscribe_denied("perf.events.>").await;
    job.publish_denied("$JS.API.CONSUMER.CREATE.PERF_EVENTS.snoop").await;
    job.publish_denied("$JS.API.STREAM.CREATE.RL_BATCHES").await;
    job.dlq_denied().await;

    // No service reads the DLQ either (they only write to it; the monitor counts dead letters
    // from the heartbeats).
    for (user, _) in &USERS[..5] {
        Client::connect(&url, user, None).await.dlq_denied().await;
    }

    monitor.stop("monitor").await;
    analyzer.stop("analyzer").await;
    rl.stop("rl-pipeline").await;
    aggregator.stop("aggregator").await;
    collector.stop("collector").await;
    // Draining (final checkpoints, acks, lease releases) needed nothing more either.
    let log = server.log();
    let by_services: Vec<&str> = violations(&log)
        .into_iter()
        .filter(|l| USERS[..5].iter().any(|(u, _)| l.contains(&format!("User \"{u}\""))))
        .filter(|l| !l.contains("PERF_DLQ") && !l.contains("perf.dlq.>"))
        .collect();
    assert_eq!(by_services, Vec::<&str>::new());
}
