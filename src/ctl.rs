//! `turnstile ctl`: an operator CLI over the public gRPC API, so a person can
//! try every call from a shell. Human output by default, JSON lines with
//! `--json`.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::pb;
use crate::pb::session_broker_service_client::SessionBrokerServiceClient;

#[derive(Args)]
pub struct CtlArgs {
    /// The node's gRPC address.
    #[arg(
        long,
        env = "TURNSTILE_ADDR",
        default_value = "http://127.0.0.1:7701",
        value_parser = grpc_endpoint
    )]
    addr: http::Uri,
    /// Print JSON lines instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Claim a login's session (prints the connect token when granted).
    Claim {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        login: String,
        #[arg(long, default_value = "")]
        station: String,
        #[arg(long, default_value = "desktop")]
        client: String,
        #[arg(long, default_value = "agent")]
        role: String,
        /// End the current holder instead of refusing.
        #[arg(long, group = "policy")]
        takeover: bool,
        /// End the holder only if it is still this session (the one you
        /// were shown); another holder is answered LOGIN_IN_USE.
        #[arg(long, value_name = "SESSION_ID", group = "policy")]
        takeover_of: Option<String>,
        /// End the holder only if it has no open socket.
        #[arg(long, group = "policy")]
        takeover_if_disconnected: bool,
        /// key=value, repeatable.
        #[arg(long = "attr")]
        attrs: Vec<String>,
        #[arg(long, default_value = "")]
        idempotency_key: String,
        /// The client machine's stable id: a station held from this
        /// device admits this login too (a shared station).
        #[arg(long, default_value = "")]
        device: String,
    },
    /// Normal logout of a session.
    Release {
        #[arg(long)]
        tenant: String,
        session_id: String,
    },
    /// Force a logout by session, login or station, of a role, or of
    /// everyone in the tenant.
    Evict {
        #[arg(long)]
        tenant: String,
        #[arg(long, group = "target")]
        session: Option<String>,
        #[arg(long, group = "target")]
        login: Option<String>,
        #[arg(long, group = "target")]
        station: Option<String>,
        /// Every live session of this role.
        #[arg(long, group = "target")]
        role: Option<String>,
        /// Every live session of the tenant.
        #[arg(long, group = "target")]
        all: bool,
        #[arg(long, default_value = "")]
        message: String,
    },
    /// Show one session.
    Get {
        #[arg(long)]
        tenant: String,
        #[arg(long, group = "key")]
        session: Option<String>,
        #[arg(long, group = "key")]
        login: Option<String>,
    },
    /// List a tenant's live sessions.
    Sessions {
        #[arg(long)]
        tenant: String,
    },
    /// Which of the named stations are free; or, with a subcommand, the
    /// tenant's station directory (`--tenant` before the subcommand).
    Stations {
        #[arg(long)]
        tenant: String,
        stations: Vec<String>,
        #[command(subcommand)]
        directory: Option<Directory>,
    },
    /// A tenant's seats in use against its licence; `--limit` sets it.
    Seats {
        #[arg(long)]
        tenant: String,
        /// Set the seat limit (0: none), overriding `seat_limits`.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Push a notice now or queue it for the next connect.
    Notify {
        #[arg(long)]
        tenant: String,
        #[arg(long, group = "target")]
        session: Option<String>,
        #[arg(long, group = "target")]
        login: Option<String>,
        #[arg(long, group = "target")]
        all: bool,
        #[arg(long)]
        id: String,
        #[arg(long)]
        kind: String,
        #[arg(long, default_value = "info")]
        severity: String,
        #[arg(long)]
        text: String,
        #[arg(long, default_value = "")]
        data_json: String,
        /// e.g. 1h; default: the broker's (24h).
        #[arg(long)]
        expires_in: Option<humantime::Duration>,
    },
    /// Print a tenant's presence changes as they happen.
    Watch {
        #[arg(long)]
        tenant: String,
    },
}

/// `ctl stations --tenant T register|remove|list`.
#[derive(Subcommand)]
enum Directory {
    /// Add stations to the directory (names, and/or one per line of --file).
    Register {
        stations: Vec<String>,
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// Remove stations from the directory (their holders stay).
    Remove {
        stations: Vec<String>,
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// Every registered station in name order, with its holder.
    List {
        /// Only names starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Only stations nobody holds.
        #[arg(long)]
        free: bool,
        /// Stations per call (at most 1000).
        #[arg(long, default_value_t = 500)]
        page_size: u32,
    },
}

/// The names of a register/remove: the arguments, then the file's lines.
fn directory_names(
    mut names: Vec<String>,
    file: Option<&std::path::Path>,
) -> anyhow::Result<Vec<String>> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--file {}: cannot read it", path.display()))?;
        names.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from),
        );
    }
    if names.is_empty() {
        bail!("name at least one station (or --file)");
    }
    Ok(names)
}

