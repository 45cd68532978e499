//! `turnstile demo`: a broker node and a toy login service in one process,
//! with an agent-desktop page in the browser.
//!
//! It shows how the pieces fit in a contact center: the page signs in
//! through the demo login service ([`login`]), which checks the password and
//! asks the broker for the session **only through the public gRPC API**
//! (`Claim`, `RegisterStations`, `ListStations`, `ListSessions`, `Notify`,
//! `Release`) — exactly what a real login service does. The page then opens the agent's WebSocket
//! with the browser SDK (`clients/js/turnstile.js`, served from here) and
//! shows forced logouts, the connectivity banner, notices and, for the
//! supervisor, live presence.
//!
//! A backend outage can be shown too: `/api/backend` makes the broker tell
//! every socket it cannot vouch for its session, as a node that lost Redis
//! does (the demo runs the embedded registry, which never loses anything).
//!
//! The browser reaches the broker's WebSocket through [`netsim`], a small
//! TCP relay that can cut or stall every connection on request, so a
//! network outage can be shown (and tested) without touching the machine's
//! network.
//!
//! Nothing here is part of the broker: the module lives in the binary and
//! uses the library like any other client would.

mod login;
mod netsim;
mod web;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use turnstile::config::{Config, LogFormat};
use turnstile::pb::session_broker_service_client::SessionBrokerServiceClient;

/// How long shutdown waits for the demo's own connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Flags of `turnstile demo`. Every address may use port 0 (any free port);
/// the bound ones are printed on one stdout line.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// The broker's WebSocket + HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    http: SocketAddr,
    /// The broker's gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:7701")]
    grpc: SocketAddr,
    /// Where the demo login service serves the page and its API.
    #[arg(long, default_value = "127.0.0.1:7780")]
    demo_listen: SocketAddr,
    /// Where the network simulator relays browser WebSockets to the broker.
    #[arg(long, default_value = "127.0.0.1:0")]
    netsim_listen: SocketAddr,
    /// The tenant the demo users belong to.
    #[arg(long, default_value = "demo")]
    tenant: String,
    /// Broker heartbeat (server pings, and the SDK's dead-socket limit is twice it).
    #[arg(long, default_value = "5s")]
    heartbeat: humantime::Duration,
    /// How long a dropped session waits for its client to come back.
    #[arg(long, default_value = "60s")]
    grace: humantime::Duration,
    /// Also stop when stdin closes, so a test harness that dies takes the demo with it.
    #[arg(long)]
    exit_with_stdin: bool,
}

/// Runs the demo until SIGINT/SIGTERM.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let _log = turnstile::telemetry::init_logging(LogFormat::Human);
    let config = Config {
        node: turnstile::session::NodeId::parse("demo").ok(),
        http_listen: args.http,
        grpc_listen: args.grpc,
        heartbeat: args.heartbeat.into(),
        grace: args.grace.into(),
        // A fresh key per run: tokens die with the demo, which is what a demo wants,
        // without the development-key warning meant for `serve`.
        signing_key: Some(random_hex(32)),
        // Claims must name a station of the directory the login service
        // registers (login::LoginService::register_stations).
        strict_stations: Some(vec![turnstile::session::Tenant::parse(&args.tenant)
            .map_err(|e| anyhow::anyhow!("--tenant: {e}"))?]),
        ..Config::default()
    };
    config.validate()?;
    let broker = turnstile::server::start(config)
        .await
        .context("cannot start the broker")?;

    let netsim_listener = TcpListener::bind(args.netsim_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--netsim-listen)", args.netsim_listen))?;
    let netsim_addr = netsim_listener.local_addr()?;
    let web_listener = TcpListener::bind(args.demo_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--demo-listen)", args.demo_listen))?;
    let web_addr = web_listener.local_addr()?;

    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", reachable(broker.grpc_addr)))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
    let broker_api = SessionBrokerServiceClient::new(channel);

    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let netsim = netsim::NetSim::new(reachable(broker.http_addr));
    tracker.spawn(
        netsim
            .clone()
            .serve(netsim_listener, stop.clone(), tracker.clone()),
    );
    let service = login::LoginService::new(&args.tenant, broker_api, netsim_addr)?;
    service
        .register_stations()
        .await
        .context("cannot register the demo's stations in the broker's directory")?;
    tracker.spawn(web::serve(
        web_listener,
        web::App::new(service, netsim, broker.connectivity_switch()),
        stop.clone(),
        tracker.clone(),
    ));

    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "turnstile demo listening demo=http://{web_addr}/ http={} grpc={} netsim={netsim_addr}",
            broker.http_addr, broker.grpc_addr
        )?;
        writeln!(
            out,
            "open http://{web_addr}/ and sign in as ana, bob or carl (agents) or sup (supervisor), password \"demo\""
        )?;
        out.flush()?;
    }

    if args.exit_with_stdin {
        tokio::select! {
            r = crate::wait_for_signal() => r?,
            _ = stdin_closed() => tracing::info!("stdin closed"),
        }
    } else {
        crate::wait_for_signal().await?;
    }
    tracing::info!("stopping the demo");
    // The demo first: its tasks hold the gRPC channel, which would keep the
    // broker's graceful shutdown waiting.
    stop.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("demo connections still open after {SHUTDOWN_GRACE:?}; exiting anyway");
    }
    broker.shutdown().await;
    Ok(())
}

/// An address a local client can connect to: a wildcard listen address
/// (0.0.0.0 / ::) is reached through loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

/// `bytes` random bytes as lowercase hex.
fn random_hex(bytes: usize) -> String {
    use std::fmt::Write as _;
    (0..bytes).fold(String::with_capacity(bytes * 2), |mut s, _| {
        let _ = write!(s, "{:02x}", rand::random::<u8>());
        s
    })
}

/// Resolves when stdin reaches end of file (or fails). The read blocks, so
/// it runs on a plain thread: one in tokio's blocking pool would hold up
/// the runtime's shutdown when the demo stops for another reason.
fn stdin_closed() -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 256];
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    rx
}
