//! Leases: one owner at a time per key, in the `modelperf_leases` KV bucket.
//!
//! The bucket's `max_age` is the lease TTL, so a lease that is not renewed disappears on the
//! server's clock alone; acquiring is a create-only write, renewing a compare-and-set on the
//! revision. The holder renews every third of the TTL and considers the lease lost — and stops
//! pulling at once, through [`Lease::lost`] — when a renewal is refused or when two thirds of the
//! TTL pass without a successful one, i.e. before the server can hand it to someone else.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use async_nats::jetstream::kv::{self, Store};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::error::BusError;
use crate::topology::buckets;

/// Acquires and tracks the leases of one process.
#[derive(Debug, Clone)]
pub struct Leases {
    kv: Store,
    ttl: Duration,
    instance: String,
    held: Arc<Mutex<BTreeSet<String>>>,
}

impl Leases {
    /// Opens the lease bucket (ensured by the topology) for this instance.
    pub async fn open(js: &Context, ttl: Duration, instance: &str) -> Result<Self, BusError> {
        let kv = js.get_key_value(buckets::LEASES).await.map_err(|e| BusError::js("open kv modelperf_leases", e))?;
        Ok(Self { kv, ttl, instance: instance.to_owned(), held: Arc::default() })
    }

    /// The lease TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// This process's instance id (the lease value).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Keys currently held, for heartbeats.
    pub fn held(&self) -> Vec<String> {
        self.held.lock().map(|h| h.iter().cloned().collect()).unwrap_or_default()
    }

    /// The holder of `key`, if any.
    pub async fn holder(&self, key: &str) -> Result<Option<String>, BusError> {
        let entry = self.kv.entry(key).await.map_err(|e| BusError::js(format!("read lease {key}"), e))?;
        Ok(entry.filter(|e| e.operation == kv::Operation::Put).map(|e| String::from_utf8_lossy(&e.value).into_owned()))
    }

    /// How many live keys start with `prefix` (e.g. the members of a service that each hold
    /// `<service>.member.<instance>`).
    pub async fn count(&self, prefix: &str) -> Result<usize, BusError> {
        use futures::TryStreamExt;
        let keys = self.kv.keys().await.map_err(|e| BusError::js("list leases", e))?;
        let keys: Vec<String> = keys.try_collect().await.map_err(|e| BusError::js("list leases", e))?;
        Ok(keys.iter().filter(|k| k.starts_with(prefix)).count())
    }

    /// Takes `key` if it is free. `Ok(None)` when someone else holds it.
    pub async fn try_acquire(&self, key: &str) -> Result<Option<Lease>, BusError> {
        match self.kv.create(key, Bytes::from(self.instance.clone())).await {
            Ok(revision) => Ok(Some(self.start(key, revision))),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(BusError::js(format!("acquire lease {key}"), e)),
        }
    }

    /// Waits until `key` is acquired or `stop` is cancelled (`Ok(None)`). Polls every third of
    /// the TTL, so a free lease is taken within one TTL of its holder's death.
    pub async fn acquire(&self, key: &str, stop: &CancellationToken) -> Result<Option<Lease>, BusError> {
        loop {
            match self.try_acquire(key).await {
                Ok(Some(lease)) => return Ok(Some(lease)),
                Ok(None) => {}
                Err(e) => tracing::warn!(key, error = %e, "lease acquisition failed, will retry"),
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(None),
                _ = tokio::time::sleep(self.ttl / 3) => {}
            }
        }
    }

    fn start(&self, key: &str, revision: u64) -> Lease {
        let lost = CancellationToken::new();
        let release = CancellationToken::new();
        if let Ok(mut held) = self.held.lock() {
            held.insert(key.to_owned());
        }
        metrics::gauge!("modelperf_lease_held", "key" => key.to_owned()).set(1.0);
        tracing::info!(key, instance = %self.instance, "lease acquired");
        let task = tokio::spawn(renew(self.clone(), key.to_owned(), revision, lost.clone(), release.clone()));
        Lease { key: key.to_owned(), lost, release, task: Some(task), held: self.held.clone() }
    }
}

async fn renew(leases: Leases, key: String, mut revision: u64, lost: CancellationToken, release: CancellationToken) {
    let mut last_ok = Instant::now();
    let give_up = leases.ttl.mul_f64(2.0 / 3.0);
    loop {
        tokio::select! {
            _ = release.cancelled() => {
                // Delete only our own revision: if we lost it meanwhile, the new holder's stays.
                let _ = leases.kv.delete_expect_revision(&key, Some(revision)).await;
                break;
            }
            _ = tokio::time::sleep(leases.ttl / 3) => {}
        }
        match leases.kv.update(&key, Bytes::from(leases.instance.clone()), revision).await {
            Ok(r) => {
                revision = r;
                last_ok = Instant::now();
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                tracing::warn!(key, "lease taken by another instance");
                lost.cancel();
                break;
            }
            Err(e) if last_ok.elapsed() >= give_up => {
                tracing::warn!(key, error = %e, "lease not renewed in time, giving it up");
                lost.cancel();
                break;
            }
            Err(e) => tracing::warn!(key, error = %e, "lease renewal failed, will retry"),
        }
    }
    if let Ok(mut held) = leases.held.lock() {
        held.remove(&key);
    }
    metrics::gauge!("modelperf_lease_held", "key" => key.clone()).set(0.0);
}

/// A held lease. Dropping it stops renewal (the lease then expires after its TTL); call
/// [`Lease::release`] to hand it over at once.
#[derive(Debug)]
pub struct Lease {
    key: String,
    lost: CancellationToken,
    release: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    held: Arc<Mutex<BTreeSet<String>>>,
}

impl Lease {
    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Cancelled the moment the lease is lost: stop pulling and drop uncheckpointed work.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Whether the lease is still held.
    pub fn is_held(&self) -> bool {
        !self.lost.is_cancelled()
    }

    /// Stops renewing and deletes the lease so another instance can take it at once.
    pub async fn release(mut self) {
        self.release.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        tracing::info!(key = %self.key, "lease released");
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            if let Ok(mut held) = self.held.lock() {
                held.remove(&self.key);
            }
        }
    }
}