fn station_line(json: bool, s: &pb::StationInfo) {
    if json {
        let holders: Vec<_> = s
            .holders
            .iter()
            .map(|h| json!({"login": h.login, "session_id": h.session_id, "device": h.device}))
            .collect();
        println!(
            "{}",
            json!({"station": s.station, "free": s.free, "login": s.login,
                   "session_id": s.session_id, "holders": holders})
        );
    } else if s.free {
        println!("{}  free", s.station);
    } else {
        // Every holder: a shared station has several.
        let holders: Vec<String> = s
            .holders
            .iter()
            .map(|h| match h.device.as_str() {
                "" => format!("{} ({})", h.login, h.session_id),
                d => format!("{} ({}, device {d})", h.login, h.session_id),
            })
            .collect();
        println!("{}  held by {}", s.station, holders.join(", "));
    }
}

fn enum_name<E: TryFrom<i32> + std::fmt::Debug>(v: i32) -> String {
    E::try_from(v)
        .map(|e| format!("{e:?}"))
        .unwrap_or_else(|_| v.to_string())
}

fn session_json(s: &pb::Session) -> serde_json::Value {
    json!({
        "session_id": s.session_id, "tenant": s.tenant, "login": s.login,
        "station": s.station, "client": s.client, "role": s.role,
        "generation": s.generation,
        "state": enum_name::<pb::SessionState>(s.state),
        "end_reason": enum_name::<pb::EndReason>(s.end_reason),
        "status": s.status, "node": s.node,
        "created_at_ms": s.created_at_ms, "last_seen_ms": s.last_seen_ms,
        "attributes": s.attributes, "device": s.device,
    })
}

fn session_line(s: &pb::Session) -> String {
    format!(
        "{}  login={} station={} state={}{} gen={} client={} node={}{}",
        s.session_id,
        s.login,
        if s.station.is_empty() {
            "-"
        } else {
            &s.station
        },
        enum_name::<pb::SessionState>(s.state),
        if s.end_reason != 0 {
            format!("({})", enum_name::<pb::EndReason>(s.end_reason))
        } else {
            String::new()
        },
        s.generation,
        s.client,
        s.node,
        if s.device.is_empty() {
            String::new()
        } else {
            format!(" device={}", s.device)
        }
    )
}

/// `--addr`, checked when the command line is parsed (clap names the flag).
fn grpc_endpoint(text: &str) -> Result<http::Uri, String> {
    let bad = || format!("{text:?} is not a URL like http://127.0.0.1:7701");
    let uri: http::Uri = text.parse().map_err(|_| bad())?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err(bad()),
    }
}

