//! The registry: the one authority that decides who holds a login or a
//! station, and the life of every session.
//!
//! Everything else asks it. Each method is one atomic transition: both
//! uniqueness checks of a claim, the end of the displaced session and the
//! grant happen together or not at all. `memory` keeps the state in this
//! process (the single-node default); a Redis implementation provides the
//! same semantics with server-side scripts.
//!
//! The registry reports what happened through an [`EventSink`]: ended
//! sessions (whose sockets must be told why), notices to deliver, and
//! presence changes. Data flows one way: API → registry → sink → gateway.

pub mod log;
pub mod memory;
pub mod notice_rules;
pub mod redis;
mod state;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::Clock;
use crate::session::{
    ClaimRequest, Device, Generation, Login, NodeId, Notice, PresenceEvent, Session, SessionId,
    Station, Tenant, Tombstone,
};

pub use self::log::{LogBounds, Replay};
pub use self::redis::{RedisConfig, RedisRegistry};
pub use memory::MemoryRegistry;

/// Limits and timers of the session life cycle.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// The name of this node, recorded in `Session.node`.
    pub node: NodeId,
    /// A PENDING session nobody connects to within this ends EXPIRED.
    pub connect_timeout: Duration,
    /// A DISCONNECTED session ends EXPIRED after this unless a socket returns.
    pub grace: Duration,
    /// How long a tombstone is kept: as long as a connect token can be presented.
    pub tombstone_ttl: Duration,
    /// Sockets one session may hold at once.
    pub max_sockets_per_session: usize,
    /// How long a claim's idempotency key is remembered.
    pub idempotency_ttl: Duration,
    /// Undelivered notices kept per session (or per login without a session).
    pub max_notices_per_session: usize,
    /// Lifetime of a notice sent without `expires_at_ms`.
    pub default_notice_ttl: Duration,
    /// Bytes of one notice's text and data together.
    pub max_notice_bytes: usize,
    /// Bytes of the notices queued for one session (or one login without
    /// a session) together; past it the oldest are dropped.
    pub max_mailbox_bytes: usize,
    /// How far ahead a notice's `expires_at_ms` may lie.
    pub max_notice_ttl: Duration,
    /// Where every transition reads "now" (see [`crate::clock`]).
    pub clock: Clock,
    /// How much of each tenant's event log is kept ([`log`]).
    pub event_log: LogBounds,
    /// Configured seat licences: live sessions a tenant may hold at once.
    /// A limit set by `SetSeatLimit` overrides the tenant's entry here.
    pub seat_limits: Arc<HashMap<Tenant, u32>>,
    /// Tenants whose stations are never shared, whatever the claims'
    /// devices (the rest share a station among claims from one device).
    pub exclusive_stations: Arc<HashSet<Tenant>>,
    /// Stations one tenant may register in its directory.
    pub max_registered_stations: usize,
    /// Tenants whose claims must name a registered station.
    pub strict_stations: Arc<HashSet<Tenant>>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            node: NodeId::parse("local").expect("static node id is valid"),
            connect_timeout: Duration::from_secs(60),
            grace: Duration::from_secs(60),
            tombstone_ttl: Duration::from_secs(12 * 3600),
            max_sockets_per_session: 4,
            idempotency_ttl: Duration::from_secs(300),
            max_notices_per_session: 32,
            default_notice_ttl: Duration::from_secs(24 * 3600),
            max_notice_bytes: 4096,
            max_mailbox_bytes: 64 * 1024,
            max_notice_ttl: Duration::from_secs(366 * 24 * 3600),
            clock: Clock::system(),
            event_log: LogBounds::default(),
            seat_limits: Arc::default(),
            exclusive_stations: Arc::default(),
            max_registered_stations: 100_000,
            strict_stations: Arc::default(),
        }
    }
}

impl RegistryConfig {
    /// The configured seat limit of `tenant` (0: none).
    pub fn seat_limit(&self, tenant: &Tenant) -> u32 {
        self.seat_limits.get(tenant).copied().unwrap_or(0)
    }

    /// Whether `tenant`'s stations admit several logins from one device.
    pub fn shares_stations(&self, tenant: &Tenant) -> bool {
        !self.exclusive_stations.contains(tenant)
    }

    /// Whether `tenant`'s claims must name a registered station.
    pub fn strict_stations(&self, tenant: &Tenant) -> bool {
        self.strict_stations.contains(tenant)
    }
}

/// How long a tenant's station directory is kept after its last
/// RegisterStations or RemoveStations: a directory nobody has touched for
/// 400 days belongs to a tenant that is gone (the directory is otherwise
/// kept as long as stations are registered in it).
pub const STATION_DIRECTORY_TTL: Duration = Duration::from_secs(400 * 24 * 3600);

