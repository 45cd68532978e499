//! Generations never go backwards: a login's next grant has a larger
//! generation than any grant before it, also after the counter that
//! issues them was lost — an embedded node restarted, Redis flushed or
//! restarted empty, Redis back with an older copy of its data (what a
//! failover to a replica that was behind leaves). Real processes
//! throughout; every wait is bounded.

mod support;

use tokio::process::Command;

use support::procs::{spawn_serve, NodeProc, RedisServer, Served};
use support::*;

const T: &str = "acme";

/// Claims `login` (TAKEOVER, so a live session never gets in the way) on
/// the node at `grpc`, retrying while the registry answers UNAVAILABLE (a
/// Redis that is coming back, recovery); returns the granted generation.
async fn generation_of_a_grant(grpc: std::net::SocketAddr, login: &str) -> u64 {
    let mut c = grpc_client(grpc).await;
    for _ in 0..500 {
        match c
            .claim(claim_req(T, login, "", ConflictPolicy::Takeover))
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                assert_eq!(r.outcome(), ClaimOutcome::Granted, "{r:?}");
                return session_of(&r).generation;
            }
            Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no claim of {login} was answered");
}

/// A few grants of `login` in a row; returns the last generation, checking
/// each is larger than the one before.
async fn grants(grpc: std::net::SocketAddr, login: &str, after: u64) -> u64 {
    let mut last = after;
    for _ in 0..3 {
        let g = generation_of_a_grant(grpc, login).await;
        assert!(g > last, "generation {g} after {last}");
        last = g;
    }
    last
}

/// `turnstile serve` on the embedded registry (no Redis).
async fn embedded_node() -> Served {
    spawn_serve(
        Command::new(env!("CARGO_BIN_EXE_turnstile"))
            .arg("serve")
            .args([
                "--http-listen",
                "127.0.0.1:0",
                "--grpc-listen",
                "127.0.0.1:0",
            ])
            .args(["--signing-key", SECRET, "--node", "solo"])
            .env("RUST_LOG", "warn")
            .kill_on_drop(true),
    )
    .await
}

#[tokio::test]
async fn an_embedded_node_restarted_grants_higher_generations() {
    let mut node = embedded_node().await;
    let before = grants(node.grpc, "ana", 0).await;
    node.child.kill().await.expect("kill -9 the node");

    let node = embedded_node().await;
    grants(node.grpc, "ana", before).await;
}

#[tokio::test]
async fn redis_flushed_or_restarted_empty_grants_higher_generations() {
    let mut redis = RedisServer::start().await;
    let node = NodeProc::start(&redis.url(), false, &[]).await;
    let mut last = grants(node.grpc, "ana", 0).await;

    redis.cmd(&["FLUSHALL"]).await;
    last = grants(node.grpc, "ana", last).await;

    redis.restart_empty().await;
    grants(node.grpc, "ana", last).await;
}

/// Redis comes back with a snapshot taken before the last grants: its
/// epoch key is there, so nothing notices the loss, and the login's counter
/// is the old one — as after a failover to a replica that was behind.
#[tokio::test]
async fn redis_back_with_older_data_grants_higher_generations() {
    let mut redis = RedisServer::start().await;
    let node = NodeProc::start(&redis.url(), false, &[]).await;
    let first = grants(node.grpc, "ana", 0).await;
    redis.cmd(&["SAVE"]).await;
    let last = grants(node.grpc, "ana", first).await;

    redis.restart().await;
    let after = generation_of_a_grant(node.grpc, "ana").await;
    assert!(after > last, "generation {after} after {last}");
}
