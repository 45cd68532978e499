//! The per-tenant event log and what it gives watchers: WatchPresence
//! resumes after the last sequence it saw with no gap and no duplicate,
//! says so when the log no longer reaches back, and heals (or marks) the
//! events a node lost on the way from Redis. Single-node tests run in
//! process (on Redis too with `TS_TEST_REDIS`); cluster tests start real
//! `turnstile serve` processes and a real `redis-server`.

mod support;

use std::collections::HashSet;
use std::time::Instant;

use serde_json::json;
use support::procs::{NodeProc, RedisServer};
use support::*;
use turnstile::pb;

const T: &str = "acme";

/// What a test compares of an event: its sequence, session and change.
type Seen = (u64, String, i32);

fn seen(e: &pb::PresenceEvent) -> Seen {
    let sid = e.session.as_ref().map(|s| s.session_id.clone());
    (e.sequence, sid.unwrap_or_default(), e.change)
}

/// Reads `w` until the CLAIMED event of `marker`; returns the events (the
/// marker's included) and the gaps met on the way.
async fn read_until(w: &mut Watch, marker: &str) -> (Vec<pb::PresenceEvent>, Vec<pb::PresenceGap>) {
    let (mut events, mut gaps) = (Vec::new(), Vec::new());
    loop {
        let item = w.next_item().await;
        if let Some(gap) = item.gap {
            gaps.push(gap);
            continue;
        }
        let e = item.event.expect("an item is an event or a gap");
        let login = e
            .session
            .as_ref()
            .map(|s| s.login.clone())
            .unwrap_or_default();
        let done = login == marker && e.change() == PresenceChange::Claimed;
        events.push(e);
        if done {
            return (events, gaps);
        }
    }
}

/// Panics unless the events' sequence numbers run `from`, `from + 1`, ...
/// without a hole or a repeat.
fn assert_contiguous(events: &[pb::PresenceEvent], from: u64) {
    let seqs: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    let want: Vec<u64> = (from..from + seqs.len() as u64).collect();
    assert_eq!(seqs, want, "sequence numbers with no gap and no duplicate");
}

/// One round of churn on `grpc` (claims, a takeover, a release) for
/// `login`: claimed, ended (superseded), claimed, ended (logged out).
async fn churn_round(c: &mut Client, login: &str) {
    for _ in 0..2 {
        let r = claim_on(c, claim_req(T, login, "", ConflictPolicy::Takeover)).await;
        assert_eq!(r.outcome(), ClaimOutcome::Granted, "{r:?}");
    }
    let r = claim_on(c, claim_req(T, login, "", ConflictPolicy::Takeover)).await;
    let id = session_of(&r).session_id.clone();
    within(
        "Release",
        c.release(pb::ReleaseRequest {
            tenant: T.into(),
            session_id: id,
        }),
    )
    .await
    .expect("Release succeeds");
}

#[tokio::test]
async fn a_watcher_resumes_after_its_last_sequence_with_no_gap_and_no_duplicate() {
    let node = start().await;
    let mut c = node.new_client().await;
    let mut w = node.watch(T).await;
    churn_round(&mut c, "ana").await;
    let _ = node.grant(T, "mark-1", "").await;
    let (first, gaps) = read_until(&mut w, "mark-1").await;
    assert!(gaps.is_empty(), "{gaps:?}");
    assert_contiguous(&first, first[0].sequence);
    let last = first.last().expect("events").sequence;
    drop(w);

    // Away while the tenant changes; then resume from the last one seen.
    churn_round(&mut c, "ana").await;
    churn_round(&mut c, "bo").await;
    let mut back = watch_after(node.grpc, T, last).await;
    let (replayed, gaps) = {
        let _ = node.grant(T, "mark-2", "").await;
        read_until(&mut back, "mark-2").await
    };
    assert!(gaps.is_empty(), "{gaps:?}");
    assert_contiguous(&replayed, last + 1);
    assert!(replayed.len() > 8, "both rounds and the marker came back");

    // An ending says how and by whom.
    let superseded = replayed
        .iter()
        .find(|e| e.change() == PresenceChange::Ended)
        .and_then(|e| e.ending.as_ref())
        .expect("an ended event carries its ending");
    assert_eq!(superseded.reason(), pb::EndReason::Superseded);
    assert_eq!(superseded.by_client, "desktop");
    assert!(!superseded.by_session_id.is_empty());

    // Live after the seam: the next change comes once.
    let _ = node.grant(T, "mark-3", "").await;
    let (live, gaps) = read_until(&mut back, "mark-3").await;
    assert!(gaps.is_empty(), "{gaps:?}");
    assert_contiguous(&live, replayed.last().expect("events").sequence + 1);
    node.shutdown().await;
}

