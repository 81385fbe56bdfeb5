//! The Python training job of `examples/python/rl_consumer.py` against a real NATS server and
//! batches made by the real rl-pipeline from a known workload: it reads every complete task
//! once with its own durable consumer, resumes where it stopped, replays from a sequence or a
//! time, and reports a tampered batch. `deploy/local/prereqs.sh` (run by `make test`) installs
//! its venv.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::{self, Context};
use chrono::{DateTime, Utc};
use modelperf_client::EventBuilder;
use modelperf_rl_pipeline::{App, Config};
use modelperf_schema::Event;
use modelperf_schema::messages::Batch;
use modelperf_testkit::{NatsServer, eventually, project_root, read_stream};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

const PARTITIONS: u32 = 4;
/// Complete tasks of the workload (half `code_edit`, half `summarize`).
const TASKS: usize = 120;

/// Task `i`: a routing decision, a completion and a judgment; without the judgment when
/// `complete` is false, so it never becomes a sample.
fn task(i: usize, complete: bool) -> Vec<Event> {
    let t = format!("task-{i:04}");
    let task_type = if i.is_multiple_of(2) { "code_edit" } else { "summarize" };
    let ts = Utc::now();
    macro_rules! base {
        ($b:expr, $part:expr) => {
            $b.id(format!("{t}-{}", $part)).ts(ts).source("test").task_id(&t).task_type(task_type).build().unwrap()
        };
    }
    // An agent id longer than 31 bytes: MessagePack's str8, which re-packing must reproduce.
    let agent = "coder-agent-with-a-long-name-in-the-fleet";
    let route = base!(
        EventBuilder::routing_decision("ucb", agent, "openai/gpt-4o", 1.0)
            .candidate(agent, "openai/gpt-4o", 0.7, 0.6)
            .candidate(agent, "anthropic/claude-sonnet-4", 0.6, 0.4)
            .probability(0.6),
        "r"
    );
    let done = base!(EventBuilder::task_completed(300.0 + i as f64, !i.is_multiple_of(7)).model("openai/gpt-4o"), "c");
    let judged = base!(EventBuilder::judgment("openai/gpt-4o", "openai/gpt-4o-mini", (i % 10) as f64 / 10.0), "j");
    if complete { vec![route, done, judged] } else { vec![route, done] }
}

