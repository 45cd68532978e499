//! Smoke test of the real binary: `turnstile serve` on ephemeral ports, one
//! claim over gRPC, `/healthz` and `/metrics` over HTTP.

mod support;

use std::process::Stdio;

use support::procs::{spawn_serve, Served};
use support::*;
use tokio::process::Command;

#[tokio::test]
async fn serve_starts_claims_and_reports_health_and_metrics() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_turnstile"));
    cmd.args([
        "serve",
        "--http-listen",
        "127.0.0.1:0",
        "--grpc-listen",
        "127.0.0.1:0",
    ])
    .env_remove("RUST_LOG")
    // Settings from the environment reach the typed config too.
    .env("TURNSTILE_NODE", "from-env")
    .env("TURNSTILE_MAX_SOCKETS", "50")
    .stdin(Stdio::null())
    .stderr(Stdio::null());
    let Served {
        mut child,
        http,
        grpc,
        node,
    } = spawn_serve(&mut cmd).await;
    assert_eq!(node, "from-env");
    assert_ne!(http.port(), 0);
    assert_ne!(grpc.port(), 0);

    let mut client = grpc_client(grpc).await;
    let r = within(
        "Claim",
        client.claim(claim_req("acme", "ana", "s1", ConflictPolicy::Reject)),
    )
    .await
    .expect("Claim succeeds")
    .into_inner();
    assert_eq!(r.outcome(), ClaimOutcome::Granted);

    // The token opens a socket on the binary too.
    let mut ws = connect(http, &r.token).await;
    let w = ws.expect_type("welcome").await;
    assert_eq!(w["login"], "ana");

    let (status, _) = http_get(http, "/healthz").await;
    assert_eq!(status, 200);
    let (status, body) = http_get(http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("turnstile_claims_total"), "metrics: {body}");
    // What /readyz says, for the TurnstileNodeNotReady alert.
    assert!(body.contains("turnstile_ready 1"), "metrics: {body}");
    // The process's own figures, which a remote load test reads.
    let rss = body
        .lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(rss.is_some_and(|b| b > 0.0), "metrics: {body}");
    assert!(
        body.contains("process_cpu_seconds_total"),
        "metrics: {body}"
    );

    child.start_kill().expect("kill");
    within("the binary exits", child.wait())
        .await
        .expect("wait");
}

/// A startup error names the Redis it could not reach without printing the
/// password in its URL (issue 15, item 5): logs are read by more people
/// than the secret is meant for.
#[tokio::test]
async fn a_redis_startup_error_does_not_print_the_password() {
    // A port nothing listens on: bind it, note it, free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("redis://agent:hunter2-secret@127.0.0.1:{port}/0");
    let out = within(
        "the binary to give up on Redis",
        Command::new(env!("CARGO_BIN_EXE_turnstile"))
            .args(["serve", "--http-listen", "127.0.0.1:0"])
            .args(["--grpc-listen", "127.0.0.1:0", "--redis", &url])
            .env_remove("RUST_LOG")
            .env_remove("TURNSTILE_REDIS")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the binary runs");
    assert!(!out.status.success(), "serve without its Redis must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stderr.contains("hunter2") && !stdout.contains("hunter2"),
        "the password leaked: {stderr}{stdout}"
    );
    assert!(
        stderr.contains(&format!("redis://agent:***@127.0.0.1:{port}/0")),
        "the error names the Redis (password hidden): {stderr}"
    );
}
