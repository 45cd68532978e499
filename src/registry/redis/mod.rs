//! The Redis registry: the same contract as the embedded one, shared by
//! every node of a cluster.
//!
//! Every transition is one Lua script (`lua/`), so both uniqueness checks,
//! the end of a displaced session and the grant happen atomically in Redis.
//! All keys of a tenant share the hash tag `{<tenant>}`, so each script
//! touches one Redis Cluster slot. Scripts publish what happened on the
//! tenant's channel in the same step (sharded pub/sub on a cluster), and
//! each node turns the messages into [`Event`]s for its local sockets.
//!
//! Pub/sub is at-most-once, so this module also owns what makes delivery
//! reliable: a node reconciles its sockets against Redis after it lost its
//! subscription and every `reconcile_interval` ([`tasks`]). Node liveness,
//! fencing, expiry and recovery from a Redis that lost its data are in
//! [`tasks`] too.

mod conn;
mod health;
mod tasks;
mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::{DashMap, DashSet};
use redis::Script;
use serde::Serialize;
use serde_json::json;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub use conn::Target;
use conn::{Conn, Sub};
use wire::{Reply, WNotice, WSession};

use super::{
    Attached, ClaimOutcome, EventSink, EvictTarget, NotifyCounts, NotifyTarget, Page, Registry,
    RegistryConfig, RegistryError, SessionKey, SocketId, StationInfo,
};
use crate::connectivity::Health;
use crate::session::{
    now_ms, ClaimRequest, ConflictPolicy, Generation, Login, NodeId, Notice, Session, SessionId,
    Station, Tenant,
};

/// Settings of the Redis registry beyond the common ones.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    pub target: Target,
    /// A node whose lease is older than this is declared dead.
    pub lease_ttl: Duration,
    /// Periodic reconciliation of local sockets against Redis.
    pub reconcile_interval: Duration,
    /// Prefix of every key and channel, so several deployments can share
    /// one Redis.
    pub namespace: String,
}

static PRELUDE: &str = include_str!("lua/prelude.lua");

fn tenant_script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

struct Scripts {
    claim: Script,
    release: Script,
    evict: Script,
    read: Script,
    notify: Script,
    socket: Script,
    expire: Script,
    reap: Script,
    sync: Script,
    reassert: Script,
    nodes: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    claim: tenant_script(include_str!("lua/claim.lua")),
    release: tenant_script(include_str!("lua/release.lua")),
    evict: tenant_script(include_str!("lua/evict.lua")),
    read: tenant_script(include_str!("lua/read.lua")),
    notify: tenant_script(include_str!("lua/notify.lua")),
    socket: tenant_script(include_str!("lua/socket.lua")),
    expire: tenant_script(include_str!("lua/expire.lua")),
    reap: tenant_script(include_str!("lua/reap.lua")),
    sync: tenant_script(include_str!("lua/sync.lua")),
    reassert: tenant_script(include_str!("lua/reassert.lua")),
    nodes: Script::new(include_str!("lua/nodes.lua")),
});

impl RedisConfig {
    /// A key of the node membership (all under the `{nodes}` hash tag).
    fn nodes_key(&self, name: &str) -> String {
        format!("{}:{{nodes}}:{name}", self.namespace)
    }

    /// The prefix of every key of a tenant: `<ns>:{<tenant>}:`.
    fn prefix(&self, tenant: &Tenant) -> String {
        format!("{}:{{{}}}:", self.namespace, tenant.as_str())
    }

    /// The channel of the events (endings, notices) about sockets `node`
    /// holds in `tenant`: `<ns>:{<tenant>}:ev:<node>`. Scripts publish
    /// each event only to its holders' channels, so no other node is woken.
    fn events_channel(&self, tenant: &Tenant, node: &str) -> String {
        format!("{}ev:{node}", self.prefix(tenant))
    }

    /// A tenant's presence channel, `<ns>:{<tenant>}:pr`.
    fn presence_channel(&self, tenant: &Tenant) -> String {
        format!("{}pr", self.prefix(tenant))
    }

