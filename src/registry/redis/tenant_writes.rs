//! On a Redis Cluster: the per-tenant write counters this node has seen,
//! and the tenants whose counter showed that their shard lost writes.
//!
//! One Redis (or Sentinel) keeps one deployment-wide counter beside the
//! epoch key; a cluster cannot (it would live in another slot than the
//! tenant scripts), so each tenant counts its own writes in its own slot,
//! `<prefix>wc` (see `wrapped` in store.rs). Its value is
//! `loss generation × 10^12 + writes`: a script that finds the counter
//! below what the calling node saw starts a new loss generation, so every
//! other node learns of the loss from the next reply it gets for that
//! tenant, whatever it had seen, and re-asserts its sessions there.
//!
//! Bounded: at most [`MAX_TENANTS`] tenants are remembered, the least
//! recently used dropped first, and a tenant untouched for [`IDLE`] is
//! forgotten. A tenant not remembered is not checked (its next reply is
//! remembered from scratch): part of the window operations.md states.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::session::Tenant;

/// Tenants remembered at most.
pub(crate) const MAX_TENANTS: usize = 100_000;
/// A tenant this node has not touched for this long is forgotten.
pub(crate) const IDLE: Duration = Duration::from_secs(3600);
/// One loss generation of a tenant's counter (`prelude`'s wrapper uses
/// the same step): writes within a generation stay below it.
pub(crate) const GENERATION: u64 = 1_000_000_000_000;
/// How long a tenant's counter outlives the tenant's last write (ms): far
/// beyond [`IDLE`], so a node never remembers a counter Redis let expire
/// unless the tenant was only read from for that long.
pub(crate) const COUNTER_TTL_MS: u64 = 7 * 24 * 3600 * 1000;
/// Claims of a tenant whose shard lost writes wait this long beyond the
/// reconciliation interval: in it every node that holds sessions there
/// hears of the loss (its reconciliation runs a script for the tenant)
/// and re-asserts them.
pub(crate) const HOLD_BEYOND_RECONCILE: Duration = Duration::from_secs(5);

/// How long a tenant's claims wait after its shard lost writes.
pub(crate) fn hold(reconcile_interval: Duration) -> Duration {
    reconcile_interval + HOLD_BEYOND_RECONCILE
}

/// The counters, and the tenants to re-assert. Shared by a store's clones.
#[derive(Default)]
pub(crate) struct TenantWrites {
    seen: Mutex<Seen>,
    /// Tenants whose shard lost writes, not yet taken by the recovery task
    /// (at most [`MAX_TENANTS`]).
    lost: Mutex<HashSet<Tenant>>,
    /// Wakes the recovery task when `lost` gains a tenant.
    pub(crate) wake: Notify,
}

/// A least-recently-used map: tenant → (highest counter seen, use stamp,
/// last use), and the stamps in order.
#[derive(Default)]
struct Seen {
    map: HashMap<Tenant, Entry>,
    order: BTreeMap<u64, Tenant>,
    next: u64,
}

struct Entry {
    wc: u64,
    stamp: u64,
    used: Instant,
}

/// `m`'s data, even if a panicking thread poisoned it (a plain map
/// of numbers: nothing is left half-changed that matters).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Seen {
    /// Drops what is idle or beyond the bound (the least recently used
    /// come first in `order`, so both are at its front).
    fn trim(&mut self, now: Instant) {
        while let Some(entry) = self.order.first_entry() {
            let tenant = entry.get();
            let idle = self
                .map
                .get(tenant)
                .is_none_or(|e| now.saturating_duration_since(e.used) >= IDLE);
            if !idle && self.map.len() <= MAX_TENANTS {
                break;
            }
            let tenant = entry.remove();
            self.map.remove(&tenant);
        }
    }

    /// Marks `tenant`'s entry used now.
    fn touch(&mut self, tenant: &Tenant, now: Instant) -> Option<&mut Entry> {
        let e = self.map.get_mut(tenant)?;
        self.order.remove(&e.stamp);
        e.stamp = self.next;
        e.used = now;
        self.next += 1;
        self.order.insert(e.stamp, tenant.clone());
        Some(e)
    }
}

impl TenantWrites {
    /// The counter to send with a script for `tenant`: the highest this
    /// node has seen, or '' (not checked) when it does not remember one.
    pub(crate) fn seen(&self, tenant: &Tenant, now: Instant) -> String {
        let mut s = lock(&self.seen);
        s.trim(now);
        s.touch(tenant, now)
            .map(|e| e.wc.to_string())
            .unwrap_or_default()
    }

    /// Notes the counter `wc` a script for `tenant` answered. Returns
    /// whether it is of a later loss generation than one this node saw:
    /// the tenant's shard lost writes since (the tenant is then listed for
    /// the recovery task, which is woken).
    pub(crate) fn saw(&self, tenant: &Tenant, wc: u64, now: Instant) -> bool {
        let lost = {
            let mut s = lock(&self.seen);
            match s.touch(tenant, now) {
                Some(e) => {
                    let lost = wc / GENERATION > e.wc / GENERATION;
                    e.wc = e.wc.max(wc);
                    lost
                }
                None => {
                    let stamp = s.next;
                    s.next += 1;
                    s.order.insert(stamp, tenant.clone());
                    s.map.insert(
                        tenant.clone(),
                        Entry {
                            wc,
                            stamp,
                            used: now,
                        },
                    );
                    s.trim(now);
                    false
                }
            }
        };
        if lost {
            let mut l = lock(&self.lost);
            if l.len() < MAX_TENANTS {
                l.insert(tenant.clone());
            }
            drop(l);
            self.wake.notify_one();
        }
        lost
    }

    /// The tenants to re-assert, taken.
    pub(crate) fn take_lost(&self) -> Vec<Tenant> {
        lock(&self.lost).drain().collect()
    }

    /// How many tenants are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.seen).map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> Tenant {
        Tenant::parse(name).expect("tenant")
    }

    #[test]
    fn a_later_loss_generation_lists_the_tenant_once() {
        let w = TenantWrites::default();
        let now = Instant::now();
        assert_eq!(w.seen(&t("acme"), now), "", "not remembered: not checked");
        assert!(!w.saw(&t("acme"), 7, now));
        assert!(!w.saw(&t("acme"), 5, now), "an older reply changes nothing");
        assert_eq!(w.seen(&t("acme"), now), "7");
        assert!(w.saw(&t("acme"), GENERATION + 7, now));
        assert!(!w.saw(&t("acme"), GENERATION + 9, now));
        assert_eq!(w.take_lost(), vec![t("acme")]);
        assert!(w.take_lost().is_empty());
    }

    #[test]
    fn idle_tenants_are_forgotten_and_the_least_recently_used_go_first() {
        let w = TenantWrites::default();
        let start = Instant::now();
        w.saw(&t("old"), 1, start);
        w.saw(&t("kept"), 1, start);
        let later = start + IDLE / 2;
        assert_eq!(w.seen(&t("kept"), later), "1");
        let after = start + IDLE + Duration::from_secs(1);
        assert_eq!(w.seen(&t("old"), after), "", "idle for IDLE: forgotten");
        assert_eq!(w.seen(&t("kept"), after), "1", "used at IDLE / 2");

        let w = TenantWrites::default();
        for i in 0..=MAX_TENANTS {
            w.saw(&t(&format!("t{i}")), 1, start);
        }
        assert_eq!(w.len(), MAX_TENANTS);
        assert_eq!(w.seen(&t("t0"), start), "", "the least recently used");
        assert_eq!(w.seen(&t("t1"), start), "1");
    }
}
