//! Which sockets of which sessions live on this node: the one index that
//! the hub (delivery), the gateway (attach and detach) and the cluster
//! (reconciliation, re-assertion) all read.
//!
//! Per session, under one lock: the sockets this node serves for it (from
//! before their attach is sent until their task lets them go), and what
//! the registry last confirmed about it — the session as an attach
//! returned it and which of those sockets the registry lists. Because both
//! live in one entry, nothing has to keep two maps in step:
//!
//! - a socket is [`insert`](LocalSockets::insert)ed before its attach is
//!   sent and [`remove`](LocalSockets::remove)d only after the attach
//!   returned, so for as long as Redis could list it under this node,
//!   [`holds`](LocalSockets::holds) says so and reconciliation never takes
//!   it for a stale one;
//! - an ended session ([`end`](LocalSockets::end)) or a node that can no
//!   longer vouch for its sockets ([`disown_all`](LocalSockets::disown_all))
//!   keeps its sockets until their tasks finish, so they still get their
//!   terminal frame, but is no longer reconciled or re-asserted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use super::SocketShared;
use crate::metrics_names as m;
use crate::session::{Session, SessionId, Tenant};

/// This node's sockets by session.
#[derive(Default)]
pub struct LocalSockets {
    sessions: DashMap<SessionId, Held>,
    /// Sockets in `sessions`, for `/metrics` and tests.
    count: AtomicUsize,
}

/// One session's sockets on this node.
struct Held {
    tenant: Tenant,
    sockets: Vec<Arc<SocketShared>>,
    /// What the registry confirmed; `None` until an attach succeeded, and
    /// again once the session ended, the node stopped vouching, or its
    /// last confirmed socket left.
    vouched: Option<Vouched>,
}

/// A session as the registry last confirmed it, with the sockets (`conn`)
/// it lists under this node: what reconciliation compares and what
/// recovery puts back if Redis loses its data.
#[derive(Clone, Debug)]
pub struct Vouched {
    pub session: Session,
    pub conns: Vec<u64>,
}

impl LocalSockets {
    /// Adds a socket so events of its session reach it (before its attach
    /// is sent, so no event after the attach is missed).
    pub fn insert(&self, socket: Arc<SocketShared>) {
        self.sessions
            .entry(socket.session.clone())
            .or_insert_with(|| Held {
                tenant: socket.tenant.clone(),
                sockets: Vec::new(),
                vouched: None,
            })
            .sockets
            .push(socket);
        self.count.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(m::SOCKETS).increment(1.0);
    }

    /// Removes a socket (idempotent); false when it was not here.
    pub fn remove(&self, socket: &SocketShared) -> bool {
        let mut removed = false;
        self.sessions.remove_if_mut(&socket.session, |_, held| {
            let before = held.sockets.len();
            held.sockets.retain(|s| s.conn != socket.conn);
            removed = held.sockets.len() < before;
            if let Some(v) = &mut held.vouched {
                v.conns.retain(|c| *c != socket.conn);
                if v.conns.is_empty() {
                    held.vouched = None;
                }
            }
            held.sockets.is_empty()
        });
        if removed {
            self.count.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!(m::SOCKETS).decrement(1.0);
        }
        removed
    }

    /// The registry attached socket `conn` to `session`: records the
    /// session as confirmed. Nothing is recorded for a socket this node no
    /// longer serves.
    pub fn vouch(&self, session: &Session, conn: u64) {
        let Some(mut held) = self.sessions.get_mut(&session.id) else {
            return;
        };
        if held.tenant != session.tenant || !held.sockets.iter().any(|s| s.conn == conn) {
            return;
        }
        let v = held.vouched.get_or_insert_with(|| Vouched {
            session: session.clone(),
            conns: Vec::new(),
        });
        v.session = session.clone();
        if !v.conns.contains(&conn) {
            v.conns.push(conn);
        }
    }

    /// The session ended: it is no longer vouched for; returns its sockets
    /// (to be told why).
    pub fn end(&self, tenant: &Tenant, id: &SessionId) -> Vec<Arc<SocketShared>> {
        match self.sessions.get_mut(id) {
            Some(mut held) if held.tenant == *tenant => {
                held.vouched = None;
                held.sockets.clone()
            }
            _ => Vec::new(),
        }
    }

