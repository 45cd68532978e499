//! Domain types shared by every layer: identifiers, sessions, end reasons,
//! notices and presence events.
//!
//! Identifiers are validated newtypes: once a `Tenant`, `Login` or `Station`
//! exists it is known to be well formed, so the registry never sees raw,
//! unchecked strings from the wire. The gRPC layer converts `pb` types into
//! these at the edge; the core never touches prost structs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why an identifier from a client was refused. `field` names the request
/// field so the caller can act on the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidField {
    pub field: &'static str,
    pub problem: String,
}

impl InvalidField {
    pub fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

/// A name (of an end reason, state, policy ...) that names no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}")]
pub struct UnknownName {
    pub what: &'static str,
    pub value: String,
}

/// The value among `all` whose `name` is `s`: how every enum with an
/// `as_str` parses, so each is spelled once, in its `as_str`.
pub fn parse_name<T: Copy>(
    what: &'static str,
    all: &[T],
    name: fn(T) -> &'static str,
    s: &str,
) -> Result<T, UnknownName> {
    all.iter()
        .copied()
        .find(|v| name(*v) == s)
        .ok_or_else(|| UnknownName {
            what,
            value: s.to_string(),
        })
}

/// `impl FromStr` for an enum with an `ALL` list and a `&'static str` name
/// method (`as_str` unless given): it parses through that method, so each
/// name is spelled once.
macro_rules! from_str_by_name {
    ($t:ty, $what:literal) => {
        $crate::session::from_str_by_name!($t, $what, as_str);
    };
    ($t:ty, $what:literal, $name:ident) => {
        impl std::str::FromStr for $t {
            type Err = $crate::session::UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $crate::session::parse_name($what, &Self::ALL, Self::$name, s)
            }
        }
    };
}
pub(crate) use from_str_by_name;

