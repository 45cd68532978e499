//! The demo's HTTP side (hyper 1): the agent-desktop page, the SDK, and a
//! small JSON API over the login service and the network simulator.
//!
//! | route | what |
//! |---|---|
//! | `GET /`, `/app.js`, `/style.css`, `/turnstile.js`, `/tabs.js`, `/emitter.js` | the page and the SDK |
//! | `GET /api/stations` | registered stations, free or held (`StationStatus`) |
//! | `POST /api/login` | `{login, password, station, confirm, takeover_of}` → `Claim` |
//! | `POST /api/logout` | `Release` of the caller's session |
//! | `GET /api/agents` | directory + live sessions (`ListSessions`), supervisor |
//! | `POST /api/notify` | `{login?, kind, days}` → `Notify`, supervisor |
//! | `GET`/`POST /api/netsim` | the simulated network's mode (`up`, `cut`, `stall`) |
//! | `GET`/`POST /api/backend` | the simulated backend's state (`ok`, `degraded`): degraded, the broker tells every socket it cannot vouch for its session (as a node that lost Redis does) |

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use turnstile::connectivity::{Cause, Connectivity};
use turnstile::server::ConnectivitySwitch;

use super::login::{DemoError, LoginService, Reply};
use super::netsim::{Mode, NetSim};

const INDEX_HTML: &str = include_str!("static/index.html");
const APP_JS: &str = include_str!("static/app.js");
const STYLE_CSS: &str = include_str!("static/style.css");
/// The browser SDK, served as is.
const SDK_JS: &str = include_str!("../../clients/js/turnstile.js");
/// The SDK's tab sharing, imported by `turnstile.js` as `./tabs.js`.
const SDK_TABS_JS: &str = include_str!("../../clients/js/tabs.js");
/// The SDK's listener bookkeeping, imported by both as `./emitter.js`.
const SDK_EMITTER_JS: &str = include_str!("../../clients/js/emitter.js");

/// The largest request body the API reads.
const MAX_BODY: usize = 16 * 1024;

/// What the handlers share.
pub struct App {
    login: LoginService,
    netsim: NetSim,
    backend: ConnectivitySwitch,
}

impl App {
    pub fn new(login: LoginService, netsim: NetSim, backend: ConnectivitySwitch) -> Self {
        Self {
            login,
            netsim,
            backend,
        }
    }
}

/// The simulated backend's state, as `/api/backend` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Backend {
    Ok,
    Degraded,
}

impl Backend {
    fn of(c: Connectivity) -> Self {
        if c.is_ok() {
            Backend::Ok
        } else {
            Backend::Degraded
        }
    }
}

/// Serves HTTP/1.1 until `stop`, then lets open connections finish their
/// current request.
pub async fn serve(listener: TcpListener, app: App, stop: CancellationToken, tracker: TaskTracker) {
    let app = Arc::new(app);
    while let Some((stream, peer)) = turnstile::gateway::accept(&listener, &stop, "demo").await {
        let app = app.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(handle(&app, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(Duration::from_secs(2), conn.as_mut())
                        .await
                        .unwrap_or(Ok(()))
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "demo: http connection ended");
            }
        });
    }
}

type Body = Full<Bytes>;

async fn handle(app: &App, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let result = route(app, req).await;
    match result {
        Ok(r) => r,
        Err(e) => {
            if e.status().is_server_error() {
                tracing::warn!(%method, %path, error = %e, "demo: request failed");
            }
            json_response(
                e.status(),
                &json!({"error": e.code(), "message": e.to_string()}),
            )
        }
    }
}

