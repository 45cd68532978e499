//! Assembly of a node: binds its listeners, builds the registry, hub,
//! gateway and gRPC service, and owns the shutdown sequence.
//!
//! `start` takes the whole [`Config`], checks it, hands each component the
//! part it needs and returns once both listeners are bound (ports may be
//! 0), so a test starts a full node in one line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::api::conn::GrpcConn;
use crate::api::http::HttpApi;
use crate::api::Api;
use crate::auth::TokenKeys;
use crate::config::Config;
use crate::connectivity::Connectivity;
use crate::gateway::Gateway;
use crate::hub::Hub;
use crate::registry::{MemoryRegistry, RedisRegistry, Registry};
use crate::session::NodeId;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot join the cluster: {0}")]
    Redis(#[from] crate::registry::redis::ConnectError),
}

/// A running node.
pub struct RunningServer {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// The `metrics_listen` listener's address, when configured.
    pub metrics_addr: Option<SocketAddr>,
    pub node: NodeId,
    stop: CancellationToken,
    tracker: TaskTracker,
    hub: Arc<Hub>,
    gateway: Gateway,
    registry: Arc<dyn Registry>,
    drain_window: Duration,
    /// How long shutdown waits for connections to finish.
    shutdown_grace: Duration,
}

/// Starts a node with `config` (checked here too, so a config built in code
/// gets the same checks as a loaded one).
pub async fn start(config: Config) -> Result<RunningServer, ServerError> {
    config.validate()?;
    let node = config.node_id();
    let http = listen(config.http_listen).map_err(|source| ServerError::Bind {
        what: "http/websocket",
        addr: config.http_listen,
        source,
    })?;
    let grpc = listen(config.grpc_listen).map_err(|source| ServerError::Bind {
        what: "grpc",
        addr: config.grpc_listen,
        source,
    })?;
    let metrics = match config.metrics_listen {
        Some(addr) => Some(listen(addr).map_err(|source| ServerError::Bind {
            what: "metrics",
            addr,
            source,
        })?),
        None => None,
    };
    let http_addr = http.local_addr().unwrap_or(config.http_listen);
    let metrics_addr = metrics
        .as_ref()
        .zip(config.metrics_listen)
        .map(|(l, addr)| l.local_addr().unwrap_or(addr));
    let grpc_addr = grpc.local_addr().unwrap_or(config.grpc_listen);

    // One registry clock: the registry's deadlines and the connect
    // tokens' times (minted in Claim, checked at connect) are both on it.
    let registry_config = config.registry();
    let keys = match config.token_keys()? {
        Some(keys) => keys,
        None => {
            warn!(
                "DEV SIGNING KEY: no signing_key configured, a random one was generated; \
                 connect tokens die with this process. Set TURNSTILE_SIGNING_KEY (32+ bytes) \
                 for anything but a local trial."
            );
            TokenKeys::generate(config.token_ttl)
        }
    }
    .with_clock(registry_config.clock.clone());
    let tls = config.tls_files()?;
    let ws_tls = match &tls {
        Some(t) => Some(ws_tls_config(&t.cert, &t.key)?),
        None => None,
    };

    let hub = Hub::new(config.drain_window);
    metrics::gauge!(crate::metrics_names::DEGRADED).set(0.0);
    let stop = CancellationToken::new();
    let registry: Arc<dyn Registry> = match config.redis() {
        Some(redis) => {
            let registry = RedisRegistry::start(
                registry_config,
                redis,
                hub.clone(),
                hub.local(),
                stop.child_token(),
            )
            .await?;
            Arc::new(registry)
        }
        None => MemoryRegistry::start(registry_config, hub.clone()),
    };
    let tracker = TaskTracker::new();
    crate::webhooks::spawn(
        config.webhook_endpoints()?,
        config.webhook_options()?,
        registry.clone(),
        hub.clone(),
        &tracker,
        stop.child_token(),
    );

    // One service for both transports: gRPC, and HTTP/JSON on the gateway.
    let api = Arc::new(Api::new(
        registry.clone(),
        hub.clone(),
        keys.clone(),
        config.tenants.clone(),
        stop.clone(),
        config.watch_buffer,
    ));
    let api_keys = crate::api::keys::ApiKeys::new(config.api_keys());
    let gateway = Gateway::new(
        config.gateway(node.clone(), ws_tls),
        registry.clone(),
        hub.clone(),
        keys,
        crate::telemetry::metrics(),
        HttpApi::new(api.clone(), api_keys.clone()),
    );
    tracker.spawn(gateway.clone().serve(http, stop.clone(), tracker.clone()));
    if let Some(listener) = metrics {
        tracker.spawn(
            gateway
                .clone()
                .serve_metrics(listener, stop.clone(), tracker.clone()),
        );
    }

    let api = api.into_authenticated(api_keys);
    let max_streams = config.grpc_max_concurrent_streams;
    let grpc_stop = stop.clone();
    // The builder's tcp_nodelay applies only to listeners it binds itself.
    let incoming =
        tokio_stream::StreamExt::map(TcpListenerStream::new(grpc), |s| s.map(GrpcConn::new));
    tracker.spawn(async move {
        let mut builder = tonic::transport::Server::builder();
        if let Some(files) = &tls {
            let mut t = tonic::transport::ServerTlsConfig::new().identity(
                tonic::transport::Identity::from_pem(&files.cert, &files.key),
            );
            if let Some(ca) = &files.client_ca {
                t = t.client_ca_root(tonic::transport::Certificate::from_pem(ca));
            }
            builder = match builder.tls_config(t) {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, "grpc TLS configuration refused");
                    return;
                }
            };
        }
        let result = builder
            .max_concurrent_streams(Some(max_streams))
            .tcp_nodelay(true)
            .add_service(api)
            .serve_with_incoming_shutdown(incoming, grpc_stop.cancelled())
            .await;
        if let Err(e) = result {
            warn!(error = %e, "grpc server ended");
        }
    });
    info!(%http_addr, %grpc_addr, ?metrics_addr, %node, "turnstile node started");
    Ok(RunningServer {
        http_addr,
        grpc_addr,
        metrics_addr,
        node,
        stop,
        tracker,
        hub,
        gateway,
        registry,
        drain_window: config.drain_window,
        shutdown_grace: config.shutdown_grace,
    })
}

