//! Server-pushed `connectivity` frames: a real node on a real
//! `redis-server` tells its connected sockets when it can no longer vouch
//! for their sessions (Redis gone, pub/sub lost) and when it can again; a
//! socket opened while the node is degraded is told right after `welcome`.
//!
//! Nodes run with a 1 s lease, so the node notices within one lease
//! interval; every wait is bounded by the support helpers.

mod support;

use serde_json::Value;
use support::procs::{NodeProc, RedisServer};
use support::*;
use turnstile::connectivity::{Cause, Connectivity};

const T: &str = "acme";

async fn agent_on(node: &NodeProc, login: &str) -> Ws {
    let mut c = node.client().await;
    let r = within(
        "Claim",
        c.claim(claim_req(T, login, "", ConflictPolicy::Reject)),
    )
    .await
    .expect("Claim succeeds")
    .into_inner();
    assert_eq!(r.outcome(), ClaimOutcome::Granted, "{r:?}");
    let mut ws = connect(node.http, &r.token).await;
    ws.expect_type("welcome").await;
    ws
}

/// The next `connectivity` frame (skipping nothing else: none is expected).
async fn next_connectivity(ws: &mut Ws) -> Value {
    ws.expect_type("connectivity").await
}

/// `turnstile_degraded` on `node`'s `/metrics`.
async fn degraded_gauge(node: &NodeProc) -> f64 {
    let (_, body) = http_get(node.http, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix("turnstile_degraded ")?.trim().parse().ok())
        .expect("the turnstile_degraded gauge")
}

/// `turnstile_ready` (what `/readyz` answers) on `node`'s `/metrics`.
async fn ready_gauge(node: &NodeProc) -> f64 {
    let (_, body) = http_get(node.http, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix("turnstile_ready ")?.trim().parse().ok())
        .expect("the turnstile_ready gauge")
}

#[tokio::test]
async fn sockets_are_told_when_redis_goes_away_and_when_it_is_back() {
    let mut redis = RedisServer::start().await;
    let node = NodeProc::start(&redis.url(), false, &[]).await;
    let mut ws = agent_on(&node, "ana").await;

    redis.kill().await;
    // The subscription may be noticed lost first; the lease failing makes
    // the cause `redis_unreachable`. Every frame until then is degraded.
    let mut since = None;
    let mut bounded = 0;
    loop {
        bounded += 1;
        assert!(bounded < 10, "too many connectivity frames");
        let v = next_connectivity(&mut ws).await;
        assert_eq!(v["state"], "degraded", "{v}");
        let s = v["since_ms"].as_i64().expect("since_ms");
        // Still the same outage: its start does not move.
        assert_eq!(*since.get_or_insert(s), s, "{v}");
        if v["cause"] == "redis_unreachable" {
            break;
        }
        let cause = v["cause"].as_str().unwrap_or_default();
        assert!(
            ["subscription_lost", "lease_unconfirmed"].contains(&cause),
            "{v}"
        );
    }

    assert_eq!(degraded_gauge(&node).await, 1.0);
    assert_eq!(ready_gauge(&node).await, 0.0);

    redis.restart().await;
    // The lease comes back before the subscription: the cause may change
    // on the way, then the node is ok.
    for _ in 0..10 {
        let v = next_connectivity(&mut ws).await;
        if v["state"] == "ok" {
            assert_eq!(
                v,
                serde_json::json!({"type": "connectivity", "state": "ok"})
            );
            assert_eq!(degraded_gauge(&node).await, 0.0);
            return;
        }
        assert_eq!(v["since_ms"].as_i64(), since, "{v}");
    }
    panic!("no ok after redis came back");
}

#[tokio::test]
async fn a_lost_subscription_is_reported_then_cleared() {
    let redis = RedisServer::start().await;
    let node = NodeProc::start(&redis.url(), false, &[]).await;
    let mut ws = agent_on(&node, "ana").await;

    redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    let v = next_connectivity(&mut ws).await;
    assert_eq!(v["state"], "degraded", "{v}");
    assert_eq!(v["cause"], "subscription_lost", "{v}");
    assert!(v["since_ms"].as_i64().is_some(), "{v}");
    // Resubscribed (the connection answers again): ok.
    let v = next_connectivity(&mut ws).await;
    assert_eq!(v["state"], "ok", "{v}");
}

#[tokio::test]
async fn a_socket_opened_while_degraded_is_told_right_after_welcome() {
    let node = start().await;
    let claim = node.grant(T, "ana", "").await;
    let mut before = node.connect(&claim.token).await;
    before.expect_type("welcome").await;

    node.server()
        .connectivity_switch()
        .set(Connectivity::degraded(Cause::SubscriptionLost));
    let v = before.expect_type("connectivity").await;
    assert_eq!(v["cause"], "subscription_lost", "{v}");

    let mut after = node.connect(&claim.token).await;
    after.expect_type("welcome").await;
    let v = after.expect_type("connectivity").await;
    assert_eq!(v["state"], "degraded", "{v}");
    assert_eq!(v["cause"], "subscription_lost", "{v}");

    node.server().connectivity_switch().set(Connectivity::Ok);
    for ws in [&mut before, &mut after] {
        let v = ws.expect_type("connectivity").await;
        assert_eq!(v["state"], "ok", "{v}");
    }
    // Once ok, a new socket hears nothing after welcome but what it asks for.
    let mut third = node.connect(&claim.token).await;
    third.expect_type("welcome").await;
    third
        .send_json(serde_json::json!({"type": "ping", "id": 1}))
        .await;
    third.expect_type("pong").await;
    node.shutdown().await;
}
