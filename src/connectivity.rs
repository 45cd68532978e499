//! The node's connectivity: whether it can vouch for its sessions right now.
//!
//! A node that lost Redis, lost its pub/sub subscription (so forced logouts
//! may arrive late) or cannot confirm its lease is *degraded*: its sockets
//! stay open, but what they are told may be late. Clients are told so with
//! a `connectivity` frame (see [`crate::frames::connectivity`]) so an agent
//! can tell "your network" from "our backend".
//!
//! [`Health`] is the one owner of the state: the registry feeds it the
//! cause it sees (or none) wherever its health flags flip; on every change
//! it publishes [`Event::Connectivity`] to the hub, which tells every local
//! socket and sets the `turnstile_degraded` gauge.

use std::sync::Mutex;

use crate::registry::{Event, EventSink};
use crate::session::now_ms;

/// Why a node cannot vouch for its sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Redis does not answer: claims fail, forced logouts cannot be heard.
    RedisUnreachable,
    /// The pub/sub subscription is lost: forced logouts may arrive late
    /// (reconciliation delivers them).
    SubscriptionLost,
    /// The node's lease in Redis is not confirmed (paused, slow Redis).
    LeaseUnconfirmed,
}

impl Cause {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::RedisUnreachable => "redis_unreachable",
            Cause::SubscriptionLost => "subscription_lost",
            Cause::LeaseUnconfirmed => "lease_unconfirmed",
        }
    }
}

/// The node's connectivity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Connectivity {
    /// The node can vouch for its sessions.
    #[default]
    Ok,
    /// It cannot, because of `cause`, since `since_ms` (Unix ms).
    Degraded { cause: Cause, since_ms: i64 },
}

impl Connectivity {
    /// Degraded because of `cause`, from now.
    pub fn degraded(cause: Cause) -> Self {
        Connectivity::Degraded {
            cause,
            since_ms: now_ms(),
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, Connectivity::Ok)
    }
}

/// The owner of a node's connectivity state.
#[derive(Debug, Default)]
pub struct Health {
    /// A std mutex: held only to compare, store and publish (which never
    /// blocks), so changes reach the sink in the order they were made.
    state: Mutex<Connectivity>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records what the registry sees now: `None` when all is well, else
    /// the cause. A change is published to `sink`; an outage keeps the
    /// `since_ms` of its start when only its cause changes.
    pub fn update(&self, cause: Option<Cause>, sink: &dyn EventSink) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let next = match (cause, *state) {
            (None, _) => Connectivity::Ok,
            (Some(cause), Connectivity::Degraded { since_ms, .. }) => {
                Connectivity::Degraded { cause, since_ms }
            }
            (Some(cause), Connectivity::Ok) => Connectivity::degraded(cause),
        };
        if next != *state {
            *state = next;
            self.publish(next, sink);
        }
    }

    fn publish(&self, next: Connectivity, sink: &dyn EventSink) {
        match next {
            Connectivity::Ok => {
                tracing::info!("connectivity ok: this node vouches for its sessions again")
            }
            Connectivity::Degraded { cause, .. } => {
                tracing::warn!(
                    cause = cause.as_str(),
                    "connectivity degraded: telling this node's sockets"
                )
            }
        }
        sink.publish(Event::Connectivity(next));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen(Mutex<Vec<Connectivity>>);

    impl EventSink for Seen {
        fn publish(&self, event: Event) {
            if let Event::Connectivity(c) = event {
                self.0.lock().unwrap().push(c);
            }
        }
    }

    #[test]
    fn only_changes_are_published_and_an_outage_keeps_its_start() {
        let health = Health::new();
        let seen = Seen::default();
        health.update(None, &seen);
        health.update(Some(Cause::SubscriptionLost), &seen);
        health.update(Some(Cause::SubscriptionLost), &seen);
        health.update(Some(Cause::RedisUnreachable), &seen);
        health.update(None, &seen);
        let seen = seen.0.into_inner().unwrap();
        assert_eq!(seen.len(), 3, "{seen:?}");
        let (
            Connectivity::Degraded {
                cause: c1,
                since_ms: s1,
            },
            Connectivity::Degraded {
                cause: c2,
                since_ms: s2,
            },
        ) = (seen[0], seen[1])
        else {
            panic!("{seen:?}")
        };
        assert_eq!((c1, c2), (Cause::SubscriptionLost, Cause::RedisUnreachable));
        assert_eq!(s1, s2, "the outage's start does not move");
        assert_eq!(seen[2], Connectivity::Ok);
    }
}
