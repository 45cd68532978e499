//! The `turnstile` binary: `serve` runs a node, `ctl` drives one over gRPC,
//! `demo` runs a node with a demo login service and agent page.

mod demo;

/// jemalloc rather than the system allocator: under a claim storm glibc's
/// malloc/free were ~18 % of the broker's CPU (docs/benchmarks.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use turnstile::config::{Config, Flags};

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

/// Flags of `serve`: the file, then one flag per setting (made from
/// `turnstile::config::settings::SETTINGS`), each overriding `TURNSTILE_*`
/// env and the file.
#[derive(clap::Args)]
struct ServeArgs {
    /// TOML file with settings (see docs/operations.md).
    #[arg(long, env = "TURNSTILE_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Flags,
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
    let config = Config::load(args.config.as_deref(), args.settings)?;
    let _log = turnstile::telemetry::init_logging(config.log_format);
    let server = turnstile::server::start(config).await?;
    {
        let mut out = std::io::stdout().lock();
        write!(
            out,
            "turnstile listening http={} grpc={} node={}",
            server.http_addr, server.grpc_addr, server.node
        )?;
        match server.metrics_addr {
            Some(addr) => writeln!(out, " metrics={addr}")?,
            None => writeln!(out)?,
        }
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
