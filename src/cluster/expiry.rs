//! Expiry: ends the sessions whose deadline passed (a PENDING session
//! nobody connected to, a DISCONNECTED one whose grace ran out), in the
//! tenants the due-index (`registry::redis::due`) says have one due.
//!
//! Work per tick is bounded whatever the number of tenants: one read of the
//! due-index when nothing is due; otherwise at most [`TENANT_BATCH`]
//! tenants, [`MAX_EXPIRE_BATCHES`] script calls each. Tenants left over
//! stay due for the next tick. Any node may do it and every node does:
//! taking a tenant moves it out of the others' way, and the script is
//! atomic and checks each session's real deadline, so two nodes racing end
//! a session once. Its own task, so expiry never delays a lease refresh.

use std::sync::Arc;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Node;
use crate::registry::redis::due;
use crate::registry::redis::store::SCRIPTS;
use crate::session::Tenant;

/// Sessions expired per script call.
const EXPIRE_BATCH: usize = 500;
/// Script calls per tenant and sweep.
const MAX_EXPIRE_BATCHES: usize = 16;
/// Tenants woken per sweep.
const TENANT_BATCH: usize = 256;

/// The expiry task: one sweep every lease tick.
pub(super) async fn run(node: Arc<Node>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(node.member.tick()) => {}
        }
        // A node whose lease is not confirmed writes nothing.
        if node.member.is_ready() {
            sweep(&node).await;
            metrics::counter!(crate::metrics_names::REDIS_EXPIRY_ROUNDS).increment(1);
        }
    }
}

/// Expires the due sessions of up to [`TENANT_BATCH`] due tenants, then
/// re-indexes each at its next deadline or drops it from the index.
pub(super) async fn sweep(node: &Node) {
    let store = &node.store;
    due::retry_unindexed(store).await;
    let now = store.now_ms();
    due::adopt_legacy(store, now).await;
    // A sweeper that dies leaves its tenants due again after a lease: by
    // then it is buried.
    let retry_at = now + (node.member.tick() * 5).as_millis() as i64;
    let Ok(taken) = due::take(store, now, retry_at, TENANT_BATCH).await else {
        return;
    };
    metrics::counter!(crate::metrics_names::REDIS_EXPIRY_TENANTS).increment(taken.len() as u64);
    for (t, version) in taken {
        let Ok(tenant) = Tenant::parse(&t) else {
            // Nothing can live under a malformed name.
            due::drop(store, &t, &version).await;
            continue;
        };
        if let Some(done) = expire(node, &tenant).await {
            // The script already lowered the tenant to its next deadline,
            // if it has one.
            if !done {
                due::drop(store, &t, &version).await;
            }
        }
    }
}

/// Expires a tenant's due sessions; `Some(true)` when a deadline remains,
/// `Some(false)` when none does, `None` when a call failed (the tenant
/// stays due at its retry time).
async fn expire(node: &Node, tenant: &Tenant) -> Option<bool> {
    let mut left = None;
    for _ in 0..MAX_EXPIRE_BATCHES {
        let (me, epoch) = (node.member.node(), node.member.epoch());
        let body = json!({"max": EXPIRE_BATCH});
        let (r, next) = node
            .store
            .run_due(&SCRIPTS.expire, tenant, &me, &epoch, &body)
            .await
            .ok()?;
        left = Some(next.is_some());
        if !r.more {
            break;
        }
    }
    left
}
