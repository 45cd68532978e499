//! The `turnstile` binary: `serve` runs a node, `ctl` drives one over gRPC,
//! `demo` runs a node with a demo login service and agent page.

mod demo;

/// jemalloc rather than the system allocator: under a claim storm glibc's
/// malloc/free were ~18 % of the broker's CPU (docs/benchmarks.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Serialize;

use turnstile::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "turnstile",
    version,
    about = "Real-time session and presence broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (single node, in-memory registry, no configuration needed).
    Serve(ServeArgs),
    /// Operator CLI over the gRPC API.
    Ctl(turnstile::ctl::CtlArgs),
    /// Run a node plus a demo login service and agent page (see docs/clients.md).
    Demo(demo::DemoArgs),
}

/// Flags of `serve`; each overrides `TURNSTILE_*` env and the TOML file.
#[derive(clap::Args, Serialize)]
struct ServeArgs {
    /// TOML file with settings (see README).
    #[arg(long, env = "TURNSTILE_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// WebSocket + HTTP listen address [default: 127.0.0.1:7700].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    http_listen: Option<SocketAddr>,
    /// gRPC listen address [default: 127.0.0.1:7701].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_listen: Option<SocketAddr>,
    /// This node's name [default: <hostname>-<pid>].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    /// Server ping interval, e.g. 15s.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    heartbeat: Option<String>,
    /// Grace period after a socket is lost, e.g. 60s.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    grace: Option<String>,
    /// How long a claimed session waits for its first socket, e.g. 60s.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    connect_timeout: Option<String>,
    /// HS256 secret for connect tokens (32+ bytes).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    signing_key: Option<String>,
    /// Redis URL(s), comma-separated: join a cluster through Redis.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<String>,
    /// The --redis URLs are seed nodes of a Redis Cluster.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    redis_cluster: bool,
    /// A node silent in Redis this long is declared dead, e.g. 5s.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_ttl: Option<String>,
    /// How often sockets are reconciled with Redis, e.g. 5s.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    reconcile_interval: Option<String>,
    /// Reconnects after SIGTERM are spread over this window, e.g. 2s.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    drain_window: Option<String>,
    /// Log format: human or json.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<LogFormat>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Ctl(args) => runtime.block_on(turnstile::ctl::run(args)),
        Command::Demo(args) => runtime.block_on(demo::run(args)),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref(), &args)?;
    let _log = turnstile::telemetry::init_logging(config.log_format);
    let server = turnstile::server::start(config).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "turnstile listening http={} grpc={} node={}",
            server.http_addr, server.grpc_addr, server.node
        )?;
        out.flush()?;
    }
    wait_for_signal().await?;
    tracing::info!("signal received, draining");
    server.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("cannot listen for SIGINT")?,
    }
    Ok(())
}
