//! `modelperf dlq`: what the dead-letter queue holds, grouped by code, and replaying it once the
//! cause is fixed.
//!
//! Bodies may hold personal data, so they are printed only with `--show-body`. A replay
//! publishes the original bytes to the original subject with `Nats-Msg-Id` `replay:<dlq-seq>`
//! and `Modelperf-Replay: <dlq-seq>` (exempt from the age rule), and records the replay in
//! `modelperf_state` (`dlq.replayed.<seq>`), so replaying a letter twice publishes it once.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, Context, consumer};
use clap::{Args, Subcommand};
use futures::StreamExt;
use modelperf_schema::dlq;

/// `modelperf dlq`.
#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    command: Option<DlqCommand>,
    #[command(flatten)]
    filter: Filter,
    /// Print the (possibly personal) bodies too.
    #[arg(long)]
    show_body: bool,
    /// Reasons listed per code.
    #[arg(long, default_value_t = 5)]
    reasons: usize,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Publish dead letters again to their original subjects.
    Replay {
        #[command(flatten)]
        filter: Filter,
        /// Show what would be replayed without publishing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Which dead letters.
#[derive(Debug, Args, Clone, Default)]
struct Filter {
    /// Only this error code (e.g. `unsupported_version`).
    #[arg(long)]
    code: Option<String>,
    /// Only this stage (`perf.dlq.<stage>`).
    #[arg(long)]
    stage: Option<String>,
    /// From this DLQ sequence.
    #[arg(long)]
    from_seq: Option<u64>,
    /// Up to this DLQ sequence (inclusive).
    #[arg(long)]
    to_seq: Option<u64>,
}

/// One dead letter.
struct Letter {
    seq: u64,
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
}

impl Letter {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.as_str())
    }
}

pub async fn run(js: &Context, args: &DlqArgs) -> anyhow::Result<()> {
    match &args.command {
        None => list(js, args).await,
        Some(DlqCommand::Replay { filter, dry_run }) => {
            // Flags given before `replay` count too.
            let merged = Filter {
                code: filter.code.clone().or(args.filter.code.clone()),
                stage: filter.stage.clone().or(args.filter.stage.clone()),
                from_seq: filter.from_seq.or(args.filter.from_seq),
                to_seq: filter.to_seq.or(args.filter.to_seq),
            };
            replay(js, &merged, *dry_run).await
        }
    }
}

async fn read(js: &Context, filter: &Filter) -> anyhow::Result<Vec<Letter>> {
    let stream =
        js.get_stream(modelperf_bus::streams::DLQ).await.context("stream PERF_DLQ (run `modelperf ensure`)")?;
    let deliver_policy = match filter.from_seq {
        Some(seq) => consumer::DeliverPolicy::ByStartSequence { start_sequence: seq },
        None => consumer::DeliverPolicy::All,
    };
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            deliver_policy,
            filter_subject: filter.stage.as_ref().map(|s| format!("perf.dlq.{s}")).unwrap_or_default(),
            ..Default::default()
        })
        .await
        .context("reading PERF_DLQ needs operator credentials")?;
    let pending = consumer.cached_info().num_pending;
    let mut out = Vec::new();
    if pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await?;
    let mut seen = 0;
    while seen < pending {
        let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(10), messages.next()).await else {
            anyhow::bail!("PERF_DLQ stopped delivering after {seen} of {pending} messages");
        };
        let m = m?;
        seen += 1;
        let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
        if filter.to_seq.is_some_and(|to| seq > to) {
            break;
        }
        let letter = Letter {
            seq,
            subject: m.subject.to_string(),
            headers: m.headers.clone().unwrap_or_default(),
            payload: m.payload.clone(),
        };
        if filter.code.as_ref().is_some_and(|c| letter.header(dlq::ERROR) != c) {
            continue;
        }
        out.push(letter);
    }
    Ok(out)
}

