//! The chaos run's world: a Redis master and replica, three
//! `redis-sentinel`s and three `turnstile serve` nodes, all on 127.0.0.1
//! ephemeral ports, all started here and all killed when the [`World`]
//! drops (every child is `kill_on_drop`; a stopped node is continued
//! first). Nodes keep their ports across restarts, so agents reconnect to
//! the same address as to a restarted pod.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The master name in the sentinels' configuration.
pub const MASTER: &str = "ts";
/// The connect-token secret every node shares.
pub const SECRET: &str = "chaos-signing-key-0123456789abcdef0123";
/// libfaketime (Debian package `faketime`), multi-threaded variant.
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// Node timers: short, so faults show and heal within seconds.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
pub const GRACE: Duration = Duration::from_secs(6);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const LEASE_TTL: Duration = Duration::from_secs(1);

pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("an ephemeral port: {e}"))
}

fn scratch(root: &Path, tag: &str) -> Result<PathBuf, String> {
    let dir = root.join(format!("{tag}-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// Polls `check` every 50 ms for at most `limit`.
pub async fn until<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let n = (limit.as_millis() / 50).max(1);
    for _ in 0..n {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// One command to a Redis (or Sentinel) on `port`, bounded by 3 s.
pub async fn redis_cmd<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> Result<T, String> {
    let fut = async {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        let mut c = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async::<T>(&mut c).await
    };
    match tokio::time::timeout(Duration::from_secs(3), fut).await {
        Ok(r) => r.map_err(|e| format!("redis :{port} {}: {e}", args.join(" "))),
        Err(_) => Err(format!(
            "redis :{port} {}: no answer in 3 s",
            args.join(" ")
        )),
    }
}

/// One `redis-server` on a fixed port.
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    async fn start(root: &Path, replica_of: Option<u16>) -> Result<Self, String> {
        let mut r = Redis {
            port: free_port()?,
            dir: scratch(root, "redis")?,
            child: None,
        };
        r.spawn(replica_of).await?;
        Ok(r)
    }

    /// Starts the server on its port, empty, a replica of `replica_of`.
    pub async fn spawn(&mut self, replica_of: Option<u16>) -> Result<(), String> {
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--enable-debug-command", "local"])
            .arg("--dir")
            .arg(&self.dir);
        if let Some(m) = replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &m.to_string()]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("redis-server does not start (install redis-server): {e}"))?;
        self.child = Some(child);
        let port = self.port;
        if !until(Duration::from_secs(10), || async move {
            redis_cmd::<String>(port, &["PING"]).await.is_ok()
        })
        .await
        {
            return Err(format!("redis-server :{port} did not answer PING in 10 s"));
        }
        Ok(())
    }

    /// kill -9, waiting for the process to be gone.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}

struct Sentinel {
    port: u16,
    _child: Child,
}

/// A `turnstile serve` node on fixed ports.
pub struct Node {
    pub name: String,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    child: Option<Child>,
    /// The wall-clock skew it runs under now (`+8s`), if any.
    pub skew: Option<String>,
}

impl Node {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// SIGTERM, then waits (8 s at most, then kill -9).
    pub async fn terminate(&mut self) {
        self.signal("TERM");
        if let Some(mut c) = self.child.take() {
            if tokio::time::timeout(Duration::from_secs(8), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.signal("CONT");
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

/// Everything the run started.
pub struct World {
    pub redis: Vec<Redis>,
    sentinels: Vec<Sentinel>,
    pub sentinel_addrs: String,
    pub nodes: Vec<Node>,
    broker: PathBuf,
    root: PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl World {
    /// Starts the master, the replica, three sentinels (quorum 2, master
    /// down after 1 s) and `nodes` brokers from `broker`.
    pub async fn start(broker: &Path, nodes: usize) -> Result<Self, String> {
        let root = std::env::temp_dir().join(format!(
            "turnstile-chaos-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        let master = Redis::start(&root, None).await?;
        let replica = Redis::start(&root, Some(master.port)).await?;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port()?;
            let dir = scratch(&root, "sentinel")?;
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n\
                     sentinel monitor {MASTER} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 3000\n\
                     sentinel parallel-syncs {MASTER} 1\n",
                    dir.display(),
                    master.port,
                ),
            )
            .map_err(|e| format!("{}: {e}", conf.display()))?;
            let child = Command::new("redis-sentinel")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| {
                    format!("redis-sentinel does not start (install redis-sentinel): {e}")
                })?;
            sentinels.push(Sentinel {
                port,
                _child: child,
            });
        }
        let sentinel_addrs = sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",");
        let mut world = World {
            redis: vec![master, replica],
            sentinels,
            sentinel_addrs,
            nodes: Vec::new(),
            broker: broker.to_path_buf(),
            root,
        };
        if !world.sentinels_agree(Duration::from_secs(30)).await {
            return Err("the sentinels did not see the replica and each other in 30 s".into());
        }
        for i in 0..nodes {
            let node = Node {
                name: format!("chaos-{i}"),
                http: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                grpc: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                child: None,
                skew: None,
            };
            world.nodes.push(node);
            world.spawn_node(i, None).await?;
        }
        Ok(world)
    }

    /// Every sentinel sees one replica and two other sentinels, and the
    /// replica's link to the master is up.
    pub async fn sentinels_agree(&self, limit: Duration) -> bool {
        let ports: Vec<u16> = self.sentinels.iter().map(|s| s.port).collect();
        until(limit, || {
            let ports = ports.clone();
            async move {
                for p in ports {
                    let Ok(info) = redis_cmd::<std::collections::HashMap<String, String>>(
                        p,
                        &["SENTINEL", "MASTER", MASTER],
                    )
                    .await
                    else {
                        return false;
                    };
                    let ok = info.get("num-slaves").map(String::as_str) == Some("1")
                        && info.get("num-other-sentinels").map(String::as_str) == Some("2")
                        && !info
                            .get("flags")
                            .is_some_and(|f| f.contains("down") || f.contains("failover"));
                    if !ok {
                        return false;
                    }
                }
                true
            }
        })
        .await
    }

    /// The port the sentinels call master now.
    pub async fn master_port(&self) -> Option<u16> {
        for s in &self.sentinels {
            if let Ok(Some((_, port))) = redis_cmd::<Option<(String, u16)>>(
                s.port,
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER],
            )
            .await
            {
                return Some(port);
            }
        }
        None
    }

    /// Index into `redis` of the server on `port`.
    pub fn redis_index(&self, port: u16) -> Option<usize> {
        self.redis.iter().position(|r| r.port == port)
    }

    /// Starts node `i` on its ports, under `skew` when given.
    pub async fn spawn_node(&mut self, i: usize, skew: Option<&str>) -> Result<(), String> {
        let (name, http, grpc) = {
            let n = &self.nodes[i];
            (n.name.clone(), n.http, n.grpc)
        };
        let mut cmd = Command::new(&self.broker);
        cmd.arg("serve")
            .args(["--http-listen", &http.to_string()])
            .args(["--grpc-listen", &grpc.to_string()])
            .args(["--signing-key", SECRET, "--node", &name])
            .args(["--redis-sentinel", &self.sentinel_addrs])
            .args(["--redis-master", MASTER])
            .args(["--lease-ttl", &secs(LEASE_TTL)])
            .args(["--reconcile-interval", "500ms", "--drain-window", "200ms"])
            .args(["--heartbeat", &secs(HEARTBEAT), "--grace", &secs(GRACE)])
            .args(["--connect-timeout", &secs(CONNECT_TIMEOUT)])
            .env(
                "RUST_LOG",
                std::env::var("TS_NODE_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(skew) = skew {
            cmd.env("LD_PRELOAD", FAKETIME_LIB)
                .env("FAKETIME", skew)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        // The port of a killed node may linger a moment; retry the start.
        let mut last = String::new();
        for _ in 0..20 {
            match spawn_serve(&mut cmd).await {
                Ok(child) => {
                    let n = &mut self.nodes[i];
                    n.child = Some(child);
                    n.skew = skew.map(str::to_string);
                    return Ok(());
                }
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(format!("node {name} did not start: {last}"))
    }
}

fn secs(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Spawns a node and waits (20 s at most) for its listening line; keeps
/// draining its stdout so it never blocks on a full pipe.
async fn spawn_serve(cmd: &mut Command) -> Result<Child, String> {
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("the broker binary does not start: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("turnstile listening ") {
                return true;
            }
        }
        false
    })
    .await;
    match seen {
        Ok(true) => {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            Ok(child)
        }
        Ok(false) => {
            let status = child
                .wait()
                .await
                .map(|s| s.to_string())
                .unwrap_or_default();
            Err(format!("it exited before listening ({status})"))
        }
        Err(_) => {
            let _ = child.kill().await;
            Err("no listening line in 20 s".into())
        }
    }
}
