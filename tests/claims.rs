//! Rules 1–3 and 6 over the real gRPC API: one session per login, one user
//! per station, tenants disjoint, and the claim races.

mod support;

use std::collections::{HashMap, HashSet};

use support::*;
use turnstile::pb;

const T: &str = "acme";

#[tokio::test]
async fn a_granted_claim_returns_a_pending_session_and_a_token_for_it() {
    let node = start().await;
    let mut req = claim_req(T, "ana", "s1", ConflictPolicy::Reject);
    req.client = "web".into();
    req.attributes.insert("ip".into(), "10.0.0.7".into());
    let r = node.claim_with(req).await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted);
    let s = session_of(&r);
    assert_eq!(s.tenant, T);
    assert_eq!(s.login, "ana");
    assert_eq!(s.station, "s1");
    assert_eq!(s.client, "web");
    assert_eq!(s.role, "agent");
    assert_eq!(s.state(), SessionState::Pending);
    assert_eq!(s.end_reason(), EndReason::Unspecified);
    // On the Redis registry the node's name carries its incarnation.
    assert!(s.node.starts_with("test-node"), "{s:?}");
    assert_eq!(s.attributes.get("ip").map(String::as_str), Some("10.0.0.7"));
    assert!(s.generation >= 1, "{s:?}");
    assert!(r.holder.is_none() && r.evicted.is_empty(), "{r:?}");
    let c = claims_of(&r.token);
    assert_eq!((c.tid.as_str(), c.sub.as_str()), (T, "ana"));
    assert_eq!(c.sid, s.session_id);
    assert_eq!(c.gen, s.generation);
    node.shutdown().await;
}

#[tokio::test]
async fn reject_answers_login_in_use_with_the_holder() {
    let node = start().await;
    let first = node.grant(T, "ana", "s1").await;
    let r = node.claim(T, "ana", "s2", ConflictPolicy::Reject).await;
    assert_eq!(r.outcome(), ClaimOutcome::LoginInUse, "{r:?}");
    let holder = r.holder.as_ref().expect("LOGIN_IN_USE names the holder");
    assert_eq!(holder.session_id, session_of(&first).session_id);
    assert_eq!(holder.station, "s1");
    assert!(r.session.is_none(), "no session on a conflict: {r:?}");
    assert!(r.token.is_empty(), "no token on a conflict");
    assert!(r.evicted.is_empty());
    // The holder is untouched.
    let s = node.get_by_login(T, "ana").await.unwrap();
    assert_eq!(s.session_id, holder.session_id);
    assert_eq!(s.state(), SessionState::Pending);
    node.shutdown().await;
}

#[tokio::test]
async fn takeover_supersedes_the_old_session_and_tells_its_socket() {
    let node = start().await;
    let first = node.grant(T, "ana", "s1").await;
    let old_id = session_of(&first).session_id.clone();
    let (mut old, _) = node.connect_welcome(&first.token).await;

    let mut req = claim_req(T, "ana", "s1", ConflictPolicy::Takeover);
    req.client = "web".into();
    let r = node.claim_with(req).await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted, "{r:?}");
    let new = session_of(&r);
    assert_ne!(new.session_id, old_id);
    assert!(
        new.generation > session_of(&first).generation,
        "generation fences"
    );
    assert_eq!(r.evicted.len(), 1, "{r:?}");
    assert_eq!(r.evicted[0].session_id, old_id);
    assert_eq!(r.evicted[0].state(), SessionState::Ended);
    assert_eq!(r.evicted[0].end_reason(), EndReason::Superseded);

    let fl = old
        .expect_forced_logout("superseded", SUPERSEDED_MSG, 4001)
        .await;
    assert_eq!(fl["by"]["client"], "web", "{fl}");
    assert_eq!(fl["by"]["station"], "s1", "{fl}");
    assert!(fl["by"]["at_ms"].as_i64().unwrap_or(0) > 0, "{fl}");

    let ended = node.get_by_id(T, &old_id).await.unwrap();
    assert_eq!(ended.state(), SessionState::Ended);
    assert_eq!(ended.end_reason(), EndReason::Superseded);
    let live = node.get_by_login(T, "ana").await.unwrap();
    assert_eq!(live.session_id, new.session_id);
    node.shutdown().await;
}

