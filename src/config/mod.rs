//! Typed, validated settings of a node.
//!
//! Sources, later ones winning: built-in defaults, an optional TOML file,
//! `TURNSTILE_*` environment variables, command-line flags. Everything is
//! parsed once into [`Config`] — durations, socket addresses, Redis URLs,
//! identifiers — and checked by [`Config::validate`], whose errors name the
//! setting. Components take the parts they need, built here in one place
//! ([`Config::registry`], [`Config::redis`], [`Config::gateway`],
//! [`Config::api_keys`]); nothing downstream parses a setting again.
//!
//! [`settings`] is the one table of settings (flags, `--help`, the table in
//! docs/operations.md); [`crate::limits`] holds the bounds that are not
//! settings.

mod ids;
mod redis_url;
pub mod settings;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Provider};
use serde::{Deserialize, Serialize};

use crate::gateway::GatewayConfig;
use crate::registry::RegistryConfig;
use crate::session::{NodeId, Tenant};

pub use redis_url::{RedisUrl, RedisUrls};
pub use settings::Flags;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// One gRPC API key (`[[api_keys]]` in the TOML file).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// A name for logs and the audit trail.
    pub name: String,
    /// The secret the caller sends as `authorization: Bearer <key>`.
    pub key: String,
    /// When set, the key may act only on this tenant.
    #[serde(default, with = "ids::opt")]
    pub tenant: Option<Tenant>,
}

/// One webhook (`[[webhooks]]` in the TOML file): a tenant's events as
/// signed JSON POSTs to `url`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub tenant: String,
    /// `http://...` (put a TLS-terminating proxy in front for HTTPS).
    pub url: String,
    /// A Standard Webhooks secret, `whsec_` + base64 of 24 to 64 bytes.
    pub secret: String,
}

/// PEM contents of the TLS settings.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub client_ca: Option<Vec<u8>>,
}

/// One connect-token signing key (`[[signing_keys]]` in the TOML file).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyConfig {
    /// The key id tokens carry in their header.
    pub kid: String,
    /// `HS256` or `EdDSA`.
    pub alg: String,
    /// HS256: the shared secret (32+ bytes).
    #[serde(default)]
    pub secret: Option<String>,
    /// EdDSA: PEM file of the Ed25519 private key (only nodes that sign).
    #[serde(default)]
    pub private_key_file: Option<std::path::PathBuf>,
    /// EdDSA: PEM file of the public key.
    #[serde(default)]
    pub public_key_file: Option<std::path::PathBuf>,
}

