//! `modelperf load`: synthetic agent-platform traffic.
//!
//! Each task is a routing decision with candidates, propensities and features, then
//! `task_started`, `thinking_budget`, `task_completed` and `judgment` (and, for code edits,
//! `minimality` and `validation`), all linked by `task_id`, from models with different latency,
//! success, quality and token profiles. A share of deliberately invalid messages exercises the
//! dead-letter path. Events are published as JSON to `perf.raw.<kind>` with `Nats-Msg-Id` = the
//! event id, at a target rate; every publish ack is awaited. A share of tasks can be offline
//! benchmark cases: the same `case_id` run on every model within one `run_id`. Events carry
//! user and session ids and a little free text with personal data, for the privacy stage.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use chrono::Utc;
use hdrhistogram::Histogram;
use modelperf_schema::*;
use rand::{RngExt, SeedableRng, rngs::StdRng};

/// How a model behaves in the synthetic workload.
struct Profile {
    model: ModelRef,
    latency_median_ms: f64,
    success: f64,
    quality: f64,
    tokens_out: u64,
}

fn profiles() -> Vec<Profile> {
    let p = |provider: &str, name: &str, lat: f64, success: f64, quality: f64, tokens_out: u64| Profile {
        model: ModelRef::new(provider, name),
        latency_median_ms: lat,
        success,
        quality,
        tokens_out,
    };
    vec![
        p("anthropic", "claude-sonnet-4-5", 9_000.0, 0.96, 0.86, 1_800),
        p("openai", "gpt-4.1", 7_500.0, 0.95, 0.83, 1_500),
        p("openai", "gpt-4.1-mini", 3_200.0, 0.91, 0.74, 1_200),
        p("google", "gemini-2.5-flash", 2_600.0, 0.90, 0.71, 1_100),
        p("mistral", "mistral-large-2512", 6_000.0, 0.92, 0.76, 1_300),
        p("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo", 4_000.0, 0.88, 0.68, 1_000),
    ]
}

const TASK_TYPES: [&str; 3] = ["code_edit", "summarize", "plan"];
const TENANTS: [&str; 3] = ["acme", "globex", "initech"];

/// Options of a load run.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Target events per second (0 = as fast as acks allow).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this long (e.g. `30s`, `5m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Share of deliberately invalid messages, 0..1.
    #[arg(long, default_value_t = 0.0)]
    pub invalid_share: f64,
    /// Seed of the generator (the same seed gives the same events, apart from timestamps).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Share of tasks that are offline benchmark cases, each run on every model with a shared
    /// `benchmark.case_id` (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub benchmark_share: f64,
    /// Body encoding.
    #[arg(long, value_enum, default_value_t = Encoding::Json)]
    pub encoding: Encoding,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    pub quiet: bool,
}

/// How bodies are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Encoding {
    /// JSON, `Content-Type: application/json`.
    Json,
    /// MessagePack with named fields.
    Msgpack,
}

/// An offline benchmark case: the model it runs on is fixed, not routed.
struct BenchmarkCase<'a> {
    run_id: &'a str,
    case_id: String,
    model: usize,
}