/// The result of a claim. Conflicts are outcomes, not errors.
#[derive(Clone, Debug, PartialEq)]
pub enum ClaimOutcome {
    Granted {
        session: Session,
        /// Sessions this claim ended (TAKEOVER).
        evicted: Vec<Session>,
    },
    LoginInUse {
        holder: Session,
    },
    StationInUse {
        /// The first of `holders`.
        holder: Session,
        /// Every holder of the station (several when it is shared).
        holders: Vec<Session>,
    },
    /// The claim needs a new seat and the tenant's `limit` live sessions
    /// are all in use (`used` of them; more only if the limit was lowered).
    SeatsExhausted {
        used: u32,
        limit: u32,
    },
    /// The tenant's directory is strict and does not list the claim's
    /// station.
    StationNotRegistered,
}

/// A tenant's seat licence: how many live sessions it holds against its
/// limit (0: no limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantUsage {
    pub seats_used: u32,
    pub seat_limit: u32,
}

/// Which session(s) an eviction targets.
#[derive(Clone, Debug)]
pub enum EvictTarget {
    Session(SessionId),
    Login(Login),
    Station(Station),
    /// Every live session of the tenant, or only those of `role`.
    Tenant {
        role: Option<String>,
    },
}

/// How GetSession finds a session.
#[derive(Clone, Debug)]
pub enum SessionKey {
    Id(SessionId),
    Login(Login),
}

/// Who a notice is for.
#[derive(Clone, Debug)]
pub enum NotifyTarget {
    Session(SessionId),
    /// The login's live session, or its next one when it has none.
    Login(Login),
    /// Every live session of the tenant.
    All,
}

/// What Notify did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NotifyCounts {
    /// Sessions with an open socket that were sent the notice now.
    pub delivered: u32,
    /// Sessions (or logins) holding it until they next connect.
    pub queued: u32,
}

/// One page of ListSessions.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub sessions: Vec<Session>,
    /// The id to continue after, when there are more.
    pub next_after: Option<SessionId>,
}

/// The holder of a station, for StationStatus.
#[derive(Clone, Debug, PartialEq)]
pub struct StationInfo {
    pub station: Station,
    /// `None` when the station is free; the first of `holders`.
    pub holder: Option<(Login, SessionId)>,
    /// Every holder, first first (a shared station has several).
    pub holders: Vec<StationHolder>,
}

impl StationInfo {
    /// A station from its holders, first first.
    pub fn new(station: Station, holders: Vec<StationHolder>) -> Self {
        Self {
            station,
            holder: holders
                .first()
                .map(|h| (h.login.clone(), h.session_id.clone())),
            holders,
        }
    }
}

/// One holder of a station and the device it claimed it from.
#[derive(Clone, Debug, PartialEq)]
pub struct StationHolder {
    pub login: Login,
    pub session_id: SessionId,
    pub device: Option<Device>,
}

/// One ListStations query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StationQuery {
    /// Only names starting with this.
    pub prefix: String,
    /// Only stations nobody holds.
    pub free_only: bool,
    /// Stations in the page, at most.
    pub limit: usize,
    /// Names examined, at most (free-only pages skip held stations; this
    /// bounds the work of one call).
    pub scan: usize,
    /// Continue after this name (the previous page's last name examined).
    pub after: Option<Station>,
}

/// One page of ListStations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StationPage {
    pub stations: Vec<StationInfo>,
    /// The last name examined, when more names may follow.
    pub next_after: Option<Station>,
    /// Stations registered in the tenant.
    pub registered: u64,
}

/// What RegisterStations or RemoveStations changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectoryChange {
    /// Stations added (or removed) by the call.
    pub changed: u32,
    /// Stations registered after it.
    pub registered: u64,
}

impl StationInfo {
    /// Whether nobody holds the station.
    pub fn is_free(&self) -> bool {
        self.holder.is_none()
    }
}

/// Live sessions by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    pub pending: u64,
    pub connected: u64,
    pub disconnected: u64,
}

/// A socket, unique within the cluster: the node and a per-node counter that
/// is never reused during a node's life.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SocketId {
    pub node: NodeId,
    pub conn: u64,
}

/// The result of attaching a socket to a session.
#[derive(Clone, Debug)]
pub enum Attached {
    /// The session is live and now CONNECTED.
    Live {
        session: Session,
        /// The session was DISCONNECTED and a socket came back within grace.
        resumed: bool,
        /// Notices not yet acked and not expired, oldest first.
        pending: Vec<Notice>,
    },
    /// The session has ended; the socket must be told why and closed.
    Ended(Tombstone),
}

