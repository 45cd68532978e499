//! A retried claim runs once. A node that loses the connection to Redis
//! while a claim is in flight cannot know whether the claim ran; it sends
//! it again, and the claim script recognises its own request (the session
//! id minted for it) and answers the first grant instead of granting again.
//! A login service whose own call timed out after the claim committed
//! recovers as docs/protocol.md says, without waiting out connect_timeout.
//!
//! Real processes: `redis-server`, `turnstile serve`, and between them a
//! TCP proxy in this test that passes the claim to Redis and then drops
//! the connection instead of passing back the reply, once.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::procs::{NodeProc, RedisServer};
use support::*;
use turnstile::pb;

const T: &str = "acme";

/// A proxy in front of Redis that, once, loses the reply to the first
/// command that names `marker`: Redis has run it (its reply names the
/// marker too), the client sees its connection drop.
struct LosingProxy {
    addr: SocketAddr,
    /// Commands naming the marker that reached Redis.
    sent: Arc<AtomicUsize>,
    /// Whether a reply has been lost yet.
    lost: Arc<AtomicBool>,
}

impl LosingProxy {
    async fn start(redis: SocketAddr, marker: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("proxy address");
        let sent = Arc::new(AtomicUsize::new(0));
        let lost = Arc::new(AtomicBool::new(false));
        let (s, l) = (sent.clone(), lost.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(redis).await else {
                    continue;
                };
                tokio::spawn(pipe(client, server, marker, s.clone(), l.clone()));
            }
        });
        LosingProxy { addr, sent, lost }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