/// All settings of a node. Every field has a default, so `turnstile serve`
/// runs with no configuration at all. Each is listed, with its meaning, in
/// [`settings::SETTINGS`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's name (`Session.node`); defaults to `<hostname>-<pid>`.
    #[serde(with = "ids::opt")]
    pub node: Option<NodeId>,
    /// WebSocket + HTTP (`/v1/ws`, `/metrics`, `/healthz`, `/readyz`).
    pub http_listen: SocketAddr,
    /// gRPC (`turnstile.v1.SessionBrokerService`).
    pub grpc_listen: SocketAddr,
    /// A separate plain-HTTP listener for `/metrics` (and the probes); when
    /// set, `http_listen` no longer serves `/metrics`.
    pub metrics_listen: Option<SocketAddr>,
    /// Server ping interval; a socket silent for twice this is dead.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// How long a DISCONNECTED session waits for a socket before it expires.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// How long a PENDING session waits for its first socket.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Lifetime of connect tokens (and of tombstones of ended sessions).
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Sockets one session may hold at once.
    pub max_sockets_per_session: usize,
    /// Largest client message, in bytes; larger ones close the socket (1009).
    pub max_message_bytes: usize,
    /// Frames queued for one socket before it counts as a slow consumer and
    /// is disconnected.
    pub outbound_queue: usize,
    /// A socket write that takes longer than this means the client stopped
    /// reading: the socket is dropped.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// HS256 secret for connect tokens. When unset a random one is generated
    /// at start (development only: tokens die with the process).
    pub signing_key: Option<String>,
    /// Several keys, for rotation and for EdDSA: the first signs, all
    /// verify (by `kid`). Takes the place of `signing_key`.
    pub signing_keys: Vec<SigningKeyConfig>,
    /// `human` or `json`.
    pub log_format: LogFormat,
    /// When set, only these tenants are served; others get NOT_FOUND.
    #[serde(with = "ids::opt_list")]
    pub tenants: Option<Vec<Tenant>>,
    /// Seat licences: live sessions a tenant may hold at once (tenants not
    /// listed: no limit). `SetSeatLimit` overrides a tenant's entry.
    #[serde(with = "ids::map_u32")]
    pub seat_limits: std::collections::HashMap<Tenant, u32>,
    /// Tenants whose stations are never shared: a claim from the holder's
    /// device is refused like any other. Unset: every tenant shares.
    #[serde(with = "ids::opt_list")]
    pub exclusive_stations: Option<Vec<Tenant>>,
    /// Stations one tenant may register in its directory (RegisterStations).
    pub max_registered_stations: usize,
    /// Tenants whose claims must name a station registered in their
    /// directory (`STATION_NOT_REGISTERED` otherwise). Unset: none.
    #[serde(with = "ids::opt_list")]
    pub strict_stations: Option<Vec<Tenant>>,
    /// gRPC API keys. Empty: every call is allowed (loopback only).
    pub api_keys: Vec<ApiKeyConfig>,
    /// Browser `Origin`s allowed to open a WebSocket (e.g.
    /// `https://agent.example.com`). Unset: any origin (development).
    /// Requests without an `Origin` header (non-browser clients) pass.
    pub allowed_origins: Option<Vec<String>>,
    /// Time for a client to send its HTTP upgrade request.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Open WebSockets allowed on this node.
    pub max_sockets: usize,
    /// Open WebSockets allowed from one IP address (a contact center behind
    /// one NAT address shows as one IP: keep this high).
    pub max_sockets_per_ip: usize,
    /// WebSocket handshakes accepted per second on this node (burst: one
    /// second's worth).
    pub handshakes_per_second: u32,
    /// WebSocket handshakes accepted per second from one IP.
    pub handshakes_per_second_per_ip: u32,
    /// Client messages per second on one socket (burst: twice this); over
    /// it the socket is closed with 4429.
    pub messages_per_second: u32,
    /// Presence events buffered for one WatchPresence stream; a watcher
    /// further behind is told it lagged.
    pub watch_buffer: usize,
    /// Presence events kept per tenant in the event log (WatchPresence's
    /// `after_sequence`, webhooks).
    pub event_log_max_events: usize,
    /// Events older than this leave the event log.
    #[serde(with = "humantime_serde")]
    pub event_log_max_age: Duration,
    /// Webhooks: each tenant's events as signed JSON POSTs.
    pub webhooks: Vec<WebhookConfig>,
    /// One webhook POST may take this long.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// The wait before a webhook's first retry (doubled each time, at most 1 min).
    #[serde(with = "humantime_serde")]
    pub webhook_backoff: Duration,
    /// A webhook event not delivered within this is a dead letter.
    #[serde(with = "humantime_serde")]
    pub webhook_retry_for: Duration,
    /// PEM CA bundle trusted for `https://` webhook URLs, besides the
    /// built-in Mozilla roots.
    pub webhook_ca_file: Option<std::path::PathBuf>,
    /// Concurrent gRPC calls (HTTP/2 streams) on one connection.
    pub grpc_max_concurrent_streams: u32,
    /// How long a claim's `idempotency_key` is remembered.
    #[serde(with = "humantime_serde")]
    pub idempotency_ttl: Duration,
    /// Undelivered notices kept per session (or per login without one).
    pub max_notices_per_session: usize,
    /// Lifetime of a notice sent without `expires_at_ms`.
    #[serde(with = "humantime_serde")]
    pub default_notice_ttl: Duration,
    /// How far ahead a notice's `expires_at_ms` may lie.
    #[serde(with = "humantime_serde")]
    pub max_notice_ttl: Duration,
    /// Bytes of one notice's text and data together.
    pub max_notice_bytes: usize,
    /// Bytes of the notices queued for one session (or login) together.
    pub max_mailbox_bytes: usize,
    /// PEM certificate chain: when set with `tls_key_file`, both listeners
    /// speak TLS (`wss://` and gRPC over TLS).
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<std::path::PathBuf>,
    /// PEM CA: gRPC callers must present a client certificate it signed (mTLS).
    pub tls_client_ca_file: Option<std::path::PathBuf>,
    /// Redis URL(s), comma-separated (`redis://host:6379`). When set the node
    /// joins a cluster through Redis; when unset it runs alone with the
    /// embedded registry. Shown with passwords hidden.
    pub redis: Option<RedisUrls>,
    /// The `redis` URLs are seed nodes of a Redis Cluster.
    pub redis_cluster: bool,
    /// Sentinels (`host:port`, comma-separated) watching the master named
    /// `redis_master`: the node finds the master through them and follows
    /// failovers. Instead of `redis`.
    pub redis_sentinel: Option<String>,
    /// The master's name in the Sentinels' configuration.
    pub redis_master: Option<String>,
    /// Prefix of every Redis key and channel, so several deployments can
    /// share one Redis.
    pub redis_namespace: String,
    /// A node whose lease in Redis is older than this is declared dead; its
    /// sessions become DISCONNECTED.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often a node reconciles its sockets with Redis (also done at once
    /// after a lost subscription): the bound on a missed forced logout.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// On SIGTERM, sockets are told to reconnect after a random delay below
    /// this, so a restart does not make every client reconnect at once.
    #[serde(with = "humantime_serde")]
    pub drain_window: Duration,
    /// On SIGTERM, how long to wait for connections and tasks to finish
    /// before stopping anyway (with a warning). It counts from the signal,
    /// so it should be longer than `drain_window`.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node: None,
            http_listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 7701)),
            metrics_listen: None,
            heartbeat: Duration::from_secs(15),
            grace: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(60),
            token_ttl: Duration::from_secs(12 * 3600),
            max_sockets_per_session: 4,
            max_message_bytes: 16 * 1024,
            outbound_queue: 64,
            write_timeout: Duration::from_secs(10),
            signing_key: None,
            signing_keys: Vec::new(),
            log_format: LogFormat::Human,
            tenants: None,
            seat_limits: Default::default(),
            exclusive_stations: None,
            max_registered_stations: 100_000,
            strict_stations: None,
            api_keys: Vec::new(),
            allowed_origins: None,
            handshake_timeout: Duration::from_secs(10),
            max_sockets: 100_000,
            max_sockets_per_ip: 20_000,
            handshakes_per_second: 20_000,
            handshakes_per_second_per_ip: 10_000,
            messages_per_second: 20,
            watch_buffer: 1024,
            event_log_max_events: 10_000,
            event_log_max_age: Duration::from_secs(3600),
            webhooks: Vec::new(),
            webhook_timeout: Duration::from_secs(5),
            webhook_backoff: Duration::from_millis(500),
            webhook_retry_for: Duration::from_secs(3600),
            webhook_ca_file: None,
            grpc_max_concurrent_streams: 256,
            idempotency_ttl: Duration::from_secs(300),
            max_notices_per_session: 32,
            default_notice_ttl: Duration::from_secs(24 * 3600),
            max_notice_ttl: Duration::from_secs(366 * 24 * 3600),
            max_notice_bytes: 4096,
            max_mailbox_bytes: 64 * 1024,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            redis: None,
            redis_cluster: false,
            redis_sentinel: None,
            redis_master: None,
            redis_namespace: "turnstile".into(),
            lease_ttl: Duration::from_secs(5),
            reconcile_interval: Duration::from_secs(5),
            drain_window: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// A setting that cannot work, named so the operator can fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration: {field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