    /// The tenant of one of this namespace's channels, and what it carries.
    fn parse_channel<'c>(&self, channel: &'c str) -> Option<(Tenant, Channel<'c>)> {
        let inner = channel
            .strip_prefix(self.namespace.as_str())?
            .strip_prefix(":{")?;
        // Tenant names cannot contain '}'.
        let (tenant, rest) = inner.split_once('}')?;
        let kind = match rest {
            ":pr" => Channel::Presence,
            _ => Channel::Events {
                node: rest.strip_prefix(":ev:")?,
            },
        };
        Some((Tenant::parse(tenant).ok()?, kind))
    }
}

/// What a tenant's channel carries.
#[derive(Debug, PartialEq, Eq)]
enum Channel<'c> {
    /// Endings and notices for the sockets this node incarnation holds.
    Events { node: &'c str },
    /// Presence changes, for watchers.
    Presence,
}

/// socket.lua's request with only the fields every op has.
fn socket_req<'a>(
    op: &'static str,
    id: &'a SessionId,
    generation: Generation,
    node: &'a NodeId,
) -> wire::SocketReq<'a> {
    wire::SocketReq {
        op,
        sid: id.as_str(),
        gen: generation.0,
        node: node.as_str(),
        conn: None,
        status: None,
        nid: None,
    }
}

/// Sessions a tenant-wide notice reaches per script call.
const NOTIFY_BATCH: usize = 500;
/// Script calls per tenant-wide notice (500 × 10,000 sessions).
const MAX_NOTIFY_BATCHES: usize = 10_000;

fn script_limits(c: &RegistryConfig) -> [u64; 7] {
    let ms = |d: Duration| d.as_millis() as u64;
    [
        ms(c.connect_timeout),
        ms(c.grace),
        ms(c.tombstone_ttl),
        c.max_sockets_per_session as u64,
        ms(c.idempotency_ttl),
        c.max_notices_per_session as u64,
        ms(c.default_notice_ttl),
    ]
}

/// One attach in flight, counted in [`Inner::attaching`] while it lives
/// (also when the attach fails or its future is dropped).
struct Attaching<'a> {
    map: &'a DashMap<(Tenant, SessionId), usize>,
    key: (Tenant, SessionId),
}

impl<'a> Attaching<'a> {
    fn new(map: &'a DashMap<(Tenant, SessionId), usize>, key: (Tenant, SessionId)) -> Self {
        *map.entry(key.clone()).or_insert(0) += 1;
        Attaching { map, key }
    }
}

impl Drop for Attaching<'_> {
    fn drop(&mut self) {
        if let Some(mut n) = self.map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
        self.map.remove_if(&self.key, |_, n| *n == 0);
    }
}

/// A session this node holds sockets for, as last seen in Redis: what it
/// needs to reconcile, and to put back if Redis loses its data.
#[derive(Clone, Debug)]
struct Local {
    session: Session,
    conns: Vec<u64>,
}

