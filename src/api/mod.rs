//! The gRPC API (`turnstile.v1.SessionBrokerService`). It only translates: wire
//! requests are validated into domain types ([`convert`]), the registry
//! decides, and the answer is converted back. Conflicts are outcomes, not
//! errors.

pub mod conn;
pub mod convert;
pub mod http;
pub mod keys;
mod watch;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::auth::TokenKeys;
use crate::hub::Hub;
use crate::metrics_names as m;
use crate::pb;
use crate::registry::{ClaimOutcome, EvictTarget, NotifyTarget, Registry, SessionKey};
use crate::session::{Login, SessionId, Station, Tenant};
use keys::Caller;

/// The SessionBrokerService.
pub struct Api {
    registry: Arc<dyn Registry>,
    hub: Arc<Hub>,
    keys: TokenKeys,
    /// When set, the only tenants served.
    tenants: Option<Vec<Tenant>>,
    /// Cancelled when the node stops: open WatchPresence streams end.
    stop: CancellationToken,
    /// Capacity of one WatchPresence stream before it counts as fallen behind.
    watch_buffer: usize,
}

impl Api {
    pub fn new(
        registry: Arc<dyn Registry>,
        hub: Arc<Hub>,
        keys: TokenKeys,
        tenants: Option<Vec<Tenant>>,
        stop: CancellationToken,
        watch_buffer: usize,
    ) -> Self {
        Self {
            registry,
            hub,
            keys,
            tenants,
            stop,
            watch_buffer,
        }
    }

    /// Into a tonic service with the request-size limit set, behind the
    /// API-key check. Shared: the HTTP/JSON API ([`http`]) calls the same one.
    pub fn into_authenticated(
        self: Arc<Self>,
        keys: keys::ApiKeys,
    ) -> tonic::service::interceptor::InterceptedService<
        pb::session_broker_service_server::SessionBrokerServiceServer<Self>,
        keys::ApiKeys,
    > {
        tonic::service::interceptor::InterceptedService::new(self.into_service(), keys)
    }

    /// Into a tonic service with the request-size limit set.
    pub fn into_service(
        self: Arc<Self>,
    ) -> pb::session_broker_service_server::SessionBrokerServiceServer<Self> {
        pb::session_broker_service_server::SessionBrokerServiceServer::from_arc(self)
            .max_decoding_message_size(crate::limits::MAX_GRPC_REQUEST_BYTES)
    }

    /// RegisterStations (`add`) and RemoveStations: the caller's tenant,
    /// the names checked, the directory changed, the change audited.
    async fn change_directory<T>(
        &self,
        request: &Request<T>,
        tenant: &str,
        stations: &[String],
        add: bool,
    ) -> Result<crate::registry::DirectoryChange, Status> {
        let (caller, from) = (caller_of(request), peer_of(request));
        let tenant = self.tenant(caller.as_ref(), tenant)?;
        let stations = convert::directory_change(stations)?;
        let change = if add {
            self.registry.register_stations(&tenant, &stations).await
        } else {
            self.registry.remove_stations(&tenant, &stations).await
        }
        .map_err(convert::status)?;
        let by = caller.as_ref().map_or("admin", |c| c.name.as_str());
        let event = if add {
            "stations_registered"
        } else {
            "stations_removed"
        };
        crate::audit::directory_changed(event, &tenant, change, by, &from);
        Ok(change)
    }

    fn tenant(&self, caller: Option<&Caller>, raw: &str) -> Result<Tenant, Status> {
        let tenant = Tenant::parse(raw).map_err(convert::invalid)?;
        if let Some(c) = caller {
            c.check(&tenant)?;
        }
        if let Some(allowed) = &self.tenants {
            if !allowed.contains(&tenant) {
                return Err(Status::not_found(format!(
                    "unknown tenant {tenant:?}: this node serves only the configured tenants"
                )));
            }
        }
        Ok(tenant)
    }

