//! `modelperf batches`: what `RL_BATCHES` holds per dataset, the latest batches, and exports of a
//! sequence range or a time span to JSONL, verified batch by batch.
//!
//! Every read goes through an ephemeral ordered consumer that acknowledges nothing, so nothing
//! is consumed and no durable state is left on the server (the server removes the consumer once
//! it is idle). `list` scans the batches it counts — sample counts live inside the batches, the
//! stream's per-subject counts know only messages. `tail` finds where its last N batches start
//! with a headers-only scan, then reads just those. `export` checks every batch it writes: the
//! sample count equals `stats.n`, `content_hash` and `batch_id` recomputed equal the batch's,
//! and no task appears twice in the export. An export with a failed check writes no file.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{Context, consumer};
use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args, Subcommand};
use futures::StreamExt;
use modelperf_rl_pipeline::batch::{batch_id, content_hash};
use modelperf_schema::format_ts;
use modelperf_schema::messages::{Batch, Sample};
use serde::{Deserialize, Serialize};

/// How long a read waits for the next message the server said was pending.
const STALL: Duration = Duration::from_secs(10);
/// Failures listed in an export's error (all of them are counted).
const FAILURES_SHOWN: usize = 20;

/// `modelperf batches`.
#[derive(Debug, Args)]
pub struct BatchesArgs {
    #[command(subcommand)]
    command: Option<BatchesCommand>,
}

#[derive(Debug, Subcommand)]
enum BatchesCommand {
    /// Datasets with their batch and sample counts, first and last stream sequence and time (the
    /// default).
    List {
        /// Only this dataset.
        #[arg(long)]
        dataset: Option<String>,
    },
    /// The last batches: sequence, time, dataset, batch id, samples, mean reward.
    Tail {
        /// Only this dataset.
        #[arg(long)]
        dataset: Option<String>,
        /// How many.
        #[arg(short = 'n', default_value_t = 10)]
        n: usize,
        /// Keep printing batches as they arrive (until interrupted).
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Write the samples of a sequence range or a time span to a JSONL file, one line per sample
    /// with its batch id, dataset and stream sequence, verifying every batch.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("start").required(true).args(["from_seq", "since"])))]
struct ExportArgs {
    /// Only this dataset.
    #[arg(long)]
    dataset: Option<String>,
    /// First stream sequence of RL_BATCHES.
    #[arg(long, conflicts_with_all = ["since", "until"])]
    from_seq: Option<u64>,
    /// Last stream sequence (inclusive); the end of the stream without it.
    #[arg(long, requires = "from_seq")]
    to_seq: Option<u64>,
    /// Batches stored at or after this time: RFC 3339, or a duration ago (`6h`, `2d`).
    #[arg(long)]
    since: Option<String>,
    /// Batches stored before this time (same forms); the end of the stream without it.
    #[arg(long, requires = "since")]
    until: Option<String>,
    /// The JSONL file to write.
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
}

pub async fn run(js: &Context, args: &BatchesArgs) -> anyhow::Result<()> {
    match &args.command {
        None => list(js, None).await,
        Some(BatchesCommand::List { dataset }) => list(js, dataset.as_deref()).await,
        Some(BatchesCommand::Tail { dataset, n, follow }) => tail(js, dataset.as_deref(), *n, *follow).await,
        Some(BatchesCommand::Export(args)) => export(js, args).await,
    }
}

/// The subjects of one dataset, or of all.
fn filter(dataset: Option<&str>) -> anyhow::Result<String> {
    let Some(d) = dataset else { return Ok("rl.batches.>".to_owned()) };
    anyhow::ensure!(
        !d.is_empty() && !d.contains(['*', '>', ' ', '\t', '\r', '\n']),
        "--dataset {d:?}: not a dataset name (no wildcards or spaces)"
    );
    Ok(format!("rl.batches.{d}"))
}

/// A stored message of `RL_BATCHES`.
struct Stored {
    seq: u64,
    published: DateTime<Utc>,
    payload: bytes::Bytes,
}

/// Reads `RL_BATCHES` in order through an ephemeral ordered consumer, up to the last message
/// stored when it started (or on and on with `follow`).
struct Reader {
    messages: consumer::pull::Ordered,
    /// Messages the server had for us after the last one read.
    pending: u64,
    /// Messages read.
    read: u64,
    follow: bool,
}

impl Reader {
    async fn open(
        js: &Context,
        filter: String,
        deliver_policy: consumer::DeliverPolicy,
        headers_only: bool,
        follow: bool,
    ) -> anyhow::Result<Reader> {
        let stream = js
            .get_stream(modelperf_bus::streams::RL_BATCHES)
            .await
            .context("stream RL_BATCHES (run `modelperf ensure`, or start the rl-pipeline)")?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: filter,
                deliver_policy,
                headers_only,
                ..Default::default()
            })
            .await
            .context("cannot read RL_BATCHES (an ordered consumer could not be created)")?;
        let pending = consumer.cached_info().num_pending;
        let messages = consumer.messages().await.context("read RL_BATCHES")?;
        Ok(Reader { messages, pending, read: 0, follow })
    }

