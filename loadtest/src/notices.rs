//! `notice-fanout`: N connected sessions, then K tenant-wide notices of a
//! given size, while a claim loop runs in another tenant. Reports whether
//! every socket got every notice and how long it took, the Notify
//! latency, the claim latency during the fan-out (claims of every tenant
//! wait behind a slow Redis script), each node's RSS growth across the
//! fan-out (from its `/metrics`), and the Redis `SLOWLOG` entries written
//! during it (with `--redis`).
//!
//! A notice over the broker's bounds is refused (`INVALID_ARGUMENT`): the
//! report counts the refusal as `notify_refused` and says why.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use turnstile_client::pb::{self, ClaimOutcome, ConflictPolicy};
use turnstile_client::{Error, ServerFrame};

use crate::probe::{metric, scrape};
use crate::report::{Latency, Report};
use crate::scenarios::{classify, finish, release_all, sign_in_many, threads, Target};
use crate::slowlog::Slowlog;
use crate::sys;

/// What to send, to how many.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Connected sessions in the tenant.
    pub sessions: usize,
    /// Tenant-wide notices sent, one after another.
    pub notices: usize,
    /// Bytes of each notice's text.
    pub text_bytes: usize,
    /// Bytes of each notice's data (a JSON object of about this size).
    pub data_bytes: usize,
    /// Claims in flight in the claim loop (another tenant).
    pub claimers: usize,
    /// How long every socket may take to get every notice.
    pub deadline: Duration,
    /// The Redis the nodes share, for its `SLOWLOG` (none: not read).
    pub redis: Option<String>,
}

/// Each node's resident memory, from its `/metrics`.
async fn rss(t: &Target) -> Vec<Option<f64>> {
    let mut out = Vec::new();
    for node in &t.ws {
        let body = scrape(*node, t.tls.as_ref()).await.ok();
        out.push(body.and_then(|b| metric(&b, "process_resident_memory_bytes")));
    }
    out
}

fn notice(plan: &Plan, k: usize) -> pb::Notice {
    // {"pad":"xxx…"}: 10 bytes of JSON around the padding.
    let pad = plan.data_bytes.saturating_sub(10);
    pb::Notice {
        id: format!("fanout-{k}"),
        kind: "announcement".into(),
        severity: "info".into(),
        text: "t".repeat(plan.text_bytes),
        data_json: if plan.data_bytes == 0 {
            String::new()
        } else {
            format!("{{\"pad\":\"{}\"}}", "d".repeat(pad))
        },
        expires_at_ms: 0,
    }
}