/// Checks an identifier: 1..=max bytes of `[A-Za-z0-9._@+:-]` (logins may be
/// e-mail addresses; nothing that needs escaping in logs, Redis keys or URLs).
fn check_id(field: &'static str, value: &str, max: usize) -> Result<(), InvalidField> {
    if value.is_empty() {
        return Err(InvalidField::new(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(InvalidField::new(
            field,
            format!("is {} bytes long, the limit is {max}", value.len()),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '+' | ':' | '-')))
    {
        return Err(InvalidField::new(
            field,
            format!("contains {bad:?}; allowed are letters, digits and . _ @ + : -"),
        ));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The longest value accepted, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates `value` as this identifier; the error names `field`.
            pub fn parse_field(field: &'static str, value: &str) -> Result<Self, InvalidField> {
                check_id(field, value, Self::MAX_LEN)?;
                Ok(Self(Arc::from(value)))
            }

            /// Validates `value`, naming the default field in errors.
            pub fn parse(value: &str) -> Result<Self, InvalidField> {
                Self::parse_field($field, value)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }
    };
}

id_type!(
    /// A company. Tenants never see or touch each other.
    Tenant, "tenant", 64
);
id_type!(
    /// A user's login name within a tenant.
    Login, "login", 128
);
id_type!(
    /// A desk phone / hot-desk seat within a tenant.
    Station, "station", 64
);
id_type!(
    /// A stable id of a client machine (a desktop app's install id, a
    /// browser profile's id): logins claiming one station from one device
    /// share it.
    Device, "device", 64
);
id_type!(
    /// A session's id: unique across nodes and node restarts (128 random bits).
    SessionId, "session_id", 64
);
id_type!(
    /// A broker node's name, as shown in `Session.node`.
    NodeId, "node", 128
);

impl SessionId {
    /// A fresh random id (UUIDv4, 32 hex digits). The bytes come from the
    /// thread's CSPRNG (ChaCha, seeded by the OS), not a `getrandom`
    /// system call per claim as `Uuid::new_v4` makes.
    pub fn random() -> Self {
        let uuid = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        Self(Arc::from(uuid.simple().to_string()))
    }
}

/// Per-login grant counter: a fencing token. Every grant for a login gets a
/// larger generation than any earlier grant for that login — also after
/// the counter itself was lost (Redis lost its data, failed over to a
/// replica that was behind, an embedded node restarted): see [`Generation::next`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Generation(pub u64);

impl Generation {
    /// Generations per millisecond of the floor: up to this many grants of
    /// one login per millisecond stay on the floor (more run ahead of it,
    /// and are still increasing).
    pub const PER_MS: u64 = 10;

    /// The rule both registries apply (Rust here, `next_generation` in
    /// `lua/prelude.lua`): one more than the login's stored counter, but
    /// never below a floor that time raises, `now_ms × PER_MS`. A counter
    /// that is gone starts again at the floor, which is above every
    /// generation granted before as long as the clock now reads later than
    /// it did at that grant (the assumptions are in docs/operations.md).
    ///
    /// The floor stays below 10^14 until the year 2286: Redis's Lua prints
    /// numbers with 14 significant digits, and JavaScript reads JSON
    /// numbers exactly only below 2^53.
    pub fn next(stored: u64, now_ms: i64) -> Generation {
        let floor = u64::try_from(now_ms)
            .unwrap_or(0)
            .saturating_mul(Self::PER_MS);
        Generation(stored.saturating_add(1).max(floor))
    }
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// Normal logout (Release, or the client's `logout`).
    LoggedOut,
    /// Another claim for the same login took over.
    Superseded,
    /// The same login claimed a different station.
    StationChanged,
    /// An administrator (Evict) ended it.
    Evicted,
    /// Nobody connected in time, or the grace after a disconnect ran out.
    Expired,
}

impl EndReason {
    pub const ALL: [EndReason; 5] = [
        EndReason::LoggedOut,
        EndReason::Superseded,
        EndReason::StationChanged,
        EndReason::Evicted,
        EndReason::Expired,
    ];

    /// The `reason` string of a `forced_logout` frame (and of logs/metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::LoggedOut => "logged_out",
            EndReason::Superseded => "superseded",
            EndReason::StationChanged => "station_changed",
            EndReason::Evicted => "evicted",
            EndReason::Expired => "expired",
        }
    }

    /// The message shown to the person whose session ended.
    pub fn default_message(self) -> &'static str {
        match self {
            EndReason::LoggedOut => "You have been logged out.",
            EndReason::Superseded => {
                "Another user has logged with your credentials. Multiple logins not allowed."
            }
            EndReason::StationChanged => {
                "Your connection has been dropped due to a subsequent log on to a different station."
            }
            EndReason::Evicted => "You have been logged out by an administrator.",
            EndReason::Expired => "Your session has expired. Please log in again.",
        }
    }
}

from_str_by_name!(EndReason, "end reason");

/// Where a session is in its life. `Ended` carries why, so an ended session
/// without a reason cannot be represented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Claimed; no socket has connected yet.
    Pending,
    /// At least one socket is open.
    Connected,
    /// The last socket was lost; inside the grace period.
    Disconnected,
    /// Over.
    Ended(EndReason),
}

impl SessionState {
    pub fn is_live(self) -> bool {
        !matches!(self, SessionState::Ended(_))
    }

    /// The state's name (lower case, as in `presence` frames and stored
    /// records); an ended session's reason is spelled apart, see
    /// [`SessionState::parse`].
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Pending => "pending",
            SessionState::Connected => "connected",
            SessionState::Disconnected => "disconnected",
            SessionState::Ended(_) => "ended",
        }
    }

    /// Why the session ended, once it has.
    pub fn end_reason(self) -> Option<EndReason> {
        match self {
            SessionState::Ended(r) => Some(r),
            _ => None,
        }
    }

    /// The state named `state` ([`as_str`](SessionState::as_str));
    /// `end_reason` is read only when `state` is `ended`.
    pub fn parse(state: &str, end_reason: &str) -> Result<Self, UnknownName> {
        Ok(match state {
            "ended" => SessionState::Ended(end_reason.parse()?),
            _ => parse_name(
                "session state",
                &[
                    SessionState::Pending,
                    SessionState::Connected,
                    SessionState::Disconnected,
                ],
                Self::as_str,
                state,
            )?,
        })
    }
}

