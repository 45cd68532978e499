//! Helpers shared by the integration tests: start a real node on ephemeral
//! ports, talk to it over gRPC and WebSocket, and wait — always with a bound —
//! for what it sends.
//!
//! Every wait goes through [`within`], so a broken server fails a test with a
//! message naming what was awaited instead of hanging the suite. No helper
//! sleeps to synchronise: each one awaits the frame or event it is about.
#![allow(dead_code, unused_imports)]

pub mod agent;
pub mod procs;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tonic::transport::Channel;

use turnstile::auth::{ConnectClaims, TokenKeys};
use turnstile::config::Config;
use turnstile::pb;
use turnstile::pb::session_broker_service_client::SessionBrokerServiceClient;

pub use pb::{ClaimOutcome, ConflictPolicy, EndReason, PresenceChange, SessionState};

/// The bound on every single wait in the tests.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The HS256 secret test nodes sign with, so tests can forge token variants.
pub const SECRET: &str = "integration-test-signing-key-0123456789abcdef";

/// The messages people see, as the spec words them.
pub const SUPERSEDED_MSG: &str =
    "Another user has logged with your credentials. Multiple logins not allowed.";
pub const STATION_CHANGED_MSG: &str =
    "Your connection has been dropped due to a subsequent log on to a different station.";
pub const EVICTED_MSG: &str = "You have been logged out by an administrator.";

pub type Client = SessionBrokerServiceClient<Channel>;

/// Awaits `fut` for at most [`TIMEOUT`]; panics naming `what` otherwise.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {TIMEOUT:?} waiting for {what}"),
    }
}

/// Pauses tokio's clock (current-thread test runtime) on the embedded
/// registry, so grace, connect-timeout, heartbeat and expiry waits cost no
/// real time: the runtime jumps to the next timer whenever it is idle. On
/// the Redis registry (`TS_TEST_REDIS`) time keeps running: a paused clock
/// would also jump while the node waits for Redis's replies, firing
/// deadlines (and the tests' own bounds) early.
pub fn pause_time_unless_redis() {
    if std::env::var_os("TS_TEST_REDIS").is_none() {
        tokio::time::pause();
    }
}

/// A node's config for tests: ephemeral ports, a known signing key, defaults
/// otherwise.
pub fn config() -> Config {
    Config {
        node: turnstile::session::NodeId::parse("test-node").ok(),
        http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        grpc_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        signing_key: Some(SECRET.into()),
        // TS_TEST_REDIS=redis://... runs the single-node suites on
        // the Redis registry (each node in its own namespace).
        redis: std::env::var("TS_TEST_REDIS")
            .ok()
            .map(|u| u.parse().expect("TS_TEST_REDIS is a redis:// URL")),
        redis_namespace: format!("t{:016x}", rand::random::<u64>()),
        lease_ttl: Duration::from_secs(1),
        reconcile_interval: Duration::from_millis(500),
        ..Config::default()
    }
}

/// A running node and a gRPC client connected to it.
pub struct Node {
    server: turnstile::server::RunningServer,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub client: Client,
}

/// Starts a node with the test defaults.
pub async fn start() -> Node {
    start_with(|_| {}).await
}

/// Starts a node with the test defaults changed by `tweak`.
pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Node {
    let mut cfg = config();
    tweak(&mut cfg);
    let server = within("server start", turnstile::server::start(cfg))
        .await
        .expect("server starts");
    let http = server.http_addr;
    let grpc = server.grpc_addr;
    let client = grpc_client(grpc).await;
    Node {
        server,
        http,
        grpc,
        client,
    }
}

/// A fresh gRPC client for `addr`.
pub async fn grpc_client(addr: SocketAddr) -> Client {
    within(
        "gRPC connect",
        SessionBrokerServiceClient::connect(format!("http://{addr}")),
    )
    .await
    .expect("gRPC client connects")
}

/// The keys the test nodes sign with (for forging tokens).
pub fn keys() -> TokenKeys {
    TokenKeys::new(SECRET.as_bytes(), Duration::from_secs(3600))
}

/// The claims inside a token, without checking its signature.
pub fn claims_of(token: &str) -> ConnectClaims {
    jsonwebtoken::dangerous::insecure_decode::<ConnectClaims>(token)
        .expect("token decodes")
        .claims
}