/// Events of one synthetic task, in the order the platform emits them.
fn task_events(rng: &mut StdRng, models: &[Profile], n: u64, bench: Option<&BenchmarkCase<'_>>) -> Vec<Event> {
    let task_id = format!("task-{:016x}", rng.random::<u64>());
    let task_type = TASK_TYPES[(n % 3) as usize];
    let tenant = TENANTS[rng.random_range(0..TENANTS.len())];
    let user = format!("user{}@example.com", rng.random_range(0..500u32));
    let session = format!("sess-{:08x}", rng.random::<u32>());
    // The router prefers stronger models: softmax over quality.
    let weights: Vec<f64> = models.iter().map(|m| (m.quality * 6.0).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut pick = rng.random::<f64>() * total;
    let mut chosen = 0;
    for (i, w) in weights.iter().enumerate() {
        if pick < *w {
            chosen = i;
            break;
        }
        pick -= w;
    }
    if let Some(b) = bench {
        chosen = b.model;
    }
    let m = &models[chosen];
    let now = Utc::now();
    let base = |data: Data| {
        let mut e = Event::new(now, "arbiter.orchestrator", data);
        e.id = Some(uuid::Uuid::now_v7().to_string());
        e.task_id = Some(task_id.clone());
        e.task_type = Some(task_type.to_owned());
        e.tenant = Some(tenant.to_owned());
        e.model = Some(m.model.clone());
        e.agent_id = Some(format!("agent-{chosen}"));
        e.user_id = Some(user.clone());
        e.session_id = Some(session.clone());
        if let Some(b) = bench {
            e.benchmark = Some(Benchmark { run_id: b.run_id.to_owned(), case_id: b.case_id.clone() });
        }
        e
    };
    let candidates = models
        .iter()
        .zip(&weights)
        .enumerate()
        .map(|(i, (p, w))| Candidate {
            agent_id: format!("agent-{i}"),
            model: p.model.clone(),
            score: p.quality * 6.0,
            probability: Some(w / total),
        })
        .collect();
    let mut features = std::collections::BTreeMap::new();
    features.insert("prompt_tokens_est".to_owned(), Feature::Number(f64::from(rng.random_range(500u32..20_000))));
    features
        .insert("language".to_owned(), Feature::Text(["rust", "python", "typescript"][rng.random_range(0..3)].into()));
    let mut routing = base(Data::RoutingDecision(RoutingDecision {
        strategy: "bandit".into(),
        chosen: Chosen { agent_id: format!("agent-{chosen}"), model: m.model.clone() },
        candidates,
        probability: Some(weights[chosen] / total),
        features,
        decision_ms: rng.random_range(0.5..5.0),
    }));
    routing.model = None;
    routing.source = "arbiter.router".into();
    routing.attrs.insert(
        "request_note".into(),
        AttrValue::Text(format!(
            "escalated by {user} from 10.0.{}.{}",
            rng.random_range(0..255u8),
            rng.random_range(1..255u8)
        )),
    );
    let latency = m.latency_median_ms * (rng.random::<f64>() * 0.8 - 0.4 + rng.random::<f64>().ln().abs() * 0.3).exp();
    let success = rng.random::<f64>() < m.success;
    let input = rng.random_range(800..16_000u64);
    let output = (m.tokens_out as f64 * rng.random_range(0.3..1.7)) as u64;
    let mut events = Vec::new();
    if bench.is_none() {
        events.push(routing);
    }
    events.extend([
        base(Data::TaskStarted(TaskStarted { queue_ms: Some(rng.random_range(0.0..200.0)) })),
        base(Data::ThinkingBudget(ThinkingBudget {
            budget_tokens: 4096,
            used_tokens: rng.random_range(0..4096),
            exhausted: rng.random::<f64>() < 0.05,
            complexity: Some("medium".into()),
        })),
        base(Data::TaskCompleted(TaskCompleted {
            latency_ms: latency,
            ttft_ms: Some(latency * 0.1),
            success,
            error_kind: (!success).then(|| "timeout".to_owned()),
            tokens: Some(Tokens { input, output, cached_input: Some(input / 3), cache_write: None, reasoning: None }),
            retries: Some(0),
            tool_calls: Some(rng.random_range(0..8)),
            cpu_ms: None,
            memory_mb: None,
        })),
    ]);
    let quality = (m.quality + rng.random_range(-0.15..0.15)).clamp(0.0, 1.0);
    let mut judgment = base(Data::Judgment(Judgment {
        judge_model: ModelRef::new("openai", "gpt-4.1-mini"),
        score: if success { quality } else { quality * 0.3 },
        confidence: Some(0.8),
        passed: Some(success && quality > 0.6),
        tokens: Some(Tokens { input: 2_000, output: 150, ..Tokens::default() }),
        ..Judgment::default()
    }));
    judgment.source = "arbiter.judge".into();
    events.push(judgment);
    if task_type == "code_edit" {
        events.push(base(Data::Minimality(Minimality {
            lines_added: rng.random_range(1..80),
            lines_removed: rng.random_range(0..40),
            files_changed: rng.random_range(1..5),
            score: rng.random_range(0.5..1.0),
        })));
        events.push(base(Data::Validation(Validation {
            valid: true,
            violations: Vec::new(),
            compliance_score: rng.random_range(0.8..1.0),
            duration_ms: rng.random_range(5.0..40.0),
        })));
    }
    events
}

fn invalid_message(rng: &mut StdRng) -> (String, Vec<u8>) {
    let ts = format_ts(&Utc::now());
    match rng.random_range(0..4) {
        0 => ("perf.raw.task_completed".into(), b"{not json".to_vec()),
        1 => (
            "perf.raw.task_completed".into(),
            format!(r#"{{"v":1,"kind":"task_completed","ts":"{ts}","source":"load","data":{{"latency_ms":-1,"success":true}}}}"#).into_bytes(),
        ),
        2 => (
            "perf.raw.judgment".into(),
            format!(r#"{{"v":1,"kind":"judgment","ts":"{ts}","source":"load","model":"openai/gpt-4.1","data":{{"judge_model":"openai/gpt-4.1","score":7}}}}"#).into_bytes(),
        ),
        _ => (
            "perf.raw.custom".into(),
            format!(r#"{{"v":1,"kind":"task_started","ts":"{ts}","source":"load","data":{{}}}}"#).into_bytes(),
        ),
    }
}

/// A bar over the count, or a spinner over the duration; none when stderr is not a terminal.
fn progress_bar(args: &LoadArgs) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if args.quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = match args.count {
        Some(n) => indicatif::ProgressBar::new(n).with_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        ),
        None => indicatif::ProgressBar::new_spinner(),
    };
    Some(bar)
}

/// What a run did.
#[derive(Debug)]
pub struct LoadSummary {
    /// Messages acknowledged by `PERF_RAW`.
    pub sent: u64,
    /// Of which deliberately invalid.
    pub invalid: u64,
    /// Tasks generated.
    pub tasks: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Publish → ack latency (µs).
    pub latency: Histogram<u64>,
}

impl std::fmt::Display for LoadSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "sent            {} messages ({} tasks, {} invalid on purpose)",
            self.sent, self.tasks, self.invalid
        )?;
        writeln!(f, "elapsed         {:.2} s", secs)?;
        writeln!(f, "achieved rate   {:.0} msg/s", self.sent as f64 / secs)?;
        write!(
            f,
            "publish ack     p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.latency.value_at_quantile(0.5) as f64 / 1000.0,
            self.latency.value_at_quantile(0.99) as f64 / 1000.0,
            self.latency.max() as f64 / 1000.0
        )
    }
}