/// `Err(Invalid)` naming `field`.
fn bad<T>(field: &'static str, problem: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid {
        field,
        problem: problem.into(),
    })
}

/// `value` must be at least `min`; the error shows both.
fn at_least<T: PartialOrd + std::fmt::Debug>(
    field: &'static str,
    value: T,
    min: T,
) -> Result<(), ConfigError> {
    if value < min {
        return bad(field, format!("must be at least {min:?}, got {value:?}"));
    }
    Ok(())
}

/// `value` must be at most `max`; the error shows both.
fn at_most<T: PartialOrd + std::fmt::Debug>(
    field: &'static str,
    value: T,
    max: T,
) -> Result<(), ConfigError> {
    if value > max {
        return bad(field, format!("must be at most {max:?}, got {value:?}"));
    }
    Ok(())
}

impl Config {
    /// Loads defaults ← `file` ← `TURNSTILE_*` env ← `flags` (e.g.
    /// [`Flags`], which holds only the flags given), then validates.
    pub fn load(file: Option<&Path>, flags: impl Provider) -> Result<Self, ConfigError> {
        if let Some(path) = file {
            if !path.exists() {
                return bad("--config", format!("{} does not exist", path.display()));
            }
        }
        let config: Config = Self::figment(file)
            .merge(flags)
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Defaults ← `file` ← `TURNSTILE_*` env, not yet extracted.
    pub(crate) fn figment(file: Option<&Path>) -> Figment {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            fig = fig.merge(Toml::file_exact(path));
        }
        // TURNSTILE_CONFIG names the file and TURNSTILE_ADDR is `ctl`'s: neither
        // is a setting.
        fig.merge(Env::prefixed("TURNSTILE_").ignore(&["config", "addr"]))
    }

