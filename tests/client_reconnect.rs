//! The `turnstile-client` [`Agent`] against real nodes, through a TCP relay
//! the test controls (cut, stall, switch upstream): it resumes after a cut,
//! detects a silent path from its own pings, follows a draining node to
//! another one, and never reconnects after a takeover or a logout.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use support::procs::RedisServer;
use support::*;
use turnstile_client::{Agent, AgentEvent, AgentEvents, AgentOptions, Disconnect, Stop};

const T: &str = "acme";

/// What the relay does with bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Relay both ways.
    Up,
    /// Close every relayed connection; close new ones at once.
    Cut,
    /// Swallow bytes both ways and close nothing (a pulled cable upstream);
    /// new connections hang. Leaving it closes the stalled connections.
    Stall,
}

/// A TCP relay in front of a node's WebSocket listener.
struct Relay {
    addr: SocketAddr,
    state: Arc<watch::Sender<(Mode, SocketAddr)>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let (tx, _) = watch::channel((Mode::Up, upstream));
        let state = Arc::new(tx);
        let s = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, s.subscribe()));
            }
        });
        Relay {
            addr,
            state,
            accept,
        }
    }

    fn set(&self, mode: Mode) {
        self.state.send_modify(|s| s.0 = mode);
    }

    /// New connections go to `upstream` (open ones stay where they are).
    fn point_to(&self, upstream: SocketAddr) {
        self.state.send_modify(|s| s.1 = upstream);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.set(Mode::Cut);
        self.accept.abort();
    }
}

async fn relay(mut client: TcpStream, mut state: watch::Receiver<(Mode, SocketAddr)>) {
    let (mode, upstream) = *state.borrow_and_update();
    match mode {
        Mode::Cut => return,
        Mode::Stall => {
            let mut buf = [0u8; 4096];
            loop {
                tokio::select! {
                    _ = state.changed() => return,
                    n = client.read(&mut buf) => if matches!(n, Ok(0) | Err(_)) { return },
                }
            }
        }
        Mode::Up => {}
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let mut stalled = false;
    let mut server_open = true;
    loop {
        tokio::select! {
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                match state.borrow_and_update().0 {
                    Mode::Cut => return,
                    Mode::Up if stalled => return,
                    Mode::Up => {}
                    Mode::Stall => stalled = true,
                }
            }
            n = client_rx.read(&mut up) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if !stalled && server_tx.write_all(&up[..n]).await.is_err() { return },
            },
            n = server_rx.read(&mut down), if server_open => match n {
                // While stalled the client must not learn that the node hung up.
                Ok(0) | Err(_) if stalled => server_open = false,
                Ok(0) | Err(_) => return,
                Ok(n) => if !stalled && client_tx.write_all(&down[..n]).await.is_err() { return },
            },
        }
    }
}

/// Short delays so reconnects are quick; no bound on attempts.
fn fast() -> AgentOptions {
    AgentOptions {
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        ..AgentOptions::default()
    }
}

async fn next(events: &mut AgentEvents) -> AgentEvent {
    within("an agent event", events.next())
        .await
        .expect("the agent is still running")
}

/// Skips failed attempts until a welcome; returns whether it resumed.
async fn reconnected(events: &mut AgentEvents) -> bool {
    // Bounded by `within` per event and by the count.
    for _ in 0..1000 {
        match next(events).await {
            AgentEvent::Connected(w) => return w.resumed,
            AgentEvent::Disconnected { .. } => continue,
            other => panic!("expected reconnect attempts, got {other:?}"),
        }
    }
    panic!("no welcome within 1000 attempts");
}

/// The agent's last event, after which it is gone for good.
async fn stopped(events: &mut AgentEvents) -> Stop {
    let stop = match next(events).await {
        AgentEvent::Stopped(s) => s,
        other => panic!("expected Stopped, got {other:?}"),
    };
    assert_eq!(
        within("the end of the events", events.next()).await,
        None,
        "the agent task ended: it cannot reconnect"
    );
    stop
}

#[tokio::test]
async fn the_agent_resumes_its_session_after_the_connection_is_cut() {
    let node = start().await;
    let relay = Relay::start(node.http).await;
    let mut watch = node.watch(T).await;
    let r = node.grant(T, "ana", "desk-1").await;
    let id = session_of(&r).session_id.clone();
    let (_agent, mut events) = Agent::connect(relay.addr, r.token, fast()).expect("agent");
    assert!(!reconnected(&mut events).await, "a fresh session");

    relay.set(Mode::Cut);
    let ev = next(&mut events).await;
    assert!(
        matches!(
            ev,
            AgentEvent::Disconnected {
                cause: Disconnect::Closed { .. },
                ..
            }
        ),
        "{ev:?}"
    );
    // The node saw the socket go: the session waits out its grace.
    watch.expect_for(&id, PresenceChange::Disconnected).await;
    relay.set(Mode::Up);
    assert!(reconnected(&mut events).await, "resumed within grace");
    watch.expect_for(&id, PresenceChange::Reconnected).await;
    node.shutdown().await;
}

