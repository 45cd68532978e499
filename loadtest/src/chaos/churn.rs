//! The chaos run's agents: each owns one login of one tenant and, until
//! the run's deadline, claims it (REJECT or TAKEOVER, with or without a
//! station, sometimes naming the holder it means to end), connects an
//! [`Agent`] (which heartbeats, reconnects and resumes by itself), and
//! then changes status, gets personal notices and acks them, takes itself
//! over through a random node (moving desk half the time), drops and resumes,
//! logs out or is released. Everything a client sees goes into the
//! [`History`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use turnstile_client::pb::{self, ClaimOutcome, ConflictPolicy};
use turnstile_client::{Agent, AgentEvent, AgentOptions, Broker, Disconnect, Stop};

use super::history::{Event, History};

/// Bound on one gRPC call of an agent.
const CALL: Duration = Duration::from_secs(3);

/// What every agent shares.
pub struct Shared {
    pub brokers: Vec<Broker>,
    pub ws: Vec<SocketAddr>,
    pub tenants: usize,
    /// Stations per tenant (`desk-0` …).
    pub stations: usize,
    pub history: History,
    /// Operations by kind and outcome.
    pub ops: Mutex<BTreeMap<String, u64>>,
    pub seed: u64,
}

impl Shared {
    fn op(&self, k: &str) {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        *ops.entry(k.into()).or_default() += 1;
    }
}

pub fn tenant(i: usize, tenants: usize) -> String {
    format!("chaos-{}", i % tenants.max(1))
}

/// One session this agent holds.
struct Held {
    session: String,
    token: String,
    station: String,
    agent: Agent,
    /// The agent stopped (told, logged out, gave up).
    done: watch::Receiver<bool>,
    /// Set before the generator closes the socket itself to resume.
    closing: Arc<AtomicBool>,
}

