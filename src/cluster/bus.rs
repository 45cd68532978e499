//! The bus: messages between nodes over Redis pub/sub.
//!
//! Scripts publish what they did in the same step, only to whom it
//! concerns: endings and notices to `<ns>:{<tenant>}:ev:<node>` of each
//! node holding one of the session's sockets, presence changes to
//! `<ns>:{<tenant>}:pr`. This module names those channels, subscribes to
//! them as tenants are used, and its task turns each message into an
//! [`Event`] for the [`EventSink`](crate::registry::EventSink). Pub/sub is
//! at-most-once: a lost subscription (or an overflowing inbox) marks the
//! bus not ready and wakes reconciliation, which also resubscribes; and
//! presence watchers are told of the gap ([`Event::Gap`]) then and when the
//! subscription is back, so they catch up from the tenant's event log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dashmap::DashSet;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, Mutex, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Node;
use crate::registry::redis::conn::Sub;
use crate::registry::redis::store::unavailable;
use crate::registry::redis::wire::{self, WEvent};
use crate::registry::{Event, GapReason, RegistryError};
use crate::session::{NodeId, SessionId, Tenant};

/// The names of one namespace's channels.
#[derive(Clone, Debug)]
pub(crate) struct Channels {
    namespace: String,
}

/// What a tenant's channel carries.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Channel<'c> {
    /// Endings and notices for the sockets this node incarnation holds.
    Events { node: &'c str },
    /// Presence changes, for watchers.
    Presence,
}

impl Channels {
    pub(crate) fn new(namespace: &str) -> Self {
        Channels {
            namespace: namespace.to_string(),
        }
    }

    /// The channel of the events (endings, notices) about sockets `node`
    /// holds in `tenant`: `<ns>:{<tenant>}:ev:<node>`. Scripts publish
    /// each event only to its holders' channels, so no other node is woken.
    pub(crate) fn events(&self, tenant: &Tenant, node: &str) -> String {
        format!("{}:{{{}}}:ev:{node}", self.namespace, tenant.as_str())
    }

    /// A tenant's presence channel, `<ns>:{<tenant>}:pr`.
    pub(crate) fn presence(&self, tenant: &Tenant) -> String {
        format!("{}:{{{}}}:pr", self.namespace, tenant.as_str())
    }

    /// The tenant of one of this namespace's channels, and what it carries.
    pub(crate) fn parse<'c>(&self, channel: &'c str) -> Option<(Tenant, Channel<'c>)> {
        let inner = channel
            .strip_prefix(self.namespace.as_str())?
            .strip_prefix(":{")?;
        // Tenant names cannot contain '}'.
        let (tenant, rest) = inner.split_once('}')?;
        let kind = match rest {
            ":pr" => Channel::Presence,
            _ => Channel::Events {
                node: rest.strip_prefix(":ev:")?,
            },
        };
        Some((Tenant::parse(tenant).ok()?, kind))
    }
}

/// This node's subscriptions.
pub(crate) struct Bus {
    channels: Channels,
    sub: Mutex<Sub>,
    /// The channels this node subscribed to: its event channel of each
    /// tenant it holds sockets in (named after the incarnation, so a
    /// re-joined node subscribes afresh), and the presence channel of each
    /// tenant it has watchers in.
    subscribed: DashSet<String>,
    /// False from a lost subscription until it is back.
    ok: AtomicBool,
    /// Wakes the reconciler early (lost subscription, overflow).
    pub(super) resync: Notify,
}

impl Bus {
    pub(super) fn new(channels: Channels, sub: Sub) -> Self {
        Bus {
            channels,
            sub: Mutex::new(sub),
            subscribed: DashSet::new(),
            ok: AtomicBool::new(true),
            resync: Notify::new(),
        }
    }

    /// Whether the subscription is up (no message lost since it was last
    /// reconciled).
    pub(crate) fn is_ok(&self) -> bool {
        self.ok.load(Ordering::Relaxed)
    }

    /// Makes sure incarnation `node` hears the tenant's events.
    pub(crate) async fn ensure_subscribed(
        &self,
        tenant: &Tenant,
        node: &NodeId,
    ) -> Result<(), RegistryError> {
        self.subscribe_once(self.channels.events(tenant, node.as_str()))
            .await
    }

    /// Makes sure this node hears the tenant's presence changes.
    pub(crate) async fn watch(&self, tenant: &Tenant) -> Result<(), RegistryError> {
        self.subscribe_once(self.channels.presence(tenant)).await
    }

    /// Subscribes to `channel` unless this node already did.
    async fn subscribe_once(&self, channel: String) -> Result<(), RegistryError> {
        if self.subscribed.contains(&channel) {
            return Ok(());
        }
        self.sub
            .lock()
            .await
            .subscribe(&channel)
            .await
            .map_err(unavailable)?;
        self.subscribed.insert(channel);
        Ok(())
    }

    /// Leaves the event channels of a fenced incarnation.
    pub(super) async fn leave_incarnation(&self, old: &NodeId) {
        let stale: Vec<String> = self
            .subscribed
            .iter()
            .filter(|c| {
                matches!(self.channels.parse(c),
                    Some((_, Channel::Events { node })) if node == old.as_str())
            })
            .map(|c| c.clone())
            .collect();
        let mut sub = self.sub.lock().await;
        for channel in stale {
            self.subscribed.remove(&channel);
            if let Err(e) = sub.unsubscribe(&channel).await {
                // Harmless: what still arrives there is dropped on receipt.
                warn!(error = %e, %channel, "could not leave the old incarnation's channel");
            }
        }
    }

