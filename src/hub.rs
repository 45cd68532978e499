//! The hub: this node's local delivery point for registry events.
//!
//! It owns which sockets of this node belong to which session
//! ([`sockets::LocalSockets`], the one index the gateway and the cluster
//! read too), and who on this node watches a tenant's presence. It never
//! decides anything: the registry has decided, the hub only delivers. `publish` never blocks — it
//! is called while the registry holds a tenant lock — so every socket has a
//! bounded queue for ordinary frames and a separate one-shot *terminal* slot
//! for the frame that ends it (forced logout, slow consumer, drain), which a
//! full queue can never hold back.

pub mod sockets;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::close::CloseCode;
use crate::connectivity::Connectivity;
use crate::frames;
use crate::metrics_names as m;
use crate::registry::{Event, EventSink, GapReason};
use crate::session::{EndReason, PresenceEvent, SessionId, Tenant, Tombstone};
use sockets::LocalSockets;

/// An ordinary frame for a socket.
#[derive(Debug, Clone)]
pub enum Outbound {
    Text(Utf8Bytes),
    /// A WebSocket ping from the heartbeat sweeper.
    Ping,
}

/// A socket's bounded outbound queue. It allocates nothing while empty —
/// most sockets are idle most of the time — and the heartbeat's ping is a
/// flag, not a queued frame, so an idle socket never allocates at all.
#[derive(Debug)]
struct Outbox {
    queue: Mutex<VecDeque<Utf8Bytes>>,
    capacity: usize,
    ping_due: AtomicBool,
    ready: Notify,
}

/// The last thing a socket is sent before it closes.
#[derive(Debug, Clone)]
pub struct Terminal {
    /// A frame sent before the close (e.g. `forced_logout`), if any.
    pub frame: Option<Utf8Bytes>,
    pub close: CloseCode,
    /// Whether the session lives on (the registry must hear of the detach):
    /// true for dead, slow or drained sockets, false when the session ended.
    pub detach: bool,
}

/// What the hub and the heartbeat sweeper share with one connection task.
#[derive(Debug)]
pub struct SocketShared {
    pub conn: u64,
    pub tenant: Tenant,
    pub session: SessionId,
    outbox: Outbox,
    terminal: Mutex<Option<Terminal>>,
    /// Wakes the connection task when `terminal` is set.
    pub wake: Notify,
    /// When the client last sent a frame, in [`crate::clock::monotonic_ms`].
    pub last_seen: AtomicI64,
    /// Whether this socket asked for the tenant's presence events.
    pub watching: AtomicBool,
}

impl SocketShared {
    /// A socket whose queue holds at most `capacity` frames.
    pub fn new(conn: u64, tenant: Tenant, session: SessionId, capacity: usize) -> Self {
        Self {
            conn,
            tenant,
            session,
            outbox: Outbox {
                queue: Mutex::new(VecDeque::new()),
                capacity,
                ping_due: AtomicBool::new(false),
                ready: Notify::new(),
            },
            terminal: Mutex::new(None),
            wake: Notify::new(),
            last_seen: AtomicI64::new(crate::clock::monotonic_ms()),
            watching: AtomicBool::new(false),
        }
    }

    /// Queues a frame; a full queue makes the socket a slow consumer.
    pub fn send(&self, frame: Outbound) {
        let text = match frame {
            Outbound::Ping => {
                self.outbox.ping_due.store(true, Ordering::Release);
                self.outbox.ready.notify_one();
                return;
            }
            Outbound::Text(t) => t,
        };
        let full = {
            let mut q = self.outbox.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= self.outbox.capacity {
                true
            } else {
                q.push_back(text);
                false
            }
        };
        if full {
            metrics::counter!(m::SLOW_CONSUMERS).increment(1);
            self.terminate(Terminal {
                frame: None,
                close: CloseCode::SlowConsumer,
                detach: true,
            });
        } else {
            self.outbox.ready.notify_one();
        }
    }

    /// A queued frame, without waiting; the queue's memory is released
    /// once it runs empty.
    pub fn try_next(&self) -> Option<Outbound> {
        if self.outbox.ping_due.swap(false, Ordering::AcqRel) {
            return Some(Outbound::Ping);
        }
        let mut q = self.outbox.queue.lock().unwrap_or_else(|p| p.into_inner());
        let frame = q.pop_front();
        if q.is_empty() && q.capacity() > 0 {
            *q = VecDeque::new();
        }
        frame.map(Outbound::Text)
    }