/// A claim request with the usual test fields.
pub fn claim_req(
    tenant: &str,
    login: &str,
    station: &str,
    policy: ConflictPolicy,
) -> pb::ClaimRequest {
    pb::ClaimRequest {
        tenant: tenant.into(),
        login: login.into(),
        station: station.into(),
        client: "desktop".into(),
        role: "agent".into(),
        on_conflict: policy as i32,
        ..Default::default()
    }
}

impl Node {
    /// Shuts the node down and waits for it to finish.
    pub async fn shutdown(self) {
        within("server shutdown", self.server.shutdown()).await;
    }

    /// The running server itself.
    pub fn server(&self) -> &turnstile::server::RunningServer {
        &self.server
    }

    /// A second, independent gRPC client.
    /// Open WebSockets on the node.
    pub fn socket_count(&self) -> usize {
        self.server.socket_count()
    }

    pub async fn new_client(&self) -> Client {
        grpc_client(self.grpc).await
    }

    /// Claims and returns the whole response; panics on a gRPC error.
    pub async fn claim(
        &self,
        tenant: &str,
        login: &str,
        station: &str,
        policy: ConflictPolicy,
    ) -> pb::ClaimResponse {
        self.claim_with(claim_req(tenant, login, station, policy))
            .await
    }

    /// Claims with a full request.
    pub async fn claim_with(&self, req: pb::ClaimRequest) -> pb::ClaimResponse {
        let mut c = self.client.clone();
        within("Claim", c.claim(req))
            .await
            .expect("Claim succeeds")
            .into_inner()
    }

    /// Claims and asserts it was granted; returns the response.
    pub async fn grant(&self, tenant: &str, login: &str, station: &str) -> pb::ClaimResponse {
        let r = self
            .claim(tenant, login, station, ConflictPolicy::Reject)
            .await;
        assert_eq!(r.outcome(), ClaimOutcome::Granted, "claim {login}: {r:?}");
        assert!(!r.token.is_empty(), "granted claim carries a token");
        r
    }

    /// Claims with a role (supervisor / admin / agent), asserting the grant.
    pub async fn grant_role(&self, tenant: &str, login: &str, role: &str) -> pb::ClaimResponse {
        let mut req = claim_req(tenant, login, "", ConflictPolicy::Reject);
        req.role = role.into();
        let r = self.claim_with(req).await;
        assert_eq!(r.outcome(), ClaimOutcome::Granted, "claim {login}: {r:?}");
        r
    }

    /// GetSession by id.
    pub async fn get_by_id(&self, tenant: &str, id: &str) -> Result<pb::Session, tonic::Status> {
        let mut c = self.client.clone();
        within(
            "GetSession",
            c.get_session(pb::GetSessionRequest {
                tenant: tenant.into(),
                key: Some(pb::get_session_request::Key::SessionId(id.into())),
            }),
        )
        .await
        .map(session_in)
    }

    /// GetSession by login.
    pub async fn get_by_login(
        &self,
        tenant: &str,
        login: &str,
    ) -> Result<pb::Session, tonic::Status> {
        let mut c = self.client.clone();
        within(
            "GetSession",
            c.get_session(pb::GetSessionRequest {
                tenant: tenant.into(),
                key: Some(pb::get_session_request::Key::Login(login.into())),
            }),
        )
        .await
        .map(session_in)
    }

