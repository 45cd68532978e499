//! The `turnstile-loadtest` command line.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use turnstile_client::Tls;
use turnstile_loadtest::profile::{parse_duration, Profile};
use turnstile_loadtest::report::Report;
use turnstile_loadtest::scenarios::{self, Target};
use turnstile_loadtest::shard::Shard;
use turnstile_loadtest::{chaos, directory, notices, shift, sys, tenants};

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
    /// gRPC address of a node, HOST:PORT (repeat for several nodes, or give
    /// one load-balanced address).
    #[arg(long, global = true, default_value = "127.0.0.1:7701")]
    grpc: Vec<String>,
    /// WebSocket (HTTP) address of a node, HOST:PORT (repeat for several
    /// nodes, or give one load-balanced address).
    #[arg(long, global = true, default_value = "127.0.0.1:7700")]
    ws: Vec<String>,
    /// PEM CA certificate(s) to trust: speak TLS (`wss://`, gRPC over TLS,
    /// `/metrics` over HTTPS).
    #[arg(long, global = true)]
    ca_file: Option<PathBuf>,
    /// PEM client certificate for mTLS (with --client-key).
    #[arg(long, global = true, requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, global = true, requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// The name the nodes' certificates are checked against (default: the
    /// host of the first --ws address when it is a name).
    #[arg(long, global = true)]
    server_name: Option<String>,
    /// Where the nodes serve /metrics when not on --ws (their
    /// `metrics_listen`, plain HTTP); repeat per node.
    #[arg(long, global = true)]
    metrics: Vec<SocketAddr>,
    /// This generator's slice, I/N: agents, logins and stations numbered
    /// I modulo N. Give every shard of one run the same --run.
    #[arg(long, global = true, default_value = "0/1")]
    shard: Shard,
    /// Login prefix of the run (default: random); shards of one run share it.
    #[arg(long, global = true)]
    run: Option<String>,
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
    /// Write the time-series plot (SVG) here (default: beside --svg, as
    /// NAME-timeline.svg, when the run has a timeline).
    #[arg(long, global = true)]
    timeline_svg: Option<PathBuf>,
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
    /// A whole shift: ramped sign-in, status changes, network blips and
    /// resumes, desk moves, takeovers, notices, ramped sign-out (rates from
    /// --profile; see loadtest/profiles/).
    Shift {
        /// Profile file, TOML or JSON (default: the built-in defaults).
        #[arg(long)]
        profile: Option<PathBuf>,
    },
    /// Churn on three nodes behind Sentinel (a master, a replica, three
    /// sentinels, all started here) while faults are injected one at a
    /// time, then a check of the history the clients saw: one live holder
    /// per login and station, every displaced client told, generations
    /// rising, no accepted notice lost, the final state equal to Redis's.
    Chaos {
        /// The `turnstile` binary the nodes run (default: beside this one).
        #[arg(long)]
        broker: Option<PathBuf>,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value_t = 200)]
        agents: usize,
        #[arg(long, default_value_t = 4)]
        tenants: usize,
        /// Stations per tenant.
        #[arg(long, default_value_t = 40)]
        stations: usize,
        #[arg(long, default_value = "60s", value_parser = humantime_secs)]
        duration: Duration,
        /// Seeds the agents' choices and the faults' order and timing.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Fault kinds, comma-separated: kill9, sigstop, skew, redis-empty,
        /// pubsub-kill, lagging-failover (default: all).
        #[arg(long, value_delimiter = ',')]
        faults: Vec<chaos::faults::Fault>,
        /// Quiet time between faults: random, below this.
        #[arg(long, default_value = "3s", value_parser = humantime_secs)]
        pause: Duration,
        /// How long two live holders of one login or station may overlap.
        #[arg(long, default_value = "5s", value_parser = humantime_secs)]
        overlap_window: Duration,
        /// Write the history here (JSON lines).
        #[arg(long)]
        history: Option<PathBuf>,
        /// Bound on the history's events held in memory.
        #[arg(long, default_value_t = 5_000_000)]
        max_events: usize,
    },
    /// Checks a chaos run's history again (`chaos --history FILE`), e.g.
    /// with another --overlap-window; prints the violations.
    ChaosCheck {
        history: PathBuf,
        #[arg(long, default_value = "5s", value_parser = humantime_secs)]
        overlap_window: Duration,
    },
    /// Merges the JSON reports of several shards (their HDR histograms,
    /// not their percentiles) into one report: table, --json, --svg.
    Merge {
        #[arg(required = true)]
        reports: Vec<PathBuf>,
    },
    /// S registered stations, H of them held: the free ones paged through
    /// P at a time (ListStations free-only), R times: page latency.
    StationDirectory {
        #[arg(long, default_value_t = 10_000)]
        stations: usize,
        #[arg(long, default_value_t = 1_000)]
        held: usize,
        #[arg(long, default_value_t = 500)]
        page_size: u32,
        #[arg(long, default_value_t = 20)]
        rounds: usize,
    },
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

/// `host:port` → an address, IPv4 first (a name like `localhost` may
/// resolve to `::1` before `127.0.0.1`).
fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    let all: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .with_context(|| format!("--ws {addr:?}: expected HOST:PORT"))?
        .collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or(all.first())
        .copied()
        .with_context(|| format!("--ws {addr:?} resolves to no address"))
}

