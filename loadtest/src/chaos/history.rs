//! The chaos run's history: every grant, welcome, disconnect, stop,
//! notice and fault as the clients and the fault injector saw them, in
//! the order they happened, timed on the generator's monotonic clock
//! (µs since the run began). Written as JSON lines (`--history FILE`);
//! the [`checker`](super::checker) reads nothing else.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// One thing that happened. `t` is µs since the run began; `session` a
/// session id as the broker named it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// A claim answered GRANTED (`t0`: when it was sent).
    Grant {
        t: u64,
        t0: u64,
        tenant: String,
        login: String,
        station: String,
        session: String,
        generation: u64,
        /// The node that answered the claim (index into the run's nodes).
        node: usize,
        /// `reject` or `takeover`.
        policy: String,
        /// The claim named the holder it meant to end.
        expected: bool,
    },
    /// A socket of `session` was welcomed (on node `node`).
    Welcome {
        t: u64,
        session: String,
        node: usize,
        resumed: bool,
    },
    /// A socket of `session` was lost; the agent reconnects.
    Disconnected {
        t: u64,
        session: String,
        cause: String,
    },
    /// The agent of `session` stopped for good. `how`: `forced_logout`
    /// (with `reason`), `logged_out`, `rejected` (a final close code),
    /// `closed`, `gave_up`, `logout_unconfirmed`.
    Stopped {
        t: u64,
        session: String,
        how: String,
        reason: String,
        code: Option<u16>,
    },
    /// The generator itself ended `session`: `by` is `release` (the login
    /// service's Release) or `logout` (the agent's own logout).
    Ended { t: u64, session: String, by: String },
    /// `Notify` to `session` returned OK with the notice delivered or
    /// queued: the broker accepted it (see the checker's "accepted").
    NoticeSent { t: u64, session: String, id: String },
    /// The agent of `session` received notice `id` (and acked it).
    NoticeDelivered { t: u64, session: String, id: String },
    /// A fault began (`phase` `start`) or was recovered from (`end`).
    Fault {
        t: u64,
        kind: String,
        phase: String,
        detail: String,
    },
    /// What the broker holds after the run quiesced: every session that
    /// ListSessions returned, over every tenant of the run.
    Final { t: u64, sessions: Vec<FinalSession> },
}

/// One session as ListSessions returned it at the end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinalSession {
    pub tenant: String,
    pub session: String,
    pub login: String,
    pub station: String,
    /// `connected`, `disconnected`, `pending`, ...
    pub state: String,
    pub generation: u64,
}

impl Event {
    pub fn t(&self) -> u64 {
        match self {
            Event::Grant { t, .. }
            | Event::Welcome { t, .. }
            | Event::Disconnected { t, .. }
            | Event::Stopped { t, .. }
            | Event::Ended { t, .. }
            | Event::NoticeSent { t, .. }
            | Event::NoticeDelivered { t, .. }
            | Event::Fault { t, .. }
            | Event::Final { t, .. } => *t,
        }
    }
}

/// The recorder every task of the run shares; cloning it is an `Arc`
/// bump. A `std` mutex: nothing awaits while it is held.
#[derive(Clone)]
pub struct History {
    start: Instant,
    events: Arc<Mutex<Vec<Event>>>,
    /// Bound on the events kept (about 200 bytes each in memory); past
    /// it the run records nothing more and says so.
    cap: usize,
}

impl History {
    pub fn new(cap: usize) -> Self {
        Self {
            start: Instant::now(),
            events: Arc::new(Mutex::new(Vec::new())),
            cap,
        }
    }

    /// µs since the run began.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Records `make(now)`.
    pub fn record(&self, make: impl FnOnce(u64) -> Event) {
        let t = self.now();
        let mut ev = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if ev.len() < self.cap {
            ev.push(make(t));
        }
    }

    /// Records `ev` as it is (its time taken earlier, e.g. when a call
    /// was sent).
    pub fn push(&self, ev: Event) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() < self.cap {
            events.push(ev);
        }
    }

    /// Whether the cap was reached (the history is then incomplete).
    pub fn full(&self) -> bool {
        self.events.lock().map(|e| e.len()).unwrap_or(0) >= self.cap
    }

    /// The events so far, sorted by time (tasks record out of order by a
    /// few µs).
    pub fn snapshot(&self) -> Vec<Event> {
        let mut ev = self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        ev.sort_by_key(Event::t);
        ev
    }
}

/// Writes `events` as JSON lines.
pub fn write_jsonl(path: &Path, events: &[Event]) -> Result<(), String> {
    let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut w = std::io::BufWriter::new(f);
    for e in events {
        let line = serde_json::to_string(e).map_err(|e| e.to_string())?;
        writeln!(w, "{line}").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    w.flush().map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads a JSON-lines history back (for re-checking a run offline).
pub fn read_jsonl(path: &Path) -> Result<Vec<Event>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}
