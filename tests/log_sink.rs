//! A log sink that stops reading must never stop the broker.
//!
//! `turnstile serve` runs with its stderr on a pipe nobody reads (what
//! Docker's blocking log mode or a stuck collector looks like to a process).
//! The pipe fills after a few hundred lines; from then on every log line must
//! be dropped and counted, never waited for: claims and pongs keep answering.

mod support;

use std::process::Stdio;

use support::procs::{spawn_serve, Served};
use support::*;
use tokio::process::Command;

/// Audit events the node writes while nobody reads its stderr.
const AUDIT_EVENTS: usize = 10_000;
/// Claims in flight at once while making them.
const IN_FLIGHT: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_stderr_is_never_read_keeps_answering() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_turnstile"));
    cmd.args(["serve", "--http-listen", "127.0.0.1:0"])
        .args(["--grpc-listen", "127.0.0.1:0", "--signing-key", SECRET])
        // Every audit event is an `info` line on stderr.
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    let Served {
        mut child,
        http,
        grpc,
        ..
    } = spawn_serve(&mut cmd).await;
    // Held, never read: the pipe's 64 KiB fill and writes to it would block.
    let _stuck_sink = child.stderr.take().expect("piped stderr");

    // Each takeover of the same login writes one `forced_logout` audit line
    // (~300 bytes): 10,000 of them are ~45 times what the pipe holds.
    let mut tasks = Vec::new();
    for worker in 0..IN_FLIGHT {
        let mut client = grpc_client(grpc).await;
        tasks.push(tokio::spawn(async move {
            let login = format!("agent-{worker}");
            for _ in 0..AUDIT_EVENTS / IN_FLIGHT + 1 {
                let r = within(
                    "a takeover while stderr is stuck",
                    client.claim(claim_req("acme", &login, "", ConflictPolicy::Takeover)),
                )
                .await
                .expect("the claim is answered")
                .into_inner();
                assert_eq!(r.outcome(), ClaimOutcome::Granted);
            }
        }));
    }
    for t in tasks {
        t.await.expect("claim worker");
    }

    // Still answering: a fresh claim, its socket's pong, and the metrics,
    // which count what was dropped.
    let mut client = grpc_client(grpc).await;
    let r = within(
        "a claim after 10,000 audit events",
        client.claim(claim_req("acme", "late", "s9", ConflictPolicy::Reject)),
    )
    .await
    .expect("the claim is answered")
    .into_inner();
    assert_eq!(r.outcome(), ClaimOutcome::Granted);
    let mut ws = connect(http, &r.token).await;
    ws.expect_type("welcome").await;
    ws.ping("still-here").await;

    let (status, body) = http_get(http, "/metrics").await;
    assert_eq!(status, 200);
    let counted = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    };
    let dropped = counted("turnstile_log_lines_dropped_total ");
    assert!(
        dropped > 0.0,
        "lines that could not be written are counted, got {dropped}"
    );
    let audited = counted("turnstile_audit_events_total{event=\"forced_logout\"} ");
    assert!(
        audited >= AUDIT_EVENTS as f64,
        "every audit event is still counted: {audited}"
    );

    child.start_kill().expect("kill");
    within("the binary exits", child.wait())
        .await
        .expect("wait");
}
