//! The broker's WebSocket close codes and what a client does after each.
//!
//! This mirrors the *Close codes* table of `docs/protocol.md`. The broker
//! crate has its own close-code type; this crate does not depend on the
//! broker, so it keeps this small table — change both together.

/// The session was logged out (`logout`, or `Release`): stop.
pub const LOGGED_OUT: u16 = 4000;
/// Another sign-in of the same login took over: stop, show the message.
pub const SUPERSEDED: u16 = 4001;
/// A sign-in of the same login at another station took over: stop.
pub const STATION_CHANGED: u16 = 4002;
/// An administrator evicted the session: stop.
pub const EVICTED: u16 = 4003;
/// The session expired or is unknown: stop, sign in again.
pub const EXPIRED: u16 = 4004;
/// The connect token was refused: stop, sign in again.
pub const INVALID_TOKEN: u16 = 4401;
/// Too many sockets for the session: stop.
pub const FORBIDDEN: u16 = 4403;
/// Too many messages per second: back off, reconnect.
pub const RATE_LIMITED: u16 = 4429;
/// The node is restarting (after a `reconnect` frame): reconnect anywhere.
pub const RESTARTING: u16 = 1012;
/// The registry is unavailable: reconnect with backoff.
pub const TRY_AGAIN_LATER: u16 = 1013;

/// What a client does after a close code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseAction {
    /// The session is over (or this token can never work): never reconnect.
    Stop,
    /// The connection failed, not the session: reconnect with backoff.
    Reconnect,
}

/// What to do after the socket closed with `code`. Every code not listed
/// as final (4000–4004, 4401, 4403) is worth a reconnect, as in the SDK.
pub fn action(code: u16) -> CloseAction {
    match code {
        LOGGED_OUT | SUPERSEDED | STATION_CHANGED | EVICTED | EXPIRED | INVALID_TOKEN
        | FORBIDDEN => CloseAction::Stop,
        _ => CloseAction::Reconnect,
    }
}

/// The `forced_logout` reason and message the broker sends with `code`,
/// for a close that arrives without its frame.
pub fn forced_logout(code: u16) -> Option<(&'static str, &'static str)> {
    match code {
        SUPERSEDED => Some((
            "superseded",
            "Another user has logged with your credentials. Multiple logins not allowed.",
        )),
        STATION_CHANGED => Some((
            "station_changed",
            "Your connection has been dropped due to a subsequent log on to a different station.",
        )),
        EVICTED => Some(("evicted", "You have been logged out by an administrator.")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_codes_stop_and_the_rest_reconnect() {
        for code in [4000, 4001, 4002, 4003, 4004, 4401, 4403] {
            assert_eq!(action(code), CloseAction::Stop, "{code}");
        }
        for code in [1000, 1001, 1006, 1008, 1009, 1011, 1012, 1013, 4429] {
            assert_eq!(action(code), CloseAction::Reconnect, "{code}");
        }
    }

    #[test]
    fn forced_logout_codes_carry_the_people_message() {
        assert_eq!(forced_logout(SUPERSEDED).map(|r| r.0), Some("superseded"));
        assert_eq!(forced_logout(EVICTED).map(|r| r.0), Some("evicted"));
        assert_eq!(forced_logout(EXPIRED), None);
    }
}
