//! Signed webhooks against a real HTTP receiver on loopback: order,
//! Standard Webhooks signatures, retries after 500s, dead letters, one
//! delivery per event across three nodes on one Redis, and a receiver that
//! is down for a while and comes back. Retry timings are shortened through
//! the settings (`webhook_backoff`, `webhook_retry_for`).

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use support::procs::{eventually, NodeProc, RedisServer};
use support::*;
use turnstile::config::WebhookConfig;

const T: &str = "acme";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One POST the receiver got.
#[derive(Clone, Debug)]
struct Hit {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
    /// What the receiver answered.
    status: u16,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a webhook body is JSON")
    }
    fn seq(&self) -> u64 {
        self.json()["data"]["sequence"]
            .as_u64()
            .expect("data.sequence")
    }
    fn login(&self) -> String {
        self.json()["data"]["session"]["login"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

#[derive(Default)]
struct State {
    hits: Mutex<Vec<Hit>>,
    /// Answer 500 to this many POSTs first.
    fail_first: AtomicUsize,
    /// Answer 500 to every POST of this sequence number (0: none).
    refuse_seq: AtomicUsize,
    arrived: Notify,
}

/// A webhook receiver on loopback that can go down and come back on the
/// same port.
struct Receiver {
    addr: SocketAddr,
    state: Arc<State>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Set: the receiver speaks only HTTPS, with this certificate.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let mut r = Receiver {
            addr,
            state,
            task: None,
            tls: None,
        };
        r.serve(listener);
        r
    }

    /// A receiver that speaks only HTTPS, its certificate (for 127.0.0.1)
    /// signed by a throwaway CA; returns it and the CA's PEM.
    async fn start_https() -> (Self, String) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let ca_key = KeyPair::generate().expect("key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("receiver cert");
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
        )
        .expect("server config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut r = Receiver {
            addr: listener.local_addr().expect("addr"),
            state: Arc::new(State::default()),
            task: None,
            tls: Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))),
        };
        r.serve(listener);
        (r, ca.pem())
    }

    fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/hooks/turnstile", self.addr)
    }

    fn serve(&mut self, listener: TcpListener) {
        let state = self.state.clone();
        let tls = self.tls.clone();
        self.task = Some(tokio::spawn(async move {
            // Dropping the set (when this task is aborted) closes every
            // connection too, as a receiver that went away would.
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                let tls = tls.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move {
                            let header = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string()
                            };
                            let (id, timestamp, signature) = (
                                header("webhook-id"),
                                header("webhook-timestamp"),
                                header("webhook-signature"),
                            );
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .unwrap_or_default();
                            let seq = serde_json::from_slice::<Value>(&body)
                                .ok()
                                .and_then(|v| v["data"]["sequence"].as_u64())
                                .unwrap_or(0);
                            let fail = state
                                .fail_first
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok()
                                || seq as usize == state.refuse_seq.load(Ordering::SeqCst);
                            let status = if fail { 500 } else { 204 };
                            state.hits.lock().unwrap().push(Hit {
                                id,
                                timestamp,
                                signature,
                                body,
                                status,
                            });
                            state.arrived.notify_waiters();
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        }));
    }

    /// Stops listening and drops every open connection.
    async fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Listens again on the same port.
    async fn up(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind");
        self.serve(listener);
    }

    /// Waits until an accepted POST is about `login`'s claim; returns every
    /// POST so far.
    async fn until_accepted(&self, login: &str) -> Vec<Hit> {
        within(&format!("the webhook of {login}"), async {
            loop {
                let notified = self.state.arrived.notified();
                {
                    let hits = self.state.hits.lock().unwrap();
                    if hits.iter().any(|h| h.status == 204 && h.login() == login) {
                        return hits.clone();
                    }
                }
                notified.await;
            }
        })
        .await
    }
}

fn hook(receiver: &Receiver) -> WebhookConfig {
    WebhookConfig {
        tenant: T.into(),
        url: receiver.url(),
        secret: SECRET.into(),
    }
}

/// Checks a POST's signature as a receiver would, with its own HMAC.
fn assert_signed(h: &Hit) {
    let key = STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", h.id, h.timestamp).as_bytes());
    mac.update(&h.body);
    let want = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    assert_eq!(h.signature, want, "signature of {}", h.id);
    let ts: i64 = h
        .timestamp
        .parse()
        .expect("webhook-timestamp is Unix seconds");
    let now = turnstile::session::now_ms() / 1000;
    assert!((now - ts).abs() < 300, "a current timestamp: {ts}");
}

