//! Redis behind Sentinel: which server is the master now, and a connection
//! that follows it through failovers.
//!
//! redis-rs's `SentinelClient` finds the master once per connection it
//! opens but never re-resolves one that is open (and probes `ROLE` without
//! our timeouts), so this module does the following itself, as the
//! Sentinel client guidelines describe: ask each Sentinel in turn
//! `SENTINEL get-master-addr-by-name`, connect there, and check `ROLE`
//! says `master` before using it. A [`Follower`] drops its connection on a
//! connection error, a timeout or `READONLY` (the next command resolves
//! the master again: during a switch it fails fast, `UNAVAILABLE`), and a
//! background check every [`FOLLOW_EVERY`] drops it as soon as the
//! Sentinels name another master, so a node never keeps writing to a
//! demoted or partitioned old master for longer than that.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind,
    IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo, RedisConnectionInfo, RedisError,
    RedisFuture, RedisResult, Value,
};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::config::RedisUrl;

/// How often a follower asks the Sentinels whether the master moved.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// Where the Sentinels are and the name of the master they watch.
#[derive(Clone, Debug)]
pub struct SentinelTarget {
    /// `redis://host:port` of each Sentinel (shown without passwords).
    pub sentinels: Vec<RedisUrl>,
    /// The master's name in the Sentinels' configuration.
    pub master: String,
}

type PushFn = Arc<dyn Fn(PushInfo) + Send + Sync>;

/// A connection to whichever server the Sentinels call the master now.
/// Cheap to clone; every clone shares the one connection.
#[derive(Clone)]
pub struct Follower {
    inner: Arc<Inner>,
}

struct Inner {
    target: SentinelTarget,
    timeout: Duration,
    cfg: AsyncConnectionConfig,
    protocol: ProtocolVersion,
    /// Told `Disconnection` when the connection is dropped here (a
    /// subscriber resubscribes on its next ping).
    push: Option<PushFn>,
    /// The master connection, its address and a serial; `None` after a
    /// failure (the next command reconnects). A std mutex: never held
    /// across an await.
    current: Mutex<Option<Current>>,
    /// One (re)connection at a time, so a burst of failing claims asks the
    /// Sentinels once.
    connecting: tokio::sync::Mutex<()>,
    /// Cached connections to the Sentinels, by index.
    sentinels: Mutex<Vec<Option<MultiplexedConnection>>>,
    /// Notified each time the follower connects to a different master.
    switched: Notify,
}

#[derive(Clone)]
struct Current {
    conn: MultiplexedConnection,
    addr: (String, u16),
    serial: u64,
}

impl Follower {
    /// Resolves the master and connects (fails if no Sentinel names a
    /// reachable master). `push` receives a subscriber's messages.
    pub async fn connect(
        target: &SentinelTarget,
        timeout: Duration,
        protocol: ProtocolVersion,
        push: Option<PushFn>,
    ) -> RedisResult<Self> {
        let mut cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        if let Some(p) = push.clone() {
            cfg = cfg.set_push_sender(move |info: PushInfo| {
                p(info);
                Ok::<(), redis::aio::SendError>(())
            });
        }
        let f = Follower {
            inner: Arc::new(Inner {
                target: target.clone(),
                timeout,
                cfg,
                protocol,
                push,
                current: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                sentinels: Mutex::new(vec![None; target.sentinels.len()]),
                switched: Notify::new(),
            }),
        };
        f.get().await?;
        tokio::spawn(watch(Arc::downgrade(&f.inner)));
        Ok(f)
    }

    /// Notified whenever the connection moves to another master.
    pub fn switched(&self) -> &Notify {
        &self.inner.switched
    }

    fn current(&self) -> Option<Current> {
        lock(&self.inner.current).clone()
    }

