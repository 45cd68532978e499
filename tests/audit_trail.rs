//! The audit trail names where a refused caller came from.
//!
//! The real binary runs with JSON logs and API keys; gRPC calls without a
//! key, with an unknown key and with a key scoped to another tenant are
//! refused, and each `auth_failure` audit line must carry the caller's
//! address (docs/security.md promises it), not `-`.

mod support;

use std::process::Stdio;

use serde_json::Value;
use support::procs::{spawn_serve, Served};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const KEY: &str = "acme-login-service-key-0123456789";

fn with_key(
    key: &str,
    req: turnstile::pb::ClaimRequest,
) -> tonic::Request<turnstile::pb::ClaimRequest> {
    let mut r = tonic::Request::new(req);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("metadata"),
    );
    r
}

#[tokio::test]
async fn refused_grpc_callers_are_audited_with_their_address() {
    let dir = std::env::temp_dir().join(format!("ts-audit-{:x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = dir.join("turnstile.toml");
    std::fs::write(
        &cfg,
        format!("[[api_keys]]\nname = \"acme-login\"\nkey = \"{KEY}\"\ntenant = \"acme\"\n"),
    )
    .expect("config written");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_turnstile"));
    cmd.args(["serve", "--config"])
        .arg(&cfg)
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .args(["--signing-key", SECRET, "--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    let Served {
        mut child, grpc, ..
    } = spawn_serve(&mut cmd).await;
    let mut err = BufReader::new(child.stderr.take().expect("stderr")).lines();

    let mut client = grpc_client(grpc).await;
    let req = || claim_req("acme", "ana", "", ConflictPolicy::Reject);
    let refused = [
        client.claim(req()).await.expect_err("no key"),
        client
            .claim(with_key("not-a-key-of-this-node-000", req()))
            .await
            .expect_err("unknown key"),
        client
            .claim(with_key(
                KEY,
                claim_req("globex", "ana", "", ConflictPolicy::Reject),
            ))
            .await
            .expect_err("key of another tenant"),
    ];
    for s in &refused {
        assert!(
            matches!(
                s.code(),
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
            ),
            "{s:?}"
        );
    }

    let mut audited = Vec::new();
    within("three auth_failure audit lines", async {
        while audited.len() < 3 {
            let l = err.next_line().await.expect("stderr").expect("log line");
            let Ok(v) = serde_json::from_str::<Value>(&l) else {
                continue;
            };
            if v["fields"]["event"] == "auth_failure" {
                audited.push(v);
            }
        }
    })
    .await;
    for v in &audited {
        let from = v["fields"]["from"].as_str().unwrap_or_default();
        assert!(
            from.starts_with("127.0.0.1:"),
            "the audit line names the caller's address: {v}"
        );
    }
    assert_eq!(audited[2]["fields"]["who"], "acme-login", "{}", audited[2]);

    child.start_kill().expect("kill");
    let _ = within("the binary exits", child.wait()).await;
    let _ = std::fs::remove_dir_all(&dir);
}
