//! The demo login service: in-memory users and stations, and every call to
//! the broker made through the public gRPC API, as a real login service
//! would make it.
//!
//! Users `ana`, `bob`, `carl` (agents) and `sup` (supervisor) share the
//! password `demo`; stations are `desk-101` … `desk-110`. A sign-in returns
//! the connect token for the page's WebSocket and a demo API key that the
//! supervisor's page presents for `/api/agents` and `/api/notify`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use tonic::transport::Channel;

use turnstile::pb;
use turnstile::pb::session_broker_service_client::SessionBrokerServiceClient;
use turnstile::session::Tenant;

/// Every demo user's password.
pub const PASSWORD: &str = "demo";

/// The message the page shows (and asks to confirm) on `LOGIN_IN_USE`.
pub const LOGIN_IN_USE_MSG: &str = "User already logged. Do you want to continue?";

/// The message on `LOGIN_IN_USE` after a confirmed Continue: the session the
/// person agreed to end is gone and another one holds the login now.
pub const LOGIN_CHANGED_MSG: &str =
    "Someone else signed in as this user since you were asked. Do you want to continue?";

/// The message on `SEATS_EXHAUSTED`: what happened and what to do.
pub fn seats_exhausted_message(used: u32, limit: u32) -> String {
    format!(
        "No seat is free: your organisation's licence allows {limit} signed-in users and \
         {used} are signed in. Please try again when a colleague signs out, or ask your \
         administrator for more seats."
    )
}

/// Pages of `ListSessions` read for one `/api/agents` (× 1000 sessions).
const MAX_LIST_PAGES: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Agent,
    Supervisor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Supervisor => "supervisor",
        }
    }
}

/// A user of the demo's directory.
#[derive(Debug)]
pub struct DemoUser {
    pub login: &'static str,
    pub name: &'static str,
    pub role: Role,
    /// When set, sign-in pushes "Your password expires in N days".
    pub password_expires_in_days: Option<u32>,
}

/// The demo's user directory.
pub const USERS: &[DemoUser] = &[
    DemoUser {
        login: "ana",
        name: "Ana Alves",
        role: Role::Agent,
        password_expires_in_days: None,
    },
    DemoUser {
        login: "bob",
        name: "Bob Byrne",
        role: Role::Agent,
        password_expires_in_days: None,
    },
    DemoUser {
        login: "carl",
        name: "Carl Costa",
        role: Role::Agent,
        password_expires_in_days: Some(3),
    },
    DemoUser {
        login: "sup",
        name: "Sam Supervisor",
        role: Role::Supervisor,
        password_expires_in_days: None,
    },
];

/// The registered stations (desk phones).
pub fn registered_stations() -> Vec<String> {
    (101..=110).map(|n| format!("desk-{n}")).collect()
}

/// Why a request to the demo failed; each maps to an HTTP status and a
/// short code the page can branch on.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    BadRequest(String),
    #[error("unknown user or wrong password (the demo users are ana, bob, carl and sup; the password is \"demo\")")]
    BadCredentials,
    #[error(
        "sign in first: send the api_key from /api/login as \"Authorization: Bearer <api_key>\""
    )]
    Unauthorized,
    #[error("only a supervisor may {0}")]
    Forbidden(&'static str),
    #[error("the broker refused: {}", .0.message())]
    Refused(tonic::Status),
    #[error("the broker is unavailable: {}", .0.message())]
    Unavailable(tonic::Status),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
}

impl DemoError {
    pub fn status(&self) -> StatusCode {
        match self {
            DemoError::BadRequest(_) | DemoError::Refused(_) => StatusCode::BAD_REQUEST,
            DemoError::BadCredentials | DemoError::Unauthorized => StatusCode::UNAUTHORIZED,
            DemoError::Forbidden(_) => StatusCode::FORBIDDEN,
            DemoError::Unavailable(_) => StatusCode::BAD_GATEWAY,
            DemoError::NotFound(_) => StatusCode::NOT_FOUND,
            DemoError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            DemoError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            DemoError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            DemoError::BadRequest(_) => "bad_request",
            DemoError::BadCredentials => "bad_credentials",
            DemoError::Unauthorized => "unauthorized",
            DemoError::Forbidden(_) => "forbidden",
            DemoError::Refused(_) => "refused",
            DemoError::Unavailable(_) => "broker_unavailable",
            DemoError::NotFound(_) => "not_found",
            DemoError::MethodNotAllowed(_) => "method_not_allowed",
            DemoError::UnsupportedMediaType => "unsupported_media_type",
            DemoError::TooLarge(_) => "too_large",
        }
    }
}

