//! The `tenants` scenario, run small against a real node on a real
//! `redis-server` (both on ephemeral loopback ports): proves it claims
//! across tenants, reads the node's lease and CPU figures and Redis'
//! SLOWLOG. Speeds are not asserted.

use std::net::{SocketAddr, TcpListener};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use turnstile::config::Config;
use turnstile_loadtest::scenarios::Target;
use turnstile_loadtest::tenants::{self, Plan};

/// A `redis-server` on a free port that logs every command as slow (so the
/// SLOWLOG reading is exercised); killed on drop.
async fn redis_server() -> (Child, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--slowlog-log-slower-than", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server runs (the test command installs it)");
    let url = format!("redis://127.0.0.1:{port}");
    let client = redis::Client::open(url.as_str()).expect("redis url");
    for _ in 0..200 {
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
            if pong.is_ok() {
                return (child, url);
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("redis-server on port {port} did not answer PING within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_holds_sessions_across_tenants_and_reads_lease_cpu_and_slowlog() {
    let (_redis, url) = redis_server().await;
    let cfg = Config {
        http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        grpc_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        signing_key: Some("loadtest-test-signing-key-0123456789abcdef".into()),
        redis: Some(url.parse().expect("redis url")),
        lease_ttl: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(600),
        ..Config::default()
    };
    let server = turnstile::server::start(cfg).await.expect("node starts");
    let t = Target {
        grpc: vec![server.grpc_addr.to_string()],
        ws: vec![server.http_addr],
        tenant: "load".into(),
        source_ips: vec![],
        api_key: None,
        channels_per_node: 2,
        progress: false,
        run: format!("t{:08x}", rand::random::<u32>()),
        tls: None,
        metrics: vec![],
        shard: Default::default(),
    };
    let plan = Plan {
        tenants: 20,
        sessions: 2,
        hold: Duration::from_millis(1500),
        concurrency: 8,
        redis: Some(url),
    };
    let r = tenants::tenants(&t, &plan).await;
    assert!(r.errors.is_empty(), "errors: {:?}\n{}", r.errors, r.table());
    assert!(r.violations.is_empty(), "violations: {:?}", r.violations);
    assert_eq!(r.counts["held"], 40);
    assert_eq!(r.counts["fenced_during_hold"], 0);
    assert!(r.counts["redis_slowlog_entries"] > 0, "{}", r.table());
    for key in [
        "node0_cpu_percent_of_one_core_while_idle",
        "lease_refresh_p99_ms_max_over_nodes",
        "redis_slowlog_max_ms",
        "redis_cpu_percent_of_one_core_while_idle",
    ] {
        assert!(
            r.machine.contains_key(key),
            "{key}: {:?} {:?}",
            r.machine,
            r.notes
        );
    }
    assert!(
        r.machine["lease_refresh_max_ms_over_nodes"] > 0.0,
        "{:?} {:?}",
        r.machine,
        r.notes
    );
    server.shutdown().await;
}
