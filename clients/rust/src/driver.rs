//! The task behind an [`Agent`](crate::Agent): one socket at a time —
//! connect, await `welcome`, serve (app pings, dead-socket detection,
//! commands, frames) — and between sockets the decision: reconnect after a
//! backoff, after a draining node's `after_ms`, or stop for good.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout_at, Instant};

use crate::agent::{AgentEvent, AgentOptions, Disconnect, Stop, Welcome};
use crate::close_code::{self, CloseAction};
use crate::pending::{Pending, Seen};
use crate::{AgentSocket, ConnectOptions, Error, ServerFrame};

/// What the application asked for.
#[derive(Debug)]
pub(crate) enum Command {
    Status(String),
    Ack(String),
    WatchPresence,
    Logout(oneshot::Sender<bool>),
    ReconnectNow,
    Close,
}

/// One open socket, as the driver uses it.
pub(crate) trait Link: Send + 'static {
    /// The next sign of life: `Some(frame)` for a text or close frame,
    /// `None` for a control frame (a WebSocket ping counts as life too).
    fn recv(&mut self) -> impl Future<Output = Result<Option<ServerFrame>, Error>> + Send;
    fn send(&mut self, msg: Value) -> impl Future<Output = Result<(), Error>> + Send;
    /// Closes normally, best effort and bounded.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// Opens sockets, always to the same place with the same token.
pub(crate) trait Connector: Send + Sync + 'static {
    type Link: Link;
    fn connect(&self) -> impl Future<Output = Result<Self::Link, Error>> + Send + 'static;
}

/// The real connector: TCP + WebSocket to a broker's listener.
pub(crate) struct TcpConnector {
    http: SocketAddr,
    token: std::sync::Arc<str>,
    opts: ConnectOptions,
}

impl TcpConnector {
    pub(crate) fn new(http: SocketAddr, token: String, opts: ConnectOptions) -> Self {
        Self {
            http,
            token: token.into(),
            opts,
        }
    }
}

impl Connector for TcpConnector {
    type Link = AgentSocket;
    fn connect(&self) -> impl Future<Output = Result<AgentSocket, Error>> + Send + 'static {
        let (http, token, opts) = (self.http, self.token.clone(), self.opts.clone());
        async move { AgentSocket::connect(http, &token, &opts).await }
    }
}

impl Link for AgentSocket {
    async fn recv(&mut self) -> Result<Option<ServerFrame>, Error> {
        self.next_activity().await
    }
    async fn send(&mut self, msg: Value) -> Result<(), Error> {
        self.send_json(msg).await
    }
    async fn close(&mut self) {
        self.close_in_place().await
    }
}

/// What follows a socket's end.
enum Next {
    Retry(Disconnect),
    Drain(Duration),
    Stop(Stop),
}

/// What a command asks of the loop.
enum Act {
    Flush,
    Logout,
    ReconnectNow,
    Stop(Stop),
}

pub(crate) struct Driver<C> {
    connector: C,
    opts: AgentOptions,
    cmds: mpsc::Receiver<Command>,
    events: mpsc::Sender<AgentEvent>,
    /// The jitter source, replaceable in tests.
    pub(crate) jitter: fn() -> f64,
    /// Failed attempts since the last welcome.
    attempt: u32,
    /// When the connection was lost (None while welcomed).
    failing_since: Option<Instant>,
    heartbeat: Duration,
    pending: Pending,
    seen: Seen,
    logout: Option<oneshot::Sender<bool>>,
}

impl<C: Connector> Driver<C> {
    pub(crate) fn new(
        connector: C,
        opts: AgentOptions,
        cmds: mpsc::Receiver<Command>,
        events: mpsc::Sender<AgentEvent>,
    ) -> Self {
        Self {
            connector,
            heartbeat: opts.heartbeat,
            opts,
            cmds,
            events,
            jitter: crate::backoff::jitter,
            attempt: 0,
            failing_since: Some(Instant::now()),
            pending: Pending::default(),
            seen: Seen::default(),
            logout: None,
        }
    }

    pub(crate) async fn run(mut self) {
        let stop = loop {
            let next = match self.open().await {
                Ok(mut link) => self.serve(&mut link).await,
                Err(next) => next,
            };
            let stop = match next {
                Next::Stop(stop) => Some(stop),
                Next::Retry(cause) => self.pause(cause, None).await,
                Next::Drain(after) => {
                    let after = after.min(self.opts.max_delay);
                    self.pause(Disconnect::Draining { after }, Some(after))
                        .await
                }
            };
            if let Some(stop) = stop {
                break stop;
            }
        };
        if let Some(reply) = self.logout.take() {
            let _ = reply.send(stop == Stop::LoggedOut);
        }
        self.emit(AgentEvent::Stopped(stop)).await;
    }

    async fn emit(&self, event: AgentEvent) {
        // An application that dropped its events still commands the agent.
        let _ = self.events.send(event).await;
    }

