//! The scenarios. Each drives real agents (gRPC claims, WebSockets) and
//! returns a [`Report`]; none asserts a speed — they measure.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::Mutex;
use turnstile_client::pb::{self, ClaimOutcome, ConflictPolicy};
use turnstile_client::{AgentSocket, Broker, ConnectOptions, Error, ServerFrame, Tls};

use crate::probe::Probe;
use crate::report::{Latency, Report};
use crate::shard::Shard;
use crate::sys;

/// Where the load goes and how the generator behaves.
#[derive(Clone, Debug, Default)]
pub struct Target {
    /// gRPC addresses of the nodes (claims go round-robin).
    pub grpc: Vec<String>,
    /// WebSocket addresses of the nodes (sockets go round-robin).
    pub ws: Vec<SocketAddr>,
    pub tenant: String,
    /// Source addresses to spread client sockets over (empty: the kernel's choice).
    pub source_ips: Vec<IpAddr>,
    pub api_key: Option<String>,
    /// gRPC channels per node (HTTP/2 connections to spread streams over).
    pub channels_per_node: usize,
    pub progress: bool,
    /// Login prefix of this run, so runs never collide (shards of one run
    /// share it).
    pub run: String,
    /// TLS for both `wss://` and gRPC (none: plain `ws://` and `http://`).
    pub tls: Option<Tls>,
    /// Where the nodes' `/metrics` are (empty: on the `ws` addresses).
    pub metrics: Vec<SocketAddr>,
    /// This generator's slice of the logins and stations.
    pub shard: Shard,
}

impl Target {
    fn opts(&self, i: usize) -> ConnectOptions {
        ConnectOptions {
            bind_ip: (!self.source_ips.is_empty())
                .then(|| self.source_ips[i % self.source_ips.len()]),
            timeout: Some(Duration::from_secs(10)),
            tls: self.tls.clone(),
        }
    }

    /// Where to read the nodes' memory and CPU, unless a pid is given.
    pub fn probe(&self, pid: Option<u32>) -> Probe {
        if self.metrics.is_empty() {
            Probe::choose(pid, &self.ws, self.tls.clone())
        } else {
            Probe::choose(pid, &self.metrics, None)
        }
    }

    /// The nodes' `/metrics` addresses and the TLS to read them with.
    pub(crate) fn metrics_nodes(&self) -> (Vec<SocketAddr>, Option<Tls>) {
        if self.metrics.is_empty() {
            (self.ws.clone(), self.tls.clone())
        } else {
            (self.metrics.clone(), None)
        }
    }

    fn ws_addr(&self, i: usize) -> SocketAddr {
        self.ws[i % self.ws.len()]
    }

    /// One client per channel, `channels_per_node` per node.
    pub(crate) async fn brokers(&self) -> Result<Vec<Broker>, Error> {
        let mut out = Vec::new();
        for addr in &self.grpc {
            for _ in 0..self.channels_per_node.max(1) {
                let mut b = Broker::connect_with(addr, self.tls.as_ref()).await?;
                if let Some(k) = &self.api_key {
                    b = b.with_api_key(k.clone());
                }
                out.push(b);
            }
        }
        Ok(out)
    }

    fn claim_req(&self, login: &str, station: &str, policy: ConflictPolicy) -> pb::ClaimRequest {
        pb::ClaimRequest {
            tenant: self.tenant.clone(),
            login: login.into(),
            station: station.into(),
            client: "loadtest".into(),
            role: "agent".into(),
            on_conflict: policy as i32,
            ..Default::default()
        }
    }

    /// Sends the common parameters to the report.
    pub(crate) fn describe(&self, report: &mut Report) {
        report.param("nodes", self.grpc.len());
        report.param("tls", self.tls.is_some());
        report.param("run", &self.run);
        if !self.shard.is_whole() {
            report.param("shard", self.shard.to_string());
        }
    }

    pub(crate) fn bar(&self, n: u64, what: &str) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(n);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec})",
        ) {
            bar.set_style(style);
        }
        bar.set_message(what.to_string());
        bar
    }
}