impl From<tonic::Status> for DemoError {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code;
        match s.code() {
            Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition => {
                DemoError::Refused(s)
            }
            _ => DemoError::Unavailable(s),
        }
    }
}

/// A JSON answer with its status.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    fn ok(body: Value) -> Self {
        Self {
            status: StatusCode::OK,
            body,
        }
    }
}

/// `POST /api/login`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub login: String,
    pub password: String,
    /// Empty: no station (supervisors only).
    #[serde(default)]
    pub station: String,
    /// The person confirmed "User already logged. Do you want to continue?":
    /// claim with TAKEOVER.
    #[serde(default)]
    pub confirm: bool,
    /// With `confirm`: the holder's session id the person was shown. The
    /// takeover ends only that session (`expected_session_id`), never one
    /// that signed in meanwhile.
    #[serde(default)]
    pub takeover_of: String,
    /// The browser profile's stable id (kept in its localStorage): people
    /// signing in from one profile share its station.
    #[serde(default)]
    pub device: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    PasswordExpiry,
    LicenseExpiry,
}

/// `POST /api/notify`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyRequest {
    /// The agent to notify; absent or empty: every live session.
    #[serde(default)]
    pub login: Option<String>,
    pub kind: NoticeKind,
    /// Days until the expiry, 0..=365.
    pub days: u32,
}

/// Who signed in with an API key.
struct Signed {
    key: String,
    session_id: String,
}

/// The login service.
pub struct LoginService {
    tenant: String,
    broker: SessionBrokerServiceClient<Channel>,
    stations: Vec<String>,
    /// Where browsers open the agent WebSocket (the network simulator).
    ws_addr: SocketAddr,
    /// One API key per signed-in user (the last sign-in wins), so the map
    /// never outgrows the directory. A std mutex: nothing awaits while it
    /// is held.
    keys: Mutex<HashMap<&'static str, Signed>>,
}

impl LoginService {
    pub fn new(
        tenant: &str,
        broker: SessionBrokerServiceClient<Channel>,
        ws_addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        let tenant = Tenant::parse(tenant).map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
        Ok(Self {
            tenant: tenant.as_str().to_string(),
            broker,
            stations: registered_stations(),
            ws_addr,
            keys: Mutex::new(HashMap::new()),
        })
    }

    /// The WebSocket URL for a page served to `host` (its Host header).
    fn ws_url(&self, host: Option<&str>) -> String {
        if self.ws_addr.ip().is_unspecified() {
            // Listening everywhere: reach it by the name the page was loaded from.
            let name = host
                .map(|h| match h.rsplit_once(':') {
                    Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
                    _ => h,
                })
                .filter(|h| !h.is_empty())
                .unwrap_or("127.0.0.1");
            format!("ws://{name}:{}/v1/ws", self.ws_addr.port())
        } else {
            format!("ws://{}/v1/ws", self.ws_addr)
        }
    }

    fn client(&self) -> SessionBrokerServiceClient<Channel> {
        self.broker.clone()
    }