#[tokio::test]
async fn a_silent_path_is_found_by_app_pings_and_the_session_resumes() {
    let node = start_with(|c| c.heartbeat = Duration::from_secs(1)).await;
    let relay = Relay::start(node.http).await;
    let mut watch = node.watch(T).await;
    let r = node.grant(T, "ana", "desk-1").await;
    let id = session_of(&r).session_id.clone();
    let (_agent, mut events) = Agent::connect(relay.addr, r.token, fast()).expect("agent");
    assert!(!reconnected(&mut events).await);

    // Nothing closes: only the missing pongs tell the agent.
    relay.set(Mode::Stall);
    let ev = next(&mut events).await;
    assert!(
        matches!(
            ev,
            AgentEvent::Disconnected {
                cause: Disconnect::HeartbeatTimeout { .. },
                ..
            }
        ),
        "{ev:?}"
    );
    // Cut what is stalled so the node lets go of the old socket, then
    // restore the path: the agent comes back to the same session.
    relay.set(Mode::Cut);
    watch.expect_for(&id, PresenceChange::Disconnected).await;
    relay.set(Mode::Up);
    assert!(reconnected(&mut events).await, "resumed within grace");
    node.shutdown().await;
}

#[tokio::test]
async fn a_takeover_stops_the_agent_for_good() {
    let node = start().await;
    let r = node.grant(T, "ana", "desk-1").await;
    let (_agent, mut events) = Agent::connect(node.http, r.token, fast()).expect("agent");
    assert!(!reconnected(&mut events).await);

    let taken = node
        .claim(T, "ana", "desk-1", ConflictPolicy::Takeover)
        .await;
    assert_eq!(taken.outcome(), ClaimOutcome::Granted);
    assert_eq!(
        stopped(&mut events).await,
        Stop::ForcedLogout {
            reason: "superseded".into(),
            message: SUPERSEDED_MSG.into(),
        }
    );
    procs::eventually("the node to drop the socket", || async {
        node.socket_count() == 0
    })
    .await;
    node.shutdown().await;
}

#[tokio::test]
async fn a_logout_is_confirmed_and_ends_the_session() {
    let node = start().await;
    let r = node.grant(T, "ana", "").await;
    let id = session_of(&r).session_id.clone();
    let (agent, mut events) = Agent::connect(node.http, r.token, fast()).expect("agent");
    assert!(!reconnected(&mut events).await);

    assert!(within("logout", agent.logout()).await, "confirmed");
    assert_eq!(stopped(&mut events).await, Stop::LoggedOut);
    let s = node.get_by_id(T, &id).await.expect("tombstone");
    assert_eq!(s.end_reason(), EndReason::LoggedOut);
    node.shutdown().await;
}

#[tokio::test]
async fn a_draining_node_sends_the_agent_to_another_node_and_the_session_resumes() {
    let redis = RedisServer::start().await;
    let ns = format!("t{:016x}", rand::random::<u64>());
    let node = |name: &'static str| {
        let on = on_redis(redis.url(), &ns, name);
        move |c: &mut turnstile::config::Config| {
            on(c);
            c.drain_window = Duration::from_millis(300);
        }
    };
    let a = start_with(node("node-a")).await;
    let b = start_with(node("node-b")).await;
    // The relay plays the load balancer in front of both.
    let relay = Relay::start(a.http).await;
    let r = a.grant(T, "ana", "desk-1").await;
    let id = session_of(&r).session_id.clone();
    let (_agent, mut events) = Agent::connect(relay.addr, r.token, fast()).expect("agent");
    assert!(!reconnected(&mut events).await);

    relay.point_to(b.http);
    a.shutdown().await;
    let ev = next(&mut events).await;
    assert!(
        matches!(
            ev,
            AgentEvent::Disconnected {
                cause: Disconnect::Draining { .. },
                attempt: 0,
                ..
            }
        ),
        "told to reconnect, not a failure: {ev:?}"
    );
    assert!(reconnected(&mut events).await, "resumed on the other node");
    let s = b.get_by_id(T, &id).await.expect("session");
    assert!(s.node.starts_with("node-b"), "held by node-b: {}", s.node);
    assert_eq!(s.state(), SessionState::Connected);
    b.shutdown().await;
}