/// The accepted POSTs' sequence numbers, in arrival order.
fn accepted(hits: &[Hit]) -> Vec<u64> {
    hits.iter()
        .filter(|h| h.status == 204)
        .map(Hit::seq)
        .collect()
}

#[tokio::test]
async fn events_arrive_signed_in_order_and_a_500_is_retried() {
    let receiver = Receiver::start().await;
    receiver.state.fail_first.store(2, Ordering::SeqCst);
    let node = start_with(|c| {
        c.webhooks = vec![hook(&receiver)];
        c.webhook_backoff = Duration::from_millis(20);
    })
    .await;
    let mut w = node.watch(T).await;
    let ana = node.grant(T, "ana", "desk-1").await;
    let (ws, _) = node.connect_welcome(&ana.token).await;
    ws.close().await;
    let id = session_of(&ana).session_id.clone();
    w.expect_for(&id, PresenceChange::Disconnected).await;
    let mut c = node.new_client().await;
    let r = claim_on(
        &mut c,
        claim_req(T, "ana", "desk-2", ConflictPolicy::Takeover),
    )
    .await;
    assert_eq!(r.outcome(), ClaimOutcome::Granted, "{r:?}");
    let _ = node.grant(T, "mark", "").await;
    let hits = receiver.until_accepted("mark").await;

    // Every event once, in the tenant's order, after the retries.
    let seqs = accepted(&hits);
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, want, "in order, none missing, none twice");
    assert_eq!(hits[0].status, 500);
    assert_eq!(hits[1].status, 500);
    assert_eq!(hits[0].id, hits[2].id, "a retry keeps its webhook-id");
    for h in &hits {
        assert_signed(h);
    }
    let types: Vec<String> = hits
        .iter()
        .filter(|h| h.status == 204)
        .map(|h| h.json()["type"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        &types[..5],
        [
            "presence.claimed",
            "presence.connected",
            "presence.disconnected",
            "presence.ended",
            "presence.claimed"
        ]
    );
    let ended = hits
        .iter()
        .find(|h| h.status == 204 && h.json()["type"] == "presence.ended")
        .unwrap()
        .json();
    assert_eq!(
        ended["data"]["ending"]["reason"], "station_changed",
        "{ended}"
    );
    assert_eq!(
        ended["data"]["ending"]["by"]["station"], "desk-2",
        "{ended}"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn an_event_refused_past_retry_for_is_a_dead_letter_and_the_next_goes_on() {
    let receiver = Receiver::start().await;
    receiver.state.refuse_seq.store(1, Ordering::SeqCst);
    let node = start_with(|c| {
        c.webhooks = vec![hook(&receiver)];
        c.webhook_backoff = Duration::from_millis(20);
        c.webhook_retry_for = Duration::from_millis(300);
    })
    .await;
    let _ = node.grant(T, "ana", "").await;
    let _ = node.grant(T, "mark", "").await;
    let hits = receiver.until_accepted("mark").await;
    let refused = hits.iter().filter(|h| h.seq() == 1).count();
    assert!(refused >= 2, "retried before giving up: {refused} attempts");
    assert!(hits.iter().all(|h| h.seq() != 1 || h.status == 500));
    assert_eq!(accepted(&hits), [2], "the next event went on");
    node.shutdown().await;
}

/// An `https://` receiver whose certificate a private CA signed: the node
/// trusts it through `webhook_ca_file`, and the events arrive signed.
#[tokio::test]
async fn an_https_receiver_is_checked_against_webhook_ca_file() {
    let (receiver, ca_pem) = Receiver::start_https().await;
    let ca = std::env::temp_dir().join(format!(
        "turnstile-webhook-ca-{:08x}.pem",
        rand::random::<u32>()
    ));
    std::fs::write(&ca, ca_pem).expect("write the CA");
    let node = start_with(|c| {
        c.webhooks = vec![hook(&receiver)];
        c.webhook_ca_file = Some(ca.clone());
    })
    .await;
    let _ = node.grant(T, "ana", "").await;
    let hits = receiver.until_accepted("ana").await;
    assert!(receiver.url().starts_with("https://"));
    assert_eq!(accepted(&hits), vec![1]);
    assert_signed(&hits[0]);
    node.shutdown().await;
    let _ = std::fs::remove_file(&ca);
}

/// A `webhook_ca_file` that holds no certificate stops the node at start,
/// naming the setting.
#[test]
fn a_webhook_ca_file_without_a_certificate_is_refused_naming_it() {
    let bad = std::env::temp_dir().join(format!(
        "turnstile-webhook-ca-{:08x}.pem",
        rand::random::<u32>()
    ));
    std::fs::write(&bad, "not a certificate").expect("write");
    let c = turnstile::config::Config {
        webhook_ca_file: Some(bad.clone()),
        ..Default::default()
    };
    let e = c.webhook_options().expect_err("no certificate in the file");
    let _ = std::fs::remove_file(&bad);
    assert!(e.to_string().contains("webhook_ca_file"), "{e}");
}

const FAILED: &str = "turnstile_webhook_attempts_total{outcome=\"failed\"}";

/// Takeover claims of four logins (`a0`..`a3`) round-robin over the
/// nodes' clients, one per round: every node changes the tenant.
async fn churn(clients: &mut [Client], rounds: std::ops::Range<usize>) {
    for round in rounds {
        let n = clients.len();
        let login = format!("a{}", round % 4);
        let r = claim_on(
            &mut clients[round % n],
            claim_req(T, &login, "", ConflictPolicy::Takeover),
        )
        .await;
        assert_eq!(r.outcome(), ClaimOutcome::Granted, "{r:?}");
    }
}

/// A node's counter from `/metrics` (0 when absent).
async fn counter(node: &NodeProc, name: &str) -> f64 {
    let (_, body) = http_get(node.http, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn three_nodes_deliver_each_event_once_in_order_through_a_receiver_outage() {
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    let config = std::env::temp_dir().join(format!(
        "turnstile-webhooks-{:x}.toml",
        rand::random::<u64>()
    ));
    std::fs::write(
        &config,
        format!(
            "webhook_backoff = \"50ms\"\n\n[[webhooks]]\ntenant = \"{T}\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n",
            receiver.url()
        ),
    )
    .expect("config file written");
    let path = config.to_string_lossy().to_string();
    let extra = ["--config", path.as_str()];
    let nodes = [
        NodeProc::start(&redis.url(), false, &extra).await,
        NodeProc::start(&redis.url(), false, &extra).await,
        NodeProc::start(&redis.url(), false, &extra).await,
    ];
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(n.client().await);
    }
    churn(&mut clients, 0..6).await;
    let _ = claim_on(
        &mut clients[0],
        claim_req(T, "mark-1", "", ConflictPolicy::Reject),
    )
    .await;
    receiver.until_accepted("mark-1").await;

    // The receiver goes away while every node keeps changing the tenant,
    // and comes back: nothing is lost, nothing doubled, order kept.
    receiver.down().await;
    churn(&mut clients, 6..18).await;
    let _ = claim_on(
        &mut clients[1],
        claim_req(T, "mark-2", "", ConflictPolicy::Reject),
    )
    .await;
    // Down until the sender has failed a few times (backing off).
    eventually(
        "failed webhook attempts while the receiver is down",
        || async {
            let mut failed = 0.0;
            for n in &nodes {
                failed += counter(n, FAILED).await;
            }
            failed >= 3.0
        },
    )
    .await;
    receiver.up().await;
    let hits = receiver.until_accepted("mark-2").await;

    let seqs = accepted(&hits);
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, want, "each event once, in order, across three nodes");
    let ids: HashSet<&str> = hits
        .iter()
        .filter(|h| h.status == 204)
        .map(|h| h.id.as_str())
        .collect();
    assert_eq!(ids.len(), seqs.len(), "one delivery per webhook-id");
    for h in &hits {
        assert_signed(h);
    }
    let mut failed = 0.0;
    let mut dead = 0.0;
    for n in &nodes {
        failed += counter(n, FAILED).await;
        dead += counter(n, "turnstile_webhook_dead_letters_total").await;
    }
    assert!(failed >= 1.0, "the sender saw the receiver down");
    assert_eq!(dead, 0.0, "nothing given up");
    let _ = std::fs::remove_file(&config);
}