    /// Checks the password and claims the session: REJECT first; TAKEOVER
    /// once the person confirmed. Conflicts answer 409 with the holder.
    pub async fn login(&self, req: LoginRequest, host: Option<&str>) -> Result<Reply, DemoError> {
        let user = USERS
            .iter()
            .find(|u| u.login == req.login.trim())
            .filter(|_| req.password == PASSWORD)
            .ok_or(DemoError::BadCredentials)?;
        let station = req.station.trim();
        // An unknown station is the broker's to refuse: the demo tenant's
        // directory is strict (STATION_NOT_REGISTERED).
        if station.is_empty() && user.role == Role::Agent {
            return Err(DemoError::BadRequest(
                "station: agents sign in at a station; pick one".into(),
            ));
        }
        let policy = if req.confirm {
            pb::ConflictPolicy::Takeover
        } else {
            pb::ConflictPolicy::Reject
        };
        let r = self
            .client()
            .claim(pb::ClaimRequest {
                tenant: self.tenant.clone(),
                login: user.login.to_string(),
                station: station.to_string(),
                client: "web".into(),
                role: user.role.as_str().into(),
                on_conflict: policy as i32,
                attributes: HashMap::from([("name".to_string(), user.name.to_string())]),
                idempotency_key: String::new(),
                expected_session_id: if req.confirm {
                    req.takeover_of.clone()
                } else {
                    String::new()
                },
                device: req.device.trim().to_string(),
            })
            .await?
            .into_inner();
        match r.outcome() {
            pb::ClaimOutcome::Granted => {
                let session = r.session.ok_or_else(|| {
                    DemoError::Unavailable(tonic::Status::internal("GRANTED without a session"))
                })?;
                let key = super::random_hex(16);
                self.keys.lock().unwrap_or_else(|p| p.into_inner()).insert(
                    user.login,
                    Signed {
                        key: key.clone(),
                        session_id: session.session_id.clone(),
                    },
                );
                if let Some(days) = user.password_expires_in_days {
                    // Queued now, delivered right after the page's welcome.
                    let target = pb::notify_request::Target::SessionId(session.session_id.clone());
                    if let Err(e) = self
                        .notify_target(target, NoticeKind::PasswordExpiry, days)
                        .await
                    {
                        tracing::warn!(login = user.login, error = %e, "password expiry notice not sent");
                    }
                }
                Ok(Reply::ok(json!({
                    "outcome": "granted",
                    "login": user.login,
                    "name": user.name,
                    "role": user.role.as_str(),
                    "station": station,
                    "token": r.token,
                    "ws_url": self.ws_url(host),
                    "api_key": key,
                    "session": session_json(&session),
                    "evicted": r.evicted.iter().map(session_json).collect::<Vec<_>>(),
                })))
            }
            pb::ClaimOutcome::LoginInUse => Ok(Reply {
                status: StatusCode::CONFLICT,
                body: json!({
                    "outcome": "login_in_use",
                    "message": if req.confirm { LOGIN_CHANGED_MSG } else { LOGIN_IN_USE_MSG },
                    "holder": r.holder.as_ref().map(session_json),
                }),
            }),
            pb::ClaimOutcome::StationInUse => {
                // Every holder: a station shared on another machine has several.
                let logins: Vec<&str> =
                    r.station_holders.iter().map(|h| h.login.as_str()).collect();
                let by = match (logins.is_empty(), &r.holder) {
                    (false, _) => format!(" by {}", logins.join(", ")),
                    (true, Some(h)) => format!(" by {}", h.login),
                    (true, None) => String::new(),
                };
                Ok(Reply {
                    status: StatusCode::CONFLICT,
                    body: json!({
                        "outcome": "station_in_use",
                        "message": format!("Station {station} is in use{by}. Please pick another station."),
                        "holder": r.holder.as_ref().map(session_json),
                        "holders": r.station_holders.iter().map(session_json).collect::<Vec<_>>(),
                    }),
                })
            }
            pb::ClaimOutcome::SeatsExhausted => {
                let u = r.seats.unwrap_or_default();
                Ok(Reply {
                    status: StatusCode::CONFLICT,
                    body: json!({
                        "outcome": "seats_exhausted",
                        "message": seats_exhausted_message(u.seats_used, u.seat_limit),
                        "seats_used": u.seats_used,
                        "seat_limit": u.seat_limit,
                    }),
                })
            }
            pb::ClaimOutcome::StationNotRegistered => Ok(Reply {
                status: StatusCode::CONFLICT,
                body: json!({
                    "outcome": "station_not_registered",
                    "message": format!("Station {station} is not in this company's station list. Please pick a station from the list."),
                }),
            }),
            pb::ClaimOutcome::Unspecified => Err(DemoError::Unavailable(tonic::Status::internal(
                "the broker answered a claim without an outcome",
            ))),
        }
    }