async fn list(js: &Context, args: &DlqArgs) -> anyhow::Result<()> {
    let letters = read(js, &args.filter).await?;
    if letters.is_empty() {
        println!("the dead-letter queue holds nothing that matches");
        return Ok(());
    }
    let mut by_code: BTreeMap<&str, Vec<&Letter>> = BTreeMap::new();
    for l in &letters {
        by_code.entry(l.header(dlq::ERROR)).or_default().push(l);
    }
    println!("{} dead letters", letters.len());
    for (code, group) in &by_code {
        let (first, last) = (group[0].seq, group[group.len() - 1].seq);
        println!("\n{code}: {} (seq {first}..{last})", group.len());
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        for l in group {
            *reasons.entry(l.header(dlq::REASON)).or_default() += 1;
        }
        let mut reasons: Vec<_> = reasons.into_iter().collect();
        reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
        for (reason, n) in reasons.iter().take(args.reasons) {
            println!("  {n:>7} × {reason}");
        }
        if reasons.len() > args.reasons {
            println!("  … and {} other reasons (--reasons N shows more)", reasons.len() - args.reasons);
        }
        if args.show_body {
            for l in group {
                println!(
                    "  seq {} from {} (original seq {}): {}",
                    l.seq,
                    l.header(dlq::ORIGINAL_SUBJECT),
                    l.header(dlq::ORIGINAL_SEQ),
                    printable(&l.payload[..l.payload.len().min(2048)])
                );
            }
        }
    }
    if !args.show_body {
        println!("\nbodies may hold personal data: add --show-body to print them");
    }
    Ok(())
}

/// A body as one line of text: control characters (terminal escapes among them) are escaped.
fn printable(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().flat_map(char::escape_debug).collect()
}

async fn replay(js: &Context, filter: &Filter, dry_run: bool) -> anyhow::Result<()> {
    let letters = read(js, filter).await?;
    // A replay is recorded (create-only) in the state bucket, so replaying the same letter again
    // later — long after the raw stream's duplicate window — publishes nothing.
    let ledger = js
        .get_key_value(modelperf_bus::buckets::STATE)
        .await
        .context("kv bucket modelperf_state (run `modelperf ensure`)")?;
    let (mut sent, mut duplicates, mut skipped) = (0u64, 0u64, 0u64);
    let mut acks = Vec::new();
    for l in &letters {
        let original = l.header(dlq::ORIGINAL_SUBJECT);
        if !l.header(dlq::ORIGINAL_SIZE).is_empty() || original.is_empty() {
            // A truncated body cannot be replayed: the original bytes are gone.
            eprintln!(
                "seq {}: not replayable ({} from {:?}, body truncated or origin unknown)",
                l.seq, l.subject, original
            );
            skipped += 1;
            continue;
        }
        if dry_run {
            println!("would replay seq {} to {original} ({})", l.seq, l.header(dlq::ERROR));
            continue;
        }
        let marker = format!("dlq.replayed.{}", l.seq);
        if ledger.get(&marker).await.ok().flatten().is_some() {
            duplicates += 1;
            continue;
        }
        let msg = jetstream::message::PublishMessage::build()
            .payload(l.payload.clone())
            .message_id(format!("replay:{}", l.seq))
            .header(dlq::REPLAY, l.seq.to_string().as_str());
        let ack = js.send_publish(original.to_owned(), msg).await.with_context(|| format!("replay seq {}", l.seq))?;
        acks.push((marker, ack));
        // The context bounds unacknowledged publishes: settle in chunks.
        if acks.len() >= 512 {
            settle(&ledger, &mut acks, &mut sent, &mut duplicates).await?;
        }
    }
    settle(&ledger, &mut acks, &mut sent, &mut duplicates).await?;
    if !dry_run {
        println!("replayed {sent}, already replayed {duplicates}, not replayable {skipped}");
    }
    Ok(())
}

async fn settle(
    ledger: &jetstream::kv::Store,
    acks: &mut Vec<(String, jetstream::context::PublishAckFuture)>,
    sent: &mut u64,
    duplicates: &mut u64,
) -> anyhow::Result<()> {
    for (marker, ack) in acks.drain(..) {
        let ack = ack.await.context("replay not stored")?;
        if ack.duplicate {
            *duplicates += 1;
        } else {
            *sent += 1;
        }
        // Best effort: the raw stream's duplicate window still covers a failure here.
        let _ = ledger.create(&marker, ack.sequence.to_string().into()).await;
    }
    Ok(())
}
