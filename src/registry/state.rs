//! The state machine of one tenant.
//!
//! Both indexes (login → session, station → session), the sessions, their
//! sockets and notices, the tombstones and the idempotency keys live in one
//! [`TenantState`] and change together, so the two uniqueness rules can never
//! disagree with each other. It is pure: every method takes `now` and writes
//! the events to publish and the deadlines to arm into [`Effects`], which
//! makes it testable (and property-tested) without a runtime or a clock.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use super::log::EventLog;
use super::notice_rules;
use super::{
    Attached, ClaimOutcome, DirectoryChange, Event, EvictTarget, NotifyCounts, NotifyTarget, Page,
    RegistryConfig, RegistryError, SessionKey, SocketId, StationHolder, StationInfo, StationPage,
    StationQuery, TenantUsage, STATION_DIRECTORY_TTL,
};
use crate::limits::MAX_STATION_HOLDERS;
use crate::session::{
    ClaimRequest, ConflictPolicy, EndReason, EndedBy, Ending, Generation, Login, Notice,
    PresenceChange, PresenceEvent, Session, SessionId, SessionState, Station, Tenant, Tombstone,
};

/// What a transition asks the caller to do after it: events to publish (in
/// order, before the tenant lock is released) and expiry deadlines to arm.
#[derive(Default, Debug)]
pub(crate) struct Effects {
    pub events: Vec<Event>,
    /// (unix ms, session) pairs; a deadline that turns out stale is ignored.
    pub deadlines: Vec<(i64, SessionId)>,
    /// When something stored (a tombstone, an idempotency key, a mailbox)
    /// runs out: [`TenantState::prune`] must run then even if the tenant
    /// sees no other call.
    pub prune_at: Vec<i64>,
}

/// A live session and what only the registry needs to know about it.
#[derive(Debug)]
struct Record {
    session: Session,
    sockets: Vec<SocketId>,
    /// Notices not yet acked, oldest first; a tenant-wide notice's body is
    /// one `Arc` shared by every session it was sent to.
    notices: Vec<Arc<Notice>>,
    /// When a PENDING or DISCONNECTED session expires.
    deadline: Option<i64>,
}

#[derive(Debug)]
struct IdempotentClaim {
    login: Login,
    outcome: ClaimOutcome,
}

/// Everything the registry knows about one tenant.
#[derive(Debug)]
pub(crate) struct TenantState {
    tenant: Tenant,
    /// Records are boxed: a ~330 B value inline in B-tree nodes cost ~500 B
    /// per session (nodes run 2/3 full) and every insert shifted them.
    sessions: BTreeMap<SessionId, Box<Record>>,
    by_login: HashMap<Login, SessionId>,
    /// A station's first holder (the one `StationInfo.login` names).
    by_station: HashMap<Station, SessionId>,
    /// A shared station's other holders, in the order they claimed it
    /// (all from the first holder's device); no entry when it has none.
    sharers: HashMap<Station, Vec<SessionId>>,
    generations: HashMap<Login, u64>,
    tombstones: HashMap<SessionId, Arc<Tombstone>>,
    /// Tombstones in the order they expire (all live equally long).
    tombstone_expiry: VecDeque<(i64, SessionId)>,
    idempotency: HashMap<String, IdempotentClaim>,
    idempotency_expiry: VecDeque<(i64, String)>,
    /// Notices for logins that have no live session, handed to the next
    /// one; dropped when their last notice expires (`mailbox_expiry`).
    mailbox: HashMap<Login, Mailbox>,
    /// Mailboxes by when their last notice expires.
    mailbox_expiry: BTreeSet<(i64, Login)>,
    /// The tenant's presence events with their sequence numbers, appended
    /// by the registry as it publishes them (under the same lock).
    pub(crate) log: EventLog,
    /// The seat limit set by `SetSeatLimit` (0: none); `None`: the
    /// configured one applies.
    seat_limit: Option<u32>,
    /// The station directory (RegisterStations), in name order; at most
    /// `max_registered_stations` names.
    directory: BTreeSet<Station>,
    /// When the directory is dropped (unix ms; 0: never set): its last
    /// change plus [`STATION_DIRECTORY_TTL`], checked by [`Self::prune`].
    directory_until: i64,
}

/// The notices queued for a login without a live session.
#[derive(Debug, Default)]
struct Mailbox {
    notices: Vec<Arc<Notice>>,
    /// When the last of them expires (unix ms).
    until: i64,
}

