//! The loop of a stateful partition owner: apply → publish → checkpoint → ack-all.
//!
//! Owners never hold acks for the life of a window or join. Every `checkpoint_interval` the
//! loop waits for the publish acks of everything emitted so far, asks the owner what time has
//! closed, writes the checkpoint (state or replay position, and the last applied sequence), and
//! only then acknowledges up to that sequence with one ack on its ack-all consumer.
//!
//! What a tick closes is decided by the wall clock, which a replay cannot reproduce; so the
//! decision is checkpointed *before* its outputs are published, and a successor that finds a
//! decided but unpublished close rebuilds and publishes exactly it again, under the same
//! `Nats-Msg-Id`s. After a crash the new owner recreates the durable consumer at the
//! checkpoint's replay position: messages up to the checkpointed sequence only rebuild state
//! ([`PartitionOwner::replay`]), later ones are applied; nothing checkpointed is applied twice
//! and nothing after it is lost.

use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::Message;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::error::BusError;
use crate::publish::{Outgoing, ack_chunk, dead_letter, send, send_all};
use crate::runner::{Failure, Incoming};
use crate::topology::Topology;

/// A service's state for one partition (or role).
pub trait PartitionOwner: Send {
    /// Re-applies a message at or before the checkpointed sequence, to rebuild state that the
    /// checkpoint holds only as a replay position. Its outputs were published before.
    fn replay(&mut self, _msg: &Incoming<'_>) {}

    /// Applies one message; the outputs are published before the next checkpoint.
    fn apply(&mut self, msg: &Incoming<'_>) -> Result<Vec<Outgoing>, Failure>;

    /// Called at each checkpoint once the state is rebuilt: decide what time has closed.
    /// `caught_up` says the consumer had nothing pending. The outputs are published after a
    /// checkpoint that records the decision, then [`PartitionOwner::published`] is called.
    fn tick(&mut self, _caught_up: bool) -> Vec<Outgoing> {
        Vec::new()
    }

    /// Everything `tick` returned is stored.
    fn published(&mut self) {}

    /// The checkpoint to write, given the last applied sequence.
    fn checkpoint(&self, applied_seq: u64) -> Checkpoint;
}

/// Recreates the durable consumer `durable` so that it delivers from `start_seq` (1 = the
/// beginning). The owner holds the partition's lease, so nobody else pulls from it.
pub async fn open_at(
    js: &Context,
    topology: &Topology,
    durable: &str,
    start_seq: u64,
) -> Result<PullConsumer, BusError> {
    let spec =
        topology.consumer(durable).ok_or_else(|| BusError::Config(format!("no consumer {durable} in the topology")))?;
    let stream =
        js.get_stream(spec.stream).await.map_err(|e| BusError::js(format!("get stream {}", spec.stream), e))?;
    let _ = stream.delete_consumer(durable).await;
    let mut config = topology.consumer_config(spec);
    config.deliver_policy =
        if start_seq <= 1 { DeliverPolicy::All } else { DeliverPolicy::ByStartSequence { start_sequence: start_seq } };
    stream.create_consumer(config).await.map_err(|e| BusError::js(format!("create consumer {durable}"), e))
}

/// Settings of an owner loop.
#[derive(Debug, Clone)]
pub struct OwnerConfig {
    /// Stage name (DLQ subject, metric label).
    pub stage: String,
    /// Messages per pull.
    pub fetch_batch: usize,
    /// Time between checkpoints.
    pub checkpoint_interval: Duration,
    /// The publish acks the JetStream context allows in flight (`max_ack_pending`).
    pub max_in_flight: usize,
}

/// Runs `owner` on its consumer from `resume_after + 1` until `stop` (shutdown or a lost
/// lease). A graceful stop writes a last checkpoint; a lost lease does not (the successor owns
/// the checkpoint now). Returns the last checkpointed sequence.
#[allow(clippy::too_many_arguments)] // each is a distinct piece the caller owns
pub async fn run_owner<O: PartitionOwner>(
    js: &Context,
    consumer: PullConsumer,
    store: &mut CheckpointStore,
    owner: &mut O,
    resume_after: u64,
    cfg: &OwnerConfig,
    stop: CancellationToken,
    lease_lost: CancellationToken,
) -> Result<u64, BusError> {
    // Unknown counts as a backlog: nothing is closed by the clock before the replay is read.
    let pending = consumer.get_info().await.map(|i| i.num_pending).unwrap_or(u64::MAX);
    let mut state = Progress {
        applied_seq: resume_after,
        checkpointed_seq: resume_after,
        replay_until: resume_after,
        replayed_seq: 0,
        seen_seq: 0,
        delivery: None,
        in_flight: cfg.max_in_flight,
        chunk: ack_chunk(cfg.max_in_flight),
        pending,
        acks: Vec::new(),
        last: None,
    };
    // One bounded pull at a time, read to its end: at most `fetch_batch` messages are ever on
    // their way to this owner, so a busy owner cannot make the client drop deliveries.
    let expires = cfg.checkpoint_interval.clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut last_checkpoint = tokio::time::Instant::now();
    loop {
        if lease_lost.is_cancelled() {
            // Someone else may own the partition already: no checkpoint, no ack.
            return Err(BusError::LeaseLost(store.key().to_owned()));
        }
        if stop.is_cancelled() {
            break;
        }
        let mut batch = consumer
            .fetch()
            .max_messages(cfg.fetch_batch)
            .expires(expires)
            .messages()
            .await
            .map_err(|e| BusError::js(format!("fetch for {}", cfg.stage), e))?;
        while let Some(msg) = batch.next().await {
            match msg {
                Ok(msg) => state.apply(js, owner, &cfg.stage, msg).await?,
                Err(e) => tracing::debug!(stage = %cfg.stage, error = %e, "pull ended"),
            }
        }
        if last_checkpoint.elapsed() >= cfg.checkpoint_interval {
            last_checkpoint = tokio::time::Instant::now();
            state.checkpoint(js, store, owner).await?;
        }
    }
    state.checkpoint(js, store, owner).await?;
    Ok(state.checkpointed_seq)
}

struct Progress {
    applied_seq: u64,
    checkpointed_seq: u64,
    /// Messages up to here only rebuild state.
    replay_until: u64,
    replayed_seq: u64,
    /// The highest sequence received.
    seen_seq: u64,
    /// The consumer's delivery sequence of the last message received.
    delivery: Option<u64>,
    /// Publish acks the context allows in flight, and how many to leave unawaited at most.
    in_flight: usize,
    chunk: usize,
    /// Messages pending on the consumer after the last one received.
    pending: u64,
    acks: Vec<PublishAckFuture>,
    last: Option<Message>,
}

impl Progress {
    async fn apply<O: PartitionOwner>(
        &mut self,
        js: &Context,
        owner: &mut O,
        stage: &str,
        msg: Message,
    ) -> Result<(), BusError> {
        let info =
            msg.info().map_err(|e| BusError::Corrupt { what: "message metadata".into(), reason: e.to_string() })?;
        let (stream, seq, delivered) = (info.stream.to_owned(), info.stream_sequence, info.delivered);
        // Ack-all would acknowledge a delivery this client never received: restart instead.
        if let Some(last) = self.delivery
            && info.consumer_sequence != last + 1
        {
            return Err(BusError::DeliveryGap {
                consumer: info.consumer.to_owned(),
                expected: last + 1,
                got: info.consumer_sequence,
            });
        }
        self.delivery = Some(info.consumer_sequence);
        self.pending = info.pending;
        self.seen_seq = self.seen_seq.max(seq);
        let incoming = Incoming {
            subject: &msg.subject,
            headers: msg.headers.as_ref(),
            payload: &msg.payload,
            stream: &stream,
            seq,
            delivered,
        };
        if seq <= self.applied_seq {
            if seq <= self.replay_until && seq > self.replayed_seq {
                // Rebuilding from the changelog: state only, the outputs are stored already.
                owner.replay(&incoming);
                self.replayed_seq = seq;
                // Acknowledged at the next tick, or a long replay would fill max_ack_pending.
                self.last = Some(msg);
            }
            // Otherwise a redelivery of something already applied (e.g. after a lost ack).
            return Ok(());
        }
        let outputs = match owner.apply(&incoming) {
            Ok(outputs) => outputs,
            Err(Failure::Terminate { code, reason }) => {
                vec![dead_letter(stage, incoming.origin(), incoming.payload, code, &reason)]
            }
            Err(Failure::Retry(reason)) => {
                // Ordered state cannot skip a message: restart from the last checkpoint.
                return Err(BusError::Publish { subject: msg.subject.to_string(), reason });
            }
        };
        for out in outputs {
            self.acks.push(send(js, out).await?);
            if self.acks.len() >= self.chunk {
                self.await_acks().await?;
            }
        }
        self.applied_seq = seq;
        self.last = Some(msg);
        Ok(())
    }

    async fn checkpoint<O: PartitionOwner>(
        &mut self,
        js: &Context,
        store: &mut CheckpointStore,
        owner: &mut O,
    ) -> Result<(), BusError> {
        self.await_acks().await?;
        let rebuilding = self.seen_seq < self.replay_until && self.pending > 0;
        if rebuilding {
            // Part of the state is still in the replay: deciding now would close too little.
            // What was replayed is covered by the checkpoint already.
            if self.applied_seq == self.checkpointed_seq
                && let Some(last) = self.last.take()
            {
                let _ = last.ack().await;
            }
            return Ok(());
        }
        let outputs = owner.tick(self.pending == 0);
        if !outputs.is_empty() {
            // The decision first, so a successor publishes the same outputs again.
            store.save(&owner.checkpoint(self.applied_seq)).await?;
            // In chunks: a tick can close more partials than the context lets be in flight.
            send_all(js, outputs, self.in_flight).await?;
            owner.published();
        } else if self.applied_seq == self.checkpointed_seq {
            return Ok(());
        }
        store.save(&owner.checkpoint(self.applied_seq)).await?;
        self.checkpointed_seq = self.applied_seq;
        if let Some(last) = self.last.take() {
            // Ack-all: acknowledges every message up to this one.
            if let Err(e) = last.ack().await {
                tracing::warn!(error = %e, "ack-all after checkpoint failed; redeliveries are skipped by sequence");
            }
        }
        metrics::counter!("modelperf_owner_checkpoints_total", "key" => store.key().to_owned()).increment(1);
        Ok(())
    }

    async fn await_acks(&mut self) -> Result<(), BusError> {
        for ack in self.acks.drain(..) {
            ack.await.map_err(|e| BusError::Publish { subject: String::new(), reason: e.to_string() })?;
        }
        Ok(())
    }
}