    /// Every live session of a tenant, following pagination.
    pub async fn list_all(&self, tenant: &str) -> Vec<pb::Session> {
        let mut c = self.client.clone();
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = within(
                "ListSessions",
                c.list_sessions(pb::ListSessionsRequest {
                    tenant: tenant.into(),
                    page_size: 0,
                    page_token: token.clone(),
                }),
            )
            .await
            .expect("ListSessions succeeds")
            .into_inner();
            out.extend(page.sessions);
            if page.next_page_token.is_empty() {
                return out;
            }
            token = page.next_page_token;
        }
    }

    /// Starts a WatchPresence stream for `tenant`.
    pub async fn watch(&self, tenant: &str) -> Watch {
        let mut c = self.new_client().await;
        let stream = within(
            "WatchPresence",
            c.watch_presence(pb::WatchPresenceRequest {
                tenant: tenant.into(),
                after_sequence: None,
            }),
        )
        .await
        .expect("WatchPresence succeeds")
        .into_inner();
        Watch { stream }
    }

    /// Opens a WebSocket with the token in the `Authorization` header.
    pub async fn connect(&self, token: &str) -> Ws {
        connect(self.http, token).await
    }

    /// Opens a WebSocket with the token in `?token=`.
    pub async fn connect_query(&self, token: &str) -> Ws {
        connect_query(self.http, token).await
    }

    /// Connects and expects `welcome`; returns the socket and the frame.
    pub async fn connect_welcome(&self, token: &str) -> (Ws, Value) {
        let mut ws = self.connect(token).await;
        let welcome = ws.expect_type("welcome").await;
        (ws, welcome)
    }

    /// Awaits the session reaching `state` by watching presence `watch` for
    /// the session's `change`, then reading it back.
    pub async fn session_after(
        &self,
        watch: &mut Watch,
        tenant: &str,
        id: &str,
        change: PresenceChange,
    ) -> pb::Session {
        watch.expect_for(id, change).await;
        self.get_by_id(tenant, id).await.expect("GetSession by id")
    }
}

/// A WatchPresence stream.
pub struct Watch {
    stream: tonic::Streaming<pb::WatchPresenceResponse>,
}

impl Watch {
    /// The next item (an event or a gap), bounded.
    pub async fn next_item(&mut self) -> pb::WatchPresenceResponse {
        within("a presence stream item", self.stream.message())
            .await
            .expect("presence stream healthy")
            .expect("presence stream still open")
    }

    /// The next event, bounded.
    pub async fn next(&mut self) -> pb::PresenceEvent {
        let r = within("a presence event", self.stream.message())
            .await
            .expect("presence stream healthy")
            .expect("presence stream still open");
        event_in(r)
    }

