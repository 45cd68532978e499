//! The WebSocket side: welcome, resume within grace, expiry (rule 4),
//! tombstones (rule 5), the client protocol and its limits.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;
use turnstile::pb;

const T: &str = "acme";

#[tokio::test]
async fn welcome_describes_the_session() {
    let node = start_with(|c| {
        c.heartbeat = Duration::from_secs(7);
        c.grace = Duration::from_secs(42);
    })
    .await;
    let r = node.grant(T, "ana", "s1").await;
    let s = session_of(&r);
    let (mut ws, w) = node.connect_welcome(&r.token).await;
    assert_eq!(w["session_id"], s.session_id.as_str(), "{w}");
    assert_eq!(w["tenant"], T);
    assert_eq!(w["login"], "ana");
    assert_eq!(w["station"], "s1");
    assert_eq!(w["generation"], s.generation);
    assert_eq!(w["resumed"], false);
    assert_eq!(w["heartbeat_ms"], 7000);
    assert_eq!(w["grace_ms"], 42000);
    ws.ping("p1").await;
    let s = node.get_by_id(T, &s.session_id).await.unwrap();
    assert_eq!(s.state(), SessionState::Connected);
    node.shutdown().await;
}

#[tokio::test]
async fn the_token_is_accepted_in_the_query_string() {
    let node = start().await;
    let r = node.grant(T, "ana", "").await;
    let mut ws = node.connect_query(&r.token).await;
    let w = ws.expect_type("welcome").await;
    assert_eq!(w["login"], "ana");
    node.shutdown().await;
}

#[tokio::test]
async fn app_level_ping_is_answered_with_the_same_id() {
    let node = start().await;
    let r = node.grant(T, "ana", "").await;
    let (mut ws, _) = node.connect_welcome(&r.token).await;
    ws.send_json(json!({"type": "ping", "id": "abc-123"})).await;
    let pong = ws.expect_type("pong").await;
    assert_eq!(pong["id"], "abc-123");
    ws.send_json(json!({"type": "ping", "id": 42})).await;
    let pong = ws.expect_type("pong").await;
    assert_eq!(pong["id"], 42, "the id is echoed as sent: {pong}");
    node.shutdown().await;
}

#[tokio::test]
async fn a_pending_session_nobody_connects_to_expires() {
    pause_time_unless_redis();
    let node = start_with(|c| c.connect_timeout = Duration::from_millis(300)).await;
    let mut watch = node.watch(T).await;
    let r = node.grant(T, "ana", "s1").await;
    let id = session_of(&r).session_id.clone();
    let s = node
        .session_after(&mut watch, T, &id, PresenceChange::Ended)
        .await;
    assert_eq!(s.state(), SessionState::Ended);
    assert_eq!(s.end_reason(), EndReason::Expired);
    // Login and station are free again.
    node.grant(T, "ana", "s1").await;
    // The late token learns why.
    let mut ws = node.connect(&r.token).await;
    let fl = ws.expect_type("forced_logout").await;
    assert_eq!(fl["reason"], "expired", "{fl}");
    ws.expect_close(4004).await;
    node.shutdown().await;
}

#[tokio::test]
async fn a_dropped_socket_leaves_the_session_disconnected_and_a_reconnect_resumes_it() {
    let node = start().await; // default grace: 60 s
    let mut watch = node.watch(T).await;
    let r = node.grant(T, "ana", "s1").await;
    let id = session_of(&r).session_id.clone();
    let (ws, w) = node.connect_welcome(&r.token).await;
    assert_eq!(w["resumed"], false);
    ws.close().await;
    let s = node
        .session_after(&mut watch, T, &id, PresenceChange::Disconnected)
        .await;
    assert_eq!(s.state(), SessionState::Disconnected);
    // The login is still held while inside grace.
    let c = node.claim(T, "ana", "", ConflictPolicy::Reject).await;
    assert_eq!(c.outcome(), ClaimOutcome::LoginInUse);

    let (mut ws, w) = node.connect_welcome(&r.token).await;
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(w["session_id"], id.as_str());
    let s = node
        .session_after(&mut watch, T, &id, PresenceChange::Reconnected)
        .await;
    assert_eq!(s.state(), SessionState::Connected);
    ws.ping("after-resume").await;
    node.shutdown().await;
}

#[tokio::test]
async fn a_socket_dropped_without_a_close_frame_also_disconnects() {
    let node = start().await;
    let mut watch = node.watch(T).await;
    let r = node.grant(T, "ana", "").await;
    let id = session_of(&r).session_id.clone();
    let (ws, _) = node.connect_welcome(&r.token).await;
    drop(ws); // TCP goes away with no close handshake
    let s = node
        .session_after(&mut watch, T, &id, PresenceChange::Disconnected)
        .await;
    assert_eq!(s.state(), SessionState::Disconnected);
    node.shutdown().await;
}

