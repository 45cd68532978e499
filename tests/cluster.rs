//! The cluster: real `turnstile serve` processes coordinated through real
//! `redis-server` processes (one server, or a three-master Redis Cluster),
//! and the faults a cluster meets: kill -9, SIGSTOP past the lease, a lost
//! subscription, Redis restarted (with and without its data), SIGTERM drain.
//!
//! Nodes run with a 1 s lease and a 500 ms reconciliation interval so every
//! fault resolves within a test; every wait is bounded.

mod support;

use std::time::{Duration, Instant};

use support::agent::{welcome_on, Agent};
use support::procs::{eventually, NodeProc, RedisCluster, RedisServer};
use support::*;
use turnstile::pb;
use turnstile_client::{AgentSocket, ConnectOptions, ServerFrame};

const T: &str = "acme";

async fn grant_on(node: &NodeProc, login: &str, station: &str) -> pb::ClaimResponse {
    let mut c = node.client().await;
    let r = claim_on(&mut c, claim_req(T, login, station, ConflictPolicy::Reject)).await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted, "{r:?}");
    r
}

/// The rules of the single node, across three nodes.
async fn rules_across_nodes(redis: &str, cluster: bool) {
    let n1 = NodeProc::start(redis, cluster, &[]).await;
    let n2 = NodeProc::start(redis, cluster, &[]).await;
    let n3 = NodeProc::start(redis, cluster, &[]).await;

    // Claim on node 1, connect to node 2, take over from node 3.
    let first = grant_on(&n1, "ana", "").await;
    let (mut ws, _) = welcome_on(&n2, &first.token).await;
    let mut c3 = n3.client().await;
    let r = claim_on(&mut c3, claim_req(T, "ana", "", ConflictPolicy::Reject)).await;
    assert_eq!(r.outcome(), ClaimOutcome::LoginInUse, "{r:?}");
    let r = claim_on(&mut c3, claim_req(T, "ana", "", ConflictPolicy::Takeover)).await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted, "{r:?}");
    assert!(
        session_of(&r).generation > session_of(&first).generation,
        "generations increase across nodes"
    );
    ws.expect_forced_logout("superseded", SUPERSEDED_MSG, 4001)
        .await;

    // Station race across nodes: the first wins, the others are refused.
    let mut tasks = Vec::new();
    for (i, node) in [&n1, &n2, &n3].into_iter().enumerate() {
        let mut c = node.client().await;
        tasks.push(tokio::spawn(async move {
            claim_on(
                &mut c,
                claim_req(T, &format!("racer{i}"), "desk-9", ConflictPolicy::Takeover),
            )
            .await
            .outcome()
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(within("a racing claim", t).await.expect("task"));
    }
    let granted = outcomes
        .iter()
        .filter(|o| **o == ClaimOutcome::Granted)
        .count();
    let refused = outcomes
        .iter()
        .filter(|o| **o == ClaimOutcome::StationInUse)
        .count();
    assert_eq!((granted, refused), (1, 2), "{outcomes:?}");

    // Resume on another node after a disconnect.
    let mut watch = watch_at(n3.grpc, T).await;
    let bob = grant_on(&n1, "bob", "").await;
    let bob_id = session_of(&bob).session_id.clone();
    let (ws, _) = welcome_on(&n1, &bob.token).await;
    watch.expect_for(&bob_id, PresenceChange::Connected).await;
    ws.close().await;
    watch
        .expect_for(&bob_id, PresenceChange::Disconnected)
        .await;
    // A notice sent through node 3 while bob is away waits in Redis...
    let mut c3 = n3.client().await;
    let sent = within(
        "Notify",
        c3.notify(pb::NotifyRequest {
            tenant: T.into(),
            target: Some(pb::notify_request::Target::SessionId(bob_id.clone())),
            notice: Some(pb::Notice {
                id: "pw-1".into(),
                kind: "password_expiry".into(),
                severity: "warning".into(),
                text: "Your password expires in 3 days".into(),
                ..Default::default()
            }),
        }),
    )
    .await
    .expect("Notify succeeds")
    .into_inner();
    assert_eq!((sent.delivered, sent.queued), (0, 1));
    // ...and reaches him when he resumes on node 2.
    let (mut ws, w) = welcome_on(&n2, &bob.token).await;
    assert!(w.resumed, "resumed on another node");
    match ws.next().await {
        ServerFrame::Notice(n) => assert_eq!(n["id"], "pw-1", "{n}"),
        other => panic!("expected the queued notice, got {other:?}"),
    }
    watch.expect_for(&bob_id, PresenceChange::Reconnected).await;

    // Reconciliation rounds complete (they page through the node's socket
    // index with SSCAN, routed by key on a Redis Cluster), and bob's socket
    // on node 2 stays attached through them.
    let rounds = "turnstile_redis_reconcile_rounds_total";
    let seen = counter(&n2, rounds).await;
    eventually("two more reconciliation rounds on node 2", || async {
        counter(&n2, rounds).await >= seen + 2.0
    })
    .await;
    let bob_now = get_on(&mut c3, T, &bob_id).await.expect("bob's session");
    assert_eq!(bob_now.state(), SessionState::Connected);
}

#[tokio::test]
async fn three_nodes_on_one_redis_enforce_the_rules() {
    let redis = RedisServer::start().await;
    rules_across_nodes(&redis.url(), false).await;
}

#[tokio::test]
async fn three_nodes_on_a_redis_cluster_enforce_the_rules() {
    let cluster = RedisCluster::start().await;
    rules_across_nodes(&cluster.urls(), true).await;
}

#[tokio::test]
async fn a_killed_nodes_sessions_disconnect_then_resume_elsewhere_or_expire() {
    let redis = RedisServer::start().await;
    let mut a = NodeProc::start(&redis.url(), false, &["--grace", "3s"]).await;
    let b = NodeProc::start(&redis.url(), false, &["--grace", "3s"]).await;
    let mut watch = watch_at(b.grpc, T).await;
    let s1 = grant_on(&a, "ana", "desk-1").await;
    let s2 = grant_on(&a, "bob", "desk-2").await;
    let id1 = session_of(&s1).session_id.clone();
    let id2 = session_of(&s2).session_id.clone();
    let (_w1, _) = welcome_on(&a, &s1.token).await;
    let (_w2, _) = welcome_on(&a, &s2.token).await;
    watch.expect_for(&id2, PresenceChange::Connected).await;

    a.kill9().await;
    watch.expect_for(&id1, PresenceChange::Disconnected).await;
    // ana comes back through node B within grace and resumes.
    let (_ws, w) = welcome_on(&b, &s1.token).await;
    assert!(w.resumed);
    // bob does not: his session expires after grace and frees the station.
    let ended = watch.expect_for(&id2, PresenceChange::Ended).await;
    assert_eq!(
        ended.session.expect("session").end_reason(),
        EndReason::Expired
    );
    let mut cb = b.client().await;
    let s = get_on(&mut cb, T, &id1).await.expect("ana's session");
    assert_eq!(s.state(), SessionState::Connected);
    // Never live twice: the login and the station still answer with ana's.
    let r = claim_on(&mut cb, claim_req(T, "ana", "", ConflictPolicy::Reject)).await;
    assert_eq!(r.outcome(), ClaimOutcome::LoginInUse);
    assert_eq!(r.holder.expect("holder").session_id, id1);
    let r = claim_on(
        &mut cb,
        claim_req(T, "carl", "desk-2", ConflictPolicy::Reject),
    )
    .await;
    assert_eq!(
        r.outcome(),
        ClaimOutcome::Granted,
        "bob's station is free again"
    );
}

#[tokio::test]
async fn a_lost_subscription_still_delivers_the_forced_logout() {
    let redis = RedisServer::start().await;
    let a = NodeProc::start(&redis.url(), false, &[]).await;
    let b = NodeProc::start(&redis.url(), false, &[]).await;
    let first = grant_on(&a, "ana", "").await;
    let (mut ws, _) = welcome_on(&a, &first.token).await;
    // Redis drops every subscriber (as it does a slow one).
    redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    let mut cb = b.client().await;
    let r = claim_on(&mut cb, claim_req(T, "ana", "", ConflictPolicy::Takeover)).await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted);
    // Through the resubscribed bus or through reconciliation: told either way.
    ws.expect_forced_logout("superseded", SUPERSEDED_MSG, 4001)
        .await;
}

#[tokio::test]
async fn redis_going_away_fails_claims_fast_and_nothing_is_granted_twice() {
    let mut redis =
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let a = NodeProc::start(&redis.url(), false, &[]).await;
    let b = NodeProc::start(&redis.url(), false, &[]).await;
    let first = grant_on(&a, "ana", "").await;
    let (mut ws, _) = welcome_on(&a, &first.token).await;

    redis.kill().await;
    let mut cb = b.client().await;
    let err = code_of(
        within(
            "a claim while redis is down",
            cb.claim(claim_req(T, "bob", "", ConflictPolicy::Reject)),
        )
        .await,
    );
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("redis"), "names the cause: {err:?}");
    let http = b.http;
    eventually("/readyz to report not ready", || async move {
        http_get(http, "/readyz").await.0 == 503
    })
    .await;

    redis.restart().await;
    eventually("/readyz to report ready again", || async move {
        http_get(http, "/readyz").await.0 == 200
    })
    .await;
    // ana's session survived: the login is not granted twice.
    let r = claim_on(&mut cb, claim_req(T, "ana", "", ConflictPolicy::Reject)).await;
    assert_eq!(r.outcome(), ClaimOutcome::LoginInUse, "{r:?}");
    let r = claim_on(&mut cb, claim_req(T, "ana", "", ConflictPolicy::Takeover)).await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted);
    ws.expect_forced_logout("superseded", SUPERSEDED_MSG, 4001)
        .await;
}