    /// The next message; `None` at the end (never when following).
    async fn next(&mut self) -> anyhow::Result<Option<Stored>> {
        if self.pending == 0 && !self.follow {
            return Ok(None);
        }
        let next = if self.pending == 0 {
            self.messages.next().await
        } else {
            match tokio::time::timeout(STALL, self.messages.next()).await {
                Ok(next) => next,
                Err(_) => anyhow::bail!(
                    "RL_BATCHES stopped delivering after {} messages with {} pending",
                    self.read,
                    self.pending
                ),
            }
        };
        let m = match next {
            Some(m) => m.context("reading RL_BATCHES")?,
            None => anyhow::bail!("RL_BATCHES: the consumer ended after {} messages", self.read),
        };
        let info = m.info().map_err(|e| anyhow::anyhow!("RL_BATCHES message without metadata: {e}"))?;
        self.pending = info.pending;
        self.read += 1;
        let nanos = i64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(i64::MAX);
        Ok(Some(Stored {
            seq: info.stream_sequence,
            published: DateTime::from_timestamp_nanos(nanos),
            payload: m.payload.clone(),
        }))
    }
}

/// What `list` and `tail` need of a batch; the samples are skipped, not decoded.
#[derive(Deserialize)]
struct Head {
    batch_id: String,
    dataset: String,
    #[serde(with = "modelperf_schema::codec::ts")]
    created_at: DateTime<Utc>,
    stats: HeadStats,
}

#[derive(Deserialize)]
struct HeadStats {
    n: u64,
    reward_mean: f64,
}

fn head(m: &Stored) -> anyhow::Result<Head> {
    modelperf_schema::from_msgpack(&m.payload)
        .map_err(|e| anyhow::anyhow!("RL_BATCHES seq {}: not a batch: {e}", m.seq))
}

/// Progress on stderr: a bar in a terminal, a line every few seconds otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    what: &'static str,
    total: u64,
    last: Instant,
}

impl Progress {
    fn new(what: &'static str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} batches {msg} ({per_sec}, eta {eta})")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Progress { bar, what, total, last: Instant::now() }
    }

    fn set(&mut self, batches: u64, samples: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(batches);
            bar.set_message(format!("{samples} samples"));
        } else if self.last.elapsed() >= Duration::from_secs(5) {
            self.last = Instant::now();
            eprintln!("{}: {batches} of at most {} batches, {samples} samples", self.what, self.total);
        }
    }

    fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// One dataset in `list`.
struct Dataset {
    batches: u64,
    samples: u64,
    first: (u64, DateTime<Utc>),
    last: (u64, DateTime<Utc>),
}

async fn list(js: &Context, dataset: Option<&str>) -> anyhow::Result<()> {
    let mut reader = Reader::open(js, filter(dataset)?, consumer::DeliverPolicy::All, false, false).await?;
    let mut progress = Progress::new("scanning RL_BATCHES", reader.pending);
    let mut datasets: BTreeMap<String, Dataset> = BTreeMap::new();
    let mut samples = 0;
    while let Some(m) = reader.next().await? {
        let h = head(&m)?;
        let at = (m.seq, m.published);
        let d = datasets.entry(h.dataset).or_insert(Dataset { batches: 0, samples: 0, first: at, last: at });
        d.batches += 1;
        d.samples += h.stats.n;
        d.last = at;
        samples += h.stats.n;
        progress.set(reader.read, samples);
    }
    progress.finish();
    if datasets.is_empty() {
        match dataset {
            Some(d) => println!("RL_BATCHES holds no batches of dataset {d}"),
            None => println!("RL_BATCHES holds no batches"),
        }
        return Ok(());
    }
    println!(
        "{:<24} {:>8} {:>10} {:>10} {:>10}  {:<24} {:<24}",
        "dataset", "batches", "samples", "first seq", "last seq", "first stored", "last stored"
    );
    for (name, d) in &datasets {
        println!(
            "{:<24} {:>8} {:>10} {:>10} {:>10}  {:<24} {:<24}",
            name,
            d.batches,
            d.samples,
            d.first.0,
            d.last.0,
            format_ts(&d.first.1),
            format_ts(&d.last.1)
        );
    }
    let batches: u64 = datasets.values().map(|d| d.batches).sum();
    println!("{} datasets, {batches} batches, {samples} samples", datasets.len());
    Ok(())
}

