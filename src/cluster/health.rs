//! Whether this node can vouch for its sessions, fed to the node's
//! [`Health`](crate::connectivity::Health) (which tells the sockets).
//!
//! Three facts say it: the last lease refresh reached Redis, the pub/sub
//! subscription is up (so forced logouts arrive on time), and the lease is
//! still surely valid (a time, which runs out with no flag flipping when a
//! refresh hangs or the process was paused). The tasks call [`changed`]
//! where a fact flips; [`run`] re-checks every fifth of a lease for the
//! lease running out on its own.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Node;
use crate::connectivity::Cause;

/// What keeps this node from vouching for its sessions now, the most
/// fundamental first; `None` when nothing does.
fn cause(node: &Node) -> Option<Cause> {
    if !node.member.reached() {
        Some(Cause::RedisUnreachable)
    } else if !node.bus.is_ok() {
        Some(Cause::SubscriptionLost)
    } else if !node.member.lease_valid() {
        Some(Cause::LeaseUnconfirmed)
    } else {
        None
    }
}

/// Re-reads the facts into the node's connectivity; its sockets are told
/// when that changes. Cheap: call it wherever a fact flips.
pub(super) fn changed(node: &Node) {
    node.health.update(cause(node), node.sink.as_ref());
}

/// Notices the lease running out while no flag flips (a refresh stuck on a
/// slow Redis, a paused process), within a fifth of the lease.
pub(super) async fn run(node: Arc<Node>, stop: CancellationToken) {
    let every = (node.member.lease_ttl / 5).max(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        changed(&node);
    }
}
