//! The station directory (issue 17.4) over the real gRPC API: a tenant's
//! registered stations, listed in name order with their holders, paged
//! (prefix, free-only), bounded per call and per tenant; strict tenants
//! refuse claims of unregistered stations. Runs on the embedded registry,
//! and on Redis with `TS_TEST_REDIS` (.ci/run).

mod support;

use support::*;
use turnstile::pb;
use turnstile::session::Tenant;

const T: &str = "acme";

async fn register(c: &mut Client, stations: &[&str]) -> pb::RegisterStationsResponse {
    within(
        "RegisterStations",
        c.register_stations(pb::RegisterStationsRequest {
            tenant: T.into(),
            stations: stations.iter().map(|s| s.to_string()).collect(),
        }),
    )
    .await
    .expect("RegisterStations")
    .into_inner()
}

async fn remove(c: &mut Client, stations: &[&str]) -> pb::RemoveStationsResponse {
    within(
        "RemoveStations",
        c.remove_stations(pb::RemoveStationsRequest {
            tenant: T.into(),
            stations: stations.iter().map(|s| s.to_string()).collect(),
        }),
    )
    .await
    .expect("RemoveStations")
    .into_inner()
}

async fn list(c: &mut Client, req: pb::ListStationsRequest) -> pb::ListStationsResponse {
    within("ListStations", c.list_stations(req))
        .await
        .expect("ListStations")
        .into_inner()
}

fn query(prefix: &str, free_only: bool, page_size: u32, token: &str) -> pb::ListStationsRequest {
    pb::ListStationsRequest {
        tenant: T.into(),
        prefix: prefix.into(),
        free_only,
        page_size,
        page_token: token.into(),
    }
}

/// Every page until the token is empty (bounded): the names, and how
/// many calls it took.
async fn list_all(
    c: &mut Client,
    prefix: &str,
    free_only: bool,
    size: u32,
) -> (Vec<String>, usize) {
    let (mut names, mut token) = (Vec::new(), String::new());
    for calls in 1..=10_000 {
        let page = list(c, query(prefix, free_only, size, &token)).await;
        assert!(page.stations.len() <= size as usize, "{page:?}");
        names.extend(page.stations.into_iter().map(|s| s.station));
        if page.next_page_token.is_empty() {
            return (names, calls);
        }
        token = page.next_page_token;
    }
    panic!("ListStations did not end within 10,000 pages");
}

