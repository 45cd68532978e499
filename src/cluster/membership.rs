//! Membership: this node's lease in Redis, its identity, and the end of
//! nodes that stopped renewing theirs.
//!
//! One task. Every `lease_ttl / 5` it refreshes the lease, and notices
//! when this node was declared dead while it was away (fenced: its sockets
//! are drained and it re-joins as a new incarnation) and when Redis lost
//! its data (the epoch changed: it wakes the recovery task, and does not
//! wait for it). Then it buries the nodes whose lease the refresh found
//! run out: declares them dead and detaches their sockets everywhere
//! (their sessions become DISCONNECTED), or finishes such a reap another
//! node left unfinished. The `bury` script re-checks the lease on Redis's
//! clock before it buries, so a node that renewed since the round that
//! found it due is left alone. A reap costs ~11 ms per 500 sessions, far
//! inside the lease.
//!
//! Time: leases are written and judged by the script on Redis's `TIME`,
//! and each refresh's reply re-anchors the registry [`Clock`] on it, so
//! session deadlines written by any node are on that one clock too.
//!
//! [`Clock`]: crate::clock::Clock

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashSet;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Node;
use crate::registry::redis::store::{Store, SCRIPTS};
use crate::registry::redis::wire::NodesReply;
use crate::registry::redis::{conn, sentinel};
use crate::registry::{Event, RegistryError};
use crate::session::{NodeId, Tenant};

/// A dead node's sessions detached per script call (~11 ms of Redis).
const REAP_BATCH: usize = 500;
/// Reap calls per tenant and dead node: bounds the loop (500 × 10,000
/// sessions, far beyond what a node holds).
const MAX_REAP_BATCHES: usize = 10_000;

/// How much later than this node another live node may reach Redis again
/// after an outage or a failover (see the lease task).
const OUTAGE_SLACK: Duration = Duration::from_millis(
    (conn::RESPONSE_TIMEOUT.as_millis() + conn::CONNECT_TIMEOUT.as_millis()) as u64
        + sentinel::FOLLOW_EVERY.as_millis() as u64,
);

/// Who this node is in the cluster and whether its lease holds.
pub(crate) struct Membership {
    /// The configured node name; incarnations append a random suffix.
    base: NodeId,
    /// This incarnation's name; replaced when the node finds itself fenced.
    node: RwLock<NodeId>,
    /// The Redis epoch this node last saw ('' before its first lease).
    epoch: RwLock<String>,
    pub(super) lease_ttl: Duration,
    /// Milliseconds since `started` until which the lease is surely valid.
    lease_valid_ms: AtomicU64,
    started: Instant,
    /// Whether the last lease refresh succeeded.
    ready: AtomicBool,
    /// Tenants this incarnation recorded in its membership set.
    registered: DashSet<Tenant>,
    /// Tenants this node saw with an epoch marker in the current epoch.
    known: DashSet<Tenant>,
    /// Wakes the lease task early (suspected data loss, fencing).
    check_now: Notify,
}

/// What one lease refresh found.
pub(super) enum Lease {
    /// Renewed; `due` are the nodes whose lease ran out; `data_lost` when
    /// Redis lost its data since the last refresh; `wait` when this
    /// refresh started the epoch and claims wait that long (in which every
    /// live node notices).
    Renewed {
        due: Vec<String>,
        data_lost: bool,
        wait: Option<Duration>,
    },
    /// This incarnation had been declared dead.
    Fenced,
}

impl Membership {
    pub(super) fn new(base: NodeId, lease_ttl: Duration) -> Self {
        Membership {
            node: RwLock::new(incarnation(&base)),
            base,
            epoch: RwLock::new(String::new()),
            lease_ttl,
            lease_valid_ms: AtomicU64::new(0),
            started: Instant::now(),
            ready: AtomicBool::new(false),
            registered: DashSet::new(),
            known: DashSet::new(),
            check_now: Notify::new(),
        }
    }

    /// The lease task's period.
    pub(super) fn tick(&self) -> Duration {
        (self.lease_ttl / 5).max(Duration::from_millis(50))
    }

