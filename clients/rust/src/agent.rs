//! [`Agent`]: an agent's connection that stays up for a whole shift — the
//! browser SDK's reconnect rules for Rust and Tauri desktop apps.
//!
//! The handle ([`Agent`], cheap to clone) sends commands; [`AgentEvents`]
//! receives what happened. A task owns the socket (see `driver.rs`).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::backoff::Backoff;
use crate::driver::{Command, Driver, TcpConnector};
use crate::ConnectOptions;

/// Commands waiting for the connection task.
const COMMAND_QUEUE: usize = 64;
/// Events waiting for the application. When it stops reading, the task
/// waits (and stops reading the socket), rather than buffering without bound.
const EVENT_QUEUE: usize = 256;

/// What an [`Agent`] refuses. (Connection failures are not errors: they
/// arrive as [`AgentEvent::Disconnected`].)
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AgentError {
    /// An option or argument that cannot work, named.
    #[error("{field}: {problem}")]
    InvalidOption {
        field: &'static str,
        problem: &'static str,
    },
    /// The agent has stopped; commands go nowhere.
    #[error("the agent connection has stopped")]
    Stopped,
}

/// How an [`Agent`] connects, reconnects and decides a socket is dead.
/// The defaults are the browser SDK's.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Ceiling of the first reconnect delay; doubles per failed attempt.
    pub initial_delay: Duration,
    /// The largest delay ceiling; also caps a draining node's `after_ms`.
    pub max_delay: Duration,
    /// Failed attempts in a row (since the last welcome) before giving up;
    /// `None` retries until the broker says the session is over.
    pub max_attempts: Option<u32>,
    /// Time without a welcome (since the connection was lost) after which
    /// the agent gives up; `None`: no bound.
    pub give_up_after: Option<Duration>,
    /// How long one attempt may take, TCP connect to `welcome`.
    pub connect_timeout: Duration,
    /// App ping interval until a welcome names the broker's `heartbeat_ms`.
    pub heartbeat: Duration,
    /// Heartbeats of silence (no frame at all) after which the socket is
    /// presumed dead, closed and replaced.
    pub dead_after: u32,
    /// How long [`Agent::logout`] waits for the broker's confirmation.
    pub logout_timeout: Duration,
    /// Source address and handshake bound of each socket.
    pub socket: ConnectOptions,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_attempts: None,
            give_up_after: None,
            connect_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(15),
            dead_after: 2,
            logout_timeout: Duration::from_secs(5),
            socket: ConnectOptions::default(),
        }
    }
}

impl AgentOptions {
    /// The delay ceilings these options describe.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            initial: self.initial_delay,
            max: self.max_delay,
        }
    }

    /// Refuses settings that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), AgentError> {
        let bad = |field: &'static str, problem: &'static str| {
            Err(AgentError::InvalidOption { field, problem })
        };
        if self.initial_delay.is_zero() {
            return bad("initial_delay", "must be more than zero");
        }
        if self.max_delay < self.initial_delay {
            return bad("max_delay", "must be at least initial_delay");
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout", "must be more than zero");
        }
        if self.heartbeat.is_zero() {
            return bad("heartbeat", "must be more than zero");
        }
        if self.dead_after == 0 {
            return bad("dead_after", "must be at least 1 heartbeat");
        }
        if self.logout_timeout.is_zero() {
            return bad("logout_timeout", "must be more than zero");
        }
        Ok(())
    }
}

/// The broker's `welcome`: this socket serves the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    pub session_id: String,
    /// The session was DISCONNECTED and this socket brought it back within
    /// grace.
    pub resumed: bool,
    pub heartbeat_ms: u64,
    pub grace_ms: u64,
}

/// Why a socket was lost (the agent reconnects after each).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disconnect {
    /// The socket closed with a code worth a reconnect (`None`: no close
    /// frame — the TCP connection ended or failed).
    Closed { code: Option<u16>, reason: String },
    /// Nothing arrived for `dead_after` heartbeats: the path went silent.
    HeartbeatTimeout { silent: Duration },
    /// The node is draining (`reconnect` frame); not counted as a failure.
    Draining { after: Duration },
    /// TCP connect or the WebSocket handshake failed (refused, 429, ...).
    ConnectFailed { error: String },
    /// No `welcome` within `connect_timeout`.
    ConnectTimeout,
}

/// Why the agent stopped for good (it never reconnects after these).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The session was ended by someone else: `superseded`,
    /// `station_changed`, `evicted` or `expired`; `message` is for people.
    ForcedLogout { reason: String, message: String },
    /// The session was logged out (by this agent or another socket of it).
    LoggedOut,
    /// A final close code without a frame that explains it (4004, 4401,
    /// 4403): sign in again.
    Rejected { code: u16, reason: String },
    /// The application closed the agent (or dropped every handle).
    Closed,
    /// `logout` could not be confirmed; the login service should `Release`.
    LogoutUnconfirmed,
    /// `max_attempts` or `give_up_after` ran out.
    GaveUp { attempts: u32, last: Disconnect },
}

