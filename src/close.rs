//! Every WebSocket close code the broker sends, with what a client should do
//! about it.
//!
//! This is the one table: the gateway, the hub and the heartbeat close
//! sockets with a [`CloseCode`], never a number, and the close-code table in
//! docs/protocol.md is checked against [`CloseCode::ALL`] (as is the JS SDK's
//! list of codes after which it stops). A variant is a *cause*, so two causes
//! may share a number (1008, 4004); they then share a class too.

use std::fmt;

use crate::session::{from_str_by_name, EndReason};

/// What a client should do when its socket closes with a given code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseClass {
    /// Reconnect at once (to any node): the session lives on.
    ReconnectNow,
    /// Reconnect after a backoff: retrying at once would hit the same limit
    /// or the same outage.
    BackOff,
    /// Do not reconnect: the session is over or the token is no good.
    Stop,
}

impl CloseClass {
    pub const ALL: [CloseClass; 3] = [
        CloseClass::ReconnectNow,
        CloseClass::BackOff,
        CloseClass::Stop,
    ];

    /// The class's name in docs/protocol.md.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseClass::ReconnectNow => "reconnect_now",
            CloseClass::BackOff => "back_off",
            CloseClass::Stop => "stop",
        }
    }
}

from_str_by_name!(CloseClass, "close class");

/// A close code the broker sends, named by its cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// The session was logged out (Release, or the client's `logout`).
    LoggedOut,
    /// Another claim for the login took over.
    Superseded,
    /// The login claimed a different station.
    StationChanged,
    /// An administrator evicted the session.
    Evicted,
    /// The session expired (nobody connected in time, or grace ran out).
    Expired,
    /// The token names a session the registry does not know (or a stale
    /// generation of it).
    SessionUnknown,
    /// The connect token was refused.
    InvalidToken,
    /// The session already has `max_sockets_per_session` sockets.
    TooManySockets,
    /// The session is at `max_sockets_per_session`, but some sockets are on
    /// other nodes, which may have died without being declared dead yet.
    SocketsElsewhere,
    /// The client sent more than `messages_per_second`.
    RateLimited,
    /// The client did not read its frames: its outbound queue filled up.
    SlowConsumer,
    /// Ten bad client frames in a row.
    TooManyBadFrames,
    /// A client message over `max_message_bytes`.
    MessageTooBig,
    /// Nothing arrived from the client for two heartbeats.
    HeartbeatTimeout,
    /// The node is draining (after a `reconnect` frame).
    Restarting,
    /// The registry (Redis) cannot be reached.
    Unavailable,
}

impl CloseCode {
    /// Every close code, in the order of docs/protocol.md's table.
    pub const ALL: [CloseCode; 16] = [
        CloseCode::LoggedOut,
        CloseCode::Superseded,
        CloseCode::StationChanged,
        CloseCode::Evicted,
        CloseCode::Expired,
        CloseCode::SessionUnknown,
        CloseCode::InvalidToken,
        CloseCode::TooManySockets,
        CloseCode::SocketsElsewhere,
        CloseCode::RateLimited,
        CloseCode::SlowConsumer,
        CloseCode::TooManyBadFrames,
        CloseCode::MessageTooBig,
        CloseCode::HeartbeatTimeout,
        CloseCode::Restarting,
        CloseCode::Unavailable,
    ];

    /// The number on the wire.
    pub fn as_u16(self) -> u16 {
        match self {
            CloseCode::LoggedOut => 4000,
            CloseCode::Superseded => 4001,
            CloseCode::StationChanged => 4002,
            CloseCode::Evicted => 4003,
            CloseCode::Expired | CloseCode::SessionUnknown => 4004,
            CloseCode::InvalidToken => 4401,
            CloseCode::TooManySockets => 4403,
            CloseCode::SocketsElsewhere => 4409,
            CloseCode::RateLimited => 4429,
            CloseCode::SlowConsumer | CloseCode::TooManyBadFrames => 1008,
            CloseCode::MessageTooBig => 1009,
            CloseCode::HeartbeatTimeout => 1001,
            CloseCode::Restarting => 1012,
            CloseCode::Unavailable => 1013,
        }
    }

    /// What the client should do.
    pub fn class(self) -> CloseClass {
        match self {
            CloseCode::LoggedOut
            | CloseCode::Superseded
            | CloseCode::StationChanged
            | CloseCode::Evicted
            | CloseCode::Expired
            | CloseCode::SessionUnknown
            | CloseCode::InvalidToken
            | CloseCode::TooManySockets => CloseClass::Stop,
            // A too-big message is a client bug, but the session is fine:
            // reconnecting (after a backoff) keeps the agent signed in.
            CloseCode::RateLimited
            | CloseCode::SlowConsumer
            | CloseCode::TooManyBadFrames
            | CloseCode::MessageTooBig
            | CloseCode::SocketsElsewhere
            | CloseCode::Unavailable => CloseClass::BackOff,
            CloseCode::HeartbeatTimeout | CloseCode::Restarting => CloseClass::ReconnectNow,
        }
    }