impl RunningServer {
    /// Stops the node: not ready → tell every socket to reconnect elsewhere
    /// (close 1012; the sessions stay live) → stop listeners → wait, bounded.
    pub async fn shutdown(self) {
        self.gateway.set_draining();
        self.hub.drain(self.drain_window);
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.shutdown_grace, self.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                "shutdown grace of {:?} ran out with {} sockets open",
                self.shutdown_grace,
                self.hub.socket_count()
            );
        }
        self.registry.close().await;
    }

    /// A switch that tells this node's sockets a connectivity as if the
    /// registry had said so — for `turnstile demo` (which runs the embedded
    /// registry, never degraded) and tests. A Redis registry's next change
    /// of its own replaces what was set.
    pub fn connectivity_switch(&self) -> ConnectivitySwitch {
        ConnectivitySwitch(self.hub.clone())
    }

    /// Open WebSockets on this node (tests check it returns to baseline).
    pub fn socket_count(&self) -> usize {
        self.hub.socket_count()
    }

    /// A token that, once cancelled, means the node is stopping.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }
}

/// See [`RunningServer::connectivity_switch`]. Cheap to clone.
#[derive(Clone)]
pub struct ConnectivitySwitch(Arc<Hub>);

impl ConnectivitySwitch {
    /// Tells every presence watcher that events may have been lost, as a
    /// lost Redis subscription does (for tests of the `gap` frame).
    pub fn announce_gap(&self) {
        use crate::registry::EventSink;
        self.0.publish(crate::registry::Event::Gap {
            tenant: None,
            reason: crate::registry::GapReason::SubscriptionLost,
        });
    }

    /// Tells every socket `connectivity` (when it changed) and every later
    /// socket after its welcome while degraded.
    pub fn set(&self, connectivity: Connectivity) {
        use crate::registry::EventSink;
        if self.0.connectivity() != connectivity {
            self.0
                .publish(crate::registry::Event::Connectivity(connectivity));
        }
    }

    /// What the node's sockets were last told.
    pub fn get(&self) -> Connectivity {
        self.0.connectivity()
    }
}

/// The WebSocket listener's rustls configuration (HTTP/1.1 only).
fn ws_tls_config(
    cert: &[u8],
    key: &[u8],
) -> Result<Arc<tokio_rustls::rustls::ServerConfig>, ServerError> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServerError::Tls(format!("tls_cert_file: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| ServerError::Tls(format!("tls_key_file: {e}")))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ServerError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| ServerError::Tls(format!("certificate and key: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Binds a listener with a deep accept backlog ([`crate::limits::ACCEPT_BACKLOG`]).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(crate::limits::ACCEPT_BACKLOG)
}