#[tokio::test]
async fn a_disconnected_session_expires_after_grace() {
    pause_time_unless_redis();
    let node = start_with(|c| c.grace = Duration::from_millis(300)).await;
    let mut watch = node.watch(T).await;
    let r = node.grant(T, "ana", "s1").await;
    let id = session_of(&r).session_id.clone();
    let (ws, _) = node.connect_welcome(&r.token).await;
    ws.close().await;
    watch.expect_for(&id, PresenceChange::Disconnected).await;
    let s = node
        .session_after(&mut watch, T, &id, PresenceChange::Ended)
        .await;
    assert_eq!(s.state(), SessionState::Ended);
    assert_eq!(s.end_reason(), EndReason::Expired);
    let mut ws = node.connect(&r.token).await;
    let fl = ws.expect_type("forced_logout").await;
    assert_eq!(fl["reason"], "expired", "{fl}");
    ws.expect_close(4004).await;
    node.grant(T, "ana", "s1").await;
    node.shutdown().await;
}

#[tokio::test]
async fn a_session_stays_connected_while_one_of_its_sockets_is_open() {
    let node = start().await;
    let mut watch = node.watch(T).await;
    let r = node.grant(T, "ana", "").await;
    let id = session_of(&r).session_id.clone();
    let (a, _) = node.connect_welcome(&r.token).await;
    let (mut b, _) = node.connect_welcome(&r.token).await;
    a.close().await;
    // The remaining socket still works and the session is still CONNECTED.
    b.ping("b-alive").await;
    let s = node.get_by_id(T, &id).await.unwrap();
    assert_eq!(s.state(), SessionState::Connected);
    b.close().await;
    let s = node
        .session_after(&mut watch, T, &id, PresenceChange::Disconnected)
        .await;
    assert_eq!(s.state(), SessionState::Disconnected);
    node.shutdown().await;
}

#[tokio::test]
async fn a_silent_socket_is_declared_dead_by_the_heartbeat() {
    pause_time_unless_redis();
    let node = start_with(|c| c.heartbeat = Duration::from_millis(100)).await;
    let mut watch = node.watch(T).await;
    let r = node.grant(T, "ana", "").await;
    let id = session_of(&r).session_id.clone();
    // Read the welcome, then never read again: the client's WebSocket library
    // only answers pings while it is being read, so this socket is silent.
    let (_silent, _) = node.connect_welcome(&r.token).await;
    let s = node
        .session_after(&mut watch, T, &id, PresenceChange::Disconnected)
        .await;
    assert_eq!(s.state(), SessionState::Disconnected);
    node.shutdown().await;
}

#[tokio::test]
async fn a_socket_that_answers_heartbeats_stays_up() {
    pause_time_unless_redis();
    let node = start_with(|c| c.heartbeat = Duration::from_millis(50)).await;
    let r = node.grant(T, "ana", "").await;
    let (mut ws, _) = node.connect_welcome(&r.token).await;
    // Several heartbeat periods pass (each marked by the server's ping) while
    // we keep reading, and so answering them.
    ws.await_server_pings(6).await;
    ws.ping("alive").await;
    let s = node.get_by_id(T, &session_of(&r).session_id).await.unwrap();
    assert_eq!(s.state(), SessionState::Connected);
    node.shutdown().await;
}

#[tokio::test]
async fn the_clients_logout_ends_the_session() {
    let node = start().await;
    let r = node.grant(T, "ana", "s1").await;
    let id = session_of(&r).session_id.clone();
    let (mut ws, _) = node.connect_welcome(&r.token).await;
    ws.send_json(json!({"type": "logout"})).await;
    ws.expect_type("logged_out").await;
    ws.expect_close(4000).await;
    let s = node.get_by_id(T, &id).await.unwrap();
    assert_eq!(s.state(), SessionState::Ended);
    assert_eq!(s.end_reason(), EndReason::LoggedOut);
    node.grant(T, "ana", "s1").await;
    node.shutdown().await;
}

#[tokio::test]
async fn a_superseded_token_presented_later_is_told_why() {
    let node = start().await;
    let first = node.grant(T, "ana", "s1").await;
    let r = node.claim(T, "ana", "s1", ConflictPolicy::Takeover).await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted);
    // The first session never had a socket; its token is answered anyway.
    let mut ws = node.connect(&first.token).await;
    let fl = ws
        .expect_forced_logout("superseded", SUPERSEDED_MSG, 4001)
        .await;
    assert_eq!(fl["by"]["client"], "desktop", "{fl}");
    // And a station change tombstone answers with its own reason.
    let third = node.claim(T, "ana", "s2", ConflictPolicy::Takeover).await;
    assert_eq!(third.outcome(), ClaimOutcome::Granted);
    let mut ws = node.connect(&r.token).await;
    ws.expect_forced_logout("station_changed", STATION_CHANGED_MSG, 4002)
        .await;
    node.shutdown().await;
}

