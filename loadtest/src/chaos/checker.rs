//! The chaos run's checker: a pure function over a [`history`](super::history)
//! that says which of turnstile's promises the run broke.
//!
//! What it checks, precisely:
//!
//! - **One live holder.** A session is *live* from a `welcome` of one of
//!   its sockets until that socket is lost (`disconnected`, the agent's
//!   own dead-socket detection included), its agent stops, or the
//!   generator ends it — i.e. while a client holds a welcomed socket and
//!   believes it is the holder. Two sessions of one login, or of one
//!   station, live at once for longer than [`Rules::overlap_window`] is a
//!   violation; the longest overlap of all is reported either way.
//! - **Tokens accepted.** A session's own connect token refused (4401)
//!   is a violation, skewed nodes or not: token times are the registry
//!   clock's (Redis's), not the hosts' wall clocks (docs/operations.md,
//!   "Clocks").
//! - **Every displaced client told.** A session the generator did not end
//!   itself (Release or logout) and that is not live at the end must have
//!   stopped with a `forced_logout` reason or a final close code. An agent
//!   that gave up or was closed without either is a violation.
//! - **Generations rise.** For two grants of one login where the first was
//!   answered before the second was sent, the second's generation is
//!   higher; no two sessions of a login share one.
//! - **No accepted notice lost.** A notice is *accepted* when `Notify`
//!   to a session returned OK with the notice delivered or queued. An
//!   accepted notice to a session its client still holds at the end (never
//!   stopped, never ended) must have reached that client.
//! - **The final state is Redis's.** After quiescing, the sessions the
//!   clients hold are exactly the sessions ListSessions returns, each
//!   CONNECTED.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::history::Event;

/// The bounds the checker holds the run to.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// The longest two live holders of one login or station may overlap
    /// (µs): the documented window (docs/operations.md, "Chaos run").
    pub overlap_window: u64,
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Verdict {
    pub violations: Vec<String>,
    /// The longest overlap of two live holders of one login or station (µs).
    pub longest_overlap: u64,
    /// Where it was: the key and both sessions.
    pub longest_overlap_at: String,
    /// Figures: grants, welcomes, forced logouts by reason, notices, faults.
    pub counts: BTreeMap<String, u64>,
}

/// A grant as the generation rule needs it: (sent, answered, generation,
/// session), per (tenant, login).
type Grant<'a> = (u64, u64, u64, &'a str);
type GrantsByLogin<'a> = HashMap<(&'a str, &'a str), Vec<Grant<'a>>>;

#[derive(Default)]
struct Session {
    tenant: String,
    login: String,
    station: String,
    generation: u64,
    /// Closed live intervals (start, end), µs.
    live: Vec<(u64, u64)>,
    open: Option<u64>,
    ended_by_us: bool,
    stop: Option<(String, String, Option<u16>)>,
    granted: bool,
}

impl Session {
    fn close(&mut self, t: u64) {
        if let Some(s) = self.open.take() {
            self.live.push((s, t));
        }
    }
}

