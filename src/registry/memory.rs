//! The embedded, in-memory registry: the single-node default.
//!
//! Each tenant's [`TenantState`] sits behind its own `std::sync::Mutex` in a
//! `DashMap`. A std mutex, not a tokio one, because nothing awaits while it is
//! held and every critical section is a few map operations. Events are
//! published while the lock is held, which orders each tenant's events.
//!
//! Expiry is **one** background task over a deadline set, woken by a `Notify`
//! only when an earlier deadline arrives — not a timer per session. Deadlines
//! are hints: when one fires the state machine checks the session's real
//! deadline, so a session that reconnected in time is left alone. The same
//! task prunes what a tenant stores with a lifetime (tombstones,
//! idempotency keys, mailboxes) when it runs out, so a tenant that sees no
//! further call does not keep them.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::log::EventLog;
use super::state::{Effects, TenantState};
use super::{
    Attached, Census, ClaimOutcome, DirectoryChange, Event, EventSink, EvictTarget, NotifyCounts,
    NotifyTarget, Page, Registry, RegistryConfig, RegistryError, Replay, SessionKey, SocketId,
    StationInfo, StationPage, StationQuery, TenantUsage,
};
use crate::session::{ClaimRequest, Generation, Notice, Session, SessionId, Station, Tenant};

/// The in-memory registry. Dropping it stops its expiry task.
pub struct MemoryRegistry {
    shared: Arc<Shared>,
    stop: CancellationToken,
}

struct Shared {
    cfg: RegistryConfig,
    sink: Arc<dyn EventSink>,
    tenants: DashMap<Tenant, Arc<Mutex<TenantState>>>,
    /// Armed deadlines: (unix ms, tenant, session), or (unix ms, tenant,
    /// `None`): prune the tenant then (rounded up to the second, so a
    /// tenant has at most one such entry per second ahead).
    deadlines: Mutex<BTreeSet<(i64, Tenant, Option<SessionId>)>>,
    /// Wakes the expiry task when an earlier deadline is armed.
    wake: Notify,
    /// The last sequence each webhook (tenant, hook) sent: one entry per
    /// configured webhook.
    hooks: DashMap<(Tenant, String), u64>,
}

impl MemoryRegistry {
    /// Creates the registry and spawns its expiry task on the current runtime.
    pub fn start(cfg: RegistryConfig, sink: Arc<dyn EventSink>) -> Arc<Self> {
        let shared = Arc::new(Shared {
            cfg,
            sink,
            tenants: DashMap::new(),
            deadlines: Mutex::new(BTreeSet::new()),
            wake: Notify::new(),
            hooks: DashMap::new(),
        });
        let stop = CancellationToken::new();
        tokio::spawn(expire_loop(shared.clone(), stop.clone()));
        Arc::new(Self { shared, stop })
    }

    /// Runs a transition on the tenant's state (created on first write),
    /// publishing its events before the lock is released.
    fn write<T>(
        &self,
        tenant: &Tenant,
        f: impl FnOnce(&mut TenantState, &RegistryConfig, i64, &mut Effects) -> T,
    ) -> T {
        let state = self
            .shared
            .tenants
            .entry(tenant.clone())
            .or_insert_with(|| Arc::new(Mutex::new(TenantState::new(tenant.clone()))))
            .clone();
        let mut guard = lock(&state);
        self.shared.apply(tenant, &mut guard, f)
    }

    /// Runs a read on the tenant's state; `None` when the tenant has none.
    fn read<T>(&self, tenant: &Tenant, f: impl FnOnce(&TenantState) -> T) -> Option<T> {
        let state = self.shared.tenants.get(tenant)?.clone();
        let guard = lock(&state);
        Some(f(&guard))
    }
}

