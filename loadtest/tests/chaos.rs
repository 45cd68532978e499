//! A short chaos run against real processes: a Redis master and replica,
//! three `redis-sentinel`s and three `turnstile serve` nodes (the debug
//! binary beside this test's), every fault kind injected at least once,
//! and the history checker finding nothing. About a minute; `.ci/run`
//! runs it (`--ignored`), as `cargo test --workspace` should stay quick.

use std::path::PathBuf;
use std::time::Duration;

use turnstile_loadtest::chaos::{self, faults::Fault, Plan};

/// `target/debug/turnstile`, beside `target/debug/deps/<this test>`, or
/// `TS_CHAOS_BROKER`.
fn broker() -> PathBuf {
    if let Ok(p) = std::env::var("TS_CHAOS_BROKER") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("this test's path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/debug/deps");
    let p = dir.join("turnstile");
    assert!(
        p.is_file(),
        "{} is missing: build it first (cargo build -p turnstile)",
        p.display()
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a one-minute run of real processes; .ci/run runs it"]
async fn a_short_chaos_run_with_every_fault_breaks_no_promise() {
    let history =
        std::env::temp_dir().join(format!("turnstile-chaos-{}.jsonl", std::process::id()));
    let plan = Plan {
        broker: broker(),
        nodes: 3,
        agents: 40,
        tenants: 2,
        stations: 15,
        duration: Duration::from_secs(45),
        seed: 7,
        faults: Fault::ALL.to_vec(),
        pause: Duration::from_secs(2),
        overlap_window: Duration::from_secs(5),
        history: Some(history.clone()),
        max_events: 1_000_000,
    };
    let report = chaos::chaos(&plan).await.expect("the run starts and ends");
    let table = report.table();
    assert!(report.errors.is_empty(), "{table}");
    assert!(
        report.violations.is_empty(),
        "history: {}\n{table}",
        history.display()
    );
    for f in Fault::ALL {
        let n = report.counts.get(&format!("fault_{}", f.name())).copied();
        assert!(n.unwrap_or(0) >= 1, "{f} was never injected:\n{table}");
    }
    for k in [
        "grants",
        "welcomes",
        "notices_accepted",
        "notices_delivered",
    ] {
        assert!(
            report.counts.get(k).copied().unwrap_or(0) > 0,
            "no {k}:\n{table}"
        );
    }
    assert!(report.machine.contains_key("longest_overlap_ms"), "{table}");
    let _ = std::fs::remove_file(history);
}