    /// This incarnation's name.
    pub(crate) fn node(&self) -> NodeId {
        self.node
            .read()
            .map(|n| n.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The Redis epoch this node knows.
    pub(crate) fn epoch(&self) -> String {
        self.epoch
            .read()
            .map(|e| e.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Notes that the tenant's epoch marker exists (the reply of a script
    /// that creates or requires it succeeded): from now on its absence
    /// means Redis lost data.
    pub(crate) fn knows(&self, tenant: &Tenant) {
        if !self.known.contains(tenant) {
            self.known.insert(tenant.clone());
        }
    }

    /// Whether this node saw the tenant's epoch marker in this epoch.
    pub(crate) fn known(&self, tenant: &Tenant) -> bool {
        self.known.contains(tenant)
    }

    /// The tenants this incarnation recorded itself in.
    pub(super) fn registered(&self) -> Vec<Tenant> {
        self.registered.iter().map(|t| t.clone()).collect()
    }

    /// Asks the lease task to check the lease now (a script said this node
    /// is fenced or Redis lost data).
    pub(crate) fn alarm(&self) {
        self.check_now.notify_one();
    }

    /// Whether the last lease refresh reached Redis.
    pub(super) fn reached(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Whether the last refresh succeeded and the lease is surely valid.
    pub(super) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.lease_valid()
    }

    /// Whether this node's lease is surely still valid. A node that was
    /// paused past its lease must not write for its sockets.
    pub(super) fn lease_valid(&self) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        now < self.lease_valid_ms.load(Ordering::Acquire)
    }

    pub(crate) fn check_lease(&self) -> Result<(), RegistryError> {
        if self.lease_valid() {
            Ok(())
        } else {
            self.alarm();
            Err(RegistryError::Unavailable(
                "this node's lease in redis is not confirmed; retry on another node".into(),
            ))
        }
    }

    /// Records the tenant in the node's membership (for reaping and expiry).
    pub(crate) async fn ensure_registered(
        &self,
        store: &Store,
        tenant: &Tenant,
    ) -> Result<(), RegistryError> {
        if self.registered.contains(tenant) {
            return Ok(());
        }
        let r = self
            .nodes(store, "tenant", &[tenant.as_str().to_string()])
            .await?;
        if r.dead {
            self.alarm();
            return Err(fenced());
        }
        self.registered.insert(tenant.clone());
        Ok(())
    }

    /// Runs the membership script for this node.
    async fn nodes(
        &self,
        store: &Store,
        op: &str,
        args: &[String],
    ) -> Result<NodesReply, RegistryError> {
        store.nodes(op, self.node().as_str(), args).await
    }

    /// Refreshes the lease.
    pub(super) async fn renew(&self, store: &Store) -> Result<Lease, RegistryError> {
        let sent = self.started.elapsed();
        let sent_at = tokio::time::Instant::now();
        let ttl = self.lease_ttl;
        let fresh = uuid::Uuid::new_v4().simple().to_string();
        let known = self.epoch();
        // How long claims wait after a new epoch for every live node to
        // refresh its lease (every tick) and so notice it; a node that
        // notices then holds claims itself until it re-asserted. A node
        // that starts on a Redis without an epoch waits this out before it
        // serves (a new deployment: it cannot tell one from a loss), so
        // its window is the shortest that covers one tick of every node.
        let window = if known.is_empty() {
            self.tick() + Duration::from_millis(500)
        } else {
            2 * self.tick() + Duration::from_secs(1)
        };
        let args = [
            ttl.as_millis().to_string(),
            fresh,
            window.as_millis().to_string(),
            known.clone(),
            store.writes_seen(),
        ];
        let r = match self.nodes(store, "lease", &args).await {
            Ok(r) => r,
            Err(e) => {
                self.ready.store(false, Ordering::Relaxed);
                return Err(e);
            }
        };
        if let Some(redis_ms) = r.now {
            follow_redis(store, redis_ms as i64, sent_at);
        }
        if r.dead {
            return Ok(Lease::Fenced);
        }
        // Valid until the lease ends, measured from when the refresh was
        // sent, less a margin for clock rate differences.
        let valid = sent + ttl - ttl / 5;
        self.lease_valid_ms
            .store(valid.as_millis() as u64, Ordering::Release);
        let mut data_lost = false;
        let wc = r.wc.unwrap_or(0.0) as u64;
        if known != r.epoch {
            // A new epoch: the write counter is Redis's from now on.
            store.reset_writes(wc);
            if let Ok(mut e) = self.epoch.write() {
                e.clone_from(&r.epoch);
            }
            if r.lost {
                warn!(seen = %args[4], "redis lost writes this node saw acknowledged (failover to a replica that was behind?); starting a recovery");
                metrics::counter!(crate::metrics_names::REDIS_LOST_WRITES).increment(1);
            }
            if !known.is_empty() {
                warn!(old = %known, new = %r.epoch, "redis lost its data; re-asserting local sessions");
                metrics::counter!(crate::metrics_names::REDIS_DATA_LOSS).increment(1);
                self.known.clear();
                self.registered.clear();
                data_lost = true;
            }
        } else {
            store.saw_writes(wc);
            if r.fresh && !known.is_empty() {
                // Our lease was gone without a new epoch: re-record our tenants.
                self.registered.clear();
            }
        }
        self.ready.store(true, Ordering::Relaxed);
        Ok(Lease::Renewed {
            due: r.due,
            data_lost,
            wait: r.created.then_some(window),
        })
    }

    /// Takes a new incarnation name after this one was declared dead;
    /// returns the old one. Nothing the old one recorded is trusted.
    fn reincarnate(&self) -> NodeId {
        let new = incarnation(&self.base);
        let old = self.node();
        warn!(%old, %new, "this node was declared dead by the cluster; dropping its sockets and re-joining");
        metrics::counter!(crate::metrics_names::REDIS_FENCED).increment(1);
        if let Ok(mut n) = self.node.write() {
            *n = new;
        }
        self.lease_valid_ms.store(0, Ordering::Release);
        self.registered.clear();
        old
    }

    /// Declares dead nodes dead and detaches their sockets everywhere, or
    /// finishes such a reap another node left unfinished.
    async fn bury(&self, store: &Store, dead: &[String]) {
        let me = self.node();
        for node in dead.iter().filter(|n| n.as_str() != me.as_str()) {
            let tenants = match store.nodes("bury", node, &[]).await {
                Ok(r) => r.t,
                Err(_) => continue,
            };
            if tenants.is_empty() {
                continue;
            }
            info!(node = %node, tenants = tenants.len(), "node lease ran out; detaching its sockets");
            for t in tenants {
                if let Err(e) = self.reap(store, &t, node).await {
                    warn!(error = %e, tenant = %t, node = %node, "reaping a dead node failed; a later lease round retries");
                }
            }
        }
    }

    /// Fences `node` in tenant `t` and detaches its sockets there,
    /// REAP_BATCH sessions per script call (bounded), then records the
    /// tenant as reaped.
    async fn reap(&self, store: &Store, t: &str, node: &str) -> Result<(), RegistryError> {
        let tenant = match Tenant::parse(t) {
            Ok(tenant) => tenant,
            // Nothing of ours can live under a malformed name: done with it.
            Err(_) => {
                store.nodes("reaped", node, &[t.to_string()]).await?;
                return Ok(());
            }
        };
        for _ in 0..MAX_REAP_BATCHES {
            let body = json!({"dead": node, "max": REAP_BATCH});
            let r = store
                .run(&SCRIPTS.reap, &tenant, &self.node(), &self.epoch(), &body)
                .await?;
            if let Some(e) = r.err {
                // (lost writes, fenced): a later round retries.
                return Err(RegistryError::Unavailable(format!("reap refused: {e}")));
            }
            if !r.more {
                store.nodes("reaped", node, &[t.to_string()]).await?;
                return Ok(());
            }
        }
        Ok(())
    }

    /// Leaves for good: stragglers of this incarnation are fenced, and
    /// sessions this node still held sockets for are detached now rather
    /// than after the lease runs out.
    pub(crate) async fn leave(&self, store: &Store) {
        if let Ok(r) = self.nodes(store, "leave", &[]).await {
            let me = self.node();
            for t in r.t {
                if let Err(e) = self.reap(store, &t, me.as_str()).await {
                    warn!(error = %e, tenant = %t, "leaving: could not detach sockets; another node will");
                }
            }
        }
    }
}

/// Keeps the registry clock on Redis's time (`redis_ms`, read during the
/// round trip that began at `sent`), so the `now` this node gives the
/// scripts is the one every node gives them. A step of a second or more is
/// this host's wall clock (or an old anchor) being off: worth a line.
fn follow_redis(store: &Store, redis_ms: i64, sent: tokio::time::Instant) {
    let step = store
        .clock()
        .follow(redis_ms, sent, tokio::time::Instant::now());
    if step.abs() >= 1_000 {
        info!(
            step_ms = step,
            "registry clock set to redis's time (this host's wall clock differs)"
        );
    }
}

/// A fresh incarnation name: the node's name and a random suffix.
fn incarnation(base: &NodeId) -> NodeId {
    let suffix: u32 = rand::random();
    NodeId::parse(&format!("{}:{suffix:08x}", base.as_str())).unwrap_or_else(|_| base.clone())
}

/// The error a fenced node answers with.
pub(crate) fn fenced() -> RegistryError {
    RegistryError::Unavailable(
        "this node was declared dead by the cluster (its lease ran out); it is re-joining, reconnect"
            .into(),
    )
}

/// This incarnation was declared dead while it was away (paused, cut off):
/// nothing it holds is trusted any more. Drain every local socket (they
/// reconnect and resume wherever the registry allows) and re-join under a
/// new name.
async fn fence(node: &Node) {
    let old = node.member.reincarnate();
    // The hub stops vouching for every local socket as it drains them.
    node.sink.publish(Event::Drain);
    // Events for the new name come on new channels, subscribed to as
    // tenants are used again; the old name's are left.
    node.bus.leave_incarnation(&old).await;
}

/// The first lease, before the node serves anything: it must be a member
/// before it writes for sockets.
pub(super) async fn join(node: &Node) -> Result<(), RegistryError> {
    // Bounded: a second epoch started right away would be another loss.
    for _ in 0..3 {
        match node.member.renew(&node.store).await? {
            Lease::Renewed {
                wait: Some(window), ..
            } => {
                // This node started the epoch: Redis is new, or lost its
                // data and this is the first lease since. Claims are
                // refused until every live node had the time to notice and
                // re-assert; serve after that, on a fresh lease.
                info!(
                    wait_ms = window.as_millis() as u64,
                    "no epoch in redis (new deployment, or redis lost its data): letting other nodes re-assert before serving"
                );
                tokio::time::sleep(window).await;
            }
            Lease::Renewed { .. } => return Ok(()),
            Lease::Fenced => {
                fence(node).await;
                return Err(fenced());
            }
        }
    }
    Err(RegistryError::Unavailable(
        "redis keeps losing its epoch while this node joins".into(),
    ))
}

/// The lease task: refreshes the lease every tick (or when alarmed) and
/// buries the nodes whose lease ran out.
pub(super) async fn lease(node: Arc<Node>, stop: CancellationToken) {
    let member = &node.member;
    // Since when Redis has answered without a gap. Nobody is declared dead
    // until every live node had a whole lease to refresh after an outage,
    // so a Redis outage alone never fences the nodes (and drops sockets).
    // Other nodes may reach Redis again later than this one: a command
    // stuck on a hung old master times out, the probe of a master
    // Sentinel still names times out, the switch is noticed a follow
    // period later; they get that long too.
    let mut reachable_since = Instant::now();
    let mut grace = member.lease_ttl;
    // Behind Sentinel: a switch to another master is checked at once
    // (the new master may lack the last writes).
    let conn = node.store.conn();
    let switched = || async {
        match conn.switched() {
            Some(n) => n.notified().await,
            None => std::future::pending().await,
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(member.tick()) => {}
            _ = member.check_now.notified() => {}
            _ = switched() => {}
        }
        let renewed = member.renew(&node.store).await;
        super::health::changed(&node);
        match renewed {
            Ok(Lease::Renewed {
                due: dead,
                data_lost,
                ..
            }) => {
                if data_lost {
                    node.recover.data_lost();
                }
                if !dead.is_empty() && reachable_since.elapsed() > grace {
                    member.bury(&node.store, &dead).await;
                }
            }
            Ok(Lease::Fenced) => {
                fence(&node).await;
                warn!(error = %fenced(), "lease refresh failed; node not ready");
                reachable_since = Instant::now() + member.tick();
                grace = member.lease_ttl + OUTAGE_SLACK;
            }
            Err(e) => {
                warn!(error = %e, "lease refresh failed; node not ready");
                reachable_since = Instant::now() + member.tick();
                grace = member.lease_ttl + OUTAGE_SLACK;
            }
        }
    }
}