#[tokio::test]
async fn takeover_without_a_station_is_superseded_too() {
    let node = start().await;
    let first = node.grant(T, "ana", "").await;
    let (mut old, _) = node.connect_welcome(&first.token).await;
    let r = node.claim(T, "ana", "", ConflictPolicy::Takeover).await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted);
    old.expect_forced_logout("superseded", SUPERSEDED_MSG, 4001)
        .await;
    node.shutdown().await;
}

#[tokio::test]
async fn takeover_at_another_station_is_station_changed_and_frees_the_old_station() {
    let node = start().await;
    let first = node.grant(T, "ana", "s1").await;
    let (mut old, _) = node.connect_welcome(&first.token).await;
    let r = node.claim(T, "ana", "s2", ConflictPolicy::Takeover).await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted, "{r:?}");
    assert_eq!(r.evicted.len(), 1);
    assert_eq!(r.evicted[0].end_reason(), EndReason::StationChanged);
    let fl = old
        .expect_forced_logout("station_changed", STATION_CHANGED_MSG, 4002)
        .await;
    assert_eq!(fl["by"]["station"], "s2", "{fl}");

    let mut c = node.client.clone();
    let st = within(
        "StationStatus",
        c.station_status(pb::StationStatusRequest {
            tenant: T.into(),
            stations: vec!["s1".into(), "s2".into()],
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert!(st.stations[0].free, "s1 was freed: {st:?}");
    assert!(!st.stations[1].free, "s2 is held: {st:?}");
    assert_eq!(st.stations[1].session_id, session_of(&r).session_id);
    node.shutdown().await;
}

#[tokio::test]
async fn every_socket_of_a_superseded_session_is_told() {
    let node = start().await;
    let first = node.grant(T, "ana", "").await;
    let (mut a, _) = node.connect_welcome(&first.token).await;
    let (mut b, _) = node.connect_welcome(&first.token).await;
    let r = node.claim(T, "ana", "", ConflictPolicy::Takeover).await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted);
    a.expect_forced_logout("superseded", SUPERSEDED_MSG, 4001)
        .await;
    b.expect_forced_logout("superseded", SUPERSEDED_MSG, 4001)
        .await;
    node.shutdown().await;
}

#[tokio::test]
async fn a_station_held_by_another_login_is_refused_under_both_policies() {
    let node = start().await;
    let ana = node.grant(T, "ana", "s1").await;
    let ana_id = session_of(&ana).session_id.clone();
    for policy in [ConflictPolicy::Reject, ConflictPolicy::Takeover] {
        let r = node.claim(T, "bob", "s1", policy).await;
        assert_eq!(r.outcome(), ClaimOutcome::StationInUse, "{policy:?}: {r:?}");
        let holder = r.holder.as_ref().expect("holder named");
        assert_eq!(holder.session_id, ana_id);
        assert_eq!(holder.login, "ana");
        assert!(r.evicted.is_empty() && r.token.is_empty(), "{r:?}");
    }
    // The first user keeps the station; bob got nothing.
    let s = node.get_by_login(T, "ana").await.unwrap();
    assert_eq!(s.session_id, ana_id);
    assert_eq!(s.state(), SessionState::Pending);
    let err = node.get_by_login(T, "bob").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    node.shutdown().await;
}

#[tokio::test]
async fn the_same_login_reclaiming_its_own_station_is_not_a_station_conflict() {
    let node = start().await;
    let first = node.grant(T, "ana", "s1").await;
    let r = node.claim(T, "ana", "s1", ConflictPolicy::Reject).await;
    assert_eq!(r.outcome(), ClaimOutcome::LoginInUse, "{r:?}");
    let r = node.claim(T, "ana", "s1", ConflictPolicy::Takeover).await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted, "{r:?}");
    assert_eq!(r.evicted.len(), 1);
    assert_eq!(r.evicted[0].session_id, session_of(&first).session_id);
    assert_eq!(r.evicted[0].end_reason(), EndReason::Superseded);
    assert_eq!(session_of(&r).station, "s1");
    node.shutdown().await;
}

