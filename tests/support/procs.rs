//! Real processes for the cluster tests: `redis-server` (alone or as a
//! three-master Redis Cluster) and `turnstile serve` nodes, each on
//! ephemeral loopback ports, each stopped when its handle drops.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{grpc_client, within, Client, SECRET};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("an ephemeral port")
}

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "turnstile-test-{tag}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

async fn redis_ping(port: u16) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
        return false;
    };
    match client.get_multiplexed_async_connection().await {
        Ok(mut c) => redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .is_ok(),
        Err(_) => false,
    }
}

/// Polls `check` every 20 ms, at most 500 times (10 s); panics naming `what`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// One `redis-server`.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
}

impl RedisServer {
    /// A server without persistence.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// A server with extra arguments (e.g. `--appendonly yes`).
    pub async fn start_with(extra: &[&str]) -> Self {
        let port = free_port();
        let dir = scratch_dir("redis");
        let mut s = RedisServer {
            port,
            dir,
            child: None,
            args: extra.iter().map(|a| a.to_string()).collect(),
        };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--protected-mode",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server runs (the test command installs it)");
        self.child = Some(child);
        let port = self.port;
        eventually("redis-server to answer PING", || redis_ping(port)).await;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGKILL) and waits for it to exit.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Starts it again on the same port (with whatever its files hold).
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    /// Starts it again on the same port with no data at all.
    pub async fn restart_empty(&mut self) {
        self.kill().await;
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).expect("scratch dir");
        self.spawn().await;
    }

    /// Sends the process signal `sig` (`STOP`, `CONT`).
    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.child.as_ref().and_then(|c| c.id()) {
            let _ = std::process::Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status();
        }
    }

    /// Runs one command and returns its reply.
    pub async fn cmd(&self, args: &[&str]) -> redis::Value {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut c = within(
            "a redis connection",
            client.get_multiplexed_async_connection(),
        )
        .await
        .expect("redis connection");
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        within("a redis command", cmd.query_async(&mut c))
            .await
            .expect("redis command")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.signal("CONT");
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A three-master Redis Cluster, created with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                ])
                .await,
            );
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let status = within(
            "redis-cli --cluster create",
            Command::new("redis-cli")
                .arg("--cluster")
                .arg("create")
                .args(&addrs)
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status(),
        )
        .await
        .expect("redis-cli runs");
        assert!(status.success(), "redis-cli --cluster create failed");
        for n in &nodes {
            let port = n.port;
            eventually("cluster_state:ok", || async move {
                let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
                    return false;
                };
                let Ok(mut c) = client.get_multiplexed_async_connection().await else {
                    return false;
                };
                redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async::<String>(&mut c)
                    .await
                    .map(|s| s.contains("cluster_state:ok"))
                    .unwrap_or(false)
            })
            .await;
        }
        RedisCluster { nodes }
    }

    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Which of `nodes` serves the slot of `key`.
    pub async fn master_of(&self, key: &str) -> usize {
        let slot = match self.nodes[0].cmd(&["CLUSTER", "KEYSLOT", key]).await {
            redis::Value::Int(s) => s,
            other => panic!("CLUSTER KEYSLOT answered {other:?}"),
        };
        for (i, n) in self.nodes.iter().enumerate() {
            let nodes = text(n.cmd(&["CLUSTER", "NODES"]).await);
            let mine = nodes
                .lines()
                .find(|l| l.contains("myself"))
                .expect("CLUSTER NODES lists this node");
            let serves = mine.split(' ').skip(8).any(|r| match r.split_once('-') {
                Some((a, b)) => {
                    a.parse::<i64>().is_ok_and(|a| a <= slot)
                        && b.parse::<i64>().is_ok_and(|b| slot <= b)
                }
                None => r.parse::<i64>().is_ok_and(|a| a == slot),
            });
            if serves {
                return i;
            }
        }
        panic!("no master serves the slot of {key}");
    }

    /// Starts one more cluster node and makes it a replica of
    /// `nodes[master]`; returns once it has the master's data.
    pub async fn add_replica(&self, master: usize) -> RedisServer {
        let replica = RedisServer::start_with(&[
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            "2000",
        ])
        .await;
        let m = &self.nodes[master];
        let id = text(m.cmd(&["CLUSTER", "MYID"]).await);
        let port = m.port.to_string();
        replica.cmd(&["CLUSTER", "MEET", "127.0.0.1", &port]).await;
        eventually("the new node to learn the cluster", || async {
            text(replica.cmd(&["CLUSTER", "NODES"]).await).contains(&id)
        })
        .await;
        replica.cmd(&["CLUSTER", "REPLICATE", &id]).await;
        eventually("the replica to finish its first sync", || async {
            text(replica.cmd(&["INFO", "replication"]).await).contains("master_link_status:up")
        })
        .await;
        replica
    }
}