    /// This node can no longer vouch for any of its sockets (the cluster
    /// declared it dead); they stay until their tasks finish.
    pub fn disown_all(&self) {
        for mut held in self.sessions.iter_mut() {
            held.vouched = None;
        }
    }

    /// The sockets of a session, for delivery.
    pub fn of(&self, id: &SessionId) -> Vec<Arc<SocketShared>> {
        self.sessions
            .get(id)
            .map(|h| h.sockets.clone())
            .unwrap_or_default()
    }

    /// Whether this node serves a socket of the session, attached or
    /// still attaching.
    pub fn holds(&self, tenant: &Tenant, id: &SessionId) -> bool {
        self.sessions
            .get(id)
            .is_some_and(|h| h.tenant == *tenant && !h.sockets.is_empty())
    }

    /// Every session the registry confirmed, with its confirmed sockets.
    pub fn vouched(&self) -> Vec<(Tenant, Vouched)> {
        self.sessions
            .iter()
            .filter_map(|h| Some((h.tenant.clone(), h.vouched.clone()?)))
            .collect()
    }

    /// Every socket on this node.
    pub fn all(&self) -> Vec<Arc<SocketShared>> {
        self.sessions
            .iter()
            .flat_map(|h| h.sockets.clone())
            .collect()
    }

    /// Sockets on this node.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether this node serves no socket.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Generation, Login, NodeId, SessionState};

    fn session(tenant: &str) -> Session {
        Session {
            id: SessionId::random(),
            tenant: Tenant::parse(tenant).unwrap(),
            login: Login::parse("ana").unwrap(),
            station: None,
            client: "web".into(),
            role: "agent".into(),
            generation: Generation(1),
            state: SessionState::Connected,
            created_at_ms: 0,
            last_seen_ms: 0,
            node: NodeId::parse("n").unwrap(),
            attributes: Default::default(),
            status: String::new(),
            device: None,
        }
    }

    fn socket(s: &Session, conn: u64) -> Arc<SocketShared> {
        Arc::new(SocketShared::new(conn, s.tenant.clone(), s.id.clone(), 4))
    }

    #[test]
    fn a_socket_is_held_from_before_its_attach_until_it_leaves() {
        let local = LocalSockets::default();
        let s = session("acme");
        let a = socket(&s, 1);
        local.insert(a.clone());
        // Attaching: held (reconciliation leaves it alone), not yet vouched.
        assert!(local.holds(&s.tenant, &s.id));
        assert!(local.vouched().is_empty());
        local.vouch(&s, 1);
        let v = local.vouched();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].1.conns, vec![1]);
        // A second socket, still attaching, keeps the session held after
        // the first leaves, but nothing confirmed is left to vouch for.
        local.insert(socket(&s, 2));
        assert!(local.remove(&a));
        assert!(!local.remove(&a), "idempotent");
        assert!(local.holds(&s.tenant, &s.id));
        assert!(local.vouched().is_empty());
        assert_eq!(local.len(), 1);
        // Another tenant's session of the same id is not this one.
        assert!(!local.holds(&Tenant::parse("other").unwrap(), &s.id));
    }

    #[test]
    fn an_ended_or_disowned_session_keeps_its_sockets_but_is_not_vouched_for() {
        let local = LocalSockets::default();
        let (s, t) = (session("acme"), session("acme"));
        local.insert(socket(&s, 1));
        local.insert(socket(&t, 2));
        local.vouch(&s, 1);
        local.vouch(&t, 2);
        assert_eq!(local.end(&s.tenant, &s.id).len(), 1, "told why it ended");
        assert_eq!(local.vouched().len(), 1);
        assert!(local.holds(&s.tenant, &s.id), "until its task lets it go");
        local.disown_all();
        assert!(local.vouched().is_empty());
        assert_eq!(local.all().len(), 2);
    }

    #[test]
    fn an_attach_for_a_socket_no_longer_served_records_nothing() {
        let local = LocalSockets::default();
        let s = session("acme");
        local.vouch(&s, 1);
        local.insert(socket(&s, 2));
        local.vouch(&s, 1);
        assert!(local.vouched().is_empty());
    }
}
