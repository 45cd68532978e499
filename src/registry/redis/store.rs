//! The Redis registry's connection and its scripts: how a transition is
//! sent to Redis and its answer read back, for the registry and for the
//! cluster's background work alike.
//!
//! Every tenant script shares `lua/prelude.lua`; the node's limits and
//! identity reach it as positional arguments. Keys are named here: all of a
//! tenant's under the hash tag `{<tenant>}`, the membership's under
//! `{nodes}`.
//!
//! Every tenant script is wrapped so it also answers whether it made the
//! tenant's earliest deadline earlier; [`Store::run`] then lowers the
//! tenant in the global due-index (see [`due`](super::due)) in a follow-up
//! command.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use serde::Serialize;

use super::conn::{self, Conn, Target};
use super::due;
use super::wire::{NodesReply, Reply};
use crate::clock::Clock;
use crate::registry::{RegistryConfig, RegistryError};
use crate::session::{NodeId, Tenant};

static PRELUDE: &str = include_str!("lua/prelude.lua");

fn tenant_script(body: &str) -> Script {
    indexed_script(body, false)
}

/// A tenant script around `body`, answering `{reply}` or `{reply,
/// earliest deadline}`: the deadline when the script made the tenant's
/// earliest one earlier (or gave it its first), or — `always` — whenever the
/// tenant has one. Scripts that must re-index their tenant whatever they
/// changed (expiry, the reap of a dead node, re-assertion) use `always`.
/// On one Redis (ARGV[15..17] = the index's keys and the tenant; empty on
/// a cluster, where they live in another slot) the script lowers the index
/// itself and answers `{reply, deadline, 1}`: no follow-up needed.
fn indexed_script(body: &str, always: bool) -> Script {
    Script::new(&format!(
        "{PRELUDE}
local due_before = redis.call('ZRANGE', P .. 'dl', 0, 0, 'WITHSCORES')[2]
local reply = (function()
{body}
end)()
local due_after = redis.call('ZRANGE', P .. 'dl', 0, 0, 'WITHSCORES')[2]
if due_after and ({always} or not due_before or tonumber(due_after) < tonumber(due_before)) then
  if ARGV[15] ~= '' then
    redis.call('ZADD', ARGV[15], 'LT', due_after, ARGV[17])
    redis.call('HINCRBY', ARGV[16], ARGV[17], 1)
    return {{reply, due_after, '1'}}
  end
  return {{reply, due_after}}
end
return {{reply}}"
    ))
}

/// Every script, loaded once.
pub(crate) struct Scripts {
    pub claim: Script,
    pub release: Script,
    pub evict: Script,
    pub read: Script,
    pub notify: Script,
    pub socket: Script,
    pub expire: Script,
    pub reap: Script,
    pub sync: Script,
    pub reassert: Script,
    pub nodes: Script,
    pub due: Script,
    pub seats: Script,
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    claim: tenant_script(include_str!("lua/claim.lua")),
    release: tenant_script(include_str!("lua/release.lua")),
    evict: tenant_script(include_str!("lua/evict.lua")),
    read: tenant_script(include_str!("lua/read.lua")),
    notify: tenant_script(include_str!("lua/notify.lua")),
    socket: tenant_script(include_str!("lua/socket.lua")),
    expire: indexed_script(include_str!("lua/expire.lua"), true),
    reap: indexed_script(include_str!("lua/reap.lua"), true),
    sync: tenant_script(include_str!("lua/sync.lua")),
    reassert: indexed_script(include_str!("lua/reassert.lua"), true),
    nodes: Script::new(include_str!("lua/nodes.lua")),
    due: Script::new(include_str!("lua/due.lua")),
    seats: tenant_script(include_str!("lua/seats.lua")),
});

fn script_limits(c: &RegistryConfig) -> [u64; 7] {
    let ms = |d: Duration| d.as_millis() as u64;
    [
        ms(c.connect_timeout),
        ms(c.grace),
        ms(c.tombstone_ttl),
        c.max_sockets_per_session as u64,
        ms(c.idempotency_ttl),
        c.max_notices_per_session as u64,
        ms(c.default_notice_ttl),
    ]
}

/// The command connection and what every script call carries. Cheap to
/// clone.
#[derive(Clone)]
pub(crate) struct Store {
    conn: Conn,
    /// Prefix of every key and channel.
    namespace: String,
    pubcmd: &'static str,
    /// The scripts' fixed limits, in `prelude.lua`'s argument order: connect
    /// timeout, grace, tombstone ttl (ms), max sockets, idempotency ttl
    /// (ms), max notices, default notice ttl (ms).
    limits: [u64; 7],
    /// The global epoch key on one Redis; empty on a cluster (tenants'
    /// markers stand alone there).
    epoch_key: String,
    /// The due-index keys on one Redis, where scripts update it
    /// themselves; empty on a cluster.
    due_keys: [String; 2],
    /// The registry's clock: every script's `now`.
    clock: Clock,
    /// Tenants whose due-index follow-up failed, to retry (bounded).
    unindexed: due::Unindexed,
}

