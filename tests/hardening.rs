//! Hostile input and authentication at the edge: API keys and their tenant
//! scope, secure-by-default listening, Origin allow-list, admission limits,
//! per-socket message rate, and a client that stops reading.

mod support;

use std::net::SocketAddr;

use support::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use turnstile::config::{ApiKeyConfig, Config};
use turnstile::pb;

const T: &str = "acme";
const ALL_KEY: &str = "key-for-every-tenant-0001";
const ACME_KEY: &str = "key-for-acme-only-000002";

fn with_keys(c: &mut Config) {
    c.api_keys = vec![
        ApiKeyConfig {
            name: "login-service".into(),
            key: ALL_KEY.into(),
            tenant: None,
        },
        ApiKeyConfig {
            name: "acme-portal".into(),
            key: ACME_KEY.into(),
            tenant: turnstile::session::Tenant::parse(T).ok(),
        },
    ];
}

async fn claim_with_key(
    node: &Node,
    key: Option<&str>,
    tenant: &str,
) -> Result<pb::ClaimResponse, tonic::Status> {
    let mut c = node.new_client().await;
    let mut req = tonic::Request::new(claim_req(tenant, "ana", "", ConflictPolicy::Reject));
    if let Some(k) = key {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {k}").parse().expect("metadata"),
        );
    }
    within("Claim", c.claim(req)).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn grpc_calls_need_a_known_api_key() {
    let node = start_with(with_keys).await;
    let e = claim_with_key(&node, None, T).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(
        e.message().contains("authorization"),
        "says what to send: {e:?}"
    );
    let e = claim_with_key(&node, Some("not-a-key-at-all-123"), T)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let r = claim_with_key(&node, Some(ALL_KEY), T)
        .await
        .expect("a valid key");
    assert_eq!(r.outcome(), ClaimOutcome::Granted);
}

#[tokio::test]
async fn a_tenant_scoped_key_cannot_touch_another_tenant() {
    let node = start_with(with_keys).await;
    let r = claim_with_key(&node, Some(ACME_KEY), T)
        .await
        .expect("own tenant");
    assert_eq!(r.outcome(), ClaimOutcome::Granted);
    let e = claim_with_key(&node, Some(ACME_KEY), "globex")
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("acme"), "{e:?}");
    let r = claim_with_key(&node, Some(ALL_KEY), "globex")
        .await
        .expect("unscoped key");
    assert_eq!(r.outcome(), ClaimOutcome::Granted);
}

#[test]
fn listening_publicly_without_keys_is_refused_naming_what_to_set() {
    let mut c = config();
    c.http_listen = "0.0.0.0:0".parse().unwrap();
    c.api_keys.clear();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("api_keys") && e.contains("signing_key"), "{e}");
    with_keys(&mut c);
    c.validate()
        .expect("keys and a signing key make it acceptable");
}

async fn handshake_status(http: SocketAddr, token: &str, origin: Option<&str>) -> Result<(), u16> {
    let mut req = format!("ws://{http}/v1/ws?token={token}")
        .into_client_request()
        .expect("url");
    if let Some(o) = origin {
        req.headers_mut()
            .insert("origin", HeaderValue::from_str(o).expect("header"));
    }
    match within("handshake", tokio_tungstenite::connect_async(req)).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("unexpected handshake error {e}"),
    }
}

#[tokio::test]
async fn only_allowed_origins_may_open_a_socket() {
    let node =
        start_with(|c| c.allowed_origins = Some(vec!["https://agent.example.com".into()])).await;
    let r = node.grant(T, "ana", "").await;
    assert_eq!(
        handshake_status(node.http, &r.token, Some("https://evil.example.net")).await,
        Err(403)
    );
    assert_eq!(
        handshake_status(node.http, &r.token, Some("https://agent.example.com")).await,
        Ok(())
    );
    assert_eq!(
        handshake_status(node.http, &r.token, None).await,
        Ok(()),
        "non-browser clients"
    );
}

#[tokio::test]
async fn sockets_per_ip_are_limited_with_429() {
    let node = start_with(|c| c.max_sockets_per_ip = 2).await;
    let r = node.grant(T, "ana", "").await;
    let (_a, _) = node.connect_welcome(&r.token).await;
    let (_b, _) = node.connect_welcome(&r.token).await;
    assert_eq!(handshake_status(node.http, &r.token, None).await, Err(429));
}