    fn command(&mut self, cmd: Option<Command>) -> Act {
        let Some(cmd) = cmd else {
            return Act::Stop(Stop::Closed);
        };
        match cmd {
            Command::Status(s) => self.pending.status = Some(s),
            Command::Ack(id) => self.pending.ack(id),
            Command::WatchPresence => {
                self.pending.watching = true;
                self.pending.watch_unsent = true;
            }
            Command::Logout(reply) => {
                self.logout = Some(reply);
                return Act::Logout;
            }
            Command::ReconnectNow => return Act::ReconnectNow,
            Command::Close => return Act::Stop(Stop::Closed),
        }
        Act::Flush
    }

    /// A command while no socket is welcomed: `Some` when it ends the agent.
    fn command_offline(&mut self, cmd: Option<Command>) -> Option<Stop> {
        match self.command(cmd) {
            Act::Stop(stop) => Some(stop),
            Act::Logout => Some(Stop::LogoutUnconfirmed),
            Act::Flush | Act::ReconnectNow => None,
        }
    }

    /// Opens a socket and awaits its welcome, within `connect_timeout`.
    async fn open(&mut self) -> Result<C::Link, Next> {
        let deadline = Instant::now() + self.opts.connect_timeout;
        let connecting = timeout_at(deadline, self.connector.connect());
        tokio::pin!(connecting);
        let mut link = loop {
            tokio::select! {
                r = &mut connecting => match r {
                    Err(_) => return Err(Next::Retry(Disconnect::ConnectTimeout)),
                    Ok(Err(e)) => return Err(Next::Retry(Disconnect::ConnectFailed { error: e.to_string() })),
                    Ok(Ok(link)) => break link,
                },
                cmd = self.cmds.recv() => if let Some(stop) = self.command_offline(cmd) {
                    return Err(Next::Stop(stop));
                },
            }
        };
        loop {
            tokio::select! {
                rx = timeout_at(deadline, link.recv()) => match rx {
                    Err(_) => return Err(Next::Retry(Disconnect::ConnectTimeout)),
                    Ok(Ok(Some(ServerFrame::Welcome { session_id, resumed, heartbeat_ms, grace_ms }))) => {
                        self.attempt = 0;
                        self.failing_since = None;
                        if heartbeat_ms > 0 {
                            self.heartbeat = Duration::from_millis(heartbeat_ms);
                        }
                        self.pending.watch_unsent = self.pending.watching;
                        self.emit(AgentEvent::Connected(Welcome { session_id, resumed, heartbeat_ms, grace_ms })).await;
                        return Ok(link);
                    }
                    // An ended session is answered with forced_logout, a
                    // bad token with error + close, a draining node with
                    // reconnect: all before any welcome.
                    Ok(Ok(Some(frame))) => if let Some(next) = self.frame(frame).await {
                        return Err(next);
                    },
                    Ok(Ok(None) | Err(_)) => {}
                },
                cmd = self.cmds.recv() => if let Some(stop) = self.command_offline(cmd) {
                    link.close().await;
                    return Err(Next::Stop(stop));
                },
            }
        }
    }

    /// Serves a welcomed socket until it ends.
    async fn serve(&mut self, link: &mut C::Link) -> Next {
        let hb = self.heartbeat;
        let dead_after = hb.saturating_mul(self.opts.dead_after);
        let mut last_rx = Instant::now();
        let mut next_ping = last_rx + hb;
        let mut ping_id: u64 = 0;
        let mut logout_by: Option<Instant> = None;
        if let Err(cause) = self.flush(link, last_rx + dead_after).await {
            return Next::Retry(cause);
        }
        loop {
            let dead_at = last_rx + dead_after;
            tokio::select! {
                biased;
                cmd = self.cmds.recv() => match self.command(cmd) {
                    Act::Flush => if let Err(cause) = self.flush(link, dead_at).await {
                        return Next::Retry(cause);
                    },
                    Act::Logout => {
                        if send_by(link, json!({"type": "logout"}), dead_at).await.is_err() {
                            return Next::Stop(Stop::LogoutUnconfirmed);
                        }
                        logout_by = Some(Instant::now() + self.opts.logout_timeout);
                    }
                    Act::ReconnectNow => {}
                    Act::Stop(stop) => {
                        link.close().await;
                        return Next::Stop(stop);
                    }
                },
                rx = link.recv() => {
                    last_rx = Instant::now();
                    if let Ok(Some(frame)) = rx {
                        if let Some(next) = self.frame(frame).await {
                            return next;
                        }
                    }
                }
                _ = sleep_until(next_ping) => {
                    ping_id += 1;
                    if let Err(cause) = send_by(link, json!({"type": "ping", "id": ping_id}), dead_at).await {
                        return Next::Retry(cause);
                    }
                    next_ping += hb;
                }
                _ = sleep_until(dead_at) => {
                    return Next::Retry(Disconnect::HeartbeatTimeout { silent: dead_after });
                }
                _ = sleep_until(logout_by.unwrap_or(dead_at)), if logout_by.is_some() => {
                    return Next::Stop(Stop::LogoutUnconfirmed);
                }
            }
        }
    }

