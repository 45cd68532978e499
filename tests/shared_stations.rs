//! Shared stations (issue 17.3, the Interaction Client rule) over the real
//! gRPC API and WebSockets: logins claiming a station from the device that
//! holds it share it; another device (or none) is refused with every holder;
//! the station passes to the next holder and is free after the last; an
//! exclusive tenant never shares. Re-run on Redis by .ci/run.

mod support;

use support::*;
use turnstile::pb;

const T: &str = "acme";
const STATION_CHANGED_MSG: &str =
    "Your connection has been dropped due to a subsequent log on to a different station.";

fn on(login: &str, station: &str, device: &str) -> pb::ClaimRequest {
    pb::ClaimRequest {
        device: device.into(),
        ..claim_req(T, login, station, ConflictPolicy::Reject)
    }
}

async fn station(node: &Node, name: &str) -> pb::StationInfo {
    let mut c = node.client.clone();
    within(
        "StationStatus",
        c.station_status(pb::StationStatusRequest {
            tenant: T.into(),
            stations: vec![name.into()],
        }),
    )
    .await
    .expect("StationStatus")
    .into_inner()
    .stations
    .remove(0)
}

/// (login, device) of every holder, first first.
fn holders(i: &pb::StationInfo) -> Vec<(&str, &str)> {
    i.holders
        .iter()
        .map(|h| (h.login.as_str(), h.device.as_str()))
        .collect()
}

#[tokio::test]
async fn logins_on_one_device_share_a_station_and_another_device_is_refused() {
    let node = start().await;
    let ana = node.claim_with(on("ana", "s1", "pc-1")).await;
    let bob = node.claim_with(on("bob", "s1", "pc-1")).await;
    assert_eq!(bob.outcome(), ClaimOutcome::Granted, "{bob:?}");
    assert_eq!(session_of(&bob).device, "pc-1");
    let info = station(&node, "s1").await;
    assert!(!info.free);
    assert_eq!(info.login, "ana", "the first holder: {info:?}");
    assert_eq!(info.session_id, session_of(&ana).session_id);
    assert_eq!(holders(&info), [("ana", "pc-1"), ("bob", "pc-1")]);
    // Another computer, or a claim naming none: refused with both holders.
    for device in ["pc-2", ""] {
        let r = node.claim_with(on("cy", "s1", device)).await;
        assert_eq!(r.outcome(), ClaimOutcome::StationInUse, "{device:?}: {r:?}");
        assert_eq!(r.holder.as_ref().map(|h| h.login.as_str()), Some("ana"));
        let all: Vec<&str> = r.station_holders.iter().map(|h| h.login.as_str()).collect();
        assert_eq!(all, ["ana", "bob"], "{r:?}");
        assert!(r.token.is_empty() && r.session.is_none());
    }
    node.shutdown().await;
}

#[tokio::test]
async fn a_station_held_without_a_device_is_not_shared() {
    let node = start().await;
    node.grant(T, "ana", "s1").await;
    let r = node.claim_with(on("bob", "s1", "pc-1")).await;
    assert_eq!(r.outcome(), ClaimOutcome::StationInUse, "{r:?}");
    assert_eq!(r.station_holders.len(), 1);
    node.shutdown().await;
}

#[tokio::test]
async fn a_shared_station_passes_on_and_a_login_moving_away_drops_it() {
    let node = start().await;
    let ana = node.claim_with(on("ana", "s1", "pc-1")).await;
    let bob = node.claim_with(on("bob", "s1", "pc-1")).await;
    let (mut bob_ws, _) = node.connect_welcome(&bob.token).await;
    let mut c = node.client.clone();
    within(
        "Release",
        c.release(pb::ReleaseRequest {
            tenant: T.into(),
            session_id: session_of(&ana).session_id.clone(),
        }),
    )
    .await
    .expect("Release");
    let info = station(&node, "s1").await;
    assert_eq!(info.login, "bob", "bob holds it now: {info:?}");
    assert_eq!(holders(&info), [("bob", "pc-1")]);
    // bob signs in at s2: his s1 session ends (STATION_CHANGED), s1 is free.
    let mut moved = on("bob", "s2", "pc-1");
    moved.on_conflict = ConflictPolicy::Takeover as i32;
    let r = node.claim_with(moved).await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted, "{r:?}");
    bob_ws
        .expect_forced_logout("station_changed", STATION_CHANGED_MSG, 4002)
        .await;
    let info = station(&node, "s1").await;
    assert!(info.free && info.holders.is_empty(), "{info:?}");
    // Free: another computer may take it.
    let r = node.claim_with(on("cy", "s1", "pc-2")).await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted, "{r:?}");
    node.shutdown().await;
}