#[tokio::test]
async fn sigterm_drains_sockets_to_other_nodes_without_a_forced_logout() {
    let redis = RedisServer::start().await;
    let mut a = NodeProc::start(&redis.url(), false, &[]).await;
    let b = NodeProc::start(&redis.url(), false, &[]).await;
    let s = grant_on(&a, "ana", "").await;
    let (mut ws, _) = welcome_on(&a, &s.token).await;
    let reader = tokio::spawn(async move {
        match ws.next().await {
            ServerFrame::Reconnect { after_ms } => assert!(after_ms < 200, "{after_ms}"),
            other => panic!("expected reconnect, got {other:?}"),
        }
        ws.expect_close(1012).await;
    });
    a.terminate().await;
    within("the reconnect frame", reader)
        .await
        .expect("told to reconnect");
    let (_ws, w) = welcome_on(&b, &s.token).await;
    assert!(w.resumed, "a rolling restart logs nobody out");
    assert_eq!(w.session_id, session_of(&s).session_id);
}

#[tokio::test]
async fn a_fenced_node_spreads_its_reconnects_over_the_configured_drain_window() {
    // Nodes run with `--drain-window 200ms`. A node the cluster declared
    // dead drains its sockets through the registry's Drain event, which the
    // hub once ran with a hard-coded 1 s: with eight sockets, at least one
    // `after_ms` then landed outside the window all but ~3 times in a
    // million runs.
    let redis = RedisServer::start().await;
    let a = NodeProc::start(&redis.url(), false, &[]).await;
    let b = NodeProc::start(&redis.url(), false, &[]).await;
    let mut watch = watch_at(b.grpc, T).await;
    let mut agents = Vec::new();
    let mut ids = Vec::new();
    for login in ["ana", "bea"] {
        let s = grant_on(&a, login, "").await;
        ids.push(session_of(&s).session_id.clone());
        for _ in 0..4 {
            agents.push(welcome_on(&a, &s.token).await.0);
        }
    }
    expect_each(&mut watch, &ids, PresenceChange::Connected).await;
    a.sigstop();
    // The cluster declares A dead: its sessions become DISCONNECTED, in
    // no particular order.
    expect_each(&mut watch, &ids, PresenceChange::Disconnected).await;
    a.sigcont();
    for agent in &mut agents {
        match agent.next().await {
            ServerFrame::Reconnect { after_ms } => {
                assert!(
                    after_ms < 200,
                    "after_ms {after_ms} is outside the 200 ms window"
                )
            }
            other => panic!("expected reconnect, got {other:?}"),
        }
        agent.expect_close(1012).await;
    }
}