/// What the application hears from an [`Agent`].
#[derive(Clone, Debug, PartialEq)]
pub enum AgentEvent {
    /// A socket was welcomed; `resumed` says whether the session came back.
    Connected(Welcome),
    /// A notice (re-deliveries with the same id and content are dropped).
    Notice(Value),
    /// A presence frame, after [`Agent::watch_presence`].
    Presence(Value),
    /// An `error` frame that left the socket up (e.g. `forbidden`).
    ServerError { code: String, message: String },
    /// The broker's own word on whether it can vouch for the session:
    /// `"degraded"` (with its `cause`, e.g. `"redis_unreachable"`, and
    /// since when, Unix ms) or `"ok"`. The socket stays up either way; a
    /// desktop shows a service notice rather than a network banner.
    Connectivity {
        state: String,
        cause: Option<String>,
        since_ms: Option<i64>,
    },
    /// The socket was lost; the next attempt starts after `retry_in`.
    /// `attempt` counts failures since the last welcome.
    Disconnected {
        cause: Disconnect,
        attempt: u32,
        retry_in: Duration,
    },
    /// The last event: the agent stopped and will not reconnect.
    Stopped(Stop),
}

/// The command side of an agent connection; clones share the connection.
/// When every clone is dropped the connection closes.
#[derive(Clone, Debug)]
pub struct Agent {
    cmds: mpsc::Sender<Command>,
}

/// The event side of an agent connection.
#[derive(Debug)]
pub struct AgentEvents {
    events: mpsc::Receiver<AgentEvent>,
}

impl AgentEvents {
    /// The next event; `None` after [`AgentEvent::Stopped`].
    pub async fn next(&mut self) -> Option<AgentEvent> {
        self.events.recv().await
    }
}

impl Agent {
    /// Starts an agent connection to the broker's WebSocket listener at
    /// `http` with the connect token from the login service's `Claim`. It
    /// connects in the background (spawned on the current tokio runtime;
    /// panics outside one, like `tokio::spawn`) and reconnects with the same
    /// token until the broker ends the session or the options give up.
    pub fn connect(
        http: SocketAddr,
        token: impl Into<String>,
        opts: AgentOptions,
    ) -> Result<(Agent, AgentEvents), AgentError> {
        let token = token.into();
        if token.is_empty() {
            return Err(AgentError::InvalidOption {
                field: "token",
                problem: "must not be empty",
            });
        }
        opts.validate()?;
        let connector = TcpConnector::new(http, token, opts.socket.clone());
        Ok(Self::spawn(connector, opts))
    }

    pub(crate) fn spawn<C: crate::driver::Connector>(
        connector: C,
        opts: AgentOptions,
    ) -> (Agent, AgentEvents) {
        Self::spawn_with(connector, opts, crate::backoff::jitter)
    }

    /// [`Agent::spawn`] with a chosen jitter source (tests fix it).
    pub(crate) fn spawn_with<C: crate::driver::Connector>(
        connector: C,
        opts: AgentOptions,
        jitter: fn() -> f64,
    ) -> (Agent, AgentEvents) {
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
        let mut driver = Driver::new(connector, opts, cmd_rx, ev_tx);
        driver.jitter = jitter;
        tokio::spawn(driver.run());
        (Agent { cmds: cmd_tx }, AgentEvents { events: ev_rx })
    }

    async fn send(&self, cmd: Command) -> Result<(), AgentError> {
        self.cmds.send(cmd).await.map_err(|_| AgentError::Stopped)
    }

    /// Sets the presence status (`available`, `away`, ...): sent now when
    /// connected, else after the next welcome.
    pub async fn set_status(&self, status: impl Into<String>) -> Result<(), AgentError> {
        let status = status.into();
        if status.is_empty() || status.len() > 64 {
            return Err(AgentError::InvalidOption {
                field: "status",
                problem: "must be 1 to 64 bytes",
            });
        }
        self.send(Command::Status(status)).await
    }

    /// Acknowledges a notice so the broker stops re-delivering it; queued
    /// while disconnected.
    pub async fn ack(&self, notice_id: impl Into<String>) -> Result<(), AgentError> {
        self.send(Command::Ack(notice_id.into())).await
    }

    /// Subscribes this connection (every socket of it, across reconnects)
    /// to the tenant's presence; for supervisors and admins.
    pub async fn watch_presence(&self) -> Result<(), AgentError> {
        self.send(Command::WatchPresence).await
    }

    /// Skips the current backoff wait (e.g. the OS reports the network back).
    pub async fn reconnect_now(&self) -> Result<(), AgentError> {
        self.send(Command::ReconnectNow).await
    }

    /// Ends the session (LOGGED_OUT). `true` when the broker confirmed;
    /// `false` when it could not be told (disconnected, or no answer within
    /// `logout_timeout`) — then the login service should `Release` it. The
    /// agent stops either way.
    pub async fn logout(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Logout(tx)).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Closes the socket and stops; the session stays live for its grace
    /// period (another connection with the token resumes it).
    pub async fn close(&self) {
        let _ = self.send(Command::Close).await;
    }
}
