//! `modelperf batches` against a real NATS server and batches made by the real rl-pipeline from a
//! known workload: the datasets' counts, the tail (and following it), exports of a sequence range
//! and of a time span (the exported task set is asserted), and tampered batches reported by name.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, Context};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use modelperf_client::EventBuilder;
use modelperf_rl_pipeline::{App, Config};
use modelperf_schema::Event;
use modelperf_schema::messages::Batch;
use modelperf_testkit::{NatsServer, eventually, read_stream};
use serde_json::Value;
use tokio::io::AsyncBufReadExt as _;
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
    let route = EventBuilder::routing_decision("ucb", "coder", "openai/gpt-4o", 1.0)
        .candidate("coder", "openai/gpt-4o", 0.7, 0.6)
        .candidate("coder", "anthropic/claude-sonnet-4", 0.6, 0.4)
        .probability(0.6)
        .id(format!("{t}-r"))
        .ts(ts)
        .source("test")
        .task_id(&t)
        .task_type(task_type)
        .build()
        .unwrap();
    let done = EventBuilder::task_completed(300.0 + i as f64, !i.is_multiple_of(7))
        .model("openai/gpt-4o")
        .id(format!("{t}-c"))
        .ts(ts)
        .source("test")
        .task_id(&t)
        .task_type(task_type)
        .build()
        .unwrap();
    let judged = EventBuilder::judgment("openai/gpt-4o", "openai/gpt-4o-mini", (i % 10) as f64 / 10.0)
        .id(format!("{t}-j"))
        .ts(ts)
        .source("test")
        .task_id(&t)
        .task_type(task_type)
        .build()
        .unwrap();
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

