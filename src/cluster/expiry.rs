//! Expiry: ends the sessions whose deadline passed (a PENDING session
//! nobody connected to, a DISCONNECTED one whose grace ran out), in every
//! tenant.
//!
//! Any node may do it and every node does, one tenant at a time: the
//! script is atomic and checks each session's real deadline, so two nodes
//! racing end a session once. Its own task, so a slow sweep of many
//! tenants never delays a lease refresh.

use std::sync::Arc;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Node;
use crate::registry::redis::store::SCRIPTS;
use crate::session::Tenant;

/// Sessions expired per script call.
const EXPIRE_BATCH: usize = 500;
/// Script calls per tenant and sweep.
const MAX_EXPIRE_BATCHES: usize = 16;

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
        }
    }
}

/// Expires due sessions of every tenant.
pub(super) async fn sweep(node: &Node) {
    let mut conn = node.store.conn();
    let tenants: Vec<String> = match redis::cmd("SMEMBERS")
        .arg(node.store.nodes_key("tenants"))
        .query_async(&mut conn)
        .await
    {
        Ok(t) => t,
        Err(_) => return,
    };
    for t in tenants {
        let Ok(tenant) = Tenant::parse(&t) else {
            continue;
        };
        for _ in 0..MAX_EXPIRE_BATCHES {
            let (me, epoch) = (node.member.node(), node.member.epoch());
            let body = json!({"max": EXPIRE_BATCH});
            match node
                .store
                .run(&SCRIPTS.expire, &tenant, &me, &epoch, &body)
                .await
            {
                Ok(r) if r.more => continue,
                _ => break,
            }
        }
    }
}
