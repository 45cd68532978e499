//! The real `turnstile-loadtest` binary, every scenario run small, against
//! a node that speaks only TLS (`wss://`, gRPC over TLS, `/metrics` over
//! HTTPS) with a certificate from a throwaway CA made here, and an API key
//! on the gRPC API; then with mTLS (a client certificate required).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use turnstile::config::{ApiKeyConfig, Config};

const KEY: &str = "loadtest-api-key-0123456789";

/// A CA, a server certificate for `localhost` and a client certificate,
/// as PEM files in a fresh directory (removed on drop).
struct Pki(PathBuf);

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pki() -> Pki {
    let dir = std::env::temp_dir().join(format!("loadtest-tls-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let write = |name: &str, pem: String| std::fs::write(dir.join(name), pem).expect("write");
    for (name, san) in [("server", "localhost"), ("client", "loadtest")] {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec![san.to_string()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("cert");
        write(&format!("{name}.pem"), cert.pem());
        write(&format!("{name}.key"), key.serialize_pem());
    }
    write("ca.pem", ca.pem());
    Pki(dir)
}

async fn tls_node(dir: &Path, mtls: bool) -> turnstile::server::RunningServer {
    let cfg = Config {
        http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        grpc_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        signing_key: Some("loadtest-test-signing-key-0123456789abcdef".into()),
        heartbeat: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(60),
        tls_cert_file: Some(dir.join("server.pem")),
        tls_key_file: Some(dir.join("server.key")),
        tls_client_ca_file: mtls.then(|| dir.join("ca.pem")),
        api_keys: vec![ApiKeyConfig {
            name: "loadtest".into(),
            key: KEY.into(),
            tenant: None,
        }],
        ..Config::default()
    };
    turnstile::server::start(cfg)
        .await
        .expect("TLS node starts")
}

/// A node's gRPC and HTTP addresses.
#[derive(Clone, Copy)]
struct Addrs {
    grpc: SocketAddr,
    http: SocketAddr,
}

impl Addrs {
    fn of(node: &turnstile::server::RunningServer) -> Self {
        Self {
            grpc: node.grpc_addr,
            http: node.http_addr,
        }
    }
}

/// Runs the binary with `args` against `node`; returns its JSON report.
fn run(node: Addrs, dir: &Path, mtls: bool, args: &[&str]) -> serde_json::Value {
    let json = dir.join(format!("{}.json", args.join("_").replace(['/', '.'], "")));
    let svg = json.with_extension("svg");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_turnstile-loadtest"));
    cmd.args(args)
        .args(["--grpc", &node.grpc.to_string()])
        .args(["--ws", &node.http.to_string()])
        .args(["--server-name", "localhost", "--quiet", "--threads", "2"])
        .arg("--ca-file")
        .arg(dir.join("ca.pem"))
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .env("TURNSTILE_LOADTEST_API_KEY", KEY);
    if mtls {
        cmd.arg("--client-cert")
            .arg(dir.join("client.pem"))
            .arg("--client-key")
            .arg(dir.join("client.key"));
    }
    let out = cmd.output().expect("the loadtest binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).expect("JSON");
    assert_eq!(
        report["errors"],
        serde_json::json!({}),
        "{args:?}: {stdout}"
    );
    assert_eq!(
        report["violations"],
        serde_json::json!([]),
        "{args:?}: {stdout}"
    );
    assert_eq!(report["params"]["tls"], true, "{args:?}");
    assert!(
        std::fs::read_to_string(&svg)
            .expect("svg")
            .starts_with("<svg"),
        "{args:?}"
    );
    report
}

/// A profile small enough for CI: 12 agents, 2 tenants, ~4 s.
pub fn small_profile(dir: &Path) -> PathBuf {
    let p = dir.join("shift.toml");
    std::fs::write(
        &p,
        "agents = 12\ntenants = 2\nramp_in = \"1s\"\nsteady = \"2s\"\nramp_out = \"1s\"\n\
         status_every = \"500ms\"\nblip_every = \"2s\"\nblip_length = \"100ms\"\n\
         desk_moves = 0.3\ntakeovers = 0.3\ntenant_notice_every = \"500ms\"\n\
         personal_notice_every = \"1s\"\nsample_every = \"500ms\"\nseed = 7\n",
    )
    .expect("profile");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_over_tls_with_an_api_key() {
    let pki = pki();
    let dir = pki.0.clone();
    let node = tls_node(&dir, false).await;
    let pid = std::process::id().to_string();
    let profile = small_profile(&dir);
    let n = Addrs::of(&node);
    let reports = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            vec![
                run(n, &dir, false, &["claim", "--n", "20", "--in-flight", "4"]),
                run(
                    n,
                    &dir,
                    false,
                    &["storm", "--n", "20", "--concurrency", "4"],
                ),
                run(
                    n,
                    &dir,
                    false,
                    &["idle", "--n", "10", "--hold", "300ms", "--broker-pid", &pid],
                ),
                run(
                    n,
                    &dir,
                    false,
                    &["takeover", "--k", "10", "--concurrency", "2"],
                ),
                run(
                    n,
                    &dir,
                    false,
                    &[
                        "takeover",
                        "--k",
                        "10",
                        "--concurrency",
                        "4",
                        "--rate",
                        "200",
                    ],
                ),
                run(n, &dir, false, &["stations", "--m", "20", "--s", "5"]),
                run(
                    n,
                    &dir,
                    false,
                    &["churn", "--agents", "4", "--duration", "1s"],
                ),
                run(
                    n,
                    &dir,
                    false,
                    &[
                        "tenants",
                        "--tenants",
                        "5",
                        "--sessions",
                        "2",
                        "--hold",
                        "300ms",
                    ],
                ),
                run(
                    n,
                    &dir,
                    false,
                    &["shift", "--profile", profile.to_str().expect("utf-8")],
                ),
            ]
        }
    })
    .await
    .expect("runs");
    assert_eq!(reports[0]["counts"]["granted"], 20);
    assert_eq!(reports[1]["counts"]["signed_in"], 20);
    assert_eq!(reports[4]["counts"]["takeovers"], 10);
    assert_eq!(reports[5]["counts"]["granted"], 5);
    assert_eq!(reports[7]["counts"]["held"], 10);
    let shift = &reports[8];
    assert_eq!(shift["counts"]["sign_ins"], 12, "{shift}");
    assert_eq!(shift["counts"]["sign_outs"], 12, "{shift}");
    // The nodes' memory was read from /metrics over HTTPS.
    assert!(
        shift["machine"]["broker_rss_max_kib"].as_f64().is_some(),
        "{}",
        shift["machine"]
    );
    // The time-series plot beside the percentile plot.
    let timelines = std::fs::read_dir(&dir)
        .expect("dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with("-timeline.svg"))
        })
        .count();
    assert_eq!(timelines, 1, "only shift has a timeline");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_needs_the_client_certificate() {
    let pki = pki();
    let dir = pki.0.clone();
    let node = tls_node(&dir, true).await;
    let n = Addrs::of(&node);
    let dir2 = dir.clone();
    let report = tokio::task::spawn_blocking(move || {
        run(n, &dir2, true, &["claim", "--n", "10", "--in-flight", "2"])
    })
    .await
    .expect("runs");
    assert_eq!(report["counts"]["granted"], 10);
    // Without the certificate the generator is refused and says so.
    let out = Command::new(env!("CARGO_BIN_EXE_turnstile-loadtest"))
        .args(["claim", "--n", "1", "--quiet"])
        .args(["--grpc", &node.grpc_addr.to_string()])
        .args(["--ws", &node.http_addr.to_string()])
        .args(["--server-name", "localhost"])
        .arg("--ca-file")
        .arg(dir.join("ca.pem"))
        .arg("--json")
        .arg(dir.join("refused.json"))
        .env("TURNSTILE_LOADTEST_API_KEY", KEY)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let refused: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("refused.json")).expect("report"))
            .expect("JSON");
    assert_eq!(refused["counts"]["granted"], 0, "{stdout}");
    let errors = refused["errors"].as_object().expect("errors");
    assert!(
        errors.keys().any(|k| k.starts_with("grpc_")),
        "refused without a client certificate, and the report says so: {stdout}"
    );
    node.shutdown().await;
}
