//! Connections to Redis: one for commands and one for subscriptions, to a
//! single server, to the master Sentinel names (following failovers, see
//! [`sentinel`](super::sentinel)) or to a Redis Cluster.
//!
//! Commands and subscriptions never share a connection, so Redis dropping
//! a slow subscriber (`client-output-buffer-limit pubsub`) cannot fail a
//! claim in flight. Both reconnect by themselves; every command has a
//! response timeout so a Redis that went away fails a claim fast. Neither
//! resends a command whose connection failed: whether a script may run
//! again is the store's decision (`store::may_resend`).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo, RedisFuture, Value};
use tokio::sync::{mpsc, Notify};

use super::sentinel::{Follower, SentinelTarget};

/// How long a command may take before the caller is told Redis is unavailable.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where Redis is.
#[derive(Clone, Debug)]
pub struct Target {
    /// One URL for a single server; one or more seed nodes for a cluster.
    /// (Their `Display`/`Debug` hide the password.)
    pub urls: Vec<crate::config::RedisUrl>,
    pub cluster: bool,
    /// Redis behind Sentinel (then `urls` is empty).
    pub sentinel: Option<SentinelTarget>,
}

impl Target {
    /// Where Redis is, as shown in logs and errors (no passwords).
    pub fn shown(&self) -> String {
        match &self.sentinel {
            Some(s) => format!(
                "master {:?} of sentinels {}",
                s.master,
                crate::config::RedisUrl::join(&s.sentinels)
            ),
            None => crate::config::RedisUrl::join(&self.urls),
        }
    }
}

/// A command connection: single server or cluster.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Sentinel(Follower),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Notified when the connection moved to a new master (Sentinel only).
    pub fn switched(&self) -> Option<&Notify> {
        match self {
            Conn::Sentinel(f) => Some(f.switched()),
            _ => None,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Sentinel(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Opens the command connection.
pub async fn commands(target: &Target) -> redis::RedisResult<Conn> {
    if let Some(s) = &target.sentinel {
        let f = Follower::connect(s, RESPONSE_TIMEOUT, ProtocolVersion::RESP2, None).await?;
        return Ok(Conn::Sentinel(f));
    }
    if target.cluster {
        let client = redis::cluster::ClusterClientBuilder::new(target.urls.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            // The cluster client would resend a script whose connection
            // reset, not knowing whether it ran: resending is explicit,
            // and only for scripts that may run twice (`store::may_resend`).
            .retries(0)
            .build()?;
        Ok(Conn::Cluster(client.get_async_connection().await?))
    } else {
        let client = redis::Client::open(first(target)?)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_number_of_retries(1) // reconnection attempts, not resends
            .set_max_delay(500);
        Ok(Conn::Single(
            ConnectionManager::new_with_config(client, cfg).await?,
        ))
    }
}

fn first(target: &Target) -> redis::RedisResult<redis::ConnectionInfo> {
    match target.urls.first() {
        Some(url) => url.into_connection_info(),
        None => "".into_connection_info(),
    }
}

/// A subscription connection. Pushes (messages, and `Disconnection` when
/// the connection is lost) arrive on the bounded channel given to
/// [`subscriber`]; a full channel counts as a lost subscription.
#[derive(Clone)]
pub enum Sub {
    Single(ConnectionManager),
    Sentinel(Follower),
    Cluster(ClusterConnection),
}

impl Sub {
    /// Pokes a lost single-server subscription so it reconnects (and then
    /// resubscribes by itself).
    pub async fn ping(&mut self) -> bool {
        match self {
            Sub::Single(c) => redis::cmd("PING").query_async::<String>(c).await.is_ok(),
            Sub::Sentinel(f) => f.ping().await,
            Sub::Cluster(c) => redis::cmd("PING").query_async::<String>(c).await.is_ok(),
        }
    }

    /// Subscribes to a channel (sharded on a cluster).
    pub async fn subscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Sub::Single(c) => c.subscribe(channel).await,
            Sub::Sentinel(f) => f.subscribe(channel).await,
            Sub::Cluster(c) => c.ssubscribe(channel).await,
        }
    }

    /// Leaves a channel (sharded on a cluster).
    pub async fn unsubscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Sub::Single(c) => c.unsubscribe(channel).await,
            Sub::Sentinel(f) => f.unsubscribe(channel).await,
            Sub::Cluster(c) => c.sunsubscribe(channel).await,
        }
    }
}

/// The publish command the scripts use on this deployment.
pub fn publish_command(target: &Target) -> &'static str {
    if target.cluster {
        "SPUBLISH"
    } else {
        "PUBLISH"
    }
}

/// Opens the subscription connection (RESP3, resubscribing by itself).
/// `overflow` is called when `tx` is full.
pub async fn subscriber(
    target: &Target,
    tx: mpsc::Sender<PushInfo>,
    overflow: impl Fn() + Send + Sync + 'static,
) -> redis::RedisResult<Sub> {
    let deliver = move |push: PushInfo| {
        if tx.try_send(push).is_err() {
            overflow();
        }
    };
    if let Some(s) = &target.sentinel {
        let push = std::sync::Arc::new(deliver);
        let f = Follower::connect(s, RESPONSE_TIMEOUT, ProtocolVersion::RESP3, Some(push)).await?;
        return Ok(Sub::Sentinel(f));
    }
    let sender = move |push: PushInfo| -> Result<(), redis::aio::SendError> {
        deliver(push);
        Ok(())
    };
    if target.cluster {
        let client = redis::cluster::ClusterClientBuilder::new(target.urls.clone())
            .use_protocol(ProtocolVersion::RESP3)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .push_sender(sender)
            .build()?;
        Ok(Sub::Cluster(client.get_async_connection().await?))
    } else {
        let mut info = first(target)?;
        info.redis.protocol = ProtocolVersion::RESP3;
        let client = redis::Client::open(info)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_max_delay(500)
            .set_push_sender(sender)
            .set_automatic_resubscription();
        Ok(Sub::Single(
            ConnectionManager::new_with_config(client, cfg).await?,
        ))
    }
}