#[tokio::test]
async fn tenants_are_disjoint() {
    let node = start().await;
    let a = node.grant("t1", "ana", "s1").await;
    let b = node.grant("t2", "ana", "s1").await;
    assert_ne!(session_of(&a).session_id, session_of(&b).session_id);
    // A takeover in t2 leaves t1 alone.
    let (mut ws1, _) = node.connect_welcome(&a.token).await;
    let r = node
        .claim("t2", "ana", "s9", ConflictPolicy::Takeover)
        .await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted);
    assert_eq!(r.evicted.len(), 1);
    assert_eq!(r.evicted[0].session_id, session_of(&b).session_id);
    ws1.ping("still-here").await;
    let s = node.get_by_login("t1", "ana").await.unwrap();
    assert_eq!(s.session_id, session_of(&a).session_id);
    assert_eq!(s.state(), SessionState::Connected);
    assert_eq!(node.list_all("t1").await.len(), 1);
    assert_eq!(node.list_all("t2").await.len(), 1);
    // A session id of t1 is not found through t2.
    let err = node
        .get_by_id("t2", &session_of(&a).session_id)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    node.shutdown().await;
}

#[tokio::test]
async fn a_retried_claim_with_the_same_idempotency_key_gets_the_same_grant() {
    let node = start().await;
    let mut req = claim_req(T, "ana", "s1", ConflictPolicy::Reject);
    req.idempotency_key = "login-attempt-1".into();
    let first = node.claim_with(req.clone()).await;
    assert_eq!(first.outcome(), ClaimOutcome::Granted);
    let again = node.claim_with(req).await;
    assert_eq!(again.outcome(), ClaimOutcome::Granted, "{again:?}");
    assert_eq!(session_of(&again).session_id, session_of(&first).session_id);
    node.shutdown().await;
}

/// Rule 6 under REJECT: 200 claims race, exactly one wins, every loser is
/// told who holds the login.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_racing_rejects_grant_exactly_one() {
    let node = start().await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let mut c = node.client.clone();
        let mut req = claim_req(T, "ana", "", ConflictPolicy::Reject);
        req.client = format!("c{i}");
        tasks.push(tokio::spawn(async move { c.claim(req).await }));
    }
    let mut granted = Vec::new();
    let mut holders = HashSet::new();
    for t in tasks {
        let r = within("a racing claim", t)
            .await
            .unwrap()
            .unwrap()
            .into_inner();
        match r.outcome() {
            ClaimOutcome::Granted => granted.push(session_of(&r).session_id.clone()),
            ClaimOutcome::LoginInUse => {
                holders.insert(r.holder.expect("holder").session_id);
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(granted.len(), 1, "exactly one GRANTED: {granted:?}");
    assert_eq!(holders, HashSet::from([granted[0].clone()]));
    assert_eq!(node.list_all(T).await.len(), 1);
    node.shutdown().await;
}

/// Rule 6 under TAKEOVER: 200 claims race, exactly one session survives and
/// every displaced one was reported (and its token is told why).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_racing_takeovers_leave_exactly_one_live_session() {
    let node = start().await;
    // A connected holder before the race: its socket must be told once.
    let initial = node.grant(T, "ana", "").await;
    let initial_id = session_of(&initial).session_id.clone();
    let (mut initial_ws, _) = node.connect_welcome(&initial.token).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let mut c = node.client.clone();
        let mut req = claim_req(T, "ana", "", ConflictPolicy::Takeover);
        req.client = format!("c{i}");
        tasks.push(tokio::spawn(async move { c.claim(req).await }));
    }
    let mut granted: HashMap<String, (u64, String)> = HashMap::new();
    let mut evicted: Vec<String> = Vec::new();
    for t in tasks {
        let r = within("a racing claim", t)
            .await
            .unwrap()
            .unwrap()
            .into_inner();
        assert_eq!(r.outcome(), ClaimOutcome::Granted, "{r:?}");
        assert!(r.evicted.len() <= 1, "one live session to displace: {r:?}");
        for e in &r.evicted {
            assert_eq!(e.end_reason(), EndReason::Superseded);
            evicted.push(e.session_id.clone());
        }
        let s = session_of(&r);
        granted.insert(s.session_id.clone(), (s.generation, r.token.clone()));
    }
    assert_eq!(granted.len(), 200);
    let gens: HashSet<u64> = granted.values().map(|(g, _)| *g).collect();
    assert_eq!(gens.len(), 200, "every grant has its own generation");

    let live = node.list_all(T).await;
    assert_eq!(live.len(), 1, "exactly one survivor: {live:?}");
    let survivor = &live[0];
    assert_eq!(
        node.get_by_login(T, "ana").await.unwrap().session_id,
        survivor.session_id
    );
    let max_gen = granted.values().map(|(g, _)| *g).max().unwrap();
    assert_eq!(survivor.generation, max_gen, "the last grant survives");

    // Every displaced session was reported exactly once.
    let reported: HashSet<String> = evicted.iter().cloned().collect();
    assert_eq!(reported.len(), evicted.len(), "no session reported twice");
    let mut expected: HashSet<String> = granted
        .keys()
        .filter(|id| **id != survivor.session_id)
        .cloned()
        .collect();
    expected.insert(initial_id);
    assert_eq!(reported, expected);
    initial_ws
        .expect_forced_logout("superseded", SUPERSEDED_MSG, 4001)
        .await;

    // And each displaced token is answered with why, never silently.
    for (id, (_, token)) in &granted {
        if *id == survivor.session_id {
            continue;
        }
        let mut ws = node.connect(token).await;
        ws.expect_forced_logout("superseded", SUPERSEDED_MSG, 4001)
            .await;
    }
    node.shutdown().await;
}