#[tokio::test]
async fn the_directory_lists_registered_stations_in_name_order_with_their_holders() {
    let node = start().await;
    let mut c = node.client.clone();
    let r = register(&mut c, &["desk-3", "desk-1", "desk-2", "lab-1", "desk-1"]).await;
    assert_eq!((r.added, r.registered), (4, 4), "a name twice counts once");
    let r = register(&mut c, &["desk-2", "desk-4"]).await;
    assert_eq!((r.added, r.registered), (1, 5));

    let bob = node.grant(T, "bob", "desk-2").await;
    let page = list(&mut c, query("", false, 0, "")).await;
    assert_eq!(page.registered, 5);
    assert!(page.next_page_token.is_empty(), "{page:?}");
    let names: Vec<&str> = page.stations.iter().map(|s| s.station.as_str()).collect();
    assert_eq!(names, ["desk-1", "desk-2", "desk-3", "desk-4", "lab-1"]);
    let held = &page.stations[1];
    assert!(!held.free);
    assert_eq!(held.login, "bob");
    assert_eq!(held.session_id, bob.session.unwrap().session_id);
    assert!(page.stations[0].free && page.stations[0].login.is_empty());

    // Filters: a prefix, free only, both.
    let (desks, _) = list_all(&mut c, "desk-", false, 2).await;
    assert_eq!(desks, ["desk-1", "desk-2", "desk-3", "desk-4"]);
    let (free, _) = list_all(&mut c, "", true, 2).await;
    assert_eq!(free, ["desk-1", "desk-3", "desk-4", "lab-1"]);
    let (free_desks, _) = list_all(&mut c, "desk-", true, 100).await;
    assert_eq!(free_desks, ["desk-1", "desk-3", "desk-4"]);
    let page = list(&mut c, query("lab-", false, 0, "")).await;
    assert_eq!(
        page.registered, 5,
        "the count is the tenant's, not the filter's"
    );

    // Removing a held station ends nobody; unknown names are skipped.
    let r = remove(&mut c, &["desk-2", "desk-9"]).await;
    assert_eq!((r.removed, r.registered), (1, 4));
    assert_eq!(node.list_all(T).await.len(), 1, "bob still holds desk-2");
    let (left, _) = list_all(&mut c, "", false, 100).await;
    assert_eq!(left, ["desk-1", "desk-3", "desk-4", "lab-1"]);

    // Another tenant's directory is its own.
    let other = list(
        &mut c,
        pb::ListStationsRequest {
            tenant: "globex".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!((other.stations.len(), other.registered), (0, 0));
    node.shutdown().await;
}

/// The page token is the last name examined: a page continues after it
/// whatever changed in between (the token's own station removed, a name
/// registered before it).
#[tokio::test]
async fn paging_continues_after_the_last_name_examined_under_changes() {
    let node = start().await;
    let mut c = node.client.clone();
    register(&mut c, &["a", "b", "c", "d", "e"]).await;
    let first = list(&mut c, query("", false, 2, "")).await;
    let names: Vec<&str> = first.stations.iter().map(|s| s.station.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(first.next_page_token, "b");
    remove(&mut c, &["b"]).await;
    register(&mut c, &["aa", "bb"]).await;
    let second = list(&mut c, query("", false, 2, &first.next_page_token)).await;
    let names: Vec<&str> = second.stations.iter().map(|s| s.station.as_str()).collect();
    assert_eq!(names, ["bb", "c"]);
    node.shutdown().await;
}

/// A free-only page examines at most 10 × page_size names: behind a run
/// of held stations a page may come back short (even empty) with a token,
/// and paging on finds every free station.
#[tokio::test]
async fn a_free_only_page_examines_a_bounded_number_of_names() {
    let node = start().await;
    let mut c = node.client.clone();
    let names: Vec<String> = (0..40).map(|i| format!("st-{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    register(&mut c, &refs).await;
    // st-00 .. st-29 held: 30 names before the first free one.
    for (i, st) in names.iter().take(30).enumerate() {
        node.grant(T, &format!("agent{i}"), st).await;
    }
    let first = list(&mut c, query("", true, 2, "")).await;
    assert!(first.stations.is_empty(), "{first:?}");
    assert_eq!(first.next_page_token, "st-19", "20 names examined");
    let (free, calls) = list_all(&mut c, "", true, 2).await;
    assert_eq!(free, names[30..].to_vec());
    assert_eq!(calls, 6, "1 page through the held run, then 5 of 2 free");
    node.shutdown().await;
}

#[tokio::test]
async fn bad_directory_calls_name_the_field() {
    let node = start_with(|c| c.max_registered_stations = 5).await;
    let mut c = node.client.clone();
    let code = |r: Result<tonic::Response<pb::RegisterStationsResponse>, tonic::Status>| {
        let e = r.unwrap_err();
        (e.code(), e.message().to_string())
    };
    let many: Vec<String> = (0..1001).map(|i| format!("s{i}")).collect();
    let (status, msg) = code(
        c.register_stations(pb::RegisterStationsRequest {
            tenant: T.into(),
            stations: many,
        })
        .await,
    );
    assert_eq!(status, tonic::Code::InvalidArgument, "{msg}");
    assert!(
        msg.starts_with("stations:") && msg.contains("1000"),
        "{msg}"
    );
    let (status, msg) = code(
        c.register_stations(pb::RegisterStationsRequest {
            tenant: T.into(),
            stations: vec!["ok".into(), "has space".into()],
        })
        .await,
    );
    assert_eq!(status, tonic::Code::InvalidArgument, "{msg}");
    assert!(msg.starts_with("stations"), "{msg}");

    // The tenant's bound: all or nothing.
    register(&mut c, &["a", "b", "c", "d"]).await;
    let (status, msg) = code(
        c.register_stations(pb::RegisterStationsRequest {
            tenant: T.into(),
            stations: vec!["a".into(), "e".into(), "f".into()],
        })
        .await,
    );
    assert_eq!(status, tonic::Code::ResourceExhausted, "{msg}");
    assert!(
        msg.starts_with("stations:") && msg.contains("max_registered_stations"),
        "{msg}"
    );
    assert_eq!(list(&mut c, query("", false, 0, "")).await.registered, 4);
    assert_eq!(register(&mut c, &["a", "e"]).await.registered, 5);

    let e = c
        .list_stations(query("", false, 1001, ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("page_size"), "{}", e.message());
    let e = c
        .list_stations(query("", false, 0, "no such"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("page_token"), "{}", e.message());
    let e = c
        .list_stations(query("x y", false, 0, ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("prefix"), "{}", e.message());
    node.shutdown().await;
}

#[tokio::test]
async fn a_strict_tenant_refuses_claims_of_unregistered_stations() {
    let node = start_with(|c| {
        c.strict_stations = Some(vec![Tenant::parse(T).unwrap()]);
    })
    .await;
    let mut c = node.client.clone();
    let r = node.claim(T, "ana", "desk-1", ConflictPolicy::Reject).await;
    assert_eq!(r.outcome(), ClaimOutcome::StationNotRegistered, "{r:?}");
    assert!(r.session.is_none() && r.token.is_empty() && r.holder.is_none());
    register(&mut c, &["desk-1"]).await;
    node.grant(T, "ana", "desk-1").await;
    // Without a station the directory is not asked.
    node.grant(T, "bob", "").await;
    // A takeover to an unregistered station is refused too, ending nobody.
    let r = node
        .claim(T, "ana", "desk-9", ConflictPolicy::Takeover)
        .await;
    assert_eq!(r.outcome(), ClaimOutcome::StationNotRegistered, "{r:?}");
    assert_eq!(node.list_all(T).await.len(), 2);
    // Removed from the directory: the holder stays, a new claim is refused.
    remove(&mut c, &["desk-1"]).await;
    assert_eq!(node.list_all(T).await.len(), 2);
    let r = node.claim(T, "cy", "desk-1", ConflictPolicy::Reject).await;
    assert_eq!(r.outcome(), ClaimOutcome::StationNotRegistered, "{r:?}");
    // A tenant not in strict mode claims any station.
    node.grant("globex", "ana", "anywhere").await;
    node.shutdown().await;
}

#[tokio::test]
async fn a_tenant_key_manages_only_its_own_directory() {
    let node = start_with(|c| {
        c.api_keys = vec![turnstile::config::ApiKeyConfig {
            name: "acme-portal".into(),
            key: "acme-portal-key-0123456789".into(),
            tenant: Some(Tenant::parse(T).unwrap()),
        }];
    })
    .await;
    let mut c = node.client.clone();
    let call = |tenant: &str| {
        let mut req = tonic::Request::new(pb::RegisterStationsRequest {
            tenant: tenant.into(),
            stations: vec!["desk-1".into()],
        });
        req.metadata_mut().insert(
            "authorization",
            "Bearer acme-portal-key-0123456789".parse().unwrap(),
        );
        req
    };
    let ok = within("RegisterStations", c.register_stations(call(T))).await;
    assert_eq!(ok.expect("own tenant").into_inner().registered, 1);
    let err = within("RegisterStations", c.register_stations(call("globex")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    node.shutdown().await;
}