impl TenantState {
    pub fn new(tenant: Tenant) -> Self {
        Self {
            tenant,
            sessions: BTreeMap::new(),
            by_login: HashMap::new(),
            by_station: HashMap::new(),
            sharers: HashMap::new(),
            generations: HashMap::new(),
            tombstones: HashMap::new(),
            tombstone_expiry: VecDeque::new(),
            idempotency: HashMap::new(),
            idempotency_expiry: VecDeque::new(),
            mailbox: HashMap::new(),
            mailbox_expiry: BTreeSet::new(),
            log: EventLog::default(),
            seat_limit: None,
            directory: BTreeSet::new(),
            directory_until: 0,
        }
    }

    /// Live sessions against the seat limit in force.
    pub fn usage(&self, cfg: &RegistryConfig) -> TenantUsage {
        TenantUsage {
            seats_used: u32::try_from(self.sessions.len()).unwrap_or(u32::MAX),
            seat_limit: self
                .seat_limit
                .unwrap_or_else(|| cfg.seat_limit(&self.tenant)),
        }
    }

    /// Sets the seat limit, overriding the configured one (0: none).
    pub fn set_seat_limit(&mut self, limit: u32, cfg: &RegistryConfig) -> TenantUsage {
        self.seat_limit = Some(limit);
        self.usage(cfg)
    }

    /// Rules 1–3: one live session per login and per station in this tenant.
    pub fn claim(
        &mut self,
        req: ClaimRequest,
        cfg: &RegistryConfig,
        now: i64,
        fx: &mut Effects,
    ) -> Result<ClaimOutcome, RegistryError> {
        self.prune(now);
        if let Some(key) = &req.idempotency_key {
            if let Some(previous) = self.idempotency.get(key) {
                if previous.login != req.login {
                    return Err(RegistryError::IdempotencyKeyReused {
                        key: key.clone(),
                        login: previous.login.clone(),
                    });
                }
                return Ok(self.refresh(previous.outcome.clone()));
            }
        }
        let outcome = self.claim_fresh(&req, cfg, now, fx);
        if let Some(key) = req.idempotency_key {
            let until = now + cfg.idempotency_ttl.as_millis() as i64;
            fx.prune_at.push(until);
            self.idempotency_expiry.push_back((until, key.clone()));
            self.idempotency.insert(
                key,
                IdempotentClaim {
                    login: req.login,
                    outcome: outcome.clone(),
                },
            );
        }
        Ok(outcome)
    }