/// The error kind for the report; `local_*` are the generator's own limits.
pub fn classify(e: &Error) -> String {
    fn io(e: &std::io::Error) -> String {
        match e.raw_os_error() {
            Some(24) => "local_emfile (too many open files in the generator)".into(),
            Some(99) => "local_eaddrnotavail (out of source ports: add --source-ips)".into(),
            Some(111) => "connect_refused".into(),
            _ => format!("io_{:?}", e.kind()).to_lowercase(),
        }
    }
    use turnstile_client::tungstenite::Error as WsError;
    match e {
        Error::Io(e) => io(e),
        Error::WebSocket(WsError::Io(e)) => io(e),
        Error::WebSocket(WsError::Http(r)) => format!("ws_http_{}", r.status().as_u16()),
        Error::WebSocket(_) => "ws_protocol".into(),
        Error::Status(s) => format!("grpc_{:?}", s.code()).to_lowercase(),
        Error::Connect { .. } => "grpc_connect".into(),
        Error::Protocol(m) => format!("protocol: {}", m.chars().take(60).collect::<String>()),
        Error::Timeout(what) => format!("timeout_{}", what.replace(' ', "_")),
        Error::Tls(_) => "tls".into(),
    }
}

pub(crate) fn finish(
    report: &mut Report,
    started: Instant,
    cpu0: Option<Duration>,
    threads: usize,
) {
    let wall = started.elapsed().as_secs_f64();
    report.wall_seconds = wall;
    if let (Some(c0), Some(c1)) = (cpu0, sys::cpu_time("self")) {
        let cores = (c1 - c0).as_secs_f64() / wall.max(1e-9);
        report.machine.insert("generator_cpu_cores".into(), cores);
        report
            .machine
            .insert("generator_threads".into(), threads as f64);
        if cores > 0.9 * threads as f64 {
            report.notes.push(format!(
                "the load generator used {cores:.2} of its {threads} threads' cores: it, not the broker, may be the bottleneck"
            ));
        }
    }
}

/// The generator's worker threads (`--threads`, or its default).
pub(crate) fn threads() -> usize {
    tokio::runtime::Handle::current().metrics().num_workers()
}

/// `claim`: claims of distinct logins, `in_flight` at a time.
pub async fn claim(t: &Target, n: usize, in_flight: usize) -> Report {
    let mut report = Report::new("claim");
    report.param("n", n);
    report.param("in_flight", in_flight);
    t.describe(&mut report);
    let brokers = match t.brokers().await {
        Ok(b) => b,
        Err(e) => {
            report.error(&classify(&e));
            return report;
        }
    };
    let mine = Arc::new(t.shard.indices(n));
    let next = Arc::new(AtomicUsize::new(0));
    let bar = t.bar(mine.len() as u64, "claims");
    let cpu0 = sys::cpu_time("self");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..in_flight.max(1) {
        let mut b = brokers[w % brokers.len()].clone();
        let (next, mine) = (next.clone(), mine.clone());
        let t = t.clone();
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Latency::default();
            let mut errors = Vec::new();
            let mut granted = 0u64;
            while let Some(&i) = mine.get(next.fetch_add(1, Ordering::Relaxed)) {
                let req = t.claim_req(&format!("{}-c{i}", t.run), "", ConflictPolicy::Reject);
                let sent = Instant::now();
                match b.claim(req).await {
                    Ok(r) => {
                        lat.record(sent.elapsed());
                        if r.outcome() == ClaimOutcome::Granted {
                            granted += 1;
                        }
                    }
                    Err(e) => errors.push(classify(&e)),
                }
                bar.inc(1);
            }
            (lat, errors, granted)
        }));
    }
    let mut lat = Latency::default();
    for task in tasks {
        if let Ok((l, errors, granted)) = task.await {
            lat.merge(&l);
            report.count("granted", granted);
            for e in errors {
                report.error(&e);
            }
        }
    }
    bar.finish_and_clear();
    finish(&mut report, started, cpu0, threads());
    report.latency("claim", &lat);
    report.rates.insert(
        "claims".into(),
        lat.count() as f64 / report.wall_seconds.max(1e-9),
    );
    report
}

