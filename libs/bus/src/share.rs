//! Sharing a service's partitions among its replicas through leases.
//!
//! Every replica holds a member lease `<service>.member.<instance>` and owns at most its fair
//! share of the partitions, ⌈partitions / members⌉ (optionally capped); a partition is owned
//! while its lease `<service>.p<N>` is held. A replica reserves a place within its share before
//! trying a lease, so partitions starting together do not all grab a lease and then hand the
//! extra ones back; and when a new member makes it hold more than its share, it hands back its
//! highest partition (the owner stops, checkpoints, releases the lease) for the newcomer to take.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::error::BusError;
use crate::lease::{Lease, Leases};

/// The partitions of one service in this replica.
#[derive(Debug, Clone)]
pub struct Share {
    leases: Leases,
    service: String,
    partitions: u32,
    max: u32,
    held: Arc<Mutex<BTreeSet<u32>>>,
}

impl Share {
    /// Joins the members of `service` (lease `<service>.member.<instance>`, to release at
    /// shutdown). `max` caps the partitions this replica owns (0: no cap).
    pub async fn join(leases: &Leases, service: &str, partitions: u32, max: u32) -> Result<(Self, Lease), BusError> {
        let key = format!("{service}.member.{}", leases.instance());
        let member = leases.try_acquire(&key).await?.ok_or_else(|| BusError::LeaseLost(key.clone()))?;
        let share = Self { leases: leases.clone(), service: service.to_owned(), partitions, max, held: Arc::default() };
        Ok((share, member))
    }

    /// The lease (and checkpoint) key of partition `p`, e.g. `aggregator.p3`.
    pub fn key(&self, p: u32) -> String {
        format!("{}.p{p}", self.service)
    }

    /// Partitions owned now.
    pub fn held(&self) -> BTreeSet<u32> {
        self.held.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// The most partitions this replica should own now.
    pub async fn fair(&self) -> usize {
        let members = self.leases.count(&format!("{}.member.", self.service)).await.unwrap_or(1).max(1);
        let fair = (self.partitions as usize).div_ceil(members);
        if self.max > 0 { fair.min(self.max as usize) } else { fair }
    }

    fn reserve(&self, p: u32, share: usize) -> bool {
        match self.held.lock() {
            Ok(mut h) if h.len() < share => {
                h.insert(p);
                true
            }
            _ => false,
        }
    }

    fn unhold(&self, p: u32) {
        if let Ok(mut h) = self.held.lock() {
            h.remove(&p);
        }
    }

    /// Owns partition `p` whenever its lease is free and this replica is within its share,
    /// until `stop`. `own(p, leave, lost)` runs the owner: it must return when `leave` (shutdown
    /// or a hand-over) or `lost` (the lease) is cancelled; its result is logged.
    pub async fn run<F, Fut, E>(self, p: u32, stop: CancellationToken, own: F)
    where
        F: Fn(u32, CancellationToken, CancellationToken) -> Fut,
        Fut: Future<Output = Result<u64, E>>,
        E: std::fmt::Display,
    {
        let key = self.key(p);
        let poll = self.leases.ttl() / 3;
        while !stop.is_cancelled() {
            let share = self.fair().await;
            let lease = if self.reserve(p, share) {
                let lease = match self.leases.try_acquire(&key).await {
                    Ok(lease) => lease,
                    Err(e) => {
                        tracing::warn!(key, error = %e, "lease acquisition failed, will retry");
                        None
                    }
                };
                if lease.is_none() {
                    self.unhold(p);
                }
                lease
            } else {
                None
            };
            let Some(lease) = lease else {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(poll) => continue,
                }
            };
            let leave = stop.child_token();
            let rebalance = tokio::spawn(self.clone().hand_back_when_over_share(p, leave.clone()));
            let result = own(p, leave.clone(), lease.lost()).await;
            leave.cancel();
            let _ = rebalance.await;
            self.unhold(p);
            match result {
                Ok(seq) => tracing::info!(key, checkpointed = seq, "partition handed over"),
                Err(e) => tracing::warn!(key, error = %e, "partition owner stopped"),
            }
            lease.release().await;
            if !stop.is_cancelled() {
                // Give the others a chance at what was just released.
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        }
    }

    /// Cancels `leave` when this replica holds more than its share and `p` is its highest.
    async fn hand_back_when_over_share(self, p: u32, leave: CancellationToken) {
        let every = self.leases.ttl() / 3;
        loop {
            tokio::select! {
                _ = leave.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let held = self.held();
            if held.len() > self.fair().await && held.last() == Some(&p) {
                tracing::info!(key = %self.key(p), "over this replica's share: handing the partition over");
                leave.cancel();
                return;
            }
        }
    }
}
