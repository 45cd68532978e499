//! The agent's reconnect rules against a scripted in-memory broker, under
//! paused tokio time: every delay is checked exactly, nothing sleeps.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::driver::{Connector, Link};
use crate::{
    Agent, AgentError, AgentEvent, AgentEvents, AgentOptions, Disconnect, Error, ServerFrame, Stop,
};

/// A connection attempt waiting for the test to accept or refuse it.
type Attempt = oneshot::Sender<Result<FakeLink, Error>>;

struct FakeConnector(mpsc::UnboundedSender<Attempt>);

struct FakeLink {
    frames: mpsc::UnboundedReceiver<ServerFrame>,
    sent: mpsc::UnboundedSender<Value>,
}

impl Connector for FakeConnector {
    type Link = FakeLink;
    fn connect(
        &self,
    ) -> impl std::future::Future<Output = Result<FakeLink, Error>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let queued = self.0.send(tx).is_ok();
        async move {
            if !queued {
                return Err(Error::Protocol("no server".into()));
            }
            rx.await
                .unwrap_or_else(|_| Err(Error::Protocol("test dropped the attempt".into())))
        }
    }
}

impl Link for FakeLink {
    async fn recv(&mut self) -> Result<Option<ServerFrame>, Error> {
        Ok(Some(self.frames.recv().await.unwrap_or(
            ServerFrame::Closed {
                code: None,
                reason: "stream ended".into(),
            },
        )))
    }
    async fn send(&mut self, msg: Value) -> Result<(), Error> {
        self.sent
            .send(msg)
            .map_err(|_| Error::Protocol("peer gone".into()))
    }
    async fn close(&mut self) {}
}

/// The broker side of the fake.
struct Server(mpsc::UnboundedReceiver<Attempt>);

/// The broker's end of one accepted socket.
struct Peer {
    frames: mpsc::UnboundedSender<ServerFrame>,
    sent: mpsc::UnboundedReceiver<Value>,
}

impl Server {
    async fn attempt(&mut self) -> Attempt {
        self.0
            .recv()
            .await
            .expect("the agent attempts a connection")
    }

    async fn accept(&mut self) -> Peer {
        let attempt = self.attempt().await;
        let (ftx, frx) = mpsc::unbounded_channel();
        let (stx, srx) = mpsc::unbounded_channel();
        let _ = attempt.send(Ok(FakeLink {
            frames: frx,
            sent: stx,
        }));
        Peer {
            frames: ftx,
            sent: srx,
        }
    }

    async fn refuse(&mut self) {
        let _ = self
            .attempt()
            .await
            .send(Err(Error::Protocol("refused".into())));
    }

    /// True when the agent dropped its connector: it will never connect again.
    async fn abandoned(&mut self) -> bool {
        self.0.recv().await.is_none()
    }
}

impl Peer {
    fn send(&self, f: ServerFrame) {
        self.frames.send(f).expect("agent still reading");
    }

    fn welcome(&self, resumed: bool, heartbeat_ms: u64) {
        self.send(ServerFrame::Welcome {
            session_id: "s1".into(),
            resumed,
            heartbeat_ms,
            grace_ms: 60_000,
        });
    }

    async fn received(&mut self) -> Value {
        self.sent.recv().await.expect("the agent sent something")
    }
}

fn opts() -> AgentOptions {
    AgentOptions {
        initial_delay: Duration::from_millis(500),
        max_delay: Duration::from_secs(4),
        ..AgentOptions::default()
    }
}

fn start(opts: AgentOptions) -> (Agent, AgentEvents, Server) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (agent, events) = Agent::spawn_with(FakeConnector(tx), opts, || 0.5);
    (agent, events, Server(rx))
}

async fn next(events: &mut AgentEvents) -> AgentEvent {
    events.next().await.expect("an event")
}

async fn connected(events: &mut AgentEvents) -> bool {
    match next(events).await {
        AgentEvent::Connected(w) => w.resumed,
        other => panic!("expected Connected, got {other:?}"),
    }
}

/// The final event, then nothing: the agent task is gone.
async fn stopped(events: &mut AgentEvents) -> Stop {
    let stop = match next(events).await {
        AgentEvent::Stopped(s) => s,
        other => panic!("expected Stopped, got {other:?}"),
    };
    assert_eq!(events.next().await, None, "nothing after Stopped");
    stop
}

#[tokio::test(start_paused = true)]
async fn a_silent_socket_is_dead_after_two_heartbeats_and_the_session_resumes() {
    let (_agent, mut events, mut server) = start(opts());
    let mut peer = server.accept().await;
    peer.welcome(false, 1000);
    assert!(!connected(&mut events).await);
    let welcomed = Instant::now();
    // The agent pings every heartbeat; an answered ping keeps it alive.
    for id in 1..=3 {
        assert_eq!(peer.received().await, json!({"type": "ping", "id": id}));
        peer.send(ServerFrame::Pong(json!(id)));
    }
    let answered = Instant::now();
    assert_eq!(answered - welcomed, Duration::from_secs(3));
    // Now the path goes silent: two heartbeats later the socket is dead.
    match next(&mut events).await {
        AgentEvent::Disconnected {
            cause: Disconnect::HeartbeatTimeout { silent },
            attempt: 1,
            retry_in,
        } => {
            assert_eq!(silent, Duration::from_secs(2));
            assert_eq!(retry_in, Duration::from_millis(250), "half of 500 ms");
        }
        other => panic!("expected a heartbeat timeout, got {other:?}"),
    }
    assert_eq!(answered.elapsed(), Duration::from_secs(2));
    let peer = server.accept().await;
    assert_eq!(answered.elapsed(), Duration::from_millis(2250));
    peer.welcome(true, 1000);
    assert!(connected(&mut events).await, "resumed within grace");
}