/// One signed-in agent: its socket and what the sign-in took.
pub(crate) struct SignedIn {
    pub(crate) socket: AgentSocket,
    login: String,
    /// Index of the node its socket is on (`--ws`).
    node: usize,
    pub(crate) session_id: String,
    token: String,
}

async fn sign_in(
    t: &Target,
    b: &mut Broker,
    login: &str,
    station: &str,
    i: usize,
    lat: &mut [Latency; 3],
) -> Result<SignedIn, Error> {
    let start = Instant::now();
    let r = b
        .claim(t.claim_req(login, station, ConflictPolicy::Takeover))
        .await?;
    lat[0].record(start.elapsed());
    if r.outcome() != ClaimOutcome::Granted {
        return Err(Error::Protocol(format!("claim answered {:?}", r.outcome())));
    }
    let session_id = r.session.map(|s| s.session_id).unwrap_or_default();
    let connect = Instant::now();
    let mut socket = AgentSocket::connect(t.ws_addr(i), &r.token, &t.opts(i)).await?;
    match socket.next_frame_within(Duration::from_secs(10)).await? {
        ServerFrame::Welcome { .. } => {}
        other => return Err(Error::Protocol(format!("expected welcome, got {other:?}"))),
    }
    lat[1].record(connect.elapsed());
    lat[2].record(start.elapsed());
    Ok(SignedIn {
        socket,
        login: login.to_string(),
        node: i % t.ws.len(),
        session_id,
        token: r.token,
    })
}

/// Signs in `n` agents at `concurrency`; returns the sockets and records
/// latencies (claim, connect→welcome, sign-in) and errors.
pub(crate) async fn sign_in_many(
    t: &Target,
    n: usize,
    concurrency: usize,
    report: &mut Report,
    what: &str,
) -> Vec<SignedIn> {
    let brokers = match t.brokers().await {
        Ok(b) => b,
        Err(e) => {
            report.error(&classify(&e));
            return Vec::new();
        }
    };
    let mine = Arc::new(t.shard.indices(n));
    let next = Arc::new(AtomicUsize::new(0));
    let held = Arc::new(Mutex::new(Vec::with_capacity(mine.len())));
    let bar = t.bar(mine.len() as u64, what);
    let mut tasks = Vec::new();
    for w in 0..concurrency.max(1) {
        let mut b = brokers[w % brokers.len()].clone();
        let (next, held, t, bar) = (next.clone(), held.clone(), t.clone(), bar.clone());
        let mine = mine.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat: [Latency; 3] = Default::default();
            let mut errors = Vec::new();
            while let Some(&i) = mine.get(next.fetch_add(1, Ordering::Relaxed)) {
                match sign_in(&t, &mut b, &format!("{}-a{i}", t.run), "", i, &mut lat).await {
                    Ok(s) => held.lock().await.push(s),
                    Err(e) => errors.push(classify(&e)),
                }
                bar.inc(1);
            }
            (lat, errors)
        }));
    }
    let mut lat: [Latency; 3] = Default::default();
    for task in tasks {
        if let Ok((l, errors)) = task.await {
            for (a, b) in lat.iter_mut().zip(l.iter()) {
                a.merge(b);
            }
            for e in errors {
                report.error(&e);
            }
        }
    }
    bar.finish_and_clear();
    report.latency("claim", &lat[0]);
    report.latency("connect_to_welcome", &lat[1]);
    report.latency("sign_in", &lat[2]);
    let mut held = held.lock().await;
    std::mem::take(&mut *held)
}

