//! The Redis registry's background work, one task each:
//!
//! - **membership**: refreshes this node's lease every `lease_ttl / 5`,
//!   notices when the node itself was declared dead (fenced: it drops its
//!   sockets and re-joins as a new incarnation), when Redis lost its data
//!   (the epoch changed: re-assert every local session), buries nodes whose
//!   lease ran out (their sessions become DISCONNECTED), and expires due
//!   sessions of every tenant.
//! - **bus**: turns pub/sub messages into [`Event`]s for local sockets and
//!   notices a lost subscription.
//! - **reconciler**: every `reconcile_interval`, and at once after a lost
//!   subscription, compares local sockets with Redis and delivers the
//!   forced logouts the bus missed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{PushInfo, PushKind, Value};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::wire::{self, WEvent, WSession, WSocket};
use super::{incarnation, Channel, RedisRegistry, SCRIPTS};
use crate::registry::{Event, RegistryError};
use crate::session::{
    now_ms, EndReason, EndedBy, Ending, SessionId, SessionState, Tenant, Tombstone,
};

/// Sessions per reconciliation script call, so no call blocks Redis long.
const SYNC_CHUNK: usize = 500;
/// Pages of a node's socket index read per tenant and round (SSCAN ends
/// far sooner; this bounds the loop should Redis misbehave).
const MAX_STALE_PAGES: usize = 100_000;
/// Sessions expired per script call.
const EXPIRE_BATCH: usize = 500;
/// A dead node's sessions detached per script call (~11 ms of Redis).
const REAP_BATCH: usize = 500;
/// Reap calls per tenant and dead node: bounds the loop (500 × 10,000
/// sessions, far beyond what a node holds).
const MAX_REAP_BATCHES: usize = 10_000;

pub(super) fn spawn(
    reg: RedisRegistry,
    rx: mpsc::Receiver<PushInfo>,
    overflowed: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    tokio::spawn(membership(reg.clone(), stop.clone()));
    tokio::spawn(bus(reg.clone(), rx, overflowed, stop.clone()));
    tokio::spawn(reconciler(reg, stop));
}

impl RedisRegistry {
    fn tick(&self) -> Duration {
        (self.inner.rcfg.lease_ttl / 5).max(Duration::from_millis(50))
    }