impl Drop for MemoryRegistry {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Shared {
    fn apply<T>(
        &self,
        tenant: &Tenant,
        state: &mut TenantState,
        f: impl FnOnce(&mut TenantState, &RegistryConfig, i64, &mut Effects) -> T,
    ) -> T {
        let mut fx = Effects::default();
        let now = self.cfg.clock.now_ms();
        let out = f(state, &self.cfg, now, &mut fx);
        for event in fx.events {
            let event = match event {
                Event::Presence(p) => {
                    let p = Arc::try_unwrap(p).unwrap_or_else(|shared| (*shared).clone());
                    Event::Presence(state.log.push(p, now, &self.cfg.event_log))
                }
                other => other,
            };
            self.sink.publish(event);
        }
        if !fx.deadlines.is_empty() || !fx.prune_at.is_empty() {
            let mut deadlines = lock(&self.deadlines);
            let earliest_before = deadlines.first().map(|d| d.0);
            for (at, id) in fx.deadlines {
                deadlines.insert((at, tenant.clone(), Some(id)));
            }
            for at in fx.prune_at {
                let second = at.div_euclid(1000).saturating_add(1).saturating_mul(1000);
                deadlines.insert((second, tenant.clone(), None));
            }
            if deadlines.first().map(|d| d.0) != earliest_before {
                self.wake.notify_one();
            }
        }
        out
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it: the
/// state machine never leaves a half-applied transition behind a panic point
/// that matters more than staying available.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Expirations between yields of the expiry task.
const EXPIRE_BATCH: usize = 256;

/// The one expiry task: sleeps until the earliest deadline, expires what is
/// due, and goes back to sleep.
async fn expire_loop(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let next = shared.expire_due().await;
        let sleep = match next {
            Some(at) => shared.cfg.clock.until(at).min(Duration::from_secs(60)),
            None => Duration::from_secs(60),
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

impl Shared {
    /// Expires every session whose deadline is due now (yielding every
    /// `EXPIRE_BATCH`); returns the next deadline.
    async fn expire_due(&self) -> Option<i64> {
        let now = self.cfg.clock.now_ms();
        let mut due = Vec::new();
        let next = {
            let mut deadlines = lock(&self.deadlines);
            while let Some(first) = deadlines.first() {
                if first.0 > now {
                    break;
                }
                due.extend(deadlines.pop_first());
            }
            deadlines.first().map(|d| d.0)
        };
        for (n, (_, tenant, id)) in due.into_iter().enumerate() {
            // A mass expiry (thousands of sign-ins that never connected)
            // must not hold a worker for tens of milliseconds.
            if n > 0 && n % EXPIRE_BATCH == 0 {
                tokio::task::yield_now().await;
            }
            let Some(state) = self.tenants.get(&tenant).map(|s| s.clone()) else {
                continue;
            };
            let mut guard = lock(&state);
            match id {
                Some(id) => self.apply(&tenant, &mut guard, |s, cfg, now, fx| {
                    s.expire(&id, cfg, now, fx);
                }),
                None => self.apply(&tenant, &mut guard, |s, _, now, _| s.prune(now)),
            }
        }
        next
    }
}

impl MemoryRegistry {
    /// Expires what is due at the clock's "now" at once, as the expiry task
    /// does when it wakes; for tests that move a manual clock.
    pub async fn expire_due(&self) {
        self.shared.expire_due().await;
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn claim(&self, req: ClaimRequest) -> Result<ClaimOutcome, RegistryError> {
        let tenant = req.tenant.clone();
        let outcome = self.write(&tenant, |s, cfg, now, fx| s.claim(req, cfg, now, fx))?;
        if matches!(&outcome, ClaimOutcome::Granted { evicted, .. } if !evicted.is_empty()) {
            // The hub has just woken the displaced sessions' sockets, on
            // this thread: let them write their forced logout before the
            // claimant hears it was granted, so the old client stops before
            // the new one starts (takeover p50 172 → 117 µs; without this
            // they wait for the caller's whole reply path).
            tokio::task::yield_now().await;
        }
        Ok(outcome)
    }

    async fn release(&self, tenant: &Tenant, id: &SessionId) -> Result<Session, RegistryError> {
        self.write(tenant, |s, cfg, now, fx| s.release(id, cfg, now, fx))
    }

    async fn evict(
        &self,
        tenant: &Tenant,
        target: EvictTarget,
        message: Option<String>,
        by: &str,
    ) -> Result<Vec<Session>, RegistryError> {
        self.write(tenant, |s, cfg, now, fx| {
            s.evict(&target, message, by, cfg, now, fx)
        })
    }

    async fn get(&self, tenant: &Tenant, key: SessionKey) -> Result<Session, RegistryError> {
        self.read(tenant, |s| s.get(&key))
            .unwrap_or_else(|| Err(not_found(tenant, &key)))
    }

    async fn list(
        &self,
        tenant: &Tenant,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<Page, RegistryError> {
        Ok(self
            .read(tenant, |s| s.list(after.as_ref(), limit))
            .unwrap_or_default())
    }

    async fn set_seat_limit(
        &self,
        tenant: &Tenant,
        limit: u32,
    ) -> Result<TenantUsage, RegistryError> {
        Ok(self.write(tenant, |s, cfg, _, _| s.set_seat_limit(limit, cfg)))
    }

    async fn usage(&self, tenant: &Tenant) -> Result<TenantUsage, RegistryError> {
        let cfg = &self.shared.cfg;
        Ok(self.read(tenant, |s| s.usage(cfg)).unwrap_or(TenantUsage {
            seats_used: 0,
            seat_limit: cfg.seat_limit(tenant),
        }))
    }

    async fn register_stations(
        &self,
        tenant: &Tenant,
        stations: &[Station],
    ) -> Result<DirectoryChange, RegistryError> {
        self.write(tenant, |s, cfg, now, _| {
            s.register_stations(stations, cfg, now)
        })
    }

    async fn remove_stations(
        &self,
        tenant: &Tenant,
        stations: &[Station],
    ) -> Result<DirectoryChange, RegistryError> {
        Ok(self.write(tenant, |s, _, now, _| s.remove_stations(stations, now)))
    }

    async fn list_stations(
        &self,
        tenant: &Tenant,
        query: &StationQuery,
    ) -> Result<StationPage, RegistryError> {
        Ok(self
            .read(tenant, |s| s.list_stations(query))
            .unwrap_or_default())
    }

    async fn stations(
        &self,
        tenant: &Tenant,
        stations: &[Station],
    ) -> Result<Vec<StationInfo>, RegistryError> {
        Ok(self
            .read(tenant, |s| s.stations(stations))
            .unwrap_or_else(|| {
                stations
                    .iter()
                    .map(|station| StationInfo::new(station.clone(), Vec::new()))
                    .collect()
            }))
    }

    async fn notify(
        &self,
        tenant: &Tenant,
        target: NotifyTarget,
        notice: Notice,
    ) -> Result<NotifyCounts, RegistryError> {
        self.write(tenant, |s, cfg, now, fx| {
            s.notify(&target, notice, cfg, now, fx)
        })
    }

    async fn attach(
        &self,
        tenant: &Tenant,
        id: &SessionId,
        generation: Generation,
        socket: SocketId,
    ) -> Result<Attached, RegistryError> {
        self.write(tenant, |s, cfg, now, fx| {
            s.attach(id, generation, socket, cfg, now, fx)
        })
    }

    async fn detach(
        &self,
        tenant: &Tenant,
        id: &SessionId,
        generation: Generation,
        socket: SocketId,
    ) -> Result<(), RegistryError> {
        self.write(tenant, |s, cfg, now, fx| {
            s.detach(id, generation, &socket, cfg, now, fx)
        })
    }

    async fn set_status(
        &self,
        tenant: &Tenant,
        id: &SessionId,
        generation: Generation,
        status: String,
    ) -> Result<(), RegistryError> {
        self.write(tenant, |s, _, now, fx| {
            s.set_status(id, generation, status, now, fx)
        })
    }

    async fn ack(
        &self,
        tenant: &Tenant,
        id: &SessionId,
        notice_id: &str,
    ) -> Result<(), RegistryError> {
        self.write(tenant, |s, _, now, _| s.ack(id, notice_id, now))
    }

    async fn hook_lease(
        &self,
        tenant: &Tenant,
        hook: &str,
        _ttl: Duration,
    ) -> Result<Option<u64>, RegistryError> {
        // One node: it always holds the lease.
        let key = (tenant.clone(), hook.to_string());
        Ok(Some(self.shared.hooks.get(&key).map_or(0, |c| *c)))
    }

    async fn hook_done(
        &self,
        tenant: &Tenant,
        hook: &str,
        seq: u64,
        _ttl: Duration,
    ) -> Result<bool, RegistryError> {
        let mut cursor = self
            .shared
            .hooks
            .entry((tenant.clone(), hook.to_string()))
            .or_default();
        *cursor = (*cursor).max(seq);
        Ok(true)
    }

    async fn replay(
        &self,
        tenant: &Tenant,
        after: u64,
        limit: usize,
    ) -> Result<Replay, RegistryError> {
        let Some(state) = self.shared.tenants.get(tenant).map(|s| s.clone()) else {
            return Ok(EventLog::default().after(after, limit));
        };
        let mut guard = lock(&state);
        guard
            .log
            .trim(self.shared.cfg.clock.now_ms(), &self.shared.cfg.event_log);
        Ok(guard.log.after(after, limit))
    }

    fn census(&self) -> Option<Census> {
        let mut c = Census::default();
        let states: Vec<_> = self
            .shared
            .tenants
            .iter()
            .map(|e| e.value().clone())
            .collect();
        for state in states {
            lock(&state).census(&mut c);
        }
        Some(c)
    }
}

fn not_found(tenant: &Tenant, key: &SessionKey) -> RegistryError {
    match key {
        SessionKey::Id(id) => RegistryError::SessionNotFound {
            tenant: tenant.clone(),
            id: id.clone(),
        },
        SessionKey::Login(login) => RegistryError::LoginNotFound {
            tenant: tenant.clone(),
            login: login.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Event;
    use crate::session::{ConflictPolicy, EndReason, Login, NodeId, SessionState};
    use tokio::sync::mpsc;

    /// A sink that forwards events to the test, so it can await them.
    struct Forward(mpsc::UnboundedSender<Event>);
    impl EventSink for Forward {
        fn publish(&self, event: Event) {
            let _ = self.0.send(event);
        }
    }

    fn req(login: &str) -> ClaimRequest {
        ClaimRequest {
            tenant: Tenant::parse("acme").unwrap(),
            login: Login::parse(login).unwrap(),
            station: None,
            client: "web".into(),
            role: "agent".into(),
            policy: ConflictPolicy::Reject,
            attributes: Default::default(),
            idempotency_key: None,
            expected_session_id: None,
            device: None,
        }
    }

    fn start(cfg: RegistryConfig) -> (Arc<MemoryRegistry>, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (MemoryRegistry::start(cfg, Arc::new(Forward(tx))), rx)
    }

    async fn granted(reg: &MemoryRegistry, login: &str) -> Session {
        match reg.claim(req(login)).await.unwrap() {
            ClaimOutcome::Granted { session, .. } => session,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    /// Awaits (bounded) the Ended event of `id`.
    async fn ended(rx: &mut mpsc::UnboundedReceiver<Event>, id: &SessionId) -> EndReason {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match rx.recv().await {
                    Some(Event::Ended(t)) if &t.session.id == id => return t.ending.reason,
                    Some(_) => continue,
                    None => panic!("sink closed"),
                }
            }
        })
        .await
        .expect("the session never ended")
    }

    /// What a tenant stores with a lifetime — a mailbox for a login that
    /// never claims again, a tombstone, an idempotency key — is dropped
    /// when it runs out, by the expiry task, though the tenant sees no
    /// other call.
    #[tokio::test(start_paused = true)]
    async fn an_idle_tenant_forgets_mailboxes_tombstones_and_idempotency_keys() {
        let clock = crate::clock::Clock::manual(1_000_000);
        let (reg, _rx) = start(RegistryConfig {
            clock: clock.clone(),
            tombstone_ttl: Duration::from_secs(60),
            idempotency_ttl: Duration::from_secs(60),
            ..RegistryConfig::default()
        });
        let t = Tenant::parse("acme").unwrap();
        let notice = Notice {
            id: "pw".into(),
            kind: "password_expiry".into(),
            severity: "warning".into(),
            text: "Your password expires in 3 days".into(),
            data_json: String::new(),
            expires_at_ms: clock.now_ms() + 30_000,
        };
        let gone = NotifyTarget::Login(Login::parse("gone").unwrap());
        reg.notify(&t, gone, notice).await.unwrap();
        let mut keyed = req("ana");
        keyed.idempotency_key = Some("k1".into());
        let ana = match reg.claim(keyed).await.unwrap() {
            ClaimOutcome::Granted { session, .. } => session,
            other => panic!("expected a grant, got {other:?}"),
        };
        reg.release(&t, &ana.id).await.unwrap();
        let stored = || reg.read(&t, |s| s.stored()).unwrap();
        assert_eq!(stored(), [0, 1, 1, 1, 1]);

        clock.advance(Duration::from_secs(31));
        reg.expire_due().await;
        assert_eq!(stored(), [0, 1, 1, 0, 0], "the mailbox outlived its notice");
        clock.advance(Duration::from_secs(30));
        reg.expire_due().await;
        assert_eq!(stored(), [0, 0, 0, 0, 0]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_session_expires_through_the_sweeper() {
        let (reg, mut rx) = start(RegistryConfig {
            connect_timeout: Duration::from_millis(30),
            ..RegistryConfig::default()
        });
        let session = granted(&reg, "ana").await;
        assert_eq!(ended(&mut rx, &session.id).await, EndReason::Expired);
        let got = reg
            .get(&session.tenant, SessionKey::Id(session.id))
            .await
            .unwrap();
        assert_eq!(got.state, SessionState::Ended(EndReason::Expired));
    }

    #[tokio::test(start_paused = true)]
    async fn a_mass_expiry_spanning_several_batches_ends_every_session() {
        let (reg, mut rx) = start(RegistryConfig {
            connect_timeout: Duration::from_millis(50),
            ..RegistryConfig::default()
        });
        let n = EXPIRE_BATCH * 2 + 10;
        let mut ids = std::collections::HashSet::new();
        for i in 0..n {
            ids.insert(granted(&reg, &format!("agent{i}")).await.id);
        }
        tokio::time::timeout(Duration::from_secs(10), async {
            while !ids.is_empty() {
                match rx.recv().await {
                    Some(Event::Ended(t)) => {
                        assert_eq!(t.ending.reason, EndReason::Expired);
                        ids.remove(&t.session.id);
                    }
                    Some(_) => continue,
                    None => panic!("sink closed"),
                }
            }
        })
        .await
        .expect("every pending session expires");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconnected_session_outlives_its_old_grace_deadline() {
        let (reg, mut rx) = start(RegistryConfig {
            grace: Duration::from_millis(20),
            connect_timeout: Duration::from_millis(40),
            ..RegistryConfig::default()
        });
        let ana = granted(&reg, "ana").await;
        let t = ana.tenant.clone();
        let sock = |conn| SocketId {
            node: NodeId::parse("n").unwrap(),
            conn,
        };
        reg.attach(&t, &ana.id, ana.generation, sock(1))
            .await
            .unwrap();
        reg.detach(&t, &ana.id, ana.generation, sock(1))
            .await
            .unwrap();
        reg.attach(&t, &ana.id, ana.generation, sock(2))
            .await
            .unwrap();
        // Bob's connect deadline is later than ana's stale grace deadline, so
        // once bob has expired the sweeper has passed ana's deadline too.
        let bob = granted(&reg, "bob").await;
        assert_eq!(ended(&mut rx, &bob.id).await, EndReason::Expired);
        let got = reg.get(&t, SessionKey::Id(ana.id)).await.unwrap();
        assert_eq!(got.state, SessionState::Connected);
    }
}