    /// Sends what waited for a socket: status, acks, the presence watch.
    async fn flush(&mut self, link: &mut C::Link, by: Instant) -> Result<(), Disconnect> {
        if self.pending.watch_unsent {
            send_by(link, json!({"type": "watch_presence"}), by).await?;
            self.pending.watch_unsent = false;
        }
        if let Some(status) = &self.pending.status {
            send_by(link, json!({"type": "status", "status": status}), by).await?;
            self.pending.status = None;
        }
        while let Some(id) = self.pending.acks.front() {
            send_by(link, json!({"type": "ack", "notice_id": id}), by).await?;
            self.pending.acks.pop_front();
        }
        Ok(())
    }

    /// Handles a frame; `Some` when it ends the socket.
    async fn frame(&mut self, frame: ServerFrame) -> Option<Next> {
        match frame {
            ServerFrame::Welcome { .. } | ServerFrame::Pong(_) => None,
            ServerFrame::Notice(n) => {
                if self.seen.fresh(&n) {
                    self.emit(AgentEvent::Notice(n)).await;
                }
                None
            }
            ServerFrame::Presence(p) => {
                self.emit(AgentEvent::Presence(p)).await;
                None
            }
            ServerFrame::Error { code, message } => {
                self.emit(AgentEvent::ServerError { code, message }).await;
                None
            }
            ServerFrame::Connectivity {
                state,
                cause,
                since_ms,
            } => {
                self.emit(AgentEvent::Connectivity {
                    state,
                    cause,
                    since_ms,
                })
                .await;
                None
            }
            ServerFrame::ForcedLogout { reason, message } => {
                Some(Next::Stop(Stop::ForcedLogout { reason, message }))
            }
            ServerFrame::LoggedOut => Some(Next::Stop(Stop::LoggedOut)),
            ServerFrame::Reconnect { after_ms } => {
                Some(Next::Drain(Duration::from_millis(after_ms)))
            }
            ServerFrame::Closed { code, reason } => Some(closed(code, reason)),
        }
    }

    /// Waits before the next attempt; `Some` when the agent stops instead.
    async fn pause(&mut self, cause: Disconnect, fixed: Option<Duration>) -> Option<Stop> {
        if self.logout.is_some() {
            return Some(Stop::LogoutUnconfirmed);
        }
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        let delay = match fixed {
            Some(d) => d,
            None => {
                let attempts_out = self.opts.max_attempts.is_some_and(|m| self.attempt >= m);
                let time_out = self
                    .opts
                    .give_up_after
                    .is_some_and(|g| since.elapsed() >= g);
                if attempts_out || time_out {
                    return Some(Stop::GaveUp {
                        attempts: self.attempt,
                        last: cause,
                    });
                }
                let d = self.opts.backoff().delay(self.attempt, (self.jitter)());
                self.attempt += 1;
                d
            }
        };
        self.emit(AgentEvent::Disconnected {
            cause,
            attempt: self.attempt,
            retry_in: delay,
        })
        .await;
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = sleep_until(until) => return None,
                cmd = self.cmds.recv() => match self.command(cmd) {
                    Act::Stop(stop) => return Some(stop),
                    Act::Logout => return Some(Stop::LogoutUnconfirmed),
                    Act::ReconnectNow => return None,
                    Act::Flush => {}
                },
            }
        }
    }
}

/// Sends `msg`, giving up at `by` (a stuck write is a dead socket too).
async fn send_by<L: Link>(link: &mut L, msg: Value, by: Instant) -> Result<(), Disconnect> {
    match timeout_at(by, link.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Disconnect::Closed {
            code: None,
            reason: e.to_string(),
        }),
        Err(_) => Err(Disconnect::Closed {
            code: None,
            reason: "write timed out".into(),
        }),
    }
}

/// What a close means: reconnect, or stop (with the people message for
/// forced-logout codes that came without their frame).
fn closed(code: Option<u16>, reason: String) -> Next {
    let Some(code) = code else {
        return Next::Retry(Disconnect::Closed { code, reason });
    };
    match close_code::action(code) {
        CloseAction::Reconnect => Next::Retry(Disconnect::Closed {
            code: Some(code),
            reason,
        }),
        CloseAction::Stop if code == close_code::LOGGED_OUT => Next::Stop(Stop::LoggedOut),
        CloseAction::Stop => Next::Stop(match close_code::forced_logout(code) {
            Some((r, m)) => Stop::ForcedLogout {
                reason: r.into(),
                message: m.into(),
            },
            None => Stop::Rejected { code, reason },
        }),
    }
}
