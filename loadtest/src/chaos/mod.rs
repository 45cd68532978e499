//! `turnstile-loadtest chaos`: churn on three nodes behind Sentinel while
//! faults are injected one at a time, then a check of everything the
//! clients saw.
//!
//! - [`world`]: the processes (Redis master and replica, three sentinels,
//!   three nodes), all started and killed here.
//! - [`faults`]: what is injected and how each recovers.
//! - [`churn`]: the agents and what they do.
//! - [`history`]: what the clients saw, as JSON lines.
//! - [`checker`]: the promises the history must keep.

pub mod checker;
pub mod churn;
pub mod faults;
pub mod history;
pub mod world;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use turnstile_client::pb::SessionState;
use turnstile_client::Broker;

use crate::report::Report;
use checker::Rules;
use faults::Fault;
use history::{Event, FinalSession, History};
use world::World;

/// What a chaos run does.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The `turnstile` binary the nodes run.
    pub broker: PathBuf,
    pub nodes: usize,
    pub agents: usize,
    pub tenants: usize,
    /// Stations per tenant.
    pub stations: usize,
    /// How long churn and faults run (then the run quiesces and checks).
    pub duration: Duration,
    pub seed: u64,
    /// The kinds to inject; each round injects every kind once, in a
    /// seeded random order.
    pub faults: Vec<Fault>,
    /// Quiet time between two faults (after the first one's recovery):
    /// a random time below this.
    pub pause: Duration,
    /// Two live holders of one login or station may overlap this long.
    pub overlap_window: Duration,
    /// Write the history here (JSON lines).
    pub history: Option<PathBuf>,
    /// Bound on the events kept.
    pub max_events: usize,
}

impl Plan {
    /// Refuses plans that cannot run, naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.nodes < 2 {
            return Err("--nodes: at least 2 (takeovers go from one node to another)".into());
        }
        if self.agents == 0 || self.tenants == 0 || self.stations == 0 {
            return Err("--agents, --tenants and --stations must be at least 1".into());
        }
        if !self.broker.is_file() {
            return Err(format!(
                "--broker {}: no such file (build it: cargo build -p turnstile)",
                self.broker.display()
            ));
        }
        Ok(())
    }
}

