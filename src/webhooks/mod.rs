//! Signed webhooks: each configured (tenant, URL) receives the tenant's
//! events from the event log as JSON POSTs signed per Standard Webhooks
//! ([`sign`]), at least once and in order.
//!
//! One task per webhook on every node. The node holding the webhook's
//! lease ([`Registry::hook_lease`], a Redis key per webhook in a cluster)
//! reads the log after the webhook's cursor and sends one event at a time,
//! retrying a failure with exponential backoff for `webhook_retry_for`,
//! then counts it as a dead letter and moves on; the cursor moves only
//! after the event is done, and only while the lease holds, so exactly one
//! node sends each event (twice only across a lease handover). The task
//! never touches a socket or a claim: a slow or dead receiver costs its own
//! task time, and the bounded log, nothing else. It wakes on the tenant's
//! presence events (a small watcher queue; falling behind only means it
//! reads the log) or, at worst, every third of the lease.

mod body;
pub mod sign;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use tokio_rustls::rustls;

use crate::hub::{Hub, PresenceWatch};
use crate::metrics_names as m;
use crate::registry::Registry;
use crate::session::{PresenceEvent, Tenant};
use sign::Secret;

/// How long a node's lease on sending one webhook lasts; it is renewed
/// every third of that while the node works. A node that dies hands its
/// webhooks over within this.
pub const LEASE: Duration = Duration::from_secs(10);

/// Events read from the log per round.
const BATCH: usize = 64;

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One webhook: where a tenant's events go and the secret that signs them.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub tenant: Tenant,
    pub url: hyper::Uri,
    pub secret: Secret,
}

