//! The one table of settings: each setting's name, its `serve` flag, what
//! it means. `turnstile serve --help` and the table in docs/operations.md
//! are both made from it (a test keeps the document equal to it), and its
//! defaults are read from [`Config::default`], so no default is written
//! twice.
//!
//! Flags are not a second list of fields: [`Flags`] turns the flags given
//! on the command line into one more configuration source, deserialised
//! into [`Config`] with the file and the `TURNSTILE_*` environment.

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

use super::Config;

/// What a setting holds, for `--help` and the flag's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `host:port`.
    Addr,
    /// `500ms`, `15s`, `12h`.
    Duration,
    /// A whole number.
    Number,
    /// Free text (a name, a secret, a word).
    Text,
    /// A file path.
    Path,
    /// URL(s).
    Url,
    /// `true`/`false`; as a flag, present means true.
    Switch,
    /// A list or table: file or environment only, no flag.
    List,
}

impl Kind {
    fn value_name(self) -> &'static str {
        match self {
            Kind::Addr => "ADDR",
            Kind::Duration => "DURATION",
            Kind::Number => "N",
            Kind::Text => "TEXT",
            Kind::Path => "FILE",
            Kind::Url => "URL",
            Kind::Switch | Kind::List => "",
        }
    }
}

/// One setting.
#[derive(Debug)]
pub struct Setting {
    /// The key in the TOML file and `Config`'s field; the environment
    /// variable is `TURNSTILE_` + this in capitals.
    pub name: &'static str,
    pub kind: Kind,
    /// Shown as the default when the built-in value is empty (unset).
    pub unset: &'static str,
    /// One line for an operator.
    pub meaning: &'static str,
}

const fn s(name: &'static str, kind: Kind, unset: &'static str, meaning: &'static str) -> Setting {
    Setting {
        name,
        kind,
        unset,
        meaning,
    }
}

use Kind::*;

