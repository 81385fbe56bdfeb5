//! Checkpoints of stateful owners in the `modelperf_state` KV bucket.
//!
//! A checkpoint holds the last stream sequence applied and either the state itself or the
//! sequence from which the state can be rebuilt by replaying `PERF_EVENTS`. Writes are
//! compare-and-set on the revision this owner last wrote, so an owner that lost its lease can
//! never overwrite its successor's checkpoint.

use async_nats::jetstream::Context;
use async_nats::jetstream::kv::{self, Store};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::BusError;
use crate::topology::buckets;

/// A checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Every message up to this stream sequence has been applied (0: none).
    pub applied_seq: u64,
    /// Where to replay from to rebuild state not held in `state` (the first event of the oldest
    /// open window or join); `None` when `state` is complete.
    #[serde(default)]
    pub replay_from: Option<u64>,
    /// The serialised state, owned by the service.
    #[serde(default, with = "serde_bytes")]
    pub state: Vec<u8>,
}

/// The checkpoint of one key (`<service>.<partition or role>`), with the revision last seen.
#[derive(Debug)]
pub struct CheckpointStore {
    kv: Store,
    key: String,
    revision: u64,
}

impl CheckpointStore {
    /// Opens the checkpoint of `key` and returns it, if one exists.
    pub async fn open(js: &Context, key: &str) -> Result<(Self, Option<Checkpoint>), BusError> {
        let kv = js.get_key_value(buckets::STATE).await.map_err(|e| BusError::js("open kv modelperf_state", e))?;
        let entry = kv.entry(key).await.map_err(|e| BusError::js(format!("read checkpoint {key}"), e))?;
        let (revision, checkpoint) = match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let cp = rmp_serde::from_slice(&e.value)
                    .map_err(|err| BusError::Corrupt { what: format!("checkpoint {key}"), reason: err.to_string() })?;
                (e.revision, Some(cp))
            }
            Some(e) => (e.revision, None),
            None => (0, None),
        };
        Ok((Self { kv, key: key.to_owned(), revision }, checkpoint))
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Writes a checkpoint if nobody else wrote since we last did.
    pub async fn save(&mut self, cp: &Checkpoint) -> Result<(), BusError> {
        let value = Bytes::from(
            rmp_serde::to_vec_named(cp)
                .map_err(|e| BusError::Corrupt { what: format!("checkpoint {}", self.key), reason: e.to_string() })?,
        );
        let written = if self.revision == 0 {
            self.kv.create(&self.key, value).await.map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => BusError::CheckpointConflict(self.key.clone()),
                _ => BusError::js(format!("write checkpoint {}", self.key), e),
            })
        } else {
            self.kv.update(&self.key, value, self.revision).await.map_err(|e| match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => BusError::CheckpointConflict(self.key.clone()),
                _ => BusError::js(format!("write checkpoint {}", self.key), e),
            })
        }?;
        self.revision = written;
        Ok(())
    }
}