/// A reply as text (bulk strings, status lines, and the first element of
/// an array such as `ROLE`'s).
pub fn text(v: redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::SimpleString(s) => s,
        redis::Value::VerbatimString { text, .. } => text,
        redis::Value::Array(mut a) if !a.is_empty() => text(a.swap_remove(0)),
        other => format!("{other:?}"),
    }
}

/// A master, one replica and three `redis-sentinel`s watching them (quorum
/// 2), with short timers: the master is judged down after 1 s without an
/// answer, a failover gives up after 3 s.
pub struct SentinelSet {
    pub master: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<Sentinel>,
    /// `127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`.
    pub addrs: String,
}

struct Sentinel {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl SentinelSet {
    pub const MASTER: &'static str = "ts";

    pub async fn start() -> Self {
        let debug = ["--enable-debug-command", "local"];
        let master = RedisServer::start_with(&debug).await;
        let mp = master.port.to_string();
        let replica =
            RedisServer::start_with(&[&debug[..], &["--replicaof", "127.0.0.1", &mp]].concat())
                .await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let dir = scratch_dir("sentinel");
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n\
                     sentinel monitor {m} 127.0.0.1 {mp} 2\n\
                     sentinel down-after-milliseconds {m} 1000\n\
                     sentinel failover-timeout {m} 3000\n\
                     sentinel parallel-syncs {m} 1\n",
                    dir.display(),
                    m = Self::MASTER,
                    mp = master.port,
                ),
            )
            .expect("sentinel.conf");
            let child = Command::new("redis-sentinel")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("redis-sentinel runs (the test command installs it)");
            sentinels.push(Sentinel { port, dir, child });
        }
        let addrs = sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",");
        let set = SentinelSet {
            master,
            replica,
            sentinels,
            addrs,
        };
        // Ready when every sentinel sees the replica and both other
        // sentinels (they find each other through the master's hello
        // channel), so a failover can be authorised.
        for s in &set.sentinels {
            let port = s.port;
            eventually(
                "a sentinel to see the replica and the other sentinels",
                || async move {
                    let Ok(info) = sentinel_master_info(port).await else {
                        return false;
                    };
                    info.get("num-slaves").map(String::as_str) == Some("1")
                        && info.get("num-other-sentinels").map(String::as_str) == Some("2")
                },
            )
            .await;
        }
        set
    }

    /// The port of the server the sentinels call master now (the first
    /// sentinel that answers).
    pub async fn master_port(&self) -> Option<u16> {
        for s in &self.sentinels {
            let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{}", s.port)) else {
                continue;
            };
            let Ok(mut c) = client.get_multiplexed_async_connection().await else {
                continue;
            };
            if let Ok(Some((_, port))) = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(Self::MASTER)
                .query_async::<Option<(String, u16)>>(&mut c)
                .await
            {
                return Some(port);
            }
        }
        None
    }
}

async fn sentinel_master_info(
    port: u16,
) -> redis::RedisResult<std::collections::HashMap<String, String>> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut c = client.get_multiplexed_async_connection().await?;
    redis::cmd("SENTINEL")
        .arg("master")
        .arg(SentinelSet::MASTER)
        .query_async(&mut c)
        .await
}