/// Runs the load against `js` until count or duration (or Ctrl-C).
pub async fn run(js: &async_nats::jetstream::Context, args: &LoadArgs) -> anyhow::Result<LoadSummary> {
    anyhow::ensure!((0.0..=1.0).contains(&args.invalid_share), "--invalid-share must be in 0..1");
    anyhow::ensure!(args.count.is_some() || args.duration.is_some(), "give --count or --duration");
    anyhow::ensure!((0.0..=1.0).contains(&args.benchmark_share), "--benchmark-share must be in 0..1");
    let models = profiles();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let (mut sent, mut invalid, mut tasks) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    let mut last_report = Instant::now();
    let limit = args.count.unwrap_or(u64::MAX);
    let deadline = args.duration.map(|d| start + d);
    // Acks are awaited in order by a separate task, so each latency is measured when the ack
    // arrives rather than when the publishing loop gets round to it.
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::channel::<(Instant, PublishAckFuture)>(1024);
    let settler = tokio::spawn(async move {
        let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram")?;
        let mut acked = 0u64;
        while let Some((at, ack)) = ack_rx.recv().await {
            ack.await.context("PERF_RAW did not acknowledge a publish")?;
            latency.saturating_record(at.elapsed().as_micros() as u64);
            acked += 1;
        }
        anyhow::Ok((acked, latency))
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stopper.cancel();
    });
    let progress = progress_bar(args);
    let run_id = format!("bench-{}", uuid::Uuid::now_v7().simple());
    'outer: while sent < limit && !stop.is_cancelled() {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        // Invalid bodies ready to send, or events serialised at send time (so `ts` is when the
        // event left the producer, and benchmarks can measure latency from it).
        let mut batch: Vec<(String, String, Result<Vec<u8>, Event>)> = Vec::new();
        if rng.random::<f64>() < args.invalid_share * 6.0 {
            let (subject, body) = invalid_message(&mut rng);
            batch.push((subject, format!("invalid-{}", uuid::Uuid::now_v7()), Ok(body)));
            invalid += 1;
        }
        let mut events = Vec::new();
        if rng.random::<f64>() < args.benchmark_share {
            // One case, run on every model: the analyzer compares these paired.
            let case_id = format!("case-{tasks:06}");
            for model in 0..models.len() {
                let case = BenchmarkCase { run_id: &run_id, case_id: case_id.clone(), model };
                events.extend(task_events(&mut rng, &models, tasks, Some(&case)));
                tasks += 1;
            }
        } else {
            events.extend(task_events(&mut rng, &models, tasks, None));
            tasks += 1;
        }
        for e in events {
            let id = e.id.clone().unwrap_or_default();
            batch.push((format!("perf.raw.{}", e.kind()), id, Err(e)));
        }
        for (subject, id, body) in batch {
            if sent >= limit {
                break 'outer;
            }
            if args.rate > 0 {
                let due = start + Duration::from_secs_f64(sent as f64 / args.rate as f64);
                let now = Instant::now();
                if due > now {
                    tokio::time::sleep(due - now).await;
                }
            }
            let body = match body {
                Ok(bytes) => bytes,
                Err(mut e) => {
                    e.ts = Utc::now();
                    match args.encoding {
                        Encoding::Json => serde_json::to_vec(&e)?,
                        Encoding::Msgpack => to_msgpack(&e)?,
                    }
                }
            };
            let content_type = match args.encoding {
                Encoding::Json => "application/json",
                Encoding::Msgpack => "application/msgpack",
            };
            let msg = PublishMessage::build().payload(body.into()).message_id(&id).header("Content-Type", content_type);
            let ack = js.send_publish(subject, msg).await.context("publishing to PERF_RAW")?;
            if ack_tx.send((Instant::now(), ack)).await.is_err() {
                break 'outer; // the settler failed; its error is reported below
            }
            sent += 1;
        }
        let every = if progress.is_some() { Duration::from_millis(250) } else { Duration::from_secs(5) };
        if last_report.elapsed() >= every {
            let rate = sent as f64 / start.elapsed().as_secs_f64();
            match &progress {
                Some(p) => {
                    p.set_position(sent);
                    p.set_message(format!("{rate:.0} msg/s, {tasks} tasks"));
                }
                None => eprintln!("load: {sent} sent, {rate:.0} msg/s"),
            }
            last_report = Instant::now();
        }
    }
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    drop(ack_tx);
    let (acked, latency) = settler.await.context("ack task")??;
    Ok(LoadSummary { sent: acked, invalid, tasks, elapsed: start.elapsed(), latency })
}
