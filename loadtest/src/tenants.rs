//! `tenants`: N tenants × M PENDING sessions held idle for a while against
//! a cluster — what many quiet tenants cost when nothing happens. Reports
//! the nodes' lease refresh health (`turnstile_redis_lease_refresh_seconds`,
//! `turnstile_redis_fenced_total`), each node's CPU while idle (from its
//! `/metrics`), and Redis' CPU while idle and the `SLOWLOG` entries written
//! during the run (with `--redis`).
//!
//! The sessions are claimed and never connected: run the nodes with a
//! connect timeout longer than the hold, or expiry ends them mid-run.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use turnstile_client::pb::{self, ClaimOutcome, ConflictPolicy};
use turnstile_client::Tls;

use crate::probe::{metric, scrape, Probe};
use crate::report::{Latency, Report};
use crate::scenarios::{classify, finish, threads, Target};
use crate::slowlog::Slowlog;
use crate::sys;

/// What to hold.
#[derive(Clone, Debug)]
pub struct Plan {
    pub tenants: usize,
    pub sessions: usize,
    pub hold: Duration,
    /// Claims (and releases) in flight.
    pub concurrency: usize,
    /// The Redis the nodes share, for its `SLOWLOG` (none: not read).
    pub redis: Option<String>,
}

/// One node's counters at one moment.
#[derive(Clone, Copy, Debug, Default)]
struct NodeFigures {
    cpu_s: f64,
    fenced: f64,
    woken: f64,
}

async fn figures(node: SocketAddr, tls: Option<&Tls>) -> Result<(NodeFigures, String), String> {
    let body = scrape(node, tls).await?;
    let f = NodeFigures {
        cpu_s: metric(&body, "process_cpu_seconds_total")
            .ok_or(format!("{node}/metrics has no process_cpu_seconds_total"))?,
        fenced: metric(&body, "turnstile_redis_fenced_total").unwrap_or(0.0),
        woken: metric(&body, "turnstile_redis_expiry_tenants_total").unwrap_or(0.0),
    };
    Ok((f, body))
}

/// Runs the scenario.
pub async fn tenants(t: &Target, plan: &Plan) -> Report {
    let mut report = Report::new("tenants");
    report.param("tenants", plan.tenants);
    report.param("sessions_per_tenant", plan.sessions);
    report.param("hold_s", plan.hold.as_secs_f64());
    t.describe(&mut report);
    let (nodes, tls) = t.metrics_nodes();
    report.notes.push(
        Probe::Metrics {
            nodes: nodes.clone(),
            tls: tls.clone(),
        }
        .describe()
        .replace("memory and ", ""),
    );
    let mut slowlog = Slowlog::open_or_note(plan.redis.as_deref(), &mut report).await;
    let cpu0 = sys::cpu_time("self");
    let started = Instant::now();
    let held = claim_all(t, plan, &mut report).await;
    report.count("held", held.len() as u64);

    let sample = async || {
        let mut out = Vec::new();
        for node in &nodes {
            out.push(figures(*node, tls.as_ref()).await);
        }
        out
    };
    let redis_cpu0 = match slowlog.as_mut() {
        Some(s) => s.cpu_seconds().await.ok(),
        None => None,
    };
    let before = sample().await;
    let hold_start = Instant::now();
    tokio::time::sleep(plan.hold).await;
    let held_for = hold_start.elapsed().as_secs_f64().max(1e-9);
    let after = sample().await;
    if let (Some(c0), Some(s)) = (redis_cpu0, slowlog.as_mut()) {
        if let Ok(c1) = s.cpu_seconds().await {
            report.machine.insert(
                "redis_cpu_percent_of_one_core_while_idle".into(),
                100.0 * (c1 - c0) / held_for,
            );
        }
    }
    let mut cpu_max: f64 = 0.0;
    let mut lease_p99: f64 = 0.0;
    let mut lease_max: f64 = 0.0;
    let (mut fenced, mut woken) = (0.0, 0.0);
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let ((b, _), (a, body)) = match (b, a) {
            (Ok(b), Ok(a)) => (b, a),
            (Err(e), _) | (_, Err(e)) => {
                report.notes.push(format!("node {i} not measured: {e}"));
                continue;
            }
        };
        let cpu = 100.0 * (a.cpu_s - b.cpu_s) / held_for;
        report
            .machine
            .insert(format!("node{i}_cpu_percent_of_one_core_while_idle"), cpu);
        cpu_max = cpu_max.max(cpu);
        fenced += a.fenced - b.fenced;
        woken += a.woken - b.woken;
        let q = |q: &str| {
            metric(
                body,
                &format!("turnstile_redis_lease_refresh_seconds{{quantile=\"{q}\"}}"),
            )
        };
        match (q("0.99"), q("1")) {
            (Some(p99), Some(max)) => {
                lease_p99 = lease_p99.max(p99);
                lease_max = lease_max.max(max);
            }
            _ => report
                .notes
                .push(format!("node {i} exposes no lease refresh latency")),
        }
    }
    report.machine.insert(
        "node_cpu_percent_of_one_core_while_idle_max".into(),
        cpu_max,
    );
    report.machine.insert(
        "lease_refresh_p99_ms_max_over_nodes".into(),
        lease_p99 * 1e3,
    );
    report
        .machine
        .insert("lease_refresh_max_ms_over_nodes".into(), lease_max * 1e3);
    report.count("fenced_during_hold", fenced as u64);
    report.count("expiry_tenants_woken_during_hold", woken as u64);
    if fenced > 0.0 {
        report.violations.push(format!(
            "nodes were fenced {fenced} time(s) while idle: a lease refresh came too late"
        ));
    }
    if let Some(s) = slowlog.as_mut() {
        s.report_into(&mut report, "the run").await;
    }
    finish(&mut report, started, cpu0, threads());
    release_all(t, plan.concurrency, held).await;
    report
}

