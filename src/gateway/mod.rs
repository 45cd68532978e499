//! The gateway: the node's HTTP listener — `GET /v1/ws` (the client
//! WebSocket), `/v1/api/` (the HTTP/JSON API, [`crate::api::http`]),
//! `/metrics`, `/healthz`, `/readyz` — and, with
//! `metrics_listen`, a second one for `/metrics` and the probes only.
//!
//! It never decides who holds a session: it verifies the connect token,
//! asks the registry to attach, and delivers what the hub hands it.

pub mod connection;
pub mod heartbeat;
pub mod limits;
pub mod protocol;
pub mod scrape;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::api::http::HttpApi;
use crate::auth::{TokenError, TokenKeys};
use crate::hub::Hub;
use crate::registry::Registry;
use crate::session::NodeId;

/// What the gateway needs from the configuration.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub node: NodeId,
    pub heartbeat: Duration,
    pub grace: Duration,
    pub max_message_bytes: usize,
    pub outbound_queue: usize,
    /// A socket write taking longer means the client stopped reading.
    pub write_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Browser origins allowed; `None`: any.
    pub allowed_origins: Option<Vec<String>>,
    pub limits: limits::LimitsConfig,
    pub messages_per_second: u32,
    /// When set, the listener speaks TLS (`wss://`, `https://`).
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// `/metrics` has its own listener ([`Gateway::serve_metrics`]): the
    /// public one does not serve it.
    pub metrics_elsewhere: bool,
}

/// State shared by every connection of the gateway.
pub struct Shared {
    pub cfg: GatewayConfig,
    pub registry: Arc<dyn Registry>,
    pub hub: Arc<Hub>,
    pub keys: TokenKeys,
    pub metrics: Option<PrometheusHandle>,
    pub next_conn: AtomicU64,
    /// Set when the node drains: `/readyz` answers 503.
    pub draining: AtomicBool,
    pub limits: Arc<limits::Limits>,
    /// When `/metrics` last took the session census.
    pub census: scrape::CensusCache,
    /// `/v1/api/`: the gRPC service over HTTP/JSON.
    pub http_api: HttpApi,
}

/// The HTTP/WebSocket side of a node.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    pub fn new(
        cfg: GatewayConfig,
        registry: Arc<dyn Registry>,
        hub: Arc<Hub>,
        keys: TokenKeys,
        metrics: Option<PrometheusHandle>,
        http_api: HttpApi,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                limits: limits::Limits::new(cfg.limits),
                cfg,
                registry,
                hub,
                keys,
                metrics,
                next_conn: AtomicU64::new(1),
                draining: AtomicBool::new(false),
                census: scrape::CensusCache::new(scrape::CENSUS_EVERY),
                http_api,
            }),
        }
    }

    /// Marks the node as draining (`/readyz` → 503).
    pub fn set_draining(&self) {
        self.shared.draining.store(true, Ordering::Relaxed);
    }

    /// Accepts connections until `stop`; spawns the heartbeat sweeper and
    /// one task per connection on `tracker`.
    pub async fn serve(self, listener: TcpListener, stop: CancellationToken, tracker: TaskTracker) {
        tracker.spawn(heartbeat::run(
            self.shared.hub.clone(),
            self.shared.cfg.heartbeat,
            stop.clone(),
        ));
        while let Some((stream, peer)) = accept(&listener, &stop, "gateway").await {
            let _ = stream.set_nodelay(true);
            let shared = self.shared.clone();
            let tracker2 = tracker.clone();
            let stop2 = stop.clone();
            let tls = self.shared.cfg.tls.clone();
            tracker.spawn(async move {
                let handshake_timeout = shared.cfg.handshake_timeout;
                match tls {
                    None => serve_http(stream, peer, shared, tracker2, stop2, false).await,
                    Some(cfg) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await
                        {
                            Ok(Ok(tls)) => {
                                serve_http(tls, peer, shared, tracker2, stop2, false).await
                            }
                            Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            });
        }
    }
}

impl Gateway {
    /// Serves `/metrics`, `/healthz` and `/readyz` (plain HTTP) on the
    /// `metrics_listen` listener until `stop`.
    pub async fn serve_metrics(
        self,
        listener: TcpListener,
        stop: CancellationToken,
        tracker: TaskTracker,
    ) {
        while let Some((stream, peer)) = accept(&listener, &stop, "metrics").await {
            let shared = self.shared.clone();
            let (tracker2, stop2) = (tracker.clone(), stop.clone());
            tracker.spawn(serve_http(stream, peer, shared, tracker2, stop2, true));
        }
    }
}

/// The next connection on `listener`, or `None` once `stop` is cancelled.
/// A failed accept (EMFILE and friends) is logged and retried after a short
/// back-off instead of spinning; `what` names the listener in the log.
pub async fn accept(
    listener: &TcpListener,
    stop: &CancellationToken,
    what: &str,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Serves HTTP/1.1 (with WebSocket upgrades) on one accepted connection.
async fn serve_http<IO>(
    io: IO,
    peer: std::net::SocketAddr,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    stop: CancellationToken,
    metrics_only: bool,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let handshake_timeout = shared.cfg.handshake_timeout;
    let stopping = stop.clone();
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let tracker = tracker.clone();
        let stop = stop.clone();
        async move {
            Ok::<_, Infallible>(if metrics_only {
                route_metrics(req, &shared)
            } else if req.uri().path().starts_with(crate::api::http::PREFIX) {
                let timeout = shared.cfg.handshake_timeout;
                shared.http_api.handle(req, peer, timeout).await
            } else {
                route(req, peer.ip(), shared, tracker, stop)
            })
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    // When the node stops, a keep-alive connection (an HTTP/JSON API
    // caller's, between calls) is closed once its current response is
    // done, instead of holding shutdown for its grace period. An upgraded
    // WebSocket has left this future already.
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = stopping.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        debug!(%peer, error = %e, "http connection ended");
    }
}

use crate::api::http::Body;

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Body::new(Full::new(body.into())));
    *r.status_mut() = status;
    r
}

