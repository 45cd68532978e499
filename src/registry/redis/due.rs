//! The due-index: one sorted set, `<ns>:{nodes}:due`, of the tenants that
//! have a session deadline, scored by (a hint of) their earliest one, so
//! expiry wakes only tenants with due work — an idle cluster of 100,000
//! tenants costs what one of ten does.
//!
//! Why a follow-up command and not the tenant's own script: a tenant's keys
//! live in their own Redis Cluster slot (`{<tenant>}`), the index in the
//! `{nodes}` slot, and one script may touch one slot only. So every tenant
//! script reports when it made the tenant's earliest deadline earlier
//! ([`Store::run`]), and the node then *lowers* the tenant's score here
//! (`ZADD LT`: never raises, safe to repeat, safe in any order). A score
//! may be early — expiry then finds nothing due and corrects it — never
//! late, because only expiry raises or removes one, and only with
//! care (`lua/due.lua`):
//! - `take` moves each due tenant to "retry at" (now + the lease TTL) before
//!   its expiry runs, so a sweeper that dies leaves the tenant due again;
//! - after expiry the sweeper lowers the tenant to its next deadline, or
//!   `drop`s it when it has none — only if no `lower` happened since
//!   `take` (a version per tenant), so a deadline added meanwhile is kept.
//!
//! What covers a node that dies between a script and its follow-up: its
//! tenants are reaped by a live node when it is buried, and the reap always
//! re-indexes. A follow-up that fails on a live node is retried each tick
//! from [`Unindexed`]. Tenants recorded by older versions in the
//! `<ns>:{nodes}:tenants` set are moved into the index a batch per tick
//! ([`adopt_legacy`]), and the set is emptied.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tracing::warn;

use super::store::{unavailable, Store, SCRIPTS};
use crate::registry::RegistryError;
use crate::session::Tenant;

/// Tenants remembered for a failed follow-up; beyond this, the reap of a
/// dead node or the next script in the tenant re-indexes them.
const UNINDEXED_MAX: usize = 100_000;
/// Tenants retried, or adopted from the legacy set, per tick.
const REPAIR_BATCH: usize = 256;

/// Tenants whose follow-up failed, to lower again. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Unindexed(Arc<Mutex<HashSet<String>>>);

impl Unindexed {
    fn add(&self, tenants: &[(&str, &str)]) {
        if let Ok(mut set) = self.0.lock() {
            for (t, _) in tenants {
                if set.len() < UNINDEXED_MAX {
                    set.insert((*t).to_string());
                }
            }
        }
    }

    fn take(&self, max: usize) -> Vec<String> {
        let Ok(mut set) = self.0.lock() else {
            return Vec::new();
        };
        let out: Vec<String> = set.iter().take(max).cloned().collect();
        for t in &out {
            set.remove(t);
        }
        out
    }
}

fn keys(store: &Store) -> (String, String) {
    (store.nodes_key("due"), store.nodes_key("due:v"))
}

/// Lowers each tenant's score to the deadline given with it (adds the
/// tenant if absent); a failure is remembered and retried.
pub(crate) async fn lower(store: &Store, tenants: &[(&str, &str)]) {
    if tenants.is_empty() {
        return;
    }
    let (due, ver) = keys(store);
    let mut inv = SCRIPTS.due.key(due);
    inv.key(ver).arg("lower");
    for (t, at) in tenants {
        inv.arg(*t).arg(*at);
    }
    let r: redis::RedisResult<i64> = inv.invoke_async(&mut store.conn()).await;
    if let Err(e) = r {
        warn!(error = %e, tenants = tenants.len(), "updating the due-index failed; retrying next tick");
        store.unindexed().add(tenants);
    }
}

/// Up to `max` tenants due at `now`, each with its version, moved to
/// `retry_at` for the other nodes. One plain read when none is due.
pub(crate) async fn take(
    store: &Store,
    now: i64,
    retry_at: i64,
    max: usize,
) -> Result<Vec<(String, String)>, RegistryError> {
    let (due, ver) = keys(store);
    let mut conn = store.conn();
    let any: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(&due)
        .arg("-inf")
        .arg(now)
        .arg("LIMIT")
        .arg(0)
        .arg(1)
        .query_async(&mut conn)
        .await
        .map_err(unavailable)?;
    if any.is_empty() {
        return Ok(Vec::new());
    }
    let flat: Vec<String> = SCRIPTS
        .due
        .key(due)
        .key(ver)
        .arg("take")
        .arg(now)
        .arg(retry_at)
        .arg(max)
        .invoke_async(&mut conn)
        .await
        .map_err(unavailable)?;
    Ok(flat
        .chunks_exact(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect())
}

/// Removes a tenant with no deadline left, unless it was lowered since it
/// was taken at `version`.
pub(crate) async fn drop(store: &Store, tenant: &str, version: &str) {
    let (due, ver) = keys(store);
    let r: redis::RedisResult<i64> = SCRIPTS
        .due
        .key(due)
        .key(ver)
        .arg("drop")
        .arg(tenant)
        .arg(version)
        .invoke_async(&mut store.conn())
        .await;
    if let Err(e) = r {
        // Left at its retry time: a later round drops it.
        warn!(error = %e, tenant, "dropping a tenant from the due-index failed");
    }
}

/// Re-indexes tenants whose follow-up failed, from their own earliest
/// deadline (a batch per call).
pub(crate) async fn retry_unindexed(store: &Store) {
    let tenants = store.unindexed().take(REPAIR_BATCH);
    let mut found = Vec::new();
    for t in &tenants {
        let Ok(tenant) = Tenant::parse(t) else {
            continue;
        };
        let key = format!("{}dl", store.prefix(&tenant));
        let first: redis::RedisResult<Vec<String>> = redis::cmd("ZRANGE")
            .arg(&key)
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query_async(&mut store.conn())
            .await;
        match first {
            Ok(v) if v.len() == 2 => found.push((t.clone(), v[1].clone())),
            Ok(_) => {}
            Err(_) => store.unindexed().add(&[(t.as_str(), "")]),
        }
    }
    let pairs: Vec<(&str, &str)> = found
        .iter()
        .map(|(t, at)| (t.as_str(), at.as_str()))
        .collect();
    lower(store, &pairs).await;
}

/// Moves tenants recorded by older versions in the legacy
/// `<ns>:{nodes}:tenants` set into the due-index, due now (expiry then
/// finds their real deadlines or drops them); a batch per call, until the
/// set is gone.
pub(crate) async fn adopt_legacy(store: &Store, now: i64) {
    let legacy: redis::RedisResult<Vec<String>> = redis::cmd("SPOP")
        .arg(store.nodes_key("tenants"))
        .arg(REPAIR_BATCH)
        .query_async(&mut store.conn())
        .await;
    let Ok(tenants) = legacy else { return };
    let now = now.to_string();
    let pairs: Vec<(&str, &str)> = tenants.iter().map(|t| (t.as_str(), now.as_str())).collect();
    lower(store, &pairs).await;
}