    async fn claim_inner(
        &self,
        caller: Option<&Caller>,
        from: &str,
        r: pb::ClaimRequest,
    ) -> Result<pb::ClaimResponse, Status> {
        let tenant = self.tenant(caller, &r.tenant)?;
        let (login, station, device) = (r.login.clone(), r.station.clone(), r.device.clone());
        let req = convert::claim_request(r)?;
        let (expected, policy) = (req.expected_session_id.clone(), req.policy);
        let outcome = self.registry.claim(req).await.map_err(convert::status)?;
        Ok(match outcome {
            ClaimOutcome::Granted { session, evicted } => {
                for e in &evicted {
                    let by = format!(
                        "claim of session {} (client {:?}, station {:?})",
                        session.id,
                        session.client,
                        session.station.as_ref().map(|s| s.as_str()).unwrap_or("")
                    );
                    crate::audit::forced_logout(e, &by, from);
                }
                pb::ClaimResponse {
                    outcome: pb::ClaimOutcome::Granted as i32,
                    token: self.keys.mint(&session),
                    session: Some(convert::session(&session)),
                    holder: None,
                    evicted: evicted.iter().map(convert::session).collect(),
                    seats: None,
                    station_holders: Vec::new(),
                }
            }
            ClaimOutcome::LoginInUse { holder } => {
                // Why a takeover was refused: the holder is not the session
                // the user confirmed ending, or it still has a socket.
                let refused = if expected.is_some_and(|e| e != holder.id) {
                    "holder_changed"
                } else if policy == crate::session::ConflictPolicy::TakeoverIfDisconnected {
                    "holder_connected"
                } else {
                    "login_in_use"
                };
                if refused != "login_in_use" {
                    metrics::counter!(m::TAKEOVERS_REFUSED, "why" => refused).increment(1);
                }
                crate::audit::conflict(refused, &login, &station, &device, &holder, 1, from);
                pb::ClaimResponse {
                    outcome: pb::ClaimOutcome::LoginInUse as i32,
                    holder: Some(convert::session(&holder)),
                    ..Default::default()
                }
            }
            ClaimOutcome::StationInUse { holder, holders } => {
                crate::audit::conflict(
                    "station_in_use",
                    &login,
                    &station,
                    &device,
                    &holder,
                    holders.len(),
                    from,
                );
                pb::ClaimResponse {
                    outcome: pb::ClaimOutcome::StationInUse as i32,
                    holder: Some(convert::session(&holder)),
                    station_holders: holders.iter().map(convert::session).collect(),
                    ..Default::default()
                }
            }
            ClaimOutcome::SeatsExhausted { used, limit } => {
                crate::audit::seats_exhausted(&tenant, &login, used, limit, from);
                pb::ClaimResponse {
                    outcome: pb::ClaimOutcome::SeatsExhausted as i32,
                    seats: Some(pb::TenantUsage {
                        seats_used: used,
                        seat_limit: limit,
                    }),
                    ..Default::default()
                }
            }
            ClaimOutcome::StationNotRegistered => {
                crate::audit::station_not_registered(&tenant, &login, &station, from);
                pb::ClaimResponse {
                    outcome: pb::ClaimOutcome::StationNotRegistered as i32,
                    ..Default::default()
                }
            }
        })
    }
}

fn outcome_label(r: &Result<pb::ClaimResponse, Status>) -> &'static str {
    match r {
        Ok(r) => match pb::ClaimOutcome::try_from(r.outcome) {
            Ok(pb::ClaimOutcome::Granted) => "granted",
            Ok(pb::ClaimOutcome::LoginInUse) => "login_in_use",
            Ok(pb::ClaimOutcome::StationInUse) => "station_in_use",
            Ok(pb::ClaimOutcome::SeatsExhausted) => "seats_exhausted",
            Ok(pb::ClaimOutcome::StationNotRegistered) => "station_not_registered",
            Ok(pb::ClaimOutcome::Unspecified) | Err(_) => "unknown",
        },
        Err(_) => "error",
    }
}