/// A `turnstile serve` process that printed its listening line.
pub struct Served {
    pub child: Child,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub node: String,
}

/// Spawns `cmd` (a `turnstile serve` command; its stdout is taken here),
/// waits, bounded, for its `turnstile listening http=… grpc=… node=…` line
/// and keeps draining stdout so the node never blocks on a full pipe.
pub async fn spawn_serve(cmd: &mut Command) -> Served {
    let mut child = cmd
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the turnstile binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = within("the node's listening line", async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("turnstile listening ") {
                return Some(line);
            }
        }
        None
    })
    .await
    .expect("the node printed its listening line before exiting");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let field = |key: &str| -> String {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
            .to_string()
    };
    let addr = |key: &str| -> SocketAddr { field(key).parse().expect("an address") };
    Served {
        http: addr("http="),
        grpc: addr("grpc="),
        node: field("node="),
        child,
    }
}

/// libfaketime (Debian package `faketime`), preloaded into a node to skew
/// its wall clock; the multi-threaded variant, as the node runs threads.
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// A `turnstile serve` process.
pub struct NodeProc {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub name: String,
    child: Child,
}

impl NodeProc {
    /// Starts a node on `redis` (URLs; `cluster` for a Redis Cluster) with
    /// short timers so faults show within a test, plus `extra` flags.
    pub async fn start(redis: &str, cluster: bool, extra: &[&str]) -> Self {
        Self::launch(redis, cluster, extra, None).await
    }

    /// Starts a node that finds Redis through `sentinels`' master.
    pub async fn start_sentinel(sentinels: &SentinelSet, extra: &[&str]) -> Self {
        let mut args = vec![
            "--redis-sentinel",
            &sentinels.addrs,
            "--redis-master",
            SentinelSet::MASTER,
        ];
        args.extend_from_slice(extra);
        Self::launch("", false, &args, None).await
    }

    /// Like [`start`](Self::start) on one Redis, with the node's wall
    /// clock `skew` off (libfaketime's offset syntax: `+8s`, `-8s`) and its
    /// monotonic clock left alone, as on a host whose NTP is broken.
    pub async fn start_skewed(redis: &str, skew: &str, extra: &[&str]) -> Self {
        Self::launch(redis, false, extra, Some(skew)).await
    }

    async fn launch(redis: &str, cluster: bool, extra: &[&str], skew: Option<&str>) -> Self {
        let name = format!("n{:04x}", rand::random::<u16>());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_turnstile"));
        cmd.arg("serve")
            .args([
                "--http-listen",
                "127.0.0.1:0",
                "--grpc-listen",
                "127.0.0.1:0",
            ])
            .args(["--signing-key", SECRET, "--node", &name])
            .args(["--lease-ttl", "1s", "--reconcile-interval", "500ms"])
            .args(["--drain-window", "200ms"])
            .args(extra)
            // TS_NODE_LOG=info,turnstile::cluster=debug to see a node's side.
            .env(
                "RUST_LOG",
                std::env::var("TS_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if !redis.is_empty() {
            cmd.args(["--redis", redis]);
        }
        if cluster {
            cmd.arg("--redis-cluster");
        }
        if let Some(skew) = skew {
            cmd.env("LD_PRELOAD", FAKETIME_LIB)
                .env("FAKETIME", skew)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let served = spawn_serve(&mut cmd).await;
        NodeProc {
            http: served.http,
            grpc: served.grpc,
            name,
            child: served.child,
        }
    }

    pub async fn client(&self) -> Client {
        grpc_client(self.grpc).await
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status();
        }
    }

    /// kill -9.
    pub async fn kill9(&mut self) {
        let _ = self.child.kill().await;
    }

    pub fn sigstop(&self) {
        self.signal("STOP");
    }

    pub fn sigcont(&self) {
        self.signal("CONT");
    }

    /// SIGTERM, then waits (bounded) for the process to exit.
    pub async fn terminate(&mut self) {
        self.signal("TERM");
        let _ = within("the node to exit after SIGTERM", self.child.wait()).await;
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.child.start_kill();
    }
}