/// What a claim asks for.
#[derive(Clone, Debug)]
pub struct ClaimRequest {
    pub tenant: Tenant,
    pub login: Login,
    pub station: Option<Station>,
    pub client: String,
    pub role: String,
    pub policy: ConflictPolicy,
    pub attributes: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    /// A takeover proceeds only while the login's holder is still this
    /// session (the one the user was shown); another holder is
    /// `LoginInUse`, no holder is a plain grant.
    pub expected_session_id: Option<SessionId>,
    /// The machine the claim comes from: a station held from this device
    /// admits this claim too (a shared station).
    pub device: Option<Device>,
}

/// What to do when the login is already held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ConflictPolicy {
    /// Refuse with `LoginInUse` (the default).
    #[default]
    Reject,
    /// End the holder and grant.
    Takeover,
    /// End the holder only when it has no open socket (PENDING or
    /// DISCONNECTED); a connected holder is `LoginInUse`.
    TakeoverIfDisconnected,
}

impl ConflictPolicy {
    pub const ALL: [ConflictPolicy; 3] = [
        ConflictPolicy::Reject,
        ConflictPolicy::Takeover,
        ConflictPolicy::TakeoverIfDisconnected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConflictPolicy::Reject => "reject",
            ConflictPolicy::Takeover => "takeover",
            ConflictPolicy::TakeoverIfDisconnected => "takeover_if_disconnected",
        }
    }
}

from_str_by_name!(ConflictPolicy, "conflict policy");

/// A session as the registry knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    pub id: SessionId,
    pub tenant: Tenant,
    pub login: Login,
    pub station: Option<Station>,
    pub client: String,
    pub role: String,
    pub generation: Generation,
    pub state: SessionState,
    pub created_at_ms: i64,
    pub last_seen_ms: i64,
    /// The node that holds (or last held) the session's sockets, or that
    /// granted it while it is pending.
    pub node: NodeId,
    pub attributes: BTreeMap<String, String>,
    /// Presence status set by the client; empty until it sets one.
    pub status: String,
    /// The device the session was claimed from.
    pub device: Option<Device>,
}

impl Session {
    /// Roles that may watch a tenant's presence from a socket.
    pub fn can_watch_presence(&self) -> bool {
        matches!(self.role.as_str(), "supervisor" | "admin")
    }
}

/// Who or what ended a session, for the `forced_logout.by` field and the
/// audit log: the displacing claim's client and station, or the admin.
#[derive(Clone, Debug, PartialEq)]
pub struct EndedBy {
    /// The displacing claim's `client` ("desktop", ...) or "admin" / "broker".
    pub client: String,
    pub station: Option<Station>,
    /// The session that displaced this one, when a claim did.
    pub session_id: Option<SessionId>,
    pub at_ms: i64,
}

/// How a session ended: kept as a tombstone so a late client learns why.
#[derive(Clone, Debug, PartialEq)]
pub struct Ending {
    pub reason: EndReason,
    pub by: EndedBy,
    /// The message for the person (the admin's text for evictions).
    pub message: String,
}

/// A session that has ended, with how.
#[derive(Clone, Debug, PartialEq)]
pub struct Tombstone {
    pub session: Session,
    pub ending: Ending,
}

/// A notice pushed by the login service (license / password expiry ...).
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    pub id: String,
    pub kind: String,
    pub severity: String,
    pub text: String,
    /// A JSON object, or empty.
    pub data_json: String,
    /// Unix ms after which it is dropped undelivered.
    pub expires_at_ms: i64,
}

/// Presence change kinds, as in the proto.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceChange {
    Claimed,
    Connected,
    Disconnected,
    Reconnected,
    StatusChanged,
    Ended,
}

impl PresenceChange {
    pub const ALL: [PresenceChange; 6] = [
        PresenceChange::Claimed,
        PresenceChange::Connected,
        PresenceChange::Disconnected,
        PresenceChange::Reconnected,
        PresenceChange::StatusChanged,
        PresenceChange::Ended,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PresenceChange::Claimed => "claimed",
            PresenceChange::Connected => "connected",
            PresenceChange::Disconnected => "disconnected",
            PresenceChange::Reconnected => "reconnected",
            PresenceChange::StatusChanged => "status_changed",
            PresenceChange::Ended => "ended",
        }
    }
}

from_str_by_name!(PresenceChange, "presence change");