type PresenceStream = Pin<Box<dyn Stream<Item = Result<pb::WatchPresenceResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::session_broker_service_server::SessionBrokerService for Api {
    async fn claim(
        &self,
        request: Request<pb::ClaimRequest>,
    ) -> Result<Response<pb::ClaimResponse>, Status> {
        let started = Instant::now();
        let caller = caller_of(&request);
        let from = peer_of(&request);
        let result = self
            .claim_inner(caller.as_ref(), &from, request.into_inner())
            .await;
        metrics::histogram!(m::CLAIM_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::counter!(m::CLAIMS, "outcome" => outcome_label(&result)).increment(1);
        result.map(Response::new)
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let caller = caller_of(&request);
        let r = request.into_inner();
        let tenant = self.tenant(caller.as_ref(), &r.tenant)?;
        let id = SessionId::parse(&r.session_id).map_err(convert::invalid)?;
        let session = self
            .registry
            .release(&tenant, &id)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(pb::ReleaseResponse {
            session: Some(convert::session(&session)),
        }))
    }

    async fn evict(
        &self,
        request: Request<pb::EvictRequest>,
    ) -> Result<Response<pb::EvictResponse>, Status> {
        let caller = caller_of(&request);
        let from = peer_of(&request);
        let r = request.into_inner();
        let tenant = self.tenant(caller.as_ref(), &r.tenant)?;
        use pb::evict_request::Target;
        let target = match r.target {
            Some(Target::SessionId(id)) => {
                EvictTarget::Session(SessionId::parse(&id).map_err(convert::invalid)?)
            }
            Some(Target::Login(l)) => {
                EvictTarget::Login(Login::parse(&l).map_err(convert::invalid)?)
            }
            Some(Target::Station(s)) => {
                EvictTarget::Station(Station::parse(&s).map_err(convert::invalid)?)
            }
            Some(Target::AllSessions(true)) => EvictTarget::Tenant { role: None },
            Some(Target::Role(role)) => {
                if role.is_empty() {
                    return Err(Status::invalid_argument("role: must not be empty"));
                }
                convert::short_text("role", &role, convert::MAX_ROLE_LEN)?;
                EvictTarget::Tenant { role: Some(role) }
            }
            Some(Target::AllSessions(false)) | None => {
                return Err(Status::invalid_argument(
                    "target: set one of session_id, login, station, all_sessions=true or role",
                ))
            }
        };
        convert::short_text("message", &r.message, convert::MAX_MESSAGE_LEN)?;
        let message = (!r.message.is_empty()).then_some(r.message);
        let by = caller
            .as_ref()
            .map(|c| c.name.as_str())
            .filter(|n| *n != "anonymous")
            .unwrap_or("admin");
        let tenant_wide = matches!(target, EvictTarget::Tenant { .. });
        let evicted = self
            .registry
            .evict(&tenant, target, message, by)
            .await
            .map_err(convert::status)?;
        for e in &evicted {
            crate::audit::forced_logout(e, &format!("evict by {by}"), &from);
        }
        for e in &evicted {
            info!(tenant = %e.tenant, login = %e.login, session = %e.id, "session evicted by admin");
        }
        if tenant_wide {
            metrics::counter!(m::TENANT_EVICTIONS).increment(1);
            info!(tenant = %tenant, sessions = evicted.len(), by, "tenant-wide eviction");
        }
        Ok(Response::new(pb::EvictResponse {
            evicted_count: u32::try_from(evicted.len()).unwrap_or(u32::MAX),
            evicted: evicted
                .iter()
                .take(crate::limits::MAX_EVICTED_LISTED)
                .map(convert::session)
                .collect(),
        }))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let caller = caller_of(&request);
        let r = request.into_inner();
        let tenant = self.tenant(caller.as_ref(), &r.tenant)?;
        use pb::get_session_request::Key;
        let key = match r.key {
            Some(Key::SessionId(id)) => {
                SessionKey::Id(SessionId::parse(&id).map_err(convert::invalid)?)
            }
            Some(Key::Login(l)) => SessionKey::Login(Login::parse(&l).map_err(convert::invalid)?),
            None => return Err(Status::invalid_argument("key: set session_id or login")),
        };
        let s = self
            .registry
            .get(&tenant, key)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(pb::GetSessionResponse {
            session: Some(convert::session(&s)),
        }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let caller = caller_of(&request);
        let r = request.into_inner();
        let tenant = self.tenant(caller.as_ref(), &r.tenant)?;
        let limit = convert::page_size(r.page_size)?;
        let after = if r.page_token.is_empty() {
            None
        } else {
            Some(SessionId::parse_field("page_token", &r.page_token).map_err(convert::invalid)?)
        };
        let page = self
            .registry
            .list(&tenant, after, limit)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: page.sessions.iter().map(convert::session).collect(),
            next_page_token: page.next_after.map(|id| id.to_string()).unwrap_or_default(),
        }))
    }

    async fn station_status(
        &self,
        request: Request<pb::StationStatusRequest>,
    ) -> Result<Response<pb::StationStatusResponse>, Status> {
        let caller = caller_of(&request);
        let r = request.into_inner();
        let tenant = self.tenant(caller.as_ref(), &r.tenant)?;
        let stations = convert::stations(&r.stations)?;
        let infos = self
            .registry
            .stations(&tenant, &stations)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(pb::StationStatusResponse {
            stations: infos.iter().map(convert::station_info).collect(),
        }))
    }

    async fn notify(
        &self,
        request: Request<pb::NotifyRequest>,
    ) -> Result<Response<pb::NotifyResponse>, Status> {
        let caller = caller_of(&request);
        let r = request.into_inner();
        let tenant = self.tenant(caller.as_ref(), &r.tenant)?;
        use pb::notify_request::Target;
        let target = match r.target {
            Some(Target::SessionId(id)) => {
                NotifyTarget::Session(SessionId::parse(&id).map_err(convert::invalid)?)
            }
            Some(Target::Login(l)) => {
                NotifyTarget::Login(Login::parse(&l).map_err(convert::invalid)?)
            }
            Some(Target::AllSessions(true)) => NotifyTarget::All,
            Some(Target::AllSessions(false)) | None => {
                return Err(Status::invalid_argument(
                    "target: set one of session_id, login or all_sessions=true",
                ))
            }
        };
        let notice = convert::notice(r.notice)?;
        let counts = self
            .registry
            .notify(&tenant, target, notice)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(pb::NotifyResponse {
            delivered: counts.delivered,
            queued: counts.queued,
        }))
    }

    async fn set_seat_limit(
        &self,
        request: Request<pb::SetSeatLimitRequest>,
    ) -> Result<Response<pb::SetSeatLimitResponse>, Status> {
        let caller = caller_of(&request);
        let from = peer_of(&request);
        let r = request.into_inner();
        let tenant = self.tenant(caller.as_ref(), &r.tenant)?;
        // A key bound to a tenant is that tenant's login service: it must
        // not raise its own licence.
        if caller.as_ref().is_some_and(|c| c.tenant.is_some()) {
            return Err(Status::permission_denied(
                "tenant: SetSeatLimit needs an API key without a tenant (an operator's key)",
            ));
        }
        let usage = self
            .registry
            .set_seat_limit(&tenant, r.seat_limit)
            .await
            .map_err(convert::status)?;
        let by = caller.as_ref().map_or("admin", |c| c.name.as_str());
        crate::audit::seat_limit_set(&tenant, r.seat_limit, usage.seats_used, by, &from);
        Ok(Response::new(pb::SetSeatLimitResponse {
            usage: Some(convert::usage(usage)),
        }))
    }

    async fn get_tenant_usage(
        &self,
        request: Request<pb::GetTenantUsageRequest>,
    ) -> Result<Response<pb::GetTenantUsageResponse>, Status> {
        let caller = caller_of(&request);
        let tenant = self.tenant(caller.as_ref(), &request.into_inner().tenant)?;
        let usage = self
            .registry
            .usage(&tenant)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(pb::GetTenantUsageResponse {
            usage: Some(convert::usage(usage)),
        }))
    }

    async fn register_stations(
        &self,
        request: Request<pb::RegisterStationsRequest>,
    ) -> Result<Response<pb::RegisterStationsResponse>, Status> {
        let change = self
            .change_directory(
                &request,
                &request.get_ref().tenant,
                &request.get_ref().stations,
                true,
            )
            .await?;
        Ok(Response::new(pb::RegisterStationsResponse {
            added: change.changed,
            registered: change.registered,
        }))
    }

    async fn remove_stations(
        &self,
        request: Request<pb::RemoveStationsRequest>,
    ) -> Result<Response<pb::RemoveStationsResponse>, Status> {
        let change = self
            .change_directory(
                &request,
                &request.get_ref().tenant,
                &request.get_ref().stations,
                false,
            )
            .await?;
        Ok(Response::new(pb::RemoveStationsResponse {
            removed: change.changed,
            registered: change.registered,
        }))
    }

    async fn list_stations(
        &self,
        request: Request<pb::ListStationsRequest>,
    ) -> Result<Response<pb::ListStationsResponse>, Status> {
        let started = Instant::now();
        let caller = caller_of(&request);
        let r = request.into_inner();
        let tenant = self.tenant(caller.as_ref(), &r.tenant)?;
        let query = convert::station_query(&r)?;
        let page = self
            .registry
            .list_stations(&tenant, &query)
            .await
            .map_err(convert::status)?;
        metrics::histogram!(m::LIST_STATIONS_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(Response::new(pb::ListStationsResponse {
            stations: page.stations.iter().map(convert::station_info).collect(),
            next_page_token: page.next_after.map(|s| s.to_string()).unwrap_or_default(),
            registered: page.registered,
        }))
    }

    type WatchPresenceStream = PresenceStream;

    async fn watch_presence(
        &self,
        request: Request<pb::WatchPresenceRequest>,
    ) -> Result<Response<Self::WatchPresenceStream>, Status> {
        let caller = caller_of(&request);
        let request = request.into_inner();
        let tenant = self.tenant(caller.as_ref(), &request.tenant)?;
        let watch = self.hub.watch(&tenant, self.watch_buffer);
        // Only after the hub holds the watcher: no event in between is lost.
        self.registry
            .watch(&tenant)
            .await
            .map_err(convert::status)?;
        let registry = self.registry.clone();
        let stop = self.stop.clone();
        let stream = async_stream(move |tx| {
            watch::Feed {
                registry,
                watch,
                tenant,
                tx,
                stop,
            }
            .run(request.after_sequence)
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by a task through a small channel.
fn async_stream<F, Fut>(f: F) -> PresenceStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::WatchPresenceResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The caller the API-key interceptor recorded, if any.
fn caller_of<T>(request: &Request<T>) -> Option<Caller> {
    request.extensions().get::<Caller>().cloned()
}

/// The caller's address and key name, for the audit trail.
fn peer_of<T>(request: &Request<T>) -> String {
    let addr = request
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "-".into());
    match request.extensions().get::<Caller>() {
        Some(c) => format!("{addr} key={}", c.name),
        None => addr,
    }
}