/// The TLS settings, when --ca-file is given.
fn tls(c: &Common) -> anyhow::Result<Option<Tls>> {
    let Some(ca) = &c.ca_file else {
        if c.client_cert.is_some() {
            bail!("--client-cert needs --ca-file (the CA that signed the nodes' certificates)");
        }
        return Ok(None);
    };
    let name = match &c.server_name {
        Some(n) => n.clone(),
        None => {
            let first = c.ws.first().map(String::as_str).unwrap_or_default();
            let host = first.rsplit_once(':').map(|(h, _)| h).unwrap_or(first);
            if host.parse::<IpAddr>().is_ok() || host.is_empty() {
                bail!(
                    "--server-name is needed: the --ws address {first:?} is an IP address, \
                     and the nodes' certificates are checked against a name"
                );
            }
            host.to_string()
        }
    };
    let identity = c.client_cert.as_deref().zip(c.client_key.as_deref());
    Ok(Some(Tls::from_files(ca, identity, &name)?))
}

/// NAME.svg → NAME-timeline.svg.
fn beside(svg: &Path) -> PathBuf {
    let stem = svg.file_stem().unwrap_or_default().to_string_lossy();
    svg.with_file_name(format!("{stem}-timeline.svg"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Scenario::Merge { reports } = &cli.scenario {
        let report = Report::merge_files(reports).map_err(anyhow::Error::msg)?;
        return write(&cli.common, report);
    }
    if let Scenario::ChaosCheck {
        history,
        overlap_window,
    } = &cli.scenario
    {
        let events = chaos::history::read_jsonl(history).map_err(anyhow::Error::msg)?;
        let rules = chaos::checker::Rules {
            overlap_window: overlap_window.as_micros() as u64,
        };
        let v = chaos::checker::check(&events, &rules);
        for (k, n) in &v.counts {
            println!("  {k:<30} {n}");
        }
        println!(
            "  longest overlap {:.1} ms: {}",
            v.longest_overlap as f64 / 1000.0,
            v.longest_overlap_at
        );
        for m in &v.violations {
            println!("VIOLATION {m}");
        }
        println!("{} violation(s)", v.violations.len());
        std::process::exit(i32::from(!v.violations.is_empty()));
    }
    let nofile = sys::raise_nofile();
    if let Scenario::Chaos {
        broker,
        nodes,
        agents,
        tenants,
        stations,
        duration,
        seed,
        faults,
        pause,
        overlap_window,
        history,
        max_events,
    } = &cli.scenario
    {
        let broker = match broker {
            Some(b) => b.clone(),
            None => std::env::current_exe()
                .context("finding this binary")?
                .with_file_name("turnstile"),
        };
        let plan = chaos::Plan {
            broker,
            nodes: *nodes,
            agents: *agents,
            tenants: *tenants,
            stations: *stations,
            duration: *duration,
            seed: *seed,
            faults: if faults.is_empty() {
                chaos::faults::Fault::ALL.to_vec()
            } else {
                faults.clone()
            },
            pause: *pause,
            overlap_window: *overlap_window,
            history: history.clone(),
            max_events: *max_events,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?;
        let report = rt
            .block_on(chaos::chaos(&plan))
            .map_err(anyhow::Error::msg)?;
        return write(&cli.common, report);
    }
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
        ws: c.ws.iter().map(|a| resolve(a)).collect::<Result<_, _>>()?,
        tenant: c.tenant.clone(),
        source_ips: c.source_ips.clone(),
        api_key: c.api_key.clone(),
        channels_per_node: c.channels,
        progress: !c.quiet,
        run: c
            .run
            .clone()
            .unwrap_or_else(|| format!("r{:08x}", rand::random::<u32>())),
        tls: tls(c)?,
        metrics: c.metrics.clone(),
        shard: c.shard,
    };
    let profile = match &cli.scenario {
        Scenario::Shift { profile: Some(p) } => Profile::load(p).map_err(anyhow::Error::msg)?,
        _ => Profile::default(),
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
            Scenario::Shift { .. } => shift::shift(&target, &profile).await,
            Scenario::Merge { .. } => unreachable!("merged above"),
            Scenario::Chaos { .. } | Scenario::ChaosCheck { .. } => {
                unreachable!("run above")
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
            Scenario::StationDirectory {
                stations,
                held,
                page_size,
                rounds,
            } => {
                let plan = directory::Plan {
                    stations,
                    held,
                    page_size,
                    rounds,
                };
                directory::station_directory(&target, &plan).await
            }
        }
    });
    report
        .machine
        .insert("generator_nofile_limit".into(), nofile as f64);
    write(c, report)
}

/// Prints the table, writes the JSON and the plots; exit 1 on a broken
/// invariant.
fn write(c: &Common, report: Report) -> anyhow::Result<()> {
    println!("{}", report.table());
    if let Some(p) = &c.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &c.svg {
        std::fs::write(p, report.svg()).with_context(|| format!("writing {}", p.display()))?;
    }
    let timeline = c.timeline_svg.clone().or(c.svg.as_deref().map(beside));
    if let (Some(p), Some(svg)) = (timeline, report.timeline_svg()) {
        std::fs::write(&p, svg).with_context(|| format!("writing {}", p.display()))?;
    }
    if !report.violations.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