    /// Ends the caller's session (normal logout), for a page whose socket
    /// could not tell the broker itself.
    pub async fn logout(&self, bearer: Option<&str>) -> Result<Reply, DemoError> {
        let (login, session_id) = {
            let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            let key = bearer.ok_or(DemoError::Unauthorized)?;
            keys.iter()
                .find(|(_, s)| s.key == key)
                .map(|(login, s)| (*login, s.session_id.clone()))
                .ok_or(DemoError::Unauthorized)?
        };
        let r = self
            .client()
            .release(pb::ReleaseRequest {
                tenant: self.tenant.clone(),
                session_id,
            })
            .await?
            .into_inner();
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(login);
        Ok(Reply::ok(
            json!({"session": r.session.as_ref().map(session_json)}),
        ))
    }

    /// Puts the demo's stations in the broker's station directory, where
    /// the picker reads them (a real login service registers the PBX's
    /// phones the same way, e.g. nightly).
    pub async fn register_stations(&self) -> Result<(), DemoError> {
        self.client()
            .register_stations(pb::RegisterStationsRequest {
                tenant: self.tenant.clone(),
                stations: self.stations.clone(),
            })
            .await?;
        Ok(())
    }

    /// Every page of the tenant's station directory (free ones only, or all).
    async fn directory(&self, free_only: bool) -> Result<Vec<pb::StationInfo>, DemoError> {
        let (mut out, mut page_token) = (Vec::new(), String::new());
        for _ in 0..MAX_LIST_PAGES {
            let r = self
                .client()
                .list_stations(pb::ListStationsRequest {
                    tenant: self.tenant.clone(),
                    prefix: String::new(),
                    free_only,
                    page_size: 500,
                    page_token,
                })
                .await?
                .into_inner();
            out.extend(r.stations);
            if r.next_page_token.is_empty() {
                break;
            }
            page_token = r.next_page_token;
        }
        Ok(out)
    }

    /// The sign-in picker, from the broker's station directory: the free
    /// stations to pick (ListStations free-only), and the taken ones with
    /// who holds them, in name order.
    pub async fn stations(&self) -> Result<Reply, DemoError> {
        let free = self.directory(true).await?;
        let taken: Vec<pb::StationInfo> = self
            .directory(false)
            .await?
            .into_iter()
            .filter(|s| !s.free && !free.iter().any(|f| f.station == s.station))
            .collect();
        let mut list: Vec<Value> = free
            .iter()
            .chain(&taken)
            .map(|s| {
                // Every holder with its device: the page offers a held
                // station when all its holders signed in from this browser.
                let holders: Vec<Value> = s
                    .holders
                    .iter()
                    .map(|h| json!({"login": h.login, "device": h.device}))
                    .collect();
                json!({"station": s.station, "free": s.free, "login": s.login, "holders": holders})
            })
            .collect();
        list.sort_by(|a, b| a["station"].as_str().cmp(&b["station"].as_str()));
        Ok(Reply::ok(json!({ "stations": list })))
    }

    /// Every directory user with their live session, if any (supervisor only).
    pub async fn agents(&self, bearer: Option<&str>) -> Result<Reply, DemoError> {
        self.supervisor(bearer, "list agents")?;
        let mut sessions: HashMap<String, pb::Session> = HashMap::new();
        let mut page_token = String::new();
        for _ in 0..MAX_LIST_PAGES {
            let r = self
                .client()
                .list_sessions(pb::ListSessionsRequest {
                    tenant: self.tenant.clone(),
                    page_size: 1000,
                    page_token,
                })
                .await?
                .into_inner();
            for s in r.sessions {
                sessions.insert(s.login.clone(), s);
            }
            if r.next_page_token.is_empty() {
                break;
            }
            page_token = r.next_page_token;
        }
        let agents: Vec<Value> = USERS
            .iter()
            .map(|u| {
                json!({
                    "login": u.login,
                    "name": u.name,
                    "role": u.role.as_str(),
                    "session": sessions.get(u.login).map(session_json),
                })
            })
            .collect();
        Ok(Reply::ok(json!({ "agents": agents })))
    }