#[tokio::test]
async fn malformed_claims_are_invalid_argument_naming_the_field() {
    let node = start().await;
    let mut c = node.client.clone();
    let cases = [
        ("", "ana", "s1", "tenant"),
        ("acme", "", "s1", "login"),
        ("acme", "ana lopez", "s1", "login"),
        ("acme", "ana", "bad station", "station"),
        ("ac/me", "ana", "", "tenant"),
    ];
    for (tenant, login, station, field) in cases {
        let err = within(
            "Claim",
            c.claim(claim_req(tenant, login, station, ConflictPolicy::Reject)),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains(field),
            "message names {field}: {:?}",
            err.message()
        );
    }
    assert!(node.list_all(T).await.is_empty());
    node.shutdown().await;
}

#[tokio::test]
async fn an_unspecified_policy_rejects_and_an_unknown_one_is_invalid_argument() {
    // A client that never sets on_conflict sends 0 (UNSPECIFIED): it must
    // get the documented default, REJECT, and never end anybody's session.
    let node = start().await;
    let first = node.grant(T, "ana", "s1").await;
    let r = node.claim(T, "ana", "", ConflictPolicy::Unspecified).await;
    assert_eq!(r.outcome(), ClaimOutcome::LoginInUse, "{r:?}");
    let holder = r.holder.as_ref().expect("LOGIN_IN_USE names the holder");
    assert_eq!(holder.session_id, session_of(&first).session_id);
    assert!(r.evicted.is_empty(), "nobody was ended: {r:?}");
    // A number this broker does not know (a newer client's policy) is
    // refused, naming the field, rather than guessed at.
    let mut req = claim_req(T, "ana", "", ConflictPolicy::Takeover);
    req.on_conflict = 99;
    let mut c = node.client.clone();
    let err = within("Claim", c.claim(req)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with("on_conflict:"),
        "names the field: {:?}",
        err.message()
    );
    let s = node.get_by_login(T, "ana").await.unwrap();
    assert_eq!(s.session_id, holder.session_id, "the holder is untouched");
    node.shutdown().await;
}

#[tokio::test]
async fn get_session_is_not_found_for_unknown_ids_and_logins() {
    let node = start().await;
    let err = node
        .get_by_id(T, "0123456789abcdef0123456789abcdef")
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let err = node.get_by_login(T, "nobody").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    node.shutdown().await;
}