/// `storm`: `n` agents sign in (claim + connect + welcome) at `concurrency`.
pub async fn storm(t: &Target, n: usize, concurrency: usize) -> Report {
    let mut report = Report::new("storm");
    report.param("n", n);
    report.param("concurrency", concurrency);
    t.describe(&mut report);
    let cpu0 = sys::cpu_time("self");
    let started = Instant::now();
    let held = sign_in_many(t, n, concurrency, &mut report, "sign-ins").await;
    finish(&mut report, started, cpu0, threads());
    report.count("signed_in", held.len() as u64);
    let secs = report.wall_seconds.max(1e-9);
    report
        .rates
        .insert("sign_ins".into(), held.len() as f64 / secs);
    report.rates.insert(
        "claims".into(),
        report.latencies.get("claim").map(|p| p.count).unwrap_or(0) as f64 / secs,
    );
    release_all(
        t,
        held.into_iter().map(|s| (s.session_id, s.socket)).collect(),
    )
    .await;
    report
}

/// Logs the agents out (so a run leaves nothing behind) and closes sockets.
pub(crate) async fn release_all(t: &Target, held: Vec<(String, AgentSocket)>) {
    let Ok(brokers) = t.brokers().await else {
        return;
    };
    let held = Arc::new(Mutex::new(held));
    let mut tasks = Vec::new();
    for w in 0..64usize {
        let mut b = brokers[w % brokers.len()].clone();
        let (held, tenant) = (held.clone(), t.tenant.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some((session_id, socket)) = held.lock().await.pop() else {
                    break;
                };
                let _ = b.release(&tenant, &session_id).await;
                drop(socket);
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// `idle`: `n` connected sessions held for `hold`; broker memory and CPU.
pub async fn idle(t: &Target, n: usize, hold: Duration, broker_pid: Option<u32>) -> Report {
    let mut report = Report::new("idle");
    report.param("n", n);
    report.param("hold_s", hold.as_secs_f64());
    t.describe(&mut report);
    let probe = t.probe(broker_pid);
    report.notes.push(probe.describe());
    let mut unmeasured = None;
    let mut sample = async |probe: &Probe| match probe.sample().await {
        Ok(s) => Some(s),
        Err(e) => {
            unmeasured.get_or_insert(e);
            None
        }
    };
    let before = sample(&probe).await;
    let cpu0 = sys::cpu_time("self");
    let started = Instant::now();
    let held = sign_in_many(t, n, 256, &mut report, "connects").await;
    report.count("connected", held.len() as u64);
    // Every socket keeps reading (answering heartbeats) while held.
    let stop = Arc::new(tokio::sync::Notify::new());
    let unexpected = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    let mut ids = Vec::new();
    for mut s in held {
        ids.push(s.session_id.clone());
        let (stop, unexpected) = (stop.clone(), unexpected.clone());
        readers.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.notified() => return s.socket,
                    f = s.socket.next_frame() => match f {
                        Ok(ServerFrame::Pong(_)) => {}
                        _ => { unexpected.fetch_add(1, Ordering::Relaxed); return s.socket; }
                    }
                }
            }
        }));
    }
    let connected = sample(&probe).await;
    let hold_start = Instant::now();
    tokio::time::sleep(hold).await;
    let held_for = hold_start.elapsed().as_secs_f64();
    let after = sample(&probe).await;
    if let Some(why) = unmeasured {
        report
            .notes
            .push(format!("broker memory and CPU not measured: {why}"));
    }
    stop.notify_waiters();
    let mut sockets = Vec::new();
    for r in readers {
        if let Ok(s) = r.await {
            sockets.push(s);
        }
    }
    let lost = unexpected.load(Ordering::Relaxed);
    if lost > 0 {
        report.violations.push(format!(
            "{lost} idle sockets were closed or sent something unexpected during the hold"
        ));
    }
    if let (Some(a), Some(b), Some(c)) = (before, connected, after) {
        let (a, b, c) = (a.rss_kib, b.rss_kib, c.rss_kib);
        let sessions = ids.len().max(1) as f64;
        report
            .machine
            .insert("broker_rss_before_kib".into(), a as f64);
        report
            .machine
            .insert("broker_rss_connected_kib".into(), b as f64);
        report
            .machine
            .insert("broker_rss_after_hold_kib".into(), c as f64);
        report.machine.insert(
            "broker_kib_per_session".into(),
            (c.saturating_sub(a)) as f64 / sessions,
        );
    }
    if let (Some(a), Some(b)) = (connected, after) {
        report.machine.insert(
            "broker_cpu_percent_of_one_core_during_hold".into(),
            100.0 * b.cpu.saturating_sub(a.cpu).as_secs_f64() / held_for.max(1e-9),
        );
    }
    finish(&mut report, started, cpu0, threads());
    release_all(t, ids.into_iter().zip(sockets).collect()).await;
    report
}

