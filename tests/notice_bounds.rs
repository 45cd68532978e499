//! The bounds of notices on a real node over a real Redis: an expiry past
//! the documented maximum is refused naming the field, one within it is
//! delivered, a notice over its byte cap is refused, and a stored queue
//! Redis can no longer decode is logged and counted, not silently emptied.

mod support;

use serde_json::json;
use support::procs::RedisServer;
use support::*;
use turnstile::pb;

const T: &str = "acme";
const DAY_MS: i64 = 24 * 3_600_000;

fn notice(id: &str, expires_at_ms: i64) -> pb::Notice {
    pb::Notice {
        id: id.into(),
        kind: "license".into(),
        severity: "info".into(),
        text: "Your licence renews soon.".into(),
        data_json: String::new(),
        expires_at_ms,
    }
}

async fn notify(
    node: &Node,
    target: pb::notify_request::Target,
    n: pb::Notice,
) -> Result<pb::NotifyResponse, tonic::Status> {
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
    .map(|r| r.into_inner())
}

fn login(l: &str) -> pb::notify_request::Target {
    pb::notify_request::Target::Login(l.into())
}

async fn redis_node(redis: &RedisServer) -> Node {
    let url = redis.url();
    start_with(move |c| c.redis = Some(url.parse().expect("a redis:// URL"))).await
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// 2^62 ("never") used to be accepted and then never delivered on Redis:
/// cjson stored it as 4.6116860184274e+18, which no longer decoded, and
/// the queue read back empty.
#[tokio::test]
async fn an_expiry_past_the_maximum_is_refused_naming_the_field() {
    let redis = RedisServer::start().await;
    let node = redis_node(&redis).await;
    let e = notify(&node, login("ana"), notice("never", 1 << 62))
        .await
        .expect_err("a notice expiring in 2^62 ms is refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().starts_with("notice.expires_at_ms:"),
        "{}",
        e.message()
    );
    node.shutdown().await;
}

/// The longest expiry allowed is stored exactly and delivered.
#[tokio::test]
async fn a_notice_a_year_ahead_is_delivered_on_redis() {
    let redis = RedisServer::start().await;
    let node = redis_node(&redis).await;
    let exp = now_ms() + 365 * DAY_MS + 1234;
    let r = notify(&node, login("ana"), notice("year", exp))
        .await
        .expect("a year ahead is within the maximum");
    assert_eq!((r.delivered, r.queued), (0, 1));
    let g = node.grant(T, "ana", "").await;
    let (mut ws, _) = node.connect_welcome(&g.token).await;
    let n = ws.expect_type("notice").await;
    assert_eq!(n["notice"]["id"], "year", "{n}");
    assert_eq!(n["notice"]["expires_at_ms"], exp, "{n}");
    node.shutdown().await;
}

/// text + data_json together are capped (4 KiB by default), on top of the
/// per-field limits, and the error names the field that went over.
#[tokio::test]
async fn a_notice_over_its_byte_cap_is_refused() {
    let node = start().await;
    let mut big = notice("big", 0);
    big.text = "x".repeat(2000);
    big.data_json = json!({"blob": "y".repeat(3000)}).to_string();
    let e = notify(&node, login("ana"), big)
        .await
        .expect_err("5 KB of text and data is over the 4 KiB cap");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().starts_with("notice.data_json:") && e.message().contains("4096"),
        "{}",
        e.message()
    );
    node.shutdown().await;
}

/// Frames over 1 KiB go out in 1 KiB fragments (so no socket's write buffer
/// is pinned at the size of the largest notice); a notice at its byte cap
/// still arrives as one whole message. Its data is a 3,000-byte run of
/// 3-byte characters: the run spans two fragment boundaries 1,024 bytes
/// apart (1,024 ≡ 1 mod 3), so at least one boundary splits a character.
#[tokio::test]
async fn a_notice_at_its_byte_cap_arrives_whole_across_fragments() {
    let node = start().await;
    let g = node.grant(T, "ana", "").await;
    let (mut ws, _) = node.connect_welcome(&g.token).await;
    let mut big = notice("big", 0);
    big.text = "é".repeat(500);
    big.data_json = json!({"k": "€".repeat(1000)}).to_string();
    let (text, data) = (big.text.clone(), big.data_json.clone());
    let r = notify(&node, login("ana"), big)
        .await
        .expect("4 KiB of text and data is within the cap");
    assert_eq!(r.delivered, 1);
    let n = ws.expect_type("notice").await;
    assert_eq!(n["notice"]["text"], text.as_str());
    assert_eq!(
        n["notice"]["data"],
        serde_json::from_str::<serde_json::Value>(&data).unwrap()
    );
    node.shutdown().await;
}

/// A counter's value on the node's `/metrics` (0 before it is counted).
async fn counter(node: &Node, line_prefix: &str) -> f64 {
    let (_, body) = http_get(node.http, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn text(v: redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::Array(mut a) if a.len() == 1 => text(a.remove(0)),
        other => panic!("expected one string, got {other:?}"),
    }
}

/// What Redis holds and can no longer be read (a mangled queue line, a
/// body that is not a notice) is logged and counted, and skipped: the rest
/// of the queue is still delivered.
#[tokio::test]
async fn an_undecodable_stored_notice_is_counted_and_the_rest_delivered() {
    let redis = RedisServer::start().await;
    let node = redis_node(&redis).await;
    let metric = "turnstile_registry_decode_errors_total{what=";
    let before = (
        counter(&node, &format!("{metric}\"queue\"}}")).await,
        counter(&node, &format!("{metric}\"notice\"}}")).await,
    );
    for id in ["good", "mangled"] {
        notify(&node, login("ana"), notice(id, 0))
            .await
            .expect("queued");
    }
    let key = text(redis.cmd(&["KEYS", "*:m:ana"]).await);
    let prefix = key.strip_suffix("m:ana").expect("a mailbox key");
    let queue = text(redis.cmd(&["GET", &key]).await);
    let lines: Vec<&str> = queue.lines().collect();
    assert_eq!(lines.len(), 2, "{queue:?}");
    let body = lines[1].split('\t').nth(1).expect("a body id");
    redis
        .cmd(&["SET", &format!("{prefix}nb:{body}"), "{\"id\":\"mangled\""])
        .await;
    redis.cmd(&["APPEND", &key, "\nnot an entry at all"]).await;

    let g = node.grant(T, "ana", "").await;
    let (mut ws, _) = node.connect_welcome(&g.token).await;
    let n = ws.expect_type("notice").await;
    assert_eq!(n["notice"]["id"], "good", "{n}");
    ws.ping("nothing-else").await;
    assert_eq!(
        counter(&node, &format!("{metric}\"queue\"}}")).await - before.0,
        1.0
    );
    assert_eq!(
        counter(&node, &format!("{metric}\"notice\"}}")).await - before.1,
        1.0
    );
    node.shutdown().await;
}