/// The tenant of the `i`th.
fn tenant_name(t: &Target, i: usize) -> String {
    format!("{}-{}-{i}", t.tenant, t.run)
}

/// Claims `sessions` logins in each of `tenants` tenants; returns the held
/// (tenant, session id).
async fn claim_all(t: &Target, plan: &Plan, report: &mut Report) -> Vec<(String, String)> {
    let brokers = match t.brokers().await {
        Ok(b) => b,
        Err(e) => {
            report.error(&classify(&e));
            return Vec::new();
        }
    };
    let n = plan.tenants * plan.sessions;
    let next = Arc::new(AtomicUsize::new(0));
    let per = plan.sessions.max(1);
    // A shard owns whole tenants: tenant j with j ≡ I (mod N).
    let mine: Arc<Vec<usize>> = Arc::new((0..n).filter(|i| t.shard.owns(i / per)).collect());
    let bar = t.bar(mine.len() as u64, "claims");
    let mut tasks = Vec::new();
    for w in 0..plan.concurrency.max(1) {
        let mut b = brokers[w % brokers.len()].clone();
        let (next, t, bar, mine) = (next.clone(), t.clone(), bar.clone(), mine.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors, mut held) = (Latency::default(), Vec::new(), Vec::new());
            while let Some(&i) = mine.get(next.fetch_add(1, Ordering::Relaxed)) {
                let tenant = tenant_name(&t, i / per);
                let req = pb::ClaimRequest {
                    tenant: tenant.clone(),
                    login: format!("a{}", i % per),
                    client: "loadtest".into(),
                    role: "agent".into(),
                    on_conflict: ConflictPolicy::Reject as i32,
                    ..Default::default()
                };
                let sent = Instant::now();
                match b.claim(req).await {
                    Ok(r) if r.outcome() == ClaimOutcome::Granted => {
                        lat.record(sent.elapsed());
                        if let Some(s) = r.session {
                            held.push((tenant, s.session_id));
                        }
                    }
                    Ok(r) => errors.push(format!("claim_{:?}", r.outcome()).to_lowercase()),
                    Err(e) => errors.push(classify(&e)),
                }
                bar.inc(1);
            }
            (lat, errors, held)
        }));
    }
    let (mut lat, mut all) = (Latency::default(), Vec::with_capacity(n));
    for task in tasks {
        if let Ok((l, errors, held)) = task.await {
            lat.merge(&l);
            all.extend(held);
            for e in errors {
                report.error(&e);
            }
        }
    }
    bar.finish_and_clear();
    report.latency("claim", &lat);
    all
}

/// Releases what was held (best effort).
async fn release_all(t: &Target, concurrency: usize, held: Vec<(String, String)>) {
    let Ok(brokers) = t.brokers().await else {
        return;
    };
    let held = Arc::new(Mutex::new(held));
    let mut tasks = Vec::new();
    for w in 0..concurrency.max(1) {
        let mut b = brokers[w % brokers.len()].clone();
        let held = held.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Some((tenant, id)) = held.lock().await.pop() else {
                    break;
                };
                let _ = b.release(&tenant, &id).await;
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}
