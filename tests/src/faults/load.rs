//! The load of one scenario: tasks with known ids published to `perf.raw.<kind>` at a steady
//! rate, and a share of undecodable messages whose `PERF_RAW` sequences are kept for the DLQ
//! check.
//!
//! Every task is a routing decision, a completion and a judgment (`<tag>-<n>-r`, `-c`, `-j`, task
//! id `<tag>-task-<n>`): complete for the RL pipeline. Tasks published during the first
//! `slow_for` of the load take 9 s, later ones about 150 ms, so the scenario's rule fires and
//! then resolves. A publish that fails (the server is down, an ack times out) is sent again
//! with the same `Nats-Msg-Id` until the stream acknowledges it: within the duplicate window a
//! repeat is never stored twice, so the published set is exactly known.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::Context;
use async_nats::jetstream::context::PublishAckFuture;
use modelperf_client::EventBuilder;
use modelperf_schema::Event;
use tokio_util::sync::CancellationToken;

/// The model every task runs on.
pub const MODEL: &str = "openai/gpt-4.1";

/// One task in every this many is followed by an undecodable message.
const INVALID_EVERY: u64 = 40;

/// The largest number of tasks published in one go when catching up after an outage.
const MAX_BURST: u64 = 200;

/// What a scenario publishes.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Prefix of ids, task ids, the tenant and the task type: the scenario's own series.
    pub tag: String,
    /// Tasks per second.
    pub rate: u64,
    /// How long the load runs.
    pub duration: Duration,
    /// How long tasks are slow at the start.
    pub slow_for: Duration,
}

impl Plan {
    /// The scenario's tenant (a tag in InfluxDB, a label of its alert).
    pub fn tenant(&self) -> String {
        format!("faults-{}", self.tag)
    }

    /// The scenario's task type, hence its RL dataset.
    pub fn task_type(&self) -> String {
        format!("faults_{}", self.tag)
    }
}

/// What was published and acknowledged.
#[derive(Debug, Default)]
pub struct Published {
    /// Ids of the valid events.
    pub event_ids: Vec<String>,
    /// Ids of the complete tasks.
    pub task_ids: Vec<String>,
    /// `PERF_RAW` sequences of the undecodable messages, with their bodies.
    pub invalid: Vec<(u64, Vec<u8>)>,
    /// Publishes sent again after a failure.
    pub retries: u64,
}

/// A message to publish until acknowledged.
struct Outgoing {
    subject: String,
    id: String,
    body: Vec<u8>,
    content_type: &'static str,
    invalid: bool,
}

fn task(plan: &Plan, n: u64, slow: bool) -> anyhow::Result<Vec<Event>> {
    let task_id = format!("{}-task-{n}", plan.tag);
    let (tenant, task_type) = (plan.tenant(), plan.task_type());
    let latency = if slow { 9_000.0 } else { 100.0 + (n % 100) as f64 };
    macro_rules! base {
        ($b:expr, $part:expr) => {
            $b.id(format!("{}-{n}-{}", plan.tag, $part))
                .source("faults")
                .task_id(&task_id)
                .task_type(&task_type)
                .tenant(&tenant)
        };
    }
    let route = base!(
        EventBuilder::routing_decision("bandit", "coder", MODEL, 1.0)
            .candidate("coder", MODEL, 0.8, 0.7)
            .candidate("coder", "anthropic/claude-sonnet-4-5", 0.7, 0.3)
            .probability(0.7),
        "r"
    )
    .build()?;
    let done = base!(EventBuilder::task_completed(latency, !n.is_multiple_of(10)).model(MODEL).tokens(1_000, 200), "c")
        .build()?;
    let judged = base!(EventBuilder::judgment(MODEL, "openai/gpt-4.1-mini", (n % 10) as f64 / 10.0), "j").build()?;
    Ok(vec![route, done, judged])
}

/// Sends `batch`, awaits every ack, and sends the failed ones again until all are stored;
/// returns each message's stream sequence, in order, and how many sends were repeats.
async fn publish_all(js: &Context, batch: &[Outgoing], stop: &CancellationToken) -> anyhow::Result<(Vec<u64>, u64)> {
    let mut seqs = vec![0u64; batch.len()];
    let mut todo: Vec<usize> = (0..batch.len()).collect();
    let mut retries = 0;
    loop {
        let mut acks: Vec<(usize, Result<PublishAckFuture, String>)> = Vec::with_capacity(todo.len());
        for &i in &todo {
            let m = &batch[i];
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", m.id.as_str());
            headers.insert("Content-Type", m.content_type);
            let sent = js.publish_with_headers(m.subject.clone(), headers, m.body.clone().into()).await;
            acks.push((i, sent.map_err(|e| e.to_string())));
        }
        let mut failed = Vec::new();
        for (i, ack) in acks {
            let stored = match ack {
                Ok(ack) => ack.await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match stored {
                Ok(a) => seqs[i] = a.sequence,
                Err(_) => failed.push(i),
            }
        }
        if failed.is_empty() {
            return Ok((seqs, retries));
        }
        anyhow::ensure!(
            !stop.is_cancelled(),
            "{} publishes still unacknowledged when the scenario gave up",
            failed.len()
        );
        retries += failed.len() as u64;
        todo = failed;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `plan` against `js`; `stop` ends the retrying of a publish that can never succeed.
pub async fn run(js: Context, plan: Plan, stop: CancellationToken) -> anyhow::Result<Published> {
    let mut out = Published::default();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < plan.duration {
        let due = ((start.elapsed().as_secs_f64() * plan.rate as f64) as u64).min(n + MAX_BURST);
        let slow = start.elapsed() < plan.slow_for;
        let mut batch = Vec::new();
        let mut tasks = Vec::new();
        while n < due {
            for e in task(&plan, n, slow)? {
                let id = e.id.clone().context("event without id")?;
                let body = modelperf_schema::to_msgpack(&e)?;
                batch.push(Outgoing {
                    subject: format!("perf.raw.{}", e.kind().as_str()),
                    id,
                    body,
                    content_type: "application/msgpack",
                    invalid: false,
                });
            }
            tasks.push(format!("{}-task-{n}", plan.tag));
            if n % INVALID_EVERY == INVALID_EVERY - 1 {
                let body = format!("{{not json {}-{n}", plan.tag).into_bytes();
                batch.push(Outgoing {
                    subject: "perf.raw.task_completed".into(),
                    id: format!("{}-bad-{n}", plan.tag),
                    body,
                    content_type: "application/json",
                    invalid: true,
                });
            }
            n += 1;
        }
        if !batch.is_empty() {
            let (seqs, retries) = publish_all(&js, &batch, &stop).await?;
            out.retries += retries;
            for (m, seq) in batch.into_iter().zip(seqs) {
                if m.invalid {
                    out.invalid.push((seq, m.body));
                } else {
                    out.event_ids.push(m.id);
                }
            }
            out.task_ids.extend(tasks);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(out)
}