/// A server holding the batches the rl-pipeline made of `TASKS` complete tasks (and a few
/// incomplete ones); the pipeline is stopped, so the stream no longer changes.
struct Fixture {
    server: NatsServer,
    js: Context,
    batches: Vec<Stored>,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Fixture {
        let server = NatsServer::start().await.unwrap();
        let js = jetstream::new(server.client().await.unwrap());
        let bus = modelperf_bus::BusConfig { partitions: PARTITIONS, ..Default::default() };
        modelperf_bus::Topology::contract(&bus, 1).ensure(&js).await.unwrap();
        let mut config = Config::default();
        config.nats.url = server.url().to_owned();
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        config.bus.partitions = PARTITIONS;
        config.bus.lease_ttl = Duration::from_secs(1);
        config.bus.checkpoint_interval = Duration::from_millis(200);
        config.rl.join_grace = Duration::from_millis(300);
        config.rl.batch_max_age = Duration::from_secs(1);
        config.rl.batch_size = 20;
        let prometheus = modelperf_telemetry::init("batches-test").unwrap().prometheus;
        let app = App::build(config, prometheus).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        // Two waves, so that batches are stored at clearly different times.
        for wave in [0..TASKS / 2, TASKS / 2..TASKS] {
            let events: Vec<Event> = wave.clone().flat_map(|i| task(i, true)).collect();
            publish_events(&js, &events).await;
            let want: BTreeSet<String> = wave.map(|i| format!("task-{i:04}")).collect();
            eventually(Duration::from_secs(60), || async {
                tasks_of(&stored(&js).await).is_superset(&want).then_some(())
            })
            .await
            .expect("the rl-pipeline did not batch every complete task");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        publish_events(&js, &(900..905).flat_map(|i| task(i, false)).collect::<Vec<_>>()).await;
        let _ = stop.send(());
        running.await.unwrap().unwrap();
        let batches = stored(&js).await;
        assert!(batches.len() >= 6, "at least 3 batches per dataset: {}", batches.len());
        let all = tasks_of(&batches);
        assert_eq!(all, workload(), "the pipeline batched exactly the complete tasks");
        Fixture { server, js, batches, dir: tempfile::tempdir().unwrap() }
    }

    fn url(&self) -> &str {
        self.server.url()
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn workload() -> BTreeSet<String> {
    (0..TASKS).map(|i| format!("task-{i:04}")).collect()
}

/// Runs the `modelperf` binary: (success, stdout, stderr).
async fn modelperf(url: &str, args: &[&str]) -> (bool, String, String) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_modelperf"))
        .args(args)
        .env("MODELPERF_NATS__URL", url)
        .env_remove("MODELPERF_CONFIG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run).await.expect("modelperf hung").unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

/// Runs `modelperf`, which must succeed; returns stdout.
async fn ok(url: &str, args: &[&str]) -> String {
    let (success, stdout, stderr) = modelperf(url, args).await;
    assert!(success, "modelperf {args:?} failed: {stderr}\nstdout: {stdout}");
    stdout
}

/// The lines of an export: each a sample with `batch_id`, `dataset`, `seq`.
fn read_export(path: &str) -> Vec<serde_json::Map<String, Value>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| match serde_json::from_str(l).unwrap() {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        })
        .collect()
}

fn task_ids(lines: &[serde_json::Map<String, Value>]) -> Vec<String> {
    lines.iter().map(|l| l["task_id"].as_str().unwrap().to_owned()).collect()
}

/// Every consumer on RL_BATCHES is ephemeral: the command leaves no durable state behind.
async fn no_durable_consumers(js: &Context) {
    let stream = js.get_stream("RL_BATCHES").await.unwrap();
    let infos: Vec<_> = stream.consumers().try_collect().await.unwrap();
    let durable: Vec<_> = infos.iter().filter_map(|i| i.config.durable_name.clone()).collect();
    assert!(durable.is_empty(), "durable consumers left on RL_BATCHES: {durable:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_tail_and_export_agree_with_the_stream() {
    let f = Fixture::new().await;

    // list: per dataset, batches, samples, first and last sequence.
    let out = ok(f.url(), &["batches"]).await;
    assert_eq!(out, ok(f.url(), &["batches", "list"]).await, "`batches` is `batches list`");
    for dataset in ["code_edit", "summarize"] {
        let mine: Vec<&Stored> = f.batches.iter().filter(|s| s.batch.dataset == dataset).collect();
        let samples: usize = mine.iter().map(|s| s.batch.samples.len()).sum();
        let (first, last) = (mine[0], mine[mine.len() - 1]);
        let row = out.lines().find(|l| l.starts_with(dataset)).unwrap_or_else(|| panic!("no {dataset} row: {out}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cols,
            [
                dataset,
                &mine.len().to_string(),
                &samples.to_string(),
                &first.seq.to_string(),
                &last.seq.to_string(),
                &modelperf_schema::format_ts(&first.published),
                &modelperf_schema::format_ts(&last.published),
            ],
            "{out}"
        );
    }
    assert!(out.ends_with(&format!("2 datasets, {} batches, {TASKS} samples\n", f.batches.len())), "{out}");
    let out = ok(f.url(), &["batches", "list", "--dataset", "code_edit"]).await;
    assert!(out.contains("code_edit") && !out.contains("summarize"), "{out}");
    let out = ok(f.url(), &["batches", "list", "--dataset", "nothing_here"]).await;
    assert_eq!(out, "RL_BATCHES holds no batches of dataset nothing_here\n");

    // tail: the last N, oldest first, with their ids and sizes.
    let rows = |out: &str| -> Vec<(u64, String, usize)> {
        out.lines()
            .skip(1)
            .map(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                (c[0].parse().unwrap(), c[3].to_owned(), c[4].parse().unwrap())
            })
            .collect()
    };
    let want = |batches: Vec<&Stored>, n: usize| -> Vec<(u64, String, usize)> {
        batches[batches.len() - n..].iter().map(|s| (s.seq, s.batch.batch_id.clone(), s.batch.samples.len())).collect()
    };
    let out = ok(f.url(), &["batches", "tail", "-n", "3"]).await;
    assert!(out.starts_with("     seq  created_at"), "{out}");
    assert_eq!(rows(&out), want(f.batches.iter().collect(), 3), "{out}");
    let out = ok(f.url(), &["batches", "tail", "--dataset", "summarize", "-n", "2"]).await;
    assert_eq!(rows(&out), want(f.batches.iter().filter(|s| s.batch.dataset == "summarize").collect(), 2), "{out}");
    let out = ok(f.url(), &["batches", "tail", "-n", "1000"]).await;
    assert_eq!(rows(&out).len(), f.batches.len(), "{out}");

    // export everything: every complete task once, each line naming its batch and sequence.
    let all = f.path("all.jsonl");
    let out = ok(f.url(), &["batches", "export", "--from-seq", "1", "-o", &all]).await;
    let lines = read_export(&all);
    let ids = task_ids(&lines);
    assert_eq!(ids.len(), TASKS, "one line per sample");
    assert_eq!(ids.iter().cloned().collect::<BTreeSet<_>>(), workload(), "the exported task set");
    let by_seq: BTreeMap<u64, &Stored> = f.batches.iter().map(|s| (s.seq, s)).collect();
    for l in &lines {
        let s = by_seq[&l["seq"].as_u64().unwrap()];
        assert_eq!(l["batch_id"], s.batch.batch_id.as_str());
        assert_eq!(l["dataset"], s.batch.dataset.as_str());
        assert!(s.batch.samples.iter().any(|x| x.task_id == l["task_id"].as_str().unwrap()), "{l:?}");
        assert!(l["reward"].is_f64() && l["action"]["chosen"]["name"] == "gpt-4o", "{l:?}");
    }
    let (first, last) = (f.batches[0].seq, f.batches[f.batches.len() - 1].seq);
    assert!(
        out.starts_with(&format!(
            "exported {TASKS} samples ({TASKS} distinct tasks) of {} batches, seq {first}..{last}, verified",
            f.batches.len()
        )),
        "{out}"
    );
    assert!(out.trim_end().ends_with(&format!("to {all}")), "{out}");
    assert!(!Path::new(&format!("{all}.partial")).exists());

    // A sequence range, and one dataset of it.
    let (from, to) = (f.batches[1].seq, f.batches[3].seq);
    let range = f.path("range.jsonl");
    ok(f.url(), &["batches", "export", "--from-seq", &from.to_string(), "--to-seq", &to.to_string(), "-o", &range])
        .await;
    let want_range = tasks_of(f.batches.iter().filter(|s| (from..=to).contains(&s.seq)));
    assert_eq!(task_ids(&read_export(&range)).into_iter().collect::<BTreeSet<_>>(), want_range);
    let one = f.path("one.jsonl");
    ok(
        f.url(),
        &["batches", "export", "--dataset", "code_edit", "--from-seq", &from.to_string(), "--to-seq", &to.to_string()]
            .into_iter()
            .chain(["-o", &one])
            .collect::<Vec<_>>(),
    )
    .await;
    let want_one =
        tasks_of(f.batches.iter().filter(|s| (from..=to).contains(&s.seq) && s.batch.dataset == "code_edit"));
    assert_eq!(task_ids(&read_export(&one)).into_iter().collect::<BTreeSet<_>>(), want_one);

    // A time span: from the first batch of the second wave, up to a time before the last batch.
    // (The second wave was published once the first was batched: its batches come after.)
    let second = f.batches.iter().position(|s| tasks_of([s]).iter().any(|t| t.as_str() >= "task-0060")).unwrap();
    let since = modelperf_schema::format_ts(&f.batches[second].published);
    let span = f.path("span.jsonl");
    ok(f.url(), &["batches", "export", "--since", &since, "-o", &span]).await;
    let want_span = tasks_of(f.batches.iter().filter(|s| s.published >= f.batches[second].published));
    assert_eq!(task_ids(&read_export(&span)).into_iter().collect::<BTreeSet<_>>(), want_span);
    assert!(want_span.len() < TASKS && !want_span.is_empty(), "the span is a real subset");
    let last_at = f.batches[f.batches.len() - 1].published;
    let until = modelperf_schema::format_ts(&last_at);
    ok(f.url(), &["batches", "export", "--since", &since, "--until", &until, "-o", &span]).await;
    let want_until =
        tasks_of(f.batches.iter().filter(|s| s.published >= f.batches[second].published && s.published < last_at));
    assert_eq!(task_ids(&read_export(&span)).into_iter().collect::<BTreeSet<_>>(), want_until);
    // A duration ago works too: everything was stored within the last hour.
    ok(f.url(), &["batches", "export", "--since", "1h", "-o", &span]).await;
    assert_eq!(task_ids(&read_export(&span)).len(), TASKS);

    // Bad arguments are refused, naming the flag.
    let (success, _, stderr) =
        modelperf(f.url(), &["batches", "export", "--since", "yesterday-ish", "-o", &span]).await;
    assert!(!success && stderr.contains("--since yesterday-ish: neither an RFC 3339 time nor a duration"), "{stderr}");
    let (success, _, stderr) = modelperf(f.url(), &["batches", "export", "-o", &span]).await;
    assert!(!success && stderr.contains("--from-seq"), "{stderr}");

    no_durable_consumers(&f.js).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follow_prints_new_batches_as_they_are_stored() {
    let f = Fixture::new().await;
    let mut follow = tokio::process::Command::new(env!("CARGO_BIN_EXE_modelperf"))
        .args(["batches", "tail", "-n", "1", "--follow"])
        .env("MODELPERF_NATS__URL", f.url())
        .env_remove("MODELPERF_CONFIG")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("tail --follow printed nothing")
            .unwrap()
            .unwrap()
    };
    assert!(next_line().await.starts_with("     seq  created_at"));
    let last = &f.batches[f.batches.len() - 1];
    assert!(next_line().await.contains(&last.batch.batch_id), "the last batch first");
    let new = renamed(&last.batch, "-new");
    let seq = publish_batch(&f.js, &new).await;
    let line = next_line().await;
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        (cols[0], cols[2], cols[3]),
        (seq.to_string().as_str(), new.dataset.as_str(), new.batch_id.as_str()),
        "{line}"
    );
    follow.kill().await.unwrap();
}

/// Publishes `batch` as the pipeline would (`Nats-Msg-Id` = `batch_id`); returns its sequence.
async fn publish_batch(js: &Context, batch: &Batch) -> u64 {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", batch.batch_id.as_str());
    let body = rmp_serde::to_vec_named(batch).unwrap();
    let ack = js.publish_with_headers(format!("rl.batches.{}", batch.dataset), headers, body.into()).await.unwrap();
    let ack = ack.await.unwrap();
    assert!(!ack.duplicate, "{} stored", batch.batch_id);
    ack.sequence
}

/// `batch` with its tasks renamed by `suffix`, and `batch_id` and `content_hash` made right.
fn renamed(batch: &Batch, suffix: &str) -> Batch {
    let mut b = batch.clone();
    for s in &mut b.samples {
        s.task_id.push_str(suffix);
    }
    b.batch_id = modelperf_rl_pipeline::batch::batch_id(&b.dataset, b.samples.iter().map(|s| s.task_id.as_str()));
    b.content_hash = modelperf_rl_pipeline::batch::content_hash(&b.samples);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_reports_tampered_batches_and_writes_nothing() {
    let f = Fixture::new().await;
    let template = &f.batches[0].batch;

    // A sample changed after hashing: content_hash no longer matches.
    let mut edited = renamed(template, "-edited");
    edited.samples[0].reward += 0.125;
    let edited_seq = publish_batch(&f.js, &edited).await;
    // A sample dropped without fixing the statistics.
    let mut short = renamed(template, "-short");
    short.samples.pop();
    short.content_hash = modelperf_rl_pipeline::batch::content_hash(&short.samples);
    let short_seq = publish_batch(&f.js, &short).await;
    // A task already in an earlier batch (a correct batch in itself).
    let mut again = renamed(template, "-again");
    again.samples[0].task_id = template.samples[0].task_id.clone();
    again.samples.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    again.batch_id =
        modelperf_rl_pipeline::batch::batch_id(&again.dataset, again.samples.iter().map(|s| s.task_id.as_str()));
    again.content_hash = modelperf_rl_pipeline::batch::content_hash(&again.samples);
    let again_seq = publish_batch(&f.js, &again).await;

    let out = f.path("tampered.jsonl");
    let (success, stdout, stderr) = modelperf(f.url(), &["batches", "export", "--from-seq", "1", "-o", &out]).await;
    assert!(!success, "an export with tampered batches must fail: {stdout}");
    let total = f.batches.len() + 3;
    assert!(stderr.contains(&format!("3 of {total} batches failed verification")), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "batch {} (dataset {}, seq {edited_seq}): content_hash {} does not match its samples",
            edited.batch_id, edited.dataset, edited.content_hash
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "batch {} (dataset {}, seq {short_seq}): {} samples but stats.n is {}",
            short.batch_id,
            short.dataset,
            short.samples.len(),
            short.stats.n
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "batch {} (dataset {}, seq {again_seq}): task {} is also in batch {} (seq {})",
            again.batch_id, again.dataset, template.samples[0].task_id, template.batch_id, f.batches[0].seq
        )),
        "{stderr}"
    );
    assert!(stderr.contains("nothing written"), "{stderr}");
    assert!(!Path::new(&out).exists() && !Path::new(&format!("{out}.partial")).exists(), "no file is left");

    // The pipeline's own batches still export cleanly on their own.
    let last = f.batches[f.batches.len() - 1].seq.to_string();
    ok(f.url(), &["batches", "export", "--from-seq", "1", "--to-seq", &last, "-o", &out]).await;
    assert_eq!(task_ids(&read_export(&out)).into_iter().collect::<BTreeSet<_>>(), workload());
    // And the tampered ones alone fail the same way.
    let (success, _, stderr) = modelperf(
        f.url(),
        &["batches", "export", "--from-seq", &edited_seq.to_string(), "--to-seq", &edited_seq.to_string(), "-o", &out],
    )
    .await;
    assert!(
        !success && stderr.contains("1 of 1 batches failed verification") && stderr.contains(&edited.batch_id),
        "{stderr}"
    );
    no_durable_consumers(&f.js).await;
}
