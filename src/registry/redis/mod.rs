//! The Redis registry: the same contract as the embedded one, shared by
//! every node of a cluster.
//!
//! Every transition is one Lua script (`lua/`, run through [`store`]), so
//! both uniqueness checks, the end of a displaced session and the grant
//! happen atomically in Redis. All keys of a tenant share the hash tag
//! `{<tenant>}`, so each script touches one Redis Cluster slot. Scripts
//! publish what happened in the same step; turning those messages into
//! [`Event`](super::Event)s, node membership, reconciliation, recovery and
//! expiry are the [`cluster`](crate::cluster)'s. This module asks the
//! cluster only who this node is, whether its lease holds, and to be
//! subscribed to a tenant before it attaches a socket there.

pub(crate) mod conn;
pub(crate) mod due;
pub(crate) mod sentinel;
pub(crate) mod store;
pub(crate) mod tenant_writes;
pub(crate) mod wire;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub use conn::Target;
pub use sentinel::SentinelTarget;
use store::{Store, SCRIPTS};
use wire::{Reply, WNotice, WSession};

use super::notice_rules;
use super::{
    Attached, ClaimOutcome, DirectoryChange, EventSink, EvictTarget, NotifyCounts, NotifyTarget,
    Page, Registry, RegistryConfig, RegistryError, Replay, SessionKey, SocketId, StationInfo,
    StationPage, StationQuery, TenantUsage,
};
use crate::cluster::{fenced, Cluster};
use crate::hub::sockets::LocalSockets;
use crate::session::{
    ClaimRequest, Generation, Login, NodeId, Notice, Session, SessionId, Station, Tenant,
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
        dead: &[],
    }
}

/// Counts and logs what a script found stored and could not decode: it is
/// skipped, never taken for an empty queue in silence.
fn decode_errors(tenant: &Tenant, whose: &str, what: &'static str, n: u32, detail: &str) {
    metrics::counter!(crate::metrics_names::REGISTRY_DECODE_ERRORS, "what" => what)
        .increment(u64::from(n));
    tracing::error!(%tenant, whose, n, what, "undecodable notices in redis, skipped: {detail}");
}

/// The notices of an attach reply, each decoded on its own: one that
/// does not decode is logged, counted and skipped.
fn pending(tenant: &Tenant, session: &Session, r: &Reply) -> Vec<Notice> {
    let whose = format!("login {} session {}", session.login, session.id);
    let id = &whose;
    if r.bad > 0 {
        decode_errors(
            tenant,
            id,
            "queue",
            r.bad,
            "stored queue lines that do not parse",
        );
    }
    r.nt.iter()
        .filter_map(|v| match serde_json::from_str::<WNotice>(v) {
            Ok(n) => Some(n.to_notice()),
            Err(e) => {
                decode_errors(tenant, id, "notice", 1, &format!("{e}: {v}"));
                None
            }
        })
        .collect()
}

/// Sessions a tenant-wide notice (or evict) reaches per script call: 500
/// took 6–16 ms of Redis (release build, 10,000 sessions on a lightly
/// loaded 2-core machine), and 200 still 10–18 ms when every session's
/// queue was full (32 notices), over the ~10 ms a script may block every
/// other tenant (docs/benchmarks.md).
const NOTIFY_BATCH: usize = 100;
/// Script calls per tenant-wide notice (100 × 50,000 = 5,000,000 sessions).
const MAX_NOTIFY_BATCHES: usize = 50_000;

/// The shared registry. Cheap to clone.
#[derive(Clone)]
pub struct RedisRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    /// The registry's settings: the notice bounds are checked here, before
    /// a script runs; the configured seat limits are sent with each claim
    /// (a limit set by SetSeatLimit is kept in Redis and overrides them);
    /// `max_sockets_per_session` is named in the refusal.
    cfg: RegistryConfig,
    store: Store,
    /// Who this node is, its lease, its subscriptions and sockets.
    cluster: Cluster,
}