#[tokio::test]
async fn a_socket_over_its_message_rate_is_closed_with_4429() {
    let node = start_with(|c| c.messages_per_second = 5).await;
    let r = node.grant(T, "ana", "").await;
    let (mut ws, _) = node.connect_welcome(&r.token).await;
    for i in 0..30 {
        ws.send_json(serde_json::json!({"type": "ping", "id": format!("p{i}")}))
            .await;
    }
    let err = ws.wait_type("error").await;
    assert_eq!(err["code"], "rate_limited", "{err}");
    ws.expect_close(4429).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_and_freed() {
    let node = start().await;
    let mut watch = node.watch(T).await;
    let r = node.grant(T, "ana", "").await;
    let id = session_of(&r).session_id.clone();
    // A socket that completes the handshake and then never reads again.
    let (ws, _) = node.connect_welcome(&r.token).await;
    watch.expect_for(&id, PresenceChange::Connected).await;
    let text = "x".repeat(2000);
    let mut c = node.new_client().await;
    let mut disconnected = false;
    for i in 0..8000 {
        let sent = c
            .notify(pb::NotifyRequest {
                tenant: T.into(),
                target: Some(pb::notify_request::Target::SessionId(id.clone())),
                notice: Some(pb::Notice {
                    id: format!("n{i}"),
                    kind: "license_expiry".into(),
                    severity: "info".into(),
                    text: text.clone(),
                    ..Default::default()
                }),
            })
            .await
            .expect("Notify")
            .into_inner();
        if sent.delivered == 0 {
            disconnected = true;
            break;
        }
    }
    assert!(
        disconnected,
        "the node stopped queueing for the stalled socket"
    );
    watch.expect_for(&id, PresenceChange::Disconnected).await;
    let (_, metrics) = http_get(node.http, "/metrics").await;
    assert!(
        metrics.contains("turnstile_slow_consumers_total 1"),
        "counted as a slow consumer:\n{metrics}"
    );
    // The node dropped the connection: reading what was buffered ends in
    // the end of the stream, not in more frames forever.
    let mut ws = ws;
    let mut frames = 0usize;
    loop {
        match ws.next_frame().await {
            Frame::Json(_) => frames += 1,
            Frame::Close(..) | Frame::Gone(_) => break,
        }
        assert!(frames <= 8000, "no more than was sent");
    }
}

/// Polls the node's socket count until it is `n` (bounded).
async fn sockets_back_to(node: &Node, n: usize) {
    for _ in 0..500 {
        if node.socket_count() == n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("sockets stayed at {} (expected {n})", node.socket_count());
}

#[tokio::test]
async fn a_slowloris_handshake_is_cut_off_and_leaves_nothing_behind() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = start_with(|c| c.handshake_timeout = std::time::Duration::from_millis(200)).await;
    // Baseline once the node is fully up (its accept loop has spawned the
    // heartbeat sweeper and served one request, whose task has ended).
    assert_eq!(http_get(node.http, "/healthz").await.0, 200);
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let mut tasks_before = alive();
    for _ in 0..25 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        tasks_before = tasks_before.min(alive());
    }
    let mut tcp = tokio::net::TcpStream::connect(node.http)
        .await
        .expect("tcp");
    // Half a request line, then nothing.
    tcp.write_all(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 256];
    let n = within("the node to give up on the handshake", async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return 0,
                Ok(n) => {
                    // A 408 response before the close is fine too.
                    if n > 0 && !buf.starts_with(b"HTTP/1.1 408") {
                        return n;
                    }
                }
            }
        }
    })
    .await;
    assert_eq!(
        n,
        0,
        "closed, not answered: {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert_eq!(node.socket_count(), 0);
    for _ in 0..500 {
        if alive() <= tasks_before {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!(
        "the connection task outlived it: {} alive, {tasks_before} before",
        alive()
    );
}

#[tokio::test]
async fn a_half_open_socket_is_found_by_the_heartbeat_and_freed() {
    pause_time_unless_redis();
    let node = start_with(|c| c.heartbeat = std::time::Duration::from_millis(100)).await;
    let mut watch = node.watch(T).await;
    let r = node.grant(T, "ana", "").await;
    let id = session_of(&r).session_id.clone();
    // The peer vanishes without a FIN: it simply never reads or answers again.
    let (_vanished, _) = node.connect_welcome(&r.token).await;
    assert_eq!(node.socket_count(), 1);
    watch.expect_for(&id, PresenceChange::Disconnected).await;
    sockets_back_to(&node, 0).await;
}

#[tokio::test]
async fn forced_logouts_conflicts_and_auth_failures_are_audited() {
    let node = start().await;
    let r = node.grant(T, "audited", "").await;
    let (mut ws, _) = node.connect_welcome(&r.token).await;
    node.claim(T, "audited", "", ConflictPolicy::Reject).await;
    node.claim(T, "audited", "", ConflictPolicy::Takeover).await;
    ws.wait_type("forced_logout").await;
    let mut bad = node.connect("not-a-token").await;
    bad.wait_type("error").await;
    let (_, metrics) = http_get(node.http, "/metrics").await;
    for event in ["forced_logout", "conflict", "auth_failure"] {
        assert!(
            metrics.contains(&format!(
                "turnstile_audit_events_total{{event=\"{event}\"}}"
            )),
            "{event} is counted:\n{metrics}"
        );
    }
}

/// The lock file carries the releases with the published fixes for the
/// HTTP/2 and WebSocket stacks. `.ci/run` also runs `cargo audit` against
/// the RustSec database (live, or the offline snapshot); this test keeps
/// the floor visible in `cargo test` as well.
#[test]
fn the_lock_file_carries_fixed_versions_of_the_network_stack() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"))
        .expect("Cargo.lock");
    let version = |name: &str| -> Vec<u64> {
        let key = format!("name = \"{name}\"\nversion = \"");
        let at = lock
            .find(&key)
            .unwrap_or_else(|| panic!("{name} in Cargo.lock"));
        let rest = &lock[at + key.len()..];
        rest[..rest.find('"').expect("quote")]
            .split('.')
            .map(|p| p.parse().expect("numeric version"))
            .collect()
    };
    // h2 0.4.4: CONTINUATION flood (RUSTSEC-2024-0332).
    assert!(version("h2") >= vec![0, 4, 4]);
    // tungstenite 0.20.1: header-parsing DoS (RUSTSEC-2023-0065).
    assert!(version("tungstenite") >= vec![0, 20, 1]);
    // hyper 1.x (the 0.14 line's request smuggling fixes predate 1.0).
    assert!(version("hyper") >= vec![1, 0, 0]);
    // rustls 0.23.5+: the close_notify busy-loop fix (RUSTSEC-2024-0336 was < 0.23.5).
    assert!(version("rustls") >= vec![0, 23, 5]);
}

/// `rsa` has an advisory with no fixed release (RUSTSEC-2023-0071, the
/// Marvin timing attack) and turnstile never uses an RSA key, so it must not
/// be compiled at all: jsonwebtoken runs on our own HS256/EdDSA provider
/// (`src/jwt_crypto.rs`) instead of its `rust_crypto` backend.
#[test]
fn rsa_is_not_compiled() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"))
        .expect("Cargo.lock");
    assert!(
        !lock.contains("name = \"rsa\"\n"),
        "rsa is back in Cargo.lock; `cargo tree -i rsa` shows who brings it"
    );
}

/// `metrics_listen` moves `/metrics` off the public WebSocket port: the
/// separate listener serves it (with the session census), the public one
/// answers 404 for it.
#[tokio::test]
async fn metrics_can_be_served_on_their_own_listener_only() {
    let mut cfg = config();
    cfg.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let server = within("server start", turnstile::server::start(cfg))
        .await
        .expect("server starts");
    let metrics = server.metrics_addr.expect("a metrics listener");
    assert_ne!(metrics, server.http_addr);
    let mut c = grpc_client(server.grpc_addr).await;
    let r = claim_on(&mut c, claim_req(T, "ana", "", ConflictPolicy::Reject)).await;
    let mut ws = connect(server.http_addr, &r.token).await;
    ws.expect_type("welcome").await;

    let (status, body) = http_get(metrics, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.lines()
            .any(|l| l.starts_with("turnstile_sessions{state=\"connected\"}")),
        "no session census in:\n{body}"
    );
    assert_eq!(http_get(metrics, "/healthz").await.0, 200);
    let (status, body) = http_get(server.http_addr, "/metrics").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("metrics_listen"), "{body}");
    server.shutdown().await;
}