impl Endpoint {
    /// A short stable name of the URL, for the webhook's Redis keys.
    fn id(&self) -> String {
        let digest = Sha256::digest(self.url.to_string().as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// How webhooks are sent.
#[derive(Clone, Debug)]
pub struct Options {
    /// One POST may take this long.
    pub timeout: Duration,
    /// The wait before the first retry; doubled each time, at most a minute.
    pub backoff: Duration,
    /// An event not delivered within this (from its first attempt) is a
    /// dead letter.
    pub retry_for: Duration,
    /// What `https://` receivers are checked against ([`tls_config`]).
    pub tls: Arc<rustls::ClientConfig>,
}

/// The client side of `https://` webhooks: the Mozilla roots compiled in
/// (`webpki-roots`) plus the PEM certificates of `extra_ca`, on rustls with
/// ring, as the listeners use. The error says what was wrong with the PEM.
pub fn tls_config(extra_ca: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(pem) = extra_ca {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("not a PEM certificate: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("a certificate cannot be a root: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("no PEM certificate in the file".into());
        }
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The one HTTP client of every sender: `http://` and `https://` URLs.
type WebhookClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Starts one sender task per webhook; they end with `stop`.
pub fn spawn(
    endpoints: Vec<Endpoint>,
    opts: Options,
    registry: Arc<dyn Registry>,
    hub: Arc<Hub>,
    tracker: &tokio_util::task::TaskTracker,
    stop: CancellationToken,
) {
    if endpoints.is_empty() {
        return;
    }
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*opts.tls).clone())
        .https_or_http()
        .enable_http1()
        .build();
    let client: WebhookClient = Client::builder(TokioExecutor::new()).build(connector);
    for ep in endpoints {
        let sender = Sender {
            id: ep.id(),
            ep,
            opts: opts.clone(),
            registry: registry.clone(),
            hub: hub.clone(),
            client: client.clone(),
            stop: stop.clone(),
            lag: 0,
        };
        tracker.spawn(sender.run());
    }
}

/// What became of one event.
enum Outcome {
    Delivered,
    DeadLetter,
    /// Another node holds the lease now (or it could not be confirmed).
    LostLease,
    Stopped,
}

struct Sender {
    ep: Endpoint,
    id: String,
    opts: Options,
    registry: Arc<dyn Registry>,
    hub: Arc<Hub>,
    client: WebhookClient,
    stop: CancellationToken,
    /// The lag this sender last added to the lag gauge.
    lag: u64,
}

impl Sender {
    async fn run(mut self) {
        let tenant = self.ep.tenant.clone();
        info!(%tenant, url = %self.ep.url, "webhook sender started");
        let mut doorbell = self.doorbell().await;
        while !self.stop.is_cancelled() {
            if doorbell.is_none() {
                doorbell = self.doorbell().await;
            }
            let cursor = match self.registry.hook_lease(&tenant, &self.id, LEASE).await {
                Ok(Some(cursor)) => cursor,
                Ok(None) => {
                    // Another node sends: ask again in a third of the lease
                    // (not on every event, which would cost Redis a call
                    // per event per node).
                    self.set_lag(0);
                    self.idle(&mut None).await;
                    continue;
                }
                Err(e) => {
                    warn!(%tenant, error = %e, "webhook: cannot take the lease");
                    self.idle(&mut doorbell).await;
                    continue;
                }
            };
            let replay = match self.registry.replay(&tenant, cursor, BATCH).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(%tenant, error = %e, "webhook: cannot read the event log");
                    self.idle(&mut doorbell).await;
                    continue;
                }
            };
            self.set_lag(replay.head.saturating_sub(cursor));
            if replay.trimmed {
                let next = replay.events.first().map_or(replay.head, |e| e.seq - 1);
                // A new webhook (no cursor yet) starts at the oldest event
                // kept: nothing was missed.
                if cursor > 0 {
                    let missed = next.saturating_sub(cursor);
                    metrics::counter!(m::WEBHOOK_MISSED).increment(missed);
                    warn!(%tenant, url = %self.ep.url, missed, "webhook: events left the log before they were sent");
                }
                if !self.done(next).await {
                    continue;
                }
            }
            if replay.events.is_empty() {
                self.idle(&mut doorbell).await;
                continue;
            }
            for event in &replay.events {
                match self.deliver(event).await {
                    Outcome::Delivered | Outcome::DeadLetter => {
                        if !self.done(event.seq).await {
                            break;
                        }
                    }
                    Outcome::LostLease => break,
                    Outcome::Stopped => return,
                }
            }
        }
        self.set_lag(0);
    }

    /// Wakes the sender on the tenant's events (`None` if the node cannot
    /// subscribe now: the lease tick then paces it).
    async fn doorbell(&self) -> Option<PresenceWatch> {
        let watch = self.hub.watch(&self.ep.tenant, 16);
        match self.registry.watch(&self.ep.tenant).await {
            Ok(()) => Some(watch),
            Err(_) => None,
        }
    }

    /// Waits for an event, a third of the lease, or the stop.
    async fn idle(&self, doorbell: &mut Option<PresenceWatch>) {
        let rang = async {
            match doorbell.as_mut() {
                Some(d) => d.recv().await.is_some(),
                None => std::future::pending().await,
            }
        };
        let open = tokio::select! {
            _ = self.stop.cancelled() => true,
            _ = tokio::time::sleep(LEASE / 3) => true,
            open = rang => open,
        };
        if !open {
            // Fell behind (it only ever meant "read the log"): a new one.
            *doorbell = None;
        }
    }

    /// Records `seq` as done; false if the lease is gone.
    async fn done(&self, seq: u64) -> bool {
        match self
            .registry
            .hook_done(&self.ep.tenant, &self.id, seq, LEASE)
            .await
        {
            Ok(true) => true,
            Ok(false) => false,
            Err(e) => {
                warn!(tenant = %self.ep.tenant, error = %e, "webhook: cannot record progress");
                false
            }
        }
    }

    /// Sends one event until the receiver takes it or `retry_for` runs out.
    async fn deliver(&self, event: &PresenceEvent) -> Outcome {
        let id = format!("{}_{}_{}", event.session.tenant, event.seq, event.at_ms);
        let payload = Bytes::from(body::json(event));
        let first = Instant::now();
        let mut wait = self.opts.backoff;
        loop {
            let status = tokio::select! {
                _ = self.stop.cancelled() => return Outcome::Stopped,
                status = self.post(&id, payload.clone()) => status,
            };
            match status {
                Ok(s) if (200..300).contains(&s) => {
                    metrics::counter!(m::WEBHOOK_ATTEMPTS, "outcome" => "delivered").increment(1);
                    return Outcome::Delivered;
                }
                Ok(s) => {
                    metrics::counter!(m::WEBHOOK_ATTEMPTS, "outcome" => "refused").increment(1);
                    warn!(tenant = %event.session.tenant, url = %self.ep.url, status = s, seq = event.seq, "webhook refused; will retry");
                }
                Err(e) => {
                    metrics::counter!(m::WEBHOOK_ATTEMPTS, "outcome" => "failed").increment(1);
                    warn!(tenant = %event.session.tenant, url = %self.ep.url, error = %e, seq = event.seq, "webhook failed; will retry");
                }
            }
            if first.elapsed() + wait > self.opts.retry_for {
                metrics::counter!(m::WEBHOOK_DEAD_LETTERS).increment(1);
                warn!(tenant = %event.session.tenant, url = %self.ep.url, seq = event.seq, id, "webhook: dead letter after retrying for {:?}", self.opts.retry_for);
                return Outcome::DeadLetter;
            }
            tokio::select! {
                _ = self.stop.cancelled() => return Outcome::Stopped,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(MAX_BACKOFF);
            // Still ours? (Another node may have taken over while we waited.)
            match self
                .registry
                .hook_lease(&self.ep.tenant, &self.id, LEASE)
                .await
            {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return Outcome::LostLease,
            }
        }
    }

    /// One signed POST; the response's status.
    async fn post(&self, id: &str, payload: Bytes) -> Result<u16, String> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let signature = self.ep.secret.sign(id, timestamp, &payload);
        let request = hyper::Request::post(self.ep.url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "turnstile-webhooks")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(payload))
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(self.opts.timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response.status().as_u16()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.opts.timeout)),
        }
    }

    /// Sets this sender's share of the lag gauge.
    fn set_lag(&mut self, lag: u64) {
        let gauge = metrics::gauge!(m::WEBHOOK_LAG);
        gauge.increment(lag as f64 - self.lag as f64);
        self.lag = lag;
    }
}
