//! Seat licences (issue 17.5) over the real gRPC API: a tenant's live
//! sessions never exceed its limit, on one node and across a cluster; the
//! limit comes from `seat_limits` or `SetSeatLimit`; a takeover of one's
//! own login needs no new seat.

mod support;

use std::collections::HashMap;

use support::procs::RedisServer;
use support::*;
use turnstile::pb;

const T: &str = "acme";

async fn usage(c: &mut Client, tenant: &str) -> pb::TenantUsage {
    within(
        "GetTenantUsage",
        c.get_tenant_usage(pb::GetTenantUsageRequest {
            tenant: tenant.into(),
        }),
    )
    .await
    .expect("GetTenantUsage")
    .into_inner()
    .usage
    .expect("usage is set")
}

async fn set_limit(c: &mut Client, tenant: &str, seat_limit: u32) -> pb::TenantUsage {
    within(
        "SetSeatLimit",
        c.set_seat_limit(pb::SetSeatLimitRequest {
            tenant: tenant.into(),
            seat_limit,
        }),
    )
    .await
    .expect("SetSeatLimit")
    .into_inner()
    .usage
    .expect("usage is set")
}

#[tokio::test]
async fn a_full_tenant_answers_seats_exhausted_but_lets_a_login_take_itself_over() {
    let node = start_with(|c| {
        c.seat_limits = HashMap::from([(turnstile::session::Tenant::parse(T).unwrap(), 2)]);
    })
    .await;
    let mut c = node.client.clone();
    node.grant(T, "ana", "s1").await;
    node.grant(T, "bob", "s2").await;
    let r = node.claim(T, "cy", "s3", ConflictPolicy::Takeover).await;
    assert_eq!(r.outcome(), ClaimOutcome::SeatsExhausted, "{r:?}");
    let seats = r.seats.expect("SEATS_EXHAUSTED carries the seats");
    assert_eq!((seats.seats_used, seats.seat_limit), (2, 2));
    assert!(r.session.is_none() && r.token.is_empty() && r.evicted.is_empty());

    // ana at another desk reuses her seat.
    let moved = node.claim(T, "ana", "s3", ConflictPolicy::Takeover).await;
    assert_eq!(moved.outcome(), ClaimOutcome::Granted, "{moved:?}");
    // A login conflict is still reported as one, not as a seat problem.
    let held = node.claim(T, "bob", "", ConflictPolicy::Reject).await;
    assert_eq!(held.outcome(), ClaimOutcome::LoginInUse, "{held:?}");

    let u = usage(&mut c, T).await;
    assert_eq!((u.seats_used, u.seat_limit), (2, 2));
    // Another tenant has no limit configured.
    let other = usage(&mut c, "globex").await;
    assert_eq!((other.seats_used, other.seat_limit), (0, 0));

    // The RPC overrides the setting; 0 lifts the limit.
    let u = set_limit(&mut c, T, 3).await;
    assert_eq!((u.seats_used, u.seat_limit), (2, 3));
    let r = node.claim(T, "cy", "", ConflictPolicy::Reject).await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted, "{r:?}");
    // Lowering the limit ends nobody; it only refuses new seats.
    let u = set_limit(&mut c, T, 1).await;
    assert_eq!((u.seats_used, u.seat_limit), (3, 1));
    assert_eq!(node.list_all(T).await.len(), 3);
    let r = node.claim(T, "dee", "", ConflictPolicy::Reject).await;
    let seats = r.seats.expect("seats");
    assert_eq!((seats.seats_used, seats.seat_limit), (3, 1));
    set_limit(&mut c, T, 0).await;
    let r = node.claim(T, "dee", "", ConflictPolicy::Reject).await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted, "{r:?}");
    node.shutdown().await;
}

#[tokio::test]
async fn a_tenant_bound_api_key_cannot_raise_its_own_licence() {
    let node = start_with(|c| {
        c.api_keys = vec![turnstile::config::ApiKeyConfig {
            name: "acme-portal".into(),
            key: "acme-portal-key-0123456789".into(),
            tenant: Some(turnstile::session::Tenant::parse(T).unwrap()),
        }];
    })
    .await;
    let mut c = node.client.clone();
    let mut req = tonic::Request::new(pb::SetSeatLimitRequest {
        tenant: T.into(),
        seat_limit: 1000,
    });
    req.metadata_mut().insert(
        "authorization",
        "Bearer acme-portal-key-0123456789".parse().unwrap(),
    );
    let err = within("SetSeatLimit", c.set_seat_limit(req))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    node.shutdown().await;
}

/// 300 claims of 300 logins race over three nodes on one Redis against a
/// limit of 100: exactly 100 are granted, the rest are SEATS_EXHAUSTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_claims_over_three_nodes_grant_exactly_the_hundred_seats() {
    let redis = RedisServer::start().await;
    let ns = format!("t{:016x}", rand::random::<u64>());
    let nodes = [
        start_with(on_redis(redis.url(), &ns, "node-a")).await,
        start_with(on_redis(redis.url(), &ns, "node-b")).await,
        start_with(on_redis(redis.url(), &ns, "node-c")).await,
    ];
    // Set on one node, in force on all: the limit lives in Redis.
    set_limit(&mut nodes[0].client.clone(), T, 100).await;
    let mut tasks = Vec::new();
    for i in 0..300 {
        let mut c = nodes[i % 3].client.clone();
        let req = claim_req(T, &format!("agent{i}"), "", ConflictPolicy::Reject);
        tasks.push(tokio::spawn(async move { c.claim(req).await }));
    }
    let (mut granted, mut exhausted) = (0, 0);
    for t in tasks {
        let r = within("a racing claim", t)
            .await
            .unwrap()
            .unwrap()
            .into_inner();
        match r.outcome() {
            ClaimOutcome::Granted => granted += 1,
            ClaimOutcome::SeatsExhausted => {
                let s = r.seats.expect("seats");
                assert_eq!((s.seats_used, s.seat_limit), (100, 100), "{r:?}");
                exhausted += 1;
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!((granted, exhausted), (100, 200));
    for n in &nodes {
        let u = usage(&mut n.client.clone(), T).await;
        assert_eq!((u.seats_used, u.seat_limit), (100, 100));
    }
    assert_eq!(nodes[1].list_all(T).await.len(), 100);
    for n in nodes {
        n.shutdown().await;
    }
}
