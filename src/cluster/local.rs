//! The sessions this node holds sockets for, as last seen in Redis, and
//! the attaches in flight: what reconciliation and recovery work from.

use dashmap::DashMap;

use crate::session::{Session, SessionId, Tenant};

/// A session this node holds sockets for, as last seen in Redis: what it
/// needs to reconcile, and to put back if Redis loses its data.
#[derive(Clone, Debug)]
pub(crate) struct Held {
    pub session: Session,
    pub conns: Vec<u64>,
}

#[derive(Default)]
pub(crate) struct Local {
    held: DashMap<(Tenant, SessionId), Held>,
    /// Attaches in flight per session, counted from before the attach
    /// script is sent until its socket is in `held` (or was refused): a
    /// socket Redis lists under this node that is in neither map is stale.
    attaching: DashMap<(Tenant, SessionId), usize>,
}

/// One attach in flight, counted in [`Local::attaching`] while it lives
/// (also when the attach fails or its future is dropped).
pub(crate) struct Attaching<'a> {
    map: &'a DashMap<(Tenant, SessionId), usize>,
    key: (Tenant, SessionId),
}

impl Drop for Attaching<'_> {
    fn drop(&mut self) {
        if let Some(mut n) = self.map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
        self.map.remove_if(&self.key, |_, n| *n == 0);
    }
}

impl Local {
    pub(crate) fn attaching(&self, tenant: &Tenant, id: &SessionId) -> Attaching<'_> {
        let key = (tenant.clone(), id.clone());
        *self.attaching.entry(key.clone()).or_insert(0) += 1;
        Attaching {
            map: &self.attaching,
            key,
        }
    }

    pub(crate) fn remember(&self, tenant: &Tenant, session: &Session, conn: u64) {
        let mut entry = self
            .held
            .entry((tenant.clone(), session.id.clone()))
            .or_insert_with(|| Held {
                session: session.clone(),
                conns: Vec::new(),
            });
        entry.session = session.clone();
        if !entry.conns.contains(&conn) {
            entry.conns.push(conn);
        }
    }

    pub(crate) fn forget(&self, tenant: &Tenant, id: &SessionId, conn: u64) {
        let key = (tenant.clone(), id.clone());
        let empty = match self.held.get_mut(&key) {
            Some(mut l) => {
                l.conns.retain(|c| *c != conn);
                l.conns.is_empty()
            }
            None => false,
        };
        if empty {
            self.held.remove_if(&key, |_, l| l.conns.is_empty());
        }
    }

    pub(crate) fn ended(&self, tenant: &Tenant, id: &SessionId) {
        self.held.remove(&(tenant.clone(), id.clone()));
    }

    pub(crate) fn clear(&self) {
        self.held.clear();
    }

    pub(crate) fn held(&self) -> Vec<(Tenant, SessionId, Held)> {
        self.held
            .iter()
            .map(|e| (e.key().0.clone(), e.key().1.clone(), e.value().clone()))
            .collect()
    }

    pub(crate) fn holds(&self, tenant: &Tenant, id: SessionId) -> bool {
        let key = (tenant.clone(), id);
        self.held.contains_key(&key) || self.attaching.contains_key(&key)
    }
}