    /// Pushes a license- or password-expiry notice (supervisor only).
    pub async fn notify(
        &self,
        bearer: Option<&str>,
        req: NotifyRequest,
    ) -> Result<Reply, DemoError> {
        self.supervisor(bearer, "send notices")?;
        if req.days > 365 {
            return Err(DemoError::BadRequest(format!(
                "days: {} is more than 365",
                req.days
            )));
        }
        use pb::notify_request::Target;
        let target = match req.login.as_deref().map(str::trim) {
            None | Some("") => Target::AllSessions(true),
            Some(login) => {
                let user = USERS
                    .iter()
                    .find(|u| u.login == login)
                    .ok_or_else(|| DemoError::NotFound(format!("login {login:?}")))?;
                Target::Login(user.login.to_string())
            }
        };
        let (id, r) = self.notify_target(target, req.kind, req.days).await?;
        Ok(Reply::ok(
            json!({"notice_id": id, "delivered": r.delivered, "queued": r.queued}),
        ))
    }

    async fn notify_target(
        &self,
        target: pb::notify_request::Target,
        kind: NoticeKind,
        days: u32,
    ) -> Result<(String, pb::NotifyResponse), DemoError> {
        let notice = expiry_notice(kind, days, turnstile::session::now_ms());
        let id = notice.id.clone();
        let r = self
            .client()
            .notify(pb::NotifyRequest {
                tenant: self.tenant.clone(),
                target: Some(target),
                notice: Some(notice),
            })
            .await?
            .into_inner();
        Ok((id, r))
    }

    /// The signed-in supervisor behind `bearer`, or why not.
    fn supervisor(&self, bearer: Option<&str>, what: &'static str) -> Result<(), DemoError> {
        let key = bearer.ok_or(DemoError::Unauthorized)?;
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let login = keys
            .iter()
            .find(|(_, s)| s.key == key)
            .map(|(login, _)| *login)
            .ok_or(DemoError::Unauthorized)?;
        match USERS.iter().find(|u| u.login == login) {
            Some(u) if u.role == Role::Supervisor => Ok(()),
            _ => Err(DemoError::Forbidden(what)),
        }
    }
}

/// A license- or password-expiry notice. Each has its own id (the time it
/// was sent), so a repeated warning shows again even after an ack.
pub fn expiry_notice(kind: NoticeKind, days: u32, now_ms: i64) -> pb::Notice {
    let (prefix, what) = match kind {
        NoticeKind::PasswordExpiry => ("password_expiry", "password"),
        NoticeKind::LicenseExpiry => ("license_expiry", "license"),
    };
    let text = match days {
        0 => format!("Your {what} expires today"),
        1 => format!("Your {what} expires in 1 day"),
        n => format!("Your {what} expires in {n} days"),
    };
    let severity = match days {
        0..=1 => "critical",
        2..=7 => "warning",
        _ => "info",
    };
    pb::Notice {
        id: format!("{prefix}-{now_ms}"),
        kind: prefix.into(),
        severity: severity.into(),
        text,
        data_json: json!({ "days": days }).to_string(),
        expires_at_ms: 0,
    }
}

fn enum_name<E: TryFrom<i32> + std::fmt::Debug>(v: i32) -> String {
    E::try_from(v)
        .map(|e| format!("{e:?}").to_lowercase())
        .unwrap_or_else(|_| v.to_string())
}

