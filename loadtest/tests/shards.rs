//! `--shard I/N` and `merge`: two generator processes (the real binary),
//! each with half the agents of one `shift`, against one node; their
//! reports merged count exactly what one generator doing both halves
//! counts — histograms merged, not percentiles averaged.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use turnstile::config::Config;

const BIN: &str = env!("CARGO_BIN_EXE_turnstile-loadtest");

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn profile(dir: &Path) -> PathBuf {
    let p = dir.join("shift.json");
    let json = serde_json::json!({
        "agents": 16, "tenants": 3,
        "ramp_in": "1s", "steady": "2s", "ramp_out": "1s",
        "status_every": "400ms", "blip_every": "1500ms", "blip_length": "100ms",
        "desk_moves": 0.25, "takeovers": 0.25,
        "tenant_notice_every": "500ms", "personal_notice_every": "800ms",
        "sample_every": "500ms", "seed": 11
    });
    std::fs::write(&p, json.to_string()).expect("profile");
    p
}

fn shift(node: (SocketAddr, SocketAddr), dir: &Path, run: &str, shard: &str) -> Command {
    let mut c = Command::new(BIN);
    c.args(["shift", "--quiet", "--threads", "1"])
        .arg("--profile")
        .arg(profile(dir))
        .args(["--grpc", &node.0.to_string(), "--ws", &node.1.to_string()])
        .args(["--run", run, "--shard", shard])
        .arg("--json")
        .arg(dir.join(format!("{run}-{}.json", shard.replace('/', "of"))));
    c
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn read(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).expect("report")).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_merged_count_what_one_generator_counts() {
    let dir =
        Dir(std::env::temp_dir().join(format!("loadtest-shards-{:08x}", rand::random::<u32>())));
    std::fs::create_dir_all(&dir.0).expect("dir");
    let cfg = Config {
        http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        grpc_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        signing_key: Some("loadtest-test-signing-key-0123456789abcdef".into()),
        heartbeat: Duration::from_millis(500),
        ..Config::default()
    };
    let server = turnstile::server::start(cfg).await.expect("node starts");
    let node = (server.grpc_addr, server.http_addr);
    let d = dir.0.clone();
    let (merged, whole, table) = tokio::task::spawn_blocking(move || {
        // The two shards at once, as on two machines.
        let a = shift(node, &d, "sh", "0/2").spawn().expect("shard 0");
        let b = shift(node, &d, "sh", "1/2").spawn().expect("shard 1");
        ok(a.wait_with_output().expect("shard 0 ends"));
        ok(b.wait_with_output().expect("shard 1 ends"));
        ok(shift(node, &d, "one", "0/1")
            .output()
            .expect("one generator"));
        let table = ok(Command::new(BIN)
            .arg("merge")
            .arg(d.join("sh-0of2.json"))
            .arg(d.join("sh-1of2.json"))
            .arg("--json")
            .arg(d.join("merged.json"))
            .arg("--svg")
            .arg(d.join("merged.svg"))
            .output()
            .expect("merge"));
        (
            read(&d.join("merged.json")),
            read(&d.join("one-0of1.json")),
            table,
        )
    })
    .await
    .expect("runs");
    let shard0 = read(&dir.0.join("sh-0of2.json"));
    assert_eq!(
        shard0["counts"]["sign_ins"], 8,
        "each shard has half the agents"
    );
    for (k, v) in whole["counts"].as_object().expect("counts") {
        // Timing, not the schedule: notices reach whoever is connected when
        // they go out; whether the node saw a drop before the resume.
        if k.ends_with("_received") || k == "sessions_peak" || k.starts_with("resumed_before") {
            continue;
        }
        assert_eq!(&merged["counts"][k], v, "count {k}: {table}");
    }
    for (k, v) in whole["latencies"].as_object().expect("latencies") {
        if k.starts_with("notice_") {
            continue;
        }
        assert_eq!(
            merged["latencies"][k]["count"], v["count"],
            "latency {k}: {table}"
        );
    }
    for kind in [
        "sign_ins",
        "status_changes",
        "blips",
        "desk_moves",
        "takeovers",
        "sign_outs",
    ] {
        assert!(
            whole["counts"][kind].as_u64().unwrap_or(0) > 0,
            "{kind}: {}",
            whole["counts"]
        );
    }
    assert_eq!(merged["errors"], serde_json::json!({}), "{table}");
    assert_eq!(merged["violations"], serde_json::json!([]), "{table}");
    assert_eq!(
        merged["phases"].as_array().map(Vec::len),
        Some(3),
        "{table}"
    );
    assert!(table.contains("phase steady"), "{table}");
    assert!(table.contains("over time"), "{table}");
    assert!(dir.0.join("merged-timeline.svg").exists());
    server.shutdown().await;
}
