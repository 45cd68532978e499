//! Every scenario, run small against a real node started in this process
//! on ephemeral loopback ports: proves the tool works end to end. Speeds
//! are not asserted — the tool measures them, the tests check what it saw.

use std::net::SocketAddr;
use std::time::Duration;

use turnstile::config::Config;
use turnstile_loadtest::report::Report;
use turnstile_loadtest::scenarios::{self, Target};

async fn node() -> (turnstile::server::RunningServer, Target) {
    let cfg = Config {
        http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        grpc_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        signing_key: Some("loadtest-test-signing-key-0123456789abcdef".into()),
        // Sockets are not read while the rest sign in: 2 s of silence on a
        // busy 2-core CI machine must not count as a dead socket.
        heartbeat: Duration::from_secs(1),
        ..Config::default()
    };
    let server = turnstile::server::start(cfg).await.expect("node starts");
    let target = Target {
        grpc: vec![server.grpc_addr.to_string()],
        ws: vec![server.http_addr],
        tenant: "load".into(),
        source_ips: vec!["127.0.0.1".parse().unwrap()],
        api_key: None,
        channels_per_node: 2,
        progress: false,
        run: format!("t{:08x}", rand::random::<u32>()),
        tls: None,
        metrics: vec![],
        shard: Default::default(),
    };
    (server, target)
}

fn clean(r: &Report) {
    assert!(r.errors.is_empty(), "errors: {:?}\n{}", r.errors, r.table());
    assert!(r.violations.is_empty(), "violations: {:?}", r.violations);
    let json = serde_json::to_value(r).expect("report serialises");
    assert_eq!(json["scenario"], r.scenario.as_str());
    assert!(r.svg().contains("<polyline") || r.histograms.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_measures_every_claim() {
    let (server, t) = node().await;
    let r = scenarios::claim(&t, 50, 4).await;
    clean(&r);
    assert_eq!(r.latencies["claim"].count, 50);
    assert_eq!(r.counts["granted"], 50);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_signs_everyone_in() {
    let (server, t) = node().await;
    let r = scenarios::storm(&t, 50, 8).await;
    clean(&r);
    assert_eq!(r.counts["signed_in"], 50);
    assert_eq!(r.latencies["sign_in"].count, 50);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_sockets_and_reads_the_brokers_memory() {
    let (server, t) = node().await;
    let r = scenarios::idle(&t, 50, Duration::from_millis(500), Some(std::process::id())).await;
    clean(&r);
    assert_eq!(r.counts["connected"], 50);
    assert!(
        r.machine.contains_key("broker_kib_per_session"),
        "{:?}",
        r.machine
    );
    server.shutdown().await;
}

/// With no pid and more than one node address, the broker's figures come
/// from the nodes' /metrics (here the same node listed twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_reads_the_brokers_memory_from_its_metrics_without_a_pid() {
    let (server, mut t) = node().await;
    t.ws.push(t.ws[0]);
    let r = scenarios::idle(&t, 50, Duration::from_millis(500), None).await;
    clean(&r);
    assert!(
        r.notes.iter().any(|n| n.contains("/metrics of 2 node(s)")),
        "{:?}",
        r.notes
    );
    assert!(
        r.machine
            .get("broker_rss_before_kib")
            .is_some_and(|k| *k > 0.0),
        "{:?} {:?}",
        r.machine,
        r.notes
    );
    assert!(r.machine.contains_key("broker_kib_per_session"));
    assert!(r
        .machine
        .contains_key("broker_cpu_percent_of_one_core_during_hold"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_sees_every_forced_logout() {
    let (server, t) = node().await;
    let r = scenarios::takeover(&t, 50, 2).await;
    clean(&r);
    assert_eq!(r.latencies["claim_to_forced_logout"].count, 50);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_storm_signs_in_first_then_takes_every_login_over() {
    let (server, t) = node().await;
    let r = scenarios::takeover_storm(&t, 50, 8, 500.0).await;
    clean(&r);
    assert_eq!(r.latencies["sign_in"].count, 50);
    assert_eq!(r.latencies["claim_to_forced_logout"].count, 50);
    assert_eq!(r.counts["takeovers"], 50);
    assert!(r.rates.contains_key("takeovers"), "{:?}", r.rates);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stations_finds_exactly_one_holder_per_station() {
    let (server, t) = node().await;
    let r = scenarios::stations(&t, 50, 10).await;
    clean(&r);
    assert_eq!(r.counts["granted"], 10);
    assert_eq!(r.counts["station_in_use"], 40);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_keeps_the_invariants() {
    let (server, t) = node().await;
    let r = scenarios::churn(&t, 10, Duration::from_secs(1)).await;
    clean(&r);
    let actions: u64 = ["takeover", "drop_resume", "logout"]
        .iter()
        .map(|k| r.counts.get(*k).copied().unwrap_or(0))
        .sum();
    assert!(actions > 0, "churn did something: {:?}", r.counts);
    server.shutdown().await;
}