/// Every setting of a node, in the order the documentation lists them.
pub const SETTINGS: &[Setting] = &[
    s("node", Text, "`<hostname>-<pid>`", "this node's name (`Session.node`)"),
    s("http_listen", Addr, "", "WebSocket (`/v1/ws`), `/metrics`, `/healthz`, `/readyz`"),
    s("grpc_listen", Addr, "", "gRPC `turnstile.v1.SessionBrokerService`"),
    s("metrics_listen", Addr, "unset", "a separate plain-HTTP listener for `/metrics`, `/healthz`, `/readyz`; when set, `http_listen` no longer serves `/metrics`"),
    s("heartbeat", Duration, "", "server ping interval; a socket silent for twice this is dead"),
    s("grace", Duration, "", "how long a DISCONNECTED session waits for a socket"),
    s("connect_timeout", Duration, "", "how long a PENDING session waits for its first socket"),
    s("token_ttl", Duration, "", "connect token lifetime (and tombstone lifetime)"),
    s("max_sockets_per_session", Number, "", "sockets one session may hold at once"),
    s("max_message_bytes", Number, "", "largest client frame; larger → close 1009"),
    s("outbound_queue", Number, "", "frames queued per socket before it is a slow consumer"),
    s("write_timeout", Duration, "", "a socket write taking longer means the client stopped reading: the socket is dropped"),
    s("handshake_timeout", Duration, "", "time for a client to send its WebSocket upgrade request"),
    s("signing_key", Text, "generated", "HS256 secret (32+ bytes) for connect tokens; every node of a cluster shares it"),
    s("signing_keys", List, "none", "several keys (HS256 / EdDSA) for rotation: the first signs ([security](security.md))"),
    s("api_keys", List, "none", "API keys (gRPC and HTTP/JSON) `{name, key, tenant?}`; required off loopback"),
    s("allowed_origins", List, "any", "browser `Origin`s allowed to open a WebSocket (e.g. `https://agent.example.com`)"),
    s("tenants", List, "any", "when set, the only tenants served (others: `NOT_FOUND`)"),
    s("seat_limits", List, "none", "seat licences `{tenant = N}`: live sessions a tenant may hold (beyond: `SEATS_EXHAUSTED`); `SetSeatLimit` overrides"),
    s("exclusive_stations", List, "none", "tenants whose stations are never shared: a claim from the holder's `device` gets `STATION_IN_USE` too ([shared stations](protocol.md#shared-stations))"),
    s("max_registered_stations", Number, "", "stations one tenant may register in its directory (`RegisterStations` beyond it: `RESOURCE_EXHAUSTED`)"),
    s("strict_stations", List, "none", "tenants whose claims must name a registered station (else `STATION_NOT_REGISTERED`)"),
    s("max_sockets", Number, "", "open WebSockets on this node (over it: HTTP 429)"),
    s("max_sockets_per_ip", Number, "", "open WebSockets from one IP address (HTTP 429)"),
    s("handshakes_per_second", Number, "", "WebSocket handshakes per second on this node (HTTP 429)"),
    s("handshakes_per_second_per_ip", Number, "", "WebSocket handshakes per second from one IP (HTTP 429)"),
    s("messages_per_second", Number, "", "client messages per second on one socket, burst twice this (close 4429)"),
    s("watch_buffer", Number, "", "presence events buffered per WatchPresence stream before it counts as fallen behind"),
    s("event_log_max_events", Number, "", "presence events kept per tenant in the event log (`after_sequence`, webhooks); Redis trims approximately"),
    s("event_log_max_age", Duration, "", "events older than this leave the event log"),
    s("webhooks", List, "none", "`{tenant, url, secret}`: the tenant's events as signed JSON POSTs to `url` ([webhooks](#the-event-log-and-webhooks))"),
    s("webhook_timeout", Duration, "", "one webhook POST may take this long"),
    s("webhook_backoff", Duration, "", "the wait before a webhook's first retry; doubled each time, at most 1 min"),
    s("webhook_retry_for", Duration, "", "a webhook event not delivered within this is a dead letter"),
    s("webhook_ca_file", Path, "none", "PEM CA bundle trusted for `https://` webhook URLs besides the built-in Mozilla roots (a receiver's private CA)"),
    s("grpc_max_concurrent_streams", Number, "", "concurrent gRPC calls on one connection"),
    s("idempotency_ttl", Duration, "", "how long a claim's `idempotency_key` is remembered"),
    s("max_notices_per_session", Number, "", "undelivered notices kept per session (or per login without one)"),
    s("default_notice_ttl", Duration, "", "lifetime of a notice sent without `expires_at_ms`"),
    s("max_notice_ttl", Duration, "", "how far ahead a notice's `expires_at_ms` may lie (further: `INVALID_ARGUMENT`)"),
    s("max_notice_bytes", Number, "", "bytes of one notice's `text` and `data_json` together (more: `INVALID_ARGUMENT`)"),
    s("max_mailbox_bytes", Number, "", "bytes of the notices queued for one session (or login without one); past it the oldest are dropped"),
    s("tls_cert_file", Path, "none", "PEM certificate chain: with `tls_key_file`, both listeners speak TLS"),
    s("tls_key_file", Path, "none", "PEM private key of `tls_cert_file`"),
    s("tls_client_ca_file", Path, "none", "PEM CA: gRPC callers need a client certificate it signed (mTLS)"),
    s("log_format", Text, "", "`human` or `json` (logs go to stderr; `RUST_LOG` filters)"),
    s("redis", Url, "unset", "Redis URL(s), comma-separated: run as a cluster node; unset = single node"),
    s("redis_cluster", Switch, "", "the `redis` URLs are seed nodes of a Redis Cluster"),
    s("redis_sentinel", Text, "unset", "Sentinels `host:port`, comma-separated, watching `redis_master` (instead of `redis`): the node finds the master through them and follows failovers"),
    s("redis_master", Text, "unset", "the master's name in the Sentinels' configuration (with `redis_sentinel`)"),
    s("redis_namespace", Text, "", "prefix of every Redis key and channel (several deployments on one Redis)"),
    s("lease_ttl", Duration, "", "a node silent in Redis this long is declared dead"),
    s("reconcile_interval", Duration, "", "how often local sockets are checked against Redis"),
    s("drain_window", Duration, "", "SIGTERM: clients reconnect after a random delay below this"),
    s("shutdown_grace", Duration, "", "SIGTERM: how long to wait for sockets and calls to finish before stopping anyway; counts from the signal, so keep it above `drain_window`"),
];

