//! TLS on both listeners: `wss://` for agents, gRPC over TLS for the login
//! service, and mTLS when a client CA is configured. Certificates come from
//! a throwaway CA made by the test.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use support::*;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use turnstile::pb::session_broker_service_client::SessionBrokerServiceClient;

const T: &str = "acme";

struct Pki {
    dir: PathBuf,
    ca_pem: String,
    client_cert: String,
    client_key: String,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pki() -> Pki {
    let dir = std::env::temp_dir().join(format!("turnstile-tls-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let server_key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&server_key, &issuer)
        .expect("server cert");
    let client_key = KeyPair::generate().expect("key");
    let client = CertificateParams::new(vec!["login-service".to_string()])
        .expect("params")
        .signed_by(&client_key, &issuer)
        .expect("client cert");
    std::fs::write(dir.join("server.pem"), server.pem()).expect("write");
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).expect("write");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    Pki {
        dir,
        ca_pem: ca.pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

fn with_tls(dir: &Path, mtls: bool) -> impl FnOnce(&mut turnstile::config::Config) {
    let dir = dir.to_path_buf();
    move |c| {
        c.tls_cert_file = Some(dir.join("server.pem"));
        c.tls_key_file = Some(dir.join("server.key"));
        if mtls {
            c.tls_client_ca_file = Some(dir.join("ca.pem"));
        }
    }
}

async fn tls_client(
    node: &Node,
    pki: &Pki,
    identity: bool,
) -> Result<SessionBrokerServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    if identity {
        tls = tls.identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
    }
    let channel = Channel::from_shared(format!("https://{}", node.grpc))
        .expect("uri")
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(SessionBrokerServiceClient::new(channel))
}

async fn wss_welcome(node: &Node, pki: &Pki, token: &str) -> serde_json::Value {
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from(pem_der(&pki.ca_pem));
    roots.add(ca).expect("ca");
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(node.http)
        .await
        .expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = within(
        "TLS handshake",
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
    )
    .await
    .expect("TLS handshake with the broker");
    let req = format!("wss://localhost:{}/v1/ws?token={token}", node.http.port())
        .into_client_request()
        .expect("url");
    let (mut ws, _) = within(
        "WebSocket handshake",
        tokio_tungstenite::client_async(req, tls),
    )
    .await
    .expect("WebSocket over TLS");
    use futures_util::StreamExt;
    let msg = within("welcome", ws.next())
        .await
        .expect("frame")
        .expect("ok");
    serde_json::from_str(msg.to_text().expect("text")).expect("json")
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("pem")
        .to_vec()
}

#[tokio::test]
async fn grpc_and_websocket_speak_tls() {
    let pki = pki();
    let node = start_with(with_tls(&pki.dir, false)).await;
    let mut c = tls_client(&node, &pki, false).await.expect("TLS channel");
    let r = within(
        "Claim over TLS",
        c.claim(claim_req(T, "ana", "", ConflictPolicy::Reject)),
    )
    .await
    .expect("claim")
    .into_inner();
    assert_eq!(r.outcome(), ClaimOutcome::Granted);
    let w = wss_welcome(&node, &pki, &r.token).await;
    assert_eq!(w["type"], "welcome", "{w}");
}

#[tokio::test]
async fn mtls_refuses_a_caller_without_a_client_certificate() {
    let pki = pki();
    let node = start_with(with_tls(&pki.dir, true)).await;
    let refused = match tls_client(&node, &pki, false).await {
        Err(_) => true,
        Ok(mut c) => within(
            "Claim",
            c.claim(claim_req(T, "ana", "", ConflictPolicy::Reject)),
        )
        .await
        .is_err(),
    };
    assert!(refused, "no client certificate, no call");
    let mut c = tls_client(&node, &pki, true).await.expect("mTLS channel");
    let r = within(
        "Claim over mTLS",
        c.claim(claim_req(T, "ana", "", ConflictPolicy::Reject)),
    )
    .await
    .expect("claim")
    .into_inner();
    assert_eq!(r.outcome(), ClaimOutcome::Granted);
}