/// A session as the page sees it (the names match the WebSocket's presence frames).
fn session_json(s: &pb::Session) -> Value {
    json!({
        "session_id": s.session_id,
        "login": s.login,
        "station": if s.station.is_empty() { None } else { Some(&s.station) },
        "client": s.client,
        "role": s.role,
        "state": enum_name::<pb::SessionState>(s.state),
        "status": s.status,
        "generation": s.generation,
        "created_at_ms": s.created_at_ms,
        "last_seen_ms": s.last_seen_ms,
        "device": s.device,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_notices_say_when_and_grow_more_severe() {
        let n = expiry_notice(NoticeKind::PasswordExpiry, 3, 42);
        assert_eq!(n.text, "Your password expires in 3 days");
        assert_eq!(n.kind, "password_expiry");
        assert_eq!(n.id, "password_expiry-42");
        assert_eq!(n.severity, "warning");
        assert_eq!(n.data_json, r#"{"days":3}"#);
        let n = expiry_notice(NoticeKind::LicenseExpiry, 1, 42);
        assert_eq!(n.text, "Your license expires in 1 day");
        assert_eq!(n.severity, "critical");
        assert_eq!(
            expiry_notice(NoticeKind::LicenseExpiry, 30, 1).severity,
            "info"
        );
        assert_eq!(
            expiry_notice(NoticeKind::LicenseExpiry, 0, 1).text,
            "Your license expires today"
        );
    }

    use futures_util::StreamExt;
    use std::time::Duration;
    use turnstile::config::Config;

    const T: Duration = Duration::from_secs(10);

    async fn service() -> (LoginService, turnstile::server::RunningServer) {
        let config = Config {
            http_listen: "127.0.0.1:0".parse().unwrap(),
            grpc_listen: "127.0.0.1:0".parse().unwrap(),
            signing_key: Some("demo-login-service-test-key-0123456789".into()),
            strict_stations: Some(vec![Tenant::parse("acme").unwrap()]),
            ..Config::default()
        };
        let server = turnstile::server::start(config).await.unwrap();
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc_addr))
                .unwrap()
                .connect_lazy();
        let svc = LoginService::new(
            "acme",
            SessionBrokerServiceClient::new(channel),
            server.http_addr,
        )
        .unwrap();
        svc.register_stations().await.unwrap();
        (svc, server)
    }

    fn req(login: &str, station: &str, confirm: bool) -> LoginRequest {
        LoginRequest {
            login: login.into(),
            password: PASSWORD.into(),
            station: station.into(),
            confirm,
            takeover_of: String::new(),
            device: String::new(),
        }
    }

    async fn sign_in(svc: &LoginService, login: &str, station: &str, confirm: bool) -> Reply {
        tokio::time::timeout(T, svc.login(req(login, station, confirm), None))
            .await
            .expect("login answers in time")
            .expect("login succeeds")
    }

    #[tokio::test]
    async fn sign_in_refuses_then_takes_over_on_confirmation() {
        let (svc, _server) = service().await;
        let first = sign_in(&svc, "ana", "desk-101", false).await;
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(first.body["outcome"], "granted");
        assert!(!first.body["token"].as_str().unwrap().is_empty());
        assert!(first.body["ws_url"].as_str().unwrap().ends_with("/v1/ws"));

        let again = sign_in(&svc, "ana", "desk-102", false).await;
        assert_eq!(again.status, StatusCode::CONFLICT);
        assert_eq!(again.body["outcome"], "login_in_use");
        assert_eq!(again.body["message"], LOGIN_IN_USE_MSG);
        assert_eq!(again.body["holder"]["station"], "desk-101");

        let confirmed = sign_in(&svc, "ana", "desk-102", true).await;
        assert_eq!(confirmed.body["outcome"], "granted");
        assert_eq!(confirmed.body["evicted"][0]["station"], "desk-101");
        assert_eq!(confirmed.body["evicted"][0]["state"], "ended");
    }

    #[tokio::test]
    async fn a_full_licence_is_a_clear_message_with_the_seats() {
        let (svc, _server) = service().await;
        svc.client()
            .set_seat_limit(pb::SetSeatLimitRequest {
                tenant: "acme".into(),
                seat_limit: 1,
            })
            .await
            .unwrap();
        assert_eq!(
            sign_in(&svc, "ana", "desk-101", false).await.status,
            StatusCode::OK
        );
        let r = sign_in(&svc, "bob", "desk-102", false).await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert_eq!(r.body["outcome"], "seats_exhausted");
        assert_eq!(
            (r.body["seats_used"].as_u64(), r.body["seat_limit"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(r.body["message"], seats_exhausted_message(1, 1));
        // ana moving desks needs no second seat.
        let moved = sign_in(&svc, "ana", "desk-103", true).await;
        assert_eq!(moved.body["outcome"], "granted");
    }

    #[tokio::test]
    async fn continue_ends_only_the_session_shown_and_asks_again_when_it_changed() {
        let (svc, _server) = service().await;
        sign_in(&svc, "ana", "desk-101", false).await;
        let refused = sign_in(&svc, "ana", "desk-102", false).await;
        let shown = refused.body["holder"]["session_id"]
            .as_str()
            .unwrap()
            .to_string();
        // Meanwhile ana signs in again elsewhere: the session shown is gone.
        let elsewhere = sign_in(&svc, "ana", "desk-103", true).await;
        assert_eq!(elsewhere.body["outcome"], "granted");
        let current = elsewhere.body["session"]["session_id"].clone();

        let mut stale = req("ana", "desk-102", true);
        stale.takeover_of = shown;
        let again = tokio::time::timeout(T, svc.login(stale, None))
            .await
            .expect("login answers in time")
            .expect("login succeeds");
        assert_eq!(again.status, StatusCode::CONFLICT);
        assert_eq!(again.body["outcome"], "login_in_use");
        assert_eq!(again.body["message"], LOGIN_CHANGED_MSG);
        assert_eq!(again.body["holder"]["session_id"], current);

        let mut fresh = req("ana", "desk-102", true);
        fresh.takeover_of = current.as_str().unwrap().to_string();
        let confirmed = tokio::time::timeout(T, svc.login(fresh, None))
            .await
            .expect("login answers in time")
            .expect("login succeeds");
        assert_eq!(confirmed.body["outcome"], "granted");
        assert_eq!(confirmed.body["evicted"][0]["session_id"], current);
    }

    #[tokio::test]
    async fn a_held_station_is_refused_even_when_confirmed_and_shows_in_the_picker() {
        let (svc, _server) = service().await;
        sign_in(&svc, "ana", "desk-101", false).await;
        for confirm in [false, true] {
            let r = sign_in(&svc, "bob", "desk-101", confirm).await;
            assert_eq!(r.status, StatusCode::CONFLICT);
            assert_eq!(r.body["outcome"], "station_in_use");
            assert_eq!(
                r.body["message"],
                "Station desk-101 is in use by ana. Please pick another station."
            );
        }
        let stations = svc.stations().await.unwrap().body;
        assert_eq!(stations["stations"][0]["station"], "desk-101");
        assert_eq!(stations["stations"][0]["free"], false);
        assert_eq!(stations["stations"][0]["login"], "ana");
        assert_eq!(stations["stations"][1]["free"], true);
    }

    #[tokio::test]
    async fn people_on_one_browser_profile_share_its_station() {
        let (svc, _server) = service().await;
        let on = |login: &str, device: &str| LoginRequest {
            device: device.into(),
            ..req(login, "desk-101", false)
        };
        for (login, device, outcome) in [
            ("ana", "web-1", "granted"),
            ("bob", "web-1", "granted"),
            ("carl", "web-2", "station_in_use"),
        ] {
            let r = tokio::time::timeout(T, svc.login(on(login, device), None))
                .await
                .expect("login answers in time")
                .expect("login answers");
            assert_eq!(r.body["outcome"], outcome, "{login}: {}", r.body);
        }
        let r = tokio::time::timeout(T, svc.login(on("carl", "web-2"), None))
            .await
            .expect("login answers in time")
            .expect("login answers");
        assert_eq!(
            r.body["message"],
            "Station desk-101 is in use by ana, bob. Please pick another station."
        );
        assert_eq!(r.body["holders"][1]["login"], "bob");
        let stations = svc.stations().await.unwrap().body;
        assert_eq!(
            stations["stations"][0]["holders"],
            json!([{"login": "ana", "device": "web-1"}, {"login": "bob", "device": "web-1"}])
        );
    }

    #[tokio::test]
    async fn bad_sign_ins_say_what_is_wrong() {
        let (svc, _server) = service().await;
        let mut wrong = req("ana", "desk-101", false);
        wrong.password = "guess".into();
        assert!(matches!(
            svc.login(wrong, None).await,
            Err(DemoError::BadCredentials)
        ));
        assert!(matches!(
            svc.login(req("mallory", "desk-101", false), None).await,
            Err(DemoError::BadCredentials)
        ));
        let unknown = sign_in(&svc, "ana", "desk-999", false).await;
        assert_eq!(unknown.status, StatusCode::CONFLICT);
        assert_eq!(unknown.body["outcome"], "station_not_registered");
        assert!(matches!(
            svc.login(req("ana", "", false), None).await,
            Err(DemoError::BadRequest(m)) if m.starts_with("station:")
        ));
        // supervisors may sign in without a station
        assert_eq!(sign_in(&svc, "sup", "", false).await.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn supervisor_endpoints_need_a_supervisor_key() {
        let (svc, _server) = service().await;
        let ana = sign_in(&svc, "ana", "desk-101", false).await;
        let ana_key = ana.body["api_key"].as_str().unwrap().to_string();
        let sup = sign_in(&svc, "sup", "", false).await;
        let sup_key = sup.body["api_key"].as_str().unwrap().to_string();

        assert!(matches!(
            svc.agents(None).await,
            Err(DemoError::Unauthorized)
        ));
        assert!(matches!(
            svc.agents(Some("nope")).await,
            Err(DemoError::Unauthorized)
        ));
        assert!(matches!(
            svc.agents(Some(&ana_key)).await,
            Err(DemoError::Forbidden(_))
        ));
        let agents = svc.agents(Some(&sup_key)).await.unwrap().body;
        let ana_row = agents["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["login"] == "ana")
            .unwrap();
        assert_eq!(ana_row["session"]["state"], "pending");
        assert_eq!(ana_row["session"]["station"], "desk-101");

        let notify = |login: &str| NotifyRequest {
            login: Some(login.into()),
            kind: NoticeKind::LicenseExpiry,
            days: 5,
        };
        assert!(matches!(
            svc.notify(Some(&ana_key), notify("ana")).await,
            Err(DemoError::Forbidden(_))
        ));
        assert!(matches!(
            svc.notify(Some(&sup_key), notify("zed")).await,
            Err(DemoError::NotFound(_))
        ));
        let r = svc
            .notify(Some(&sup_key), notify("ana"))
            .await
            .unwrap()
            .body;
        assert_eq!(
            (r["delivered"].as_u64(), r["queued"].as_u64()),
            (Some(0), Some(1))
        );
    }

    #[tokio::test]
    async fn carl_is_told_his_password_expires_right_after_the_welcome() {
        use tokio_tungstenite::tungstenite::Message;
        let (svc, server) = service().await;
        let carl = sign_in(&svc, "carl", "desk-103", false).await;
        let url = format!(
            "ws://{}/v1/ws?token={}",
            server.http_addr,
            carl.body["token"].as_str().unwrap()
        );
        let (mut ws, _) = tokio::time::timeout(T, tokio_tungstenite::connect_async(url))
            .await
            .unwrap()
            .unwrap();
        async fn next<S>(ws: &mut S) -> Value
        where
            S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
                + Unpin,
        {
            loop {
                let msg = tokio::time::timeout(T, ws.next())
                    .await
                    .expect("a frame in time")
                    .expect("socket open")
                    .expect("no socket error");
                if let Message::Text(t) = msg {
                    return serde_json::from_str(&t).expect("JSON frame");
                }
            }
        }
        assert_eq!(next(&mut ws).await["type"], "welcome");
        let notice = next(&mut ws).await;
        assert_eq!(notice["type"], "notice");
        assert_eq!(notice["notice"]["text"], "Your password expires in 3 days");
        assert_eq!(notice["notice"]["data"]["days"], 3);
    }

    #[tokio::test]
    async fn logout_releases_the_callers_session() {
        let (svc, _server) = service().await;
        let ana = sign_in(&svc, "ana", "desk-101", false).await;
        let key = ana.body["api_key"].as_str().unwrap().to_string();
        let r = svc.logout(Some(&key)).await.unwrap().body;
        assert_eq!(r["session"]["state"], "ended");
        assert!(matches!(
            svc.logout(Some(&key)).await,
            Err(DemoError::Unauthorized)
        ));
        // the login is free again
        assert_eq!(
            sign_in(&svc, "ana", "desk-101", false).await.status,
            StatusCode::OK
        );
    }

    #[test]
    fn directory_is_consistent() {
        assert_eq!(registered_stations().len(), 10);
        assert_eq!(registered_stations()[0], "desk-101");
        assert!(USERS.iter().any(|u| u.role == Role::Supervisor));
        for u in USERS {
            assert!(turnstile::session::Login::parse(u.login).is_ok());
        }
    }
}