#[tokio::test]
async fn list_sessions_pages_through_live_sessions_only() {
    let node = start().await;
    let mut ids = HashSet::new();
    for i in 0..25 {
        let r = node.grant(T, &format!("user{i:02}"), "").await;
        ids.insert(session_of(&r).session_id.clone());
    }
    // One more that ends: not listed.
    let gone = node.grant(T, "gone", "").await;
    let mut c = node.client.clone();
    within(
        "Release",
        c.release(pb::ReleaseRequest {
            tenant: T.into(),
            session_id: session_of(&gone).session_id.clone(),
        }),
    )
    .await
    .unwrap();
    // Another tenant's session is not listed either.
    node.grant("other", "user00", "").await;

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = Vec::new();
    loop {
        let page = within(
            "ListSessions",
            c.list_sessions(pb::ListSessionsRequest {
                tenant: T.into(),
                page_size: 10,
                page_token: token.clone(),
            }),
        )
        .await
        .unwrap()
        .into_inner();
        pages.push(page.sessions.len());
        seen.extend(page.sessions.into_iter().map(|s| s.session_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages.len() < 10, "pagination must end");
    }
    assert_eq!(pages, vec![10, 10, 5]);
    assert_eq!(seen.len(), 25, "no duplicates across pages");
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), ids);
    node.shutdown().await;
}

#[tokio::test]
async fn station_status_reports_free_and_held_stations_in_order() {
    let node = start().await;
    let ana = node.grant(T, "ana", "s1").await;
    let mut c = node.client.clone();
    let st = within(
        "StationStatus",
        c.station_status(pb::StationStatusRequest {
            tenant: T.into(),
            stations: vec!["s2".into(), "s1".into()],
        }),
    )
    .await
    .unwrap()
    .into_inner()
    .stations;
    assert_eq!(st.len(), 2);
    assert_eq!(st[0].station, "s2");
    assert!(st[0].free);
    assert!(st[0].login.is_empty() && st[0].session_id.is_empty());
    assert_eq!(st[1].station, "s1");
    assert!(!st[1].free);
    assert_eq!(st[1].login, "ana");
    assert_eq!(st[1].session_id, session_of(&ana).session_id);
    // Other tenants see it free.
    let st = within(
        "StationStatus",
        c.station_status(pb::StationStatusRequest {
            tenant: "other".into(),
            stations: vec!["s1".into()],
        }),
    )
    .await
    .unwrap()
    .into_inner()
    .stations;
    assert!(st[0].free);
    node.shutdown().await;
}

#[tokio::test]
async fn release_logs_the_socket_out_with_4000() {
    let node = start().await;
    let r = node.grant(T, "ana", "s1").await;
    let id = session_of(&r).session_id.clone();
    let (mut ws, _) = node.connect_welcome(&r.token).await;
    let mut c = node.client.clone();
    let rel = within(
        "Release",
        c.release(pb::ReleaseRequest {
            tenant: T.into(),
            session_id: id.clone(),
        }),
    )
    .await
    .unwrap()
    .into_inner();
    let s = rel.session.expect("released session");
    assert_eq!(s.state(), SessionState::Ended);
    assert_eq!(s.end_reason(), EndReason::LoggedOut);
    ws.expect_type("logged_out").await;
    ws.expect_close(4000).await;
    // The login and the station are free again.
    node.grant(T, "ana", "s1").await;
    node.shutdown().await;
}

async fn evict(node: &Node, target: pb::evict_request::Target, message: &str) -> pb::EvictResponse {
    let mut c = node.client.clone();
    within(
        "Evict",
        c.evict(pb::EvictRequest {
            tenant: T.into(),
            target: Some(target),
            message: message.into(),
        }),
    )
    .await
    .expect("Evict succeeds")
    .into_inner()
}

#[tokio::test]
async fn evict_by_login_carries_the_admins_message() {
    let node = start().await;
    let r = node.grant(T, "ana", "s1").await;
    let (mut ws, _) = node.connect_welcome(&r.token).await;
    let msg = "Your password was changed. Please log in again.";
    let resp = evict(&node, pb::evict_request::Target::Login("ana".into()), msg).await;
    assert_eq!(resp.evicted.len(), 1);
    assert_eq!(resp.evicted[0].session_id, session_of(&r).session_id);
    assert_eq!(resp.evicted[0].end_reason(), EndReason::Evicted);
    ws.expect_forced_logout("evicted", msg, 4003).await;
    node.shutdown().await;
}

#[tokio::test]
async fn evict_by_station_uses_the_default_message() {
    let node = start().await;
    let r = node.grant(T, "ana", "s1").await;
    let (mut ws, _) = node.connect_welcome(&r.token).await;
    let resp = evict(&node, pb::evict_request::Target::Station("s1".into()), "").await;
    assert_eq!(resp.evicted.len(), 1);
    ws.expect_forced_logout("evicted", EVICTED_MSG, 4003).await;
    node.shutdown().await;
}