#[tokio::test]
async fn evicting_a_shared_station_ends_every_holder() {
    let node = start().await;
    let ana = node.claim_with(on("ana", "s1", "pc-1")).await;
    let bob = node.claim_with(on("bob", "s1", "pc-1")).await;
    let (mut a, _) = node.connect_welcome(&ana.token).await;
    let (mut b, _) = node.connect_welcome(&bob.token).await;
    let mut c = node.client.clone();
    let r = within(
        "Evict",
        c.evict(pb::EvictRequest {
            tenant: T.into(),
            target: Some(pb::evict_request::Target::Station("s1".into())),
            ..Default::default()
        }),
    )
    .await
    .expect("Evict")
    .into_inner();
    let ended: Vec<&str> = r.evicted.iter().map(|s| s.login.as_str()).collect();
    assert_eq!(ended, ["ana", "bob"], "{r:?}");
    a.expect_forced_logout("evicted", EVICTED_MSG, 4003).await;
    b.expect_forced_logout("evicted", EVICTED_MSG, 4003).await;
    assert!(station(&node, "s1").await.free);
    node.shutdown().await;
}

#[tokio::test]
async fn an_exclusive_tenant_never_shares() {
    let node = start_with(|c| {
        c.exclusive_stations = Some(vec![turnstile::session::Tenant::parse(T).unwrap()])
    })
    .await;
    node.claim_with(on("ana", "s1", "pc-1")).await;
    let r = node.claim_with(on("bob", "s1", "pc-1")).await;
    assert_eq!(r.outcome(), ClaimOutcome::StationInUse, "{r:?}");
    // Another tenant on the same node shares as usual.
    let mut other = on("ana", "s1", "pc-1");
    other.tenant = "globex".into();
    node.claim_with(other.clone()).await;
    other.login = "bob".into();
    let r = node.claim_with(other).await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted, "{r:?}");
    node.shutdown().await;
}

#[tokio::test]
async fn a_bad_device_is_invalid_argument_naming_the_field() {
    let node = start().await;
    for bad in ["has space", &"x".repeat(65)] {
        let mut c = node.client.clone();
        let e = code_of(c.claim(on("ana", "s1", bad)).await);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
        assert!(e.message().starts_with("device:"), "{}", e.message());
    }
    node.shutdown().await;
}

/// Redis lost its data: the node puts back both sessions of a shared
/// station (reassert.lua), so the station is shared again, not held by
/// whichever came back first with the other refused.
#[tokio::test]
async fn after_redis_loses_its_data_both_holders_are_put_back() {
    let mut redis = support::procs::RedisServer::start().await;
    let ns = format!("sh{:08x}", rand::random::<u32>());
    let node = start_with(on_redis(redis.url(), &ns, "n1")).await;
    let ana = node.claim_with(on("ana", "s1", "pc-1")).await;
    let bob = node.claim_with(on("bob", "s1", "pc-1")).await;
    let (_a, _) = node.connect_welcome(&ana.token).await;
    let (_b, _) = node.connect_welcome(&bob.token).await;

    redis.restart_empty().await;
    let c = node.client.clone();
    support::procs::eventually("both holders of s1 put back", || {
        let mut c = c.clone();
        async move {
            let r = c
                .station_status(pb::StationStatusRequest {
                    tenant: T.into(),
                    stations: vec!["s1".into()],
                })
                .await;
            let mut logins: Vec<String> = r
                .map(|r| {
                    r.into_inner().stations[0]
                        .holders
                        .iter()
                        .map(|h| h.login.clone())
                        .collect()
                })
                .unwrap_or_default();
            logins.sort();
            logins == ["ana", "bob"]
        }
    })
    .await;
    // Claims wait for the recovery window; then another device is refused
    // with both holders (a refusal changes nothing, so asking again is safe).
    support::procs::eventually("a claim from pc-2 refused with both holders", || {
        let mut c = c.clone();
        async move {
            match c.claim(on("cy", "s1", "pc-2")).await {
                Ok(r) => {
                    let r = r.into_inner();
                    assert_eq!(r.outcome(), ClaimOutcome::StationInUse, "{r:?}");
                    assert_eq!(r.station_holders.len(), 2, "{r:?}");
                    true
                }
                Err(e) if e.code() == tonic::Code::Unavailable => false,
                Err(e) => panic!("claim: {e:?}"),
            }
        }
    })
    .await;
    node.shutdown().await;
}