async fn tail(js: &Context, dataset: Option<&str>, n: usize, follow: bool) -> anyhow::Result<()> {
    let subjects = filter(dataset)?;
    // Where the last n start: a scan of the headers only (no bodies leave the server).
    let mut last: VecDeque<u64> = VecDeque::with_capacity(n + 1);
    let mut scan = Reader::open(js, subjects.clone(), consumer::DeliverPolicy::All, true, false).await?;
    while let Some(m) = scan.next().await? {
        last.push_back(m.seq);
        if last.len() > n {
            last.pop_front();
        }
    }
    let deliver_policy = match last.front() {
        Some(&start_sequence) => consumer::DeliverPolicy::ByStartSequence { start_sequence },
        None if follow => consumer::DeliverPolicy::New,
        None => {
            println!("RL_BATCHES holds no batches{}", dataset.map(|d| format!(" of dataset {d}")).unwrap_or_default());
            return Ok(());
        }
    };
    let mut reader = Reader::open(js, subjects, deliver_policy, false, follow).await?;
    println!(
        "{:>8}  {:<24} {:<24} {:<32} {:>6} {:>11}",
        "seq", "created_at", "dataset", "batch_id", "n", "reward_mean"
    );
    let mut stdout = std::io::stdout();
    while let Some(m) = reader.next().await? {
        let h = head(&m)?;
        println!(
            "{:>8}  {:<24} {:<24} {:<32} {:>6} {:>11.4}",
            m.seq,
            format_ts(&h.created_at),
            h.dataset,
            h.batch_id,
            h.stats.n,
            h.stats.reward_mean
        );
        // Following into a pipe: each batch shows up as it arrives.
        stdout.flush()?;
    }
    Ok(())
}

/// One line of an export: a sample with where it came from.
#[derive(Serialize)]
struct Line<'a> {
    batch_id: &'a str,
    dataset: &'a str,
    seq: u64,
    #[serde(with = "modelperf_schema::codec::ts")]
    created_at: DateTime<Utc>,
    #[serde(flatten)]
    sample: &'a Sample,
}

/// Where an export stops.
enum End {
    Seq(u64),
    Time(DateTime<Utc>),
    Stream,
}

impl End {
    fn past(&self, m: &Stored) -> bool {
        match self {
            End::Seq(last) => m.seq > *last,
            End::Time(until) => m.published >= *until,
            End::Stream => false,
        }
    }
}

/// What is wrong with a batch, when anything is. `seen` maps every task exported so far to its
/// batch and sequence; a batch that verifies adds its tasks to it.
fn verify(m: &Stored, seen: &mut HashMap<String, (String, u64)>) -> Result<Batch, String> {
    let batch: Batch =
        modelperf_schema::from_msgpack(&m.payload).map_err(|e| format!("seq {}: not a batch: {e}", m.seq))?;
    let name = format!("batch {} (dataset {}, seq {})", batch.batch_id, batch.dataset, m.seq);
    if batch.samples.len() as u64 != batch.stats.n {
        return Err(format!("{name}: {} samples but stats.n is {}", batch.samples.len(), batch.stats.n));
    }
    let hash = content_hash(&batch.samples);
    if hash != batch.content_hash {
        return Err(format!(
            "{name}: content_hash {} does not match its samples (they hash to {hash})",
            batch.content_hash
        ));
    }
    let id = batch_id(&batch.dataset, batch.samples.iter().map(|s| s.task_id.as_str()));
    if id != batch.batch_id {
        return Err(format!("{name}: batch_id does not match its dataset and tasks (they give {id})"));
    }
    let mut mine: HashMap<&str, ()> = HashMap::with_capacity(batch.samples.len());
    for s in &batch.samples {
        if mine.insert(&s.task_id, ()).is_some() {
            return Err(format!("{name}: task {} is in the batch twice", s.task_id));
        }
        if let Some((other, seq)) = seen.get(&s.task_id) {
            return Err(format!("{name}: task {} is also in batch {other} (seq {seq})", s.task_id));
        }
    }
    for s in &batch.samples {
        seen.insert(s.task_id.clone(), (batch.batch_id.clone(), m.seq));
    }
    Ok(batch)
}