/// Runs the scenario.
pub async fn notice_fanout(t: &Target, plan: &Plan) -> Report {
    let mut report = Report::new("notice-fanout");
    report.param("sessions", plan.sessions);
    report.param("notices", plan.notices);
    report.param("text_bytes", plan.text_bytes);
    report.param("data_bytes", plan.data_bytes);
    report.param("claimers", plan.claimers);
    report.param("nodes", t.ws.len());
    let cpu0 = sys::cpu_time("self");
    let started = Instant::now();
    let held = sign_in_many(t, plan.sessions, 256, &mut report, "connects").await;
    report.count("connected", held.len() as u64);

    // Every socket counts the notices it receives.
    let got_all = Arc::new(AtomicUsize::new(0));
    let unexpected = Arc::new(AtomicUsize::new(0));
    let last_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut readers = Vec::new();
    let mut ids = Vec::new();
    for mut s in held {
        ids.push(s.session_id.clone());
        let (got_all, unexpected, last_at, stop) = (
            got_all.clone(),
            unexpected.clone(),
            last_at.clone(),
            stop.clone(),
        );
        let want = plan.notices;
        readers.push(tokio::spawn(async move {
            let mut seen = 0;
            loop {
                tokio::select! {
                    _ = stop.notified() => return s.socket,
                    f = s.socket.next_frame() => match f {
                        Ok(ServerFrame::Notice(_)) => {
                            seen += 1;
                            if seen == want {
                                got_all.fetch_add(1, Ordering::Relaxed);
                                let mut l = last_at.lock().unwrap_or_else(|p| p.into_inner());
                                *l = Some(Instant::now());
                            }
                        }
                        // The socket stays open through these: the node
                        // telling it about its connectivity is not a loss.
                        Ok(ServerFrame::Pong(_) | ServerFrame::Connectivity { .. }) => {}
                        _ => {
                            unexpected.fetch_add(1, Ordering::Relaxed);
                            return s.socket;
                        }
                    }
                }
            }
        }));
    }

    let mut slowlog = Slowlog::open_or_note(plan.redis.as_deref(), &mut report).await;
    let rss_before = rss(t).await;

    // The claim loop: fresh logins of another tenant, until the fan-out ends.
    let brokers = match t.brokers().await {
        Ok(b) => b,
        Err(e) => {
            report.error(&classify(&e));
            return report;
        }
    };
    let done = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let mut claimers = Vec::new();
    for w in 0..plan.claimers {
        let mut b = brokers[w % brokers.len()].clone();
        let (done, next) = (done.clone(), next.clone());
        let (tenant, run) = (format!("{}-claims", t.tenant), t.run.clone());
        claimers.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Latency::default(), Vec::new());
            while !done.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let req = pb::ClaimRequest {
                    tenant: tenant.clone(),
                    login: format!("{run}-c{i}"),
                    client: "loadtest".into(),
                    role: "agent".into(),
                    on_conflict: ConflictPolicy::Reject as i32,
                    ..Default::default()
                };
                let sent = Instant::now();
                match b.claim(req).await {
                    Ok(r) if r.outcome() == ClaimOutcome::Granted => lat.record(sent.elapsed()),
                    Ok(r) => errors.push(format!("claim_{:?}", r.outcome()).to_lowercase()),
                    Err(e) => errors.push(classify(&e)),
                }
            }
            (lat, errors)
        }));
    }

    let fanout_start = Instant::now();
    let mut b = brokers[0].clone();
    let mut notify_lat = Latency::default();
    let mut refused = 0u64;
    for k in 0..plan.notices {
        let sent = Instant::now();
        let r = b
            .notify(pb::NotifyRequest {
                tenant: t.tenant.clone(),
                target: Some(pb::notify_request::Target::AllSessions(true)),
                notice: Some(notice(plan, k)),
            })
            .await;
        match r {
            Ok(_) => notify_lat.record(sent.elapsed()),
            Err(e) if classify(&e) == "grpc_invalidargument" => {
                refused += 1;
                if let (1, Error::Status(s)) = (refused, &e) {
                    report
                        .notes
                        .push(format!("Notify refused: {}", s.message()));
                }
            }
            Err(e) => report.error(&classify(&e)),
        }
    }
    report.latency("notify", &notify_lat);
    report.count("notify_refused", refused);
    // Every socket gets every notice, within the deadline (a bounded wait).
    let expected = if refused > 0 { 0 } else { ids.len() };
    let bound = Instant::now() + plan.deadline;
    while got_all.load(Ordering::Relaxed) < expected
        && unexpected.load(Ordering::Relaxed) == 0
        && Instant::now() < bound
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done.store(true, Ordering::Relaxed);
    let got = got_all.load(Ordering::Relaxed);
    report.count("sockets_with_every_notice", got as u64);
    if refused == 0 {
        if let Some(at) = *last_at.lock().unwrap_or_else(|p| p.into_inner()) {
            report.machine.insert(
                "fanout_ms_notify_sent_to_last_socket".into(),
                at.duration_since(fanout_start).as_secs_f64() * 1e3,
            );
        }
        if got < expected {
            report.violations.push(format!(
                "{} of {expected} sockets did not get every notice within {:?}",
                expected - got,
                plan.deadline
            ));
        }
    }
    let mut claim_lat = Latency::default();
    for c in claimers {
        if let Ok((l, errors)) = c.await {
            claim_lat.merge(&l);
            for e in errors {
                report.error(&e);
            }
        }
    }
    report.latency("claim_during_fanout", &claim_lat);
    let rss_after = rss(t).await;
    for (i, (a, b)) in rss_before.iter().zip(&rss_after).enumerate() {
        match (a, b) {
            (Some(a), Some(b)) => {
                report
                    .machine
                    .insert(format!("node{i}_rss_growth_kib"), (b - a) / 1024.0);
            }
            _ => report.notes.push(format!("node {i}: RSS not measured")),
        }
    }
    if let Some(s) = slowlog.as_mut() {
        s.report_into(&mut report, "the fan-out").await;
    }
    let lost = unexpected.load(Ordering::Relaxed);
    if lost > 0 {
        report.violations.push(format!(
            "{lost} sockets were closed or sent something unexpected"
        ));
    }
    finish(&mut report, started, cpu0, threads());
    stop.notify_waiters();
    let mut sockets = Vec::new();
    for r in readers {
        if let Ok(s) = r.await {
            sockets.push(s);
        }
    }
    release_all(t, ids.into_iter().zip(sockets).collect()).await;
    report
}
