//! Reconciliation: compares this node's sockets with what Redis says it
//! holds, because pub/sub may have lost a message.
//!
//! Its own task, every `reconcile_interval` and at once after a lost
//! subscription (once the bus is back). It delivers the forced logouts the
//! bus missed, re-asserts sessions Redis forgot, and detaches the sockets
//! Redis lists under this node that the node no longer holds.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{recovery, Node};
use crate::hub::sockets::Vouched;
use crate::registry::redis::store::SCRIPTS;
use crate::registry::redis::wire::Reply;
use crate::registry::Event;
use crate::session::{NodeId, SessionId, Tenant};

/// Sessions per reconciliation script call, so no call blocks Redis long.
const SYNC_CHUNK: usize = 500;
/// Pages of a node's socket index read per tenant and round (SSCAN ends
/// far sooner; this bounds the loop should Redis misbehave).
const MAX_STALE_PAGES: usize = 100_000;

/// The reconciliation task.
pub(super) async fn run(node: Arc<Node>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(node.reconcile_interval) => {}
            _ = tokio::time::sleep(node.member.tick()), if !node.bus.is_ok() => {}
            _ = node.bus.resync.notified() => {}
        }
        if !node.bus.is_ok() {
            let back = node.bus.resubscribe().await;
            super::health::changed(&node);
            if !back {
                continue;
            }
            // What was published while the subscription was down is in
            // the event log now: watchers catch up.
            super::bus::gap(&node, crate::registry::GapReason::SubscriptionLost);
        }
        reconcile(&node).await;
    }
}

/// One round: delivers missed forced logouts, re-asserts sessions Redis
/// forgot, detaches what Redis wrongly believes this node holds.
async fn reconcile(node: &Node) {
    let mut by_tenant: HashMap<Tenant, Vec<Vouched>> = HashMap::new();
    for (tenant, v) in node.local.vouched() {
        by_tenant.entry(tenant).or_default().push(v);
    }
    // Tenants this node registered but holds nothing in any more still
    // need their stale socket records cleared.
    for t in node.member.registered() {
        by_tenant.entry(t).or_default();
    }
    let me = node.member.node();
    for (tenant, held) in by_tenant {
        for chunk in held.chunks(SYNC_CHUNK) {
            let have: Vec<_> = chunk
                .iter()
                .map(|v| json!({"sid": v.session.id.as_str(), "gen": v.session.generation.0}))
                .collect();
            let body = json!({"node": me.as_str(), "have": have});
            let Some(r) = sync(node, &tenant, &body).await else {
                return;
            };
            for t in &r.ended {
                if let Ok(t) = t.to_tombstone(&tenant) {
                    metrics::counter!(crate::metrics_names::REDIS_RECONCILED).increment(1);
                    node.sink.publish(Event::Ended(Arc::new(t)));
                }
            }
            for sid in &r.missing {
                if let Some(v) = chunk.iter().find(|v| v.session.id.as_str() == sid) {
                    recovery::reassert(node, &tenant, &v.session, &v.conns).await;
                }
            }
        }
        if !clear_stale(node, &tenant, &me).await {
            return;
        }
    }
    metrics::counter!(crate::metrics_names::REDIS_RECONCILE_ROUNDS).increment(1);
}

/// Detaches the sockets Redis lists under this node for `tenant` that
/// the node no longer serves, reading the node's socket index a page at a
/// time. Each page is checked against
/// [`LocalSockets`](crate::hub::sockets::LocalSockets) after it was read;
/// a socket is in there from before its attach is sent until after the
/// attach returned, so one attached meanwhile is never taken for stale. Returns false when reconciliation must stop.
async fn clear_stale(node: &Node, tenant: &Tenant, me: &NodeId) -> bool {
    let key = format!("{}n:{}", node.store.prefix(tenant), me.as_str());
    let mut cursor: u64 = 0;
    for _ in 0..MAX_STALE_PAGES {
        let before = node.store.now_ms();
        let mut conn = node.store.conn();
        let page: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SSCAN")
            .arg(&key)
            .arg(cursor)
            .arg("COUNT")
            .arg(SYNC_CHUNK)
            .query_async(&mut conn)
            .await;
        let (next, ids) = match page {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, %tenant, "reconciliation failed; retrying next round");
                return false;
            }
        };
        let stale: Vec<&str> = ids
            .iter()
            .filter(|id| SessionId::parse(id).map_or(true, |sid| !node.local.holds(tenant, &sid)))
            .map(String::as_str)
            .collect();
        if !stale.is_empty() {
            metrics::counter!(crate::metrics_names::REDIS_STALE_SOCKETS)
                .increment(stale.len() as u64);
            let body = json!({"node": me.as_str(), "stale": stale, "before": before});
            if sync(node, tenant, &body).await.is_none() {
                return false;
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    true
}

/// Runs the reconciliation script; `None` (logged) when this round
/// must stop.
async fn sync(node: &Node, tenant: &Tenant, body: &serde_json::Value) -> Option<Reply> {
    let (me, epoch) = (node.member.node(), node.member.epoch());
    match node
        .store
        .run(&SCRIPTS.sync, tenant, &me, &epoch, body)
        .await
    {
        Ok(r) if r.err.is_none() => Some(r),
        Ok(r) => {
            if r.err.as_deref() == Some("fenced") {
                node.member.alarm();
            }
            None
        }
        Err(e) => {
            warn!(error = %e, %tenant, "reconciliation failed; retrying next round");
            None
        }
    }
}
