//! Expiry work per tick on Redis: real `turnstile serve` processes on a
//! real `redis-server`. Idle tenants (sessions whose deadlines are far off)
//! must cost no script calls per expiry round, while a tenant with a due
//! session is still expired at once, and a tenant with nothing left leaves
//! every index.
//!
//! Script calls are counted with Redis' own `INFO commandstats`; rounds
//! with the nodes' `turnstile_redis_expiry_rounds_total`. Every wait is
//! bounded.

mod support;

use support::procs::{eventually, NodeProc, RedisCluster, RedisServer};
use support::*;

/// Idle tenants, one PENDING session each.
const IDLE: usize = 2_000;
/// Claims in flight while the idle tenants are created.
const PARALLEL: usize = 16;

/// `calls` of `cmdstat_evalsha` in Redis' `INFO commandstats`.
async fn evalsha_calls(redis: &RedisServer) -> u64 {
    let info = match redis.cmd(&["INFO", "commandstats"]).await {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        other => panic!("INFO replied {other:?}"),
    };
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A counter's value on `node`'s `/metrics` (0 before it is first counted).
async fn counter(node: &NodeProc, name: &str) -> f64 {
    let (_, body) = http_get(node.http, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until every node completed `n` more expiry rounds.
async fn rounds(nodes: &[&NodeProc], n: f64) {
    const ROUNDS: &str = "turnstile_redis_expiry_rounds_total";
    let mut start = Vec::new();
    for node in nodes {
        start.push(counter(node, ROUNDS).await);
    }
    eventually("expiry rounds on every node", || {
        let start = start.clone();
        async move {
            for (node, s) in nodes.iter().zip(start) {
                if counter(node, ROUNDS).await < s + n {
                    return false;
                }
            }
            true
        }
    })
    .await;
}

/// Whether `member` is in the Redis set or sorted set `key`.
async fn indexed(redis: &RedisServer, key: &str, member: &str) -> bool {
    let ty = match redis.cmd(&["TYPE", key]).await {
        redis::Value::SimpleString(s) => s,
        other => panic!("TYPE replied {other:?}"),
    };
    let found = match ty.as_str() {
        "zset" => redis.cmd(&["ZSCORE", key, member]).await,
        "set" => redis.cmd(&["SISMEMBER", key, member]).await,
        "none" => return false,
        other => panic!("{key} is a {other}"),
    };
    !matches!(found, redis::Value::Nil | redis::Value::Int(0))
}

#[tokio::test]
async fn idle_tenants_cost_no_expiry_work_and_due_ones_still_expire() {
    let redis = RedisServer::start().await;
    // A tenant recorded by an older version, in the set it no longer uses.
    let legacy = "turnstile:{nodes}:tenants";
    redis.cmd(&["SADD", legacy, "old-tenant"]).await;
    let idle = NodeProc::start(&redis.url(), false, &["--connect-timeout", "10m"]).await;
    let quick = NodeProc::start(&redis.url(), false, &["--connect-timeout", "1s"]).await;

    // IDLE tenants with one PENDING session each, due in ten minutes.
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..PARALLEL {
        let mut c = idle.client().await;
        tasks.spawn(async move {
            for i in (p..IDLE).step_by(PARALLEL) {
                let tenant = format!("idle{i}");
                let r = claim_on(
                    &mut c,
                    claim_req(&tenant, "ana", "", ConflictPolicy::Reject),
                )
                .await;
                assert_eq!(r.outcome(), ClaimOutcome::Granted, "{tenant}: {r:?}");
            }
        });
    }
    while let Some(r) = within("the idle tenants' claims", tasks.join_next()).await {
        r.expect("a claim task");
    }

    // A few rounds on both nodes cost far less than one script call per
    // idle tenant and round.
    rounds(&[&idle, &quick], 1.0).await;
    let before = evalsha_calls(&redis).await;
    rounds(&[&idle, &quick], 3.0).await;
    let calls = evalsha_calls(&redis).await - before;
    assert!(
        calls < IDLE as u64 / 4,
        "{calls} script calls in three expiry rounds of two nodes with {IDLE} idle tenants"
    );

    // A tenant with a due session is still expired, and then leaves every
    // index; the idle ones stay indexed.
    claim_and_see_it_expire(quick.grpc).await;
    let (due, tenants) = ("turnstile:{nodes}:due", "turnstile:{nodes}:tenants");
    eventually("the expired tenant to leave the indexes", || async {
        !indexed(&redis, due, "due").await && !indexed(&redis, tenants, "due").await
    })
    .await;
    assert!(
        indexed(&redis, due, "idle7").await,
        "an idle tenant is due-indexed"
    );
    // The legacy set was emptied into the index, and its tenant, with
    // nothing left, dropped from it.
    assert!(!indexed(&redis, legacy, "old-tenant").await);
    eventually("the legacy tenant to leave the due-index", || async {
        !indexed(&redis, due, "old-tenant").await
    })
    .await;
}

/// On a Redis Cluster the due-index lives in the `{nodes}` slot, apart
/// from the tenant's: a PENDING session still expires.
#[tokio::test]
async fn a_due_session_expires_on_a_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let node = NodeProc::start(&cluster.urls(), true, &["--connect-timeout", "1s"]).await;
    claim_and_see_it_expire(node.grpc).await;
}

/// Claims login bob of tenant `due` on the node at `grpc` and waits, bounded,
/// for its session to end EXPIRED (nobody connects to it).
async fn claim_and_see_it_expire(grpc: std::net::SocketAddr) {
    let mut c = grpc_client(grpc).await;
    let mut watch = watch_at(grpc, "due").await;
    let r = claim_on(&mut c, claim_req("due", "bob", "", ConflictPolicy::Reject)).await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted, "{r:?}");
    let id = r.session.expect("session").session_id;
    let ended = watch.expect_for(&id, PresenceChange::Ended).await;
    assert_eq!(
        ended.session.expect("session").end_reason(),
        EndReason::Expired
    );
}