    /// Checks values that parse but cannot work. [`crate::server::start`]
    /// calls it too, so a config built in code gets the same checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        at_least("heartbeat", self.heartbeat, Duration::from_millis(10))?;
        let public = !self.http_listen.ip().is_loopback() || !self.grpc_listen.ip().is_loopback();
        if public
            && (self.api_keys.is_empty()
                || (self.signing_key.is_none() && self.signing_keys.is_empty()))
        {
            return bad(
                "http_listen/grpc_listen",
                "listening on a non-loopback address needs `api_keys` (gRPC callers) and \
                 `signing_key` (connect tokens shared by every node) configured: set \
                 TURNSTILE_SIGNING_KEY and [[api_keys]] in the config file (or \
                 TURNSTILE_API_KEYS='[{name=\"login\",key=\"...\"}]')",
            );
        }
        for (i, k) in self.api_keys.iter().enumerate() {
            if k.key.len() < 16 {
                return bad(
                    "api_keys",
                    format!("key #{i} ({}) must be at least 16 characters", k.name),
                );
            }
        }
        if let Some(origins) = &self.allowed_origins {
            for o in origins {
                let rest = o
                    .strip_prefix("https://")
                    .or_else(|| o.strip_prefix("http://"));
                if rest.is_none_or(|host| host.is_empty() || host.contains('/')) {
                    return bad(
                        "allowed_origins",
                        format!(
                            "{o:?} is not an origin like https://agent.example.com \
                             (scheme and host, no path or trailing /)"
                        ),
                    );
                }
            }
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return bad(
                "tls_cert_file",
                "set both tls_cert_file and tls_key_file, or neither",
            );
        }
        if self.tls_client_ca_file.is_some() && self.tls_cert_file.is_none() {
            return bad(
                "tls_client_ca_file",
                "mTLS needs tls_cert_file and tls_key_file too",
            );
        }
        at_least("max_sockets", self.max_sockets, 1)?;
        at_least("max_sockets_per_ip", self.max_sockets_per_ip, 1)?;
        at_least("handshakes_per_second", self.handshakes_per_second, 1)?;
        at_least(
            "handshakes_per_second_per_ip",
            self.handshakes_per_second_per_ip,
            1,
        )?;
        at_least("messages_per_second", self.messages_per_second, 1)?;
        at_least("watch_buffer", self.watch_buffer, 1)?;
        at_least("event_log_max_events", self.event_log_max_events, 1)?;
        at_most("event_log_max_events", self.event_log_max_events, 1_000_000)?;
        at_least("max_registered_stations", self.max_registered_stations, 1)?;
        at_most(
            "max_registered_stations",
            self.max_registered_stations,
            10_000_000,
        )?;
        at_least(
            "event_log_max_age",
            self.event_log_max_age,
            Duration::from_secs(1),
        )?;
        self.webhook_endpoints()?;
        at_least(
            "webhook_timeout",
            self.webhook_timeout,
            Duration::from_millis(10),
        )?;
        at_least(
            "webhook_backoff",
            self.webhook_backoff,
            Duration::from_millis(1),
        )?;
        at_least(
            "grpc_max_concurrent_streams",
            self.grpc_max_concurrent_streams,
            1,
        )?;
        at_least("lease_ttl", self.lease_ttl, Duration::from_millis(250))?;
        at_least(
            "reconcile_interval",
            self.reconcile_interval,
            Duration::from_millis(100),
        )?;
        at_most("drain_window", self.drain_window, Duration::from_secs(60))?;
        at_most(
            "shutdown_grace",
            self.shutdown_grace,
            Duration::from_secs(600),
        )?;
        at_least(
            "write_timeout",
            self.write_timeout,
            Duration::from_millis(10),
        )?;
        at_least(
            "handshake_timeout",
            self.handshake_timeout,
            Duration::from_millis(10),
        )?;
        self.sentinel()?;
        if self.redis_namespace.is_empty()
            || !self
                .redis_namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad(
                "redis_namespace",
                format!(
                    "{:?}: must be non-empty letters, digits, - or _",
                    self.redis_namespace
                ),
            );
        }
        at_least("max_sockets_per_session", self.max_sockets_per_session, 1)?;
        at_least("max_message_bytes", self.max_message_bytes, 256)?;
        at_least("outbound_queue", self.outbound_queue, 1)?;
        at_least("max_notices_per_session", self.max_notices_per_session, 1)?;
        at_least(
            "default_notice_ttl",
            self.default_notice_ttl,
            Duration::from_secs(1),
        )?;
        at_least(
            "max_notice_ttl",
            self.max_notice_ttl,
            self.default_notice_ttl,
        )?;
        at_least("max_notice_bytes", self.max_notice_bytes, 1)?;
        at_least(
            "max_mailbox_bytes",
            self.max_mailbox_bytes,
            self.max_notice_bytes,
        )?;
        at_least(
            "idempotency_ttl",
            self.idempotency_ttl,
            Duration::from_secs(1),
        )?;
        at_least("token_ttl", self.token_ttl, Duration::from_secs(1))?;
        if let Some(key) = &self.signing_key {
            if key.len() < 32 {
                return bad(
                    "signing_key",
                    format!("must be at least 32 bytes for HS256, got {}", key.len()),
                );
            }
        }
        Ok(())
    }

    /// This node's id: the configured name or `<hostname>-<pid>`.
    pub fn node_id(&self) -> NodeId {
        if let Some(node) = &self.node {
            return node.clone();
        }
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "node".into());
        let host: String = host
            .trim()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
            .take(100)
            .collect();
        let host = if host.is_empty() { "node".into() } else { host };
        NodeId::parse(&format!("{host}-{}", std::process::id()))
            .unwrap_or_else(|_| NodeId::parse("node").expect("static node id is valid"))
    }

    /// The connect-token keys: `signing_keys`, else `signing_key`, else
    /// `None` (the caller generates a development key).
    pub fn token_keys(&self) -> Result<Option<crate::auth::TokenKeys>, ConfigError> {
        use crate::auth::{KeyMaterial, SigningKey, TokenKeys};
        if self.signing_keys.is_empty() {
            return Ok(self
                .signing_key
                .as_ref()
                .map(|s| TokenKeys::new(s.as_bytes(), self.token_ttl)));
        }
        let invalid = |problem: String| ConfigError::Invalid {
            field: "signing_keys",
            problem,
        };
        let read = |kid: &str, p: &std::path::Path| {
            std::fs::read(p)
                .map_err(|e| invalid(format!("{kid}: cannot read {}: {e}", p.display())))
        };
        let mut keys = Vec::new();
        for k in &self.signing_keys {
            let material = match k.alg.as_str() {
                "HS256" => match &k.secret {
                    Some(s) if s.len() >= 32 => KeyMaterial::Hs256(s.as_bytes().to_vec()),
                    _ => {
                        return Err(invalid(format!(
                            "{}: HS256 needs a secret of 32+ bytes",
                            k.kid
                        )))
                    }
                },
                "EdDSA" => KeyMaterial::EdDsa {
                    private_pem: match &k.private_key_file {
                        Some(p) => Some(read(&k.kid, p)?),
                        None => None,
                    },
                    public_pem: match &k.public_key_file {
                        Some(p) => read(&k.kid, p)?,
                        None => {
                            return Err(invalid(format!("{}: EdDSA needs public_key_file", k.kid)))
                        }
                    },
                },
                other => {
                    return Err(invalid(format!(
                        "{}: alg {other:?} is not supported; use HS256 or EdDSA",
                        k.kid
                    )))
                }
            };
            keys.push(SigningKey {
                kid: k.kid.clone(),
                material,
            });
        }
        TokenKeys::from_keys(keys, self.token_ttl)
            .map(Some)
            .map_err(|e| invalid(e.to_string()))
    }

    /// The PEM contents of the listeners' TLS files, when TLS is on.
    pub fn tls_files(&self) -> Result<Option<TlsFiles>, ConfigError> {
        let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) else {
            return Ok(None);
        };
        let read = |field: &'static str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| ConfigError::Invalid {
                field,
                problem: format!("cannot read {}: {e}", p.display()),
            })
        };
        let ca = match &self.tls_client_ca_file {
            Some(p) => Some(read("tls_client_ca_file", p)?),
            None => None,
        };
        Ok(Some(TlsFiles {
            cert: read("tls_cert_file", cert)?,
            key: read("tls_key_file", key)?,
            client_ca: ca,
        }))
    }

    /// The Sentinels and master name, when `redis_sentinel` is set; the
    /// error names the setting that is wrong.
    fn sentinel(&self) -> Result<Option<crate::registry::redis::SentinelTarget>, ConfigError> {
        let Some(list) = &self.redis_sentinel else {
            if self.redis_master.is_some() {
                return bad("redis_master", "is only used with redis_sentinel");
            }
            return Ok(None);
        };
        if self.redis.is_some() || self.redis_cluster {
            return bad(
                "redis_sentinel",
                "set either redis (and redis_cluster) or redis_sentinel, not both",
            );
        }
        let mut sentinels = Vec::new();
        for hp in list.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let ok = hp
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok || hp.contains('/') || hp.contains('@') {
                return bad("redis_sentinel", format!("{hp:?} is not host:port"));
            }
            sentinels.push(
                RedisUrl::parse(&format!("redis://{hp}")).or_else(|e| bad("redis_sentinel", e))?,
            );
        }
        if sentinels.is_empty() {
            return bad("redis_sentinel", "needs at least one host:port");
        }
        let master = match self.redis_master.as_deref().map(str::trim) {
            Some(m) if !m.is_empty() && !m.contains(char::is_whitespace) => m.to_string(),
            Some(m) => return bad("redis_master", format!("{m:?} is not a master name")),
            None => return bad("redis_master", "is required with redis_sentinel"),
        };
        Ok(Some(crate::registry::redis::SentinelTarget {
            sentinels,
            master,
        }))
    }

    /// The Redis registry's settings, when `redis` or `redis_sentinel` is
    /// set.
    pub fn redis(&self) -> Option<crate::registry::RedisConfig> {
        let sentinel = self.sentinel().ok().flatten();
        let urls = match (&self.redis, &sentinel) {
            (Some(r), None) => r.urls().to_vec(),
            (None, Some(_)) => Vec::new(),
            _ => return None,
        };
        Some(crate::registry::RedisConfig {
            target: crate::registry::redis::Target {
                urls,
                cluster: self.redis_cluster,
                sentinel,
            },
            lease_ttl: self.lease_ttl,
            reconcile_interval: self.reconcile_interval,
            namespace: self.redis_namespace.clone(),
        })
    }

    /// The registry's part of the settings.
    pub fn registry(&self) -> RegistryConfig {
        RegistryConfig {
            node: self.node_id(),
            connect_timeout: self.connect_timeout,
            grace: self.grace,
            tombstone_ttl: self.token_ttl,
            max_sockets_per_session: self.max_sockets_per_session,
            idempotency_ttl: self.idempotency_ttl,
            max_notices_per_session: self.max_notices_per_session,
            default_notice_ttl: self.default_notice_ttl,
            max_notice_bytes: self.max_notice_bytes,
            max_mailbox_bytes: self.max_mailbox_bytes,
            max_notice_ttl: self.max_notice_ttl,
            clock: crate::clock::Clock::system(),
            event_log: crate::registry::LogBounds {
                max_events: self.event_log_max_events,
                max_age: self.event_log_max_age,
            },
            seat_limits: std::sync::Arc::new(self.seat_limits.clone()),
            exclusive_stations: std::sync::Arc::new(
                self.exclusive_stations.iter().flatten().cloned().collect(),
            ),
            max_registered_stations: self.max_registered_stations,
            strict_stations: std::sync::Arc::new(
                self.strict_stations.iter().flatten().cloned().collect(),
            ),
        }
    }

    /// The webhooks, checked: a tenant id, an `http://` or `https://` URL
    /// and a Standard Webhooks secret each.
    pub fn webhook_endpoints(&self) -> Result<Vec<crate::webhooks::Endpoint>, ConfigError> {
        let mut out = Vec::new();
        for (i, w) in self.webhooks.iter().enumerate() {
            let field = |what: &str, problem: String| ConfigError::Invalid {
                field: "webhooks",
                problem: format!("webhooks[{i}].{what}: {problem}"),
            };
            let tenant = Tenant::parse(&w.tenant).map_err(|e| field("tenant", e.to_string()))?;
            let url: hyper::Uri = w
                .url
                .parse()
                .map_err(|e| field("url", format!("{:?} is not a URL: {e}", w.url)))?;
            if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
                return Err(field(
                    "url",
                    format!("{:?} must be https://host[:port]/path (or http://)", w.url),
                ));
            }
            let secret =
                crate::webhooks::sign::Secret::parse(&w.secret).map_err(|e| field("secret", e))?;
            out.push(crate::webhooks::Endpoint {
                tenant,
                url,
                secret,
            });
        }
        Ok(out)
    }

    /// How webhooks are sent, with the roots `https://` receivers are
    /// checked against; the error names `webhook_ca_file`.
    pub fn webhook_options(&self) -> Result<crate::webhooks::Options, ConfigError> {
        let ca = match &self.webhook_ca_file {
            Some(p) => Some(std::fs::read(p).map_err(|e| ConfigError::Invalid {
                field: "webhook_ca_file",
                problem: format!("cannot read {}: {e}", p.display()),
            })?),
            None => None,
        };
        let tls =
            crate::webhooks::tls_config(ca.as_deref()).map_err(|problem| ConfigError::Invalid {
                field: "webhook_ca_file",
                problem,
            })?;
        Ok(crate::webhooks::Options {
            timeout: self.webhook_timeout,
            backoff: self.webhook_backoff,
            retry_for: self.webhook_retry_for,
            tls,
        })
    }

    /// The gateway's part of the settings; `tls` is the listener's rustls
    /// configuration built from [`Config::tls_files`].
    pub fn gateway(
        &self,
        node: NodeId,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    ) -> GatewayConfig {
        GatewayConfig {
            node,
            heartbeat: self.heartbeat,
            grace: self.grace,
            max_message_bytes: self.max_message_bytes,
            outbound_queue: self.outbound_queue,
            write_timeout: self.write_timeout,
            handshake_timeout: self.handshake_timeout,
            allowed_origins: self.allowed_origins.clone(),
            limits: crate::gateway::limits::LimitsConfig {
                max_sockets: self.max_sockets,
                max_sockets_per_ip: self.max_sockets_per_ip,
                handshakes_per_second: self.handshakes_per_second,
                handshakes_per_second_per_ip: self.handshakes_per_second_per_ip,
            },
            messages_per_second: self.messages_per_second,
            tls,
            metrics_elsewhere: self.metrics_listen.is_some(),
        }
    }

    /// The gRPC API keys.
    pub fn api_keys(&self) -> Vec<crate::api::keys::ApiKey> {
        self.api_keys
            .iter()
            .map(|k| crate::api::keys::ApiKey {
                name: k.name.clone(),
                secret: k.key.clone(),
                tenant: k.tenant.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::value::Value;

    /// A flags source holding `pairs`, parsed as the command line parses them.
    fn flags(pairs: &[(&str, &str)]) -> impl Provider {
        let dict: figment::value::Dict = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.parse::<Value>().unwrap()))
            .collect();
        Serialized::defaults(dict)
    }

    fn load_err(pairs: &[(&str, &str)]) -> String {
        Config::load(None, flags(pairs)).unwrap_err().to_string()
    }

    #[test]
    fn defaults_need_no_configuration() {
        let c = Config::load(None, flags(&[])).unwrap();
        assert_eq!(c.http_listen.to_string(), "127.0.0.1:7700");
        assert_eq!(c.grpc_listen.to_string(), "127.0.0.1:7701");
        assert_eq!(c.heartbeat, Duration::from_secs(15));
        assert_eq!(c.shutdown_grace, Duration::from_secs(5));
        assert_eq!(c.write_timeout, Duration::from_secs(10));
        assert_eq!(c.watch_buffer, 1024);
        assert_eq!(c.grpc_max_concurrent_streams, 256);
        // The registry's defaults are the settings' defaults.
        let r = c.registry();
        let d = RegistryConfig::default();
        assert_eq!(
            (
                r.idempotency_ttl,
                r.max_notices_per_session,
                r.default_notice_ttl
            ),
            (
                d.idempotency_ttl,
                d.max_notices_per_session,
                d.default_notice_ttl
            )
        );
        assert_eq!(
            (r.max_notice_bytes, r.max_mailbox_bytes, r.max_notice_ttl),
            (d.max_notice_bytes, d.max_mailbox_bytes, d.max_notice_ttl)
        );
    }

    #[test]
    fn flags_arrive_typed() {
        let c = Config::load(
            None,
            flags(&[
                ("grace", "5s"),
                ("http_listen", "127.0.0.1:9000"),
                ("node", "12"),
                ("max_sockets", "7"),
                (
                    "redis",
                    "redis://:pw@127.0.0.1:6390/1,redis://127.0.0.1:6391",
                ),
                ("redis_cluster", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(c.grace, Duration::from_secs(5));
        assert_eq!(c.http_listen, SocketAddr::from(([127, 0, 0, 1], 9000)));
        assert_eq!(c.node_id().as_str(), "12");
        assert_eq!(c.max_sockets, 7);
        let redis = c.redis().unwrap();
        assert!(redis.target.cluster);
        assert_eq!(
            RedisUrl::join(&redis.target.urls),
            "redis://:***@127.0.0.1:6390/1,redis://127.0.0.1:6391"
        );
    }

    #[test]
    fn sentinel_settings_are_checked_and_name_the_setting() {
        let c = Config::load(
            None,
            flags(&[
                ("redis_sentinel", "127.0.0.1:26379, h2:26380"),
                ("redis_master", "ts"),
            ]),
        )
        .unwrap();
        let s = c.redis().unwrap().target.sentinel.unwrap();
        assert_eq!((s.master.as_str(), s.sentinels.len()), ("ts", 2));
        for (pairs, says) in [
            (
                &[("redis_sentinel", "h:1")][..],
                "redis_master: is required",
            ),
            (&[("redis_master", "ts")][..], "redis_master: is only used"),
            (
                &[("redis_sentinel", "h"), ("redis_master", "ts")][..],
                "redis_sentinel: \"h\" is not host:port",
            ),
            (
                &[
                    ("redis_sentinel", "h:1"),
                    ("redis_master", "ts"),
                    ("redis", "redis://h"),
                ][..],
                "redis_sentinel: set either",
            ),
        ] {
            let e = load_err(pairs);
            assert!(e.contains(says), "{pairs:?}: {e}");
        }
    }

    #[test]
    fn a_value_that_does_not_parse_names_the_setting() {
        for (pairs, says) in [
            (&[("grace", "soon")][..], "grace"),
            (&[("http_listen", "localhost")][..], "http_listen"),
            (&[("max_sockets", "-1")][..], "max_sockets"),
            (&[("redis", "127.0.0.1:6379")][..], "redis"),
            (&[("node", "no spaces")][..], "node"),
            (&[("log_format", "xml")][..], "log_format"),
            (&[("tenants", "[ok, \"b a d\"]")][..], "tenants"),
            (&[("seat_limits", "{\"b a d\" = 3}")][..], "seat_limits"),
            (&[("strict_stations", "[\"b a d\"]")][..], "strict_stations"),
            (
                &[("max_registered_stations", "0")][..],
                "max_registered_stations",
            ),
        ] {
            let e = load_err(pairs);
            assert!(e.contains(says), "{pairs:?}: {e}");
        }
        // A misspelt setting is refused, not ignored.
        let e = load_err(&[("graec", "5s")]);
        assert!(e.contains("graec"), "{e}");
    }

    #[test]
    fn a_value_that_cannot_work_names_the_setting_and_the_value() {
        for (pairs, says) in [
            (
                &[("heartbeat", "5ms")][..],
                "heartbeat: must be at least 10ms, got 5ms",
            ),
            (
                &[("signing_key", "short")][..],
                "signing_key: must be at least 32 bytes",
            ),
            (
                &[("max_sockets_per_ip", "0")][..],
                "max_sockets_per_ip: must be at least 1",
            ),
            (
                &[("watch_buffer", "0")][..],
                "watch_buffer: must be at least 1, got 0",
            ),
            (
                &[("grpc_max_concurrent_streams", "0")][..],
                "grpc_max_concurrent_streams",
            ),
            (
                &[("drain_window", "2m")][..],
                "drain_window: must be at most 60s, got 120s",
            ),
            (
                &[("shutdown_grace", "1h")][..],
                "shutdown_grace: must be at most",
            ),
            (
                &[("write_timeout", "0s")][..],
                "write_timeout: must be at least",
            ),
            (
                &[("redis_namespace", "a:b")][..],
                "redis_namespace: \"a:b\"",
            ),
            (
                &[("allowed_origins", "[\"https://a.example/\"]")][..],
                "allowed_origins",
            ),
            (&[("tls_key_file", "k.pem")][..], "tls_cert_file"),
        ] {
            let e = load_err(pairs);
            assert!(e.contains(says), "{pairs:?}: {e}");
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = Config::load(Some(Path::new("/nonexistent/turnstile.toml")), flags(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--config") && e.contains("/nonexistent"), "{e}");
    }

    #[test]
    fn the_file_is_read_and_flags_win_over_it() {
        let path = std::env::temp_dir().join(format!("ts-config-{}.toml", rand::random::<u64>()));
        std::fs::write(
            &path,
            "grace = \"7s\"\nheartbeat = \"3s\"\ntenants = [\"acme\"]\n\
             redis = [\"redis://u:pw@10.0.0.1\", \"redis://10.0.0.2\"]\n\
             [[api_keys]]\nname = \"portal\"\nkey = \"0123456789abcdef\"\ntenant = \"acme\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), flags(&[("grace", "9s")]));
        std::fs::remove_file(&path).ok();
        let c = c.unwrap();
        assert_eq!(
            (c.grace, c.heartbeat),
            (Duration::from_secs(9), Duration::from_secs(3))
        );
        assert_eq!(c.tenants.as_ref().unwrap()[0].as_str(), "acme");
        assert_eq!(c.api_keys()[0].tenant.as_ref().unwrap().as_str(), "acme");
        assert_eq!(c.redis.as_ref().unwrap().urls().len(), 2);
    }

    #[test]
    fn debug_of_a_config_hides_redis_passwords() {
        let c = Config::load(None, flags(&[("redis", "redis://u:hunter2@h:1")])).unwrap();
        let shown = format!("{c:?} {:?}", c.redis());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redis://u:***@h:1"), "{shown}");
    }
}
