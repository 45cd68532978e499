//! A Rust client for turnstile, the real-time session and presence broker.
//!
//! - [`Agent`] is what an agent's desktop application (Rust, Tauri) embeds:
//!   one connection for the whole shift that follows the browser SDK's
//!   rules — reconnect with exponential backoff and full jitter, resume the
//!   session within grace with the same connect token, detect a dead socket
//!   from app pings, go to another node when one drains, and **never**
//!   reconnect after a forced logout, a logout or a final close code.
//! - [`AgentSocket`] is one raw agent WebSocket with typed [`ServerFrame`]s
//!   (no reconnects), for tools and load generators.
//! - [`Broker`] speaks the gRPC API a login service uses (`Claim`,
//!   `Release`, `Evict`, `Notify`, `WatchPresence`, ...).
//! - [`Tls`]: both over TLS (`wss://`, gRPC over TLS) with a CA to trust
//!   and, for mTLS, a client certificate.
//!
//! The wire contract is `docs/protocol.md` in the broker's repository.
//!
//! ```no_run
//! use turnstile_client::{pb, Agent, AgentEvent, AgentOptions, Broker, Stop};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // The login service claims the session and hands the token to the app.
//! let mut broker = Broker::connect("127.0.0.1:7701").await?;
//! let granted = broker
//!     .claim(pb::ClaimRequest {
//!         tenant: "acme".into(),
//!         login: "ana".into(),
//!         station: "desk-4".into(),
//!         client: "desktop".into(),
//!         role: "agent".into(),
//!         ..Default::default()
//!     })
//!     .await?;
//!
//! // The desktop app keeps one agent connection for the shift.
//! let ws = "127.0.0.1:7700".parse().expect("an address");
//! let (agent, mut events) = Agent::connect(ws, granted.token, AgentOptions::default())?;
//! agent.set_status("available").await?;
//! while let Some(event) = events.next().await {
//!     match event {
//!         AgentEvent::Connected(w) => println!("online (resumed: {})", w.resumed),
//!         AgentEvent::Disconnected { cause, retry_in, .. } => {
//!             println!("connectivity issues ({cause:?}); retrying in {retry_in:?}")
//!         }
//!         AgentEvent::Notice(n) => {
//!             println!("{}", n["text"]);
//!             if let Some(id) = n["id"].as_str() {
//!                 agent.ack(id).await?;
//!             }
//!         }
//!         AgentEvent::Stopped(Stop::ForcedLogout { message, .. }) => println!("{message}"),
//!         AgentEvent::Stopped(why) => println!("signed out: {why:?}"),
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_op_in_unsafe_fn)]

/// The README's example compiles too.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod agent;
#[cfg(test)]
mod agent_tests;
mod backoff;
pub mod close_code;
mod driver;
mod pending;
mod socket;
mod tls;

pub use agent::{
    Agent, AgentError, AgentEvent, AgentEvents, AgentOptions, Disconnect, Stop, Welcome,
};
pub use backoff::Backoff;
pub use socket::{AgentSocket, ConnectOptions, ServerFrame};
pub use tls::{Stream, Tls};
/// The WebSocket library, for matching on its errors.
pub use tokio_tungstenite::tungstenite;

/// Code generated from `proto/turnstile/v1/broker.proto`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("turnstile.v1");
}

use pb::session_broker_service_client::SessionBrokerServiceClient;
use tonic::transport::Channel;

/// What went wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("{0}")]
    Status(#[from] tonic::Status),
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server sent something that is not protocol JSON: {0}")]
    Protocol(String),
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("TLS: {0}")]
    Tls(String),
}

/// The gRPC API of one broker node.
#[derive(Clone, Debug)]
pub struct Broker {
    client: SessionBrokerServiceClient<Channel>,
    api_key: Option<String>,
}

impl Broker {
    /// Connects to `addr` (`host:port` or `http://host:port`).
    pub async fn connect(addr: &str) -> Result<Self, Error> {
        Self::connect_with(addr, None).await
    }