#[tokio::test]
async fn evict_by_session_id_and_a_late_token_learns_why() {
    let node = start().await;
    let r = node.grant(T, "ana", "").await;
    let id = session_of(&r).session_id.clone();
    let (mut ws, _) = node.connect_welcome(&r.token).await;
    let msg = "MFA reset by security.";
    let resp = evict(&node, pb::evict_request::Target::SessionId(id.clone()), msg).await;
    assert_eq!(resp.evicted.len(), 1);
    ws.expect_forced_logout("evicted", msg, 4003).await;
    // Tombstone: the same token later gets the same answer.
    let mut late = node.connect(&r.token).await;
    late.expect_forced_logout("evicted", msg, 4003).await;
    let s = node.get_by_id(T, &id).await.unwrap();
    assert_eq!(s.end_reason(), EndReason::Evicted);
    node.shutdown().await;
}

#[tokio::test]
async fn evicting_nothing_is_not_found() {
    let node = start().await;
    let mut c = node.client.clone();
    let err = within(
        "Evict",
        c.evict(pb::EvictRequest {
            tenant: T.into(),
            target: Some(pb::evict_request::Target::Login("nobody".into())),
            message: String::new(),
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    node.shutdown().await;
}

/// Issue 17.1: a Continue (TAKEOVER with `expected_session_id`) ends only the
/// session the user was shown. When the login changed hands in between, the
/// answer is LOGIN_IN_USE with the current holder and nobody is ended.
#[tokio::test]
async fn continue_against_a_holder_that_changed_asks_again_and_ends_nobody() {
    let node = start().await;
    let shown = node.grant(T, "ana", "s1").await;
    let shown_id = session_of(&shown).session_id.clone();
    // ana signs in again elsewhere; that session has a socket open.
    let current = node.claim(T, "ana", "s2", ConflictPolicy::Takeover).await;
    let current_id = session_of(&current).session_id.clone();
    let (mut current_ws, _) = node.connect_welcome(&current.token).await;

    let mut req = claim_req(T, "ana", "s3", ConflictPolicy::Takeover);
    req.expected_session_id = shown_id.clone();
    let r = node.claim_with(req).await;
    assert_eq!(r.outcome(), ClaimOutcome::LoginInUse, "{r:?}");
    assert_eq!(r.holder.as_ref().unwrap().session_id, current_id);
    assert!(r.evicted.is_empty() && r.session.is_none(), "{r:?}");
    assert_eq!(
        node.get_by_login(T, "ana").await.unwrap().session_id,
        current_id,
        "the current holder is untouched"
    );

    // Asked again about the current holder, the Continue ends it.
    let mut req = claim_req(T, "ana", "s3", ConflictPolicy::Takeover);
    req.expected_session_id = current_id.clone();
    let r = node.claim_with(req).await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted, "{r:?}");
    assert_eq!(r.evicted.len(), 1);
    assert_eq!(r.evicted[0].session_id, current_id);
    assert_eq!(r.evicted[0].end_reason(), EndReason::StationChanged);
    current_ws
        .expect_forced_logout("station_changed", STATION_CHANGED_MSG, 4002)
        .await;

    // A Continue against a session that ended meanwhile (nobody holds the
    // login) is a plain grant.
    let granted = session_of(&r).session_id.clone();
    node.client
        .clone()
        .release(pb::ReleaseRequest {
            tenant: T.into(),
            session_id: granted.clone(),
        })
        .await
        .unwrap();
    let mut req = claim_req(T, "ana", "", ConflictPolicy::Takeover);
    req.expected_session_id = granted;
    let r = node.claim_with(req).await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted, "{r:?}");
    assert!(r.evicted.is_empty(), "{r:?}");
    node.shutdown().await;
}

/// The race itself: for each of 50 logins, a Continue against the shown
/// session and a sign-in elsewhere (plain TAKEOVER) are sent at once. Either
/// order is fine; what must never happen is the Continue ending a session
/// other than the one shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_continue_racing_a_sign_in_elsewhere_never_ends_an_unseen_session() {
    let node = start().await;
    let mut shown = HashMap::new();
    for i in 0..50 {
        let login = format!("u{i}");
        let r = node.grant(T, &login, "").await;
        shown.insert(login, session_of(&r).session_id.clone());
    }
    let mut tasks = Vec::new();
    for (login, shown_id) in &shown {
        let mut elsewhere = claim_req(T, login, "", ConflictPolicy::Takeover);
        elsewhere.client = "elsewhere".into();
        let mut cont = claim_req(T, login, "", ConflictPolicy::Takeover);
        cont.client = "continue".into();
        cont.expected_session_id = shown_id.clone();
        let (mut a, mut b) = (node.client.clone(), node.client.clone());
        tasks.push((
            login.clone(),
            tokio::spawn(async move { a.claim(elsewhere).await }),
            tokio::spawn(async move { b.claim(cont).await }),
        ));
    }
    let (mut continue_first, mut elsewhere_first) = (0, 0);
    for (login, a, b) in tasks {
        let other = within("elsewhere", a).await.unwrap().unwrap().into_inner();
        let cont = within("continue", b).await.unwrap().unwrap().into_inner();
        let shown_id = &shown[&login];
        assert_eq!(other.outcome(), ClaimOutcome::Granted, "{other:?}");
        let other_id = &session_of(&other).session_id;
        match cont.outcome() {
            ClaimOutcome::Granted => {
                continue_first += 1;
                let ended: Vec<_> = cont.evicted.iter().map(|e| &e.session_id).collect();
                assert_eq!(
                    ended,
                    [shown_id],
                    "the Continue ended only the shown session"
                );
                let ended: Vec<_> = other.evicted.iter().map(|e| &e.session_id).collect();
                assert_eq!(ended, [&session_of(&cont).session_id]);
            }
            ClaimOutcome::LoginInUse => {
                elsewhere_first += 1;
                assert_eq!(&cont.holder.as_ref().unwrap().session_id, other_id);
                let ended: Vec<_> = other.evicted.iter().map(|e| &e.session_id).collect();
                assert_eq!(ended, [shown_id]);
            }
            o => panic!("unexpected outcome {o:?}: {cont:?}"),
        }
        // Both orders end with the sign-in elsewhere holding the login.
        assert_eq!(
            &node.get_by_login(T, &login).await.unwrap().session_id,
            other_id
        );
    }
    eprintln!("continue first {continue_first}, elsewhere first {elsewhere_first}");
    assert_eq!(
        node.list_all(T).await.len(),
        50,
        "one live session per login"
    );
    node.shutdown().await;
}

