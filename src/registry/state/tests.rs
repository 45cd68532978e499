//! Unit tests of the tenant state machine, and a property test that drives
//! random operation sequences and checks the invariants after every step.

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::session::{Device, NodeId};

const T0: i64 = 1_000_000;

fn cfg() -> RegistryConfig {
    RegistryConfig {
        node: NodeId::parse("n1").unwrap(),
        connect_timeout: Duration::from_millis(100),
        grace: Duration::from_millis(200),
        tombstone_ttl: Duration::from_millis(10_000),
        max_sockets_per_session: 2,
        ..RegistryConfig::default()
    }
}

fn req(login: &str, station: Option<&str>, policy: ConflictPolicy) -> ClaimRequest {
    ClaimRequest {
        tenant: Tenant::parse("acme").unwrap(),
        login: Login::parse(login).unwrap(),
        station: station.map(|s| Station::parse(s).unwrap()),
        client: "desktop".into(),
        role: "agent".into(),
        policy,
        attributes: Default::default(),
        idempotency_key: None,
        expected_session_id: None,
        device: None,
    }
}

/// `req` from device `device`.
fn req_on(login: &str, station: &str, device: Option<&str>) -> ClaimRequest {
    ClaimRequest {
        device: device.map(|d| Device::parse(d).unwrap()),
        ..req(login, Some(station), ConflictPolicy::Reject)
    }
}

fn refused_by(out: ClaimOutcome) -> Vec<SessionId> {
    match out {
        ClaimOutcome::StationInUse { holder, holders } => {
            assert_eq!(holder, holders[0], "holder is the first of holders");
            holders.into_iter().map(|h| h.id).collect()
        }
        other => panic!("expected STATION_IN_USE, got {other:?}"),
    }
}

fn holders_of(s: &TenantState, station: &str) -> Vec<(SessionId, Option<Device>)> {
    s.station_info(&Station::parse(station).unwrap())
        .holders
        .into_iter()
        .map(|h| (h.session_id, h.device))
        .collect()
}

fn sock(conn: u64) -> SocketId {
    SocketId {
        node: NodeId::parse("n1").unwrap(),
        conn,
    }
}

fn state() -> TenantState {
    TenantState::new(Tenant::parse("acme").unwrap())
}