/// Awaits `change` for every session of `ids`, in any order.
async fn expect_each(watch: &mut Watch, ids: &[String], change: PresenceChange) {
    let mut left: Vec<&str> = ids.iter().map(String::as_str).collect();
    // Each event is awaited within a bound; 64 events is far more than
    // these sessions produce.
    for _ in 0..64 {
        if left.is_empty() {
            return;
        }
        let ev = watch.next().await;
        if ev.change() == change {
            let sid = ev.session.map(|s| s.session_id).unwrap_or_default();
            left.retain(|id| *id != sid);
        }
    }
    panic!("no {change:?} for {left:?}");
}

#[tokio::test]
async fn a_zombie_node_cannot_undo_what_happened_while_it_was_stopped() {
    let redis = RedisServer::start().await;
    let a = NodeProc::start(&redis.url(), false, &[]).await;
    let b = NodeProc::start(&redis.url(), false, &[]).await;
    let mut watch = watch_at(b.grpc, T).await;
    let ana = grant_on(&a, "ana", "").await;
    let carl = grant_on(&a, "carl", "").await;
    let ana_id = session_of(&ana).session_id.clone();
    let carl_id = session_of(&carl).session_id.clone();
    let (mut ws_ana, _) = welcome_on(&a, &ana.token).await;
    let (mut ws_carl, _) = welcome_on(&a, &carl.token).await;
    watch.expect_for(&carl_id, PresenceChange::Connected).await;

    a.sigstop();
    // The cluster declares A dead: its sessions become DISCONNECTED.
    watch
        .expect_for(&ana_id, PresenceChange::Disconnected)
        .await;
    // ana is taken over on B; carl resumes on B.
    let mut cb = b.client().await;
    let r = claim_on(&mut cb, claim_req(T, "ana", "", ConflictPolicy::Takeover)).await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted);
    let new_ana = session_of(&r).session_id.clone();
    let (_carl_b, w) = welcome_on(&b, &carl.token).await;
    assert!(w.resumed);

    a.sigcont();
    // A wakes, finds itself fenced and drops its stale sockets: whatever
    // it sends them last, they end.
    for ws in [&mut ws_ana, &mut ws_carl] {
        for _ in 0..3 {
            if let ServerFrame::Closed { .. } = ws.next().await {
                break;
            }
        }
    }
    let http = a.http;
    eventually("the zombie to re-join (ready)", || async move {
        http_get(http, "/readyz").await.0 == 200
    })
    .await;
    // Nothing it did on waking took effect.
    let s = get_on(&mut cb, T, &carl_id).await.expect("carl");
    assert_eq!(s.state(), SessionState::Connected, "carl stays on B: {s:?}");
    let s = get_on(&mut cb, T, &new_ana).await.expect("new ana");
    assert!(s.state() == SessionState::Pending, "{s:?}");
    let s = get_on(&mut cb, T, &ana_id).await.expect("old ana");
    assert_eq!(s.end_reason(), EndReason::Superseded);

    // Under its new name A listens on its new channel, has left the old
    // one, and hears the events for the sockets it holds now.
    let old_name = get_on(&mut cb, T, &ana_id).await.expect("old ana").node;
    let (mut ws_ana, _) = welcome_on(&a, &r.token).await;
    let new_name = get_on(&mut cb, T, &new_ana).await.expect("new ana").node;
    assert_ne!(old_name, new_name);
    for (name, listeners) in [(&old_name, 0), (&new_name, 1)] {
        let channel = format!("turnstile:{{{T}}}:ev:{name}");
        let redis::Value::Array(reply) = redis.cmd(&["PUBSUB", "NUMSUB", &channel]).await else {
            panic!("PUBSUB NUMSUB answers an array");
        };
        assert_eq!(
            reply.get(1),
            Some(&redis::Value::Int(listeners)),
            "{channel}"
        );
    }
    let r = claim_on(&mut cb, claim_req(T, "ana", "", ConflictPolicy::Takeover)).await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted);
    ws_ana
        .expect_forced_logout("superseded", SUPERSEDED_MSG, 4001)
        .await;
}

