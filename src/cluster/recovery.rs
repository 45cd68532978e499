//! Recovery from a Redis that lost its data: this node puts back every
//! session it holds sockets for (re-assertion), unless the login or
//! station was claimed meanwhile, in which case the local sockets are told
//! they were superseded.
//!
//! Its own task, woken by the lease task when the epoch changed, so a long
//! re-assertion never delays a lease refresh (and the lease never lapses
//! because of it). Sessions go [`BATCH`] scripts at a time, pipelined on
//! the one connection. Claims wait meanwhile: the lease refresh that saw
//! the loss listed this node in `epoch:reasserting`, the pass first
//! extends that list's life to a bound derived from this node's session
//! count ([`bound`]), and takes the node off it when done; the claim
//! script refuses while anyone is listed. The node reports not ready until
//! the pass is done. Reconciliation re-asserts single sessions Redis turns
//! out to have forgotten through [`reassert`].
//!
//! On a Redis Cluster a shard can also lose the last writes of the tenants
//! it holds (a failover to a replica that was behind) while the epoch
//! stays: a tenant's write counter tells (see
//! [`tenant_writes`](crate::registry::redis::tenant_writes)), and the same
//! task then re-asserts this node's sessions of those tenants only. Their
//! claims wait meanwhile for a bound set in the tenant's slot by the script
//! that found the loss.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Node;
use crate::registry::redis::store::SCRIPTS;
use crate::registry::redis::wire::{WSession, WSocket};
use crate::registry::Event;
use crate::session::{EndReason, EndedBy, Ending, Session, SessionState, Tenant, Tombstone};

/// Data losses seen and re-assertion passes done.
#[derive(Default)]
pub(super) struct Recovery {
    wake: Notify,
    /// Data losses the lease task saw.
    lost: AtomicU64,
    /// Of those, how many a finished pass covered.
    done: AtomicU64,
}

impl Recovery {
    /// Redis lost its data: start a pass (the caller does not wait).
    pub(super) fn data_lost(&self) {
        self.lost.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// Whether a loss is not yet covered by a finished pass.
    pub(super) fn pending(&self) -> bool {
        self.done.load(Ordering::Acquire) < self.lost.load(Ordering::Acquire)
    }
}

/// Re-assertion scripts in flight at once (one batch).
const BATCH: usize = 64;
/// The claims' wait, whatever the session count: time for a pass to start.
const BOUND_BASE: Duration = Duration::from_secs(5);
/// And per local session: ~20x what a re-assertion costs (~50 µs of Redis
/// and a share of a round trip in a batch), so 40,000 sessions bound the
/// wait at 45 s.
const BOUND_PER_SESSION: Duration = Duration::from_millis(1);

/// How long claims may wait for this node to re-assert `sessions`.
pub(super) fn bound(sessions: usize) -> Duration {
    BOUND_BASE + BOUND_PER_SESSION * sessions.min(u32::MAX as usize) as u32
}

/// The recovery task: re-asserts every local session each time Redis is
/// found to have lost its data.
pub(super) async fn run(node: Arc<Node>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = node.recover.wake.notified() => {}
            _ = node.store.tenant_writes().wake.notified() => {
                tenants_lost_writes(&node).await;
                continue;
            }
        }
        let covers = node.recover.lost.load(Ordering::Acquire);
        let me = node.member.node();
        let sessions = node.local.vouched();
        let wait = bound(sessions.len()).as_millis().to_string();
        if let Err(e) = node.store.nodes("recovering", me.as_str(), &[wait]).await {
            warn!(error = %e, "re-asserting: cannot extend the claims' wait; it ends at the recovery window");
        }
        let started = std::time::Instant::now();
        for batch in sessions.chunks(BATCH) {
            join_all(
                batch
                    .iter()
                    .map(|(tenant, v)| reassert(&node, tenant, &v.session, &v.conns)),
            )
            .await;
        }
        node.recover.done.store(covers, Ordering::Release);
        info!(
            sessions = sessions.len(),
            ms = started.elapsed().as_millis() as u64,
            "re-asserted local sessions"
        );
        // Another loss since the pass began: its own pass lifts the wait.
        if !node.recover.pending() {
            if let Err(e) = node.store.nodes("recovered", me.as_str(), &[]).await {
                warn!(error = %e, "re-asserting: cannot lift the claims' wait; it ends at its bound");
            }
        }
        // Sessions Redis lists under this node that it no longer holds
        // (ended in writes Redis lost) are detached now, not next round.
        node.bus.resync.notify_one();
    }
}