    /// The connection to the master, connecting (resolving it) if needed.
    async fn get(&self) -> RedisResult<Current> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _one = self.inner.connecting.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let addr = self.master_addr().await?;
        let conn = self.open(&addr).await?;
        // The probe may have waited on a hung master while the Sentinels
        // replaced it (it then wakes up still calling itself master): ask
        // again, and use the connection only if it is still theirs.
        let now = self.master_addr().await?;
        if now != addr {
            return Err(RedisError::from((
                ErrorKind::IoError,
                "the sentinels switched the master while connecting",
                format!("{}:{} -> {}:{}", addr.0, addr.1, now.0, now.1),
            )));
        }
        let mut cur = lock(&self.inner.current);
        let serial = cur.as_ref().map(|c| c.serial + 1).unwrap_or(1);
        let c = Current { conn, addr, serial };
        *cur = Some(c.clone());
        drop(cur);
        Ok(c)
    }

    /// Drops connection `serial` (if it is still the current one).
    fn reset(&self, serial: u64, why: &str) {
        let dropped = {
            let mut cur = lock(&self.inner.current);
            match cur.as_ref() {
                Some(c) if c.serial == serial => cur.take(),
                _ => None,
            }
        };
        if let Some(c) = dropped {
            info!(master = %format!("{}:{}", c.addr.0, c.addr.1), why, "dropping the redis master connection; the next command asks the sentinels");
            if let Some(p) = &self.inner.push {
                p(PushInfo {
                    kind: redis::PushKind::Disconnection,
                    data: vec![],
                });
            }
        }
    }

    /// Asks the Sentinels, in order, where the master is.
    async fn master_addr(&self) -> RedisResult<(String, u16)> {
        let name = &self.inner.target.master;
        let mut last = None;
        for (i, url) in self.inner.target.sentinels.iter().enumerate() {
            let mut cmd = redis::cmd("SENTINEL");
            cmd.arg("get-master-addr-by-name").arg(name);
            let conn = self.sentinel(i, url).await;
            let reply = match conn {
                Ok(mut c) => {
                    tokio::time::timeout(
                        self.inner.timeout,
                        cmd.query_async::<Option<(String, u16)>>(&mut c),
                    )
                    .await
                }
                Err(e) => Ok(Err(e)),
            };
            match reply {
                Ok(Ok(Some(addr))) => return Ok(addr),
                Ok(Ok(None)) => {
                    last = Some(format!(
                        "sentinel {url} does not know a master named {name:?}"
                    ))
                }
                Ok(Err(e)) => {
                    lock(&self.inner.sentinels)[i] = None;
                    last = Some(format!("sentinel {url}: {e}"));
                }
                Err(_) => {
                    lock(&self.inner.sentinels)[i] = None;
                    last = Some(format!("sentinel {url}: no answer"));
                }
            }
        }
        Err(RedisError::from((
            ErrorKind::MasterNameNotFoundBySentinel,
            "no sentinel named a master",
            last.unwrap_or_default(),
        )))
    }

    /// The cached connection to Sentinel `i`.
    async fn sentinel(&self, i: usize, url: &RedisUrl) -> RedisResult<MultiplexedConnection> {
        if let Some(Some(c)) = lock(&self.inner.sentinels).get(i) {
            return Ok(c.clone());
        }
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(self.inner.timeout)
            .set_response_timeout(self.inner.timeout);
        let c = Client::open(url.into_connection_info()?)?
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        if let Some(slot) = lock(&self.inner.sentinels).get_mut(i) {
            *slot = Some(c.clone());
        }
        Ok(c)
    }

    /// Connects to `addr` and checks it is a master now.
    async fn open(&self, addr: &(String, u16)) -> RedisResult<MultiplexedConnection> {
        let info = ConnectionInfo {
            addr: ConnectionAddr::Tcp(addr.0.clone(), addr.1),
            redis: RedisConnectionInfo {
                protocol: self.inner.protocol,
                ..Default::default()
            },
        };
        let mut conn = Client::open(info)?
            .get_multiplexed_async_connection_with_config(&self.inner.cfg)
            .await?;
        let role: Value = redis::cmd("ROLE").query_async(&mut conn).await?;
        let is_master = match &role {
            Value::Array(v) => matches!(v.first(), Some(Value::BulkString(b)) if b == b"master"),
            _ => false,
        };
        if !is_master {
            return Err(RedisError::from((
                ErrorKind::IoError,
                "the sentinels' master is not a master (failover in progress)",
                format!("{}:{} answered ROLE {role:?}", addr.0, addr.1),
            )));
        }
        Ok(conn)
    }

    /// Runs `f` on the master connection; drops the connection when the
    /// error says it is broken or no longer the master's.
    async fn with<T>(
        &self,
        f: impl AsyncFnOnce(&mut MultiplexedConnection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        let mut c = self.get().await?;
        let r = f(&mut c.conn).await;
        if let Err(e) = &r {
            if breaks(e) {
                self.reset(c.serial, &e.to_string());
            }
        }
        r
    }

    /// PING: whether the master answers (reconnecting if needed).
    pub async fn ping(&self) -> bool {
        self.with(async |c| redis::cmd("PING").query_async::<String>(c).await)
            .await
            .is_ok()
    }

    pub async fn subscribe(&self, channel: &str) -> RedisResult<()> {
        self.with(async |c| c.subscribe(channel).await).await
    }

    pub async fn unsubscribe(&self, channel: &str) -> RedisResult<()> {
        self.with(async |c| c.unsubscribe(channel).await).await
    }

    /// One check: drops the connection when the Sentinels name another
    /// master than the one it goes to.
    async fn check(&self) {
        let Some(c) = self.current() else { return };
        match self.master_addr().await {
            Ok(addr) if addr != c.addr => {
                warn!(old = %format!("{}:{}", c.addr.0, c.addr.1), new = %format!("{}:{}", addr.0, addr.1),
                    "the sentinels switched the redis master; following");
                self.reset(c.serial, "master switched");
                self.inner.switched.notify_waiters();
            }
            _ => {}
        }
    }
}

/// Whether an error means the connection is broken or points at a server
/// that is no longer the master.
fn breaks(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(e.kind(), ErrorKind::ReadOnly)
        || matches!(e.code(), Some("MASTERDOWN" | "LOADING"))
}

/// The follower's background check, until the follower is dropped.
async fn watch(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(FOLLOW_EVERY).await;
        let Some(inner) = inner.upgrade() else { return };
        Follower { inner }.check().await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ConnectionLike for Follower {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move { self.with(async |c| c.req_packed_command(cmd).await).await })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            self.with(async |c| c.req_packed_commands(cmd, offset, count).await)
                .await
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}