/// Why the Redis registry could not start.
#[derive(Debug, thiserror::Error)]
#[error("redis at {urls}: {source}")]
pub struct ConnectError {
    urls: String,
    source: redis::RedisError,
}

impl RedisRegistry {
    /// Connects, joins the cluster (this node's first lease) and starts
    /// the cluster's background tasks until `stop`.
    pub async fn start(
        cfg: RegistryConfig,
        rcfg: RedisConfig,
        sink: Arc<dyn EventSink>,
        local: Arc<LocalSockets>,
        stop: CancellationToken,
    ) -> Result<Self, ConnectError> {
        let cerr = |source| ConnectError {
            urls: rcfg.target.shown(),
            source,
        };
        let store = Store::connect(&rcfg.target, &rcfg.namespace, &cfg, rcfg.reconcile_interval)
            .await
            .map_err(cerr)?;
        let cluster = Cluster::join(store.clone(), &rcfg, cfg.node.clone(), sink, local, stop)
            .await
            .map_err(cerr)?;
        Ok(RedisRegistry {
            inner: Arc::new(Inner {
                cfg,
                store,
                cluster,
            }),
        })
    }

    fn node(&self) -> NodeId {
        self.inner.cluster.member().node()
    }

    /// Runs a tenant script as this incarnation and decodes its reply
    /// (errors still inside).
    async fn run<R: Serialize>(
        &self,
        script: &Script,
        tenant: &Tenant,
        req: &R,
    ) -> Result<Reply, RegistryError> {
        let member = self.inner.cluster.member();
        let (node, epoch) = (member.node(), member.epoch());
        self.inner
            .store
            .run(script, tenant, &node, &epoch, req)
            .await
    }

    /// Expires what is due at the clock's "now" in every tenant at once, as
    /// the expiry task does every tick; for tests that move a manual clock.
    pub async fn expire_due(&self) {
        self.inner.cluster.expire_due().await;
    }

    /// A tenant-wide eviction, NOTIFY_BATCH sessions per script call (one
    /// call ending 8,000 sessions would block Redis for over 100 ms).
    async fn evict_all(
        &self,
        tenant: &Tenant,
        role: Option<&str>,
        message: Option<String>,
        by: &str,
    ) -> Result<Vec<Session>, RegistryError> {
        let msg = message.unwrap_or_default();
        let mut evicted = Vec::new();
        let mut after = String::new();
        for _ in 0..MAX_NOTIFY_BATCHES {
            let body = json!({"by_kind": "all", "v": "", "msg": msg, "by": by,
                              "role": role.unwrap_or(""), "after": after, "max": NOTIFY_BATCH});
            let r = self.run(&SCRIPTS.evict, tenant, &body).await?;
            if r.err.is_some() {
                return Err(self.error(tenant, &r, ""));
            }
            for w in &r.ev {
                evicted.push(w.to_session(tenant)?);
            }
            if r.next.is_empty() {
                break;
            }
            after = r.next;
        }
        Ok(evicted)
    }

    /// The configured seat limit of `tenant` (0: none).
    fn seat_limit(&self, tenant: &Tenant) -> u32 {
        self.inner.cfg.seat_limits.get(tenant).copied().unwrap_or(0)
    }

    /// Reads (and with `limit`, first sets) the tenant's seat use.
    async fn seats(
        &self,
        tenant: &Tenant,
        limit: Option<u32>,
    ) -> Result<TenantUsage, RegistryError> {
        // `limit` absent (not null: cjson would make null a truthy value).
        let mut body = json!({"seats": self.seat_limit(tenant)});
        if let Some(limit) = limit {
            body["limit"] = json!(limit);
        }
        let r = self.run(&SCRIPTS.seats, tenant, &body).await?;
        if r.err.is_some() {
            return Err(self.error(tenant, &r, ""));
        }
        Ok(TenantUsage {
            seats_used: r.used,
            seat_limit: r.limit,
        })
    }