fn route(
    req: Request<Incoming>,
    ip: std::net::IpAddr,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    stop: CancellationToken,
) -> Response<Body> {
    match req.uri().path() {
        "/v1/ws" => upgrade(req, ip, shared, tracker, stop),
        "/metrics" if shared.cfg.metrics_elsewhere => respond(
            StatusCode::NOT_FOUND,
            "metrics are served on the metrics_listen address\n",
        ),
        "/metrics" => scrape::respond_metrics(&shared),
        path @ ("/healthz" | "/readyz") => probe(path, &shared),
        _ => respond(
            StatusCode::NOT_FOUND,
            "not found: try /v1/ws, /v1/api/<Method>, /metrics, /healthz, /readyz\n",
        ),
    }
}

/// The `metrics_listen` listener's routes.
fn route_metrics(req: Request<Incoming>, shared: &Shared) -> Response<Body> {
    match req.uri().path() {
        "/metrics" => scrape::respond_metrics(shared),
        path @ ("/healthz" | "/readyz") => probe(path, shared),
        _ => respond(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz, /readyz\n",
        ),
    }
}

/// `/healthz` (the process answers) and `/readyz` (it can serve writes and
/// is not draining).
fn probe(path: &str, shared: &Shared) -> Response<Body> {
    if path == "/healthz" {
        respond(StatusCode::OK, "ok\n")
    } else if ready(shared) {
        respond(StatusCode::OK, "ready\n")
    } else {
        respond(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// What `/readyz` answers: the registry can serve writes and the node is
/// not draining.
fn ready(shared: &Shared) -> bool {
    shared.registry.is_ready() && !shared.draining.load(Ordering::Relaxed)
}

/// The connect token from `Authorization: Bearer` or `?token=`.
fn token_of(req: &Request<Incoming>) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        if let Some(t) = v.to_str().ok().and_then(|s| s.strip_prefix("Bearer ")) {
            return Some(t.trim().to_string());
        }
    }
    req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| v.to_string())
    })
}

/// Whether the request's `Origin` (if any) is allowed.
fn origin_allowed(req: &Request<Incoming>, allowed: Option<&[String]>) -> Result<(), String> {
    let (Some(allowed), Some(origin)) = (allowed, req.headers().get(header::ORIGIN)) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        Ok(())
    } else {
        Err(origin.to_string())
    }
}

fn upgrade(
    mut req: Request<Incoming>,
    ip: std::net::IpAddr,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    stop: CancellationToken,
) -> Response<Body> {
    if let Err(origin) = origin_allowed(&req, shared.cfg.allowed_origins.as_deref()) {
        crate::audit::auth_failure(
            "websocket",
            "-",
            &ip.to_string(),
            &format!("origin {origin:?} not allowed"),
        );
        metrics::counter!(crate::metrics_names::WS_ERRORS, "code" => "origin_forbidden")
            .increment(1);
        return respond(
            StatusCode::FORBIDDEN,
            format!("origin {origin:?} is not allowed to open a WebSocket here\n"),
        );
    }
    let permit = match shared.limits.admit(ip) {
        Ok(p) => p,
        Err(refusal) => {
            metrics::counter!(crate::metrics_names::LIMITED, "limit" => refusal.as_str())
                .increment(1);
            let mut r = respond(
                StatusCode::TOO_MANY_REQUESTS,
                format!("refused by limit {}; retry later\n", refusal.as_str()),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return r;
        }
    };
    let is_ws = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return respond(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n");
    };
    if !is_ws {
        return respond(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n");
    }
    let token = match token_of(&req) {
        Some(t) => shared.keys.verify(&t),
        None => Err(TokenError::Missing),
    };
    if let Err(e) = &token {
        crate::audit::auth_failure("websocket", "-", &ip.to_string(), &e.to_string());
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(256)
        .write_buffer_size(0)
        .max_write_buffer_size(shared.cfg.max_message_bytes * 4)
        .max_message_size(Some(shared.cfg.max_message_bytes))
        .max_frame_size(Some(shared.cfg.max_message_bytes));
    let upgrade = async move {
        let upgraded = tokio::select! {
            _ = stop.cancelled() => return None,
            u = on_upgrade => match u {
                Ok(u) => u,
                Err(e) => { debug!(error = %e, "upgrade failed"); return None; }
            },
        };
        let io = TokioIo::new(upgraded);
        Some(WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await)
    };
    // `run` boxes the upgrade with the opening, so the spawned task keeps
    // only what an idle socket needs (capturing the upgrade here kept a
    // half-built stream in every task: 1.5 KiB instead of ~0.7 KiB).
    let serve = connection::run(upgrade, shared, token);
    // A combinator, not an `async` block: awaiting `serve` inside one would
    // hold it twice (once captured, once being awaited).
    tracker.spawn(serve.map(move |()| drop(permit)));
    let mut r = respond(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let h = r.headers_mut();
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}
