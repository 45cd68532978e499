//! The per-tenant event log: every presence event with its sequence number,
//! kept for a bounded number of events and a bounded age, so a watcher (or
//! the webhook sender) that was away resumes after the last sequence it
//! saw, or learns that the log no longer reaches back that far.
//!
//! This is the embedded registry's log, a ring buffer in the tenant's state
//! (appended under the tenant lock, so its order is the state's order). The
//! Redis registry keeps the same log as a stream per tenant, appended by the
//! script that changes the state (`lua/prelude.lua`, `lua/log.lua`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::session::PresenceEvent;

/// How much of a tenant's log is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogBounds {
    /// Events kept per tenant (a Redis stream trims approximately, so it may
    /// briefly hold up to ~100 more).
    pub max_events: usize,
    /// Events older than this are dropped.
    pub max_age: Duration,
}

impl Default for LogBounds {
    fn default() -> Self {
        Self {
            max_events: 10_000,
            max_age: Duration::from_secs(3600),
        }
    }
}

/// Events read back from a tenant's log.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Replay {
    /// Events after the requested sequence, oldest first (at most the limit).
    pub events: Vec<Arc<PresenceEvent>>,
    /// The log no longer holds every event after the requested sequence
    /// (trimmed by length or age, or restarted after Redis lost it): the
    /// reader missed some and must re-read the state.
    pub trimmed: bool,
    /// The newest sequence number of the tenant (0: none yet).
    pub head: u64,
}

/// The embedded registry's log of one tenant.
#[derive(Debug, Default)]
pub struct EventLog {
    events: VecDeque<Arc<PresenceEvent>>,
    /// The last sequence number given out.
    head: u64,
}

impl EventLog {
    /// Appends `event` with the next sequence number, drops what falls
    /// outside `bounds`, and returns the event as logged.
    pub fn push(
        &mut self,
        mut event: PresenceEvent,
        now: i64,
        bounds: &LogBounds,
    ) -> Arc<PresenceEvent> {
        self.head += 1;
        event.seq = self.head;
        let event = Arc::new(event);
        self.events.push_back(event.clone());
        self.trim(now, bounds);
        event
    }

    /// Drops events beyond the length bound and older than the age bound.
    pub fn trim(&mut self, now: i64, bounds: &LogBounds) {
        while self.events.len() > bounds.max_events {
            self.events.pop_front();
        }
        let oldest = now.saturating_sub(bounds.max_age.as_millis() as i64);
        while self.events.front().is_some_and(|e| e.at_ms < oldest) {
            self.events.pop_front();
        }
        if self.events.is_empty() && self.events.capacity() > 0 {
            self.events = VecDeque::new();
        }
    }

    /// Up to `limit` events after sequence `after`.
    pub fn after(&self, after: u64, limit: usize) -> Replay {
        let first = self.events.front().map_or(self.head + 1, |e| e.seq);
        // Nothing missing when the next wanted event is still here (or not
        // written yet); a sequence ahead of the head means the log restarted.
        let trimmed = after + 1 < first || after > self.head;
        let skip = (after + 1).saturating_sub(first) as usize;
        Replay {
            events: self.events.iter().skip(skip).take(limit).cloned().collect(),
            trimmed,
            head: self.head,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{
        Generation, Login, NodeId, PresenceChange, Session, SessionId, SessionState, Tenant,
    };

    fn event(at_ms: i64) -> PresenceEvent {
        PresenceEvent {
            session: Session {
                id: SessionId::random(),
                tenant: Tenant::parse("acme").unwrap(),
                login: Login::parse("ana").unwrap(),
                station: None,
                client: "web".into(),
                role: "agent".into(),
                generation: Generation(1),
                state: SessionState::Pending,
                created_at_ms: 0,
                last_seen_ms: 0,
                node: NodeId::parse("n").unwrap(),
                attributes: Default::default(),
                status: String::new(),
                device: None,
            },
            change: PresenceChange::Claimed,
            at_ms,
            seq: 0,
            ending: None,
        }
    }

    fn seqs(r: &Replay) -> Vec<u64> {
        r.events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn events_are_numbered_and_read_back_after_a_sequence() {
        let b = LogBounds::default();
        let mut log = EventLog::default();
        for i in 0..5 {
            assert_eq!(log.push(event(i), i, &b).seq, i as u64 + 1);
        }
        let r = log.after(2, 100);
        assert_eq!((seqs(&r), r.trimmed, r.head), (vec![3, 4, 5], false, 5));
        assert_eq!(seqs(&log.after(0, 2)), vec![1, 2]);
        let caught_up = log.after(5, 100);
        assert!(caught_up.events.is_empty() && !caught_up.trimmed);
    }

    #[test]
    fn a_reader_behind_the_trimmed_start_is_told() {
        let b = LogBounds {
            max_events: 3,
            max_age: Duration::from_secs(60),
        };
        let mut log = EventLog::default();
        for i in 0..5 {
            log.push(event(i), i, &b);
        }
        let r = log.after(1, 100);
        assert!(r.trimmed, "2 was dropped");
        assert_eq!(seqs(&r), vec![3, 4, 5]);
        assert!(!log.after(2, 100).trimmed, "3 is the oldest kept");
        assert!(
            log.after(9, 100).trimmed,
            "ahead of the head: the log restarted"
        );
    }

    #[test]
    fn old_events_are_dropped_by_age() {
        let b = LogBounds {
            max_events: 100,
            max_age: Duration::from_millis(1000),
        };
        let mut log = EventLog::default();
        log.push(event(0), 0, &b);
        log.push(event(500), 500, &b);
        log.push(event(1800), 1800, &b);
        assert_eq!(seqs(&log.after(0, 10)), vec![3]);
        log.trim(10_000, &b);
        let r = log.after(2, 10);
        assert!(r.trimmed && r.events.is_empty() && r.head == 3);
    }
}