    /// Awaits the end of the stream: `None` when it ended cleanly,
    /// `Some(Err)` when it failed, `Some(Ok)` when yet another event came.
    pub async fn end(&mut self) -> Option<Result<pb::PresenceEvent, tonic::Status>> {
        match within("the presence stream to end", self.stream.message()).await {
            Ok(Some(ev)) => Some(Ok(event_in(ev))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// Skips events until one of `session_id` with `change`; returns it.
    /// Panics if the session ENDS first while something else was awaited.
    pub async fn expect_for(
        &mut self,
        session_id: &str,
        change: PresenceChange,
    ) -> pb::PresenceEvent {
        let mut seen = Vec::new();
        let fut = async {
            loop {
                let ev = event_in(
                    self.stream
                        .message()
                        .await
                        .expect("presence stream healthy")
                        .expect("presence stream still open"),
                );
                let sid = ev
                    .session
                    .as_ref()
                    .map(|s| s.session_id.clone())
                    .unwrap_or_default();
                if sid == session_id && ev.change() == change {
                    return ev;
                }
                if sid == session_id
                    && ev.change() == PresenceChange::Ended
                    && change != PresenceChange::Ended
                {
                    panic!("session {session_id} ended while waiting for {change:?}: {ev:?}");
                }
                seen.push((sid, ev.change()));
            }
        };
        match tokio::time::timeout(TIMEOUT, fut).await {
            Ok(ev) => ev,
            Err(_) => panic!("timed out waiting for {change:?} of {session_id}; saw {seen:?}"),
        }
    }
}

pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What came off a socket, control frames aside.
#[derive(Debug)]
pub enum Frame {
    Json(Value),
    /// A close frame: its code (None when it had no payload) and reason.
    Close(Option<u16>, String),
    /// The stream ended (or failed) without a close frame.
    Gone(String),
}

/// A WebSocket client.
pub struct Ws {
    stream: WsStream,
}

/// Opens `ws://{http}/v1/ws` with `Authorization: Bearer {token}`.
pub async fn connect(http: SocketAddr, token: &str) -> Ws {
    let mut req = format!("ws://{http}/v1/ws")
        .into_client_request()
        .expect("valid ws url");
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header value"),
    );
    let (stream, _resp) = within("WebSocket handshake", tokio_tungstenite::connect_async(req))
        .await
        .expect("WebSocket handshake succeeds");
    Ws { stream }
}

/// Opens `ws://{http}/v1/ws?token={token}`.
pub async fn connect_query(http: SocketAddr, token: &str) -> Ws {
    connect_url(&format!("ws://{http}/v1/ws?token={token}")).await
}

/// Opens a WebSocket to `url` as is (no token unless the url carries one).
pub async fn connect_url(url: &str) -> Ws {
    let (stream, _resp) = within("WebSocket handshake", tokio_tungstenite::connect_async(url))
        .await
        .expect("WebSocket handshake succeeds");
    Ws { stream }
}

impl Ws {
    /// The next text/close frame (pings and pongs are answered and skipped).
    pub async fn next_frame(&mut self) -> Frame {
        within("a WebSocket frame", async {
            loop {
                match self.stream.next().await {
                    None => return Frame::Gone("stream ended".into()),
                    Some(Err(e)) => return Frame::Gone(e.to_string()),
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(t.as_str())
                            .unwrap_or_else(|e| panic!("server sent non-JSON text {t:?}: {e}"));
                        return Frame::Json(v);
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return match frame {
                            Some(f) => Frame::Close(Some(u16::from(f.code)), f.reason.to_string()),
                            None => Frame::Close(None, String::new()),
                        }
                    }
                    Some(Ok(Message::Binary(b))) => {
                        panic!("server sent a binary frame of {} bytes", b.len())
                    }
                    Some(Ok(_)) => continue, // ping / pong / raw frame
                }
            }
        })
        .await
    }

    /// Awaits `n` WebSocket pings from the server (answering each, as any
    /// client library does); panics if a text or close frame comes first.
    pub async fn await_server_pings(&mut self, n: usize) {
        within(&format!("{n} server pings"), async {
            let mut seen = 0;
            while seen < n {
                match self.stream.next().await {
                    Some(Ok(Message::Ping(_))) => seen += 1,
                    Some(Ok(Message::Pong(_))) => {}
                    other => panic!("expected a server ping, got {other:?}"),
                }
            }
        })
        .await
    }

    /// The next JSON frame; panics on close.
    pub async fn next_json(&mut self) -> Value {
        match self.next_frame().await {
            Frame::Json(v) => v,
            other => panic!("expected a JSON frame, got {other:?}"),
        }
    }

    /// The next JSON frame, which must be of `ty`.
    pub async fn expect_type(&mut self, ty: &str) -> Value {
        let v = self.next_json().await;
        assert_eq!(v["type"], ty, "expected a {ty:?} frame, got {v}");
        v
    }

    /// Skips JSON frames of other types (e.g. presence) until one of `ty`.
    pub async fn wait_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.next_json().await;
            if v["type"] == ty {
                return v;
            }
        }
    }

    /// The next frame must be a close frame with `code`; returns its reason.
    pub async fn expect_close(&mut self, code: u16) -> String {
        match self.next_frame().await {
            Frame::Close(Some(c), reason) => {
                assert_eq!(c, code, "close code (reason {reason:?})");
                reason
            }
            other => panic!("expected close {code}, got {other:?}"),
        }
    }

    /// The next frame is a `forced_logout` with `reason` and `message`, then
    /// the close with `code`. Returns the forced_logout frame.
    pub async fn expect_forced_logout(&mut self, reason: &str, message: &str, code: u16) -> Value {
        let v = self.expect_type("forced_logout").await;
        assert_eq!(v["reason"], reason, "forced_logout reason: {v}");
        assert_eq!(v["message"], message, "forced_logout message: {v}");
        self.expect_close(code).await;
        v
    }

    /// The next frame is `error` with `code`, then close with `close`.
    pub async fn expect_error_then_close(&mut self, code: &str, close: u16) -> Value {
        let v = self.expect_type("error").await;
        assert_eq!(v["code"], code, "error code: {v}");
        self.expect_close(close).await;
        v
    }

    /// Sends a JSON value as a text frame.
    pub async fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: &str) {
        within("WebSocket send", self.stream.send(Message::text(text)))
            .await
            .expect("WebSocket send succeeds");
    }

    /// Sends an app-level ping and expects the pong with the same id.
    pub async fn ping(&mut self, id: &str) {
        self.send_json(json!({"type": "ping", "id": id})).await;
        let v = self.wait_type("pong").await;
        assert_eq!(v["id"], id, "pong echoes the ping id: {v}");
    }

    /// Closes the socket normally and waits for the server's close reply.
    pub async fn close(mut self) {
        let _ = within(
            "WebSocket close",
            self.stream
                .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code: CloseCode::Normal,
                    reason: "bye".into(),
                })),
        )
        .await;
        // Drain until the server answers the close (or the stream ends).
        within("WebSocket close reply", async {
            while let Some(Ok(_)) = self.stream.next().await {}
        })
        .await;
    }

    /// The raw stream, for tests that need unusual frames.
    pub fn raw(&mut self) -> &mut WsStream {
        &mut self.stream
    }
}

