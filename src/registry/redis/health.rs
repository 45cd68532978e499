//! The Redis registry's view of whether this node can vouch for its
//! sessions, fed to the node's [`Health`](crate::connectivity::Health).
//!
//! Three flags say it: `ready` (the last lease refresh reached Redis),
//! `subscription_ok` (the pub/sub connection is up, so forced logouts
//! arrive on time) and the lease's validity (a time, which runs out with
//! no flag flipping when a refresh hangs or the process was paused). The
//! tasks call [`RedisRegistry::health_changed`] where a flag flips; one
//! small task re-checks every lease tick for the lease running out.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::RedisRegistry;
use crate::connectivity::Cause;

impl RedisRegistry {
    /// What keeps this node from vouching for its sessions now, the most
    /// fundamental first; `None` when nothing does.
    fn degraded_cause(&self) -> Option<Cause> {
        if !self.inner.ready.load(Ordering::Relaxed) {
            Some(Cause::RedisUnreachable)
        } else if !self.inner.subscription_ok.load(Ordering::Relaxed) {
            Some(Cause::SubscriptionLost)
        } else if !self.lease_valid() {
            Some(Cause::LeaseUnconfirmed)
        } else {
            None
        }
    }

    /// Re-reads the health flags into the node's connectivity; its sockets
    /// are told when that changes. Cheap: call it wherever a flag flips.
    pub(super) fn health_changed(&self) {
        self.inner
            .health
            .update(self.degraded_cause(), self.inner.sink.as_ref());
    }
}

/// Notices the lease running out while no flag flips (a refresh stuck on a
/// slow Redis, a paused process), within a fifth of the lease (the
/// membership task's refresh period).
pub(super) async fn lease_watch(reg: RedisRegistry, stop: CancellationToken) {
    let every = (reg.inner.rcfg.lease_ttl / 5).max(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        reg.health_changed();
    }
}