#[tokio::test]
async fn redis_restarted_empty_gets_the_live_sessions_back_without_double_grants() {
    let mut redis = RedisServer::start().await;
    let a = NodeProc::start(&redis.url(), false, &[]).await;
    let b = NodeProc::start(&redis.url(), false, &[]).await;
    let ana = grant_on(&a, "ana", "desk-1").await;
    let ana_id = session_of(&ana).session_id.clone();
    let (_ws, _) = welcome_on(&a, &ana.token).await;

    redis.restart_empty().await;
    let grpc = b.grpc;
    let id = ana_id.clone();
    eventually("ana's session to be re-asserted", || {
        let id = id.clone();
        async move {
            let mut c = grpc_client(grpc).await;
            matches!(get_on(&mut c, T, &id).await, Ok(s) if s.state() == SessionState::Connected)
        }
    })
    .await;
    let mut cb = b.client().await;
    // Claims may be refused (UNAVAILABLE) for the recovery window.
    let mut outcome = None;
    for _ in 0..500 {
        match cb
            .claim(claim_req(T, "zoe", "desk-1", ConflictPolicy::Reject))
            .await
        {
            Ok(r) => {
                outcome = Some(r.into_inner());
                break;
            }
            Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let r = outcome.expect("a claim answered");
    assert_eq!(
        r.outcome(),
        ClaimOutcome::StationInUse,
        "desk-1 is still ana's: {r:?}"
    );
    let r = claim_on(&mut cb, claim_req(T, "ana", "", ConflictPolicy::Reject)).await;
    assert_eq!(r.outcome(), ClaimOutcome::LoginInUse);
    assert_eq!(r.holder.expect("holder").session_id, ana_id);
}

/// A counter's value on `node`'s `/metrics` (0 before it is first counted).
async fn counter(node: &NodeProc, name: &str) -> f64 {
    let (_, body) = http_get(node.http, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Registry time is Redis's, whatever the hosts' wall clocks say: a node
/// whose wall clock is `skew` off (its monotonic clock is right) beside a
/// healthy one, on one Redis, with agents on both. For a few lease
/// intervals nobody is fenced and no socket hears anything; and a session
/// left DISCONNECTED on either node ends when its grace runs out, as the
/// healthy node sees it — within one expiry round (200 ms) of it, with
/// room for a loaded machine on the late side only.
async fn a_skewed_node_disturbs_nobody(skew: &str) {
    const GRACE: Duration = Duration::from_secs(3);
    let redis = RedisServer::start().await;
    let grace = ["--grace", "3s"];
    let healthy = NodeProc::start(&redis.url(), false, &grace).await;
    let skewed = NodeProc::start_skewed(&redis.url(), skew, &grace).await;
    let mut watch = watch_at(healthy.grpc, T).await;
    // Each token is used on the node that issued it; tokens crossing to
    // the other node are `tokens_cross_a_skewed_node`'s.
    let ana = grant_on(&healthy, "ana", "desk-1").await;
    let bob = grant_on(&skewed, "bob", "desk-2").await;
    let carl = grant_on(&healthy, "carl", "desk-3").await;
    let dave = grant_on(&skewed, "dave", "desk-4").await;
    let (mut a, _) = welcome_on(&healthy, &ana.token).await;
    let (mut b, _) = welcome_on(&skewed, &bob.token).await;
    let (c, _) = welcome_on(&healthy, &carl.token).await;
    let (d, _) = welcome_on(&skewed, &dave.token).await;
    c.close().await;
    d.close().await;

    let leaving = [
        session_of(&carl).session_id.clone(),
        session_of(&dave).session_id.clone(),
    ];
    let graces = async {
        let mut left: [Option<Instant>; 2] = [None; 2];
        let mut lasted: [Option<Duration>; 2] = [None; 2];
        while lasted.iter().any(Option::is_none) {
            let ev = watch.next().await;
            let sid = ev.session.as_ref().map(|s| s.session_id.as_str());
            let Some(i) = leaving.iter().position(|l| Some(l.as_str()) == sid) else {
                continue;
            };
            match ev.change() {
                PresenceChange::Disconnected => left[i] = Some(Instant::now()),
                PresenceChange::Ended => {
                    let since = left[i].expect("DISCONNECTED before ENDED");
                    lasted[i] = Some(since.elapsed());
                }
                _ => {}
            }
        }
        lasted.map(|d| d.unwrap_or_default())
    };
    // Four lease intervals, longer than the grace.
    let quiet = Duration::from_secs(4);
    let (lasted, heard_a, heard_b) = tokio::join!(
        graces,
        a.0.next_frame_within(quiet),
        b.0.next_frame_within(quiet)
    );
    assert!(
        heard_a.is_err(),
        "{skew}: healthy node's agent heard {heard_a:?}"
    );
    assert!(
        heard_b.is_err(),
        "{skew}: skewed node's agent heard {heard_b:?}"
    );
    for (who, lasted) in ["on the healthy node", "on the skewed node"]
        .iter()
        .zip(lasted)
    {
        assert!(
            lasted + Duration::from_millis(400) >= GRACE
                && lasted <= GRACE + Duration::from_secs(2),
            "{skew}: a grace of {GRACE:?} {who} lasted {lasted:?}"
        );
    }
    for node in [&healthy, &skewed] {
        assert_eq!(
            counter(node, "turnstile_redis_fenced_total").await,
            0.0,
            "{skew}"
        );
    }
    let mut ch = healthy.client().await;
    for r in [&ana, &bob] {
        let s = get_on(&mut ch, T, &session_of(r).session_id)
            .await
            .expect("the session");
        assert_eq!(s.state(), SessionState::Connected, "{skew}");
    }
}

#[tokio::test]
async fn a_node_8s_ahead_disturbs_nobody() {
    a_skewed_node_disturbs_nobody("+8s").await;
}

#[tokio::test]
async fn a_node_8s_behind_disturbs_nobody() {
    a_skewed_node_disturbs_nobody("-8s").await;
}

#[tokio::test]
async fn a_node_2min_ahead_disturbs_nobody() {
    a_skewed_node_disturbs_nobody("+120s").await;
}

/// Connect tokens are minted and judged on the registry clock (Redis's),
/// not the hosts' wall clocks: beside a node whose wall clock is `skew`
/// off, a token minted on either node opens a socket on the other. Tokens
/// live 30 s here, so a node 120 s ahead that read its wall clock would
/// call a fresh token expired; one behind (or a token from one ahead)
/// would call it not valid yet.
async fn tokens_cross_a_skewed_node(skew: &str) {
    let redis = RedisServer::start().await;
    let flags = ["--token-ttl", "30s"];
    let healthy = NodeProc::start(&redis.url(), false, &flags).await;
    let skewed = NodeProc::start_skewed(&redis.url(), skew, &flags).await;
    for (minter, opener, login, station) in [
        (&healthy, &skewed, "ana", "desk-1"),
        (&skewed, &healthy, "bob", "desk-2"),
    ] {
        let grant = grant_on(minter, login, station).await;
        let socket = within(
            "connect",
            AgentSocket::connect(opener.http, &grant.token, &ConnectOptions::default()),
        )
        .await;
        let mut agent = Agent(socket.unwrap_or_else(|e| {
            panic!(
                "{skew}: {login}'s socket on {} did not open: {e}",
                opener.name
            )
        }));
        match agent.next().await {
            ServerFrame::Welcome { session_id, .. } => {
                assert_eq!(session_id, session_of(&grant).session_id, "{skew}")
            }
            other => panic!(
                "{skew}: a token minted on {} was refused on {}: {other:?}",
                minter.name, opener.name
            ),
        }
    }
}

#[tokio::test]
async fn tokens_cross_a_node_8s_ahead() {
    tokens_cross_a_skewed_node("+8s").await;
}

#[tokio::test]
async fn tokens_cross_a_node_8s_behind() {
    tokens_cross_a_skewed_node("-8s").await;
}

#[tokio::test]
async fn tokens_cross_a_node_2min_ahead() {
    tokens_cross_a_skewed_node("+120s").await;
}

/// A node holding more sessions than one script call handles (500):
/// reconciliation keeps all of them attached — each call used to drop, as
/// stale, every socket of the node outside its own 500, turning live
/// sessions DISCONNECTED every round (they ended when the grace ran out,
/// under connected agents); a tenant-wide notice reaches all of them; and
/// when the node dies, reaping it detaches all of them, 500 per call.
#[tokio::test]
async fn a_node_holding_more_than_one_batch_keeps_its_sockets_and_is_reaped_whole() {
    const N: usize = 600;
    let redis = RedisServer::start().await;
    let mut node = NodeProc::start(&redis.url(), false, &[]).await;
    let other = NodeProc::start(&redis.url(), false, &[]).await;
    let mut c = node.client().await;
    let mut sockets = Vec::with_capacity(N);
    for i in 0..N {
        let login = format!("agent{i}");
        let r = claim_on(&mut c, claim_req(T, &login, "", ConflictPolicy::Reject)).await;
        assert_eq!(r.outcome(), ClaimOutcome::Granted, "{login}: {r:?}");
        let mut ws = connect(node.http, &r.token).await;
        ws.expect_type("welcome").await;
        sockets.push(ws);
    }

    let rounds = "turnstile_redis_reconcile_rounds_total";
    let seen = counter(&node, rounds).await;
    eventually("two more reconciliation rounds", || async {
        counter(&node, rounds).await >= seen + 2.0
    })
    .await;
    let mut c = other.client().await;
    let not_in = |state: SessionState, sessions: &[pb::Session]| -> Vec<String> {
        sessions
            .iter()
            .filter(|s| s.state() != state)
            .map(|s| format!("{} {:?}", s.login, s.state()))
            .collect()
    };
    let sessions = list_on(&mut c, T).await;
    assert_eq!(sessions.len(), N);
    let wrong = not_in(SessionState::Connected, &sessions);
    assert!(
        wrong.is_empty(),
        "{} not connected: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert_eq!(
        counter(&node, "turnstile_redis_stale_sockets_total").await,
        0.0
    );

    // A tenant-wide notice reaches every one of them (500 per script call).
    let sent = within(
        "Notify",
        c.notify(pb::NotifyRequest {
            tenant: T.into(),
            target: Some(pb::notify_request::Target::AllSessions(true)),
            notice: Some(pb::Notice {
                id: "lic-1".into(),
                kind: "license_expiry".into(),
                severity: "warning".into(),
                text: "Your license expires in 7 days".into(),
                ..Default::default()
            }),
        }),
    )
    .await
    .expect("Notify succeeds")
    .into_inner();
    assert_eq!((sent.delivered, sent.queued), (N as u32, 0));
    for ws in &mut sockets {
        assert_eq!(ws.wait_type("notice").await["notice"]["id"], "lic-1");
    }

    node.kill9().await;
    drop(sockets);
    eventually(
        "every session of the dead node to be DISCONNECTED",
        || async {
            not_in(
                SessionState::Disconnected,
                &list_on(&mut other.client().await, T).await,
            )
            .is_empty()
        },
    )
    .await;
}

/// Every session of `tenant`, through ListSessions' pages (bounded).
async fn list_on(c: &mut Client, tenant: &str) -> Vec<pb::Session> {
    let mut sessions = Vec::new();
    let mut page_token = String::new();
    for _ in 0..1000 {
        let page = within(
            "ListSessions",
            c.list_sessions(pb::ListSessionsRequest {
                tenant: tenant.into(),
                page_size: 0,
                page_token,
            }),
        )
        .await
        .expect("ListSessions succeeds")
        .into_inner();
        sessions.extend(page.sessions);
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    sessions
}

/// Makes Redis believe `node` holds a socket of the pending session `id`
/// (attached at `t`, unix ms): the session record lists it as connected
/// with no connect deadline, and the node's socket index names it. Stands
/// in for what a lost detach or an unfinished reap leaves behind.
async fn plant_socket(redis: &RedisServer, id: &str, node: &str, t: u64) {
    let key = format!("turnstile:{{{T}}}:s:{id}");
    let redis::Value::BulkString(raw) = redis.cmd(&["GET", &key]).await else {
        panic!("the session's record is in redis");
    };
    let mut record: serde_json::Value = serde_json::from_slice(&raw).expect("a JSON record");
    record["k"] = serde_json::json!([{"n": node, "c": 999_999, "t": t}]);
    record["s"]["state"] = "connected".into();
    record["dl"] = 0.into();
    redis.cmd(&["SET", &key, &record.to_string()]).await;
    redis
        .cmd(&["ZREM", &format!("turnstile:{{{T}}}:dl"), id])
        .await;
    redis
        .cmd(&["SADD", &format!("turnstile:{{{T}}}:n:{node}"), id])
        .await;
}

/// A socket Redis still lists under a node that let it go (its detach was
/// lost, say, to a Redis outage) is cleared by reconciliation: the session
/// turns DISCONNECTED, so its grace runs and its client can resume. The
/// stale entry is written into Redis by hand, beside a live socket that
/// must stay.
#[tokio::test]
async fn reconciliation_clears_a_socket_the_node_no_longer_holds() {
    let redis = RedisServer::start().await;
    let node = NodeProc::start(&redis.url(), false, &[]).await;
    let ana = grant_on(&node, "ana", "").await;
    let (_ws, _) = welcome_on(&node, &ana.token).await;
    let mut c = node.client().await;
    let incarnation = get_on(&mut c, T, &session_of(&ana).session_id)
        .await
        .expect("ana's session")
        .node;

    // bob's session is pending; Redis is made to believe the node holds a
    // socket of it, attached long ago.
    let bob = grant_on(&node, "bob", "").await;
    let bob_id = session_of(&bob).session_id.clone();
    plant_socket(&redis, &bob_id, &incarnation, 1).await;

    eventually("bob's stale socket to be cleared", || async {
        get_on(&mut node.client().await, T, &bob_id)
            .await
            .is_ok_and(|s| s.state() == SessionState::Disconnected)
    })
    .await;
    assert!(counter(&node, "turnstile_redis_stale_sockets_total").await >= 1.0);
    let ana_now = get_on(&mut c, T, &session_of(&ana).session_id)
        .await
        .expect("ana's session");
    assert_eq!(
        ana_now.state(),
        SessionState::Connected,
        "the live socket stays"
    );
}

/// A node that leaves (SIGTERM) detaches, before it exits, every socket
/// Redis still lists under it — here one written by hand with an attach
/// time in the future, which reconciliation leaves alone, so only the
/// leave can clear it.
#[tokio::test]
async fn a_node_leaving_detaches_what_redis_still_lists_under_it() {
    let redis = RedisServer::start().await;
    let mut node = NodeProc::start(&redis.url(), false, &[]).await;
    let other = NodeProc::start(&redis.url(), false, &[]).await;
    let ana = grant_on(&node, "ana", "").await;
    let (_ws, _) = welcome_on(&node, &ana.token).await;
    let mut c = other.client().await;
    let incarnation = get_on(&mut c, T, &session_of(&ana).session_id)
        .await
        .expect("ana's session")
        .node;

    let bob = grant_on(&node, "bob", "").await;
    let bob_id = session_of(&bob).session_id.clone();
    // Attached "in the future": reconciliation leaves it alone.
    plant_socket(&redis, &bob_id, &incarnation, 9_000_000_000_000_000).await;

    node.terminate().await;
    let bob_now = get_on(&mut c, T, &bob_id).await.expect("bob's session");
    assert_eq!(bob_now.state(), SessionState::Disconnected);
}

/// A dead node whose reap was cut short (the burying node died, or Redis
/// failed mid-way) stays listed as still to reap, and a live node's next
/// lease round finishes the job: here a buried node `zz:1` still lists
/// bob's socket, written by hand, and nothing else could clear it
/// (reconciliation only checks a node's own sockets).
#[tokio::test]
async fn a_reap_left_unfinished_is_finished_by_a_live_node() {
    let redis = RedisServer::start().await;
    let node = NodeProc::start(&redis.url(), false, &[]).await;
    let bob = grant_on(&node, "bob", "").await;
    let bob_id = session_of(&bob).session_id.clone();
    plant_socket(&redis, &bob_id, "zz:1", 1).await;
    // What a bury leaves behind when the reap after it never ran.
    redis
        .cmd(&["ZADD", "turnstile:{nodes}:dead", "1", "zz:1"])
        .await;
    redis.cmd(&["SADD", "turnstile:{nodes}:t:zz:1", T]).await;
    redis
        .cmd(&["SADD", "turnstile:{nodes}:reaping", "zz:1"])
        .await;

    eventually("bob's socket on the dead node to be detached", || async {
        get_on(&mut node.client().await, T, &bob_id)
            .await
            .is_ok_and(|s| s.state() == SessionState::Disconnected)
    })
    .await;
    eventually(
        "the dead node to be struck off the list to reap",
        || async {
            redis.cmd(&["SCARD", "turnstile:{nodes}:reaping"]).await == redis::Value::Int(0)
        },
    )
    .await;
    assert_eq!(
        redis.cmd(&["EXISTS", "turnstile:{nodes}:t:zz:1"]).await,
        redis::Value::Int(0),
        "no tenant is left to reap it from"
    );
}

/// Events about a session go only to the channel of the node holding its
/// sockets, so the other nodes are not even woken: ana's forced logout
/// (her socket on node A, taken over through node B) is published on A's
/// channel alone, and the next event, a notice for carl's socket on B, on
/// B's alone. A tap on every event channel of the tenant sees them in
/// Redis' order, so any copy on another channel would come between.
#[tokio::test]
async fn events_are_published_only_to_the_node_holding_the_socket() {
    use futures_util::StreamExt;
    let redis = RedisServer::start().await;
    let a = NodeProc::start(&redis.url(), false, &[]).await;
    let b = NodeProc::start(&redis.url(), false, &[]).await;
    let carl = grant_on(&b, "carl", "").await;
    let (_carl_ws, _) = welcome_on(&b, &carl.token).await;
    let ana = grant_on(&a, "ana", "").await;
    let (mut ana_ws, _) = welcome_on(&a, &ana.token).await;
    let mut cb = b.client().await;
    let node_of = |s: Option<pb::Session>| s.expect("the session").node;
    let node_a = node_of(get_on(&mut cb, T, &session_of(&ana).session_id).await.ok());
    let node_b = node_of(get_on(&mut cb, T, &session_of(&carl).session_id).await.ok());
    assert_ne!(node_a, node_b);

    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut tap = within("a pub/sub connection", client.get_async_pubsub())
        .await
        .expect("pub/sub connection");
    within(
        "PSUBSCRIBE",
        tap.psubscribe(format!("turnstile:{{{T}}}:ev*")),
    )
    .await
    .expect("PSUBSCRIBE");
    let mut messages = tap.on_message();

    let r = claim_on(&mut cb, claim_req(T, "ana", "", ConflictPolicy::Takeover)).await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted, "{r:?}");
    ana_ws
        .expect_forced_logout("superseded", SUPERSEDED_MSG, 4001)
        .await;
    within(
        "Notify",
        a.client().await.notify(pb::NotifyRequest {
            tenant: T.into(),
            target: Some(pb::notify_request::Target::SessionId(
                session_of(&carl).session_id.clone(),
            )),
            notice: Some(pb::Notice {
                id: "lic-1".into(),
                kind: "license_expiry".into(),
                text: "Your license expires in 7 days".into(),
                ..Default::default()
            }),
        }),
    )
    .await
    .expect("Notify succeeds");

    for (node, kind) in [(&node_a, "e"), (&node_b, "n")] {
        let m = within("an event on the tap", messages.next())
            .await
            .expect("the tap stays open");
        let payload: String = m.get_payload().expect("a text payload");
        assert_eq!(
            m.get_channel_name(),
            format!("turnstile:{{{T}}}:ev:{node}"),
            "{payload}"
        );
        let event: serde_json::Value = serde_json::from_str(&payload).expect("a JSON event");
        assert_eq!(event["k"], kind, "{payload}");
    }
}

/// Opens a socket on `node`: `Ok` when welcomed, `Err(code)` when closed
/// before a welcome.
async fn try_welcome_on(node: &NodeProc, token: &str) -> Result<Agent, u16> {
    let socket = within(
        "connect",
        AgentSocket::connect(node.http, token, &ConnectOptions::default()),
    )
    .await
    .expect("the socket opens");
    let mut agent = Agent(socket);
    // A refusal is an `error` frame, then the close.
    for _ in 0..2 {
        match agent.next().await {
            ServerFrame::Welcome { .. } => return Ok(agent),
            ServerFrame::Closed { code, .. } => return Err(code.expect("a close code")),
            ServerFrame::Error { .. } => {}
            other => panic!("expected welcome or close, got {other:?}"),
        }
    }
    panic!("neither welcome nor close after an error frame");
}

/// A desktop and a phone hold a session's two sockets on node A; A is
/// killed and both reconnect to node B at once, before A's lease has run
/// out. The sockets of a dead node must not keep them out: each is
/// admitted, or told to come back after a backoff — never closed 4403,
/// which tells a client to stop for good. Retrying (as the SDK does, 10
/// times at most) gets both in once A is buried.
async fn dead_nodes_sockets_stop_counting(redis: &str, cluster: bool) {
    use turnstile::close::{CloseClass, CloseCode};
    let limit = ["--max-sockets-per-session", "2", "--grace", "30s"];
    let mut a = NodeProc::start(redis, cluster, &limit).await;
    let b = NodeProc::start(redis, cluster, &limit).await;
    let ana = grant_on(&a, "ana", "").await;
    let (_desktop, _) = welcome_on(&a, &ana.token).await;
    let (_phone, _) = welcome_on(&a, &ana.token).await;

    a.kill9().await;
    let mut back = Vec::new();
    for device in ["desktop", "phone"] {
        let mut refused = Vec::new();
        for _ in 0..10 {
            match try_welcome_on(&b, &ana.token).await {
                Ok(agent) => {
                    back.push(agent);
                    break;
                }
                Err(code) => {
                    let cause = CloseCode::ALL.into_iter().find(|c| c.as_u16() == code);
                    assert!(
                        cause.is_some_and(|c| c.class() != CloseClass::Stop),
                        "{device} refused with {code} ({cause:?}), which tells it to stop"
                    );
                    refused.push(code);
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
        assert!(
            back.len() == if device == "desktop" { 1 } else { 2 },
            "{device} never got back in: {refused:?}"
        );
    }
    let s = get_on(&mut b.client().await, T, &session_of(&ana).session_id)
        .await
        .expect("ana's session");
    assert_eq!(s.state(), SessionState::Connected);
}

#[tokio::test]
async fn a_dead_nodes_sockets_do_not_keep_the_session_from_reconnecting_elsewhere() {
    let redis = RedisServer::start().await;
    dead_nodes_sockets_stop_counting(&redis.url(), false).await;
}

/// The same on a Redis Cluster, where the dead set is in another slot than
/// the tenant's keys.
#[tokio::test]
async fn a_dead_nodes_sockets_stop_counting_on_a_redis_cluster_too() {
    let cluster = RedisCluster::start().await;
    dead_nodes_sockets_stop_counting(&cluster.urls(), true).await;
}

/// Declared dead but not yet reaped in this tenant (its reap is still on
/// other tenants): the socket a node in the cluster's dead set holds no
/// longer counts, though nothing in the tenant says so yet; a node that
/// is not in it still does, and the refusal is the retryable 4409. The
/// ghost's socket is written into Redis by hand.
#[tokio::test]
async fn a_buried_nodes_socket_stops_counting_before_its_reap_reaches_the_tenant() {
    let redis = RedisServer::start().await;
    let node = NodeProc::start(&redis.url(), false, &["--max-sockets-per-session", "1"]).await;
    let ana = grant_on(&node, "ana", "").await;
    let id = session_of(&ana).session_id.clone();
    plant_socket(&redis, &id, "ghost:1", 1).await;
    assert_eq!(try_welcome_on(&node, &ana.token).await.err(), Some(4409));

    redis
        .cmd(&["ZADD", "turnstile:{nodes}:dead", "1", "ghost:1"])
        .await;
    let _ws = try_welcome_on(&node, &ana.token)
        .await
        .expect("admitted: the ghost's socket no longer counts");
    let fence = format!("turnstile:{{{T}}}:dead:ghost:1");
    assert_eq!(
        redis.cmd(&["EXISTS", &fence]).await,
        redis::Value::Int(1),
        "the ghost is fenced in the tenant, as its reap would"
    );
}