    fn claim_fresh(
        &mut self,
        req: &ClaimRequest,
        cfg: &RegistryConfig,
        now: i64,
        fx: &mut Effects,
    ) -> ClaimOutcome {
        // A strict tenant's claims name a registered station.
        if let Some(station) = &req.station {
            if cfg.strict_stations(&self.tenant) && !self.directory.contains(station) {
                return ClaimOutcome::StationNotRegistered;
            }
        }
        // The station rule applies under both policies: the first user keeps
        // it, and admits only logins from its device (a shared station).
        if let Some(station) = &req.station {
            if let Some(refused) = self.station_refusal(station, req, cfg) {
                return refused;
            }
        }
        let new_id = SessionId::random();
        let mut evicted = Vec::new();
        if let Some(holder_id) = self.by_login.get(&req.login).cloned() {
            let holder = &self.sessions[&holder_id].session;
            if !takes_over(req, holder) {
                return ClaimOutcome::LoginInUse {
                    holder: holder.clone(),
                };
            }
        } else {
            // A new seat is needed (a takeover of one's own login reuses its).
            let u = self.usage(cfg);
            if u.seat_limit > 0 && u.seats_used >= u.seat_limit {
                return ClaimOutcome::SeatsExhausted {
                    used: u.seats_used,
                    limit: u.seat_limit,
                };
            }
        }
        if let Some(holder_id) = self.by_login.get(&req.login).cloned() {
            let holder_station = self.sessions[&holder_id].session.station.clone();
            let reason = match &req.station {
                Some(s) if Some(s) != holder_station.as_ref() => EndReason::StationChanged,
                _ => EndReason::Superseded,
            };
            let by = EndedBy {
                client: req.client.clone(),
                station: req.station.clone(),
                session_id: Some(new_id.clone()),
                at_ms: now,
            };
            if let Some(ended) = self.end(&holder_id, reason, by, None, cfg, now, fx) {
                evicted.push(ended);
            }
        }
        let generation = self.next_generation(&req.login, now);
        let session = Session {
            id: new_id.clone(),
            tenant: self.tenant.clone(),
            login: req.login.clone(),
            station: req.station.clone(),
            client: req.client.clone(),
            role: req.role.clone(),
            generation,
            state: SessionState::Pending,
            created_at_ms: now,
            last_seen_ms: now,
            node: cfg.node.clone(),
            attributes: req.attributes.clone(),
            status: String::new(),
            device: req.device.clone(),
        };
        let deadline = now + cfg.connect_timeout.as_millis() as i64;
        let mailbox = self.mailbox.remove(&req.login).unwrap_or_default();
        self.mailbox_expiry
            .remove(&(mailbox.until, req.login.clone()));
        let notices = mailbox
            .notices
            .into_iter()
            .filter(|n| n.expires_at_ms > now)
            .collect();
        self.by_login.insert(req.login.clone(), new_id.clone());
        if let Some(station) = &req.station {
            if self.by_station.contains_key(station) {
                // Admitted by station_refusal: a sharer, from the same device.
                self.sharers
                    .entry(station.clone())
                    .or_default()
                    .push(new_id.clone());
            } else {
                self.by_station.insert(station.clone(), new_id.clone());
            }
        }
        self.sessions.insert(
            new_id.clone(),
            Box::new(Record {
                session: session.clone(),
                sockets: Vec::new(),
                notices,
                deadline: Some(deadline),
            }),
        );
        fx.deadlines.push((deadline, new_id));
        presence(fx, &session, PresenceChange::Claimed, now);
        ClaimOutcome::Granted { session, evicted }
    }

    /// `StationInUse` when `station` has holders of other logins that this
    /// claim may not join: sharing needs the tenant to share stations, the
    /// claim to come from the holders' device, and room for one more.
    fn station_refusal(
        &self,
        station: &Station,
        req: &ClaimRequest,
        cfg: &RegistryConfig,
    ) -> Option<ClaimOutcome> {
        let holders = self.holders(station);
        let first = holders.first()?;
        let others = holders.iter().filter(|s| s.login != req.login).count();
        if others == 0 {
            return None;
        }
        let joins = cfg.shares_stations(&self.tenant)
            && req.device.is_some()
            && first.device == req.device
            && others < MAX_STATION_HOLDERS;
        if joins {
            return None;
        }
        Some(ClaimOutcome::StationInUse {
            holder: (*first).clone(),
            holders: holders.into_iter().cloned().collect(),
        })
    }

    /// The live sessions holding `station`, first first.
    fn holders(&self, station: &Station) -> Vec<&Session> {
        let first = self.by_station.get(station);
        let rest = self.sharers.get(station).into_iter().flatten();
        first
            .into_iter()
            .chain(rest)
            .filter_map(|id| self.sessions.get(id).map(|r| &r.session))
            .collect()
    }

    /// Takes `id` off `station`: the next sharer (if any) becomes the first
    /// holder; the station is free when its last holder leaves.
    fn leave_station(&mut self, station: &Station, id: &SessionId) {
        if self.by_station.get(station) == Some(id) {
            match self.sharers.get_mut(station) {
                Some(rest) => {
                    let next = rest.remove(0);
                    if rest.is_empty() {
                        self.sharers.remove(station);
                    }
                    self.by_station.insert(station.clone(), next);
                }
                None => {
                    self.by_station.remove(station);
                }
            }
        } else if let Some(rest) = self.sharers.get_mut(station) {
            rest.retain(|s| s != id);
            if rest.is_empty() {
                self.sharers.remove(station);
            }
        }
    }

    /// The login's next generation ([`Generation::next`]), recorded.
    fn next_generation(&mut self, login: &Login, now: i64) -> Generation {
        let stored = self.generations.entry(login.clone()).or_insert(0);
        let next = Generation::next(*stored, now);
        *stored = next.0;
        next
    }

