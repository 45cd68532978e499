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
//!
//! A script call that fails is sent again only here, once, and only when
//! that cannot make it run twice ([`may_resend`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;
use serde::Serialize;
use tracing::{debug, warn};

use super::conn::{self, Conn, Target};
use super::due;
use super::tenant_writes::{self, TenantWrites, COUNTER_TTL_MS, GENERATION};
use super::wire::{NodesReply, Reply};
use crate::clock::Clock;
use crate::registry::{RegistryConfig, RegistryError};
use crate::session::{NodeId, Tenant};

static PRELUDE: &str = include_str!("lua/prelude.lua");

fn tenant_script(body: &str) -> Script {
    indexed_script(body, false)
}

/// A tenant script that only reads: it checks the write counter (below)
/// but does not count.
fn reading_script(body: &str) -> Script {
    wrapped(body, false, false)
}

fn indexed_script(body: &str, always: bool) -> Script {
    wrapped(body, always, true)
}

/// A tenant script around `body`, answering `{reply, deadline, indexed,
/// writes}`. `deadline` ('' for none) is the tenant's earliest deadline
/// when the script made it earlier (or gave it its first), or — `always` —
/// whenever the tenant has one. Scripts that must re-index their tenant
/// whatever they changed (expiry, the reap of a dead node, re-assertion)
/// use `always`. On one Redis (ARGV[15..17] = the index's keys and the
/// tenant; empty on a cluster, where they live in another slot) the script
/// lowers the index itself and answers `indexed` = '1': no follow-up
/// needed.
///
/// The presence events the body logged are written to the tenant's event
/// log after it, as one stream entry (`log_flush` in `prelude.lua`).
///
/// `writes`: on one Redis, the deployment's write counter
/// (`<epoch key>:wc`), counted up by every script that may write
/// (`counts`). ARGV[20] is the highest value this node has seen; a counter
/// below it means Redis lost writes this node saw acknowledged (a failover
/// to a replica that was behind, a restore from an older file): the
/// script refuses (`lostwrites`) before it reads anything, and the node's
/// next lease refresh starts a recovery.
///
/// On a Redis Cluster, the tenant's own counter (`<prefix>wc`, see
/// [`tenant_writes`](super::tenant_writes)); ARGV[20] is the highest value
/// this node has seen for the tenant ('' when it does not remember one).
/// A counter below it (or gone with the epoch marker: the shard lost
/// everything) is the same loss, of this tenant's shard: the script starts
/// a new loss generation of the counter (every node learns of the loss
/// from its next reply and re-asserts its sessions here), holds the
/// tenant's claims for ARGV[22] ms (`rc`, see `ensure_epoch`), keeps (or
/// puts back) the epoch marker, and refuses (`lostwrites`). The counter
/// lives [`COUNTER_TTL_MS`] after the tenant's last write; a counter gone
/// while the epoch marker stayed (it expired) is not a loss: it goes on
/// from what the calling node saw.
fn wrapped(body: &str, always: bool, counts: bool) -> Script {
    Script::new(&format!(
        "{PRELUDE}
local wc, wc_key, wc_was = '', nil, nil
if ARGV[13] ~= '' and ARGV[20] ~= '' then
  -- One Redis: the deployment's counter, counted before the body.
  local k = ARGV[13] .. ':wc'
  if {counts} then wc = redis.call('INCR', k)
  else wc = redis.call('GET', k) or '0' end
  -- (arithmetic, not tonumber: see prelude.lua; a refused call's count
  -- only moves the counter further up)
  if wc - ARGV[20] < 0 then
    return {{'{{\"err\":\"lostwrites\"}}', '', '', ''}}
  end
  wc = tostring(wc)
elseif ARGV[13] == '' then
  wc_key = P .. 'wc'
  wc_was = redis.call('GET', wc_key)
  local seen = tonumber(ARGV[20])
  if seen and seen > 0 and ((wc_was and tonumber(wc_was) < seen)
      or (not wc_was and redis.call('EXISTS', P .. 'ep') == 0)) then
    local g = {GENERATION}
    local wc = string.format('%d', (math.floor(seen / g) + 1) * g + seen % g)
    redis.call('SET', wc_key, wc, 'PX', {COUNTER_TTL_MS})
    if redis.call('EXISTS', P .. 'ep') == 0 then redis.call('SET', P .. 'ep', C.epoch) end
    redis.call('SET', P .. 'rc', '1', 'PX', ARGV[22])
    return {{'{{\"err\":\"lostwrites\"}}', '', '', wc}}
  end
  if not wc_was and seen then wc_was = ARGV[20] end
end
local due_before = redis.call('ZRANGE', P .. 'dl', 0, 0, 'WITHSCORES')[2]
local reply = (function()
{body}
end)()
log_flush()
if wc_key then
  -- A cluster: the tenant's counter, written back after the body.
  wc = wc_was or '0'
  if {counts} then
    wc = string.format('%d', wc + 1)
    redis.call('SET', wc_key, wc, 'PX', {COUNTER_TTL_MS})
  end
end
local due_after = redis.call('ZRANGE', P .. 'dl', 0, 0, 'WITHSCORES')[2]
if due_after and ({always} or not due_before or tonumber(due_after) < tonumber(due_before)) then
  if ARGV[15] ~= '' then
    redis.call('ZADD', ARGV[15], 'LT', due_after, ARGV[17])
    redis.call('HINCRBY', ARGV[16], ARGV[17], 1)
    return {{reply, due_after, '1', wc}}
  end
  return {{reply, due_after, '', wc}}
end
return {{reply, '', '', wc}}"
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
    pub log: Script,
    pub hook: Script,
    pub seats: Script,
    pub directory: Script,
}

impl Scripts {
    /// Scripts that may run twice for one call with the effect and answer
    /// of one run, so a call whose connection reset may be sent again: a
    /// claim recognises its own request by the session id it carries
    /// (`claimed_before` in `prelude.lua`), a read changes nothing, and
    /// releasing an ended session answers it unchanged. Every other
    /// script is sent once; its caller hears UNAVAILABLE.
    pub(crate) fn rerunnable(&self, script: &Script) -> bool {
        [&self.claim, &self.read, &self.release]
            .iter()
            .any(|s| s.get_hash() == script.get_hash())
    }
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    claim: tenant_script(include_str!("lua/claim.lua")),
    release: tenant_script(include_str!("lua/release.lua")),
    evict: tenant_script(include_str!("lua/evict.lua")),
    read: reading_script(include_str!("lua/read.lua")),
    notify: tenant_script(include_str!("lua/notify.lua")),
    socket: tenant_script(include_str!("lua/socket.lua")),
    expire: indexed_script(include_str!("lua/expire.lua"), true),
    reap: indexed_script(include_str!("lua/reap.lua"), true),
    sync: tenant_script(include_str!("lua/sync.lua")),
    reassert: indexed_script(include_str!("lua/reassert.lua"), true),
    nodes: Script::new(include_str!("lua/nodes.lua")),
    due: Script::new(include_str!("lua/due.lua")),
    log: Script::new(include_str!("lua/log.lua")),
    hook: Script::new(include_str!("lua/hook.lua")),
    seats: tenant_script(include_str!("lua/seats.lua")),
    directory: tenant_script(include_str!("lua/directory.lua")),
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
    /// The event log's bounds, `prelude.lua`'s ARGV[18..19]: max events,
    /// max age (ms).
    log_bounds: [u64; 2],
    /// On one Redis: the highest write counter this node has seen (see
    /// [`wrapped`]); shared by the clones.
    writes: Arc<AtomicU64>,
    /// On a Redis Cluster: the highest per tenant; shared by the clones.
    tenant_writes: Arc<TenantWrites>,
    /// On a Redis Cluster: how long (ms) a tenant's claims wait after its
    /// shard was found to have lost writes.
    tenant_hold_ms: String,
}

impl Store {
    /// Opens the command connection.
    pub(crate) async fn connect(
        target: &Target,
        namespace: &str,
        cfg: &RegistryConfig,
        reconcile_interval: Duration,
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
            log_bounds: [
                cfg.event_log.max_events as u64,
                cfg.event_log.max_age.as_millis() as u64,
            ],
            writes: Arc::new(AtomicU64::new(0)),
            tenant_writes: Arc::default(),
            tenant_hold_ms: String::new(),
        };
        if !target.cluster {
            store.epoch_key = store.nodes_key("epoch");
            store.due_keys = [store.nodes_key("due"), store.nodes_key("due:v")];
        } else {
            store.tenant_hold_ms = tenant_writes::hold(reconcile_interval)
                .as_millis()
                .to_string();
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

    /// The write counter to send with a script or lease ('' on a cluster,
    /// where it is not kept).
    pub(crate) fn writes_seen(&self) -> String {
        if self.epoch_key.is_empty() {
            String::new()
        } else {
            self.writes.load(Ordering::Acquire).to_string()
        }
    }

    /// Notes a write counter Redis answered.
    pub(crate) fn saw_writes(&self, wc: u64) {
        self.writes.fetch_max(wc, Ordering::AcqRel);
    }

    /// After a new epoch: the counter starts again from what Redis holds.
    pub(crate) fn reset_writes(&self, wc: u64) {
        self.writes.store(wc, Ordering::Release);
    }

    /// The write counter to send with a script for `tenant`: the
    /// deployment's on one Redis, the tenant's on a cluster.
    fn writes_seen_for(&self, tenant: &Tenant) -> String {
        if self.epoch_key.is_empty() {
            self.tenant_writes.seen(tenant, std::time::Instant::now())
        } else {
            self.writes_seen()
        }
    }

    /// Notes a write counter a script for `tenant` answered (`refused`:
    /// the script found Redis had lost writes).
    fn saw_writes_for(&self, tenant: &Tenant, wc: u64, refused: bool) {
        if !self.epoch_key.is_empty() {
            self.saw_writes(wc);
            return;
        }
        if refused {
            metrics::counter!(crate::metrics_names::REDIS_LOST_WRITES).increment(1);
        }
        if self
            .tenant_writes
            .saw(tenant, wc, std::time::Instant::now())
        {
            warn!(%tenant, "redis lost writes of this tenant that this node saw (its shard failed over to a replica that was behind?); re-asserting its sessions here");
        }
    }

    /// On a Redis Cluster: the tenants whose shard lost writes, for the
    /// recovery task.
    pub(crate) fn tenant_writes(&self) -> &TenantWrites {
        &self.tenant_writes
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
        let rerunnable = SCRIPTS.rerunnable(script);
        let mut resent = 0;
        let mut raw: Vec<String> = loop {
            let result = script
                .key(format!("{p}ep"))
                .arg(&p)
                .arg(self.clock.now_ms())
                .arg(self.pubcmd)
                .arg(node.as_str())
                .arg(&self.limits[..])
                .arg(epoch)
                .arg(&self.epoch_key)
                .arg(&req)
                .arg(&self.due_keys[..])
                .arg(if self.due_keys[0].is_empty() {
                    ""
                } else {
                    tenant.as_str()
                })
                .arg(&self.log_bounds[..])
                .arg(self.writes_seen_for(tenant))
                .arg(if resent > 0 { "1" } else { "" })
                .arg(&self.tenant_hold_ms)
                .invoke_async(&mut conn)
                .await;
            match result {
                Ok(raw) => break raw,
                Err(e) if resent < MAX_RESENDS && may_resend(&e, rerunnable) => {
                    debug!(error = %e, %tenant, "resending a script call");
                    resent += 1;
                }
                Err(e) => return Err(unavailable(e)),
            }
        };
        raw.resize(4, String::new());
        if let Ok(wc) = raw[3].parse() {
            self.saw_writes_for(tenant, wc, raw[0] == LOST_WRITES);
        }
        let indexed = raw[2] == "1";
        let earliest = Some(std::mem::take(&mut raw[1])).filter(|d| !d.is_empty());
        let raw = std::mem::take(&mut raw[0]);
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

/// The reply of a script that found Redis had lost writes.
const LOST_WRITES: &str = r#"{"err":"lostwrites"}"#;

/// Times a failed script call is sent again (see [`may_resend`]).
const MAX_RESENDS: usize = 1;

/// Whether a script call that failed with `e` may be sent again. Always
/// when Redis provably did not run it (a cluster redirect, a refused
/// connection). When it may have run — the connection reset or the reply
/// timed out after the call left — only if the script is
/// [`rerunnable`](Scripts::rerunnable): a second run of anything else could
/// end or grant a session twice. The connections themselves never resend
/// (see `conn.rs`); this is the one place that does.
fn may_resend(e: &redis::RedisError, rerunnable: bool) -> bool {
    use redis::RetryMethod;
    if e.is_connection_refusal() {
        return true;
    }
    match e.retry_method() {
        RetryMethod::MovedRedirect | RetryMethod::AskRedirect => true,
        RetryMethod::Reconnect
        | RetryMethod::ReconnectFromInitialConnections
        | RetryMethod::RetryImmediately => rerunnable,
        _ => false,
    }
}

impl Store {
    /// Up to `limit` entries of the tenant's event log after sequence
    /// `after` (`lua/log.lua`): the head sequence, whether entries after
    /// `after` are missing, and the entries' JSON.
    pub(crate) async fn read_log(
        &self,
        tenant: &Tenant,
        after: u64,
        limit: usize,
    ) -> Result<(u64, bool, Vec<String>), RegistryError> {
        let p = self.prefix(tenant);
        let mut conn = self.conn.clone();
        let mut raw: Vec<String> = SCRIPTS
            .log
            .key(format!("{p}log"))
            .key(format!("{p}lsq"))
            .arg(after)
            .arg(limit)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if raw.len() < 2 {
            return Err(RegistryError::Unavailable(format!(
                "undecodable event log reply {raw:?}"
            )));
        }
        let entries = raw.split_off(2);
        let head = raw[0]
            .parse()
            .map_err(|e| RegistryError::Unavailable(format!("event log head {:?}: {e}", raw[0])))?;
        Ok((head, raw[1] == "1", entries))
    }
}

/// How long a webhook's cursor outlives its last use: long after the log
/// it points into has expired, so a quiet tenant does not get old events
/// again.
const HOOK_CURSOR_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

impl Store {
    /// Runs `lua/hook.lua` (`op` = `lease` or `done`) for webhook `hook` of
    /// `tenant` as `node`: the cursor, or -1 when another node holds the
    /// lease.
    pub(crate) async fn hook(
        &self,
        tenant: &Tenant,
        hook: &str,
        op: &str,
        node: &str,
        ttl: Duration,
        seq: u64,
    ) -> Result<i64, RegistryError> {
        let p = self.prefix(tenant);
        let mut conn = self.conn.clone();
        SCRIPTS
            .hook
            .key(format!("{p}wh:{hook}:l"))
            .key(format!("{p}wh:{hook}:c"))
            .arg(op)
            .arg(node)
            .arg(ttl.as_millis() as u64)
            .arg(seq)
            .arg(HOOK_CURSOR_TTL.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)
    }
}

pub(crate) fn unavailable(e: redis::RedisError) -> RegistryError {
    RegistryError::Unavailable(format!("redis: {e}"))
}

#[cfg(test)]
mod tests {
    use std::io;

    use redis::{ErrorKind, RedisError};

    use super::*;

    #[test]
    fn only_a_script_that_may_run_twice_is_resent_after_a_reset() {
        let io = |kind| RedisError::from(io::Error::from(kind));
        let may_have_run = [
            io(io::ErrorKind::ConnectionReset),
            io(io::ErrorKind::BrokenPipe),
            io(io::ErrorKind::UnexpectedEof),
            io(io::ErrorKind::TimedOut),
        ];
        for e in &may_have_run {
            assert!(may_resend(e, true), "{e}");
            assert!(!may_resend(e, false), "{e}");
        }
        let did_not_run = [
            io(io::ErrorKind::ConnectionRefused),
            RedisError::from((ErrorKind::Moved, "moved", "1 127.0.0.1:7001".into())),
        ];
        for e in &did_not_run {
            assert!(may_resend(e, false), "{e}");
        }
        let answered = RedisError::from((ErrorKind::ResponseError, "script error"));
        assert!(!may_resend(&answered, true));
        let busy = RedisError::from((ErrorKind::BusyLoadingError, "loading"));
        assert!(!may_resend(&busy, true), "fails fast: the caller retries");

        assert!(SCRIPTS.rerunnable(&SCRIPTS.claim));
        assert!(SCRIPTS.rerunnable(&SCRIPTS.read));
        assert!(SCRIPTS.rerunnable(&SCRIPTS.release));
        for s in [
            &SCRIPTS.evict,
            &SCRIPTS.notify,
            &SCRIPTS.socket,
            &SCRIPTS.reap,
        ] {
            assert!(!SCRIPTS.rerunnable(s));
        }
    }
}