/// What went wrong in a registry call. Conflicts are not errors.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistryError {
    #[error("no session {id} in tenant {tenant}")]
    SessionNotFound { tenant: Tenant, id: SessionId },
    #[error("no live session for login {login} in tenant {tenant}")]
    LoginNotFound { tenant: Tenant, login: Login },
    #[error("no live session holds station {station} in tenant {tenant}")]
    StationNotFound { tenant: Tenant, station: Station },
    #[error("session {id} is at generation {current}, the token carries {presented}")]
    StaleGeneration {
        id: SessionId,
        current: u64,
        presented: u64,
    },
    #[error("session {id} already has {limit} sockets open, the most allowed")]
    TooManySockets { id: SessionId, limit: usize },
    /// At the limit, but some of the sockets are on other nodes, one of
    /// which may have died and not been declared dead yet: transient.
    #[error("session {id} already has {limit} sockets open, some on other nodes that may have gone; retry in a few seconds")]
    SocketsElsewhere { id: SessionId, limit: usize },
    #[error("idempotency_key {key:?} was already used for a claim of login {login}")]
    IdempotencyKeyReused { key: String, login: Login },
    #[error("session {id} has ended")]
    SessionEnded { id: SessionId },
    /// A notice over one of its bounds (see [`notice_rules`]).
    #[error("{field}: {problem}")]
    InvalidNotice {
        field: &'static str,
        problem: String,
    },
    /// RegisterStations would take the tenant's directory past
    /// `max_registered_stations`; nothing was registered.
    #[error("stations: registering {adding} more would make {would}, over the tenant's limit of {limit} (max_registered_stations)")]
    TooManyStations {
        adding: u64,
        would: u64,
        limit: usize,
    },
    #[error("registry unavailable: {0}")]
    Unavailable(String),
}

/// Where the registry reports what happened. Implementations must not block:
/// they are called while the registry holds the lock that orders events of a
/// tenant, which is what keeps each session's events in order.
pub trait EventSink: Send + Sync + 'static {
    fn publish(&self, event: Event);
}

/// Something other parts of the broker must act on.
#[derive(Clone, Debug)]
pub enum Event {
    /// A session ended: its sockets get `forced_logout` (or `logged_out`) and
    /// the matching close code.
    Ended(Arc<Tombstone>),
    /// Deliver a notice to the session's open sockets.
    Notice {
        tenant: Tenant,
        session_id: SessionId,
        notice: Arc<Notice>,
    },
    /// A presence change, for WatchPresence streams and watching sockets.
    Presence(Arc<PresenceEvent>),
    /// The node's connectivity changed: every local socket is told with a
    /// `connectivity` frame (its sockets stay open).
    Connectivity(crate::connectivity::Connectivity),
    /// This node can no longer vouch for its sockets (the cluster declared
    /// it dead): every local socket is told to reconnect and closed (1012),
    /// and none is reconciled or re-asserted any more.
    Drain,
    /// Presence events of `tenant` (every tenant: `None`) may have been
    /// lost on the way to this node (bus overflow, lost subscription, a
    /// lease not confirmed): watchers must catch up from the log or re-read.
    Gap {
        tenant: Option<Tenant>,
        reason: GapReason,
    },
}

/// Why a watcher may have missed presence events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GapReason {
    /// The node's inbox from the bus overflowed.
    BusOverflow,
    /// The subscription to Redis was lost.
    SubscriptionLost,
    /// Events were dropped while this node's lease was unconfirmed.
    LeaseUnconfirmed,
    /// The watcher fell behind its buffer.
    Lagged,
    /// The log no longer reaches back to the watcher's sequence.
    LogTrimmed,
}

impl GapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::BusOverflow => "bus_overflow",
            GapReason::SubscriptionLost => "subscription_lost",
            GapReason::LeaseUnconfirmed => "lease_unconfirmed",
            GapReason::Lagged => "lagged",
            GapReason::LogTrimmed => "log_trimmed",
        }
    }
}