async fn route(app: &App, req: Request<Incoming>) -> Result<Response<Body>, DemoError> {
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    let m = &parts.method;
    match parts.uri.path() {
        "/" | "/index.html" if m == Method::GET => {
            Ok(asset(INDEX_HTML, "text/html; charset=utf-8"))
        }
        "/app.js" if m == Method::GET => Ok(asset(APP_JS, "text/javascript; charset=utf-8")),
        "/turnstile.js" if m == Method::GET => Ok(asset(SDK_JS, "text/javascript; charset=utf-8")),
        "/tabs.js" if m == Method::GET => Ok(asset(SDK_TABS_JS, "text/javascript; charset=utf-8")),
        "/emitter.js" if m == Method::GET => {
            Ok(asset(SDK_EMITTER_JS, "text/javascript; charset=utf-8"))
        }
        "/style.css" if m == Method::GET => Ok(asset(STYLE_CSS, "text/css; charset=utf-8")),
        "/api/stations" if m == Method::GET => reply(app.login.stations().await),
        "/api/login" if m == Method::POST => {
            let req = read_json(headers, body).await?;
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
            reply(app.login.login(req, host).await)
        }
        "/api/logout" if m == Method::POST => reply(app.login.logout(bearer(headers)).await),
        "/api/agents" if m == Method::GET => reply(app.login.agents(bearer(headers)).await),
        "/api/notify" if m == Method::POST => {
            let req = read_json(headers, body).await?;
            reply(app.login.notify(bearer(headers), req).await)
        }
        "/api/netsim" if m == Method::GET => Ok(json_response(
            StatusCode::OK,
            &json!({"mode": app.netsim.mode()}),
        )),
        "/api/netsim" if m == Method::POST => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct SetMode {
                mode: Mode,
            }
            let SetMode { mode } = read_json(headers, body).await?;
            app.netsim.set(mode);
            Ok(json_response(StatusCode::OK, &json!({"mode": mode})))
        }
        "/api/backend" if m == Method::GET => Ok(json_response(
            StatusCode::OK,
            &json!({"state": Backend::of(app.backend.get())}),
        )),
        "/api/backend" if m == Method::POST => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct SetState {
                state: Backend,
            }
            let SetState { state } = read_json(headers, body).await?;
            // Kept as it is when already degraded, so the outage's start stays.
            match (state, Backend::of(app.backend.get())) {
                (Backend::Ok, _) => app.backend.set(Connectivity::Ok),
                (Backend::Degraded, Backend::Ok) => app
                    .backend
                    .set(Connectivity::degraded(Cause::RedisUnreachable)),
                (Backend::Degraded, Backend::Degraded) => {}
            }
            tracing::info!(?state, "demo: simulated backend state set");
            Ok(json_response(StatusCode::OK, &json!({"state": state})))
        }
        "/" | "/index.html" | "/app.js" | "/turnstile.js" | "/tabs.js" | "/emitter.js"
        | "/style.css" | "/api/stations" | "/api/login" | "/api/logout" | "/api/agents"
        | "/api/notify" | "/api/netsim" | "/api/backend" => Err(DemoError::MethodNotAllowed(
            format!("{m} {}", parts.uri.path()),
        )),
        other => Err(DemoError::NotFound(other.chars().take(200).collect())),
    }
}

fn reply(r: Result<Reply, DemoError>) -> Result<Response<Body>, DemoError> {
    r.map(|r| json_response(r.status, &r.body))
}

/// The `Authorization: Bearer` value, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes. Requiring the JSON
/// content type keeps other sites' plain form posts out (they would need a
/// CORS preflight this server never grants).
async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Incoming,
) -> Result<T, DemoError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !is_json {
        return Err(DemoError::UnsupportedMediaType);
    }
    let bytes = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                DemoError::TooLarge(MAX_BODY)
            } else {
                DemoError::BadRequest(format!("request body: {e}"))
            }
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| DemoError::BadRequest(format!("request body: {e}")))
}

fn with_common_headers(mut r: Response<Body>, content_type: &'static str) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self' ws: wss:; frame-ancestors 'none'",
        ),
    );
    r
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Body> {
    with_common_headers(
        Response::new(Full::new(Bytes::from_static(body.as_bytes()))),
        content_type,
    )
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    with_common_headers(r, "application/json")
}