    /// Connects to `addr`, over TLS when `tls` is given (`host:port` then
    /// means `https://host:port`).
    pub async fn connect_with(addr: &str, tls: Option<&Tls>) -> Result<Self, Error> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let uri = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("{scheme}://{addr}")
        };
        let mut endpoint = Channel::from_shared(uri.clone())
            .map_err(|_| Error::Protocol(format!("not a URI: {uri}")))?
            .tcp_nodelay(true);
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls.tonic())
                .map_err(|source| Error::Connect {
                    addr: addr.to_string(),
                    source,
                })?;
        }
        let channel = endpoint.connect().await.map_err(|source| Error::Connect {
            addr: addr.to_string(),
            source,
        })?;
        Ok(Self {
            client: SessionBrokerServiceClient::new(channel),
            api_key: None,
        })
    }

    /// Sends `authorization: Bearer <key>` with every call.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Some(k) = &self.api_key {
            if let Ok(v) = format!("Bearer {k}").parse() {
                req.metadata_mut().insert("authorization", v);
            }
        }
        req
    }

    pub async fn claim(&mut self, req: pb::ClaimRequest) -> Result<pb::ClaimResponse, Error> {
        let r = self.request(req);
        Ok(self.client.claim(r).await?.into_inner())
    }

    pub async fn release(&mut self, tenant: &str, session_id: &str) -> Result<pb::Session, Error> {
        let r = self.request(pb::ReleaseRequest {
            tenant: tenant.into(),
            session_id: session_id.into(),
        });
        Ok(self
            .client
            .release(r)
            .await?
            .into_inner()
            .session
            .unwrap_or_default())
    }

    pub async fn evict(&mut self, req: pb::EvictRequest) -> Result<Vec<pb::Session>, Error> {
        let r = self.request(req);
        Ok(self.client.evict(r).await?.into_inner().evicted)
    }

    pub async fn get(&mut self, tenant: &str, session_id: &str) -> Result<pb::Session, Error> {
        let r = self.request(pb::GetSessionRequest {
            tenant: tenant.into(),
            key: Some(pb::get_session_request::Key::SessionId(session_id.into())),
        });
        self.client
            .get_session(r)
            .await?
            .into_inner()
            .session
            .ok_or_else(|| Error::Protocol("GetSession answered without a session".into()))
    }

    pub async fn list(
        &mut self,
        tenant: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<pb::ListSessionsResponse, Error> {
        let r = self.request(pb::ListSessionsRequest {
            tenant: tenant.into(),
            page_size,
            page_token: page_token.into(),
        });
        Ok(self.client.list_sessions(r).await?.into_inner())
    }

    pub async fn stations(
        &mut self,
        tenant: &str,
        stations: Vec<String>,
    ) -> Result<Vec<pb::StationInfo>, Error> {
        let r = self.request(pb::StationStatusRequest {
            tenant: tenant.into(),
            stations,
        });
        Ok(self.client.station_status(r).await?.into_inner().stations)
    }

    /// Adds stations to the tenant's directory (at most 1000 per call).
    pub async fn register_stations(
        &mut self,
        tenant: &str,
        stations: Vec<String>,
    ) -> Result<pb::RegisterStationsResponse, Error> {
        let r = self.request(pb::RegisterStationsRequest {
            tenant: tenant.into(),
            stations,
        });
        Ok(self.client.register_stations(r).await?.into_inner())
    }

    /// Removes stations from the tenant's directory.
    pub async fn remove_stations(
        &mut self,
        tenant: &str,
        stations: Vec<String>,
    ) -> Result<pb::RemoveStationsResponse, Error> {
        let r = self.request(pb::RemoveStationsRequest {
            tenant: tenant.into(),
            stations,
        });
        Ok(self.client.remove_stations(r).await?.into_inner())
    }

    /// One page of the tenant's station directory.
    pub async fn list_stations(
        &mut self,
        req: pb::ListStationsRequest,
    ) -> Result<pb::ListStationsResponse, Error> {
        let r = self.request(req);
        Ok(self.client.list_stations(r).await?.into_inner())
    }

    pub async fn notify(&mut self, req: pb::NotifyRequest) -> Result<pb::NotifyResponse, Error> {
        let r = self.request(req);
        Ok(self.client.notify(r).await?.into_inner())
    }

    /// A stream of presence events of `tenant` (each response's `event`).
    pub async fn watch_presence(
        &mut self,
        tenant: &str,
    ) -> Result<tonic::Streaming<pb::WatchPresenceResponse>, Error> {
        let r = self.request(pb::WatchPresenceRequest {
            tenant: tenant.into(),
            after_sequence: None,
        });
        Ok(self.client.watch_presence(r).await?.into_inner())
    }

    /// Like [`watch_presence`](Self::watch_presence), first replaying the
    /// tenant's event log after sequence `after` (an item with `gap` set
    /// says the log no longer reached back that far: re-read the state).
    pub async fn watch_presence_after(
        &mut self,
        tenant: &str,
        after: u64,
    ) -> Result<tonic::Streaming<pb::WatchPresenceResponse>, Error> {
        let r = self.request(pb::WatchPresenceRequest {
            tenant: tenant.into(),
            after_sequence: Some(after),
        });
        Ok(self.client.watch_presence(r).await?.into_inner())
    }
}