impl Store {
    /// Opens the command connection.
    pub(crate) async fn connect(
        target: &Target,
        namespace: &str,
        cfg: &RegistryConfig,
    ) -> redis::RedisResult<Self> {
        let mut store = Store {
            conn: conn::commands(target).await?,
            namespace: namespace.to_string(),
            pubcmd: conn::publish_command(target),
            limits: script_limits(cfg),
            epoch_key: String::new(),
            due_keys: Default::default(),
            clock: cfg.clock.clone(),
            unindexed: due::Unindexed::default(),
        };
        if !target.cluster {
            store.epoch_key = store.nodes_key("epoch");
            store.due_keys = [store.nodes_key("due"), store.nodes_key("due:v")];
        }
        Ok(store)
    }

    /// A key of the node membership (all under the `{nodes}` hash tag).
    pub(crate) fn nodes_key(&self, name: &str) -> String {
        format!("{}:{{nodes}}:{name}", self.namespace)
    }

    /// The prefix of every key of a tenant: `<ns>:{<tenant>}:`.
    pub(crate) fn prefix(&self, tenant: &Tenant) -> String {
        format!("{}:{{{}}}:", self.namespace, tenant.as_str())
    }

    /// The registry clock's "now" (epoch ms): what scripts are given and
    /// what records are stamped with.
    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The registry's clock, for the lease task to keep on Redis's time.
    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The command connection, for plain commands (SMEMBERS, SSCAN).
    pub(crate) fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// Tenants whose due-index follow-up failed.
    pub(crate) fn unindexed(&self) -> &due::Unindexed {
        &self.unindexed
    }

    /// Runs a tenant script as incarnation `node` that knows `epoch`, and
    /// decodes its reply (errors still inside); lowers the tenant in the
    /// due-index when the script gave it an earlier deadline.
    pub(crate) async fn run<R: Serialize>(
        &self,
        script: &Script,
        tenant: &Tenant,
        node: &NodeId,
        epoch: &str,
        req: &R,
    ) -> Result<Reply, RegistryError> {
        Ok(self.run_due(script, tenant, node, epoch, req).await?.0)
    }

    /// [`run`](Self::run), also answering the deadline the script reported
    /// (always the tenant's earliest, if any, for the `always` scripts).
    pub(crate) async fn run_due<R: Serialize>(
        &self,
        script: &Script,
        tenant: &Tenant,
        node: &NodeId,
        epoch: &str,
        req: &R,
    ) -> Result<(Reply, Option<String>), RegistryError> {
        let p = self.prefix(tenant);
        let req = serde_json::to_string(req)
            .map_err(|e| RegistryError::Unavailable(format!("encoding a request: {e}")))?;
        let mut conn = self.conn.clone();
        let mut raw: Vec<String> = script
            .key(format!("{p}ep"))
            .arg(&p)
            .arg(self.clock.now_ms())
            .arg(self.pubcmd)
            .arg(node.as_str())
            .arg(&self.limits[..])
            .arg(epoch)
            .arg(&self.epoch_key)
            .arg(req)
            .arg(&self.due_keys[..])
            .arg(if self.due_keys[0].is_empty() {
                ""
            } else {
                tenant.as_str()
            })
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let indexed = raw.len() > 2;
        raw.truncate(2);
        let earliest = if raw.len() > 1 { raw.pop() } else { None };
        let raw = raw.pop().unwrap_or_default();
        let reply: Reply = serde_json::from_str(&raw)
            .map_err(|e| RegistryError::Unavailable(format!("undecodable reply {raw:?}: {e}")))?;
        if let (Some(at), false) = (&earliest, indexed) {
            due::lower(self, &[(tenant.as_str(), at.as_str())]).await;
        }
        Ok((reply, earliest))
    }

    /// Which of `nodes` the cluster has declared dead (the `{nodes}` dead
    /// set): one command, in the membership's slot, so it is also right on
    /// a Redis Cluster, where no tenant script may read that slot.
    pub(crate) async fn dead_among(&self, nodes: &[String]) -> Result<Vec<String>, RegistryError> {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let scores: Vec<Option<f64>> = redis::cmd("ZMSCORE")
            .arg(self.nodes_key("dead"))
            .arg(nodes)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(nodes
            .iter()
            .zip(scores)
            .filter(|(_, score)| score.is_some())
            .map(|(node, _)| node.clone())
            .collect())
    }

    /// Runs the membership script about `node` (this one or a dead one).
    /// It reads Redis's clock itself, never this node's.
    pub(crate) async fn nodes(
        &self,
        op: &str,
        node: &str,
        args: &[String],
    ) -> Result<NodesReply, RegistryError> {
        let mut conn = self.conn.clone();
        let mut inv = SCRIPTS.nodes.key(self.nodes_key("leases"));
        inv.arg(op).arg(node);
        for a in args {
            inv.arg(a);
        }
        let sent = tokio::time::Instant::now();
        let raw: String = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        if op == "lease" {
            metrics::histogram!(crate::metrics_names::REDIS_LEASE_REFRESH_SECONDS)
                .record(sent.elapsed().as_secs_f64());
        }
        serde_json::from_str(&raw)
            .map_err(|e| RegistryError::Unavailable(format!("undecodable reply {raw:?}: {e}")))
    }
}

pub(crate) fn unavailable(e: redis::RedisError) -> RegistryError {
    RegistryError::Unavailable(format!("redis: {e}"))
}