    /// Refreshes the lease; handles fencing and a changed epoch. Returns
    /// the nodes whose lease ran out.
    pub(super) async fn lease_once(&self) -> Result<Vec<String>, RegistryError> {
        let sent = self.inner.started.elapsed();
        let ttl = self.inner.rcfg.lease_ttl;
        let window = 2 * self.tick() + Duration::from_secs(1);
        let fresh = uuid::Uuid::new_v4().simple().to_string();
        let known = self.epoch();
        let r = self
            .nodes(
                "lease",
                &[
                    ttl.as_millis().to_string(),
                    fresh,
                    window.as_millis().to_string(),
                    known.clone(),
                ],
            )
            .await;
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                self.inner.ready.store(false, Ordering::Relaxed);
                self.health_changed();
                return Err(e);
            }
        };
        if r.dead {
            self.fence().await;
            return Err(super::fenced());
        }
        // Valid until the lease ends, measured from when the refresh was
        // sent, less a margin for clock rate differences.
        let valid = sent + ttl - ttl / 5;
        self.inner
            .lease_valid_ms
            .store(valid.as_millis() as u64, Ordering::Release);
        if known != r.epoch {
            if let Ok(mut e) = self.inner.epoch.write() {
                e.clone_from(&r.epoch);
            }
            if !known.is_empty() {
                warn!(old = %known, new = %r.epoch, "redis lost its data; re-asserting local sessions");
                metrics::counter!(crate::metrics_names::REDIS_DATA_LOSS).increment(1);
                self.inner.known.clear();
                self.inner.registered.clear();
                self.reassert_all().await;
            }
        } else if r.fresh && !known.is_empty() {
            // Our lease was gone without a new epoch: re-record our tenants.
            self.inner.registered.clear();
        }
        self.inner.ready.store(true, Ordering::Relaxed);
        self.health_changed();
        Ok(r.due)
    }

    /// This incarnation was declared dead while it was away (paused, cut
    /// off): nothing it holds is trusted any more. Drop every local socket
    /// (they reconnect and resume wherever the registry allows) and re-join
    /// under a new name.
    async fn fence(&self) {
        let old = self.node();
        let new = incarnation(&self.inner.base_node);
        warn!(%old, %new, "this node was declared dead by the cluster; dropping its sockets and re-joining");
        metrics::counter!(crate::metrics_names::REDIS_FENCED).increment(1);
        if let Ok(mut n) = self.inner.node.write() {
            *n = new;
        }
        self.inner.lease_valid_ms.store(0, Ordering::Release);
        self.inner.registered.clear();
        self.inner.local.clear();
        self.inner.sink.publish(Event::Drain);
        // Events for the new name come on new channels, subscribed to as
        // tenants are used again; the old name's are left.
        let stale: Vec<String> = self
            .inner
            .subscribed
            .iter()
            .filter(|c| {
                matches!(self.inner.rcfg.parse_channel(c),
                    Some((_, Channel::Events { node })) if node == old.as_str())
            })
            .map(|c| c.clone())
            .collect();
        let mut sub = self.inner.sub.lock().await;
        for channel in stale {
            self.inner.subscribed.remove(&channel);
            if let Err(e) = sub.unsubscribe(&channel).await {
                // Harmless: what still arrives there is dropped on receipt.
                warn!(error = %e, %channel, "could not leave the old incarnation's channel");
            }
        }
    }

    /// Declares dead nodes dead and detaches their sockets everywhere, or
    /// finishes such a reap another node left unfinished.
    async fn bury(&self, dead: &[String]) {
        let me = self.node();
        for node in dead.iter().filter(|n| n.as_str() != me.as_str()) {
            let tenants = match self.nodes_as("bury", node, &[]).await {
                Ok(r) => r.t,
                Err(_) => continue,
            };
            if tenants.is_empty() {
                continue;
            }
            info!(node = %node, tenants = tenants.len(), "node lease ran out; detaching its sockets");
            for t in tenants {
                if let Err(e) = self.reap(&t, node).await {
                    warn!(error = %e, tenant = %t, node = %node, "reaping a dead node failed; a later lease round retries");
                }
            }
        }
    }

    /// Fences `node` in tenant `t` and detaches its sockets there,
    /// REAP_BATCH sessions per script call (bounded), then records the
    /// tenant as reaped.
    pub(super) async fn reap(&self, t: &str, node: &str) -> Result<(), RegistryError> {
        let tenant = match Tenant::parse(t) {
            Ok(tenant) => tenant,
            // Nothing of ours can live under a malformed name: done with it.
            Err(_) => {
                self.nodes_as("reaped", node, &[t.to_string()]).await?;
                return Ok(());
            }
        };
        for _ in 0..MAX_REAP_BATCHES {
            let body = json!({"dead": node, "max": REAP_BATCH});
            if !self.run(&SCRIPTS.reap, &tenant, &body).await?.more {
                self.nodes_as("reaped", node, &[t.to_string()]).await?;
                return Ok(());
            }
        }
        Ok(())
    }

    /// Expires due sessions of every tenant. Any node may do it: the
    /// script is atomic, so two nodes racing end a session once.
    async fn expire_all(&self) {
        let mut conn = self.inner.conn.clone();
        let tenants: Vec<String> = match redis::cmd("SMEMBERS")
            .arg(self.inner.rcfg.nodes_key("tenants"))
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
            for _ in 0..16 {
                match self
                    .run(&SCRIPTS.expire, &tenant, &json!({"max": EXPIRE_BATCH}))
                    .await
                {
                    Ok(r) if r.more => continue,
                    _ => break,
                }
            }
        }
    }

    /// Puts every local session back after Redis lost its data.
    async fn reassert_all(&self) {
        let locals: Vec<_> = self
            .inner
            .local
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        for ((tenant, id), local) in locals {
            self.reassert(&tenant, &id, &local.session, &local.conns)
                .await;
        }
    }

    async fn reassert(
        &self,
        tenant: &Tenant,
        id: &SessionId,
        session: &crate::session::Session,
        conns: &[u64],
    ) {
        if let Err(e) = self.ensure_registered(tenant).await {
            warn!(error = %e, %tenant, "re-asserting: cannot record the tenant");
            return;
        }
        let node = self.node();
        let sockets: Vec<WSocket> = conns
            .iter()
            .map(|c| WSocket {
                n: node.as_str().to_string(),
                c: *c,
            })
            .collect();
        let mut w = WSession::from_session(session);
        w.node = node.as_str().to_string();
        let body = json!({"node": node.as_str(), "s": w, "k": sockets});
        let r = match self.run(&SCRIPTS.reassert, tenant, &body).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, %tenant, session = %id, "re-asserting a session failed");
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
                            at_ms: now_ms(),
                        },
                        message: EndReason::Superseded.default_message().to_string(),
                    },
                })
            }
            _ => {
                self.knows(tenant);
                None
            }
        };
        if let Some(t) = tomb {
            self.inner.local.remove(&(tenant.clone(), id.clone()));
            self.inner.sink.publish(Event::Ended(Arc::new(t)));
        }
    }

    /// Compares local sockets with Redis: delivers missed forced logouts,
    /// re-asserts sessions Redis forgot, detaches what Redis wrongly
    /// believes this node holds.
    async fn reconcile(&self) {
        let mut by_tenant: HashMap<Tenant, Vec<(SessionId, crate::session::Session, Vec<u64>)>> =
            HashMap::new();
        for e in self.inner.local.iter() {
            by_tenant.entry(e.key().0.clone()).or_default().push((
                e.key().1.clone(),
                e.value().session.clone(),
                e.value().conns.clone(),
            ));
        }
        // Tenants this node registered but holds nothing in any more still
        // need their stale socket records cleared.
        for t in self.inner.registered.iter() {
            by_tenant.entry(t.clone()).or_default();
        }
        let node = self.node();
        for (tenant, locals) in by_tenant {
            for chunk in locals.chunks(SYNC_CHUNK) {
                let have: Vec<_> = chunk
                    .iter()
                    .map(|(id, s, _)| json!({"sid": id.as_str(), "gen": s.generation.0}))
                    .collect();
                let body = json!({"node": node.as_str(), "have": have});
                let Some(r) = self.sync(&tenant, &body).await else {
                    return;
                };
                for t in &r.ended {
                    if let Ok(t) = t.to_tombstone(&tenant) {
                        metrics::counter!(crate::metrics_names::REDIS_RECONCILED).increment(1);
                        self.inner
                            .local
                            .remove(&(tenant.clone(), t.session.id.clone()));
                        self.inner.sink.publish(Event::Ended(Arc::new(t)));
                    }
                }
                for sid in &r.missing {
                    if let Some((id, s, conns)) = chunk.iter().find(|(id, ..)| id.as_str() == sid) {
                        self.reassert(&tenant, id, s, conns).await;
                    }
                }
            }
            if !self.clear_stale(&tenant, &node).await {
                return;
            }
        }
        metrics::counter!(crate::metrics_names::REDIS_RECONCILE_ROUNDS).increment(1);
    }

    /// Detaches the sockets Redis lists under this node for `tenant` that
    /// the node neither holds nor is attaching, reading the node's socket
    /// index a page at a time. Each page is checked against the node's
    /// sockets after it was read, so a socket attached meanwhile is held
    /// or in flight by then. Returns false when reconciliation must stop.
    async fn clear_stale(&self, tenant: &Tenant, node: &crate::session::NodeId) -> bool {
        let key = format!("{}n:{}", self.inner.rcfg.prefix(tenant), node.as_str());
        let mut cursor: u64 = 0;
        for _ in 0..MAX_STALE_PAGES {
            let before = now_ms();
            let mut conn = self.inner.conn.clone();
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
                .filter(|id| {
                    SessionId::parse(id).map_or(true, |sid| {
                        let key = (tenant.clone(), sid);
                        !self.inner.local.contains_key(&key)
                            && !self.inner.attaching.contains_key(&key)
                    })
                })
                .map(String::as_str)
                .collect();
            if !stale.is_empty() {
                metrics::counter!(crate::metrics_names::REDIS_STALE_SOCKETS)
                    .increment(stale.len() as u64);
                let body = json!({"node": node.as_str(), "stale": stale, "before": before});
                if self.sync(tenant, &body).await.is_none() {
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
    async fn sync(&self, tenant: &Tenant, body: &serde_json::Value) -> Option<wire::Reply> {
        match self.run(&SCRIPTS.sync, tenant, body).await {
            Ok(r) if r.err.is_none() => Some(r),
            Ok(r) => {
                if r.err.as_deref() == Some("fenced") {
                    self.inner.check_now.notify_one();
                }
                None
            }
            Err(e) => {
                warn!(error = %e, %tenant, "reconciliation failed; retrying next round");
                None
            }
        }
    }

    /// After a lost subscription: once the connection answers again,
    /// subscribes to every tenant channel again (harmless if the client
    /// library already did). Returns whether the bus is back.
    async fn resubscribe(&self) -> bool {
        let mut sub = self.inner.sub.lock().await;
        if !sub.ping().await {
            return false;
        }
        let channels: Vec<String> = self.inner.subscribed.iter().map(|c| c.clone()).collect();
        for ch in channels {
            if sub.subscribe(&ch).await.is_err() {
                return false;
            }
        }
        info!("redis subscription is back; reconciling");
        self.inner.subscription_ok.store(true, Ordering::Relaxed);
        self.health_changed();
        true
    }

    /// Turns one pub/sub message into an event for local delivery.
    fn deliver(&self, channel: &str, payload: &str) {
        let Some((tenant, kind)) = self.inner.rcfg.parse_channel(channel) else {
            return;
        };
        if let Channel::Events { node } = kind {
            if node != self.node().as_str() {
                // A channel of this node's name before it was fenced.
                return;
            }
        }
        let ev: WEvent = match serde_json::from_str(payload) {
            Ok(ev) => ev,
            Err(e) => {
                warn!(error = %e, %channel, "undecodable event on the bus");
                return;
            }
        };
        let event = match ev {
            WEvent::Ended { t } => t.to_tombstone(&tenant).map(|t| {
                self.inner
                    .local
                    .remove(&(tenant.clone(), t.session.id.clone()));
                Event::Ended(Arc::new(t))
            }),
            WEvent::Notice { sid, n } => SessionId::parse(&sid)
                .map_err(|e| RegistryError::Unavailable(e.to_string()))
                .map(|session_id| Event::Notice {
                    tenant: tenant.clone(),
                    session_id,
                    notice: Arc::new(n.to_notice()),
                }),
            WEvent::Presence { s, c, at } => {
                wire::presence_event(&tenant, &s, &c, at).map(|p| Event::Presence(Arc::new(p)))
            }
        };
        match event {
            Ok(event) => self.inner.sink.publish(event),
            Err(e) => warn!(error = %e, %channel, "malformed event on the bus"),
        }
    }
}

async fn membership(reg: RedisRegistry, stop: CancellationToken) {
    let mut last_expiry = Instant::now();
    // Since when Redis has answered without a gap. Nobody is declared dead
    // until every live node had a whole lease to refresh after an outage,
    // so a Redis outage alone never fences the nodes (and drops sockets).
    let mut reachable_since = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(reg.tick()) => {}
            _ = reg.inner.check_now.notified() => {}
        }
        match reg.lease_once().await {
            Ok(due) => {
                if !due.is_empty() && reachable_since.elapsed() > reg.inner.rcfg.lease_ttl {
                    reg.bury(&due).await;
                }
            }
            Err(e) => {
                warn!(error = %e, "lease refresh failed; node not ready");
                reachable_since = Instant::now() + reg.tick();
                continue;
            }
        }
        if last_expiry.elapsed() >= reg.tick() {
            last_expiry = Instant::now();
            reg.expire_all().await;
        }
    }
}

async fn bus(
    reg: RedisRegistry,
    mut rx: mpsc::Receiver<PushInfo>,
    overflowed: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    loop {
        let push = tokio::select! {
            _ = stop.cancelled() => return,
            push = rx.recv() => match push { Some(p) => p, None => return },
        };
        if overflowed.swap(false, Ordering::Relaxed) {
            warn!("event bus overflowed; reconciling");
            reg.inner.resync.notify_one();
        }
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                if !reg.lease_valid() {
                    // Possibly paused past our lease: deliver nothing
                    // until the lease is confirmed.
                    reg.inner.check_now.notify_one();
                    continue;
                }
                if let [Value::BulkString(ch), Value::BulkString(body), ..] = push.data.as_slice() {
                    reg.deliver(&String::from_utf8_lossy(ch), &String::from_utf8_lossy(body));
                }
            }
            PushKind::Disconnection => {
                warn!("lost the redis subscription; will reconcile when it is back");
                reg.inner.subscription_ok.store(false, Ordering::Relaxed);
                reg.health_changed();
                reg.inner.resync.notify_one();
            }
            _ => {}
        }
    }
}

async fn reconciler(reg: RedisRegistry, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(reg.inner.rcfg.reconcile_interval) => {}
            _ = tokio::time::sleep(reg.tick()), if !reg.inner.subscription_ok.load(Ordering::Relaxed) => {}
            _ = reg.inner.resync.notified() => {}
        }
        if !reg.inner.subscription_ok.load(Ordering::Relaxed) && !reg.resubscribe().await {
            continue;
        }
        reg.reconcile().await;
    }
}