impl Setting {
    /// The `serve` flag, without its dashes (`http-listen`); lists have none.
    pub fn flag(&self) -> Option<String> {
        (self.kind != List).then(|| self.name.replace('_', "-"))
    }

    /// The environment variable.
    pub fn env(&self) -> String {
        format!("TURNSTILE_{}", self.name.to_ascii_uppercase())
    }

    /// The built-in default as written in a file, or the `unset` text.
    pub fn default_text(&self) -> String {
        let defaults =
            figment::Figment::from(figment::providers::Serialized::defaults(Config::default()));
        match defaults.find_value(self.name) {
            Ok(Value::String(_, s)) if !s.is_empty() => format!("`{s}`"),
            Ok(Value::Num(_, n)) => match n.to_u128() {
                Some(n) => format!("`{n}`"),
                None => format!("`{:?}`", n.to_f64()),
            },
            Ok(Value::Bool(_, b)) => format!("`{b}`"),
            _ => self.unset.to_string(),
        }
    }
}

/// The settings table of docs/operations.md, in Markdown.
pub fn markdown_table() -> String {
    let mut out = String::from("| setting | flag | default | meaning |\n|---|---|---|---|\n");
    for s in SETTINGS {
        let flag = s
            .flag()
            .map(|f| format!("`--{f}`"))
            .unwrap_or_else(|| "file / env".into());
        out.push_str(&format!(
            "| `{}` | {flag} | {} | {} |\n",
            s.name,
            s.default_text(),
            s.meaning
        ));
    }
    out
}

/// The settings given as `serve` flags: one more configuration source,
/// above the file and the environment, checked with every other source by
/// [`Config::load`]. Shown by name only (values may be secrets).
#[derive(Clone, Default)]
pub struct Flags {
    given: Vec<(&'static str, Value)>,
}

impl Flags {
    /// The names of the settings given.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.given.iter().map(|(n, _)| *n)
    }
}

impl std::fmt::Debug for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Provider for Flags {
    fn metadata(&self) -> Metadata {
        Metadata::named("command-line flags")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let dict: Dict = self
            .given
            .iter()
            .map(|(name, v)| (name.to_string(), v.clone()))
            .collect();
        Ok(Profile::Default.collect(dict))
    }
}

impl clap::FromArgMatches for Flags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Flags::default();
        flags.update_from_arg_matches(m)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        for s in SETTINGS.iter().filter(|s| s.kind != List) {
            if m.value_source(s.name) != Some(ValueSource::CommandLine) {
                continue;
            }
            // Numbers are parsed as figment parses an environment variable;
            // text stays text, so `--signing-key 1234…` is not a number.
            let value = if s.kind == Switch {
                Value::from(true)
            } else {
                let Some(text) = m.get_one::<String>(s.name) else {
                    continue;
                };
                match s.kind {
                    Number => text.parse().unwrap_or_else(|e| match e {}),
                    _ => Value::from(text.clone()),
                }
            };
            self.given.retain(|(n, _)| *n != s.name);
            self.given.push((s.name, value));
        }
        Ok(())
    }
}