/// `takeover`: `k` logins signed in, then taken over by a second claim
/// (on the next node when there are several); claim sent → old socket's
/// `forced_logout` received.
pub async fn takeover(t: &Target, k: usize, concurrency: usize) -> Report {
    let mut report = Report::new("takeover");
    report.param("k", k);
    report.param("concurrency", concurrency);
    t.describe(&mut report);
    let Ok(brokers) = t.brokers().await else {
        report.error("grpc_connect");
        return report;
    };
    let per_node = t.channels_per_node.max(1);
    let mine = Arc::new(t.shard.indices(k));
    let next = Arc::new(AtomicUsize::new(0));
    let bar = t.bar(mine.len() as u64, "takeovers");
    let cpu0 = sys::cpu_time("self");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency.max(1) {
        let nodes = t.grpc.len();
        let mut first = brokers[(w % nodes) * per_node + w % per_node].clone();
        let mut second = brokers[((w + 1) % nodes) * per_node + w % per_node].clone();
        let (next, t, bar, mine) = (next.clone(), t.clone(), bar.clone(), mine.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat: [Latency; 3] = Default::default();
            let mut takeover = Latency::default();
            let mut claim2 = Latency::default();
            let mut errors = Vec::new();
            let mut violations = Vec::new();
            while let Some(&i) = mine.get(next.fetch_add(1, Ordering::Relaxed)) {
                let login = format!("{}-t{i}", t.run);
                let mut old = match sign_in(&t, &mut first, &login, "", i, &mut lat).await {
                    Ok(s) => s,
                    Err(e) => {
                        errors.push(classify(&e));
                        continue;
                    }
                };
                let reader = tokio::spawn(async move {
                    let f = old.socket.next_frame_within(Duration::from_secs(10)).await;
                    (f, Instant::now())
                });
                let sent = Instant::now();
                match second.claim(t.claim_req(&login, "", ConflictPolicy::Takeover)).await {
                    Ok(r) if r.outcome() == ClaimOutcome::Granted => {
                        claim2.record(sent.elapsed());
                        let new_id = r.session.map(|s| s.session_id).unwrap_or_default();
                        match reader.await {
                            Ok((Ok(ServerFrame::ForcedLogout { reason, .. }), at)) if reason == "superseded" => {
                                takeover.record(at.duration_since(sent));
                            }
                            Ok((other, _)) => violations.push(format!(
                                "{login}: displaced socket got {other:?} instead of forced_logout superseded"
                            )),
                            Err(_) => errors.push("reader_task".into()),
                        }
                        let _ = second.release(&t.tenant, &new_id).await;
                    }
                    Ok(r) => violations.push(format!("{login}: takeover answered {:?}", r.outcome())),
                    Err(e) => errors.push(classify(&e)),
                }
                bar.inc(1);
            }
            (takeover, claim2, errors, violations)
        }));
    }
    let (mut take, mut claim2) = (Latency::default(), Latency::default());
    for task in tasks {
        if let Ok((a, b, errors, violations)) = task.await {
            take.merge(&a);
            claim2.merge(&b);
            for e in errors {
                report.error(&e);
            }
            report.violations.extend(violations);
        }
    }
    bar.finish_and_clear();
    finish(&mut report, started, cpu0, threads());
    record_takeovers(&mut report, &take, &claim2);
    report
}