/// The shared registry. Cheap to clone.
#[derive(Clone)]
pub struct RedisRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: RegistryConfig,
    rcfg: RedisConfig,
    conn: Conn,
    sub: Mutex<Sub>,
    sink: Arc<dyn EventSink>,
    pubcmd: &'static str,
    /// This incarnation's name; replaced when the node finds itself fenced.
    node: RwLock<NodeId>,
    base_node: NodeId,
    epoch: RwLock<String>,
    /// The scripts' fixed limits, in `prelude.lua`'s argument order: connect
    /// timeout, grace, tombstone ttl (ms), max sockets, idempotency ttl
    /// (ms), max notices, default notice ttl (ms).
    limits: [u64; 7],
    /// The global epoch key on one Redis; empty on a cluster (tenants'
    /// markers stand alone there).
    epoch_key: String,
    /// The channels this node subscribed to: its event channel of each
    /// tenant it holds sockets in (named after the incarnation, so a
    /// re-joined node subscribes afresh), and the presence channel of each
    /// tenant it has watchers in.
    subscribed: DashSet<String>,
    /// Tenants this incarnation recorded in its membership set.
    registered: DashSet<Tenant>,
    /// Tenants this node saw with an epoch marker in the current epoch.
    known: DashSet<Tenant>,
    local: DashMap<(Tenant, SessionId), Local>,
    /// Attaches in flight per session, counted from before the attach
    /// script is sent until its socket is in `local` (or was refused): a
    /// socket Redis lists under this node that is in neither map is stale.
    attaching: DashMap<(Tenant, SessionId), usize>,
    ready: AtomicBool,
    subscription_ok: AtomicBool,
    /// The node's connectivity, fed from the flags here (see `health`).
    health: Health,
    /// Milliseconds since `started` until which the lease is surely valid.
    lease_valid_ms: AtomicU64,
    started: Instant,
    /// Wakes the membership task early (suspected data loss, fencing).
    check_now: Notify,
    /// Wakes the reconciler early (lost subscription).
    resync: Notify,
}

/// Why the Redis registry could not start.
#[derive(Debug, thiserror::Error)]
#[error("redis at {urls}: {source}")]
pub struct ConnectError {
    urls: String,
    source: redis::RedisError,
}

impl RedisRegistry {
    /// Connects, registers this node's lease and starts the background
    /// tasks (membership, expiry, bus, reconciliation) until `stop`.
    pub async fn start(
        cfg: RegistryConfig,
        rcfg: RedisConfig,
        sink: Arc<dyn EventSink>,
        stop: CancellationToken,
    ) -> Result<Self, ConnectError> {
        let cerr = |source| ConnectError {
            urls: rcfg.target.urls.join(","),
            source,
        };
        let conn = conn::commands(&rcfg.target).await.map_err(cerr)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        let overflowed = Arc::new(AtomicBool::new(false));
        let flag = overflowed.clone();
        let sub = conn::subscriber(&rcfg.target, tx, move || {
            flag.store(true, Ordering::Relaxed)
        })
        .await
        .map_err(cerr)?;
        let base_node = cfg.node.clone();
        let inner = Arc::new(Inner {
            pubcmd: conn::publish_command(&rcfg.target),
            limits: script_limits(&cfg),
            epoch_key: if rcfg.target.cluster {
                String::new()
            } else {
                rcfg.nodes_key("epoch")
            },
            node: RwLock::new(incarnation(&base_node)),
            base_node,
            cfg,
            rcfg,
            conn,
            sub: Mutex::new(sub),
            sink,
            epoch: RwLock::new(String::new()),
            subscribed: DashSet::new(),
            registered: DashSet::new(),
            known: DashSet::new(),
            local: DashMap::new(),
            attaching: DashMap::new(),
            ready: AtomicBool::new(false),
            subscription_ok: AtomicBool::new(true),
            health: Health::new(),
            lease_valid_ms: AtomicU64::new(0),
            started: Instant::now(),
            check_now: Notify::new(),
            resync: Notify::new(),
        });
        let registry = RedisRegistry { inner };
        // The first lease before serving anything: the node must be a
        // member before it writes for sockets.
        registry.lease_once().await.map_err(|e| ConnectError {
            urls: registry.inner.rcfg.target.urls.join(","),
            source: redis::RedisError::from((redis::ErrorKind::IoError, "lease", e.to_string())),
        })?;
        tokio::spawn(health::lease_watch(registry.clone(), stop.clone()));
        tasks::spawn(registry.clone(), rx, overflowed, stop);
        Ok(registry)
    }