    /// A replayed idempotent outcome, with the granted session as it is now.
    fn refresh(&self, outcome: ClaimOutcome) -> ClaimOutcome {
        match outcome {
            ClaimOutcome::Granted { session, evicted } => {
                let session = self
                    .sessions
                    .get(&session.id)
                    .map(|r| r.session.clone())
                    .or_else(|| self.tombstones.get(&session.id).map(|t| t.session.clone()))
                    .unwrap_or(session);
                ClaimOutcome::Granted { session, evicted }
            }
            other => other,
        }
    }

    /// Ends a live session, leaving a tombstone; returns it as ended.
    #[allow(clippy::too_many_arguments)]
    fn end(
        &mut self,
        id: &SessionId,
        reason: EndReason,
        by: EndedBy,
        message: Option<String>,
        cfg: &RegistryConfig,
        now: i64,
        fx: &mut Effects,
    ) -> Option<Session> {
        let record = self.sessions.remove(id)?;
        let mut session = record.session;
        if self.by_login.get(&session.login) == Some(id) {
            self.by_login.remove(&session.login);
        }
        if let Some(station) = &session.station {
            self.leave_station(station, id);
        }
        session.state = SessionState::Ended(reason);
        session.last_seen_ms = now;
        let tombstone = Arc::new(Tombstone {
            session: session.clone(),
            ending: Ending {
                reason,
                by,
                message: message.unwrap_or_else(|| reason.default_message().to_string()),
            },
        });
        let until = now + cfg.tombstone_ttl.as_millis() as i64;
        fx.prune_at.push(until);
        self.tombstone_expiry.push_back((until, id.clone()));
        self.tombstones.insert(id.clone(), tombstone.clone());
        let ending = tombstone.ending.clone();
        fx.events.push(Event::Ended(tombstone));
        fx.events.push(Event::Presence(Arc::new(PresenceEvent {
            session: session.clone(),
            change: PresenceChange::Ended,
            at_ms: now,
            seq: 0,
            ending: Some(ending),
        })));
        Some(session)
    }

    /// Drops tombstones, idempotency keys and mailboxes whose time is
    /// over, and a station directory untouched for its whole lifetime.
    pub fn prune(&mut self, now: i64) {
        if self.directory_until != 0 && self.directory_until <= now {
            self.directory.clear();
            self.directory_until = 0;
        }
        while let Some((at, _)) = self.mailbox_expiry.first() {
            if *at > now {
                break;
            }
            if let Some((_, login)) = self.mailbox_expiry.pop_first() {
                self.mailbox.remove(&login);
            }
        }
        while let Some((at, _)) = self.tombstone_expiry.front() {
            if *at > now {
                break;
            }
            if let Some((_, id)) = self.tombstone_expiry.pop_front() {
                self.tombstones.remove(&id);
            }
        }
        while let Some((at, _)) = self.idempotency_expiry.front() {
            if *at > now {
                break;
            }
            if let Some((_, key)) = self.idempotency_expiry.pop_front() {
                self.idempotency.remove(&key);
            }
        }
    }

    fn live(&self, id: &SessionId) -> Result<&Record, RegistryError> {
        self.sessions
            .get(id)
            .map(|r| &**r)
            .ok_or_else(|| self.missing(id))
    }

    fn live_mut(&mut self, id: &SessionId) -> Result<&mut Record, RegistryError> {
        if !self.sessions.contains_key(id) {
            return Err(self.missing(id));
        }
        Ok(self.sessions.get_mut(id).expect("checked above"))
    }

    fn missing(&self, id: &SessionId) -> RegistryError {
        if self.tombstones.contains_key(id) {
            RegistryError::SessionEnded { id: id.clone() }
        } else {
            RegistryError::SessionNotFound {
                tenant: self.tenant.clone(),
                id: id.clone(),
            }
        }
    }

    /// Normal logout. Releasing an already ended session returns it as it ended.
    pub fn release(
        &mut self,
        id: &SessionId,
        cfg: &RegistryConfig,
        now: i64,
        fx: &mut Effects,
    ) -> Result<Session, RegistryError> {
        self.prune(now);
        if self.sessions.contains_key(id) {
            let by = EndedBy {
                client: "logout".into(),
                station: None,
                session_id: None,
                at_ms: now,
            };
            return Ok(self
                .end(id, EndReason::LoggedOut, by, None, cfg, now, fx)
                .expect("session is live"));
        }
        match self.tombstones.get(id) {
            Some(t) => Ok(t.session.clone()),
            None => Err(self.missing(id)),
        }
    }