    /// The next frame to write, waiting for one.
    pub async fn next(&self) -> Outbound {
        loop {
            if let Some(f) = self.try_next() {
                return f;
            }
            // notify_one stores a permit, so a frame queued between the
            // check above and this wait is not missed.
            self.outbox.ready.notified().await;
        }
    }

    /// Sets the terminal (the first one wins) and wakes the connection.
    pub fn terminate(&self, terminal: Terminal) {
        let mut slot = self.terminal.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(terminal);
            self.wake.notify_one();
        }
    }

    /// Takes the terminal, if one was set.
    pub fn take_terminal(&self) -> Option<Terminal> {
        self.terminal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// What a presence watcher (a WatchPresence stream) receives.
#[derive(Clone, Debug)]
pub enum Watched {
    Event(Arc<PresenceEvent>),
    /// Events may have been lost on the way to this node: catch up from
    /// the tenant's event log (or re-read the state).
    Gap(GapReason),
}

enum Watcher {
    Stream {
        id: u64,
        tx: mpsc::Sender<Watched>,
        lagged: Arc<AtomicBool>,
    },
    Socket(Arc<SocketShared>),
}

/// Local delivery of registry events.
#[derive(Default)]
pub struct Hub {
    local: Arc<LocalSockets>,
    watchers: DashMap<Tenant, Vec<Watcher>>,
    next_watcher: AtomicU64,
    /// How long the registry's [`Event::Drain`] spreads reconnects over
    /// (the node's `drain_window`).
    drain_window: Duration,
    /// The node's connectivity as last published (by the registry's
    /// [`crate::connectivity::Health`]), for sockets that open while degraded.
    connectivity: Mutex<Connectivity>,
    /// The frame of the last notice delivered: a tenant-wide notice reaches
    /// thousands of sessions as one shared `Arc<Notice>`, and its frame is
    /// rendered once for all of them, not once per session.
    last_notice: Mutex<Option<(Arc<crate::session::Notice>, Utf8Bytes)>>,
}

impl Hub {
    /// A hub that drains over `drain_window` when the registry says so.
    pub fn new(drain_window: Duration) -> Arc<Self> {
        Arc::new(Self {
            drain_window,
            ..Self::default()
        })
    }

    /// This node's sockets by session, for the registry to read (and to
    /// record what an attach confirmed).
    pub fn local(&self) -> Arc<LocalSockets> {
        self.local.clone()
    }

    /// Registers a socket so events of its session reach it.
    pub fn register(&self, socket: Arc<SocketShared>) {
        self.local.insert(socket);
    }

    /// Forgets a socket (idempotent).
    pub fn unregister(&self, socket: &SocketShared) {
        if !self.local.remove(socket) {
            return;
        }
        if socket.watching.load(Ordering::Relaxed) {
            if let Some(mut ws) = self.watchers.get_mut(&socket.tenant) {
                ws.retain(|w| !matches!(w, Watcher::Socket(s) if s.conn == socket.conn));
            }
            self.forget_if_unwatched(&socket.tenant);
        }
    }

    /// Adds a socket as a watcher of its tenant's presence.
    pub fn watch_socket(&self, socket: Arc<SocketShared>) {
        if !socket.watching.swap(true, Ordering::Relaxed) {
            self.watchers
                .entry(socket.tenant.clone())
                .or_default()
                .push(Watcher::Socket(socket));
        }
    }

    /// A bounded stream of the tenant's presence events (for WatchPresence).
    pub fn watch(self: &Arc<Self>, tenant: &Tenant, capacity: usize) -> PresenceWatch {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let id = self.next_watcher.fetch_add(1, Ordering::Relaxed);
        let lagged = Arc::new(AtomicBool::new(false));
        self.watchers
            .entry(tenant.clone())
            .or_default()
            .push(Watcher::Stream {
                id,
                tx,
                lagged: lagged.clone(),
            });
        PresenceWatch {
            rx,
            lagged,
            hub: Arc::downgrade(self),
            tenant: tenant.clone(),
            id,
        }
    }

    /// Sockets on this node.
    pub fn socket_count(&self) -> usize {
        self.local.len()
    }

    /// Every socket on this node (heartbeat sweeper, drain).
    pub fn sockets(&self) -> Vec<Arc<SocketShared>> {
        self.local.all()
    }

    /// The node's connectivity as last published.
    pub fn connectivity(&self) -> Connectivity {
        *self.connectivity.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the node's connectivity and tells every local socket: one
    /// frame, built once, queued per socket (never blocking). The lock is
    /// held while queueing so two changes reach every socket in order.
    fn connectivity_changed(&self, c: Connectivity) {
        let mut current = self.connectivity.lock().unwrap_or_else(|p| p.into_inner());
        *current = c;
        metrics::gauge!(m::DEGRADED).set(if c.is_ok() { 0.0 } else { 1.0 });
        let frame = frames::connectivity(&c);
        for socket in self.sockets() {
            socket.send(Outbound::Text(frame.clone()));
        }
    }

    /// Tells every local socket to reconnect (elsewhere, after a random
    /// delay below `window`, so clients do not stampede) and closes it with
    /// [`CloseCode::Restarting`]. The sessions live on: their sockets detach.
    pub fn drain(&self, window: Duration) {
        let window_ms = (window.as_millis() as u64).max(1);
        for socket in self.sockets() {
            let after_ms = rand::random::<u64>() % window_ms;
            socket.terminate(Terminal {
                frame: Some(frames::reconnect(after_ms)),
                close: CloseCode::Restarting,
                detach: true,
            });
        }
    }

    fn ended(&self, tombstone: &Tombstone) {
        let session = &tombstone.session;
        let sockets = self.local.end(&session.tenant, &session.id);
        if sockets.is_empty() {
            return;
        }
        let reason = tombstone.ending.reason;
        let frame = frames::ending_frame(tombstone);
        for socket in sockets {
            if reason != EndReason::LoggedOut {
                metrics::counter!(m::FORCED_LOGOUTS, "reason" => reason.as_str()).increment(1);
            }
            socket.terminate(Terminal {
                frame: Some(frame.clone()),
                close: CloseCode::from(reason),
                detach: false,
            });
        }
    }

    /// Drops the tenant's watcher list once it is empty, so the map holds
    /// only tenants watched now (the caller must hold no guard on it).
    fn forget_if_unwatched(&self, tenant: &Tenant) {
        self.watchers.remove_if(tenant, |_, ws| ws.is_empty());
    }

    fn presence(&self, event: &Arc<PresenceEvent>) {
        let tenant = &event.session.tenant;
        self.tell_watchers(tenant, Watched::Event(event.clone()), || {
            frames::presence_frame(event)
        });
    }

    /// Tells the watchers of `tenant` (every tenant: `None`) they may have
    /// missed events: streams catch up from the log, sockets get a `gap`
    /// frame (they re-read the state).
    fn gap(&self, tenant: Option<&Tenant>, reason: GapReason) {
        let tenants: Vec<Tenant> = match tenant {
            Some(t) => vec![t.clone()],
            None => self.watchers.iter().map(|e| e.key().clone()).collect(),
        };
        for t in tenants {
            self.tell_watchers(&t, Watched::Gap(reason), || frames::gap_frame(reason));
        }
    }

    /// Gives `item` to every stream watching `tenant` (dropping those that
    /// fell behind) and the frame `frame` makes to every watching socket.
    fn tell_watchers(&self, tenant: &Tenant, item: Watched, frame: impl Fn() -> Utf8Bytes) {
        let Some(mut watchers) = self.watchers.get_mut(tenant) else {
            return;
        };
        let mut built = None;
        watchers.retain(|w| match w {
            Watcher::Stream { tx, lagged, .. } => match tx.try_send(item.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    lagged.store(true, Ordering::Relaxed);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
            Watcher::Socket(s) => {
                let f = built.get_or_insert_with(&frame);
                s.send(Outbound::Text(f.clone()));
                true
            }
        });
        let unwatched = watchers.is_empty();
        drop(watchers);
        if unwatched {
            self.forget_if_unwatched(tenant);
        }
    }
}

impl Hub {
    /// The frame of `notice`, from the one-entry cache when it is the same
    /// body as last time.
    fn notice_frame(&self, notice: &Arc<crate::session::Notice>) -> Utf8Bytes {
        let mut last = self.last_notice.lock().unwrap_or_else(|p| p.into_inner());
        match &*last {
            Some((n, frame)) if Arc::ptr_eq(n, notice) => frame.clone(),
            _ => {
                let frame = frames::notice_frame(notice);
                *last = Some((notice.clone(), frame.clone()));
                frame
            }
        }
    }
}

impl EventSink for Hub {
    fn publish(&self, event: Event) {
        match event {
            Event::Ended(tombstone) => self.ended(&tombstone),
            Event::Notice {
                session_id, notice, ..
            } => {
                let sockets = self.local.of(&session_id);
                if !sockets.is_empty() {
                    let frame = self.notice_frame(&notice);
                    for s in sockets {
                        s.send(Outbound::Text(frame.clone()));
                    }
                }
            }
            Event::Presence(event) => self.presence(&event),
            Event::Connectivity(c) => self.connectivity_changed(c),
            Event::Drain => {
                self.local.disown_all();
                self.drain(self.drain_window)
            }
            Event::Gap { tenant, reason } => self.gap(tenant.as_ref(), reason),
        }
    }
}

/// A subscription to one tenant's presence events; unsubscribes on drop.
pub struct PresenceWatch {
    rx: mpsc::Receiver<Watched>,
    lagged: Arc<AtomicBool>,
    hub: Weak<Hub>,
    tenant: Tenant,
    id: u64,
}

impl PresenceWatch {
    /// The next event or gap; `None` once the watcher fell behind (see
    /// [`lagged`]) or the hub is gone.
    ///
    /// [`lagged`]: PresenceWatch::lagged
    pub async fn recv(&mut self) -> Option<Watched> {
        self.rx.recv().await
    }

    /// Whether the watcher was dropped for falling behind.
    pub fn lagged(&self) -> bool {
        self.lagged.load(Ordering::Relaxed)
    }
}

impl Drop for PresenceWatch {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            if let Some(mut ws) = hub.watchers.get_mut(&self.tenant) {
                ws.retain(|w| !matches!(w, Watcher::Stream { id, .. } if *id == self.id));
            }
            hub.forget_if_unwatched(&self.tenant);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{
        EndedBy, Ending, Generation, Login, NodeId, PresenceChange, Session, SessionState,
    };

    fn session() -> Session {
        Session {
            id: SessionId::random(),
            tenant: Tenant::parse("acme").unwrap(),
            login: Login::parse("ana").unwrap(),
            station: None,
            client: "web".into(),
            role: "agent".into(),
            generation: Generation(1),
            state: SessionState::Ended(EndReason::Superseded),
            created_at_ms: 0,
            last_seen_ms: 0,
            node: NodeId::parse("n").unwrap(),
            attributes: Default::default(),
            status: String::new(),
            device: None,
        }
    }

    #[test]
    fn an_ended_session_terminates_its_sockets_even_with_a_full_queue() {
        let hub = Hub::new(Duration::ZERO);
        let s = session();
        let sock = Arc::new(SocketShared::new(1, s.tenant.clone(), s.id.clone(), 1));
        hub.register(sock.clone());
        sock.send(Outbound::Text("fills the queue".into()));
        hub.publish(Event::Ended(Arc::new(Tombstone {
            session: s,
            ending: Ending {
                reason: EndReason::Superseded,
                by: EndedBy {
                    client: "desktop".into(),
                    station: None,
                    session_id: None,
                    at_ms: 5,
                },
                message: EndReason::Superseded.default_message().into(),
            },
        })));
        let t = sock.take_terminal().expect("terminal set");
        assert_eq!(t.close, CloseCode::Superseded);
        let frame = t.frame.expect("forced_logout frame");
        let v: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(v["type"], "forced_logout");
        assert_eq!(v["reason"], "superseded");
        assert_eq!(v["by"]["client"], "desktop");
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_dropped_and_told() {
        let hub = Hub::new(Duration::ZERO);
        let s = session();
        let mut watch = hub.watch(&s.tenant, 1);
        let event = Arc::new(PresenceEvent {
            session: s,
            change: PresenceChange::Claimed,
            at_ms: 1,
            seq: 1,
            ending: None,
        });
        hub.publish(Event::Presence(event.clone()));
        hub.publish(Event::Presence(event.clone()));
        assert!(watch.recv().await.is_some(), "the first event arrives");
        assert!(watch.recv().await.is_none(), "then the stream ends");
        assert!(watch.lagged());
        assert!(
            hub.watchers.is_empty(),
            "nobody watches the tenant any more"
        );
    }

    #[tokio::test]
    async fn a_tenant_nobody_watches_any_more_leaves_the_watcher_map() {
        let hub = Hub::new(Duration::ZERO);
        let tenant = session().tenant;
        let (a, b) = (hub.watch(&tenant, 1), hub.watch(&tenant, 1));
        drop(a);
        assert_eq!(hub.watchers.len(), 1, "b still watches");
        drop(b);
        assert!(hub.watchers.is_empty());
    }
}