#[tokio::test]
async fn malformed_and_unknown_messages_get_an_error_and_the_socket_stays_up() {
    let node = start().await;
    let r = node.grant(T, "ana", "").await;
    let (mut ws, _) = node.connect_welcome(&r.token).await;
    for bad in [
        "{not json",
        "[]",
        r#"{"no_type": 1}"#,
        r#"{"type": "dance"}"#,
        r#"{"type": "status"}"#,
    ] {
        ws.send_text(bad).await;
        let e = ws.expect_type("error").await;
        assert!(
            e["code"].as_str().is_some_and(|c| !c.is_empty()),
            "error for {bad:?} has a code: {e}"
        );
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error for {bad:?} has a message: {e}"
        );
        ws.ping(&format!("after {bad}")).await;
    }
    node.shutdown().await;
}

#[tokio::test]
async fn a_message_over_the_limit_closes_with_1009() {
    let node = start_with(|c| c.max_message_bytes = 1024).await;
    let r = node.grant(T, "ana", "").await;
    let (mut ws, _) = node.connect_welcome(&r.token).await;
    // Just under the limit is fine.
    let id = "x".repeat(900);
    ws.ping(&id).await;
    let big = json!({"type": "ping", "id": "y".repeat(4096)});
    ws.send_json(big).await;
    match ws.next_frame().await {
        Frame::Close(Some(code), _) => assert_eq!(code, 1009),
        Frame::Json(v) if v["type"] == "error" => {
            ws.expect_close(1009).await;
        }
        other => panic!("expected close 1009, got {other:?}"),
    }
    node.shutdown().await;
}

#[tokio::test]
async fn a_fifth_socket_of_one_session_is_refused_with_4403() {
    let node = start().await; // default: 4 sockets per session
    let r = node.grant(T, "ana", "").await;
    let mut open = Vec::new();
    for _ in 0..4 {
        let (ws, _) = node.connect_welcome(&r.token).await;
        open.push(ws);
    }
    let mut fifth = node.connect(&r.token).await;
    match fifth.next_frame().await {
        Frame::Close(Some(code), _) => assert_eq!(code, 4403),
        Frame::Json(v) => {
            assert_eq!(v["type"], "error", "the 5th socket is not welcomed: {v}");
            fifth.expect_close(4403).await;
        }
        other => panic!("expected close 4403, got {other:?}"),
    }
    for (i, ws) in open.iter_mut().enumerate() {
        ws.ping(&format!("still-{i}")).await;
    }
    // Closing one makes room again.
    open.pop().unwrap().close().await;
    let (mut again, w) = node.connect_welcome(&r.token).await;
    assert_eq!(w["login"], "ana");
    again.ping("room").await;
    node.shutdown().await;
}

#[tokio::test]
async fn the_socket_limit_is_configurable() {
    let node = start_with(|c| c.max_sockets_per_session = 1).await;
    let r = node.grant(T, "ana", "").await;
    let (mut first, _) = node.connect_welcome(&r.token).await;
    let mut second = node.connect(&r.token).await;
    loop {
        match second.next_frame().await {
            Frame::Json(v) if v["type"] == "error" => continue,
            Frame::Close(Some(code), _) => {
                assert_eq!(code, 4403);
                break;
            }
            other => panic!("expected close 4403, got {other:?}"),
        }
    }
    first.ping("first").await;
    node.shutdown().await;
}

#[tokio::test]
async fn release_of_a_disconnected_session_ends_it_and_the_token_is_then_refused() {
    let node = start().await;
    let mut watch = node.watch(T).await;
    let r = node.grant(T, "ana", "").await;
    let id = session_of(&r).session_id.clone();
    let (ws, _) = node.connect_welcome(&r.token).await;
    ws.close().await;
    watch.expect_for(&id, PresenceChange::Disconnected).await;
    let mut c = node.client.clone();
    within(
        "Release",
        c.release(pb::ReleaseRequest {
            tenant: T.into(),
            session_id: id.clone(),
        }),
    )
    .await
    .unwrap();
    let mut late = node.connect(&r.token).await;
    // A logged-out session's token ends with 4000 after one frame saying so.
    let f = late.next_json().await;
    assert!(
        f["type"] == "logged_out" || f["type"] == "forced_logout",
        "the late token is told: {f}"
    );
    late.expect_close(4000).await;
    node.shutdown().await;
}