fn grant(s: &mut TenantState, r: ClaimRequest, now: i64) -> (Session, Vec<Session>, Effects) {
    let mut fx = Effects::default();
    match s.claim(r, &cfg(), now, &mut fx).unwrap() {
        ClaimOutcome::Granted { session, evicted } => (session, evicted, fx),
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn ended_reasons(fx: &Effects) -> Vec<(SessionId, EndReason)> {
    fx.events
        .iter()
        .filter_map(|e| match e {
            Event::Ended(t) => Some((t.session.id.clone(), t.ending.reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn reject_refuses_a_held_login_with_the_holder() {
    let mut s = state();
    let (first, _, _) = grant(&mut s, req("ana", None, ConflictPolicy::Reject), T0);
    let mut fx = Effects::default();
    let out = s
        .claim(
            req("ana", None, ConflictPolicy::Reject),
            &cfg(),
            T0,
            &mut fx,
        )
        .unwrap();
    assert_eq!(out, ClaimOutcome::LoginInUse { holder: first });
    assert!(fx.events.is_empty(), "a refusal changes nothing");
}

#[test]
fn takeover_supersedes_and_a_new_station_is_a_station_change() {
    let mut s = state();
    let (a, _, _) = grant(&mut s, req("ana", Some("p1"), ConflictPolicy::Reject), T0);
    let (b, evicted, fx) = grant(&mut s, req("ana", Some("p1"), ConflictPolicy::Takeover), T0);
    assert_eq!(evicted[0].id, a.id);
    assert_eq!(
        ended_reasons(&fx),
        vec![(a.id.clone(), EndReason::Superseded)]
    );
    assert!(
        b.generation > a.generation,
        "generations increase with each grant"
    );
    let (c, _, fx) = grant(&mut s, req("ana", Some("p2"), ConflictPolicy::Takeover), T0);
    assert_eq!(
        ended_reasons(&fx),
        vec![(b.id.clone(), EndReason::StationChanged)]
    );
    // The old station is free again; the new one is held.
    let info = s.stations(&[Station::parse("p1").unwrap(), Station::parse("p2").unwrap()]);
    assert_eq!(info[0].holder, None);
    assert_eq!(info[1].holder, Some((c.login.clone(), c.id.clone())));
    s.check_invariants().unwrap();
}

#[test]
fn a_takeover_expecting_a_session_ends_only_that_one() {
    let mut s = state();
    let (shown, _, _) = grant(&mut s, req("ana", None, ConflictPolicy::Reject), T0);
    // ana signs in again elsewhere before the Continue arrives.
    let (current, _, _) = grant(&mut s, req("ana", None, ConflictPolicy::Takeover), T0);
    let mut stale = req("ana", Some("p1"), ConflictPolicy::Takeover);
    stale.expected_session_id = Some(shown.id.clone());
    let mut fx = Effects::default();
    let out = s.claim(stale, &cfg(), T0, &mut fx).unwrap();
    assert_eq!(
        out,
        ClaimOutcome::LoginInUse {
            holder: current.clone()
        }
    );
    assert!(fx.events.is_empty(), "a refusal changes nothing");
    // Confirmed against the current holder: it ends.
    let mut confirmed = req("ana", Some("p1"), ConflictPolicy::Takeover);
    confirmed.expected_session_id = Some(current.id.clone());
    let (_, evicted, _) = grant(&mut s, confirmed, T0);
    assert_eq!(
        evicted.iter().map(|e| &e.id).collect::<Vec<_>>(),
        [&current.id]
    );
    // No holder at all: a plain grant.
    s.release(
        &s.get(&SessionKey::Login(current.login.clone())).unwrap().id,
        &cfg(),
        T0,
        &mut Effects::default(),
    )
    .unwrap();
    let mut late = req("ana", None, ConflictPolicy::Takeover);
    late.expected_session_id = Some(current.id);
    let (_, evicted, _) = grant(&mut s, late, T0);
    assert!(evicted.is_empty());
    s.check_invariants().unwrap();
}

#[test]
fn takeover_if_disconnected_spares_a_connected_holder_only() {
    let mut s = state();
    let policy = ConflictPolicy::TakeoverIfDisconnected;
    // PENDING: no socket yet, taken over.
    let (pending, _, _) = grant(&mut s, req("ana", None, ConflictPolicy::Reject), T0);
    let (connected, evicted, _) = grant(&mut s, req("ana", None, policy), T0);
    assert_eq!(evicted[0].id, pending.id);
    // CONNECTED: refused with the holder.
    let mut fx = Effects::default();
    let at = s
        .attach(
            &connected.id,
            connected.generation,
            sock(1),
            &cfg(),
            T0,
            &mut fx,
        )
        .unwrap();
    let Attached::Live { session: live, .. } = at else {
        panic!("attached")
    };
    let out = s
        .claim(req("ana", None, policy), &cfg(), T0, &mut fx)
        .unwrap();
    assert_eq!(out, ClaimOutcome::LoginInUse { holder: live });
    // DISCONNECTED (inside grace): taken over.
    s.detach(
        &connected.id,
        connected.generation,
        &sock(1),
        &cfg(),
        T0,
        &mut fx,
    )
    .unwrap();
    let (_, evicted, _) = grant(&mut s, req("ana", None, policy), T0);
    assert_eq!(evicted[0].id, connected.id);
    assert_eq!(evicted[0].state, SessionState::Ended(EndReason::Superseded));
    s.check_invariants().unwrap();
}

#[test]
fn a_tenant_wide_eviction_ends_every_session_or_every_one_of_a_role() {
    let mut s = state();
    let (a, _, _) = grant(&mut s, req("ana", Some("p1"), ConflictPolicy::Reject), T0);
    let mut sup = req("sue", None, ConflictPolicy::Reject);
    sup.role = "supervisor".into();
    let (b, _, _) = grant(&mut s, sup, T0);
    let mut fx = Effects::default();
    let role = EvictTarget::Tenant {
        role: Some("supervisor".into()),
    };
    let ended = s
        .evict(&role, Some("MFA".into()), "admin", &cfg(), T0, &mut fx)
        .unwrap();
    assert_eq!(ended.iter().map(|e| &e.id).collect::<Vec<_>>(), [&b.id]);
    let all = EvictTarget::Tenant { role: None };
    let ended = s.evict(&all, None, "admin", &cfg(), T0, &mut fx).unwrap();
    assert_eq!(ended.iter().map(|e| &e.id).collect::<Vec<_>>(), [&a.id]);
    assert_eq!(
        ended_reasons(&fx),
        vec![(b.id, EndReason::Evicted), (a.id, EndReason::Evicted)]
    );
    assert!(s
        .evict(&all, None, "admin", &cfg(), T0, &mut fx)
        .unwrap()
        .is_empty());
    s.check_invariants().unwrap();
}

#[test]
fn the_first_user_keeps_the_station_under_either_policy() {
    let mut s = state();
    let (a, _, _) = grant(&mut s, req("ana", Some("p1"), ConflictPolicy::Reject), T0);
    for policy in ConflictPolicy::ALL {
        let mut fx = Effects::default();
        let out = s
            .claim(req("bob", Some("p1"), policy), &cfg(), T0, &mut fx)
            .unwrap();
        assert_eq!(
            out,
            ClaimOutcome::StationInUse {
                holder: a.clone(),
                holders: vec![a.clone()]
            }
        );
    }
    // Re-claiming one's own station is not a station conflict.
    let mut fx = Effects::default();
    let out = s
        .claim(
            req("ana", Some("p1"), ConflictPolicy::Reject),
            &cfg(),
            T0,
            &mut fx,
        )
        .unwrap();
    assert!(matches!(out, ClaimOutcome::LoginInUse { .. }), "{out:?}");
}

#[test]
fn logins_from_one_device_share_a_station_and_others_are_refused() {
    let mut s = state();
    let (a, _, _) = grant(&mut s, req_on("ana", "p1", Some("pc1")), T0);
    let (b, _, _) = grant(&mut s, req_on("bob", "p1", Some("pc1")), T0);
    let d = Some(Device::parse("pc1").unwrap());
    assert_eq!(
        holders_of(&s, "p1"),
        vec![(a.id.clone(), d.clone()), (b.id.clone(), d.clone())]
    );
    assert_eq!(b.device, d);
    // Another device, no device, or any policy: refused with both holders.
    for r in [
        req_on("cid", "p1", Some("pc2")),
        req_on("cid", "p1", None),
        req("cid", Some("p1"), ConflictPolicy::Takeover),
    ] {
        let out = s.claim(r, &cfg(), T0, &mut Effects::default()).unwrap();
        assert_eq!(refused_by(out), vec![a.id.clone(), b.id.clone()]);
    }
    // A holder re-claiming from another device is refused too: bob shares it.
    let out = s
        .claim(
            req_on("ana", "p1", Some("pc2")),
            &cfg(),
            T0,
            &mut Effects::default(),
        )
        .unwrap();
    assert_eq!(refused_by(out), vec![a.id.clone(), b.id.clone()]);
    s.check_invariants().unwrap();
}

#[test]
fn a_station_held_without_a_device_is_not_shared() {
    let mut s = state();
    let (a, _, _) = grant(&mut s, req_on("ana", "p1", None), T0);
    let out = s
        .claim(
            req_on("bob", "p1", Some("pc1")),
            &cfg(),
            T0,
            &mut Effects::default(),
        )
        .unwrap();
    assert_eq!(refused_by(out), vec![a.id]);
}

#[test]
fn a_shared_station_passes_to_the_next_holder_and_is_free_after_the_last() {
    let mut s = state();
    let (a, _, _) = grant(&mut s, req_on("ana", "p1", Some("pc1")), T0);
    let (b, _, _) = grant(&mut s, req_on("bob", "p1", Some("pc1")), T0);
    let (c, _, _) = grant(&mut s, req_on("cid", "p1", Some("pc1")), T0);
    let mut fx = Effects::default();
    s.release(&a.id, &cfg(), T0, &mut fx).unwrap();
    let ids = |s: &TenantState| -> Vec<SessionId> {
        holders_of(s, "p1").into_iter().map(|h| h.0).collect()
    };
    assert_eq!(ids(&s), vec![b.id.clone(), c.id.clone()]);
    assert_eq!(
        s.stations(&[Station::parse("p1").unwrap()])[0].holder,
        Some((b.login.clone(), b.id.clone()))
    );
    // A login moving to another station drops its old one (STATION_CHANGED).
    let moved = ClaimRequest {
        policy: ConflictPolicy::Takeover,
        ..req_on("cid", "p2", Some("pc1"))
    };
    let (_, evicted, mut fx) = grant(&mut s, moved, T0);
    assert_eq!(evicted[0].id, c.id);
    assert_eq!(
        ended_reasons(&fx),
        vec![(c.id.clone(), EndReason::StationChanged)]
    );
    assert_eq!(ids(&s), vec![b.id.clone()]);
    s.release(&b.id, &cfg(), T0, &mut fx).unwrap();
    assert!(ids(&s).is_empty());
    // Free: any device may take it now.
    grant(&mut s, req_on("dan", "p1", Some("pc9")), T0);
    s.check_invariants().unwrap();
}

#[test]
fn an_exclusive_tenant_never_shares() {
    let mut s = state();
    let c = RegistryConfig {
        exclusive_stations: Arc::new([Tenant::parse("acme").unwrap()].into_iter().collect()),
        ..cfg()
    };
    let mut fx = Effects::default();
    let out = s
        .claim(req_on("ana", "p1", Some("pc1")), &c, T0, &mut fx)
        .unwrap();
    let ClaimOutcome::Granted { session: a, .. } = out else {
        panic!("{out:?}")
    };
    let out = s
        .claim(req_on("bob", "p1", Some("pc1")), &c, T0, &mut fx)
        .unwrap();
    assert_eq!(refused_by(out), vec![a.id]);
}

#[test]
fn evicting_a_shared_station_ends_every_holder_and_sharers_are_bounded() {
    let mut s = state();
    let mut ids = Vec::new();
    for n in 0..MAX_STATION_HOLDERS {
        let (x, _, _) = grant(&mut s, req_on(&format!("u{n}"), "p1", Some("pc1")), T0);
        ids.push(x.id);
    }
    let out = s
        .claim(
            req_on("one-more", "p1", Some("pc1")),
            &cfg(),
            T0,
            &mut Effects::default(),
        )
        .unwrap();
    assert_eq!(refused_by(out), ids);
    s.check_invariants().unwrap();
    let mut fx = Effects::default();
    let target = EvictTarget::Station(Station::parse("p1").unwrap());
    let ended = s
        .evict(&target, None, "admin", &cfg(), T0, &mut fx)
        .unwrap();
    assert_eq!(ended.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), ids);
    assert!(holders_of(&s, "p1").is_empty());
    s.check_invariants().unwrap();
}

#[test]
fn idempotent_retries_return_the_first_result() {
    let mut s = state();
    let mut r = req("ana", None, ConflictPolicy::Reject);
    r.idempotency_key = Some("k1".into());
    let (a, _, _) = grant(&mut s, r.clone(), T0);
    let (again, _, fx) = grant(&mut s, r, T0 + 1);
    assert_eq!(again.id, a.id);
    assert!(fx.events.is_empty());
    let mut other = req("bob", None, ConflictPolicy::Reject);
    other.idempotency_key = Some("k1".into());
    let err = s
        .claim(other, &cfg(), T0, &mut Effects::default())
        .unwrap_err();
    assert!(matches!(err, RegistryError::IdempotencyKeyReused { .. }));
}

#[test]
fn pending_and_disconnected_sessions_expire_and_leave_a_tombstone() {
    let mut s = state();
    let c = cfg();
    let (a, _, fx) = grant(&mut s, req("ana", None, ConflictPolicy::Reject), T0);
    assert_eq!(fx.deadlines, vec![(T0 + 100, a.id.clone())]);
    let mut fx = Effects::default();
    assert!(!s.expire(&a.id, &c, T0 + 99, &mut fx), "not due yet");
    assert!(s.expire(&a.id, &c, T0 + 100, &mut fx));
    let got = s.get(&SessionKey::Id(a.id.clone())).unwrap();
    assert_eq!(got.state, SessionState::Ended(EndReason::Expired));
    // A late socket learns why.
    let out = s
        .attach(&a.id, a.generation, sock(1), &c, T0 + 200, &mut fx)
        .unwrap();
    assert!(matches!(out, Attached::Ended(t) if t.ending.reason == EndReason::Expired));

    let (b, _, _) = grant(&mut s, req("bob", None, ConflictPolicy::Reject), T0);
    let mut fx = Effects::default();
    s.attach(&b.id, b.generation, sock(2), &c, T0 + 10, &mut fx)
        .unwrap();
    s.detach(&b.id, b.generation, &sock(2), &c, T0 + 20, &mut fx)
        .unwrap();
    assert_eq!(
        s.get(&SessionKey::Id(b.id.clone())).unwrap().state,
        SessionState::Disconnected
    );
    // Back within grace: resumed, and the old deadline no longer applies.
    let out = s
        .attach(&b.id, b.generation, sock(3), &c, T0 + 100, &mut fx)
        .unwrap();
    assert!(matches!(out, Attached::Live { resumed: true, .. }));
    assert!(!s.expire(&b.id, &c, T0 + 1_000, &mut fx));
    s.check_invariants().unwrap();
}

#[test]
fn sockets_are_bounded_and_fenced_by_generation() {
    let mut s = state();
    let c = cfg();
    let (a, _, _) = grant(&mut s, req("ana", None, ConflictPolicy::Reject), T0);
    let mut fx = Effects::default();
    s.attach(&a.id, a.generation, sock(1), &c, T0, &mut fx)
        .unwrap();
    s.attach(&a.id, a.generation, sock(2), &c, T0, &mut fx)
        .unwrap();
    let err = s
        .attach(&a.id, a.generation, sock(3), &c, T0, &mut fx)
        .unwrap_err();
    assert!(matches!(
        err,
        RegistryError::TooManySockets { limit: 2, .. }
    ));
    let err = s
        .attach(
            &a.id,
            Generation(a.generation.0 + 1),
            sock(4),
            &c,
            T0,
            &mut fx,
        )
        .unwrap_err();
    assert!(matches!(err, RegistryError::StaleGeneration { .. }));
}

/// A tenant state that starts empty — an embedded node restarted, or a
/// Redis that lost its counters — still grants every login a generation
/// above the ones it granted before, because time raised the floor; and
/// grants faster than the floor moves keep increasing.
#[test]
fn generations_keep_increasing_across_a_lost_counter() {
    let mut s = state();
    let mut last = Generation(0);
    for _ in 0..(Generation::PER_MS + 5) {
        let (a, _, _) = grant(&mut s, req("ana", None, ConflictPolicy::Takeover), T0);
        assert!(a.generation > last, "{:?} after {last:?}", a.generation);
        last = a.generation;
    }
    let mut restarted = state();
    let (b, _, _) = grant(
        &mut restarted,
        req("ana", None, ConflictPolicy::Reject),
        T0 + 2,
    );
    assert!(b.generation > last, "{:?} after {last:?}", b.generation);
}

#[test]
fn notices_queue_until_acked_and_a_login_mailbox_feeds_the_next_session() {
    let mut s = state();
    let c = cfg();
    let notice = |id: &str| Notice {
        id: id.into(),
        kind: "password_expiry".into(),
        severity: "warning".into(),
        text: "Your password expires in 3 days".into(),
        data_json: String::new(),
        expires_at_ms: 0,
    };
    let login = Login::parse("ana").unwrap();
    let mut fx = Effects::default();
    let counts = s
        .notify(
            &NotifyTarget::Login(login.clone()),
            notice("n1"),
            &c,
            T0,
            &mut fx,
        )
        .unwrap();
    assert_eq!(
        counts,
        NotifyCounts {
            delivered: 0,
            queued: 1
        }
    );
    let (a, _, _) = grant(&mut s, req("ana", None, ConflictPolicy::Reject), T0);
    let out = s
        .attach(&a.id, a.generation, sock(1), &c, T0, &mut fx)
        .unwrap();
    let Attached::Live { pending, .. } = out else {
        panic!("live")
    };
    assert_eq!(
        pending.len(),
        1,
        "the mailbox notice reached the new session"
    );
    let counts = s
        .notify(
            &NotifyTarget::Session(a.id.clone()),
            notice("n2"),
            &c,
            T0,
            &mut fx,
        )
        .unwrap();
    assert_eq!(
        counts,
        NotifyCounts {
            delivered: 1,
            queued: 0
        }
    );
    s.ack(&a.id, "n1", T0).unwrap();
    s.detach(&a.id, a.generation, &sock(1), &c, T0, &mut fx)
        .unwrap();
    let Attached::Live { pending, .. } = s
        .attach(&a.id, a.generation, sock(2), &c, T0, &mut fx)
        .unwrap()
    else {
        panic!("live")
    };
    let ids: Vec<_> = pending.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["n2"], "acked notices are not delivered again");
}

#[test]
fn list_pages_through_every_live_session_once() {
    let mut s = state();
    for i in 0..25 {
        grant(
            &mut s,
            req(&format!("u{i}"), None, ConflictPolicy::Reject),
            T0,
        );
    }
    let mut seen = Vec::new();
    let mut after = None;
    for _ in 0..10 {
        let page = s.list(after.as_ref(), 10);
        seen.extend(page.sessions.into_iter().map(|s| s.id));
        after = page.next_after;
        if after.is_none() {
            break;
        }
    }
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(seen.len(), 25);
    assert_eq!(unique.len(), 25);
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Op {
    Claim {
        login: u8,
        station: Option<u8>,
        takeover: bool,
        device: Option<u8>,
    },
    Release {
        pick: u8,
    },
    Evict {
        pick: u8,
    },
    Connect {
        pick: u8,
        conn: u8,
    },
    Disconnect {
        pick: u8,
        conn: u8,
    },
    Tick {
        ms: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            0u8..6,
            proptest::option::of(0u8..4),
            any::<bool>(),
            proptest::option::of(0u8..2)
        )
            .prop_map(|(login, station, takeover, device)| Op::Claim {
                login,
                station,
                takeover,
                device
            }),
        any::<u8>().prop_map(|pick| Op::Release { pick }),
        any::<u8>().prop_map(|pick| Op::Evict { pick }),
        (any::<u8>(), 0u8..3).prop_map(|(pick, conn)| Op::Connect { pick, conn }),
        (any::<u8>(), 0u8..3).prop_map(|(pick, conn)| Op::Disconnect { pick, conn }),
        (0u16..300).prop_map(|ms| Op::Tick { ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// After every step: at most one live session per login and per station,
    /// the indexes agree with the sessions, CONNECTED iff it has sockets, and
    /// every session that stopped being live was ended with an event.
    #[test]
    fn invariants_hold_under_random_operations(ops in proptest::collection::vec(op(), 1..60)) {
        let c = cfg();
        let mut s = state();
        let mut now = T0;
        let mut all: Vec<Session> = Vec::new();
        let mut told: std::collections::HashSet<SessionId> = Default::default();
        let mut deadlines: Vec<(i64, SessionId)> = Vec::new();
        for op in ops {
            let mut fx = Effects::default();
            let pick = |p: u8| all.get(p as usize % all.len().max(1)).cloned();
            match op {
                Op::Claim { login, station, takeover, device } => {
                    let policy = if takeover { ConflictPolicy::Takeover } else { ConflictPolicy::Reject };
                    let st = station.map(|n| format!("p{n}"));
                    let mut r = req(&format!("u{login}"), st.as_deref(), policy);
                    r.device = device.map(|d| Device::parse(&format!("pc{d}")).unwrap());
                    if let ClaimOutcome::Granted { session, .. } = s.claim(r, &c, now, &mut fx).unwrap() {
                        all.push(session);
                    }
                }
                Op::Release { pick: p } => if let Some(x) = pick(p) { let _ = s.release(&x.id, &c, now, &mut fx); },
                Op::Evict { pick: p } => if let Some(x) = pick(p) {
                    // By station now and then: every holder of a shared one.
                    let target = match &x.station {
                        Some(st) if p % 2 == 0 => EvictTarget::Station(st.clone()),
                        _ => EvictTarget::Session(x.id.clone()),
                    };
                    let _ = s.evict(&target, None, "admin", &c, now, &mut fx);
                },
                Op::Connect { pick: p, conn } => if let Some(x) = pick(p) {
                    let _ = s.attach(&x.id, x.generation, sock(conn as u64), &c, now, &mut fx);
                },
                Op::Disconnect { pick: p, conn } => if let Some(x) = pick(p) {
                    let _ = s.detach(&x.id, x.generation, &sock(conn as u64), &c, now, &mut fx);
                },
                Op::Tick { ms } => {
                    now += ms as i64;
                    let due: Vec<_> = deadlines.iter().filter(|d| d.0 <= now).cloned().collect();
                    deadlines.retain(|d| d.0 > now);
                    for (_, id) in due { s.expire(&id, &c, now, &mut fx); }
                }
            }
            for (id, _) in ended_reasons(&fx) { prop_assert!(told.insert(id), "a session ended twice"); }
            deadlines.append(&mut fx.deadlines);
            if let Err(e) = s.check_invariants() { prop_assert!(false, "{}", e); }
            for x in &all {
                let live = s.get(&SessionKey::Id(x.id.clone())).map(|g| g.state.is_live()).unwrap_or(false);
                prop_assert!(live || told.contains(&x.id), "{} stopped being live without an Ended event", x.id);
            }
        }
    }
}