/// A script that ends many sessions at once (a tenant-wide evict here; an
/// expiry sweep, a reaped node alike) logs each ending as its own entry on
/// Redis: a watcher resuming from the middle of the sweep gets the rest of
/// it, in order, with no gap and no duplicate.
#[tokio::test]
async fn a_watcher_resuming_inside_a_sweep_gets_the_rest_of_it() {
    let node = start().await;
    let mut c = node.new_client().await;
    let mut w = node.watch(T).await;
    for i in 0..6 {
        let _ = node.grant(T, &format!("sw-{i}"), "").await;
    }
    let _ = node.grant(T, "mark-1", "").await;
    let (before, _) = read_until(&mut w, "mark-1").await;
    let r = c
        .evict(pb::EvictRequest {
            tenant: T.into(),
            target: Some(pb::evict_request::Target::AllSessions(true)),
            message: String::new(),
        })
        .await
        .expect("tenant-wide evict")
        .into_inner();
    assert_eq!(r.evicted_count, 7, "six sessions and the marker");
    let _ = node.grant(T, "mark-2", "").await;
    let (sweep, gaps) = read_until(&mut w, "mark-2").await;
    assert!(gaps.is_empty(), "{gaps:?}");
    let first = before.last().expect("events").sequence + 1;
    assert_contiguous(&sweep, first);
    assert_eq!(sweep.len(), 8, "seven endings and the marker's claim");
    drop(w);

    // From inside the sweep (after its third ending): the other four
    // endings and the marker.
    let mut back = watch_after(node.grpc, T, first + 2).await;
    let (rest, gaps) = read_until(&mut back, "mark-2").await;
    assert!(gaps.is_empty(), "{gaps:?}");
    assert_contiguous(&rest, first + 3);
    assert_eq!(
        rest.iter().map(seen).collect::<Vec<_>>(),
        sweep[3..].iter().map(seen).collect::<Vec<_>>()
    );
    node.shutdown().await;
}

#[tokio::test]
async fn a_watcher_behind_the_trimmed_log_is_told_to_re_read() {
    // Redis trims the stream approximately (whole nodes of 100 entries), so
    // enough events that even an approximate trim drops the first ones.
    let node = start_with(|c| c.event_log_max_events = 5).await;
    let mut c = node.new_client().await;
    for i in 0..300 {
        let login = format!("u{}", i % 7);
        let r = claim_on(&mut c, claim_req(T, &login, "", ConflictPolicy::Takeover)).await;
        assert_eq!(r.outcome(), ClaimOutcome::Granted, "{r:?}");
    }
    let mut w = watch_after(node.grpc, T, 1).await;
    let first = w.next_item().await;
    let gap = first.gap.expect("the first item says the log was trimmed");
    assert_eq!(gap.reason(), pb::PresenceGapReason::LogTrimmed);
    assert!(gap.resume_after_sequence > 1, "{gap:?}");
    let _ = node.grant(T, "mark", "").await;
    let (events, gaps) = read_until(&mut w, "mark").await;
    assert!(gaps.is_empty(), "one gap only: {gaps:?}");
    assert_contiguous(&events, gap.resume_after_sequence + 1);
    node.shutdown().await;
}