    /// Adds (`add`) or removes (`rm`) directory entries (`lua/directory.lua`).
    async fn directory(
        &self,
        tenant: &Tenant,
        op: &str,
        stations: &[Station],
    ) -> Result<DirectoryChange, RegistryError> {
        let names: std::collections::BTreeSet<&str> = stations.iter().map(|s| s.as_str()).collect();
        let body = json!({"op": op, "stations": names, "max": self.inner.cfg.max_registered_stations,
                          "ttl": crate::registry::STATION_DIRECTORY_TTL.as_millis() as u64});
        let r = self.run(&SCRIPTS.directory, tenant, &body).await?;
        if r.err.is_some() {
            return Err(self.error(tenant, &r, ""));
        }
        Ok(DirectoryChange {
            changed: r.n,
            registered: r.reg,
        })
    }

    fn knows(&self, tenant: &Tenant) {
        self.inner.cluster.member().knows(tenant)
    }

    fn known(&self, tenant: &Tenant) -> bool {
        self.inner.cluster.member().known(tenant)
    }

    fn check_lease(&self) -> Result<(), RegistryError> {
        self.inner.cluster.member().check_lease()
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
            "toomany" if !reply.elsewhere.is_empty() => match sid() {
                Ok(id) => RegistryError::SocketsElsewhere {
                    id,
                    limit: self.inner.cfg.max_sockets_per_session,
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
            "toomanystations" => RegistryError::TooManyStations {
                adding: reply.adding,
                would: reply.would,
                limit: self.inner.cfg.max_registered_stations,
            },
            "fenced" => {
                self.inner.cluster.member().alarm();
                fenced()
            }
            "noepoch" | "dataloss" => {
                self.inner.cluster.member().alarm();
                RegistryError::Unavailable(
                    "redis lost its data; nodes are re-registering their sessions, retry in a few seconds"
                        .into(),
                )
            }
            "lostwrites" => {
                self.inner.cluster.member().alarm();
                RegistryError::Unavailable(
                    "redis lost writes this node saw (failover to a replica that was behind?); nodes are re-registering their sessions, retry in a few seconds"
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
}

#[async_trait]
impl Registry for RedisRegistry {
    async fn claim(&self, req: ClaimRequest) -> Result<ClaimOutcome, RegistryError> {
        let tenant = req.tenant.clone();
        self.inner.cluster.ensure_registered(&tenant).await?;
        let sid = SessionId::random();
        let body = wire::ClaimReq {
            sid: sid.as_str(),
            login: req.login.as_str(),
            station: req.station.as_ref().map(|s| s.as_str()).unwrap_or(""),
            client: &req.client,
            role: &req.role,
            policy: req.policy.as_str(),
            attrs: &req.attributes,
            idem: req.idempotency_key.as_deref().unwrap_or(""),
            kep: self.known(&tenant),
            exp: req.expected_session_id.as_ref().map(|e| e.as_str()),
            seats: self.seat_limit(&tenant),
            dev: req.device.as_ref().map(|d| d.as_str()),
            sh: req
                .device
                .as_ref()
                .filter(|_| self.inner.cfg.shares_stations(&tenant))
                .map(|_| crate::limits::MAX_STATION_HOLDERS),
            strict: self.inner.cfg.strict_stations(&tenant),
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
            Some("station") => {
                let holder = self.session(&tenant, r.h.as_ref())?;
                let mut holders =
                    r.hs.iter()
                        .map(|w| w.to_session(&tenant))
                        .collect::<Result<Vec<_>, _>>()?;
                if holders.is_empty() {
                    holders.push(holder.clone());
                }
                Ok(ClaimOutcome::StationInUse { holder, holders })
            }
            Some("seats") => Ok(ClaimOutcome::SeatsExhausted {
                used: r.used,
                limit: r.limit,
            }),
            Some("unregistered") => Ok(ClaimOutcome::StationNotRegistered),
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
            EvictTarget::Tenant { role } => {
                return self.evict_all(tenant, role.as_deref(), message, by).await
            }
        };
        let body = json!({"by_kind": kind, "v": v, "msg": message.unwrap_or_default(), "by": by});
        let r = self.run(&SCRIPTS.evict, tenant, &body).await?;
        if r.err.is_some() {
            return Err(self.error(tenant, &r, v));
        }
        r.ev.iter().map(|w| w.to_session(tenant)).collect()
    }

    async fn set_seat_limit(
        &self,
        tenant: &Tenant,
        limit: u32,
    ) -> Result<TenantUsage, RegistryError> {
        self.seats(tenant, Some(limit)).await
    }

    async fn usage(&self, tenant: &Tenant) -> Result<TenantUsage, RegistryError> {
        self.seats(tenant, None).await
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
        stations
            .iter()
            .zip(r.st.iter().map(Some).chain(std::iter::repeat(None)))
            .map(|(station, w)| station_info(station, w))
            .collect()
    }

    async fn register_stations(
        &self,
        tenant: &Tenant,
        stations: &[Station],
    ) -> Result<DirectoryChange, RegistryError> {
        self.directory(tenant, "add", stations).await
    }

    async fn remove_stations(
        &self,
        tenant: &Tenant,
        stations: &[Station],
    ) -> Result<DirectoryChange, RegistryError> {
        self.directory(tenant, "rm", stations).await
    }

    async fn list_stations(
        &self,
        tenant: &Tenant,
        q: &StationQuery,
    ) -> Result<StationPage, RegistryError> {
        let body = json!({
            "q": "dir",
            "prefix": q.prefix,
            "free": q.free_only,
            "limit": q.limit.max(1),
            "scan": q.scan.max(1),
            "after": q.after.as_ref().map(|a| a.as_str()).unwrap_or(""),
        });
        let r = self.run(&SCRIPTS.read, tenant, &body).await?;
        if r.err.is_some() {
            return Err(self.error(tenant, &r, ""));
        }
        let mut stations = Vec::with_capacity(r.sn.len());
        for (name, w) in r.sn.iter().zip(r.st.iter()) {
            let station = Station::parse(name).map_err(|e| {
                RegistryError::Unavailable(format!("directory entry {name:?}: {e}"))
            })?;
            stations.push(station_info(&station, Some(w))?);
        }
        Ok(StationPage {
            stations,
            next_after: if r.next.is_empty() {
                None
            } else {
                Station::parse(&r.next).ok()
            },
            registered: r.reg,
        })
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
        let mut counts = NotifyCounts {
            delivered: 0,
            queued: 0,
        };
        let cfg = &self.inner.cfg;
        let Some(notice) = notice_rules::admit(notice, cfg, self.inner.store.now_ms())? else {
            return Ok(counts);
        };
        // The body, stored once under its own key: `p…` one notice's own,
        // `a…` a tenant-wide one's (see notify.lua).
        let kind = if matches!(target, NotifyTarget::All) {
            'a'
        } else {
            'p'
        };
        let b = format!("{kind}{:016x}", rand::random::<u64>());
        let body = serde_json::to_string(&WNotice::from_notice(&notice))
            .map_err(|e| RegistryError::Unavailable(format!("encoding a notice: {e}")))?;
        let exp = notice.expires_at_ms.to_string();
        // A tenant-wide notice goes NOTIFY_BATCH sessions per call; the
        // bound covers far more sessions than a tenant holds.
        let mut after = String::new();
        for _ in 0..MAX_NOTIFY_BATCHES {
            let body = json!({"to": to, "v": v, "id": notice.id, "b": b, "exp": exp,
                              "sz": notice_rules::size(&notice), "mb": cfg.max_mailbox_bytes,
                              "body": body, "after": after, "max": NOTIFY_BATCH,
                              "kep": self.known(tenant)});
            let r = self.run(&SCRIPTS.notify, tenant, &body).await?;
            if r.err.is_some() {
                return Err(self.error(tenant, &r, &v));
            }
            self.knows(tenant);
            if r.bad > 0 {
                let whose = format!("{to} {v}");
                decode_errors(
                    tenant,
                    &whose,
                    "queue",
                    r.bad,
                    "stored queue lines that do not parse",
                );
            }
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
        self.inner.cluster.ensure_subscribed(tenant).await?;
        self.inner.cluster.ensure_registered(tenant).await?;
        let node = self.node();
        let body = wire::SocketReq {
            conn: Some(socket.conn),
            ..socket_req("attach", id, generation, &node)
        };
        let mut r = self.run(&SCRIPTS.socket, tenant, &body).await?;
        if !r.elsewhere.is_empty() {
            // At the limit with sockets on other nodes: those the cluster
            // has declared dead stop counting (their reap may not have
            // reached this tenant yet), and the attach is tried once more.
            let dead = self.inner.store.dead_among(&r.elsewhere).await?;
            if !dead.is_empty() {
                let body = wire::SocketReq {
                    dead: &dead,
                    ..body
                };
                r = self.run(&SCRIPTS.socket, tenant, &body).await?;
            }
        }
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
                // The gateway put the socket in the local index before it
                // called this, so reconciliation never took it for stale;
                // from now on it is also reconciled and re-asserted.
                self.inner.cluster.local().vouch(&session, socket.conn);
                let pending = pending(tenant, &session, &r);
                Ok(Attached::Live {
                    session,
                    resumed: r.resumed,
                    pending,
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

    async fn hook_lease(
        &self,
        tenant: &Tenant,
        hook: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, RegistryError> {
        let node = self.node();
        let r = self
            .inner
            .store
            .hook(tenant, hook, "lease", node.as_str(), ttl, 0)
            .await?;
        Ok(u64::try_from(r).ok())
    }

    async fn hook_done(
        &self,
        tenant: &Tenant,
        hook: &str,
        seq: u64,
        ttl: Duration,
    ) -> Result<bool, RegistryError> {
        let node = self.node();
        let r = self
            .inner
            .store
            .hook(tenant, hook, "done", node.as_str(), ttl, seq)
            .await?;
        Ok(r >= 0)
    }

    async fn replay(
        &self,
        tenant: &Tenant,
        after: u64,
        limit: usize,
    ) -> Result<Replay, RegistryError> {
        let (head, trimmed, entries) = self.inner.store.read_log(tenant, after, limit).await?;
        let mut events = Vec::with_capacity(entries.len());
        for raw in entries {
            let ev: wire::WEvent = serde_json::from_str(&raw).map_err(|e| {
                RegistryError::Unavailable(format!("undecodable event log entry {raw:?}: {e}"))
            })?;
            events.push(Arc::new(wire::presence_event(tenant, &ev)?));
        }
        Ok(Replay {
            events,
            trimmed,
            head,
        })
    }

    async fn watch(&self, tenant: &Tenant) -> Result<(), RegistryError> {
        self.inner.cluster.watch(tenant).await
    }

    fn is_ready(&self) -> bool {
        self.inner.cluster.is_ready()
    }

    async fn close(&self) {
        self.inner.cluster.leave().await
    }
}

/// A station's info from its `station_info` entry (prelude.lua); a missing
/// or unreadable entry is a free station.
/// A station's info from the read script's answer for it (none: free).
fn station_info(
    station: &Station,
    w: Option<&wire::WStation>,
) -> Result<StationInfo, RegistryError> {
    match w {
        Some(w) => w.to_info(station),
        None => Ok(StationInfo::new(station.clone(), Vec::new())),
    }
}