/// Records what both takeover scenarios measure; returns takeovers/s.
fn record_takeovers(report: &mut Report, take: &Latency, claim2: &Latency) -> f64 {
    report.latency("takeover_claim", claim2);
    report.latency("claim_to_forced_logout", take);
    report.count("takeovers", take.count());
    let rate = take.count() as f64 / report.wall_seconds.max(1e-9);
    report.rates.insert("takeovers".into(), rate);
    rate
}

/// `takeover --rate R`: a takeover storm. Signs in `k` agents first (not
/// measured as takeovers), then takes every one over on the next node at
/// `rate` per second (open loop: each takeover starts at its scheduled
/// time, at most `concurrency` in flight), measuring claim sent → the old
/// socket's `forced_logout`.
pub async fn takeover_storm(t: &Target, k: usize, concurrency: usize, rate: f64) -> Report {
    let mut report = Report::new("takeover");
    report.param("k", k);
    report.param("concurrency", concurrency);
    t.describe(&mut report);
    report.param("offered_rate", rate);
    let held = sign_in_many(t, k, concurrency, &mut report, "sign-ins").await;
    let Ok(brokers) = t.brokers().await else {
        report.error("grpc_connect");
        return report;
    };
    let (nodes, per_node) = (t.grpc.len(), t.channels_per_node.max(1));
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let bar = t.bar(held.len() as u64, "takeovers");
    let cpu0 = sys::cpu_time("self");
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(held.len());
    for (i, old) in held.into_iter().enumerate() {
        // The claim goes to the node after the one holding the socket.
        let mut second = brokers[((old.node + 1) % nodes) * per_node + i % per_node].clone();
        let at = started + Duration::from_secs_f64(i as f64 / rate.max(1e-9));
        let (gate, t, bar) = (gate.clone(), t.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let Ok(_permit) = gate.acquire().await else {
                return Err("gate".to_string());
            };
            let SignedIn {
                mut socket, login, ..
            } = old;
            let sent = Instant::now();
            let reader = async {
                let f = socket.next_frame_within(Duration::from_secs(10)).await;
                (f, Instant::now())
            };
            let claim = second.claim(t.claim_req(&login, "", ConflictPolicy::Takeover));
            let ((frame, seen), reply) = tokio::join!(reader, claim);
            bar.inc(1);
            let new_id = match reply {
                Ok(r) if r.outcome() == ClaimOutcome::Granted => {
                    r.session.map(|s| s.session_id).unwrap_or_default()
                }
                Ok(r) => return Ok(Err(format!("{login}: takeover answered {:?}", r.outcome()))),
                Err(e) => return Err(classify(&e)),
            };
            let claimed = sent.elapsed();
            let _ = second.release(&t.tenant, &new_id).await;
            match frame {
                Ok(ServerFrame::ForcedLogout { reason, .. }) if reason == "superseded" => {
                    Ok(Ok((seen.duration_since(sent), claimed)))
                }
                other => Ok(Err(format!(
                    "{login}: displaced socket got {other:?} instead of forced_logout superseded"
                ))),
            }
        }));
    }
    let (mut take, mut claim2) = (Latency::default(), Latency::default());
    for task in tasks {
        match task.await {
            Ok(Ok(Ok((a, b)))) => {
                take.record(a);
                claim2.record(b);
            }
            Ok(Ok(Err(violation))) => report.violations.push(violation),
            Ok(Err(e)) => report.error(&e),
            Err(_) => report.error("task"),
        }
    }
    bar.finish_and_clear();
    finish(&mut report, started, cpu0, threads());
    let achieved = record_takeovers(&mut report, &take, &claim2);
    if achieved < 0.95 * rate {
        report.notes.push(format!(
            "offered {rate:.0} takeovers/s, achieved {achieved:.0}/s: the broker(s) and generator on this machine could not keep up, so the latencies include queueing"
        ));
    }
    report
}