    /// Administrative force logout.
    pub fn evict(
        &mut self,
        target: &EvictTarget,
        message: Option<String>,
        by: &str,
        cfg: &RegistryConfig,
        now: i64,
        fx: &mut Effects,
    ) -> Result<Vec<Session>, RegistryError> {
        self.prune(now);
        // Whom the target names: every session (of a role), one session,
        // a login's, or every holder of a (shared) station, first first.
        let ids: Vec<SessionId> = match target {
            EvictTarget::Tenant { role } => self
                .sessions
                .iter()
                .filter(|(_, r)| role.as_ref().is_none_or(|role| r.session.role == *role))
                .map(|(id, _)| id.clone())
                .collect(),
            EvictTarget::Session(id) => vec![self.live(id)?.session.id.clone()],
            EvictTarget::Login(login) => {
                vec![self.by_login.get(login).cloned().ok_or_else(|| {
                    RegistryError::LoginNotFound {
                        tenant: self.tenant.clone(),
                        login: login.clone(),
                    }
                })?]
            }
            EvictTarget::Station(station) => {
                let ids: Vec<SessionId> =
                    self.holders(station).iter().map(|s| s.id.clone()).collect();
                if ids.is_empty() {
                    return Err(RegistryError::StationNotFound {
                        tenant: self.tenant.clone(),
                        station: station.clone(),
                    });
                }
                ids
            }
        };
        let by = EndedBy {
            client: by.to_string(),
            station: None,
            session_id: None,
            at_ms: now,
        };
        Ok(ids
            .iter()
            .filter_map(|id| {
                self.end(
                    id,
                    EndReason::Evicted,
                    by.clone(),
                    message.clone(),
                    cfg,
                    now,
                    fx,
                )
            })
            .collect())
    }

    pub fn get(&self, key: &SessionKey) -> Result<Session, RegistryError> {
        match key {
            SessionKey::Id(id) => match self.sessions.get(id) {
                Some(r) => Ok(r.session.clone()),
                None => self
                    .tombstones
                    .get(id)
                    .map(|t| t.session.clone())
                    .ok_or_else(|| self.missing(id)),
            },
            SessionKey::Login(login) => self
                .by_login
                .get(login)
                .and_then(|id| self.sessions.get(id))
                .map(|r| r.session.clone())
                .ok_or_else(|| RegistryError::LoginNotFound {
                    tenant: self.tenant.clone(),
                    login: login.clone(),
                }),
        }
    }

    pub fn list(&self, after: Option<&SessionId>, limit: usize) -> Page {
        let lower = match after {
            Some(id) => Bound::Excluded(id),
            None => Bound::Unbounded,
        };
        let mut sessions: Vec<Session> = self
            .sessions
            .range::<SessionId, _>((lower, Bound::Unbounded))
            .take(limit.saturating_add(1))
            .map(|(_, r)| r.session.clone())
            .collect();
        let next_after = if sessions.len() > limit {
            sessions.truncate(limit);
            sessions.last().map(|s| s.id.clone())
        } else {
            None
        };
        Page {
            sessions,
            next_after,
        }
    }

    pub fn stations(&self, stations: &[Station]) -> Vec<StationInfo> {
        stations.iter().map(|s| self.station_info(s)).collect()
    }

    /// The one place a station's info is built: every holder, first first.
    pub fn station_info(&self, station: &Station) -> StationInfo {
        let holders = self
            .holders(station)
            .into_iter()
            .map(|s| StationHolder {
                login: s.login.clone(),
                session_id: s.id.clone(),
                device: s.device.clone(),
            })
            .collect();
        StationInfo::new(station.clone(), holders)
    }

    /// Adds stations to the directory: all, or none when it would grow
    /// past `max_registered_stations`.
    pub fn register_stations(
        &mut self,
        stations: &[Station],
        cfg: &RegistryConfig,
        now: i64,
    ) -> Result<DirectoryChange, RegistryError> {
        self.prune(now);
        let new: BTreeSet<&Station> = stations
            .iter()
            .filter(|s| !self.directory.contains(*s))
            .collect();
        let would = self.directory.len() + new.len();
        if !new.is_empty() && would > cfg.max_registered_stations {
            return Err(RegistryError::TooManyStations {
                adding: new.len() as u64,
                would: would as u64,
                limit: cfg.max_registered_stations,
            });
        }
        let changed = u32::try_from(new.len()).unwrap_or(u32::MAX);
        let new: Vec<Station> = new.into_iter().cloned().collect();
        self.directory.extend(new);
        self.directory_until = now + STATION_DIRECTORY_TTL.as_millis() as i64;
        Ok(DirectoryChange {
            changed,
            registered: self.directory.len() as u64,
        })
    }