/// A plain HTTP/1.1 GET; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    within(&format!("GET {path}"), async {
        let mut s = TcpStream::connect(addr).await.expect("HTTP connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("HTTP write");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("HTTP read");
        let text = String::from_utf8_lossy(&buf).to_string();
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status line in {text:?}"));
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    })
    .await
}

/// The gRPC status code of an error result, for asserting on it.
pub fn code_of<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> tonic::Status {
    match r {
        Ok(v) => panic!("expected a gRPC error, got {v:?}"),
        Err(s) => s,
    }
}

/// The session of a granted response.
pub fn session_of(r: &pb::ClaimResponse) -> &pb::Session {
    r.session.as_ref().expect("granted response has a session")
}

/// WatchPresence on any node's gRPC address.
pub async fn watch_at(grpc: SocketAddr, tenant: &str) -> Watch {
    let mut c = grpc_client(grpc).await;
    let stream = within(
        "WatchPresence",
        c.watch_presence(pb::WatchPresenceRequest {
            tenant: tenant.into(),
            after_sequence: None,
        }),
    )
    .await
    .expect("WatchPresence succeeds")
    .into_inner();
    Watch { stream }
}

/// WatchPresence on any node, resuming after sequence `after`.
pub async fn watch_after(grpc: SocketAddr, tenant: &str, after: u64) -> Watch {
    let mut c = grpc_client(grpc).await;
    let stream = within(
        "WatchPresence",
        c.watch_presence(pb::WatchPresenceRequest {
            tenant: tenant.into(),
            after_sequence: Some(after),
        }),
    )
    .await
    .expect("WatchPresence succeeds")
    .into_inner();
    Watch { stream }
}

/// Claims on any client; panics on a gRPC error.
pub async fn claim_on(c: &mut Client, req: pb::ClaimRequest) -> pb::ClaimResponse {
    within("Claim", c.claim(req))
        .await
        .expect("Claim succeeds")
        .into_inner()
}

/// GetSession by id on any client.
pub async fn get_on(c: &mut Client, tenant: &str, id: &str) -> Result<pb::Session, tonic::Status> {
    within(
        "GetSession",
        c.get_session(pb::GetSessionRequest {
            tenant: tenant.into(),
            key: Some(pb::get_session_request::Key::SessionId(id.into())),
        }),
    )
    .await
    .map(session_in)
}

/// The session of a GetSession answer (the broker always sets it).
pub fn session_in(r: tonic::Response<pb::GetSessionResponse>) -> pb::Session {
    r.into_inner()
        .session
        .expect("a GetSessionResponse carries the session")
}

/// The event of a WatchPresence answer (the broker always sets it).
pub fn event_in(r: pb::WatchPresenceResponse) -> pb::PresenceEvent {
    r.event.expect("a WatchPresenceResponse carries an event")
}

/// Settings of a node named `name` on the Redis at `url`, in namespace `ns`
/// (tests that start several in-process nodes on one Redis).
pub fn on_redis(url: String, ns: &str, name: &'static str) -> impl FnOnce(&mut Config) {
    let ns = ns.to_string();
    move |c: &mut Config| {
        c.node = Some(turnstile::session::NodeId::parse(name).expect("a node name"));
        c.redis = Some(url.parse().expect("a redis:// URL"));
        c.redis_namespace = ns;
    }
}