/// Checks `events` (in time order) against `rules`.
pub fn check(events: &[Event], rules: &Rules) -> Verdict {
    let mut v = Verdict::default();
    let mut sessions: HashMap<&str, Session> = HashMap::new();
    let mut grants: GrantsByLogin = HashMap::new();
    let mut sent: Vec<(&str, &str)> = Vec::new();
    let mut delivered: HashSet<(&str, &str)> = HashSet::new();
    let mut final_state = None;
    let mut last_t = 0;
    let count = |v: &mut Verdict, k: String| *v.counts.entry(k).or_default() += 1;
    for e in events {
        last_t = last_t.max(e.t());
        match e {
            Event::Grant {
                t,
                t0,
                tenant,
                login,
                station,
                session,
                generation,
                ..
            } => {
                count(&mut v, "grants".into());
                let s = sessions.entry(session).or_default();
                s.tenant.clone_from(tenant);
                s.login.clone_from(login);
                s.station.clone_from(station);
                s.generation = *generation;
                s.granted = true;
                grants
                    .entry((tenant, login))
                    .or_default()
                    .push((*t0, *t, *generation, session));
            }
            Event::Welcome {
                t,
                session,
                resumed,
                ..
            } => {
                count(&mut v, "welcomes".into());
                if *resumed {
                    count(&mut v, "resumes".into());
                }
                let s = sessions.entry(session).or_default();
                if s.open.is_none() && s.stop.is_none() && !s.ended_by_us {
                    s.open = Some(*t);
                }
            }
            Event::Disconnected { t, session, .. } => {
                count(&mut v, "disconnects".into());
                sessions.entry(session).or_default().close(*t);
            }
            Event::Stopped {
                t,
                session,
                how,
                reason,
                code,
            } => {
                let k = match code {
                    Some(c) => format!("stopped_{how}_{c}"),
                    None if how == "forced_logout" => format!("forced_logout_{reason}"),
                    None => format!("stopped_{how}"),
                };
                count(&mut v, k);
                let s = sessions.entry(session).or_default();
                s.close(*t);
                s.stop = Some((how.clone(), reason.clone(), *code));
            }
            Event::Ended { t, session, by } => {
                count(&mut v, format!("ended_by_{by}"));
                let s = sessions.entry(session).or_default();
                s.close(*t);
                s.ended_by_us = true;
            }
            Event::NoticeSent { session, id, .. } => {
                count(&mut v, "notices_accepted".into());
                sent.push((session, id));
            }
            Event::NoticeDelivered { session, id, .. } => {
                if delivered.insert((session, id)) {
                    count(&mut v, "notices_delivered".into());
                }
            }
            Event::Fault { kind, phase, .. } => {
                if phase == "start" {
                    count(&mut v, format!("fault_{kind}"));
                }
            }
            Event::Final { sessions: f, .. } => final_state = Some(f),
        }
    }
    let end = last_t;
    for s in sessions.values_mut() {
        s.close(end);
    }
    let held_at_end = |s: &Session| s.granted && s.stop.is_none() && !s.ended_by_us;

    overlaps(&sessions, rules, &mut v);
    generations(&grants, &mut v);

    // Every session that ended without us ending it was told why.
    let mut ids: Vec<&&str> = sessions.keys().collect();
    ids.sort();
    for id in &ids {
        let s = &sessions[**id];
        if !s.granted || s.ended_by_us {
            continue;
        }
        if let Some((how, reason, code)) = &s.stop {
            let told = match how.as_str() {
                "forced_logout" => !reason.is_empty(),
                "rejected" => code.is_some(),
                "logged_out" => true,
                _ => false,
            };
            if *code == Some(4401) {
                v.violations.push(format!(
                    "session {id} ({}/{}): its own connect token was refused (4401 {reason})",
                    s.tenant, s.login
                ));
            }
            if !told {
                v.violations.push(format!(
                    "session {id} ({}/{}) ended without being told why: its agent {how} {reason:?}",
                    s.tenant, s.login
                ));
            }
        }
    }

    // No accepted notice lost.
    for (session, id) in &sent {
        let Some(s) = sessions.get(session) else {
            continue;
        };
        if held_at_end(s) && !delivered.contains(&(*session, *id)) {
            v.violations.push(format!(
                "notice {id} to session {session} ({}/{}) was accepted by Notify, the session is still held, \
                 and its client never received it",
                s.tenant, s.login
            ));
        }
    }

    // The final state is Redis's.
    if let Some(f) = final_state {
        let listed: HashMap<&str, &super::history::FinalSession> =
            f.iter().map(|s| (s.session.as_str(), s)).collect();
        for id in &ids {
            let s = &sessions[**id];
            if !held_at_end(s) {
                continue;
            }
            match listed.get(**id) {
                Some(l) if l.state == "connected" => {}
                Some(l) => v.violations.push(format!(
                    "session {id} ({}/{}) is held by its client at the end but Redis has it {}",
                    s.tenant, s.login, l.state
                )),
                None => v.violations.push(format!(
                    "session {id} ({}/{}) is held by its client at the end but Redis does not list it",
                    s.tenant, s.login
                )),
            }
        }
        for l in f {
            let held = sessions.get(l.session.as_str()).is_some_and(&held_at_end);
            if !held {
                v.violations.push(format!(
                    "Redis lists session {} ({}/{}, {}) at the end, which no client holds",
                    l.session, l.tenant, l.login, l.state
                ));
            }
        }
        v.counts.insert("final_sessions".into(), f.len() as u64);
    }
    v
}

