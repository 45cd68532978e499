//! Recovery from a Redis that lost its data: this node puts back every
//! session it holds sockets for (re-assertion), unless the login or
//! station was claimed meanwhile, in which case the local sockets are told
//! they were superseded.
//!
//! Its own task, woken by the lease task when the epoch changed, so a long
//! re-assertion never delays a lease refresh. The node reports not ready
//! until the pass is done, as it did when the lease task re-asserted. Reconciliation re-asserts
//! single sessions Redis turns out to have forgotten through [`reassert`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

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

/// The recovery task: re-asserts every local session each time Redis is
/// found to have lost its data.
pub(super) async fn run(node: Arc<Node>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = node.recover.wake.notified() => {}
        }
        let covers = node.recover.lost.load(Ordering::Acquire);
        for (tenant, v) in node.local.vouched() {
            reassert(&node, &tenant, &v.session, &v.conns).await;
        }
        node.recover.done.store(covers, Ordering::Release);
    }
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
