//! `shift`: a contact centre's shift as one scenario. Agents sign in over a
//! ramp, change status, lose their network for a moment and resume, a few
//! move desks or sign in on a second device (takeover), receive tenant-wide
//! and personal notices, and sign out over a ramp — at the rates of a
//! [`Profile`], over several tenants.
//!
//! Every agent's schedule comes from the profile's seed and the agent's
//! number alone, so N shards (`--shard I/N`) do exactly what one generator
//! does. The churn checks run throughout: a displaced socket is told why,
//! a reconnect within grace is welcomed back into the same session, a logout
//! is answered `logged_out` and frees the login. Measured per phase
//! (ramp_in, steady, ramp_out) and over time (every operation's latency,
//! connected sessions, the nodes' RSS and CPU from their `/metrics`).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use turnstile_client::pb::{self, ClaimOutcome, ConflictPolicy};
use turnstile_client::{AgentSocket, Broker, Error, ServerFrame};

use crate::probe::Probe;
use crate::profile::Profile;
use crate::report::{Phase, Report, Timeline};
use crate::scenarios::{classify, finish, threads, Target};
use crate::sys;

/// How long any one answer may take before it counts as an error.
const ANSWER: Duration = Duration::from_secs(10);
/// The phases, in order.
const PHASES: [&str; 3] = ["ramp_in", "steady", "ramp_out"];