async fn export(js: &Context, args: &ExportArgs) -> anyhow::Result<()> {
    let (deliver_policy, end) = match (args.from_seq, &args.since) {
        (Some(from), _) => {
            anyhow::ensure!(from > 0, "--from-seq: stream sequences start at 1");
            if let Some(to) = args.to_seq {
                anyhow::ensure!(to >= from, "--to-seq {to} is before --from-seq {from}");
            }
            (
                consumer::DeliverPolicy::ByStartSequence { start_sequence: from },
                args.to_seq.map_or(End::Stream, End::Seq),
            )
        }
        (None, Some(since)) => {
            let since = crate::time_arg("--since", since)?;
            let until = args.until.as_deref().map(|u| crate::time_arg("--until", u)).transpose()?;
            if let Some(until) = until {
                anyhow::ensure!(
                    until > since,
                    "--until {} is not after --since {}",
                    format_ts(&until),
                    format_ts(&since)
                );
            }
            let nanos = since.timestamp_nanos_opt().context("--since: out of range")?;
            let start_time =
                time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)).context("--since: out of range")?;
            (consumer::DeliverPolicy::ByStartTime { start_time }, until.map_or(End::Stream, End::Time))
        }
        (None, None) => anyhow::bail!("give --from-seq or --since"),
    };
    let mut reader = Reader::open(js, filter(args.dataset.as_deref())?, deliver_policy, false, false).await?;
    // Written aside and renamed at the end: FILE exists only when every batch in it verified.
    let partial = PathBuf::from(format!("{}.partial", args.output.display()));
    let file = std::fs::File::create(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let result = write_export(&mut reader, &end, &mut out).await;
    let flushed = out.flush().with_context(|| format!("write {}", partial.display()));
    let summary = match result.and_then(|s| flushed.map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e.context(format!("export to {} failed: nothing written", args.output.display())));
        }
    };
    std::fs::rename(&partial, &args.output)
        .with_context(|| format!("rename {} to {}", partial.display(), args.output.display()))?;
    println!("{summary} to {}", args.output.display());
    Ok(())
}

/// Verifies and writes every batch up to `end`; returns the summary line (without the file).
async fn write_export(reader: &mut Reader, end: &End, out: &mut impl std::io::Write) -> anyhow::Result<String> {
    let mut progress = Progress::new("exporting", reader.pending);
    let mut seen: HashMap<String, (String, u64)> = HashMap::new();
    let mut failures: Vec<String> = Vec::new();
    let (mut batches, mut samples) = (0u64, 0u64);
    let mut datasets: BTreeMap<String, u64> = BTreeMap::new();
    let mut range: Option<(u64, u64)> = None;
    while let Some(m) = reader.next().await? {
        if end.past(&m) {
            break;
        }
        batches += 1;
        match verify(&m, &mut seen) {
            // After a failure nothing more is written (the file is dropped), but every batch is
            // still checked, so one run reports them all.
            Ok(batch) if failures.is_empty() => {
                for sample in &batch.samples {
                    let line = Line {
                        batch_id: &batch.batch_id,
                        dataset: &batch.dataset,
                        seq: m.seq,
                        created_at: batch.created_at,
                        sample,
                    };
                    serde_json::to_writer(&mut *out, &line).context("write the export")?;
                    out.write_all(b"\n").context("write the export")?;
                }
                samples += batch.samples.len() as u64;
                *datasets.entry(batch.dataset).or_default() += 1;
            }
            Ok(_) => {}
            Err(failure) => failures.push(failure),
        }
        range = Some((range.map_or(m.seq, |r| r.0), m.seq));
        progress.set(batches, samples);
    }
    progress.finish();
    if !failures.is_empty() {
        let mut msg = format!("{} of {batches} batches failed verification:", failures.len());
        for f in failures.iter().take(FAILURES_SHOWN) {
            msg.push_str("\n  ");
            msg.push_str(f);
        }
        if failures.len() > FAILURES_SHOWN {
            msg.push_str(&format!("\n  … and {} more", failures.len() - FAILURES_SHOWN));
        }
        anyhow::bail!(msg);
    }
    let Some((first, last)) = range else {
        return Ok("exported 0 samples: no batches in the range".to_owned());
    };
    let datasets: Vec<String> = datasets.iter().map(|(d, n)| format!("{d} {n}")).collect();
    Ok(format!(
        "exported {samples} samples ({} distinct tasks) of {batches} batches, seq {first}..{last}, verified (datasets: {})",
        seen.len(),
        datasets.join(", ")
    ))
}