    /// The close frame's reason text (also this cause's name in logs and
    /// metrics, and in `FromStr`).
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::LoggedOut => EndReason::LoggedOut.as_str(),
            CloseCode::Superseded => EndReason::Superseded.as_str(),
            CloseCode::StationChanged => EndReason::StationChanged.as_str(),
            CloseCode::Evicted => EndReason::Evicted.as_str(),
            CloseCode::Expired => EndReason::Expired.as_str(),
            CloseCode::SessionUnknown => "session_unknown",
            CloseCode::InvalidToken => "invalid token",
            CloseCode::TooManySockets => "too_many_sockets",
            CloseCode::SocketsElsewhere => "sockets_elsewhere",
            CloseCode::RateLimited => "rate limited",
            CloseCode::SlowConsumer => "slow consumer: outbound queue full",
            CloseCode::TooManyBadFrames => "too many bad frames",
            CloseCode::MessageTooBig => "message too big",
            CloseCode::HeartbeatTimeout => "heartbeat timeout",
            CloseCode::Restarting => "node restarting",
            CloseCode::Unavailable => "unavailable",
        }
    }
}

impl CloseCode {
    /// When it is sent, for people (docs/protocol.md's table).
    pub fn meaning(self) -> &'static str {
        match self {
            CloseCode::LoggedOut => "logged out (after `logged_out`)",
            CloseCode::Superseded => {
                "another claim took the login over (after `forced_logout`); show its message"
            }
            CloseCode::StationChanged => {
                "the login claimed another station (after `forced_logout`); show its message"
            }
            CloseCode::Evicted => {
                "evicted by an administrator (after `forced_logout`); show its message"
            }
            CloseCode::Expired => "the session expired (after `forced_logout`); sign in again",
            CloseCode::SessionUnknown => {
                "the token names a session the registry does not know (or a stale generation); sign in again"
            }
            CloseCode::InvalidToken => "the connect token was refused; sign in again",
            CloseCode::TooManySockets => {
                "the session already has `max_sockets_per_session` sockets, all on the node it asked"
            }
            CloseCode::SocketsElsewhere => {
                "the session already has `max_sockets_per_session` sockets, some on other nodes that may have died; retry: they stop counting once the cluster declares such a node dead (`lease_ttl`)"
            }
            CloseCode::RateLimited => "more than `messages_per_second` client messages",
            CloseCode::SlowConsumer => "the client did not read: its outbound queue filled up",
            CloseCode::TooManyBadFrames => "ten bad client frames in a row",
            CloseCode::MessageTooBig => {
                "a client message over `max_message_bytes`; the client has a bug"
            }
            CloseCode::HeartbeatTimeout => "nothing arrived from the client for two heartbeats",
            CloseCode::Restarting => {
                "the node is draining (after `reconnect`); reconnect to any node after `after_ms`"
            }
            CloseCode::Unavailable => "the registry (Redis) cannot be reached",
        }
    }
}

impl From<EndReason> for CloseCode {
    /// The close code sockets of a session that ended for `reason` get.
    fn from(reason: EndReason) -> Self {
        match reason {
            EndReason::LoggedOut => CloseCode::LoggedOut,
            EndReason::Superseded => CloseCode::Superseded,
            EndReason::StationChanged => CloseCode::StationChanged,
            EndReason::Evicted => CloseCode::Evicted,
            EndReason::Expired => CloseCode::Expired,
        }
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.as_u16(), self.reason())
    }
}

// Parses a close frame's reason text into its cause.
from_str_by_name!(CloseCode, "close reason", reason);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_names_one_close_code_and_every_class_parses() {
        for code in CloseCode::ALL {
            assert_eq!(code.reason().parse::<CloseCode>(), Ok(code));
        }
        assert!("nope".parse::<CloseCode>().is_err());
        for class in CloseClass::ALL {
            assert_eq!(class.as_str().parse::<CloseClass>(), Ok(class));
        }
    }

    #[test]
    fn causes_that_share_a_number_share_a_class() {
        for a in CloseCode::ALL {
            for b in CloseCode::ALL {
                if a.as_u16() == b.as_u16() {
                    assert_eq!(a.class(), b.class(), "{a} and {b}");
                }
            }
        }
    }

    #[test]
    fn end_reasons_close_with_their_documented_codes() {
        let codes = [
            (EndReason::LoggedOut, 4000),
            (EndReason::Superseded, 4001),
            (EndReason::StationChanged, 4002),
            (EndReason::Evicted, 4003),
            (EndReason::Expired, 4004),
        ];
        for (reason, number) in codes {
            let code = CloseCode::from(reason);
            assert_eq!(code.as_u16(), number, "{reason:?}");
            assert_eq!(code.reason(), reason.as_str());
            assert_eq!(code.class(), CloseClass::Stop);
        }
    }
}