    /// After a lost subscription: once the connection answers again,
    /// subscribes to every tenant channel again (harmless if the client
    /// library already did). Returns whether the bus is back.
    pub(super) async fn resubscribe(&self) -> bool {
        let mut sub = self.sub.lock().await;
        if !sub.ping().await {
            return false;
        }
        let channels: Vec<String> = self.subscribed.iter().map(|c| c.clone()).collect();
        for ch in channels {
            if sub.subscribe(&ch).await.is_err() {
                return false;
            }
        }
        info!("redis subscription is back; reconciling");
        self.ok.store(true, Ordering::Relaxed);
        true
    }

    fn lost(&self) {
        self.ok.store(false, Ordering::Relaxed);
        self.resync.notify_one();
    }
}

/// Turns one pub/sub message into an event for local delivery.
fn deliver(node: &Node, channel: &str, payload: &str) {
    let Some((tenant, kind)) = node.bus.channels.parse(channel) else {
        return;
    };
    if let Channel::Events { node: to } = kind {
        if to != node.member.node().as_str() {
            // A channel of this node's name before it was fenced.
            return;
        }
    }
    let ev: WEvent = match serde_json::from_str(payload) {
        Ok(ev) => ev,
        Err(e) => {
            metrics::counter!(crate::metrics_names::REGISTRY_DECODE_ERRORS, "what" => "event")
                .increment(1);
            warn!(error = %e, %channel, "undecodable event on the bus");
            return;
        }
    };
    let event = match ev {
        WEvent::Ended { t } => t.to_tombstone(&tenant).map(|t| Event::Ended(Arc::new(t))),
        WEvent::Notice { sids, n } => {
            // One body for every session named: the hub renders its frame once.
            let notice = Arc::new(n.to_notice());
            for sid in sids {
                match SessionId::parse(&sid) {
                    Ok(session_id) => node.sink.publish(Event::Notice {
                        tenant: tenant.clone(),
                        session_id,
                        notice: notice.clone(),
                    }),
                    Err(e) => warn!(error = %e, %channel, "malformed event on the bus"),
                }
            }
            return;
        }
        ev @ WEvent::Presence { .. } => {
            wire::presence_event(&tenant, &ev).map(|p| Event::Presence(Arc::new(p)))
        }
    };
    match event {
        Ok(event) => node.sink.publish(event),
        Err(e) => warn!(error = %e, %channel, "malformed event on the bus"),
    }
}

/// Tells this node's presence watchers they may have missed events: they
/// catch up from the event log (or are told to re-read the state).
pub(super) fn gap(node: &Node, reason: GapReason) {
    metrics::counter!(crate::metrics_names::PRESENCE_GAPS, "reason" => reason.as_str())
        .increment(1);
    node.sink.publish(Event::Gap {
        tenant: None,
        reason,
    });
}

/// The bus task: delivers what arrives on the subscription.
pub(super) async fn run(
    node: Arc<Node>,
    mut rx: mpsc::Receiver<PushInfo>,
    overflowed: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    // Whether messages are being dropped for an unconfirmed lease.
    let mut dropping = false;
    loop {
        let push = tokio::select! {
            _ = stop.cancelled() => return,
            push = rx.recv() => match push { Some(p) => p, None => return },
        };
        if overflowed.swap(false, Ordering::Relaxed) {
            warn!("event bus overflowed; reconciling");
            node.bus.resync.notify_one();
            gap(&node, GapReason::BusOverflow);
        }
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                if !node.member.lease_valid() {
                    // Possibly paused past our lease: deliver nothing
                    // until the lease is confirmed; watchers are told
                    // once per such stretch.
                    node.member.alarm();
                    if !dropping {
                        dropping = true;
                        gap(&node, GapReason::LeaseUnconfirmed);
                    }
                    continue;
                }
                dropping = false;
                if let [Value::BulkString(ch), Value::BulkString(body), ..] = push.data.as_slice() {
                    deliver(
                        &node,
                        &String::from_utf8_lossy(ch),
                        &String::from_utf8_lossy(body),
                    );
                }
            }
            PushKind::Disconnection => {
                warn!("lost the redis subscription; will reconcile when it is back");
                node.bus.lost();
                super::health::changed(&node);
                gap(&node, GapReason::SubscriptionLost);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_name_their_tenant_and_what_they_carry() {
        let ch = Channels::new("turnstile");
        let acme = Tenant::parse("acme").unwrap();
        let ev = ch.events(&acme, "n1:0000000a");
        assert_eq!(ev, "turnstile:{acme}:ev:n1:0000000a");
        assert_eq!(
            ch.parse(&ev),
            Some((
                acme.clone(),
                Channel::Events {
                    node: "n1:0000000a"
                }
            ))
        );
        let pr = ch.presence(&acme);
        assert_eq!(ch.parse(&pr), Some((acme, Channel::Presence)));
        // Another namespace, the old tenant-wide channel, and garbage.
        assert_eq!(ch.parse("other:{acme}:ev:n1:0000000a"), None);
        assert_eq!(ch.parse("turnstile:{acme}:ev"), None);
        assert_eq!(ch.parse("turnstile:{ac me}:pr"), None);
        assert_eq!(ch.parse("turnstile:{acme"), None);
    }
}
