//! Notices (delivered now, or queued and delivered once on reconnect) and
//! presence (WatchPresence over gRPC, `watch_presence` over a socket).

mod support;

use serde_json::{json, Value};
use support::*;
use turnstile::pb;

const T: &str = "acme";

fn notice(id: &str) -> pb::Notice {
    pb::Notice {
        id: id.into(),
        kind: "password_expiry".into(),
        severity: "warning".into(),
        text: "Your password expires in 15 days.".into(),
        data_json: r#"{"days_left":15}"#.into(),
        expires_at_ms: 0,
    }
}

async fn notify(
    node: &Node,
    target: pb::notify_request::Target,
    n: pb::Notice,
) -> pb::NotifyResponse {
    let mut c = node.client.clone();
    within(
        "Notify",
        c.notify(pb::NotifyRequest {
            tenant: T.into(),
            target: Some(target),
            notice: Some(n),
        }),
    )
    .await
    .expect("Notify succeeds")
    .into_inner()
}

fn assert_notice(frame: &Value, id: &str) {
    assert_eq!(frame["type"], "notice", "{frame}");
    let n = &frame["notice"];
    assert_eq!(n["id"], id, "{frame}");
    assert_eq!(n["kind"], "password_expiry", "{frame}");
    assert_eq!(n["severity"], "warning", "{frame}");
    assert_eq!(n["text"], "Your password expires in 15 days.", "{frame}");
    assert_eq!(n["data"], json!({"days_left": 15}), "{frame}");
    assert!(
        n["expires_at_ms"].as_i64().unwrap_or(0) > 0,
        "the broker default expiry is filled in: {frame}"
    );
}

#[tokio::test]
async fn a_notice_to_a_connected_session_is_delivered_at_once() {
    let node = start().await;
    let r = node.grant(T, "ana", "").await;
    let id = session_of(&r).session_id.clone();
    let (mut ws, _) = node.connect_welcome(&r.token).await;
    let (mut ws2, _) = node.connect_welcome(&r.token).await;
    let resp = notify(
        &node,
        pb::notify_request::Target::SessionId(id),
        notice("n1"),
    )
    .await;
    assert_eq!((resp.delivered, resp.queued), (1, 0), "{resp:?}");
    assert_notice(&ws.expect_type("notice").await, "n1");
    // Every socket of the session receives it.
    assert_notice(&ws2.expect_type("notice").await, "n1");
    node.shutdown().await;
}

#[tokio::test]
async fn a_notice_to_a_disconnected_session_is_queued_and_delivered_once_on_reconnect() {
    let node = start().await;
    let mut watch = node.watch(T).await;
    let r = node.grant(T, "ana", "").await;
    let id = session_of(&r).session_id.clone();
    let (ws, _) = node.connect_welcome(&r.token).await;
    ws.close().await;
    watch.expect_for(&id, PresenceChange::Disconnected).await;

    let resp = notify(
        &node,
        pb::notify_request::Target::Login("ana".into()),
        notice("n1"),
    )
    .await;
    assert_eq!((resp.delivered, resp.queued), (0, 1), "{resp:?}");

    // Reconnect: welcome (resumed), then the notice, exactly once.
    let (mut ws, w) = node.connect_welcome(&r.token).await;
    assert_eq!(w["resumed"], true);
    assert_notice(&ws.expect_type("notice").await, "n1");
    ws.send_json(json!({"type": "ping", "id": "after-notice"}))
        .await;
    let pong = ws.expect_type("pong").await; // no duplicate notice in between
    assert_eq!(pong["id"], "after-notice");

    // Not acked yet: a later reconnect gets it again (once).
    ws.close().await;
    watch.expect_for(&id, PresenceChange::Disconnected).await;
    let (mut ws, _) = node.connect_welcome(&r.token).await;
    assert_notice(&ws.expect_type("notice").await, "n1");
    ws.send_json(json!({"type": "ack", "notice_id": "n1"}))
        .await;
    ws.ping("ack-processed").await;
    ws.close().await;
    watch.expect_for(&id, PresenceChange::Disconnected).await;

    // Acked: never again.
    let (mut ws, _) = node.connect_welcome(&r.token).await;
    ws.send_json(json!({"type": "ping", "id": "no-notice"}))
        .await;
    let next = ws.expect_type("pong").await;
    assert_eq!(next["id"], "no-notice");
    node.shutdown().await;
}