/// Runs agent `i` until `stop` turns true; returns the handle of the
/// session it still holds (kept open until the run has checked Redis).
pub async fn agent(i: usize, sh: Arc<Shared>, mut stop: watch::Receiver<bool>) -> Vec<Agent> {
    let mut rng = StdRng::seed_from_u64(sh.seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
    let tenant = tenant(i, sh.tenants);
    let login = format!("agent-{i}");
    let mut held: Option<Held> = None;
    let mut kept = Vec::new();
    let mut notices = 0u64;
    loop {
        let pause = Duration::from_millis(rng.random_range(200..1500));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        if held.as_ref().is_some_and(|h| *h.done.borrow()) {
            held = None;
        }
        let Some(h) = held.as_mut() else {
            held = claim(&sh, &mut rng, &tenant, &login).await;
            continue;
        };
        let node = rng.random_range(0..sh.brokers.len());
        let mut broker = sh.brokers[node].clone();
        match rng.random_range(0..100) {
            0..30 => sh.op("idle"),
            30..45 => {
                let s = ["available", "away", "busy"][rng.random_range(0..3)];
                let _ = h.agent.set_status(s).await;
                sh.op("status");
            }
            45..62 => {
                notices += 1;
                let id = format!("n-{i}-{notices}");
                let req = pb::NotifyRequest {
                    tenant: tenant.clone(),
                    target: Some(pb::notify_request::Target::SessionId(h.session.clone())),
                    notice: Some(pb::Notice {
                        id: id.clone(),
                        kind: "chaos".into(),
                        severity: "info".into(),
                        text: format!("notice {id}"),
                        ..Default::default()
                    }),
                };
                match tokio::time::timeout(CALL, broker.notify(req)).await {
                    Ok(Ok(r)) if r.delivered + r.queued > 0 => {
                        let session = h.session.clone();
                        sh.history.record(|t| Event::NoticeSent { t, session, id });
                        sh.op("notify_ok");
                    }
                    Ok(Ok(_)) => sh.op("notify_no_target"),
                    Ok(Err(e)) => sh.op(&format!("notify_{}", err_kind(&e))),
                    Err(_) => sh.op("notify_timeout"),
                }
            }
            62..74 => {
                // Taken over through a random node (two times in three not its
                // socket's), half the time at another desk.
                let station = if rng.random_bool(0.5) {
                    pick_station(&mut rng, sh.stations)
                } else {
                    h.station.clone()
                };
                let expected = rng.random_bool(0.5).then(|| h.session.clone());
                if let Some(new) = claim_on(
                    &sh, &mut rng, node, &tenant, &login, station, true, expected,
                )
                .await
                {
                    sh.op("takeover_granted");
                    // The old agent keeps running until it is told.
                    held = Some(new);
                }
            }
            74..82 => {
                let t0 = sh.history.now();
                match tokio::time::timeout(CALL, broker.release(&tenant, &h.session)).await {
                    Ok(Ok(_)) => {
                        sh.history.push(Event::Ended {
                            t: t0,
                            session: h.session.clone(),
                            by: "release".into(),
                        });
                        sh.op("release_ok");
                        held = None;
                    }
                    Ok(Err(e)) => sh.op(&format!("release_{}", err_kind(&e))),
                    Err(_) => sh.op("release_timeout"),
                }
            }
            82..90 => {
                sh.history.record(|t| Event::Ended {
                    t,
                    session: h.session.clone(),
                    by: "logout".into(),
                });
                if h.agent.logout().await {
                    sh.op("logout_confirmed");
                } else {
                    // As the SDK says: the login service releases it.
                    sh.op("logout_unconfirmed");
                    let _ = tokio::time::timeout(CALL, broker.release(&tenant, &h.session)).await;
                }
                held = None;
            }
            _ => {
                // Drop the socket and resume on another node with the token.
                h.closing.store(true, Ordering::SeqCst);
                h.agent.close().await;
                let mut done = h.done.clone();
                let _ = tokio::time::timeout(Duration::from_secs(5), done.wait_for(|d| *d)).await;
                let session = h.session.clone();
                let (token, station) = (h.token.clone(), h.station.clone());
                held = Some(connect(&sh, &mut rng, session, token, station));
                sh.op("drop_resume");
            }
        }
    }
    if let Some(h) = held {
        kept.push(h.agent);
    }
    kept
}

/// A claim of `login` on a random node: REJECT mostly; on LOGIN_IN_USE
/// half the time a takeover naming the holder that was shown.
async fn claim(sh: &Shared, rng: &mut StdRng, tenant: &str, login: &str) -> Option<Held> {
    let node = rng.random_range(0..sh.brokers.len());
    let station = if rng.random_bool(0.6) {
        pick_station(rng, sh.stations)
    } else {
        String::new()
    };
    let takeover = rng.random_bool(0.2);
    claim_on(sh, rng, node, tenant, login, station, takeover, None).await
}

fn pick_station(rng: &mut StdRng, stations: usize) -> String {
    format!("desk-{}", rng.random_range(0..stations.max(1)))
}

#[allow(clippy::too_many_arguments)]
async fn claim_on(
    sh: &Shared,
    rng: &mut StdRng,
    node: usize,
    tenant: &str,
    login: &str,
    station: String,
    takeover: bool,
    expected: Option<String>,
) -> Option<Held> {
    let mut broker = sh.brokers[node].clone();
    let policy = if takeover {
        ConflictPolicy::Takeover
    } else {
        ConflictPolicy::Reject
    };
    let req = pb::ClaimRequest {
        tenant: tenant.into(),
        login: login.into(),
        station: station.clone(),
        client: "chaos".into(),
        role: "agent".into(),
        on_conflict: policy as i32,
        expected_session_id: expected.clone().unwrap_or_default(),
        ..Default::default()
    };
    let t0 = sh.history.now();
    let r = match tokio::time::timeout(CALL, broker.claim(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            sh.op(&format!("claim_{}", err_kind(&e)));
            return None;
        }
        Err(_) => {
            sh.op("claim_timeout");
            return None;
        }
    };
    match r.outcome() {
        ClaimOutcome::Granted => {
            let s = r.session.unwrap_or_default();
            sh.history.record(|t| Event::Grant {
                t,
                t0,
                tenant: tenant.into(),
                login: login.into(),
                station: station.clone(),
                session: s.session_id.clone(),
                generation: s.generation,
                node,
                policy: if takeover { "takeover" } else { "reject" }.into(),
                expected: expected.is_some(),
            });
            sh.op(if takeover {
                "claim_granted_takeover"
            } else {
                "claim_granted_reject"
            });
            Some(connect(sh, rng, s.session_id, r.token, station))
        }
        ClaimOutcome::LoginInUse => {
            sh.op("claim_login_in_use");
            let holder = r.holder.map(|h| h.session_id).unwrap_or_default();
            if !takeover && !holder.is_empty() && rng.random_bool(0.5) {
                // The user agrees to end the session they were shown.
                Box::pin(claim_on(
                    sh,
                    rng,
                    node,
                    tenant,
                    login,
                    station,
                    true,
                    Some(holder),
                ))
                .await
            } else {
                None
            }
        }
        ClaimOutcome::StationInUse => {
            sh.op("claim_station_in_use");
            None
        }
        other => {
            sh.op(&format!("claim_{other:?}").to_lowercase());
            None
        }
    }
}

fn err_kind(e: &turnstile_client::Error) -> String {
    match e {
        turnstile_client::Error::Status(s) => format!("{:?}", s.code()).to_lowercase(),
        _ => "transport".into(),
    }
}

/// Connects an agent for `session` to a random node and follows its events.
fn connect(sh: &Shared, rng: &mut StdRng, session: String, token: String, station: String) -> Held {
    let node = rng.random_range(0..sh.ws.len());
    let opts = AgentOptions {
        initial_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(3),
        ..AgentOptions::default()
    };
    let (done_tx, done) = watch::channel(false);
    let closing = Arc::new(AtomicBool::new(false));
    let held = match Agent::connect(sh.ws[node], token.clone(), opts) {
        Ok((agent, events)) => {
            tokio::spawn(follow(
                session.clone(),
                node,
                agent.clone(),
                events,
                sh.history.clone(),
                done_tx,
                closing.clone(),
            ));
            Some(agent)
        }
        Err(_) => None,
    };
    // Agent::connect fails only on options, which are fixed above.
    let agent = held.unwrap_or_else(|| unreachable!("fixed, valid agent options"));
    Held {
        session,
        token,
        station,
        agent,
        done,
        closing,
    }
}

/// Records what one agent connection sees until it stops; acks notices.
async fn follow(
    session: String,
    node: usize,
    agent: Agent,
    mut events: turnstile_client::AgentEvents,
    history: History,
    done: watch::Sender<bool>,
    closing: Arc<AtomicBool>,
) {
    while let Some(ev) = events.next().await {
        let s = session.clone();
        match ev {
            AgentEvent::Connected(w) => history.record(|t| Event::Welcome {
                t,
                session: s,
                node,
                resumed: w.resumed,
            }),
            AgentEvent::Notice(n) => {
                if let Some(id) = n["id"].as_str() {
                    let id = id.to_string();
                    let _ = agent.ack(id.clone()).await;
                    history.record(|t| Event::NoticeDelivered { t, session: s, id });
                }
            }
            AgentEvent::Disconnected { cause, .. } => history.record(|t| Event::Disconnected {
                t,
                session: s,
                cause: describe(&cause),
            }),
            AgentEvent::Stopped(stop) => {
                let (how, reason, code) = match stop {
                    Stop::ForcedLogout { reason, .. } => ("forced_logout", reason, None),
                    Stop::LoggedOut => ("logged_out", String::new(), None),
                    Stop::Rejected { code, reason } => ("rejected", reason, Some(code)),
                    Stop::Closed => ("closed", String::new(), None),
                    Stop::LogoutUnconfirmed => ("logout_unconfirmed", String::new(), None),
                    Stop::GaveUp { last, .. } => ("gave_up", describe(&last), None),
                };
                if how == "closed" && closing.load(Ordering::SeqCst) {
                    history.record(|t| Event::Disconnected {
                        t,
                        session: s,
                        cause: "closed by the generator to resume".into(),
                    });
                } else {
                    history.record(|t| Event::Stopped {
                        t,
                        session: s,
                        how: how.into(),
                        reason,
                        code,
                    });
                }
                break;
            }
            _ => {}
        }
    }
    let _ = done.send(true);
}

fn describe(d: &Disconnect) -> String {
    match d {
        Disconnect::Closed { code, reason } => format!("closed {code:?} {reason}"),
        Disconnect::HeartbeatTimeout { silent } => format!("silent {} ms", silent.as_millis()),
        Disconnect::Draining { .. } => "draining".into(),
        Disconnect::ConnectFailed { error } => format!("connect failed: {error}"),
        Disconnect::ConnectTimeout => "connect timeout".into(),
    }
}