/// `stations`: `m` agents race for `s` stations; exactly one holder each.
pub async fn stations(t: &Target, m: usize, s: usize) -> Report {
    let mut report = Report::new("stations");
    report.param("agents", m);
    report.param("stations", s);
    t.describe(&mut report);
    let Ok(brokers) = t.brokers().await else {
        report.error("grpc_connect");
        return report;
    };
    let cpu0 = sys::cpu_time("self");
    let started = Instant::now();
    // A shard owns stations j ≡ I (mod N) and the agents racing for them.
    let agents: Vec<usize> = (0..m).filter(|i| t.shard.owns(i % s.max(1))).collect();
    let gate = Arc::new(tokio::sync::Barrier::new(agents.len() + 1));
    let mut tasks = Vec::new();
    for i in agents {
        let mut b = brokers[i % brokers.len()].clone();
        let (gate, t) = (gate.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let station = format!("{}-st{}", t.run, i % s);
            let req = t.claim_req(
                &format!("{}-s{i}", t.run),
                &station,
                ConflictPolicy::Takeover,
            );
            gate.wait().await;
            let sent = Instant::now();
            let r = b.claim(req).await;
            (station, r, sent.elapsed())
        }));
    }
    gate.wait().await;
    let mut lat = Latency::default();
    let mut winners: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for task in tasks {
        match task.await {
            Ok((station, Ok(r), took)) => {
                lat.record(took);
                match r.outcome() {
                    ClaimOutcome::Granted => winners
                        .entry(station)
                        .or_default()
                        .push(r.session.map(|s| s.session_id).unwrap_or_default()),
                    ClaimOutcome::StationInUse => report.count("station_in_use", 1),
                    other => report
                        .violations
                        .push(format!("{station}: unexpected {other:?}")),
                }
            }
            Ok((_, Err(e), _)) => report.error(&classify(&e)),
            Err(_) => report.error("task"),
        }
    }
    let names: Vec<String> = t
        .shard
        .indices(s)
        .into_iter()
        .map(|i| format!("{}-st{i}", t.run))
        .collect();
    let mut b = brokers[0].clone();
    let mut status = Vec::new();
    for chunk in names.chunks(500) {
        match b.stations(&t.tenant, chunk.to_vec()).await {
            Ok(mut v) => status.append(&mut v),
            Err(e) => report.error(&classify(&e)),
        }
    }
    for name in &names {
        let won = winners.get(name).cloned().unwrap_or_default();
        if won.len() != 1 {
            report.violations.push(format!(
                "{name}: {} claims were granted, expected exactly 1",
                won.len()
            ));
            continue;
        }
        match status.iter().find(|st| &st.station == name) {
            Some(st) if !st.free && st.session_id == won[0] => {}
            other => report.violations.push(format!(
                "{name}: StationStatus says {other:?}, the winner was {}",
                won[0]
            )),
        }
    }
    report.count("granted", winners.values().map(|v| v.len() as u64).sum());
    finish(&mut report, started, cpu0, threads());
    report.latency("claim", &lat);
    // Leave nothing behind.
    for ids in winners.values() {
        for id in ids {
            let _ = b.release(&t.tenant, id).await;
        }
    }
    report
}