    /// Removes stations from the directory; their holders stay.
    pub fn remove_stations(&mut self, stations: &[Station], now: i64) -> DirectoryChange {
        self.prune(now);
        let removed = stations
            .iter()
            .filter(|s| self.directory.remove(*s))
            .count();
        if !self.directory.is_empty() {
            self.directory_until = now + STATION_DIRECTORY_TTL.as_millis() as i64;
        }
        DirectoryChange {
            changed: u32::try_from(removed).unwrap_or(u32::MAX),
            registered: self.directory.len() as u64,
        }
    }

    /// A page of the directory: names from after `q.after` (or from the
    /// prefix) in order, at most `q.scan` of them examined; each station's
    /// holder from [`Self::stations`]. The next page starts after the last
    /// name examined, so it is stable under concurrent changes.
    pub fn list_stations(&self, q: &StationQuery) -> StationPage {
        let prefix = Station::parse(&q.prefix).ok();
        let lower = match (&q.after, &prefix) {
            (Some(a), Some(p)) if a < p => Bound::Included(p),
            (Some(a), _) => Bound::Excluded(a),
            (None, Some(p)) => Bound::Included(p),
            (None, None) => Bound::Unbounded,
        };
        let mut page = StationPage {
            registered: self.directory.len() as u64,
            ..StationPage::default()
        };
        let mut last = None;
        let names = self
            .directory
            .range::<Station, _>((lower, Bound::Unbounded))
            .take_while(|n| n.as_str().starts_with(q.prefix.as_str()));
        for (examined, name) in names.enumerate() {
            if page.stations.len() >= q.limit || examined >= q.scan {
                page.next_after = last;
                break;
            }
            last = Some(name.clone());
            let info = self.stations(std::slice::from_ref(name));
            page.stations
                .extend(info.into_iter().filter(|i| !q.free_only || i.is_free()));
        }
        page
    }

    /// Delivers a notice to open sockets now, or keeps it for the next
    /// connect; refuses one over its bounds ([`notice_rules::admit`]).
    pub fn notify(
        &mut self,
        target: &NotifyTarget,
        notice: Notice,
        cfg: &RegistryConfig,
        now: i64,
        fx: &mut Effects,
    ) -> Result<NotifyCounts, RegistryError> {
        let mut counts = NotifyCounts::default();
        let Some(notice) = notice_rules::admit(notice, cfg, now)? else {
            return Ok(counts);
        };
        let notice = Arc::new(notice);
        let ids: Vec<SessionId> = match target {
            NotifyTarget::Session(id) => vec![self.live(id)?.session.id.clone()],
            NotifyTarget::Login(login) => match self.by_login.get(login) {
                Some(id) => vec![id.clone()],
                None => {
                    let mailbox = self.mailbox.entry(login.clone()).or_default();
                    notice_rules::push(&mut mailbox.notices, notice, cfg, now);
                    let until = mailbox.notices.iter().map(|n| n.expires_at_ms).max();
                    let before = std::mem::replace(&mut mailbox.until, until.unwrap_or(now));
                    self.mailbox_expiry.remove(&(before, login.clone()));
                    self.mailbox_expiry.insert((mailbox.until, login.clone()));
                    fx.prune_at.push(mailbox.until);
                    counts.queued = 1;
                    return Ok(counts);
                }
            },
            NotifyTarget::All => self.sessions.keys().cloned().collect(),
        };
        for id in ids {
            let Some(record) = self.sessions.get_mut(&id) else {
                continue;
            };
            notice_rules::push(&mut record.notices, notice.clone(), cfg, now);
            if record.sockets.is_empty() {
                counts.queued += 1;
            } else {
                counts.delivered += 1;
                fx.events.push(Event::Notice {
                    tenant: self.tenant.clone(),
                    session_id: id,
                    notice: notice.clone(),
                });
            }
        }
        Ok(counts)
    }