/// Issue 17.2: TAKEOVER_IF_DISCONNECTED clears a holder without a socket
/// and answers LOGIN_IN_USE while the holder is connected.
#[tokio::test]
async fn takeover_if_disconnected_ends_a_stale_holder_and_spares_a_live_one() {
    let node = start().await;
    let mut watch = node.watch(T).await;
    // A PENDING holder (nobody connected): cleared without asking.
    let pending = node.grant(T, "ana", "").await;
    let r = node
        .claim(T, "ana", "", ConflictPolicy::TakeoverIfDisconnected)
        .await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted, "{r:?}");
    assert_eq!(r.evicted[0].session_id, session_of(&pending).session_id);
    // A CONNECTED holder: refused with the holder, nothing ended.
    let id = session_of(&r).session_id.clone();
    let (ws, _) = node.connect_welcome(&r.token).await;
    let again = node
        .claim(T, "ana", "", ConflictPolicy::TakeoverIfDisconnected)
        .await;
    assert_eq!(again.outcome(), ClaimOutcome::LoginInUse, "{again:?}");
    assert_eq!(again.holder.as_ref().unwrap().session_id, id);
    assert_eq!(
        again.holder.as_ref().unwrap().state(),
        SessionState::Connected
    );
    // The laptop closes: DISCONNECTED (inside grace), cleared.
    ws.close().await;
    let s = node
        .session_after(&mut watch, T, &id, PresenceChange::Disconnected)
        .await;
    assert_eq!(s.state(), SessionState::Disconnected);
    let last = node
        .claim(T, "ana", "", ConflictPolicy::TakeoverIfDisconnected)
        .await;
    assert_eq!(last.outcome(), ClaimOutcome::Granted, "{last:?}");
    assert_eq!(last.evicted[0].session_id, id);
    assert_eq!(last.evicted[0].end_reason(), EndReason::Superseded);
    node.shutdown().await;
}