/// The registry contract. Every method is atomic with respect to the others
/// for the same tenant.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Claims the login (and station): rules 1, 2 and 3.
    async fn claim(&self, req: ClaimRequest) -> Result<ClaimOutcome, RegistryError>;

    /// Ends a session with LOGGED_OUT. Releasing an ended session returns
    /// its tombstone's session unchanged.
    async fn release(&self, tenant: &Tenant, id: &SessionId) -> Result<Session, RegistryError>;

    /// Ends the targeted live session(s) with EVICTED and `message`. A
    /// session, login or station that holds nothing is an error; a
    /// tenant-wide target that matches nothing ends nothing.
    async fn evict(
        &self,
        tenant: &Tenant,
        target: EvictTarget,
        message: Option<String>,
        by: &str,
    ) -> Result<Vec<Session>, RegistryError>;

    /// A live session by id or login; an ended one (with its reason) by id
    /// while its tombstone lasts.
    async fn get(&self, tenant: &Tenant, key: SessionKey) -> Result<Session, RegistryError>;

    /// Live sessions ordered by id, `limit` at most, after `after`.
    async fn list(
        &self,
        tenant: &Tenant,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<Page, RegistryError>;

    /// Who holds each of `stations`, in the same order.
    async fn stations(
        &self,
        tenant: &Tenant,
        stations: &[Station],
    ) -> Result<Vec<StationInfo>, RegistryError>;

    /// Sets the tenant's seat limit (0: none), overriding the configured
    /// one; sessions beyond a lowered limit are not ended. Returns the use.
    async fn set_seat_limit(
        &self,
        tenant: &Tenant,
        limit: u32,
    ) -> Result<TenantUsage, RegistryError>;

    /// The tenant's live sessions against its seat limit.
    async fn usage(&self, tenant: &Tenant) -> Result<TenantUsage, RegistryError>;

    /// Adds `stations` to the tenant's directory (those already there are
    /// skipped): all of them, or none when the directory would grow past
    /// `max_registered_stations`.
    async fn register_stations(
        &self,
        tenant: &Tenant,
        stations: &[Station],
    ) -> Result<DirectoryChange, RegistryError>;

    /// Removes `stations` from the tenant's directory; their holders stay.
    async fn remove_stations(
        &self,
        tenant: &Tenant,
        stations: &[Station],
    ) -> Result<DirectoryChange, RegistryError>;

    /// A page of the tenant's directory in name order, each station with
    /// its holder (built as [`Registry::stations`] builds it).
    async fn list_stations(
        &self,
        tenant: &Tenant,
        query: &StationQuery,
    ) -> Result<StationPage, RegistryError>;

    /// Delivers or queues a notice.
    async fn notify(
        &self,
        tenant: &Tenant,
        target: NotifyTarget,
        notice: Notice,
    ) -> Result<NotifyCounts, RegistryError>;

    /// Attaches a socket to the session named by a connect token.
    async fn attach(
        &self,
        tenant: &Tenant,
        id: &SessionId,
        generation: Generation,
        socket: SocketId,
    ) -> Result<Attached, RegistryError>;

    /// Detaches a socket; the last one leaving makes the session DISCONNECTED.
    /// Detaching from an ended session, or with another generation than
    /// the session's (such a socket never held it), is a no-op.
    async fn detach(
        &self,
        tenant: &Tenant,
        id: &SessionId,
        generation: Generation,
        socket: SocketId,
    ) -> Result<(), RegistryError>;

    /// Sets the presence status of a live session.
    async fn set_status(
        &self,
        tenant: &Tenant,
        id: &SessionId,
        generation: Generation,
        status: String,
    ) -> Result<(), RegistryError>;

    /// Drops an acknowledged notice from the session's queue.
    async fn ack(
        &self,
        tenant: &Tenant,
        id: &SessionId,
        notice_id: &str,
    ) -> Result<(), RegistryError>;

    /// Up to `limit` events of the tenant's log after sequence `after`
    /// (see [`log`]).
    async fn replay(
        &self,
        tenant: &Tenant,
        after: u64,
        limit: usize,
    ) -> Result<Replay, RegistryError>;

    /// Takes or keeps this node's lease on sending webhook `hook` of
    /// `tenant` for `ttl` (one node sends each event); answers the last
    /// sequence sent, or `None` while another node holds the lease.
    async fn hook_lease(
        &self,
        tenant: &Tenant,
        hook: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, RegistryError>;

    /// Records that webhook `hook` of `tenant` is done with sequence `seq`
    /// (and keeps the lease for `ttl`); false when this node no longer
    /// holds the lease, so it must stop sending.
    async fn hook_done(
        &self,
        tenant: &Tenant,
        hook: &str,
        seq: u64,
        ttl: Duration,
    ) -> Result<bool, RegistryError>;

    /// Makes sure this node hears the tenant's events (presence watchers).
    async fn watch(&self, _tenant: &Tenant) -> Result<(), RegistryError> {
        Ok(())
    }

    /// Leaves the cluster after the node drained its sockets.
    async fn close(&self) {}

    /// Whether the registry can serve writes now (for `/readyz`).
    fn is_ready(&self) -> bool {
        true
    }

    /// Live sessions by state, for the `turnstile_sessions` gauge, when the
    /// registry can count them cheaply.
    fn census(&self) -> Option<Census> {
        None
    }
}