/// Live intervals per login and per station; the longest overlap of two
/// different sessions on one key.
fn overlaps(sessions: &HashMap<&str, Session>, rules: &Rules, v: &mut Verdict) {
    let mut by_key: BTreeMap<String, Vec<(u64, u64, &str)>> = BTreeMap::new();
    for (id, s) in sessions {
        if !s.granted {
            continue;
        }
        for &(a, b) in &s.live {
            by_key
                .entry(format!("login {}/{}", s.tenant, s.login))
                .or_default()
                .push((a, b, id));
            if !s.station.is_empty() {
                by_key
                    .entry(format!("station {}/{}", s.tenant, s.station))
                    .or_default()
                    .push((a, b, id));
            }
        }
    }
    for (key, mut iv) in by_key {
        iv.sort();
        // Sweep: intervals still open at each start.
        let mut active: Vec<(u64, u64, &str)> = Vec::new();
        for &(a, b, id) in &iv {
            active.retain(|&(_, e, _)| e > a);
            for &(a2, b2, id2) in &active {
                if id2 == id {
                    continue;
                }
                let o = b.min(b2) - a.max(a2);
                if o > v.longest_overlap {
                    v.longest_overlap = o;
                    v.longest_overlap_at =
                        format!("{key}: {id2} live {a2}–{b2} µs, {id} live {a}–{b} µs");
                }
                if o > rules.overlap_window {
                    v.violations.push(format!(
                        "{key}: sessions {id2} and {id} were both live for {} ms (from {} µs; window {} ms)",
                        o / 1000,
                        a.max(a2),
                        rules.overlap_window / 1000
                    ));
                }
            }
            active.push((a, b, id));
        }
    }
}

