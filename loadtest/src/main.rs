//! The `turnstile-loadtest` command line.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use turnstile_loadtest::report::Report;
use turnstile_loadtest::scenarios::{self, Target};
use turnstile_loadtest::{notices, sys, tenants};

/// jemalloc, as in the broker: the generator shares the machine's cores with
/// what it measures, so its own allocator time is taken from the broker.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "turnstile-loadtest",
    version,
    about = "Drive real agents against turnstile and measure"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args)]
struct Common {
    /// gRPC address of a node (repeat for several nodes).
    #[arg(long, global = true, default_value = "127.0.0.1:7701")]
    grpc: Vec<String>,
    /// WebSocket address of a node (repeat for several nodes).
    #[arg(long, global = true, default_value = "127.0.0.1:7700")]
    ws: Vec<SocketAddr>,
    #[arg(long, global = true, default_value = "load")]
    tenant: String,
    /// Source addresses for client sockets, e.g. 127.0.0.2,127.0.0.3.
    #[arg(long, global = true, value_delimiter = ',')]
    source_ips: Vec<IpAddr>,
    /// API key for the gRPC API.
    #[arg(long, global = true, env = "TURNSTILE_LOADTEST_API_KEY")]
    api_key: Option<String>,
    /// gRPC connections per node.
    #[arg(long, global = true, default_value_t = 4)]
    channels: usize,
    /// Write the JSON report here.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Write the latency plot (SVG) here.
    #[arg(long, global = true)]
    svg: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, global = true)]
    quiet: bool,
    /// Worker threads of the generator. Default: 1 for the one-in-flight
    /// latency probes (`claim --in-flight 1`, `takeover --concurrency 1`),
    /// where a multi-threaded client would add its own cross-thread
    /// wake-ups to every measured round trip; else one per core.
    #[arg(long, global = true)]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum Scenario {
    /// Claims of distinct logins, N in flight: latency and claims/s.
    Claim {
        #[arg(long, default_value_t = 20_000)]
        n: usize,
        #[arg(long, default_value_t = 1)]
        in_flight: usize,
    },
    /// N agents sign in (claim + connect + welcome) at concurrency C.
    Storm {
        #[arg(long, default_value_t = 1_000)]
        n: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// N connected sessions held for T: broker KiB per session and CPU.
    Idle {
        #[arg(long, default_value_t = 1_000)]
        n: usize,
        /// How long to hold, e.g. 30s.
        #[arg(long, default_value = "30s", value_parser = humantime_secs)]
        hold: Duration,
        /// The broker's pid, to read its memory and CPU from /proc (default:
        /// the one local `turnstile serve` when one node is targeted; else
        /// every node's /metrics).
        #[arg(long)]
        broker_pid: Option<u32>,
    },
    /// K logins taken over by a second claim: claim sent → forced_logout.
    Takeover {
        #[arg(long, default_value_t = 1_000)]
        k: usize,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// A storm: sign in all K first, then take them over at this many
        /// per second (open loop, at most --concurrency in flight).
        #[arg(long)]
        rate: Option<f64>,
    },
    /// M agents race for S < M stations: one holder per station.
    Stations {
        #[arg(long, default_value_t = 200)]
        m: usize,
        #[arg(long, default_value_t = 50)]
        s: usize,
    },
    /// N tenants × M PENDING sessions held idle for T: lease refresh
    /// health, node CPU, Redis SLOWLOG (run the nodes with a connect
    /// timeout longer than the hold).
    Tenants {
        #[arg(long, default_value_t = 10_000)]
        tenants: usize,
        #[arg(long, default_value_t = 2)]
        sessions: usize,
        /// How long to hold, e.g. 5m.
        #[arg(long, default_value = "5m", value_parser = humantime_secs)]
        hold: Duration,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// The Redis the nodes share (URL), for its SLOWLOG.
        #[arg(long)]
        redis: Option<String>,
    },
    /// N connected sessions get K tenant-wide notices while a claim loop
    /// runs in another tenant: delivery, claim p99, node RSS, SLOWLOG.
    NoticeFanout {
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        #[arg(long, default_value_t = 1)]
        notices: usize,
        #[arg(long, default_value_t = 1024)]
        text_bytes: usize,
        #[arg(long, default_value_t = 3072)]
        data_bytes: usize,
        #[arg(long, default_value_t = 4)]
        claimers: usize,
        #[arg(long, default_value = "60s", value_parser = humantime_secs)]
        deadline: Duration,
        /// The Redis the nodes share (URL), for its SLOWLOG.
        #[arg(long)]
        redis: Option<String>,
    },
    /// Random connect / drop / resume / logout / takeover for T.
    Churn {
        #[arg(long, default_value_t = 100)]
        agents: usize,
        #[arg(long, default_value = "30s", value_parser = humantime_secs)]
        duration: Duration,
    },
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num
        .parse()
        .map_err(|_| format!("not a duration: {s} (e.g. 30s, 500ms, 2m)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit in {s}: use ms, s or m")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let nofile = sys::raise_nofile();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    let probe = matches!(
        cli.scenario,
        Scenario::Claim { in_flight: 1, .. }
            | Scenario::Takeover {
                concurrency: 1,
                rate: None,
                ..
            }
    );
    match cli.common.threads {
        Some(n) => rt.worker_threads(n.max(1)),
        None if probe => rt.worker_threads(1),
        None => &mut rt,
    };
    let rt = rt.enable_all().build().context("starting the runtime")?;
    let c = &cli.common;
    let target = Target {
        grpc: c.grpc.clone(),
        ws: c.ws.clone(),
        tenant: c.tenant.clone(),
        source_ips: c.source_ips.clone(),
        api_key: c.api_key.clone(),
        channels_per_node: c.channels,
        progress: !c.quiet,
        run: format!("r{:08x}", rand::random::<u32>()),
    };
    let sockets_needed = match &cli.scenario {
        Scenario::Storm { n, .. } | Scenario::Idle { n, .. } => *n as u64,
        Scenario::NoticeFanout { sessions, .. } => *sessions as u64,
        Scenario::Takeover {
            k, rate: Some(_), ..
        } => *k as u64,
        _ => 0,
    };
    if sockets_needed + 64 > nofile {
        eprintln!(
            "warning: {sockets_needed} sockets need more than this process's open-file limit ({nofile}); \
             run several generator processes (each with its own --source-ips)"
        );
    }
    let mut report: Report = rt.block_on(async {
        match cli.scenario {
            Scenario::Claim { n, in_flight } => scenarios::claim(&target, n, in_flight).await,
            Scenario::Storm { n, concurrency } => scenarios::storm(&target, n, concurrency).await,
            Scenario::Idle {
                n,
                hold,
                broker_pid,
            } => scenarios::idle(&target, n, hold, broker_pid).await,
            Scenario::Takeover {
                k,
                concurrency,
                rate: Some(rate),
            } => scenarios::takeover_storm(&target, k, concurrency, rate).await,
            Scenario::Takeover {
                k,
                concurrency,
                rate: None,
            } => scenarios::takeover(&target, k, concurrency).await,
            Scenario::Stations { m, s } => scenarios::stations(&target, m, s).await,
            Scenario::Churn { agents, duration } => {
                scenarios::churn(&target, agents, duration).await
            }
            Scenario::NoticeFanout {
                sessions,
                notices,
                text_bytes,
                data_bytes,
                claimers,
                deadline,
                redis,
            } => {
                let plan = notices::Plan {
                    sessions,
                    notices,
                    text_bytes,
                    data_bytes,
                    claimers,
                    deadline,
                    redis,
                };
                notices::notice_fanout(&target, &plan).await
            }
            Scenario::Tenants {
                tenants,
                sessions,
                hold,
                concurrency,
                redis,
            } => {
                let plan = tenants::Plan {
                    tenants,
                    sessions,
                    hold,
                    concurrency,
                    redis,
                };
                tenants::tenants(&target, &plan).await
            }
        }
    });
    report
        .machine
        .insert("generator_nofile_limit".into(), nofile as f64);
    println!("{}", report.table());
    if let Some(p) = &c.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &c.svg {
        std::fs::write(p, report.svg()).with_context(|| format!("writing {}", p.display()))?;
    }
    if !report.violations.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