impl clap::Args for Flags {
    fn augment_args(cmd: Command) -> Command {
        SETTINGS.iter().fold(cmd, |cmd, s| {
            let Some(flag) = s.flag() else { return cmd };
            let help = format!("{} [{}; default: {}]", s.meaning, s.env(), s.default_text());
            let arg = Arg::new(s.name)
                .long(leak(flag))
                .help(help.replace('`', ""));
            cmd.arg(match s.kind {
                Switch => arg.action(ArgAction::SetTrue),
                kind => arg.value_name(kind.value_name()).action(ArgAction::Set),
            })
        })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

/// clap wants `'static` flag names; they are built once per process from
/// the static table, a few hundred bytes in all.
fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{FromArgMatches, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        flags: Flags,
    }

    #[test]
    fn every_setting_is_in_the_table_once() {
        let defaults = figment::providers::Serialized::defaults(Config::default());
        let dict = defaults.data().unwrap().remove(&Profile::Default).unwrap();
        let mut keys: Vec<&str> = dict.keys().map(String::as_str).collect();
        // Settings whose default is unset are not serialised; add them.
        for s in SETTINGS {
            if !keys.contains(&s.name) {
                keys.push(s.name);
            }
        }
        keys.sort();
        let mut names: Vec<&str> = SETTINGS.iter().map(|s| s.name).collect();
        names.sort();
        assert_eq!(keys, names, "Config fields and SETTINGS differ");
        names.dedup();
        assert_eq!(names.len(), SETTINGS.len(), "a setting is listed twice");
        // And each one is a field Config accepts.
        for s in SETTINGS {
            let probe = Config::figment(None)
                .merge(figment::providers::Serialized::default(
                    s.name,
                    Value::from("x"),
                ))
                .extract::<Config>();
            if let Err(e) = probe {
                assert!(!e.to_string().contains("unknown field"), "{}: {e}", s.name);
            }
        }
    }

    #[test]
    fn the_operations_guide_shows_this_table() {
        let doc = include_str!("../../docs/operations.md");
        let table = markdown_table();
        assert!(
            doc.contains(&table),
            "docs/operations.md must contain the settings table exactly as \
             config::settings::markdown_table() renders it:\n\n{table}"
        );
    }

    #[test]
    fn the_flags_of_every_release_still_parse() {
        let cli = Cli::try_parse_from([
            "serve",
            "--http-listen",
            "0.0.0.0:1",
            "--grpc-listen",
            "0.0.0.0:2",
            "--node",
            "n1",
            "--heartbeat",
            "3s",
            "--grace",
            "4s",
            "--connect-timeout",
            "5s",
            "--signing-key",
            "k",
            "--redis",
            "redis://a,redis://b",
            "--redis-cluster",
            "--lease-ttl",
            "6s",
            "--reconcile-interval",
            "7s",
            "--drain-window",
            "8s",
            "--log-format",
            "json",
        ])
        .unwrap();
        let names: Vec<&str> = cli.flags.names().collect();
        assert_eq!(names.len(), 13, "{names:?}");
        let c = Config::load(
            None,
            Cli::try_parse_from(["serve", "--signing-key", &"7".repeat(40), "--node", "42"])
                .unwrap()
                .flags,
        )
        .unwrap();
        assert_eq!(c.signing_key.as_deref(), Some(&*"7".repeat(40)));
        assert_eq!(c.node_id().as_str(), "42");
        let dict = cli.flags.data().unwrap().remove(&Profile::Default).unwrap();
        assert_eq!(dict["redis_cluster"], Value::from(true));
        assert_eq!(dict["heartbeat"], Value::from("3s"));
        // Only flags given are a source: nothing else is overridden.
        let none = Cli::try_parse_from(["serve"]).unwrap();
        assert_eq!(none.flags.names().count(), 0);
        let again = Flags::from_arg_matches(
            &<Cli as clap::CommandFactory>::command()
                .try_get_matches_from(["serve", "--grace", "1s"])
                .unwrap(),
        )
        .unwrap();
        assert_eq!(again.names().collect::<Vec<_>>(), ["grace"]);
    }
}