/// `churn`: agents connect, drop, resume, log out and get taken over by
/// their second device at random for `duration`; every displaced socket
/// must be told why, and a login never has two welcomed live sockets.
pub async fn churn(t: &Target, agents: usize, duration: Duration) -> Report {
    let mut report = Report::new("churn");
    report.param("agents", agents);
    report.param("duration_s", duration.as_secs_f64());
    t.describe(&mut report);
    let Ok(brokers) = t.brokers().await else {
        report.error("grpc_connect");
        return report;
    };
    let cpu0 = sys::cpu_time("self");
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for a in t.shard.indices(agents) {
        let mut b = brokers[a % brokers.len()].clone();
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut counts: std::collections::BTreeMap<&'static str, u64> = Default::default();
            let mut violations = Vec::new();
            let mut errors = Vec::new();
            let login = format!("{}-u{a}", t.run);
            let mut lat: [Latency; 3] = Default::default();
            let mut active = match sign_in(&t, &mut b, &login, "", a, &mut lat).await {
                Ok(s) => Some(s),
                Err(e) => {
                    errors.push(classify(&e));
                    None
                }
            };
            let mut round = 0usize;
            while Instant::now() < deadline {
                round += 1;
                let i = a + round * agents;
                let Some(mut cur) = active.take() else {
                    match sign_in(&t, &mut b, &login, "", i, &mut lat).await {
                        Ok(s) => active = Some(s),
                        Err(e) => errors.push(classify(&e)),
                    }
                    continue;
                };
                match rand::random::<u8>() % 3 {
                    0 => {
                        // The second device takes over; the first must be told.
                        *counts.entry("takeover").or_default() += 1;
                        match sign_in(&t, &mut b, &login, "", i, &mut lat).await {
                            Ok(next) => {
                                match cur.socket.next_frame_within(Duration::from_secs(5)).await {
                                    Ok(ServerFrame::ForcedLogout { reason, .. }) if reason == "superseded" => {}
                                    other => violations.push(format!(
                                        "{login}: displaced socket got {other:?}, not forced_logout superseded"
                                    )),
                                }
                                active = Some(next);
                            }
                            Err(e) => errors.push(classify(&e)),
                        }
                    }
                    1 => {
                        // Drop the socket and come back with the same token.
                        *counts.entry("drop_resume").or_default() += 1;
                        let token = cur.token.clone();
                        let id = cur.session_id.clone();
                        drop(cur.socket);
                        match AgentSocket::connect(t.ws_addr(i), &token, &t.opts(i)).await {
                            Ok(mut s) => match s.next_frame_within(Duration::from_secs(10)).await {
                                Ok(ServerFrame::Welcome { session_id, .. }) if session_id == id => {
                                    active = Some(SignedIn { socket: s, session_id: id, token, ..cur });
                                }
                                other => violations.push(format!(
                                    "{login}: resume within grace got {other:?}"
                                )),
                            },
                            Err(e) => errors.push(classify(&e)),
                        }
                    }
                    _ => {
                        // Log out: told `logged_out`, closed 4000, login free.
                        *counts.entry("logout").or_default() += 1;
                        if let Err(e) = cur.socket.logout().await {
                            errors.push(classify(&e));
                            continue;
                        }
                        let mut told = false;
                        for _ in 0..4 {
                            match cur.socket.next_frame_within(Duration::from_secs(5)).await {
                                Ok(ServerFrame::LoggedOut) => told = true,
                                Ok(ServerFrame::Closed { code: Some(4000), .. }) => break,
                                Ok(ServerFrame::Pong(_)) => {}
                                other => {
                                    violations.push(format!("{login}: logout answered {other:?}"));
                                    break;
                                }
                            }
                        }
                        if !told {
                            violations.push(format!("{login}: logout without logged_out"));
                        }
                        match b.claim(t.claim_req(&login, "", ConflictPolicy::Reject)).await {
                            Ok(r) if r.outcome() == ClaimOutcome::Granted => {
                                let _ = b
                                    .release(&t.tenant, &r.session.map(|s| s.session_id).unwrap_or_default())
                                    .await;
                            }
                            Ok(r) => violations.push(format!(
                                "{login}: after logout a claim got {:?}: the login was still held",
                                r.outcome()
                            )),
                            Err(e) => errors.push(classify(&e)),
                        }
                    }
                }
            }
            if let Some(s) = active {
                let _ = b.release(&t.tenant, &s.session_id).await;
            }
            (counts, violations, errors)
        }));
    }
    for task in tasks {
        if let Ok((counts, violations, errors)) = task.await {
            for (k, v) in counts {
                report.count(k, v);
            }
            report.violations.extend(violations);
            for e in errors {
                report.error(&e);
            }
        }
    }
    finish(&mut report, started, cpu0, threads());
    report
}