#[tokio::test]
async fn a_notice_to_a_login_without_a_session_waits_for_its_next_session() {
    let node = start().await;
    let resp = notify(
        &node,
        pb::notify_request::Target::Login("ana".into()),
        notice("welcome-back"),
    )
    .await;
    assert_eq!((resp.delivered, resp.queued), (0, 1), "{resp:?}");
    let r = node.grant(T, "ana", "").await;
    let (mut ws, w) = node.connect_welcome(&r.token).await;
    assert_eq!(w["resumed"], false);
    assert_notice(&ws.expect_type("notice").await, "welcome-back");
    ws.send_json(json!({"type": "ping", "id": "once"})).await;
    ws.expect_type("pong").await;
    node.shutdown().await;
}

#[tokio::test]
async fn a_notice_to_all_sessions_reaches_connected_and_queues_for_pending() {
    let node = start().await;
    let a = node.grant(T, "ana", "").await;
    let b = node.grant(T, "bob", "").await;
    node.grant("other", "carl", "").await;
    let (mut wa, _) = node.connect_welcome(&a.token).await;
    let resp = notify(
        &node,
        pb::notify_request::Target::AllSessions(true),
        notice("all"),
    )
    .await;
    assert_eq!((resp.delivered, resp.queued), (1, 1), "{resp:?}");
    assert_notice(&wa.expect_type("notice").await, "all");
    let (mut wb, _) = node.connect_welcome(&b.token).await;
    assert_notice(&wb.expect_type("notice").await, "all");
    node.shutdown().await;
}

#[tokio::test]
async fn a_notice_with_the_same_id_replaces_the_queued_one() {
    let node = start().await;
    notify(
        &node,
        pb::notify_request::Target::Login("ana".into()),
        notice("n1"),
    )
    .await;
    let mut second = notice("n1");
    second.text = "Your password expires in 14 days.".into();
    notify(
        &node,
        pb::notify_request::Target::Login("ana".into()),
        second,
    )
    .await;
    let r = node.grant(T, "ana", "").await;
    let (mut ws, _) = node.connect_welcome(&r.token).await;
    let n = ws.expect_type("notice").await;
    assert_eq!(
        n["notice"]["text"], "Your password expires in 14 days.",
        "{n}"
    );
    ws.send_json(json!({"type": "ping", "id": "one"})).await;
    ws.expect_type("pong").await;
    node.shutdown().await;
}

#[tokio::test]
async fn watch_presence_sees_the_whole_life_of_a_session() {
    let node = start().await;
    let mut watch = node.watch(T).await;
    let r = node.grant(T, "ana", "s1").await;
    let id = session_of(&r).session_id.clone();

    let ev = watch.next().await;
    assert_eq!(ev.change(), PresenceChange::Claimed, "{ev:?}");
    assert_eq!(ev.tenant, T);
    assert_eq!(ev.session.as_ref().unwrap().session_id, id);
    assert!(ev.at_ms > 0);

    let (mut ws, _) = node.connect_welcome(&r.token).await;
    let ev = watch.next().await;
    assert_eq!(ev.change(), PresenceChange::Connected, "{ev:?}");
    assert_eq!(
        ev.session.as_ref().unwrap().state(),
        SessionState::Connected
    );

    ws.send_json(json!({"type": "status", "status": "away"}))
        .await;
    let ev = watch.next().await;
    assert_eq!(ev.change(), PresenceChange::StatusChanged, "{ev:?}");
    assert_eq!(ev.status, "away");
    assert_eq!(ev.session.as_ref().unwrap().status, "away");
    assert_eq!(node.get_by_id(T, &id).await.unwrap().status, "away");

    ws.close().await;
    let ev = watch.next().await;
    assert_eq!(ev.change(), PresenceChange::Disconnected, "{ev:?}");

    let (ws, w) = node.connect_welcome(&r.token).await;
    assert_eq!(w["resumed"], true);
    let ev = watch.next().await;
    assert_eq!(ev.change(), PresenceChange::Reconnected, "{ev:?}");
    drop(ws);
    let ev = watch.next().await;
    assert_eq!(ev.change(), PresenceChange::Disconnected, "{ev:?}");

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
    let ev = watch.next().await;
    assert_eq!(ev.change(), PresenceChange::Ended, "{ev:?}");
    let s = ev.session.unwrap();
    assert_eq!(s.state(), SessionState::Ended);
    assert_eq!(s.end_reason(), EndReason::LoggedOut);
    node.shutdown().await;
}