/// On a Redis Cluster: re-asserts this node's sessions of the tenants whose
/// shard lost writes, then reconciles (sessions ended in the lost writes
/// came back: their sockets here are detached).
async fn tenants_lost_writes(node: &Node) {
    let tenants: HashSet<Tenant> = node.store.tenant_writes().take_lost().into_iter().collect();
    if tenants.is_empty() {
        return;
    }
    let sessions: Vec<_> = node
        .local
        .vouched()
        .into_iter()
        .filter(|(t, _)| tenants.contains(t))
        .collect();
    let started = std::time::Instant::now();
    for batch in sessions.chunks(BATCH) {
        join_all(
            batch
                .iter()
                .map(|(tenant, v)| reassert(node, tenant, &v.session, &v.conns)),
        )
        .await;
    }
    info!(
        tenants = tenants.len(),
        sessions = sessions.len(),
        ms = started.elapsed().as_millis() as u64,
        "re-asserted local sessions of tenants whose redis shard lost writes"
    );
    node.bus.resync.notify_one();
}

/// Puts one local session back into Redis with its sockets `conns`.
pub(super) async fn reassert(node: &Node, tenant: &Tenant, session: &Session, conns: &[u64]) {
    if let Err(e) = node.member.ensure_registered(&node.store, tenant).await {
        warn!(error = %e, %tenant, "re-asserting: cannot record the tenant");
        return;
    }
    let me = node.member.node();
    let sockets: Vec<WSocket> = conns
        .iter()
        .map(|c| WSocket {
            n: me.as_str().to_string(),
            c: *c,
        })
        .collect();
    let mut w = WSession::from_session(session);
    w.node = me.as_str().to_string();
    let body = json!({"node": me.as_str(), "s": w, "k": sockets});
    let epoch = node.member.epoch();
    let r = match node
        .store
        .run(&SCRIPTS.reassert, tenant, &me, &epoch, &body)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, %tenant, session = %session.id, "re-asserting a session failed");
            return;
        }
    };
    if let Some(e) = &r.err {
        warn!(error = %e, %tenant, session = %session.id, "re-asserting a session was refused; the next recovery retries");
        return;
    }
    let tomb = match r.o.as_deref() {
        Some("ended") => r.t.and_then(|t| t.to_tombstone(tenant).ok()),
        Some("conflict") => {
            // Someone claimed the login or station while Redis was
            // empty: the later, registered claim wins; ours is told.
            let holder = r.h.and_then(|h| h.to_session(tenant).ok());
            let mut s = session.clone();
            s.state = SessionState::Ended(EndReason::Superseded);
            Some(Tombstone {
                session: s,
                ending: Ending {
                    reason: EndReason::Superseded,
                    by: EndedBy {
                        client: holder
                            .as_ref()
                            .map(|h| h.client.clone())
                            .unwrap_or_default(),
                        station: holder.as_ref().and_then(|h| h.station.clone()),
                        session_id: holder.map(|h| h.id),
                        at_ms: node.store.now_ms(),
                    },
                    message: EndReason::Superseded.default_message().to_string(),
                },
            })
        }
        _ => {
            node.member.knows(tenant);
            None
        }
    };
    if let Some(t) = tomb {
        // The hub stops vouching for the session as it tells its sockets.
        node.sink.publish(Event::Ended(Arc::new(t)));
    }
}