/// One presence change of one session.
#[derive(Clone, Debug, PartialEq)]
pub struct PresenceEvent {
    pub session: Session,
    pub change: PresenceChange,
    pub at_ms: i64,
    /// The tenant's event-log sequence number (1, 2, ...; 0 before the
    /// registry logged it): a watcher resumes after the last one it saw.
    pub seq: u64,
    /// For [`PresenceChange::Ended`]: the reason and who or what ended it.
    pub ending: Option<Ending>,
}

/// The host's wall clock in Unix ms, for stamps no other host judges
/// (when this node went degraded, an operator's `--expires-in`). Registry
/// deadlines and connect tokens read [`crate::clock::Clock`] instead.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generation_is_one_more_than_the_last_but_never_below_the_floor() {
        let now = 1_795_396_000_123;
        assert_eq!(Generation::next(0, now), Generation(17_953_960_001_230));
        assert_eq!(
            Generation::next(17_953_960_001_230, now),
            Generation(17_953_960_001_231)
        );
        assert_eq!(Generation::next(u64::MAX - 1, now), Generation(u64::MAX));
        assert_eq!(Generation::next(41, -5), Generation(42));
        // The floor stays exact in Redis's Lua (< 10^14) and in JavaScript
        // (< 2^53) until the year 2286.
        let year_2286_ms = 9_999_999_999_999;
        assert!(Generation::next(0, year_2286_ms).0 < 100_000_000_000_000);
        assert!(Generation::next(0, year_2286_ms).0 < 1 << 53);
    }

    #[test]
    fn random_session_ids_are_distinct_v4_uuids_that_parse_as_ids() {
        let a = SessionId::random();
        let b = SessionId::random();
        assert_ne!(a, b);
        let u = uuid::Uuid::parse_str(a.as_str()).expect("a UUID");
        assert_eq!(u.get_version(), Some(uuid::Version::Random));
        assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(a.as_str().len(), 32);
        assert!(SessionId::parse(a.as_str()).is_ok());
    }

    #[test]
    fn ids_accept_emails_and_refuse_spaces_naming_the_field() {
        assert!(Login::parse("ana.lopez+2@example.com").is_ok());
        let err = Login::parse("ana lopez").unwrap_err();
        assert_eq!(err.field, "login");
        assert!(err.to_string().contains("' '"), "{err}");
        let err = Station::parse_field("stations[1]", "").unwrap_err();
        assert_eq!(err.to_string(), "stations[1]: must not be empty");
        let long = "x".repeat(Tenant::MAX_LEN + 1);
        assert!(Tenant::parse(&long)
            .unwrap_err()
            .problem
            .contains("limit is 64"));
    }

    #[test]
    fn end_reasons_carry_the_documented_messages() {
        assert_eq!(
            EndReason::Superseded.default_message(),
            "Another user has logged with your credentials. Multiple logins not allowed."
        );
    }

    #[test]
    fn every_name_parses_back_to_its_value() {
        for r in EndReason::ALL {
            assert_eq!(r.as_str().parse(), Ok(r));
        }
        for p in ConflictPolicy::ALL {
            assert_eq!(p.as_str().parse(), Ok(p));
        }
        for c in PresenceChange::ALL {
            assert_eq!(c.as_str().parse(), Ok(c));
        }
        let states = [SessionState::Pending, SessionState::Connected]
            .into_iter()
            .chain([SessionState::Disconnected])
            .chain(EndReason::ALL.map(SessionState::Ended));
        for s in states {
            let reason = s.end_reason().map_or("", EndReason::as_str);
            assert_eq!(SessionState::parse(s.as_str(), reason), Ok(s));
        }
    }

    #[test]
    fn an_unknown_name_is_refused_naming_what_it_should_have_been() {
        let e = "retired".parse::<EndReason>().unwrap_err();
        assert_eq!(e.to_string(), r#"unknown end reason "retired""#);
        assert!("Takeover".parse::<ConflictPolicy>().is_err());
        let e = SessionState::parse("ended", "").unwrap_err();
        assert_eq!(e.what, "end reason");
        assert_eq!(
            SessionState::parse("gone", "").unwrap_err().what,
            "session state"
        );
    }

    #[test]
    fn session_ids_are_unique() {
        assert_ne!(SessionId::random(), SessionId::random());
    }
}