/// Runs one ctl command.
pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    let endpoint =
        tonic::transport::Endpoint::from(args.addr.clone()).connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.with_context(|| {
        format!(
            "cannot reach turnstile at {}; is `turnstile serve` running?",
            args.addr
        )
    })?;
    let mut c = SessionBrokerServiceClient::new(channel);
    let json = args.json;
    let status = |e: tonic::Status| anyhow::anyhow!("{:?}: {}", e.code(), e.message());
    match args.cmd {
        Cmd::Claim {
            tenant,
            login,
            station,
            client,
            role,
            takeover,
            takeover_of,
            takeover_if_disconnected,
            attrs,
            idempotency_key,
            device,
        } => {
            let mut attributes = std::collections::HashMap::new();
            for a in attrs {
                let (k, v) = a
                    .split_once('=')
                    .with_context(|| format!("--attr {a:?}: expected key=value"))?;
                attributes.insert(k.to_string(), v.to_string());
            }
            let policy = if takeover_if_disconnected {
                pb::ConflictPolicy::TakeoverIfDisconnected
            } else if takeover || takeover_of.is_some() {
                pb::ConflictPolicy::Takeover
            } else {
                pb::ConflictPolicy::Reject
            };
            let r = c
                .claim(pb::ClaimRequest {
                    tenant,
                    login,
                    station,
                    client,
                    role,
                    on_conflict: policy as i32,
                    attributes,
                    idempotency_key,
                    expected_session_id: takeover_of.unwrap_or_default(),
                    device,
                })
                .await
                .map_err(status)?
                .into_inner();
            let outcome = enum_name::<pb::ClaimOutcome>(r.outcome);
            if json {
                println!(
                    "{}",
                    json!({"outcome": outcome, "token": r.token,
                           "session": r.session.as_ref().map(session_json),
                           "holder": r.holder.as_ref().map(session_json),
                           "station_holders": r.station_holders.iter().map(session_json).collect::<Vec<_>>(),
                           "evicted": r.evicted.iter().map(session_json).collect::<Vec<_>>(),
                           "seats": r.seats.as_ref().map(usage_json)})
                );
            } else {
                println!("outcome: {outcome}");
                if let Some(s) = &r.session {
                    println!("session: {}", session_line(s));
                    println!("token:   {}", r.token);
                }
                if let Some(h) = &r.holder {
                    println!("holder:  {}", session_line(h));
                    if r.outcome == pb::ClaimOutcome::LoginInUse as i32 {
                        println!(
                            "(User already logged. Re-run with --takeover-of {} to continue.)",
                            h.session_id
                        );
                    }
                }
                // A shared station's other holders (the first is `holder`).
                for h in r.station_holders.iter().skip(1) {
                    println!("holder:  {}", session_line(h));
                }
                for e in &r.evicted {
                    println!("evicted: {}", session_line(e));
                }
                if let Some(u) = &r.seats {
                    print_usage(false, u);
                }
                if r.outcome == pb::ClaimOutcome::StationNotRegistered as i32 {
                    println!(
                        "(The tenant accepts only registered stations: see `ctl stations --tenant T list`.)"
                    );
                }
            }
        }
        Cmd::Release { tenant, session_id } => {
            let r = c
                .release(pb::ReleaseRequest { tenant, session_id })
                .await
                .map_err(status)?
                .into_inner();
            print_session(json, r.session.as_ref());
        }
        Cmd::Evict {
            tenant,
            session,
            login,
            station,
            role,
            all,
            message,
        } => {
            use pb::evict_request::Target;
            let target = match (session, login, station, role) {
                (Some(s), _, _, _) => Target::SessionId(s),
                (_, Some(l), _, _) => Target::Login(l),
                (_, _, Some(s), _) => Target::Station(s),
                (_, _, _, Some(r)) => Target::Role(r),
                _ if all => Target::AllSessions(true),
                _ => bail!("evict needs one of --session, --login, --station, --role, --all"),
            };
            let r = c
                .evict(pb::EvictRequest {
                    tenant,
                    target: Some(target),
                    message,
                })
                .await
                .map_err(status)?
                .into_inner();
            for s in &r.evicted {
                print_session(json, Some(s));
            }
            if !json && r.evicted_count as usize > r.evicted.len() {
                println!("… {} sessions evicted in all", r.evicted_count);
            }
        }
        Cmd::Get {
            tenant,
            session,
            login,
        } => {
            use pb::get_session_request::Key;
            let key = match (session, login) {
                (Some(s), _) => Key::SessionId(s),
                (_, Some(l)) => Key::Login(l),
                _ => bail!("get needs --session or --login"),
            };
            let s = c
                .get_session(pb::GetSessionRequest {
                    tenant,
                    key: Some(key),
                })
                .await
                .map_err(status)?
                .into_inner()
                .session;
            print_session(json, s.as_ref());
        }
        Cmd::Sessions { tenant } => {
            let mut token = String::new();
            for _ in 0..100_000 {
                let r = c
                    .list_sessions(pb::ListSessionsRequest {
                        tenant: tenant.clone(),
                        page_size: 500,
                        page_token: token,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                for s in &r.sessions {
                    print_session(json, Some(s));
                }
                if r.next_page_token.is_empty() {
                    break;
                }
                token = r.next_page_token;
            }
        }
        Cmd::Stations {
            tenant,
            stations,
            directory: None,
        } => {
            let r = c
                .station_status(pb::StationStatusRequest { tenant, stations })
                .await
                .map_err(status)?
                .into_inner();
            for s in &r.stations {
                station_line(json, s);
            }
        }
        Cmd::Stations {
            tenant,
            directory: Some(Directory::Register { stations, file }),
            ..
        } => {
            let names = directory_names(stations, file.as_deref())?;
            let (mut added, mut registered) = (0, 0);
            for chunk in names.chunks(crate::limits::MAX_DIRECTORY_CHANGE) {
                let r = c
                    .register_stations(pb::RegisterStationsRequest {
                        tenant: tenant.clone(),
                        stations: chunk.to_vec(),
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                added += r.added;
                registered = r.registered;
            }
            if json {
                println!("{}", json!({"added": added, "registered": registered}));
            } else {
                println!("added: {added}  registered: {registered}");
            }
        }
        Cmd::Stations {
            tenant,
            directory: Some(Directory::Remove { stations, file }),
            ..
        } => {
            let names = directory_names(stations, file.as_deref())?;
            let (mut removed, mut registered) = (0, 0);
            for chunk in names.chunks(crate::limits::MAX_DIRECTORY_CHANGE) {
                let r = c
                    .remove_stations(pb::RemoveStationsRequest {
                        tenant: tenant.clone(),
                        stations: chunk.to_vec(),
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                removed += r.removed;
                registered = r.registered;
            }
            if json {
                println!("{}", json!({"removed": removed, "registered": registered}));
            } else {
                println!("removed: {removed}  registered: {registered}");
            }
        }
        Cmd::Stations {
            tenant,
            directory:
                Some(Directory::List {
                    prefix,
                    free,
                    page_size,
                }),
            ..
        } => {
            let mut token = String::new();
            // A directory holds at most 10,000,000 names; a page examines
            // at least one.
            for _ in 0..10_000_000 {
                let r = c
                    .list_stations(pb::ListStationsRequest {
                        tenant: tenant.clone(),
                        prefix: prefix.clone(),
                        free_only: free,
                        page_size,
                        page_token: token,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                for s in &r.stations {
                    station_line(json, s);
                }
                if r.next_page_token.is_empty() {
                    if !json {
                        println!("({} registered)", r.registered);
                    }
                    break;
                }
                token = r.next_page_token;
            }
        }
        Cmd::Seats { tenant, limit } => {
            let usage = match limit {
                Some(seat_limit) => {
                    c.set_seat_limit(pb::SetSeatLimitRequest { tenant, seat_limit })
                        .await
                        .map_err(status)?
                        .into_inner()
                        .usage
                }
                None => {
                    c.get_tenant_usage(pb::GetTenantUsageRequest { tenant })
                        .await
                        .map_err(status)?
                        .into_inner()
                        .usage
                }
            }
            .unwrap_or_default();
            print_usage(json, &usage);
        }
        Cmd::Notify {
            tenant,
            session,
            login,
            all,
            id,
            kind,
            severity,
            text,
            data_json,
            expires_in,
        } => {
            use pb::notify_request::Target;
            let target = match (session, login, all) {
                (Some(s), _, _) => Target::SessionId(s),
                (_, Some(l), _) => Target::Login(l),
                (_, _, true) => Target::AllSessions(true),
                _ => bail!("notify needs one of --session, --login, --all"),
            };
            let expires_at_ms = expires_in
                .map(|d| crate::session::now_ms() + Duration::from(d).as_millis() as i64)
                .unwrap_or(0);
            let r = c
                .notify(pb::NotifyRequest {
                    tenant,
                    target: Some(target),
                    notice: Some(pb::Notice {
                        id,
                        kind,
                        severity,
                        text,
                        data_json,
                        expires_at_ms,
                    }),
                })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                println!("{}", json!({"delivered": r.delivered, "queued": r.queued}));
            } else {
                println!("delivered: {}  queued: {}", r.delivered, r.queued);
            }
        }
        Cmd::Watch { tenant } => {
            let mut stream = c
                .watch_presence(pb::WatchPresenceRequest {
                    tenant,
                    after_sequence: None,
                })
                .await
                .map_err(status)?
                .into_inner();
            while let Some(item) = stream.message().await.map_err(status)? {
                let Some(ev) = item.event else { continue };
                let change = enum_name::<pb::PresenceChange>(ev.change);
                if json {
                    println!(
                        "{}",
                        json!({"change": change, "at_ms": ev.at_ms, "status": ev.status,
                               "session": ev.session.as_ref().map(session_json)})
                    );
                } else {
                    let line = ev.session.as_ref().map(session_line).unwrap_or_default();
                    println!("{change:<14} {line} status={}", ev.status);
                }
            }
        }
    }
    Ok(())
}

fn print_session(json: bool, s: Option<&pb::Session>) {
    let Some(s) = s else { return };
    if json {
        println!("{}", session_json(s));
    } else {
        println!("{}", session_line(s));
    }
}

fn usage_json(u: &pb::TenantUsage) -> serde_json::Value {
    json!({"seats_used": u.seats_used, "seat_limit": u.seat_limit})
}

fn print_usage(json: bool, u: &pb::TenantUsage) {
    if json {
        println!("{}", usage_json(u));
    } else if u.seat_limit == 0 {
        println!("seats:   {} in use, no limit", u.seats_used);
    } else {
        println!("seats:   {} of {} in use", u.seats_used, u.seat_limit);
    }
}