#[tokio::test]
async fn watch_presence_is_per_tenant() {
    let node = start().await;
    let mut watch = node.watch(T).await;
    node.grant("other", "ana", "").await;
    let mine = node.grant(T, "bob", "").await;
    let ev = watch.next().await;
    assert_eq!(ev.tenant, T, "no event of another tenant: {ev:?}");
    assert_eq!(ev.session.unwrap().session_id, session_of(&mine).session_id);
    node.shutdown().await;
}

#[tokio::test]
async fn a_takeover_shows_ended_then_claimed() {
    let node = start().await;
    let mut watch = node.watch(T).await;
    let first = node.grant(T, "ana", "").await;
    watch
        .expect_for(&session_of(&first).session_id, PresenceChange::Claimed)
        .await;
    let second = node.claim(T, "ana", "", ConflictPolicy::Takeover).await;
    let ev = watch.next().await;
    assert_eq!(ev.change(), PresenceChange::Ended, "{ev:?}");
    let ended = ev.session.unwrap();
    assert_eq!(ended.session_id, session_of(&first).session_id);
    assert_eq!(ended.end_reason(), EndReason::Superseded);
    let ev = watch.next().await;
    assert_eq!(ev.change(), PresenceChange::Claimed, "{ev:?}");
    assert_eq!(
        ev.session.unwrap().session_id,
        session_of(&second).session_id
    );
    node.shutdown().await;
}

#[tokio::test]
async fn socket_watch_presence_is_forbidden_for_agents() {
    let node = start().await;
    let r = node.grant_role(T, "ana", "agent").await;
    let (mut ws, _) = node.connect_welcome(&r.token).await;
    ws.send_json(json!({"type": "watch_presence"})).await;
    let e = ws.expect_type("error").await;
    assert_eq!(e["code"], "forbidden", "{e}");
    // The socket stays up, and sees no presence.
    node.grant(T, "bob", "").await;
    ws.send_json(json!({"type": "ping", "id": "after"})).await;
    let p = ws.expect_type("pong").await;
    assert_eq!(p["id"], "after");
    node.shutdown().await;
}

#[tokio::test]
async fn socket_watch_presence_works_for_supervisors() {
    let node = start().await;
    let sup = node.grant_role(T, "sam", "supervisor").await;
    let (mut ws, _) = node.connect_welcome(&sup.token).await;
    ws.send_json(json!({"type": "watch_presence"})).await;
    // Frames of one socket are handled in order: once the pong is back the
    // subscription is in place.
    ws.ping("subscribed").await;

    let agent = node.grant(T, "ana", "s1").await;
    let id = session_of(&agent).session_id.clone();
    let p = ws.wait_type("presence").await;
    assert_eq!(p["change"], "claimed", "{p}");
    assert_eq!(p["session"]["session_id"], id.as_str(), "{p}");
    assert_eq!(p["session"]["login"], "ana", "{p}");
    assert_eq!(p["session"]["station"], "s1", "{p}");
    assert!(p["at_ms"].as_i64().unwrap_or(0) > 0, "{p}");

    let (mut aws, _) = node.connect_welcome(&agent.token).await;
    let p = ws.wait_type("presence").await;
    assert_eq!(p["change"], "connected", "{p}");
    aws.send_json(json!({"type": "status", "status": "busy"}))
        .await;
    let p = ws.wait_type("presence").await;
    assert_eq!(p["change"], "status_changed", "{p}");
    assert_eq!(p["status"], "busy", "{p}");

    // Another tenant's sessions are not shown.
    node.grant("other", "zed", "").await;
    aws.close().await;
    let p = ws.wait_type("presence").await;
    assert_eq!(p["change"], "disconnected", "{p}");
    assert_eq!(p["session"]["login"], "ana", "{p}");
    node.shutdown().await;
}