#[tokio::test]
async fn expected_session_id_needs_a_takeover_policy_and_a_valid_id() {
    let node = start().await;
    let mut c = node.client.clone();
    for (policy, id) in [
        (ConflictPolicy::Reject, "5f0c"),
        (ConflictPolicy::Unspecified, "5f0c"),
        (ConflictPolicy::Takeover, "not an id"),
    ] {
        let mut req = claim_req(T, "ana", "", policy);
        req.expected_session_id = id.into();
        let err = within("Claim", c.claim(req)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().starts_with("expected_session_id:"),
            "names the field: {:?}",
            err.message()
        );
    }
    node.shutdown().await;
}

/// Issue 17.6: one Evict logs out a whole tenant, or one role of it; every
/// socket is told why with the admin's message; other tenants are untouched.
#[tokio::test]
async fn evict_all_sessions_or_a_role_tells_every_socket_why() {
    let node = start().await;
    let msg = "MFA is now required for everyone. Please sign in again.";
    let mut agents = Vec::new();
    for login in ["ana", "bob", "cy"] {
        let r = node.grant(T, login, "").await;
        agents.push(node.connect_welcome(&r.token).await.0);
    }
    let sup = node.grant_role(T, "sue", "supervisor").await;
    let (mut sup_ws, _) = node.connect_welcome(&sup.token).await;
    let other = node.grant("globex", "ana", "").await;

    let resp = evict(&node, pb::evict_request::Target::Role("agent".into()), msg).await;
    assert_eq!(resp.evicted_count, 3, "{resp:?}");
    assert_eq!(resp.evicted.len(), 3);
    assert!(resp.evicted.iter().all(|s| s.role == "agent"), "{resp:?}");
    for ws in &mut agents {
        ws.expect_forced_logout("evicted", msg, 4003).await;
    }
    let live = node.list_all(T).await;
    assert_eq!(live.len(), 1, "the supervisor stays: {live:?}");

    let resp = evict(&node, pb::evict_request::Target::AllSessions(true), msg).await;
    assert_eq!(resp.evicted_count, 1);
    sup_ws.expect_forced_logout("evicted", msg, 4003).await;
    assert!(node.list_all(T).await.is_empty());
    // Nothing left: a tenant-wide eviction of nobody ends nobody, no error.
    let resp = evict(&node, pb::evict_request::Target::AllSessions(true), "").await;
    assert_eq!(resp.evicted_count, 0);
    // The other tenant's ana is untouched.
    let s = node.get_by_login("globex", "ana").await.unwrap();
    assert_eq!(s.session_id, session_of(&other).session_id);

    let mut c = node.client.clone();
    for (target, field) in [
        (pb::evict_request::Target::AllSessions(false), "target"),
        (pb::evict_request::Target::Role(String::new()), "role"),
    ] {
        let err = within(
            "Evict",
            c.evict(pb::EvictRequest {
                tenant: T.into(),
                target: Some(target),
                message: String::new(),
            }),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with(field), "{err:?}");
    }
    node.shutdown().await;
}

/// More sessions than one Redis batch (500) and than the response lists
/// (1000): all end, the count says how many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_wide_eviction_ends_every_session_past_the_batch_and_list_bounds() {
    let node = start().await;
    let mut tasks = Vec::new();
    for i in 0..1100 {
        let mut c = node.client.clone();
        let req = claim_req(T, &format!("u{i}"), "", ConflictPolicy::Reject);
        tasks.push(tokio::spawn(async move { c.claim(req).await }));
    }
    for t in tasks {
        let r = within("claim", t).await.unwrap().unwrap().into_inner();
        assert_eq!(r.outcome(), ClaimOutcome::Granted);
    }
    let resp = evict(&node, pb::evict_request::Target::AllSessions(true), "").await;
    assert_eq!(resp.evicted_count, 1100);
    assert_eq!(resp.evicted.len(), 1000, "the list is bounded");
    assert!(node.list_all(T).await.is_empty());
    node.shutdown().await;
}