/// Runs the shift.
pub async fn shift(t: &Target, p: &Profile) -> Report {
    let mut report = Report::new("shift");
    if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(p) {
        for (k, v) in m {
            report.param(&k, v);
        }
    }
    t.describe(&mut report);
    let brokers = match t.brokers().await {
        Ok(b) => b,
        Err(e) => {
            report.error(&classify(&e));
            return report;
        }
    };
    let cpu0 = sys::cpu_time("self");
    let rec = Arc::new(Recorder::new(p));
    let (nodes, tls) = t.metrics_nodes();
    let probe = Probe::Metrics { nodes, tls };
    report.notes.push(probe.describe());
    let sampler = tokio::spawn(sample(rec.clone(), probe, p.sample_every));

    let mut tasks = Vec::new();
    for k in (0..p.tenants).filter(|k| t.shard.owns(*k)) {
        let b = brokers[k % brokers.len()].clone();
        tasks.push(tokio::spawn(tenant_notices(
            t.clone(),
            p.clone(),
            rec.clone(),
            b,
            k,
        )));
    }
    for a in t.shard.indices(p.agents) {
        let agent = Agent::new(t, p, &rec, brokers[a % brokers.len()].clone(), a);
        tasks.push(tokio::spawn(agent.run()));
    }
    let bar = t.bar(tasks.len() as u64, "shift");
    for task in tasks {
        if task.await.is_err() {
            rec.error("task".into(), Instant::now());
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    sampler.abort();
    finish(&mut report, rec.start, cpu0, threads());
    rec.fill(&mut report);
    report
}

/// Where every measurement goes: per phase and per time bucket. A std
/// mutex: nothing awaits while it is held, and each hold is a few adds.
struct Recorder {
    start: Instant,
    /// Ends of ramp_in and steady, seconds from the start.
    bounds: [f64; 2],
    end_s: f64,
    sessions: AtomicI64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    phases: [Phase; 3],
    timeline: Timeline,
    violations: Vec<String>,
    notes: Vec<String>,
    /// The nodes' CPU time at the first and the last sample.
    cpu_first: Option<(Instant, Duration)>,
    cpu_last: Option<(Instant, Duration)>,
}

impl Recorder {
    fn new(p: &Profile) -> Self {
        let ramp_in = p.ramp_in.as_secs_f64();
        let steady_end = ramp_in + p.steady.as_secs_f64();
        let end_s = p.length().as_secs_f64();
        let mut inner = Inner {
            timeline: Timeline {
                every_s: p.sample_every.as_secs_f64(),
                buckets: Vec::new(),
            },
            ..Default::default()
        };
        for (i, ph) in inner.phases.iter_mut().enumerate() {
            ph.name = PHASES[i].into();
            ph.from_s = [0.0, ramp_in, steady_end][i];
            ph.to_s = [ramp_in, steady_end, end_s][i];
        }
        Self {
            start: Instant::now(),
            bounds: [ramp_in, steady_end],
            end_s,
            sessions: AtomicI64::new(0),
            inner: Mutex::new(inner),
        }
    }

    fn at(&self, when: Instant) -> (f64, usize) {
        let s = when.saturating_duration_since(self.start).as_secs_f64();
        let phase = self.bounds.iter().filter(|b| s >= **b).count();
        (s, phase)
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut g)
    }

    /// An operation of kind `name` that started at `started` took `took`.
    fn latency(&self, name: &str, started: Instant, took: Duration) {
        let (s, phase) = self.at(started);
        self.with(|i| {
            i.phases[phase]
                .histograms
                .entry(name.into())
                .or_default()
                .record(took);
            i.timeline.bucket(s).ops.record(took);
        });
    }

    fn count(&self, name: &str, at: Instant) {
        let (_, phase) = self.at(at);
        self.with(|i| *i.phases[phase].counts.entry(name.into()).or_default() += 1);
    }

    fn error(&self, kind: String, at: Instant) {
        let (s, phase) = self.at(at);
        self.with(|i| {
            *i.phases[phase].errors.entry(kind).or_default() += 1;
            i.timeline.bucket(s).errors += 1;
        });
    }

    fn violation(&self, v: String) {
        self.with(|i| i.violations.push(v));
    }

    fn connected(&self, delta: i64) {
        self.sessions.fetch_add(delta, Ordering::Relaxed);
    }

    /// Writes everything into the report.
    fn fill(&self, report: &mut Report) {
        let mut all = self.with(std::mem::take);
        for ph in &mut all.phases {
            ph.summarise();
            for (k, h) in &ph.histograms {
                report.latency(k, h);
            }
            for (k, v) in &ph.counts {
                report.count(k, *v);
            }
            for (k, v) in &ph.errors {
                *report.errors.entry(k.clone()).or_default() += v;
            }
        }
        all.timeline.summarise();
        if let (Some((t0, c0)), Some((t1, c1))) = (all.cpu_first, all.cpu_last) {
            let wall = t1.duration_since(t0).as_secs_f64();
            if wall > 0.0 {
                report.machine.insert(
                    "broker_cpu_cores_mean".into(),
                    c1.saturating_sub(c0).as_secs_f64() / wall,
                );
            }
        }
        if let Some(max) = all
            .timeline
            .buckets
            .iter()
            .filter_map(|b| b.broker_cpu_cores)
            .reduce(f64::max)
        {
            report
                .machine
                .insert("broker_cpu_cores_max_10s".into(), max);
        }
        if let Some(rss) = all
            .timeline
            .buckets
            .iter()
            .filter_map(|b| b.broker_rss_kib)
            .reduce(f64::max)
        {
            report.machine.insert("broker_rss_max_kib".into(), rss);
        }
        report.count(
            "sessions_peak",
            all.timeline
                .buckets
                .iter()
                .map(|b| b.sessions)
                .max()
                .unwrap_or(0),
        );
        report.violations.extend(all.violations);
        report.notes.extend(all.notes);
        report.phases = all.phases.into_iter().collect();
        report.timeline = Some(all.timeline);
        report.param("planned_s", self.end_s);
    }
}

/// The window the nodes' CPU is averaged over: `process_cpu_seconds_total`
/// may count whole seconds, so a shorter window reads mostly 0 or 1.
const CPU_WINDOW: Duration = Duration::from_secs(10);

/// Every `every`: connected sessions and the nodes' memory and CPU into
/// the time series (runs until aborted).
async fn sample(rec: Arc<Recorder>, probe: Probe, every: Duration) {
    let mut window: VecDeque<(Instant, Duration)> = VecDeque::new();
    let mut warned = false;
    let mut tick = tokio::time::interval_at((rec.start + every).into(), every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let now = tick.tick().await.into_std();
        let figures = probe.sample().await;
        let (s, _) = rec.at(now);
        let sessions = rec.sessions.load(Ordering::Relaxed).max(0) as u64;
        let mut cores = None;
        let mut rss = None;
        match figures {
            Ok(f) => {
                while window.len() > 1 && now.duration_since(window[1].0) >= CPU_WINDOW {
                    window.pop_front();
                }
                if let Some((t0, c0)) = window.front() {
                    let wall = now.duration_since(*t0).as_secs_f64().max(1e-9);
                    cores = Some(f.cpu.saturating_sub(*c0).as_secs_f64() / wall);
                }
                window.push_back((now, f.cpu));
                rss = Some(f.rss_kib as f64);
                rec.with(|i| {
                    i.cpu_first.get_or_insert((now, f.cpu));
                    i.cpu_last = Some((now, f.cpu));
                });
            }
            Err(e) if !warned => {
                warned = true;
                rec.with(|i| i.notes.push(format!("node memory and CPU not read: {e}")));
            }
            Err(_) => {}
        }
        // The bucket that just ended.
        rec.with(|i| {
            let every_s = i.timeline.every_s;
            let b = i.timeline.bucket((s - every_s / 2.0).max(0.0));
            b.sessions = sessions;
            b.broker_rss_kib = rss;
            b.broker_cpu_cores = cores;
        });
    }
}

/// `ws_error_<code>: <message>` with ids left out, so kinds stay few.
fn error_kind(code: &str, message: &str) -> String {
    let words: Vec<&str> = message
        .split_whitespace()
        .filter(|w| !(w.len() >= 16 && w.chars().all(|c| c.is_ascii_hexdigit())))
        .take(6)
        .collect();
    format!("ws_error_{code}: {}", words.join(" "))
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

fn tenant_name(t: &Target, k: usize) -> String {
    format!("{}-{}-{k}", t.tenant, t.run)
}

fn notice(id: String, kind: &str, text: &str) -> pb::Notice {
    pb::Notice {
        id,
        kind: kind.into(),
        severity: "info".into(),
        text: text.into(),
        data_json: format!("{{\"sent_unix_us\":{}}}", unix_us()),
        ..Default::default()
    }
}

/// Tenant `k`'s tenant-wide notices, every `tenant_notice_every` through
/// the steady phase (sent by the shard that owns the tenant).
async fn tenant_notices(t: Target, p: Profile, rec: Arc<Recorder>, mut b: Broker, k: usize) {
    if p.tenant_notice_every.is_zero() {
        return;
    }
    let tenant = tenant_name(&t, k);
    let mut at = rec.start + p.ramp_in;
    let end = rec.start + p.ramp_in + p.steady;
    let mut j = 0;
    while at < end {
        tokio::time::sleep_until(at.into()).await;
        let sent = Instant::now();
        let req = pb::NotifyRequest {
            tenant: tenant.clone(),
            target: Some(pb::notify_request::Target::AllSessions(true)),
            notice: Some(notice(
                format!("{}-tn{k}-{j}", t.run),
                "shift_tenant",
                "Queue is long: please stay available",
            )),
        };
        match b.notify(req).await {
            Ok(_) => {
                rec.latency("notify_tenant_rpc", sent, sent.elapsed());
                rec.count("tenant_notices_sent", sent);
            }
            Err(e) => rec.error(classify(&e), sent),
        }
        j += 1;
        at += p.tenant_notice_every;
    }
}

/// What one agent does next.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Status,
    Blip,
    PersonalNotice,
    DeskMove,
    Takeover,
    SignOut,
}

/// A signed-in socket.
struct Live {
    socket: AgentSocket,
    session_id: String,
    token: String,
}

/// What reads frames: records notices (acking them) and keeps the checks.
struct Ears {
    rec: Arc<Recorder>,
    login: String,
    /// Notice ids seen, so a redelivery after a resume is not counted twice.
    seen: HashSet<String>,
}

impl Ears {
    /// Handles a frame that is not an answer: `None` when absorbed.
    async fn absorb(&mut self, socket: &mut AgentSocket, f: ServerFrame) -> Option<ServerFrame> {
        match f {
            ServerFrame::Notice(n) => {
                let id = n["id"].as_str().unwrap_or_default().to_string();
                // Only this run's notices carry their send time.
                let sent = n["data"]["sent_unix_us"].as_u64();
                if let (true, Some(sent)) = (self.seen.insert(id.clone()), sent) {
                    let now = Instant::now();
                    let took = Duration::from_micros(unix_us().saturating_sub(sent));
                    let personal = n["kind"] == "shift_personal";
                    let name = if personal {
                        "notice_personal"
                    } else {
                        "notice_tenant"
                    };
                    self.rec
                        .latency(name, now.checked_sub(took).unwrap_or(now), took);
                    self.rec
                        .count(&format!("{}_notices_received", &name[7..]), now);
                }
                if let Err(e) = socket.ack(&id).await {
                    self.rec.error(classify(&e), Instant::now());
                }
                None
            }
            ServerFrame::Pong(_) | ServerFrame::Presence(_) | ServerFrame::Connectivity { .. } => {
                None
            }
            // The node refused one of this socket's messages (a status
            // while Redis timed out, an ack racing a displacement): an
            // error of that kind; the socket stays open.
            ServerFrame::Error { code, message } => {
                self.rec.error(error_kind(&code, &message), Instant::now());
                None
            }
            other => Some(other),
        }
    }

    /// Reads until `want` matches, absorbing the rest; anything else that
    /// is not absorbed is returned as `Err(Ok(frame))`.
    async fn expect(
        &mut self,
        socket: &mut AgentSocket,
        want: impl Fn(&ServerFrame) -> bool,
    ) -> Result<ServerFrame, Result<ServerFrame, Error>> {
        let deadline = tokio::time::Instant::now() + ANSWER;
        loop {
            let f = match tokio::time::timeout_at(deadline, socket.next_frame()).await {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => return Err(Err(e)),
                Err(_) => return Err(Err(Error::Timeout("an answer"))),
            };
            if want(&f) {
                return Ok(f);
            }
            if let Some(other) = self.absorb(socket, f).await {
                return Err(Ok(other));
            }
        }
    }
}

/// One agent for the whole shift.
struct Agent {
    t: Target,
    p: Profile,
    b: Broker,
    /// The agent's number (its login, desks and first node follow from it).
    a: usize,
    /// Sockets opened so far (each goes to the next node).
    sockets: usize,
    ears: Ears,
    tenant: String,
    station: String,
    /// The desk a desk move goes to: the agent's own, so shards never meet.
    other_station: String,
    live: Option<Live>,
    sign_in_at: Instant,
    sign_out_at: Instant,
    /// Scheduled acts, soonest last.
    plan: Vec<(Instant, Act)>,
    rng_status: StdRng,
}

impl Agent {
    fn new(t: &Target, p: &Profile, rec: &Arc<Recorder>, b: Broker, a: usize) -> Self {
        let n = p.agents as f64;
        let start = rec.start;
        let sign_in_at = start + p.ramp_in.mul_f64(a as f64 / n);
        let sign_out_at = start + p.ramp_in + p.steady + p.ramp_out.mul_f64(a as f64 / n);
        let seed = |kind: u64| {
            StdRng::seed_from_u64(p.seed ^ (a as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ kind)
        };
        let mut plan = vec![(sign_out_at, Act::SignOut)];
        let steady_at = |f: f64| start + p.ramp_in + p.steady.mul_f64(f);
        let mut once = seed(1);
        if once.random::<f64>() < p.desk_moves {
            plan.push((steady_at(once.random_range(0.1..0.5)), Act::DeskMove));
        }
        if once.random::<f64>() < p.takeovers {
            plan.push((steady_at(once.random_range(0.5..0.9)), Act::Takeover));
        }
        for (kind, every, act) in [
            (2, p.status_every, Act::Status),
            (3, p.blip_every, Act::Blip),
            (4, p.personal_notice_every, Act::PersonalNotice),
        ] {
            if every.is_zero() {
                continue;
            }
            let mut rng = seed(kind);
            let mut at = sign_in_at;
            loop {
                let u: f64 = rng.random();
                at += every.mul_f64(-(1.0 - u).max(1e-12).ln());
                if at >= sign_out_at {
                    break;
                }
                plan.push((at, act));
            }
        }
        plan.sort_by_key(|x| std::cmp::Reverse(x.0));
        let login = format!("{}-a{a}", t.run);
        Self {
            t: t.clone(),
            p: p.clone(),
            b,
            a,
            sockets: 0,
            ears: Ears {
                rec: rec.clone(),
                login,
                seen: HashSet::new(),
            },
            tenant: tenant_name(t, a % p.tenants),
            station: format!("{}-d{a}", t.run),
            other_station: format!("{}-d{}", t.run, a + p.agents),
            live: None,
            sign_in_at,
            sign_out_at,
            plan,
            rng_status: seed(5),
        }
    }

    fn rec(&self) -> &Recorder {
        &self.ears.rec
    }

    fn login(&self) -> &str {
        &self.ears.login
    }

    async fn run(mut self) {
        tokio::time::sleep_until(self.sign_in_at.into()).await;
        self.sign_in("sign_in").await;
        while let Some((at, act)) = self.plan.pop() {
            self.idle_until(at).await;
            if self.live.is_none() && act != Act::SignOut {
                // Lost on an error: back in first, as the app would.
                self.sign_in("sign_in_again").await;
            }
            let started = Instant::now();
            match act {
                Act::Status => self.status(started).await,
                Act::Blip => self.blip(started).await,
                Act::PersonalNotice => self.personal_notice(started).await,
                Act::DeskMove => self.move_to(started, true).await,
                Act::Takeover => self.move_to(started, false).await,
                Act::SignOut => self.sign_out(started).await,
            }
        }
        debug_assert!(Instant::now() >= self.sign_out_at);
    }

    fn claim_req(&self, station: &str, policy: ConflictPolicy) -> pb::ClaimRequest {
        pb::ClaimRequest {
            tenant: self.tenant.clone(),
            login: self.login().to_string(),
            station: station.into(),
            client: "loadtest-shift".into(),
            role: "agent".into(),
            on_conflict: policy as i32,
            ..Default::default()
        }
    }

    fn error(&self, e: &Error, at: Instant) {
        self.rec().error(classify(e), at);
    }

    /// Reads (and absorbs) frames until `at`.
    async fn idle_until(&mut self, at: Instant) {
        loop {
            let Some(live) = self.live.as_mut() else {
                tokio::time::sleep_until(at.into()).await;
                return;
            };
            let f = tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => return,
                f = live.socket.next_frame() => f,
            };
            let now = Instant::now();
            let f = match f {
                Ok(f) => f,
                Err(e) => {
                    self.error(&e, now);
                    continue;
                }
            };
            match self.ears.absorb(&mut live.socket, f).await {
                None => {}
                Some(ServerFrame::Closed { code, .. }) => {
                    // The node went away (not a logout): resume, as the SDK does.
                    self.rec()
                        .error(format!("closed_while_idle_{code:?}").to_lowercase(), now);
                    let Some(old) = self.live.take() else {
                        continue;
                    };
                    self.rec().connected(-1);
                    self.resume(old, Instant::now(), "resume_after_close").await;
                }
                Some(ServerFrame::Reconnect { after_ms }) => {
                    // A draining node: come back as the SDK does.
                    self.rec().count("drain_reconnects", now);
                    let Some(old) = self.live.take() else {
                        continue;
                    };
                    self.rec().connected(-1);
                    tokio::time::sleep(Duration::from_millis(after_ms.min(5_000))).await;
                    self.resume(old, Instant::now(), "drain_resume").await;
                }
                Some(other) => {
                    self.rec()
                        .violation(format!("{}: unexpected {other:?} while idle", self.login()));
                    if self.live.take().is_some() {
                        self.rec().connected(-1);
                    }
                }
            }
        }
    }

    /// Claim (taking over whatever holds the login) + connect + welcome.
    async fn sign_in(&mut self, what: &str) {
        let start = Instant::now();
        let station = self.station.clone();
        let r = match self
            .b
            .claim(self.claim_req(&station, ConflictPolicy::Takeover))
            .await
        {
            Ok(r) => r,
            Err(e) => return self.error(&e, start),
        };
        self.rec().latency("claim", start, start.elapsed());
        if r.outcome() != ClaimOutcome::Granted {
            return self
                .rec()
                .error(format!("claim_{:?}", r.outcome()).to_lowercase(), start);
        }
        let session_id = r.session.map(|s| s.session_id).unwrap_or_default();
        match self.connect(&r.token, start, "connect_to_welcome").await {
            Ok((socket, _)) => {
                self.rec().latency(what, start, start.elapsed());
                self.rec().count(&format!("{what}s"), start);
                self.rec().connected(1);
                self.live = Some(Live {
                    socket,
                    session_id,
                    token: r.token,
                });
            }
            Err(e) => self.error(&e, start),
        }
    }

    /// A socket with `token`, up to its `welcome` (recorded as `what`).
    async fn connect(
        &mut self,
        token: &str,
        start: Instant,
        what: &str,
    ) -> Result<(AgentSocket, ServerFrame), Error> {
        let i = self.a + self.sockets;
        self.sockets += 1;
        let connect = Instant::now();
        let mut socket =
            AgentSocket::connect(self.t.ws[i % self.t.ws.len()], token, &opts(&self.t, i)).await?;
        match self
            .ears
            .expect(&mut socket, |f| matches!(f, ServerFrame::Welcome { .. }))
            .await
        {
            Ok(w) => {
                self.rec().latency(what, connect, connect.elapsed());
                let _ = start;
                Ok((socket, w))
            }
            Err(Ok(other)) => Err(Error::Protocol(format!("expected welcome, got {other:?}"))),
            Err(Err(e)) => Err(e),
        }
    }

    /// A status change: `status` then a `ping`; the `pong` says the node
    /// has taken the status (frames of one socket are handled in order).
    async fn status(&mut self, started: Instant) {
        let s = self.p.statuses[self.rng_status.random_range(0..self.p.statuses.len())].clone();
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let id = format!("st{}", self.plan.len());
        let sent = async {
            live.socket.set_status(&s).await?;
            live.socket.send_ping(&id).await
        };
        if let Err(e) = sent.await {
            return self.lost(&e, started);
        }
        let want = serde_json::Value::String(id);
        match self
            .ears
            .expect(
                &mut live.socket,
                |f| matches!(f, ServerFrame::Pong(v) if *v == want),
            )
            .await
        {
            Ok(_) => {
                self.rec().latency("status", started, started.elapsed());
                self.rec().count("status_changes", started);
            }
            Err(Ok(other)) => self.unexpected("status", other),
            Err(Err(e)) => self.lost(&e, started),
        }
    }

    /// The network drops for `blip_length`; the app comes back with the
    /// same token and must be welcomed into the same session.
    async fn blip(&mut self, started: Instant) {
        let Some(live) = self.live.take() else { return };
        self.rec().connected(-1);
        self.rec().count("blips", started);
        tokio::time::sleep(self.p.blip_length).await;
        self.resume(live, Instant::now(), "resume").await;
    }

    /// Reconnects `old`'s session with its token: `welcome`, resumed, the
    /// same session.
    async fn resume(&mut self, old: Live, start: Instant, what: &str) {
        let Live {
            socket,
            session_id,
            token,
        } = old;
        drop(socket);
        match self.connect(&token, start, what).await {
            Ok((
                socket,
                ServerFrame::Welcome {
                    session_id: got,
                    resumed,
                    ..
                },
            )) => {
                if got != session_id {
                    self.rec().violation(format!(
                        "{}: resume within grace was welcomed into {got}, not {session_id}",
                        self.login()
                    ));
                }
                if !resumed {
                    // The node had not yet seen the old socket go: the new
                    // one joined the live session beside it (no resume).
                    self.rec()
                        .count("resumed_before_the_node_saw_the_drop", start);
                }
                self.rec().connected(1);
                self.live = Some(Live {
                    socket,
                    session_id: got,
                    token,
                });
            }
            Ok((_, other)) => self.unexpected(what, other),
            Err(e) => self.error(&e, start),
        }
    }

    async fn personal_notice(&mut self, started: Instant) {
        let id = format!("{}-pn-{}", self.login(), self.plan.len());
        let req = pb::NotifyRequest {
            tenant: self.tenant.clone(),
            target: Some(pb::notify_request::Target::Login(self.login().to_string())),
            notice: Some(notice(
                id,
                "shift_personal",
                "Your break starts in 5 minutes",
            )),
        };
        match self.b.notify(req).await {
            Ok(_) => {
                self.rec()
                    .latency("notify_personal_rpc", started, started.elapsed());
                self.rec().count("personal_notices_sent", started);
            }
            Err(e) => self.error(&e, started),
        }
    }

    /// A desk move (the login claims its other desk) or a takeover (the
    /// same desk, a second device): the old socket must be told why, the
    /// new one welcomed.
    async fn move_to(&mut self, started: Instant, desk: bool) {
        let Some(mut old) = self.live.take() else {
            return;
        };
        self.rec().connected(-1);
        let (station, reason, name) = if desk {
            let s = std::mem::replace(&mut self.other_station, self.station.clone());
            (s, "station_changed", "desk_move")
        } else {
            (self.station.clone(), "superseded", "takeover")
        };
        let req = self.claim_req(&station, ConflictPolicy::Takeover);
        let told = self.ears.expect(&mut old.socket, |f| {
            matches!(f, ServerFrame::ForcedLogout { .. })
        });
        let (told, reply) = tokio::join!(told, self.b.claim(req));
        let told_at = Instant::now();
        let r = match reply {
            Ok(r) if r.outcome() == ClaimOutcome::Granted => r,
            Ok(r) => {
                return self.rec().violation(format!(
                    "{}: {name} claim answered {:?}",
                    self.ears.login,
                    r.outcome()
                ))
            }
            Err(e) => return self.error(&e, started),
        };
        match told {
            Ok(ServerFrame::ForcedLogout { reason: got, .. }) if got == reason => {
                self.rec().latency(
                    &format!("{name}_forced_logout"),
                    started,
                    told_at.duration_since(started),
                );
            }
            other => self.rec().violation(format!(
                "{}: {name}: the displaced socket got {other:?}, not forced_logout {reason}",
                self.ears.login
            )),
        }
        drop(old);
        self.station = station;
        let session_id = r.session.map(|s| s.session_id).unwrap_or_default();
        match self.connect(&r.token, started, "connect_to_welcome").await {
            Ok((socket, _)) => {
                self.rec().latency(name, started, started.elapsed());
                self.rec().count(&format!("{name}s"), started);
                self.rec().connected(1);
                self.live = Some(Live {
                    socket,
                    session_id,
                    token: r.token,
                });
            }
            Err(e) => self.error(&e, started),
        }
    }

    /// `logout`: answered `logged_out`, closed 4000, and the login is free.
    async fn sign_out(&mut self, started: Instant) {
        let Some(mut live) = self.live.take() else {
            return;
        };
        self.rec().connected(-1);
        if let Err(e) = live.socket.logout().await {
            return self.error(&e, started);
        }
        match self
            .ears
            .expect(&mut live.socket, |f| matches!(f, ServerFrame::LoggedOut))
            .await
        {
            Ok(_) => {
                self.rec().latency("sign_out", started, started.elapsed());
                self.rec().count("sign_outs", started);
            }
            Err(other) => {
                return self.rec().violation(format!(
                    "{}: logout answered {other:?}, not logged_out",
                    self.login()
                ))
            }
        }
        match self
            .ears
            .expect(&mut live.socket, |f| {
                matches!(f, ServerFrame::Closed { .. })
            })
            .await
        {
            Ok(ServerFrame::Closed {
                code: Some(4000), ..
            }) => {}
            other => self.rec().violation(format!(
                "{}: after logged_out the socket got {other:?}, not close 4000",
                self.login()
            )),
        }
        let station = self.station.clone();
        match self
            .b
            .claim(self.claim_req(&station, ConflictPolicy::Reject))
            .await
        {
            Ok(r) if r.outcome() == ClaimOutcome::Granted => {
                let id = r.session.map(|s| s.session_id).unwrap_or_default();
                if let Err(e) = self.b.release(&self.tenant, &id).await {
                    self.error(&e, started);
                }
            }
            Ok(r) => self.rec().violation(format!(
                "{}: after logout a claim got {:?}: the login or desk was still held",
                self.login(),
                r.outcome()
            )),
            Err(e) => self.error(&e, started),
        }
        let _ = live.session_id;
    }

    /// The socket failed: count the error; the next act signs in again.
    fn lost(&mut self, e: &Error, at: Instant) {
        self.error(e, at);
        if self.live.take().is_some() {
            self.rec().connected(-1);
        }
    }

    fn unexpected(&mut self, what: &str, f: ServerFrame) {
        self.rec()
            .violation(format!("{}: {what}: unexpected {f:?}", self.login()));
        if self.live.take().is_some() {
            self.rec().connected(-1);
        }
    }
}

fn opts(t: &Target, i: usize) -> turnstile_client::ConnectOptions {
    turnstile_client::ConnectOptions {
        bind_ip: (!t.source_ips.is_empty()).then(|| t.source_ips[i % t.source_ips.len()]),
        timeout: Some(ANSWER),
        tls: t.tls.clone(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_kinds_leave_ids_out() {
        assert_eq!(
            super::error_kind(
                "rejected",
                "session b647ce9ee11345a68e275e4af23b873d has ended"
            ),
            "ws_error_rejected: session has ended"
        );
    }
}