    fn node(&self) -> NodeId {
        self.inner
            .node
            .read()
            .map(|n| n.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn epoch(&self) -> String {
        self.inner
            .epoch
            .read()
            .map(|e| e.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Runs a tenant script and decodes its reply (errors still inside).
    async fn run<R: Serialize>(
        &self,
        script: &Script,
        tenant: &Tenant,
        req: &R,
    ) -> Result<Reply, RegistryError> {
        let p = self.inner.rcfg.prefix(tenant);
        let req = serde_json::to_string(req)
            .map_err(|e| RegistryError::Unavailable(format!("encoding a request: {e}")))?;
        let mut conn = self.inner.conn.clone();
        let raw: String = script
            .key(format!("{p}ep"))
            .arg(&p)
            .arg(now_ms())
            .arg(self.inner.pubcmd)
            .arg(self.node().as_str())
            .arg(&self.inner.limits[..])
            .arg(self.epoch())
            .arg(&self.inner.epoch_key)
            .arg(req)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let reply: Reply = serde_json::from_str(&raw)
            .map_err(|e| RegistryError::Unavailable(format!("undecodable reply {raw:?}: {e}")))?;
        Ok(reply)
    }

    /// Notes that the tenant's epoch marker exists (the reply of a script
    /// that creates or requires it succeeded): from now on its absence
    /// means Redis lost data.
    fn knows(&self, tenant: &Tenant) {
        if !self.inner.known.contains(tenant) {
            self.inner.known.insert(tenant.clone());
        }
    }

    /// Runs the membership script for this node.
    async fn nodes(&self, op: &str, args: &[String]) -> Result<wire::NodesReply, RegistryError> {
        self.nodes_as(op, self.node().as_str(), args).await
    }

    /// Runs the membership script about `node` (this one or a dead one).
    async fn nodes_as(
        &self,
        op: &str,
        node: &str,
        args: &[String],
    ) -> Result<wire::NodesReply, RegistryError> {
        let mut conn = self.inner.conn.clone();
        let mut inv = SCRIPTS.nodes.key(self.inner.rcfg.nodes_key("leases"));
        inv.arg(op).arg(node).arg(now_ms());
        for a in args {
            inv.arg(a);
        }
        let raw: String = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        serde_json::from_str(&raw)
            .map_err(|e| RegistryError::Unavailable(format!("undecodable reply {raw:?}: {e}")))
    }

    /// Makes sure this node hears the tenant's events.
    async fn ensure_subscribed(&self, tenant: &Tenant) -> Result<(), RegistryError> {
        let channel = self.inner.rcfg.events_channel(tenant, self.node().as_str());
        self.subscribe_once(channel).await
    }

    /// Subscribes to `channel` unless this node already did.
    async fn subscribe_once(&self, channel: String) -> Result<(), RegistryError> {
        if self.inner.subscribed.contains(&channel) {
            return Ok(());
        }
        self.inner
            .sub
            .lock()
            .await
            .subscribe(&channel)
            .await
            .map_err(unavailable)?;
        self.inner.subscribed.insert(channel);
        Ok(())
    }

    /// Records the tenant in the node's membership (for reaping and expiry).
    async fn ensure_registered(&self, tenant: &Tenant) -> Result<(), RegistryError> {
        if self.inner.registered.contains(tenant) {
            return Ok(());
        }
        let r = self.nodes("tenant", &[tenant.as_str().to_string()]).await?;
        if r.dead {
            self.inner.check_now.notify_one();
            return Err(fenced());
        }
        self.inner.registered.insert(tenant.clone());
        Ok(())
    }

    /// Whether this node's lease is surely still valid. A node that was
    /// paused past its lease must not write for its sockets.
    fn lease_valid(&self) -> bool {
        let now = self.inner.started.elapsed().as_millis() as u64;
        now < self.inner.lease_valid_ms.load(Ordering::Acquire)
    }

    fn check_lease(&self) -> Result<(), RegistryError> {
        if self.lease_valid() {
            Ok(())
        } else {
            self.inner.check_now.notify_one();
            Err(RegistryError::Unavailable(
                "this node's lease in redis is not confirmed; retry on another node".into(),
            ))
        }
    }

    fn session(&self, tenant: &Tenant, w: Option<&WSession>) -> Result<Session, RegistryError> {
        match w {
            Some(w) => w.to_session(tenant),
            None => Err(RegistryError::Unavailable(
                "redis reply without a session".into(),
            )),
        }
    }

    /// Maps a script's error code to the registry's error.
    fn error(&self, tenant: &Tenant, reply: &Reply, target: &str) -> RegistryError {
        let code = reply.err.as_deref().unwrap_or("");
        let sid = || SessionId::parse(target);
        match code {
            "notfound" => match sid() {
                Ok(id) => RegistryError::SessionNotFound {
                    tenant: tenant.clone(),
                    id,
                },
                Err(_) => RegistryError::Unavailable(format!("not found: {target}")),
            },
            "ended" => match sid() {
                Ok(id) => RegistryError::SessionEnded { id },
                Err(_) => RegistryError::Unavailable(format!("ended: {target}")),
            },
            "nologin" => match Login::parse(target) {
                Ok(login) => RegistryError::LoginNotFound {
                    tenant: tenant.clone(),
                    login,
                },
                Err(e) => RegistryError::Unavailable(e.to_string()),
            },
            "nostation" => match Station::parse(target) {
                Ok(station) => RegistryError::StationNotFound {
                    tenant: tenant.clone(),
                    station,
                },
                Err(e) => RegistryError::Unavailable(e.to_string()),
            },
            "stale" => match sid() {
                Ok(id) => RegistryError::StaleGeneration {
                    id,
                    current: reply.cur.unwrap_or(0),
                    presented: 0,
                },
                Err(e) => RegistryError::Unavailable(e.to_string()),
            },
            "toomany" => match sid() {
                Ok(id) => RegistryError::TooManySockets {
                    id,
                    limit: self.inner.cfg.max_sockets_per_session,
                },
                Err(e) => RegistryError::Unavailable(e.to_string()),
            },
            "fenced" => {
                self.inner.check_now.notify_one();
                fenced()
            }
            "noepoch" | "dataloss" => {
                self.inner.check_now.notify_one();
                RegistryError::Unavailable(
                    "redis lost its data; nodes are re-registering their sessions, retry in a few seconds"
                        .into(),
                )
            }
            "recovering" => RegistryError::Unavailable(
                "redis is being repopulated after losing its data; claims resume in a few seconds"
                    .into(),
            ),
            other => RegistryError::Unavailable(format!("redis script error {other:?}")),
        }
    }

    fn remember(&self, tenant: &Tenant, session: &Session, conn: u64) {
        let mut entry = self
            .inner
            .local
            .entry((tenant.clone(), session.id.clone()))
            .or_insert_with(|| Local {
                session: session.clone(),
                conns: Vec::new(),
            });
        entry.session = session.clone();
        if !entry.conns.contains(&conn) {
            entry.conns.push(conn);
        }
    }

    fn forget(&self, tenant: &Tenant, id: &SessionId, conn: u64) {
        let key = (tenant.clone(), id.clone());
        let empty = match self.inner.local.get_mut(&key) {
            Some(mut l) => {
                l.conns.retain(|c| *c != conn);
                l.conns.is_empty()
            }
            None => false,
        };
        if empty {
            self.inner.local.remove_if(&key, |_, l| l.conns.is_empty());
        }
    }
}

fn incarnation(base: &NodeId) -> NodeId {
    let suffix: u32 = rand::random();
    NodeId::parse(&format!("{}:{suffix:08x}", base.as_str())).unwrap_or_else(|_| base.clone())
}

fn unavailable(e: redis::RedisError) -> RegistryError {
    RegistryError::Unavailable(format!("redis: {e}"))
}

fn fenced() -> RegistryError {
    RegistryError::Unavailable(
        "this node was declared dead by the cluster (its lease ran out); it is re-joining, reconnect"
            .into(),
    )
}

#[async_trait]
impl Registry for RedisRegistry {
    async fn claim(&self, req: ClaimRequest) -> Result<ClaimOutcome, RegistryError> {
        let tenant = req.tenant.clone();
        self.ensure_registered(&tenant).await?;
        let sid = SessionId::random();
        let body = wire::ClaimReq {
            sid: sid.as_str(),
            login: req.login.as_str(),
            station: req.station.as_ref().map(|s| s.as_str()).unwrap_or(""),
            client: &req.client,
            role: &req.role,
            policy: match req.policy {
                ConflictPolicy::Reject => "reject",
                ConflictPolicy::Takeover => "takeover",
            },
            attrs: &req.attributes,
            idem: req.idempotency_key.as_deref().unwrap_or(""),
            kep: self.inner.known.contains(&tenant),
        };
        let r = self.run(&SCRIPTS.claim, &tenant, &body).await?;
        if r.err.as_deref() == Some("idem") {
            return Err(RegistryError::IdempotencyKeyReused {
                key: req.idempotency_key.unwrap_or_default(),
                login: Login::parse(r.login.as_deref().unwrap_or(""))
                    .unwrap_or_else(|_| req.login.clone()),
            });
        }
        if r.err.is_some() {
            return Err(self.error(&tenant, &r, ""));
        }
        self.knows(&tenant);
        match r.o.as_deref() {
            Some("granted") => Ok(ClaimOutcome::Granted {
                session: self.session(&tenant, r.s.as_ref())?,
                evicted: r
                    .ev
                    .iter()
                    .map(|w| w.to_session(&tenant))
                    .collect::<Result<_, _>>()?,
            }),
            Some("login") => Ok(ClaimOutcome::LoginInUse {
                holder: self.session(&tenant, r.h.as_ref())?,
            }),
            Some("station") => Ok(ClaimOutcome::StationInUse {
                holder: self.session(&tenant, r.h.as_ref())?,
            }),
            other => Err(RegistryError::Unavailable(format!(
                "unexpected claim outcome {other:?}"
            ))),
        }
    }

    async fn release(&self, tenant: &Tenant, id: &SessionId) -> Result<Session, RegistryError> {
        let r = self
            .run(&SCRIPTS.release, tenant, &json!({"sid": id.as_str()}))
            .await?;
        if r.err.is_some() {
            return Err(self.error(tenant, &r, id.as_str()));
        }
        self.session(tenant, r.s.as_ref())
    }

    async fn evict(
        &self,
        tenant: &Tenant,
        target: EvictTarget,
        message: Option<String>,
        by: &str,
    ) -> Result<Vec<Session>, RegistryError> {
        let (kind, v) = match &target {
            EvictTarget::Session(id) => ("sid", id.as_str()),
            EvictTarget::Login(l) => ("login", l.as_str()),
            EvictTarget::Station(s) => ("station", s.as_str()),
        };
        let body = json!({"by_kind": kind, "v": v, "msg": message.unwrap_or_default(), "by": by});
        let r = self.run(&SCRIPTS.evict, tenant, &body).await?;
        if r.err.is_some() {
            return Err(self.error(tenant, &r, v));
        }
        r.ev.iter().map(|w| w.to_session(tenant)).collect()
    }

    async fn get(&self, tenant: &Tenant, key: SessionKey) -> Result<Session, RegistryError> {
        let (q, v) = match &key {
            SessionKey::Id(id) => ("sid", id.as_str()),
            SessionKey::Login(l) => ("login", l.as_str()),
        };
        let r = self
            .run(&SCRIPTS.read, tenant, &json!({"q": q, "v": v}))
            .await?;
        if r.err.is_some() {
            return Err(self.error(tenant, &r, v));
        }
        self.session(tenant, r.s.as_ref())
    }

    async fn list(
        &self,
        tenant: &Tenant,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<Page, RegistryError> {
        let body = json!({
            "q": "list",
            "after": after.as_ref().map(|a| a.as_str()).unwrap_or(""),
            "limit": limit,
        });
        let r = self.run(&SCRIPTS.read, tenant, &body).await?;
        if r.err.is_some() {
            return Err(self.error(tenant, &r, ""));
        }
        Ok(Page {
            sessions: r
                .ss
                .iter()
                .map(|w| w.to_session(tenant))
                .collect::<Result<_, _>>()?,
            next_after: if r.next.is_empty() {
                None
            } else {
                SessionId::parse(&r.next).ok()
            },
        })
    }

    async fn stations(
        &self,
        tenant: &Tenant,
        stations: &[Station],
    ) -> Result<Vec<StationInfo>, RegistryError> {
        let names: Vec<&str> = stations.iter().map(|s| s.as_str()).collect();
        let r = self
            .run(
                &SCRIPTS.read,
                tenant,
                &json!({"q": "stations", "stations": names}),
            )
            .await?;
        if r.err.is_some() {
            return Err(self.error(tenant, &r, ""));
        }
        Ok(stations
            .iter()
            .zip(r.st.iter().map(Some).chain(std::iter::repeat(None)))
            .map(|(station, w)| StationInfo {
                station: station.clone(),
                holder: w
                    .and_then(|w| Some((Login::parse(&w.l).ok()?, SessionId::parse(&w.id).ok()?))),
            })
            .collect())
    }

    async fn notify(
        &self,
        tenant: &Tenant,
        target: NotifyTarget,
        notice: Notice,
    ) -> Result<NotifyCounts, RegistryError> {
        let (to, v) = match &target {
            NotifyTarget::Session(id) => ("sid", id.as_str().to_string()),
            NotifyTarget::Login(l) => ("login", l.as_str().to_string()),
            NotifyTarget::All => ("all", String::new()),
        };
        let n = WNotice::from_notice(&notice);
        let mut counts = NotifyCounts {
            delivered: 0,
            queued: 0,
        };
        // A tenant-wide notice goes NOTIFY_BATCH sessions per call; the
        // bound covers far more sessions than a tenant holds.
        let mut after = String::new();
        for _ in 0..MAX_NOTIFY_BATCHES {
            let body = json!({"to": to, "v": v, "n": n, "after": after,
                              "max": NOTIFY_BATCH, "kep": self.inner.known.contains(tenant)});
            let r = self.run(&SCRIPTS.notify, tenant, &body).await?;
            if r.err.is_some() {
                return Err(self.error(tenant, &r, &v));
            }
            self.knows(tenant);
            counts.delivered += r.d;
            counts.queued += r.q;
            if r.next.is_empty() {
                break;
            }
            after = r.next;
        }
        Ok(counts)
    }

    async fn attach(
        &self,
        tenant: &Tenant,
        id: &SessionId,
        generation: Generation,
        socket: SocketId,
    ) -> Result<Attached, RegistryError> {
        self.check_lease()?;
        self.ensure_subscribed(tenant).await?;
        self.ensure_registered(tenant).await?;
        // Until this returns, reconciliation must not take the socket for
        // a stale one (the script lists it under this node before
        // `remember` records it here).
        let _attaching = Attaching::new(&self.inner.attaching, (tenant.clone(), id.clone()));
        let node = self.node();
        let body = wire::SocketReq {
            conn: Some(socket.conn),
            ..socket_req("attach", id, generation, &node)
        };
        let r = self.run(&SCRIPTS.socket, tenant, &body).await?;
        if r.err.is_some() {
            let mut e = self.error(tenant, &r, id.as_str());
            if let RegistryError::StaleGeneration { presented, .. } = &mut e {
                *presented = generation.0;
            }
            return Err(e);
        }
        match r.o.as_deref() {
            Some("ended") => match &r.t {
                Some(t) => Ok(Attached::Ended(t.to_tombstone(tenant)?)),
                None => Err(RegistryError::SessionEnded { id: id.clone() }),
            },
            _ => {
                let session = self.session(tenant, r.s.as_ref())?;
                self.knows(tenant);
                self.remember(tenant, &session, socket.conn);
                Ok(Attached::Live {
                    session,
                    resumed: r.resumed,
                    pending: r.nt.iter().map(|n| n.to_notice()).collect(),
                })
            }
        }
    }

    async fn detach(
        &self,
        tenant: &Tenant,
        id: &SessionId,
        generation: Generation,
        socket: SocketId,
    ) -> Result<(), RegistryError> {
        self.forget(tenant, id, socket.conn);
        self.check_lease()?;
        let node = self.node();
        let body = wire::SocketReq {
            conn: Some(socket.conn),
            ..socket_req("detach", id, generation, &node)
        };
        let r = self.run(&SCRIPTS.socket, tenant, &body).await?;
        match r.err.as_deref() {
            None => Ok(()),
            Some("stale") => Ok(()),
            Some(_) => Err(self.error(tenant, &r, id.as_str())),
        }
    }

    async fn set_status(
        &self,
        tenant: &Tenant,
        id: &SessionId,
        generation: Generation,
        status: String,
    ) -> Result<(), RegistryError> {
        self.check_lease()?;
        let node = self.node();
        let body = wire::SocketReq {
            status: Some(&status),
            ..socket_req("status", id, generation, &node)
        };
        let r = self.run(&SCRIPTS.socket, tenant, &body).await?;
        if r.err.is_some() {
            let mut e = self.error(tenant, &r, id.as_str());
            if let RegistryError::StaleGeneration { presented, .. } = &mut e {
                *presented = generation.0;
            }
            return Err(e);
        }
        Ok(())
    }

    async fn ack(
        &self,
        tenant: &Tenant,
        id: &SessionId,
        notice_id: &str,
    ) -> Result<(), RegistryError> {
        self.check_lease()?;
        let node = self.node();
        let body = wire::SocketReq {
            nid: Some(notice_id),
            ..socket_req("ack", id, Generation(0), &node)
        };
        let r = self.run(&SCRIPTS.socket, tenant, &body).await?;
        if r.err.is_some() {
            return Err(self.error(tenant, &r, id.as_str()));
        }
        Ok(())
    }

    async fn watch(&self, tenant: &Tenant) -> Result<(), RegistryError> {
        self.ensure_subscribed(tenant).await?;
        self.subscribe_once(self.inner.rcfg.presence_channel(tenant))
            .await
    }

    fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
            && self.inner.subscription_ok.load(Ordering::Relaxed)
            && self.lease_valid()
    }

    async fn close(&self) {
        // Leave for good: stragglers of this incarnation are fenced, and
        // sessions this node still held sockets for are detached now rather
        // than after the lease runs out.
        if let Ok(r) = self.nodes("bury", &[]).await {
            let me = self.node();
            for t in r.t {
                if let Err(e) = self.reap(&t, me.as_str()).await {
                    warn!(error = %e, tenant = %t, "leaving: could not detach sockets; another node will");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_name_their_tenant_and_what_they_carry() {
        let rcfg = RedisConfig {
            target: Target {
                urls: vec![],
                cluster: false,
            },
            lease_ttl: Duration::from_secs(5),
            reconcile_interval: Duration::from_secs(5),
            namespace: "turnstile".into(),
        };
        let acme = Tenant::parse("acme").unwrap();
        let ev = rcfg.events_channel(&acme, "n1:0000000a");
        assert_eq!(ev, "turnstile:{acme}:ev:n1:0000000a");
        assert_eq!(
            rcfg.parse_channel(&ev),
            Some((
                acme.clone(),
                Channel::Events {
                    node: "n1:0000000a"
                }
            ))
        );
        let pr = rcfg.presence_channel(&acme);
        assert_eq!(rcfg.parse_channel(&pr), Some((acme, Channel::Presence)));
        // Another namespace, the old tenant-wide channel, and garbage.
        assert_eq!(rcfg.parse_channel("other:{acme}:ev:n1:0000000a"), None);
        assert_eq!(rcfg.parse_channel("turnstile:{acme}:ev"), None);
        assert_eq!(rcfg.parse_channel("turnstile:{ac me}:pr"), None);
        assert_eq!(rcfg.parse_channel("turnstile:{acme"), None);
    }
}