#[tokio::test]
async fn a_watcher_away_during_churn_on_three_nodes_resumes_elsewhere_with_no_gap_and_no_duplicate()
{
    let redis = RedisServer::start().await;
    let nodes = [
        NodeProc::start(&redis.url(), false, &[]).await,
        NodeProc::start(&redis.url(), false, &[]).await,
        NodeProc::start(&redis.url(), false, &[]).await,
    ];
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(n.client().await);
    }
    // A reference that never leaves, on node 3, from the very beginning.
    let mut reference = watch_after(nodes[2].grpc, T, 0).await;
    let mut w = watch_at(nodes[0].grpc, T).await;
    for (i, c) in clients.iter_mut().enumerate() {
        churn_round(c, &format!("a{i}")).await;
    }
    let _ = claim_on(
        &mut clients[0],
        claim_req(T, "mark-1", "", ConflictPolicy::Reject),
    )
    .await;
    let (before, gaps) = read_until(&mut w, "mark-1").await;
    assert!(gaps.is_empty(), "{gaps:?}");
    let last = before.last().expect("events").sequence;
    drop(w);

    // The watcher is away while every node changes the tenant, sockets
    // included (connected / disconnected on another node than the claim).
    let away = Instant::now();
    for round in 0..10 {
        for i in 0..3 {
            let login = format!("a{i}");
            churn_round(&mut clients[i], &login).await;
            let r = claim_on(
                &mut clients[i],
                claim_req(T, &login, "", ConflictPolicy::Takeover),
            )
            .await;
            let mut ws = connect(nodes[(i + round + 1) % 3].http, &r.token).await;
            ws.expect_type("welcome").await;
            ws.send_json(json!({"type": "status", "status": "busy"}))
                .await;
            ws.ping("after-status").await;
            drop(ws);
        }
    }
    let away = away.elapsed();
    let _ = claim_on(
        &mut clients[1],
        claim_req(T, "mark-2", "", ConflictPolicy::Reject),
    )
    .await;

    // Back on another node, after the last sequence seen.
    let mut back = watch_after(nodes[1].grpc, T, last).await;
    let (resumed, gaps) = read_until(&mut back, "mark-2").await;
    assert!(gaps.is_empty(), "nothing was trimmed: {gaps:?}");
    assert_contiguous(&resumed, last + 1);
    let (all, gaps) = read_until(&mut reference, "mark-2").await;
    assert!(gaps.is_empty(), "{gaps:?}");
    assert_contiguous(&all, 1);
    let want: Vec<Seen> = all.iter().filter(|e| e.sequence > last).map(seen).collect();
    let got: Vec<Seen> = resumed.iter().map(seen).collect();
    assert_eq!(got, want, "the same events as a watcher that never left");
    let changes: HashSet<i32> = got.iter().map(|s| s.2).collect();
    assert!(
        changes.len() >= 5,
        "claims, connects, disconnects, status, ends: {changes:?}"
    );
    eprintln!(
        "away {away:?}: {} events replayed on another node, {} in all",
        resumed.len(),
        all.len()
    );
}

#[tokio::test]
async fn events_lost_with_the_subscription_are_caught_up_from_the_log_and_sockets_told() {
    let redis = RedisServer::start().await;
    let a = NodeProc::start(&redis.url(), false, &[]).await;
    let b = NodeProc::start(&redis.url(), false, &[]).await;
    let mut cb = b.client().await;

    // A supervisor's socket and a WatchPresence stream, both on node a.
    let mut ca = a.client().await;
    let mut req = claim_req(T, "sup", "", ConflictPolicy::Reject);
    req.role = "supervisor".into();
    let sup = claim_on(&mut ca, req).await;
    let mut sup_ws = connect(a.http, &sup.token).await;
    sup_ws.expect_type("welcome").await;
    sup_ws.send_json(json!({"type": "watch_presence"})).await;
    sup_ws.ping("watching").await;
    let mut w = watch_at(a.grpc, T).await;
    let _ = claim_on(&mut cb, claim_req(T, "mark-1", "", ConflictPolicy::Reject)).await;
    let (before, _) = read_until(&mut w, "mark-1").await;
    let last = before.last().expect("events").sequence;

    // Redis drops every subscriber (as it does a slow one) while node b
    // keeps changing the tenant.
    redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    for i in 0..3 {
        churn_round(&mut cb, &format!("c{i}")).await;
    }
    let _ = claim_on(&mut cb, claim_req(T, "mark-2", "", ConflictPolicy::Reject)).await;

    // The stream has every event, from the log where the bus lost them.
    let (after, gaps) = read_until(&mut w, "mark-2").await;
    assert!(gaps.is_empty(), "the log covered the loss: {gaps:?}");
    assert_contiguous(&after, last + 1);
    // The socket cannot resume: it is told to re-read.
    let gap = sup_ws.wait_type("gap").await;
    assert_eq!(gap["reason"], "subscription_lost", "{gap}");
}