/// Runs the chaos scenario; the report's violations are the checker's.
/// Every process it started is killed before it returns (also on error
/// and on Ctrl-C, which ends the run early but still checks).
pub async fn chaos(plan: &Plan) -> Result<Report, String> {
    plan.validate()?;
    let began = Instant::now();
    let mut report = Report::new("chaos");
    report.param("agents", plan.agents);
    report.param("tenants", plan.tenants);
    report.param("stations_per_tenant", plan.stations);
    report.param("nodes", plan.nodes);
    report.param("duration_s", plan.duration.as_secs_f64());
    report.param("seed", plan.seed);
    report.param(
        "faults",
        plan.faults.iter().map(|f| f.name()).collect::<Vec<_>>(),
    );
    report.param("overlap_window_ms", plan.overlap_window.as_millis() as u64);

    let mut world = World::start(&plan.broker, plan.nodes).await?;
    let mut brokers = Vec::new();
    for n in &world.nodes {
        brokers.push(
            Broker::connect(&n.grpc.to_string())
                .await
                .map_err(|e| format!("node {}: {e}", n.name))?,
        );
    }
    let history = History::new(plan.max_events);
    let shared = Arc::new(churn::Shared {
        brokers: brokers.clone(),
        ws: world.nodes.iter().map(|n| n.http).collect(),
        tenants: plan.tenants,
        stations: plan.stations,
        history: history.clone(),
        ops: Mutex::new(BTreeMap::new()),
        seed: plan.seed,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let agents: Vec<_> = (0..plan.agents)
        .map(|i| tokio::spawn(churn::agent(i, shared.clone(), stop_rx.clone())))
        .collect();

    // Faults, one at a time, until the deadline or Ctrl-C.
    let deadline = tokio::time::Instant::now() + plan.duration;
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let mut interrupted = false;
    let faulting = async {
        let mut round: Vec<Fault> = plan.faults.clone();
        round.shuffle(&mut rng);
        // The first round is finished even past the deadline: every kind
        // asked for is injected at least once.
        let mut first = round.len();
        while first > 0 || tokio::time::Instant::now() < deadline {
            let pause = rng.random_range(500..plan.pause.as_millis().max(501) as u64);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            if round.is_empty() {
                round = plan.faults.clone();
                round.shuffle(&mut rng);
            }
            let Some(f) = round.pop() else { break };
            first = first.saturating_sub(1);
            if let Err(e) = faults::inject(&mut world, f, &mut rng, &history).await {
                // No more faults on a world that did not heal; the churn
                // runs on to the deadline and the checker still judges.
                report.error(&format!("fault_{}_unrecovered", f.name()));
                report.notes.push(format!("{f}: {e}; no faults after it"));
                tokio::time::sleep_until(deadline).await;
                return;
            }
        }
    };
    tokio::select! {
        _ = faulting => {}
        _ = tokio::signal::ctrl_c() => interrupted = true,
    }
    let _ = stop_tx.send(true);
    let mut kept = Vec::new();
    for a in agents {
        if let Ok(k) = a.await {
            kept.extend(k);
        }
    }
    if interrupted {
        report
            .notes
            .push("interrupted (Ctrl-C): the run was cut short".into());
    }

    // Quiesce: every held session connected and Redis listing exactly them.
    let tenants: Vec<String> = (0..plan.tenants)
        .map(|i| churn::tenant(i, plan.tenants))
        .collect();
    let limit = world::GRACE * 2 + world::CONNECT_TIMEOUT + Duration::from_secs(20);
    let quiet_from = Instant::now();
    let mut listed = Vec::new();
    while quiet_from.elapsed() < limit {
        if let Some(l) = list_all(&brokers, &tenants).await {
            listed = l;
            if settled(&history.snapshot(), &listed) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    report
        .machine
        .insert("quiesce_seconds".into(), quiet_from.elapsed().as_secs_f64());
    history.record(|t| Event::Final {
        t,
        sessions: listed,
    });
    drop(kept);
    drop(world);

    let events = history.snapshot();
    if history.full() {
        report.notes.push(format!(
            "the history reached --max-events ({}): later events were not recorded",
            plan.max_events
        ));
    }
    if let Some(p) = &plan.history {
        history::write_jsonl(p, &events)?;
        report.notes.push(format!("history: {}", p.display()));
    }
    let verdict = checker::check(
        &events,
        &Rules {
            overlap_window: plan.overlap_window.as_micros() as u64,
        },
    );
    let ops = shared.ops.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // Calls and socket commands; an agent's idle turn is not one.
    let total_ops: u64 = ops
        .iter()
        .filter(|(k, _)| k.as_str() != "idle")
        .map(|(_, v)| v)
        .sum();
    for (k, v) in ops {
        report.count(&format!("op_{k}"), v);
    }
    report.count("operations", total_ops);
    for (k, v) in &verdict.counts {
        report.count(k, *v);
    }
    let injected: u64 = verdict
        .counts
        .iter()
        .filter(|(k, _)| k.starts_with("fault_"))
        .map(|(_, v)| v)
        .sum();
    report.count("faults_injected", injected);
    report.count("events", events.len() as u64);
    report.machine.insert(
        "longest_overlap_ms".into(),
        verdict.longest_overlap as f64 / 1000.0,
    );
    if !verdict.longest_overlap_at.is_empty() {
        report
            .notes
            .push(format!("longest overlap: {}", verdict.longest_overlap_at));
    }
    report.count("violations", verdict.violations.len() as u64);
    report.violations = verdict.violations;
    report.wall_seconds = began.elapsed().as_secs_f64();
    Ok(report)
}

/// Every session of `tenants`, from the first node that answers.
async fn list_all(brokers: &[Broker], tenants: &[String]) -> Option<Vec<FinalSession>> {
    'node: for b in brokers {
        let mut b = b.clone();
        let mut out = Vec::new();
        for tenant in tenants {
            let mut token = String::new();
            for _ in 0..1000 {
                let page =
                    match tokio::time::timeout(Duration::from_secs(3), b.list(tenant, 500, &token))
                        .await
                    {
                        Ok(Ok(p)) => p,
                        _ => continue 'node,
                    };
                for s in page.sessions {
                    let state = match s.state() {
                        SessionState::Pending => "pending",
                        SessionState::Connected => "connected",
                        SessionState::Disconnected => "disconnected",
                        SessionState::Ended => "ended",
                        SessionState::Unspecified => "unspecified",
                    };
                    out.push(FinalSession {
                        tenant: tenant.clone(),
                        session: s.session_id,
                        login: s.login,
                        station: s.station,
                        state: state.into(),
                        generation: s.generation,
                    });
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
        }
        return Some(out);
    }
    None
}

/// Every session a client holds is connected, and Redis lists exactly
/// those, each CONNECTED.
fn settled(events: &[Event], listed: &[FinalSession]) -> bool {
    let mut held: HashMap<&str, bool> = HashMap::new();
    for e in events {
        match e {
            Event::Grant { session, .. } => {
                held.insert(session, false);
            }
            Event::Welcome { session, .. } => {
                if let Some(c) = held.get_mut(session.as_str()) {
                    *c = true;
                }
            }
            Event::Disconnected { session, .. } => {
                if let Some(c) = held.get_mut(session.as_str()) {
                    *c = false;
                }
            }
            Event::Stopped { session, .. } | Event::Ended { session, .. } => {
                held.remove(session.as_str());
            }
            _ => {}
        }
    }
    let redis: HashSet<&str> = listed
        .iter()
        .filter(|s| s.state == "connected")
        .map(|s| s.session.as_str())
        .collect();
    held.values().all(|c| *c)
        && listed.len() == redis.len()
        && redis.len() == held.len()
        && held.keys().all(|k| redis.contains(k))
}