/// Forwards both ways; drops the connection when a reply naming `marker`
/// comes back on a connection that sent a command naming it, unless a
/// reply was lost already.
async fn pipe(
    client: TcpStream,
    server: TcpStream,
    marker: &'static str,
    sent: Arc<AtomicUsize>,
    lost: Arc<AtomicBool>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let asked = Arc::new(AtomicBool::new(false));
    let asked_up = asked.clone();
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if contains(&buf[..n], marker) {
                sent.fetch_add(1, Ordering::SeqCst);
                asked_up.store(true, Ordering::SeqCst);
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen = Vec::new();
    loop {
        let n = match sr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if asked.load(Ordering::SeqCst) && !lost.load(Ordering::SeqCst) {
            // A reply may come in pieces: look at what came since the ask.
            seen.extend_from_slice(&buf[..n]);
            if contains(&seen, marker) && !lost.swap(true, Ordering::SeqCst) {
                break;
            }
        }
        if cw.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    up.abort();
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// What Redis holds for `login` in tenant `T`: the live session's id and
/// the login's generation counter.
async fn held(redis: &RedisServer, login: &str) -> (String, String) {
    let get = |key: String| async move {
        match redis.cmd(&["GET", &key]).await {
            redis::Value::BulkString(b) => String::from_utf8(b).expect("utf-8"),
            other => panic!("{key}: {other:?}"),
        }
    };
    (
        get(format!("turnstile:{{{T}}}:l:{login}")).await,
        get(format!("turnstile:{{{T}}}:g:{login}")).await,
    )
}

#[tokio::test]
async fn a_claim_whose_reply_was_lost_runs_once() {
    let redis = RedisServer::start().await;
    let proxy = LosingProxy::start(([127, 0, 0, 1], redis.port).into(), "lostreply").await;
    let node = NodeProc::start(&proxy.url(), false, &[]).await;
    let mut c = node.client().await;
    // Loads the claim script, so the claim below is sent once (a fresh
    // Redis answers NOSCRIPT first, and the client loads it and resends).
    claim_on(&mut c, claim_req(T, "ana", "", ConflictPolicy::Reject)).await;

    let r = claim_on(
        &mut c,
        claim_req(T, "lostreply", "desk-9", ConflictPolicy::Reject),
    )
    .await;

    assert!(proxy.lost.load(Ordering::SeqCst), "no reply was lost");
    assert_eq!(
        proxy.sent.load(Ordering::SeqCst),
        2,
        "the node sent the claim again"
    );
    assert_eq!(
        r.outcome(),
        ClaimOutcome::Granted,
        "its own first run must not refuse it: {r:?}"
    );
    let s = session_of(&r);
    let (holder, counter) = held(&redis, "lostreply").await;
    assert_eq!(holder, s.session_id, "Redis holds the session answered");
    assert_eq!(counter, s.generation.to_string(), "granted once");
    // And the session is usable: its token opens it.
    let mut ws = connect(node.http, &r.token).await;
    assert_eq!(ws.expect_type("welcome").await["session_id"], s.session_id);
}

#[tokio::test]
async fn a_takeover_whose_reply_was_lost_displaces_the_holder_once() {
    let redis = RedisServer::start().await;
    let proxy = LosingProxy::start(([127, 0, 0, 1], redis.port).into(), "lostreply").await;
    let node = NodeProc::start(&proxy.url(), false, &[]).await;
    let mut c = node.client().await;
    // The holder's claim passes untouched: the proxy is to lose the
    // takeover's reply, not this one.
    proxy.lost.store(true, Ordering::SeqCst);
    let first = claim_on(
        &mut c,
        claim_req(T, "lostreply", "", ConflictPolicy::Reject),
    )
    .await;
    assert_eq!(first.outcome(), ClaimOutcome::Granted, "{first:?}");
    let first_id = session_of(&first).session_id.clone();
    let mut old = connect(node.http, &first.token).await;
    old.expect_type("welcome").await;
    proxy.sent.store(0, Ordering::SeqCst);
    proxy.lost.store(false, Ordering::SeqCst);

    let r = claim_on(
        &mut c,
        claim_req(T, "lostreply", "", ConflictPolicy::Takeover),
    )
    .await;

    assert!(proxy.lost.load(Ordering::SeqCst), "no reply was lost");
    assert_eq!(proxy.sent.load(Ordering::SeqCst), 2, "sent again");
    assert_eq!(r.outcome(), ClaimOutcome::Granted, "{r:?}");
    let evicted: Vec<&str> = r.evicted.iter().map(|e| e.session_id.as_str()).collect();
    assert_eq!(evicted, [first_id.as_str()], "the first run's evictions");
    let (holder, counter) = held(&redis, "lostreply").await;
    assert_eq!(holder, session_of(&r).session_id);
    assert_eq!(
        counter,
        session_of(&r).generation.to_string(),
        "granted once"
    );
    old.expect_forced_logout("superseded", SUPERSEDED_MSG, 4001)
        .await;
    let mut new = connect(node.http, &r.token).await;
    new.expect_type("welcome").await;
}

/// The login service's own call timed out after the claim committed (here:
/// the first reply is simply not used) and it claims again. With the same
/// `idempotency_key` it gets the first grant back; without one it is told
/// LOGIN_IN_USE by its own PENDING session, and ends exactly that session
/// (Evict by session_id) and claims again — no wait for connect_timeout.
#[tokio::test]
async fn a_committed_claim_retried_by_the_login_service_recovers_as_documented() {
    let node = start().await;
    let mut c = node.client.clone();

    // With a key: the same answer, and its token opens the session.
    let keyed = || pb::ClaimRequest {
        idempotency_key: "login-attempt-7f3a".into(),
        ..claim_req(T, "ana", "desk-1", ConflictPolicy::Reject)
    };
    let lost = claim_on(&mut c, keyed()).await;
    let again = claim_on(&mut c, keyed()).await;
    assert_eq!(again.outcome(), ClaimOutcome::Granted, "{again:?}");
    assert_eq!(session_of(&again).session_id, session_of(&lost).session_id);
    let mut ws = node.connect(&again.token).await;
    ws.expect_type("welcome").await;
    ws.close().await;
    node.client
        .clone()
        .release(pb::ReleaseRequest {
            tenant: T.into(),
            session_id: session_of(&again).session_id.clone(),
        })
        .await
        .expect("release");

    // Without a key: refused by its own pending session ...
    let lost = claim_on(
        &mut c,
        claim_req(T, "bob", "desk-2", ConflictPolicy::Reject),
    )
    .await;
    let lost = session_of(&lost).clone();
    let again = claim_on(
        &mut c,
        claim_req(T, "bob", "desk-2", ConflictPolicy::Reject),
    )
    .await;
    assert_eq!(again.outcome(), ClaimOutcome::LoginInUse, "{again:?}");
    let holder = again.holder.expect("the holder");
    assert_eq!(holder.session_id, lost.session_id);
    assert_eq!(holder.state(), SessionState::Pending);
    // ... so it ends that session, and only that one, and claims again.
    let evicted = within(
        "Evict",
        c.evict(pb::EvictRequest {
            tenant: T.into(),
            target: Some(pb::evict_request::Target::SessionId(holder.session_id)),
            message: String::new(),
        }),
    )
    .await
    .expect("Evict")
    .into_inner();
    assert_eq!(evicted.evicted.len(), 1);
    let r = claim_on(
        &mut c,
        claim_req(T, "bob", "desk-2", ConflictPolicy::Reject),
    )
    .await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted, "{r:?}");
    assert!(session_of(&r).generation > lost.generation);
    let mut ws = node.connect(&r.token).await;
    ws.expect_type("welcome").await;
}
