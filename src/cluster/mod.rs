//! The cluster: what makes several nodes on one Redis one broker, beside
//! the registry's scripts. It moves messages between nodes and keeps each
//! node's view of its own sockets honest; it decides nothing about logins
//! or stations (the scripts do).
//!
//! One task per job, none waiting on another:
//! - [`membership`]: this node's lease, identity (incarnation) and
//!   fencing; the burial of nodes whose lease ran out (on the lease task,
//!   right after the refresh that found them due).
//! - [`bus`]: channel names, subscriptions, and delivery of what arrives to
//!   the [`EventSink`].
//! - [`reconcile`]: this node's sockets compared with Redis (pub/sub is
//!   at-most-once).
//! - [`recovery`]: re-assertion of local sessions after Redis lost data.
//! - [`expiry`]: the per-tenant expiry sweep.
//!
//! The Redis registry asks [`Cluster`] who this node is, whether its lease
//! holds, and to subscribe it to a tenant before it attaches a socket.

mod bus;
mod expiry;
mod health;
mod membership;
mod reconcile;
mod recovery;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub(crate) use membership::{fenced, Membership};

use crate::connectivity::Health;
use crate::hub::sockets::LocalSockets;
use crate::registry::redis::conn;
use crate::registry::redis::store::Store;
use crate::registry::redis::RedisConfig;
use crate::registry::{EventSink, RegistryError};
use crate::session::{NodeId, Tenant};
use bus::{Bus, Channels};
use recovery::Recovery;

/// Pub/sub messages waiting for the bus task; more count as a lost
/// subscription (reconciliation catches up).
const INBOX: usize = 4096;

/// This node's membership of the cluster, for the Redis registry. Cheap to
/// clone.
#[derive(Clone)]
pub(crate) struct Cluster {
    node: Arc<Node>,
}

/// What the cluster's tasks share.
struct Node {
    store: Store,
    reconcile_interval: Duration,
    sink: Arc<dyn EventSink>,
    member: Membership,
    bus: Bus,
    /// This node's sockets (owned by the hub).
    local: Arc<LocalSockets>,
    /// Re-assertion after Redis lost its data.
    recover: Recovery,
    /// The node's connectivity, as its sockets were told (see [`health`]).
    health: Health,
}

impl Cluster {
    /// Subscribes, takes this node's first lease and starts the tasks
    /// (lease, expiry, bus, reconciliation, recovery) until `stop`.
    pub(crate) async fn join(
        store: Store,
        rcfg: &RedisConfig,
        node: NodeId,
        sink: Arc<dyn EventSink>,
        local: Arc<LocalSockets>,
        stop: CancellationToken,
    ) -> Result<Self, redis::RedisError> {
        let (tx, rx) = mpsc::channel(INBOX);
        let overflowed = Arc::new(AtomicBool::new(false));
        let flag = overflowed.clone();
        let sub = conn::subscriber(&rcfg.target, tx, move || {
            flag.store(true, Ordering::Relaxed)
        })
        .await?;
        let node = Arc::new(Node {
            store,
            reconcile_interval: rcfg.reconcile_interval,
            sink,
            member: Membership::new(node, rcfg.lease_ttl),
            bus: Bus::new(Channels::new(&rcfg.namespace), sub),
            local,
            recover: Recovery::default(),
            health: Health::new(),
        });
        membership::join(&node).await.map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::IoError, "lease", e.to_string()))
        })?;
        tokio::spawn(membership::lease(node.clone(), stop.clone()));
        tokio::spawn(expiry::run(node.clone(), stop.clone()));
        tokio::spawn(bus::run(node.clone(), rx, overflowed, stop.clone()));
        tokio::spawn(reconcile::run(node.clone(), stop.clone()));
        tokio::spawn(recovery::run(node.clone(), stop.clone()));
        tokio::spawn(health::run(node.clone(), stop));
        Ok(Cluster { node })
    }

    /// Who this node is and whether its lease holds.
    pub(crate) fn member(&self) -> &Membership {
        &self.node.member
    }

    /// Records the tenant in this node's membership (for reaping and
    /// expiry).
    pub(crate) async fn ensure_registered(&self, tenant: &Tenant) -> Result<(), RegistryError> {
        self.node
            .member
            .ensure_registered(&self.node.store, tenant)
            .await
    }

    /// Makes sure this node hears the events about its sockets in `tenant`.
    pub(crate) async fn ensure_subscribed(&self, tenant: &Tenant) -> Result<(), RegistryError> {
        self.node
            .bus
            .ensure_subscribed(tenant, &self.node.member.node())
            .await
    }

    /// Makes sure this node hears the tenant's presence changes (and the
    /// events about its sockets there).
    pub(crate) async fn watch(&self, tenant: &Tenant) -> Result<(), RegistryError> {
        self.ensure_subscribed(tenant).await?;
        self.node.bus.watch(tenant).await
    }

    /// Runs one expiry sweep now, as the expiry task does every tick; for
    /// tests that move a manual clock.
    pub(crate) async fn expire_due(&self) {
        expiry::sweep(&self.node).await;
    }

    /// Whether this node may serve writes: its lease holds, no bus
    /// message was lost since the last reconciliation, and it is not
    /// re-asserting its sessions after Redis lost its data.
    pub(crate) fn is_ready(&self) -> bool {
        self.node.member.is_ready() && self.node.bus.is_ok() && !self.node.recover.pending()
    }

    /// Leaves the cluster for good (after the node drained its sockets).
    pub(crate) async fn leave(&self) {
        self.node.member.leave(&self.node.store).await
    }

    /// This node's sockets by session.
    pub(crate) fn local(&self) -> &LocalSockets {
        &self.node.local
    }
}