    /// Attaches a socket: PENDING/DISCONNECTED → CONNECTED.
    pub fn attach(
        &mut self,
        id: &SessionId,
        generation: Generation,
        socket: SocketId,
        cfg: &RegistryConfig,
        now: i64,
        fx: &mut Effects,
    ) -> Result<Attached, RegistryError> {
        self.prune(now);
        let Some(record) = self.sessions.get_mut(id) else {
            return match self.tombstones.get(id) {
                Some(t) => Ok(Attached::Ended((**t).clone())),
                None => Err(self.missing(id)),
            };
        };
        check_generation(record, generation)?;
        if !record.sockets.contains(&socket) {
            if record.sockets.len() >= cfg.max_sockets_per_session {
                return Err(RegistryError::TooManySockets {
                    id: id.clone(),
                    limit: cfg.max_sockets_per_session,
                });
            }
            // Most sessions hold one socket: no room for four up front.
            record.sockets.reserve_exact(1);
            record.sockets.push(socket.clone());
        }
        let change = match record.session.state {
            SessionState::Pending => Some(PresenceChange::Connected),
            SessionState::Disconnected => Some(PresenceChange::Reconnected),
            _ => None,
        };
        // A resume is a return from DISCONNECTED (inside grace); a second
        // socket beside a live one (desktop + phonebar) is not.
        let resumed = record.session.state == SessionState::Disconnected;
        record.deadline = None;
        record.session.state = SessionState::Connected;
        record.session.node = socket.node;
        record.session.last_seen_ms = now;
        record.notices.retain(|n| n.expires_at_ms > now);
        let session = record.session.clone();
        let pending = record.notices.iter().map(|n| (**n).clone()).collect();
        if let Some(change) = change {
            presence(fx, &session, change, now);
        }
        Ok(Attached::Live {
            session,
            resumed,
            pending,
        })
    }

    /// Detaches a socket; the last one leaving starts the grace period.
    pub fn detach(
        &mut self,
        id: &SessionId,
        generation: Generation,
        socket: &SocketId,
        cfg: &RegistryConfig,
        now: i64,
        fx: &mut Effects,
    ) -> Result<(), RegistryError> {
        let Some(record) = self.sessions.get_mut(id) else {
            return Ok(());
        };
        // A socket of another generation never held this session: nothing
        // to detach (as on Redis).
        if record.session.generation != generation {
            return Ok(());
        }
        let before = record.sockets.len();
        record.sockets.retain(|s| s != socket);
        if before == record.sockets.len() {
            return Ok(());
        }
        record.session.last_seen_ms = now;
        if record.sockets.is_empty() {
            let deadline = now + cfg.grace.as_millis() as i64;
            record.session.state = SessionState::Disconnected;
            record.deadline = Some(deadline);
            fx.deadlines.push((deadline, id.clone()));
            let session = record.session.clone();
            presence(fx, &session, PresenceChange::Disconnected, now);
        }
        Ok(())
    }

    pub fn set_status(
        &mut self,
        id: &SessionId,
        generation: Generation,
        status: String,
        now: i64,
        fx: &mut Effects,
    ) -> Result<(), RegistryError> {
        let record = self.live_mut(id)?;
        check_generation(record, generation)?;
        record.session.status = status;
        record.session.last_seen_ms = now;
        let session = record.session.clone();
        presence(fx, &session, PresenceChange::StatusChanged, now);
        Ok(())
    }

    pub fn ack(&mut self, id: &SessionId, notice_id: &str, now: i64) -> Result<(), RegistryError> {
        let record = self.live_mut(id)?;
        record.notices.retain(|n| n.id != notice_id);
        record.session.last_seen_ms = now;
        Ok(())
    }

    /// Ends the session EXPIRED if its deadline has passed; a stale deadline
    /// (the session connected again, or already ended) does nothing.
    pub fn expire(
        &mut self,
        id: &SessionId,
        cfg: &RegistryConfig,
        now: i64,
        fx: &mut Effects,
    ) -> bool {
        self.prune(now);
        let due = matches!(
            self.sessions.get(id).map(|r| &**r),
            Some(Record { deadline: Some(at), .. }) if *at <= now
        );
        if !due {
            return false;
        }
        let by = EndedBy {
            client: "broker".into(),
            station: None,
            session_id: None,
            at_ms: now,
        };
        self.end(id, EndReason::Expired, by, None, cfg, now, fx)
            .is_some()
    }