/// Per login: a grant answered before another was sent has the lower
/// generation; no generation is issued to two sessions.
fn generations(grants: &GrantsByLogin, v: &mut Verdict) {
    let mut keys: Vec<_> = grants.keys().collect();
    keys.sort();
    for key in keys {
        let g = &grants[key];
        let mut by_end = g.clone();
        by_end.sort_by_key(|x| x.1);
        // prefix[i]: the highest generation (and its session) among the
        // first i+1 grants by answer time.
        let mut prefix: Vec<(u64, &str)> = Vec::with_capacity(by_end.len());
        for &(_, _, gen, id) in &by_end {
            let best = match prefix.last() {
                Some(&(m, mid)) if m >= gen => (m, mid),
                _ => (gen, id),
            };
            prefix.push(best);
        }
        let mut seen: HashMap<u64, &str> = HashMap::new();
        for &(t0, _, gen, id) in g {
            if let Some(other) = seen.insert(gen, id) {
                if other != id {
                    v.violations.push(format!(
                        "login {}/{}: generation {gen} was issued to both {other} and {id}",
                        key.0, key.1
                    ));
                }
            }
            let before = by_end.partition_point(|x| x.1 < t0);
            if before > 0 {
                let (max, mid) = prefix[before - 1];
                if max >= gen {
                    v.violations.push(format!(
                        "login {}/{}: session {id} got generation {gen}, not above {max} of {mid} granted before it was claimed",
                        key.0, key.1
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::history::FinalSession;
    use super::*;

    const RULES: Rules = Rules {
        overlap_window: 1_000_000,
    };

    fn grant(t: u64, login: &str, station: &str, session: &str, generation: u64) -> Event {
        Event::Grant {
            t,
            t0: t.saturating_sub(100),
            tenant: "t0".into(),
            login: login.into(),
            station: station.into(),
            session: session.into(),
            generation,
            node: 0,
            policy: "reject".into(),
            expected: false,
        }
    }
    fn welcome(t: u64, session: &str) -> Event {
        Event::Welcome {
            t,
            session: session.into(),
            node: 0,
            resumed: false,
        }
    }
    fn forced(t: u64, session: &str, reason: &str) -> Event {
        Event::Stopped {
            t,
            session: session.into(),
            how: "forced_logout".into(),
            reason: reason.into(),
            code: None,
        }
    }
    fn fin(t: u64, live: &[(&str, &str)]) -> Event {
        Event::Final {
            t,
            sessions: live
                .iter()
                .map(|(s, login)| FinalSession {
                    tenant: "t0".into(),
                    session: (*s).into(),
                    login: (*login).into(),
                    station: String::new(),
                    state: "connected".into(),
                    generation: 0,
                })
                .collect(),
        }
    }

    /// ana taken over on another node: the old socket told within a few
    /// ms of the new one's welcome.
    fn takeover() -> Vec<Event> {
        vec![
            grant(1_000, "ana", "desk-1", "s1", 1),
            welcome(2_000, "s1"),
            grant(10_000_000, "ana", "desk-2", "s2", 2),
            welcome(10_001_000, "s2"),
            forced(10_003_000, "s1", "superseded"),
            fin(20_000_000, &[("s2", "ana")]),
        ]
    }

    #[test]
    fn a_clean_takeover_passes_and_reports_its_overlap() {
        let v = check(&takeover(), &RULES);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert_eq!(v.longest_overlap, 2_000);
        assert!(v.longest_overlap_at.contains("login t0/ana"), "{v:?}");
        assert_eq!(v.counts["grants"], 2);
        assert_eq!(v.counts["forced_logout_superseded"], 1);
    }

    #[test]
    fn two_live_holders_of_a_login_past_the_window_fail() {
        let mut h = takeover();
        h[4] = forced(13_000_000, "s1", "superseded");
        let v = check(&h, &RULES);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(
            v.violations[0].contains("login t0/ana"),
            "{:?}",
            v.violations
        );
        assert!(v.violations[0].contains("2999 ms"), "{:?}", v.violations);
    }

    #[test]
    fn two_logins_on_one_station_past_the_window_fail() {
        let h = vec![
            grant(1_000, "ana", "desk-1", "s1", 1),
            welcome(2_000, "s1"),
            grant(3_000, "bob", "desk-1", "s2", 1),
            welcome(4_000, "s2"),
            fin(5_000_000, &[("s1", "ana"), ("s2", "bob")]),
        ];
        let v = check(&h, &RULES);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(v.violations[0].contains("station t0/desk-1"));
    }

    #[test]
    fn a_disconnected_holder_is_not_live() {
        let h = vec![
            grant(1_000, "ana", "", "s1", 1),
            welcome(2_000, "s1"),
            Event::Disconnected {
                t: 3_000,
                session: "s1".into(),
                cause: "node killed".into(),
            },
            grant(5_000_000, "ana", "", "s2", 2),
            welcome(5_001_000, "s2"),
            Event::Stopped {
                t: 9_000_000,
                session: "s1".into(),
                how: "rejected".into(),
                reason: "expired".into(),
                code: Some(4004),
            },
            fin(10_000_000, &[("s2", "ana")]),
        ];
        let v = check(&h, &RULES);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert_eq!(v.longest_overlap, 0);
    }

    #[test]
    fn a_refused_token_fails_even_beside_a_skewed_node() {
        let refused = |t| Event::Stopped {
            t,
            session: "s1".into(),
            how: "rejected".into(),
            reason: "invalid token".into(),
            code: Some(4401),
        };
        let h = vec![grant(1_000, "ana", "", "s1", 1), refused(2_000)];
        let v = check(&h, &RULES);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(v.violations[0].contains("4401"));
        let skew = |t, phase: &str| Event::Fault {
            t,
            kind: "skew".into(),
            phase: phase.into(),
            detail: String::new(),
        };
        let h = vec![
            skew(500, "start"),
            grant(1_000, "ana", "", "s1", 1),
            skew(1_500, "end"),
            refused(2_000),
        ];
        assert_eq!(check(&h, &RULES).violations.len(), 1);
    }

    #[test]
    fn a_displaced_client_never_told_fails() {
        let mut h = takeover();
        h[4] = Event::Stopped {
            t: 10_003_000,
            session: "s1".into(),
            how: "gave_up".into(),
            reason: "connect failed".into(),
            code: None,
        };
        let v = check(&h, &RULES);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(v.violations[0].contains("without being told"));
    }

    #[test]
    fn a_generation_that_goes_back_fails() {
        let mut h = takeover();
        h[2] = grant(10_000_000, "ana", "desk-2", "s2", 1);
        let v = check(&h, &RULES);
        assert_eq!(v.violations.len(), 2, "{:?}", v.violations);
        assert!(v.violations.iter().any(|m| m.contains("issued to both")));
        assert!(v.violations.iter().any(|m| m.contains("not above 1")));
    }

    #[test]
    fn concurrent_grants_need_only_distinct_generations() {
        let h = vec![
            Event::Grant {
                t: 2_000,
                t0: 500,
                tenant: "t0".into(),
                login: "ana".into(),
                station: String::new(),
                session: "s2".into(),
                generation: 2,
                node: 0,
                policy: "takeover".into(),
                expected: false,
            },
            Event::Grant {
                t: 3_000,
                t0: 1_000,
                tenant: "t0".into(),
                login: "ana".into(),
                station: String::new(),
                session: "s1".into(),
                generation: 1,
                node: 1,
                policy: "takeover".into(),
                expected: false,
            },
        ];
        let v = check(&h, &RULES);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
    }

    #[test]
    fn an_accepted_notice_never_received_by_a_held_session_fails() {
        let mut h = takeover();
        h.insert(
            4,
            Event::NoticeSent {
                t: 11_000_000,
                session: "s2".into(),
                id: "n1".into(),
            },
        );
        // One to the displaced session is not owed.
        h.insert(
            4,
            Event::NoticeSent {
                t: 10_000_500,
                session: "s1".into(),
                id: "n0".into(),
            },
        );
        let v = check(&h, &RULES);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(v.violations[0].contains("notice n1"));
        h.insert(
            6,
            Event::NoticeDelivered {
                t: 11_000_100,
                session: "s2".into(),
                id: "n1".into(),
            },
        );
        assert!(check(&h, &RULES).violations.is_empty());
    }

    #[test]
    fn a_final_state_unlike_redis_fails_both_ways() {
        let mut h = takeover();
        *h.last_mut().unwrap() = fin(20_000_000, &[("s1", "ana")]);
        let v = check(&h, &RULES);
        assert_eq!(v.violations.len(), 2, "{:?}", v.violations);
        assert!(v
            .violations
            .iter()
            .any(|m| m.contains("s2") && m.contains("does not list")));
        assert!(v
            .violations
            .iter()
            .any(|m| m.contains("Redis lists session s1")));
    }

    #[test]
    fn a_session_we_released_is_neither_owed_nor_expected() {
        let h = vec![
            grant(1_000, "ana", "", "s1", 1),
            welcome(2_000, "s1"),
            Event::Ended {
                t: 3_000,
                session: "s1".into(),
                by: "release".into(),
            },
            Event::Stopped {
                t: 3_500,
                session: "s1".into(),
                how: "closed".into(),
                reason: String::new(),
                code: None,
            },
            fin(10_000, &[]),
        ];
        let v = check(&h, &RULES);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
    }
}