#[tokio::test(start_paused = true)]
async fn a_forced_logout_stops_for_good() {
    let (_agent, mut events, mut server) = start(opts());
    let peer = server.accept().await;
    peer.welcome(false, 1000);
    connected(&mut events).await;
    peer.send(ServerFrame::ForcedLogout {
        reason: "superseded".into(),
        message: "m".into(),
    });
    peer.send(ServerFrame::Closed {
        code: Some(4001),
        reason: "superseded".into(),
    });
    assert_eq!(
        stopped(&mut events).await,
        Stop::ForcedLogout {
            reason: "superseded".into(),
            message: "m".into()
        }
    );
    assert!(server.abandoned().await, "no further connection attempt");
}

#[tokio::test(start_paused = true)]
async fn final_close_codes_stop_and_others_reconnect() {
    for (code, want) in [
        (4000, Some(Stop::LoggedOut)),
        (
            4002,
            Some(Stop::ForcedLogout {
                reason: "station_changed".into(),
                message:
                    "Your connection has been dropped due to a subsequent log on to a different station."
                        .into(),
            }),
        ),
        (
            4401,
            Some(Stop::Rejected {
                code: 4401,
                reason: "bye".into(),
            }),
        ),
        (1013, None),
        (4429, None),
    ] {
        let (_agent, mut events, mut server) = start(opts());
        let peer = server.accept().await;
        peer.welcome(false, 1000);
        connected(&mut events).await;
        peer.send(ServerFrame::Closed {
            code: Some(code),
            reason: "bye".into(),
        });
        match want {
            Some(stop) => {
                assert_eq!(stopped(&mut events).await, stop, "{code}");
                assert!(server.abandoned().await, "{code}: no reconnect");
            }
            None => {
                let ev = next(&mut events).await;
                assert!(
                    matches!(&ev, AgentEvent::Disconnected { cause: Disconnect::Closed { code: Some(c), .. }, .. } if *c == code),
                    "{code}: {ev:?}"
                );
                server.accept().await.welcome(true, 1000);
                assert!(connected(&mut events).await, "{code}");
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_draining_node_is_left_after_its_delay_without_counting_a_failure() {
    let (_agent, mut events, mut server) = start(opts());
    let peer = server.accept().await;
    peer.welcome(false, 1000);
    connected(&mut events).await;
    peer.send(ServerFrame::Reconnect { after_ms: 700 });
    let told = Instant::now();
    assert_eq!(
        next(&mut events).await,
        AgentEvent::Disconnected {
            cause: Disconnect::Draining {
                after: Duration::from_millis(700)
            },
            attempt: 0,
            retry_in: Duration::from_millis(700),
        }
    );
    let peer = server.accept().await;
    assert_eq!(told.elapsed(), Duration::from_millis(700));
    peer.welcome(true, 1000);
    assert!(connected(&mut events).await);
}

#[tokio::test(start_paused = true)]
async fn backoff_doubles_with_jitter_and_gives_up_after_max_attempts() {
    let (_agent, mut events, mut server) = start(AgentOptions {
        max_attempts: Some(4),
        ..opts()
    });
    let mut last = Instant::now();
    server.refuse().await;
    // Ceilings 500 ms, 1 s, 2 s, 4 s (the cap); the fixed jitter is 0.5.
    for (attempt, ms) in [(1, 250), (2, 500), (3, 1000), (4, 2000)] {
        match next(&mut events).await {
            AgentEvent::Disconnected {
                cause: Disconnect::ConnectFailed { .. },
                attempt: a,
                retry_in,
            } => {
                assert_eq!((a, retry_in), (attempt, Duration::from_millis(ms)));
            }
            other => panic!("expected a failed attempt, got {other:?}"),
        }
        server.refuse().await;
        assert_eq!(last.elapsed(), Duration::from_millis(ms));
        last = Instant::now();
    }
    match stopped(&mut events).await {
        Stop::GaveUp { attempts: 4, last } => {
            assert!(matches!(last, Disconnect::ConnectFailed { .. }), "{last:?}")
        }
        other => panic!("expected GaveUp, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_the_time_bound() {
    let (_agent, mut events, mut server) = start(AgentOptions {
        give_up_after: Some(Duration::from_secs(1)),
        ..opts()
    });
    let started = Instant::now();
    loop {
        server.refuse().await;
        match next(&mut events).await {
            AgentEvent::Disconnected { .. } => continue,
            AgentEvent::Stopped(Stop::GaveUp { attempts, .. }) => {
                assert_eq!(
                    attempts, 3,
                    "failures at 0, 250 ms, 750 ms; the one at 1.75 s is past the bound"
                );
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_is_never_welcomed_times_out() {
    let (_agent, mut events, mut server) = start(AgentOptions {
        connect_timeout: Duration::from_secs(3),
        ..opts()
    });
    let _peer = server.accept().await; // opened, but no welcome
    let opened = Instant::now();
    let ev = next(&mut events).await;
    assert!(
        matches!(
            ev,
            AgentEvent::Disconnected {
                cause: Disconnect::ConnectTimeout,
                attempt: 1,
                ..
            }
        ),
        "{ev:?}"
    );
    assert_eq!(opened.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn logout_is_confirmed_by_the_broker() {
    let (agent, mut events, mut server) = start(opts());
    let mut peer = server.accept().await;
    peer.welcome(false, 1000);
    connected(&mut events).await;
    let out = tokio::spawn(async move { agent.logout().await });
    assert_eq!(peer.received().await, json!({"type": "logout"}));
    peer.send(ServerFrame::LoggedOut);
    assert!(out.await.expect("logout task"), "confirmed");
    assert_eq!(stopped(&mut events).await, Stop::LoggedOut);
    assert!(server.abandoned().await);
}

#[tokio::test(start_paused = true)]
async fn logout_while_disconnected_is_unconfirmed() {
    let (agent, mut events, mut server) = start(opts());
    server.refuse().await;
    next(&mut events).await; // Disconnected
    assert!(!agent.logout().await);
    assert_eq!(stopped(&mut events).await, Stop::LogoutUnconfirmed);
}

#[tokio::test(start_paused = true)]
async fn what_was_asked_offline_is_sent_after_the_next_welcome() {
    let (agent, mut events, mut server) = start(opts());
    server.refuse().await;
    next(&mut events).await; // Disconnected
    agent.watch_presence().await.expect("queued");
    agent.set_status("away").await.expect("queued");
    agent.ack("n1").await.expect("queued");
    agent.reconnect_now().await.expect("skips the wait");
    let mut peer = server.accept().await;
    peer.welcome(false, 1000);
    connected(&mut events).await;
    assert_eq!(peer.received().await, json!({"type": "watch_presence"}));
    assert_eq!(
        peer.received().await,
        json!({"type": "status", "status": "away"})
    );
    assert_eq!(
        peer.received().await,
        json!({"type": "ack", "notice_id": "n1"})
    );
    // The watch follows the agent to its next socket.
    peer.send(ServerFrame::Closed {
        code: Some(1006),
        reason: String::new(),
    });
    next(&mut events).await; // Disconnected
    let mut peer = server.accept().await;
    peer.welcome(true, 1000);
    connected(&mut events).await;
    assert_eq!(peer.received().await, json!({"type": "watch_presence"}));
    assert!(matches!(
        agent.set_status("").await,
        Err(AgentError::InvalidOption {
            field: "status",
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn re_delivered_notices_are_shown_once() {
    let (_agent, mut events, mut server) = start(opts());
    let peer = server.accept().await;
    peer.welcome(false, 1000);
    connected(&mut events).await;
    let n = json!({"id": "pw", "text": "Your password expires in 3 days"});
    peer.send(ServerFrame::Notice(n.clone()));
    peer.send(ServerFrame::Notice(n.clone()));
    let changed = json!({"id": "pw", "text": "Your password expires in 2 days"});
    peer.send(ServerFrame::Notice(changed.clone()));
    assert_eq!(next(&mut events).await, AgentEvent::Notice(n));
    assert_eq!(next(&mut events).await, AgentEvent::Notice(changed));
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_closes_the_connection() {
    let (agent, mut events, mut server) = start(opts());
    let peer = server.accept().await;
    peer.welcome(false, 1000);
    connected(&mut events).await;
    drop(agent);
    assert_eq!(stopped(&mut events).await, Stop::Closed);
    assert!(server.abandoned().await);
}

#[test]
fn options_are_validated_naming_the_field() {
    let bad = |o: AgentOptions| match o.validate() {
        Err(AgentError::InvalidOption { field, .. }) => field,
        other => panic!("expected an invalid option, got {other:?}"),
    };
    assert_eq!(
        bad(AgentOptions {
            initial_delay: Duration::ZERO,
            ..opts()
        }),
        "initial_delay"
    );
    assert_eq!(
        bad(AgentOptions {
            max_delay: Duration::from_millis(1),
            ..opts()
        }),
        "max_delay"
    );
    assert_eq!(
        bad(AgentOptions {
            dead_after: 0,
            ..opts()
        }),
        "dead_after"
    );
    assert!(AgentOptions::default().validate().is_ok());
    let addr = "127.0.0.1:1".parse().expect("addr");
    assert!(matches!(
        Agent::connect(addr, "", AgentOptions::default()),
        Err(AgentError::InvalidOption { field: "token", .. })
    ));
}