    /// Adds this tenant's live sessions to `c`, by state.
    pub fn census(&self, c: &mut super::Census) {
        for r in self.sessions.values() {
            match r.session.state {
                SessionState::Pending => c.pending += 1,
                SessionState::Connected => c.connected += 1,
                SessionState::Disconnected => c.disconnected += 1,
                SessionState::Ended(_) => {}
            }
        }
    }

    /// How many entries each map holds: sessions, tombstones, idempotency
    /// keys, mailboxes (and their expiry index) — for tests of the bounds.
    #[cfg(test)]
    pub fn stored(&self) -> [usize; 5] {
        [
            self.sessions.len(),
            self.tombstones.len(),
            self.idempotency.len(),
            self.mailbox.len(),
            self.mailbox_expiry.len(),
        ]
    }

    /// Checks that the indexes agree with the sessions (tests and debug builds).
    #[cfg(test)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut logins = HashMap::new();
        let mut stations: HashMap<Station, Vec<SessionId>> = HashMap::new();
        for (id, r) in &self.sessions {
            if !r.session.state.is_live() {
                return Err(format!("ended session {id} is in the live map"));
            }
            if let Some(other) = logins.insert(r.session.login.clone(), id.clone()) {
                return Err(format!(
                    "login {} held by {other} and {id}",
                    r.session.login
                ));
            }
            if let Some(st) = &r.session.station {
                stations.entry(st.clone()).or_default().push(id.clone());
            }
            if (r.session.state == SessionState::Connected) == r.sockets.is_empty() {
                return Err(format!(
                    "{id} is {:?} with {} sockets",
                    r.session.state,
                    r.sockets.len()
                ));
            }
        }
        if logins != self.by_login {
            return Err("login index disagrees with sessions".into());
        }
        for (st, mut ids) in stations {
            let mut indexed: Vec<SessionId> =
                self.by_station.get(&st).into_iter().cloned().collect();
            let rest = self.sharers.get(&st).cloned().unwrap_or_default();
            if rest.len() >= MAX_STATION_HOLDERS {
                return Err(format!("station {st} has {} sharers", rest.len()));
            }
            indexed.extend(rest);
            if ids.len() > 1 {
                // A shared station: all holders from one device.
                let devices: std::collections::HashSet<_> = ids
                    .iter()
                    .map(|id| self.sessions[id].session.device.clone())
                    .collect();
                if devices.len() != 1 || devices.contains(&None) {
                    return Err(format!("station {st} shared across devices {devices:?}"));
                }
            }
            ids.sort();
            indexed.sort();
            if ids != indexed {
                return Err(format!(
                    "station {st} index {indexed:?} but held by {ids:?}"
                ));
            }
        }
        let indexed = self.by_station.len() + self.sharers.len();
        let held = self
            .sessions
            .values()
            .filter_map(|r| r.session.station.as_ref())
            .collect::<std::collections::HashSet<_>>()
            .len();
        if self.by_station.len() != held
            || self
                .sharers
                .keys()
                .any(|s| !self.by_station.contains_key(s))
        {
            return Err(format!(
                "station index has {indexed} entries for {held} held stations"
            ));
        }
        Ok(())
    }
}

fn check_generation(record: &Record, presented: Generation) -> Result<(), RegistryError> {
    if record.session.generation != presented {
        return Err(RegistryError::StaleGeneration {
            id: record.session.id.clone(),
            current: record.session.generation.0,
            presented: presented.0,
        });
    }
    Ok(())
}

/// Whether a claim of a held login ends `holder` (otherwise: `LoginInUse`).
/// An `expected_session_id` that is not the holder refuses under every
/// policy: the user confirmed ending another session than this one.
fn takes_over(req: &ClaimRequest, holder: &Session) -> bool {
    if req
        .expected_session_id
        .as_ref()
        .is_some_and(|e| *e != holder.id)
    {
        return false;
    }
    match req.policy {
        ConflictPolicy::Reject => false,
        ConflictPolicy::Takeover => true,
        ConflictPolicy::TakeoverIfDisconnected => holder.state != SessionState::Connected,
    }
}

fn presence(fx: &mut Effects, session: &Session, change: PresenceChange, now: i64) {
    fx.events.push(Event::Presence(Arc::new(PresenceEvent {
        session: session.clone(),
        change,
        at_ms: now,
        seq: 0,
        ending: None,
    })));
}

#[cfg(test)]
mod tests;
