//! Typed, validated settings of a node.
//!
//! Sources, later ones winning: built-in defaults, an optional TOML file,
//! `TURNSTILE_*` environment variables, command-line flags. Everything is
//! parsed once into [`Config`]; components take the parts they need.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::registry::RegistryConfig;
use crate::session::NodeId;

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
    #[serde(default)]
    pub tenant: Option<String>,
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
/// runs with no configuration at all.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's name (`Session.node`); defaults to `<hostname>-<pid>`.
    pub node: Option<String>,
    /// WebSocket + HTTP (`/v1/ws`, `/metrics`, `/healthz`, `/readyz`).
    pub http_listen: SocketAddr,
    /// gRPC (`turnstile.v1.SessionBrokerService`).
    pub grpc_listen: SocketAddr,
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
    /// HS256 secret for connect tokens. When unset a random one is generated
    /// at start (development only: tokens die with the process).
    pub signing_key: Option<String>,
    /// Several keys, for rotation and for EdDSA: the first signs, all
    /// verify (by `kid`). Takes the place of `signing_key`.
    pub signing_keys: Vec<SigningKeyConfig>,
    /// `human` or `json`.
    pub log_format: LogFormat,
    /// When set, only these tenants are served; others get NOT_FOUND.
    pub tenants: Option<Vec<String>>,
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
    /// PEM certificate chain: when set with `tls_key_file`, both listeners
    /// speak TLS (`wss://` and gRPC over TLS).
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<std::path::PathBuf>,
    /// PEM CA: gRPC callers must present a client certificate it signed (mTLS).
    pub tls_client_ca_file: Option<std::path::PathBuf>,
    /// Redis URL(s), comma-separated (`redis://host:6379`). When set the node
    /// joins a cluster through Redis; when unset it runs alone with the
    /// embedded registry.
    pub redis: Option<String>,
    /// The `redis` URLs are seed nodes of a Redis Cluster.
    pub redis_cluster: bool,
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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node: None,
            http_listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 7701)),
            heartbeat: Duration::from_secs(15),
            grace: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(60),
            token_ttl: Duration::from_secs(12 * 3600),
            max_sockets_per_session: 4,
            max_message_bytes: 16 * 1024,
            outbound_queue: 64,
            signing_key: None,
            signing_keys: Vec::new(),
            log_format: LogFormat::Human,
            tenants: None,
            api_keys: Vec::new(),
            allowed_origins: None,
            handshake_timeout: Duration::from_secs(10),
            max_sockets: 100_000,
            max_sockets_per_ip: 20_000,
            handshakes_per_second: 20_000,
            handshakes_per_second_per_ip: 10_000,
            messages_per_second: 20,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            redis: None,
            redis_cluster: false,
            redis_namespace: "turnstile".into(),
            lease_ttl: Duration::from_secs(5),
            reconcile_interval: Duration::from_secs(5),
            drain_window: Duration::from_secs(2),
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

impl Config {
    /// Loads defaults ← `file` ← `TURNSTILE_*` env ← `overrides` (a
    /// serialisable struct whose `None` fields are skipped), then validates.
    pub fn load<O: Serialize>(file: Option<&Path>, overrides: &O) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid {
                    field: "--config",
                    problem: format!("{} does not exist", path.display()),
                });
            }
            fig = fig.merge(Toml::file(path));
        }
        let config: Config = fig
            .merge(Env::prefixed("TURNSTILE_"))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, problem: &str| {
            Err(ConfigError::Invalid {
                field,
                problem: problem.to_string(),
            })
        };
        if self.heartbeat < Duration::from_millis(10) {
            return bad("heartbeat", "must be at least 10ms");
        }
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
                    &format!("key #{i} ({}) must be at least 16 characters", k.name),
                );
            }
            if let Some(t) = &k.tenant {
                if let Err(e) = crate::session::Tenant::parse(t) {
                    return bad("api_keys", &format!("key #{i} ({}): {e}", k.name));
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
        if self.max_sockets == 0 || self.max_sockets_per_ip == 0 {
            return bad("max_sockets", "limits must be at least 1");
        }
        if self.handshakes_per_second == 0 || self.handshakes_per_second_per_ip == 0 {
            return bad("handshakes_per_second", "limits must be at least 1");
        }
        if self.messages_per_second == 0 {
            return bad("messages_per_second", "must be at least 1");
        }
        if self.lease_ttl < Duration::from_millis(250) {
            return bad("lease_ttl", "must be at least 250ms");
        }
        if self.reconcile_interval < Duration::from_millis(100) {
            return bad("reconcile_interval", "must be at least 100ms");
        }
        if self.drain_window > Duration::from_secs(60) {
            return bad("drain_window", "must be at most 60s");
        }
        if let Some(r) = &self.redis {
            if r.split(',')
                .any(|u| !u.trim().starts_with("redis://") && !u.trim().starts_with("rediss://"))
            {
                return bad("redis", "every URL must start with redis:// (or rediss://)");
            }
        }
        if self.redis_namespace.is_empty()
            || !self
                .redis_namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad(
                "redis_namespace",
                "must be non-empty letters, digits, - or _",
            );
        }
        if self.max_sockets_per_session == 0 {
            return bad("max_sockets_per_session", "must be at least 1");
        }
        if self.max_message_bytes < 256 {
            return bad("max_message_bytes", "must be at least 256");
        }
        if self.outbound_queue == 0 {
            return bad("outbound_queue", "must be at least 1");
        }
        if let Some(key) = &self.signing_key {
            if key.len() < 32 {
                return bad("signing_key", "must be at least 32 bytes for HS256");
            }
        }
        if let Some(node) = &self.node {
            if let Err(e) = NodeId::parse(node) {
                return bad("node", &e.problem);
            }
        }
        Ok(())
    }

    /// This node's id: the configured name or `<hostname>-<pid>`.
    pub fn node_id(&self) -> NodeId {
        if let Some(node) = &self.node {
            if let Ok(id) = NodeId::parse(node) {
                return id;
            }
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

    /// The Redis registry's settings, when `redis` is set.
    pub fn redis(&self) -> Option<crate::registry::RedisConfig> {
        let urls: Vec<String> = self
            .redis
            .as_deref()?
            .split(',')
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect();
        Some(crate::registry::RedisConfig {
            target: crate::registry::redis::Target {
                urls,
                cluster: self.redis_cluster,
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
            ..RegistryConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Default)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        grace: Option<String>,
    }

    #[test]
    fn defaults_need_no_configuration() {
        let c = Config::load(None, &Flags::default()).unwrap();
        assert_eq!(c.http_listen.to_string(), "127.0.0.1:7700");
        assert_eq!(c.grpc_listen.to_string(), "127.0.0.1:7701");
        assert_eq!(c.heartbeat, Duration::from_secs(15));
    }

    #[test]
    fn flags_override_and_bad_values_name_the_field() {
        let c = Config::load(
            None,
            &Flags {
                grace: Some("5s".into()),
            },
        )
        .unwrap();
        assert_eq!(c.grace, Duration::from_secs(5));
        let c = Config {
            signing_key: Some("short".into()),
            ..Config::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("signing_key"), "{err}");
    }
}
