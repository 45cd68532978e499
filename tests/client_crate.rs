//! The `turnstile-client` crate against a real node: what an agent
//! application or a login service written in Rust sees.

mod support;

use support::*;
use turnstile_client::pb as cpb;
use turnstile_client::{AgentSocket, Broker, ConnectOptions, ServerFrame};

fn req(login: &str, policy: cpb::ConflictPolicy) -> cpb::ClaimRequest {
    cpb::ClaimRequest {
        tenant: "acme".into(),
        login: login.into(),
        client: "desktop".into(),
        role: "agent".into(),
        on_conflict: policy as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_rust_agent_signs_in_is_taken_over_and_told_why() {
    let node = start().await;
    let mut broker = within("connect", Broker::connect(&node.grpc.to_string()))
        .await
        .expect("broker");
    let mut presence = within("watch", broker.watch_presence("acme"))
        .await
        .expect("watch");
    let first = broker
        .claim(req("ana", cpb::ConflictPolicy::Reject))
        .await
        .expect("claim");
    assert_eq!(first.outcome(), cpb::ClaimOutcome::Granted);
    let mut socket = within(
        "socket",
        AgentSocket::connect(node.http, &first.token, &ConnectOptions::default()),
    )
    .await
    .expect("socket");
    let welcome = within("welcome", socket.next_frame()).await.expect("frame");
    assert!(
        matches!(welcome, ServerFrame::Welcome { resumed: false, .. }),
        "{welcome:?}"
    );
    socket.send_ping("p1").await.expect("ping");
    assert_eq!(
        within("pong", socket.next_frame()).await.expect("frame"),
        ServerFrame::Pong(serde_json::json!("p1"))
    );
    let refused = broker
        .claim(req("ana", cpb::ConflictPolicy::Reject))
        .await
        .expect("claim");
    assert_eq!(refused.outcome(), cpb::ClaimOutcome::LoginInUse);
    broker
        .claim(req("ana", cpb::ConflictPolicy::Takeover))
        .await
        .expect("takeover");
    match within("forced logout", socket.next_frame())
        .await
        .expect("frame")
    {
        ServerFrame::ForcedLogout { reason, message } => {
            assert_eq!(reason, "superseded");
            assert_eq!(message, SUPERSEDED_MSG);
        }
        other => panic!("expected forced_logout, got {other:?}"),
    }
    assert_eq!(
        within("close", socket.next_frame()).await.expect("frame"),
        ServerFrame::Closed {
            code: Some(4001),
            reason: "superseded".into()
        }
    );
    let ev = within("presence", presence.message())
        .await
        .expect("stream")
        .expect("event")
        .event
        .expect("a response carries an event");
    assert_eq!(ev.change(), cpb::PresenceChange::Claimed);
    node.shutdown().await;
}