async fn publish_events(js: &Context, events: &[Event]) {
    let mut acks = Vec::new();
    for e in events {
        let p = modelperf_bus::partition_of(e.task_id.as_deref().unwrap(), PARTITIONS);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", e.id.as_deref().unwrap());
        let body = modelperf_schema::to_msgpack(e).unwrap();
        let subject = format!("perf.events.{}.{p}", e.kind().as_str());
        acks.push(js.publish_with_headers(subject, headers, body.into()).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
}

/// A batch as stored: sequence, storage time, the batch.
struct Stored {
    seq: u64,
    published: DateTime<Utc>,
    batch: Batch,
}

async fn stored(js: &Context) -> Vec<Stored> {
    read_stream(js, "RL_BATCHES", None)
        .await
        .unwrap()
        .iter()
        .map(|m| {
            let info = m.info().unwrap();
            let nanos = i64::try_from(info.published.unix_timestamp_nanos()).unwrap();
            Stored {
                seq: info.stream_sequence,
                published: DateTime::from_timestamp_nanos(nanos),
                batch: rmp_serde::from_slice(&m.payload).unwrap(),
            }
        })
        .collect()
}

fn tasks_of<'a>(batches: impl IntoIterator<Item = &'a Stored>) -> BTreeSet<String> {
    batches.into_iter().flat_map(|s| s.batch.samples.iter().map(|x| x.task_id.clone())).collect()
}

fn workload() -> BTreeSet<String> {
    (0..TASKS).map(|i| format!("task-{i:04}")).collect()
}

/// Runs the pipeline on the workload (two waves, stored at clearly different times) and stops
/// it; returns the batches it stored.
async fn batches_of_the_workload(server: &NatsServer, js: &Context) -> Vec<Stored> {
    let bus = modelperf_bus::BusConfig { partitions: PARTITIONS, ..Default::default() };
    modelperf_bus::Topology::contract(&bus, 1).ensure(js).await.unwrap();
    let mut config = Config::default();
    config.nats.url = server.url().to_owned();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.bus.partitions = PARTITIONS;
    config.bus.lease_ttl = Duration::from_secs(1);
    config.bus.checkpoint_interval = Duration::from_millis(200);
    config.rl.join_grace = Duration::from_millis(300);
    config.rl.batch_max_age = Duration::from_secs(1);
    config.rl.batch_size = 20;
    let prometheus = modelperf_telemetry::init("rl-examples-test").unwrap().prometheus;
    let app = App::build(config, prometheus).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    for wave in [0..TASKS / 2, TASKS / 2..TASKS] {
        let events: Vec<Event> = wave.clone().flat_map(|i| task(i, true)).collect();
        publish_events(js, &events).await;
        let want: BTreeSet<String> = wave.map(|i| format!("task-{i:04}")).collect();
        eventually(Duration::from_secs(60), || async { tasks_of(&stored(js).await).is_superset(&want).then_some(()) })
            .await
            .expect("the rl-pipeline did not batch every complete task");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    publish_events(js, &(900..905).flat_map(|i| task(i, false)).collect::<Vec<_>>()).await;
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    let batches = stored(js).await;
    assert!(batches.len() >= 6, "at least 3 batches per dataset: {}", batches.len());
    assert_eq!(tasks_of(&batches), workload(), "the pipeline batched exactly the complete tasks");
    batches
}

/// The job's report: exit status and its JSON summary.
struct Report {
    success: bool,
    summary: Value,
    stderr: String,
}

impl Report {
    fn task_ids(&self) -> BTreeSet<String> {
        let ids = self.summary["task_ids"].as_array().unwrap_or_else(|| panic!("no task_ids: {}", self.summary));
        ids.iter().map(|t| t.as_str().unwrap().to_owned()).collect()
    }

    fn batches(&self) -> u64 {
        self.summary["batches"].as_u64().unwrap()
    }
}

/// Runs `examples/python/rl_consumer.py` with the venv's interpreter: (success, stdout, stderr).
async fn run_job(url: &str, args: &[&str]) -> (bool, String, String) {
    let root = project_root();
    let python = root.join(".tools/venv/bin/python");
    assert!(
        python.exists(),
        ".tools/venv is missing: run deploy/local/prereqs.sh (make test does), which installs examples/python/requirements.txt"
    );
    let run = tokio::process::Command::new(&python)
        .arg(root.join("examples/python/rl_consumer.py"))
        .args(["--url", url, "--idle-timeout", "1.5"])
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run).await.expect("rl_consumer.py hung").unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

/// Runs the job, which must print its JSON summary.
async fn rl_consumer(url: &str, args: &[&str]) -> Report {
    let (success, stdout, stderr) = run_job(url, args).await;
    let summary: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("rl_consumer.py {args:?} printed no JSON summary ({e}): {stdout}\nstderr: {stderr}")
    });
    Report { success, summary, stderr }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_job_reads_every_task_once_resumes_and_replays() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream::new(server.client().await.unwrap());
    let batches = batches_of_the_workload(&server, &js).await;
    let url = server.url();

    // Everything, once, every check passing.
    let all = rl_consumer(url, &["--durable", "trainer-a", "--task-ids"]).await;
    assert!(all.success, "{}\n{}", all.summary, all.stderr);
    assert_eq!(all.summary["failures"], serde_json::json!([]), "{}", all.summary);
    assert_eq!(all.batches(), batches.len() as u64);
    assert_eq!(all.summary["samples"], TASKS);
    assert_eq!(all.task_ids(), workload(), "the task set the job received");
    assert_eq!(
        (all.summary["first_seq"].as_u64(), all.summary["last_seq"].as_u64()),
        (Some(batches[0].seq), Some(batches[batches.len() - 1].seq))
    );
    let digest: String = workload().iter().map(|t| format!("{t}\n")).collect();
    assert_eq!(all.summary["task_ids_sha256"], hex::encode(Sha256::digest(digest.as_bytes())));
    // Its own durable consumer, acknowledged to the end.
    let info = js.get_stream("RL_BATCHES").await.unwrap().consumer_info("trainer-a").await.unwrap();
    assert_eq!(info.config.durable_name.as_deref(), Some("trainer-a"));
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0), "{info:?}");

    // The same job again resumes after the last batch it acknowledged: nothing new.
    let again = rl_consumer(url, &["--durable", "trainer-a", "--task-ids"]).await;
    assert!(again.success, "{}", again.stderr);
    assert_eq!((again.batches(), again.task_ids().len()), (0, 0), "{}", again.summary);

    // A replay from a sequence: exactly the tasks of the batches from there on.
    let from = batches[batches.len() / 2].seq;
    let replay = rl_consumer(url, &["--durable", "trainer-b", "--from-seq", &from.to_string(), "--task-ids"]).await;
    assert!(replay.success, "{}", replay.stderr);
    let want = tasks_of(batches.iter().filter(|s| s.seq >= from));
    assert!(!want.is_empty() && want.len() < TASKS);
    assert_eq!(replay.task_ids(), want);
    assert_eq!(replay.summary["first_seq"], from);

    // A replay from a time (re-creating trainer-a): the second wave's batches onwards.
    let second = batches.iter().find(|s| tasks_of([*s]).iter().any(|t| t.as_str() >= "task-0060")).unwrap();
    let since = second.published.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let by_time = rl_consumer(url, &["--durable", "trainer-a", "--since", &since, "--task-ids"]).await;
    assert!(by_time.success, "{}", by_time.stderr);
    let want = tasks_of(batches.iter().filter(|s| s.published >= second.published));
    assert!(!want.is_empty() && want.len() < TASKS);
    assert_eq!(by_time.task_ids(), want);

    // One dataset, two batches at most.
    let two =
        rl_consumer(url, &["--durable", "trainer-c", "--dataset", "summarize", "--max-batches", "2", "--task-ids"])
            .await;
    assert!(two.success, "{}", two.stderr);
    let summarize: Vec<&Stored> = batches.iter().filter(|s| s.batch.dataset == "summarize").collect();
    assert_eq!(two.batches(), 2);
    assert_eq!(two.task_ids(), tasks_of(summarize[..2].iter().copied()));

    // The same name with another dataset is refused rather than silently reading the wrong one.
    let (success, _, stderr) = run_job(url, &["--durable", "trainer-c", "--dataset", "code_edit"]).await;
    assert!(
        !success && stderr.contains("consumer trainer-c reads rl.batches.summarize, not rl.batches.code_edit"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_job_reports_a_tampered_batch() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream::new(server.client().await.unwrap());
    let batches = batches_of_the_workload(&server, &js).await;
    let url = server.url();
    let clean = rl_consumer(url, &["--durable", "trainer-t"]).await;
    assert!(clean.success && clean.batches() == batches.len() as u64, "{}\n{}", clean.summary, clean.stderr);

    // A real batch under new task ids (a correct batch_id), with the old content_hash.
    let mut tampered = batches[0].batch.clone();
    for s in &mut tampered.samples {
        s.task_id.push_str("-tampered");
    }
    tampered.batch_id =
        modelperf_rl_pipeline::batch::batch_id(&tampered.dataset, tampered.samples.iter().map(|s| s.task_id.as_str()));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", tampered.batch_id.as_str());
    let subject = format!("rl.batches.{}", tampered.dataset);
    let body = rmp_serde::to_vec_named(&tampered).unwrap();
    let seq = js.publish_with_headers(subject, headers, body.into()).await.unwrap().await.unwrap().sequence;

    // The job resumes, reads only the tampered batch, and fails naming it.
    let report = rl_consumer(url, &["--durable", "trainer-t"]).await;
    assert!(!report.success, "a tampered batch must fail the job: {}", report.summary);
    assert_eq!(report.batches(), 1, "{}", report.summary);
    let failures = report.summary["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "only the content hash is wrong (re-packing agrees with the bytes): {failures:?}");
    let f = &failures[0];
    assert_eq!((f["check"].as_str(), f["seq"].as_u64()), (Some("content_hash"), Some(seq)), "{f}");
    assert_eq!(f["batch_id"], tampered.batch_id.as_str());
    assert!(f["detail"].as_str().unwrap().contains(&tampered.content_hash), "{f}");
    assert!(report.stderr.contains(&format!("seq {seq}: batch {}", tampered.batch_id)), "{}", report.stderr);
}
