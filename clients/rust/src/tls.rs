//! TLS to a broker: the CA to trust, an optional client certificate (mTLS)
//! and the name the server's certificate must carry — one value used for
//! both `wss://` (rustls) and gRPC over TLS (tonic).

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::Error;

/// How to speak TLS to a broker. Cloning is an `Arc` bump and a few small
/// PEM buffers.
#[derive(Clone)]
pub struct Tls {
    ca_pem: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    server_name: String,
    rustls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

impl Tls {
    /// Trusts the PEM CA certificates in `ca_pem`; checks the server's
    /// certificate against `server_name` (a DNS name or an IP address);
    /// presents `identity` (PEM certificate chain, PEM private key) when
    /// the server asks for a client certificate.
    pub fn from_pem(
        ca_pem: &[u8],
        identity: Option<(&[u8], &[u8])>,
        server_name: &str,
    ) -> Result<Self, Error> {
        let mut roots = rustls::RootCertStore::empty();
        let mut found = 0;
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| tls_err(format!("CA file: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| tls_err(format!("CA file: {e}")))?;
            found += 1;
        }
        if found == 0 {
            return Err(tls_err("CA file: no PEM certificate in it".into()));
        }
        ServerName::try_from(server_name.to_string())
            .map_err(|e| tls_err(format!("server name {server_name:?}: {e}")))?;
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .with_root_certificates(roots);
        let config = match identity {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| tls_err(format!("client certificate: {e}")))?;
                if chain.is_empty() {
                    return Err(tls_err(
                        "client certificate: no PEM certificate in it".into(),
                    ));
                }
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| tls_err(format!("client key: {e}")))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| tls_err(format!("client certificate and key: {e}")))?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Self {
            ca_pem: ca_pem.to_vec(),
            identity: identity.map(|(c, k)| (c.to_vec(), k.to_vec())),
            server_name: server_name.to_string(),
            rustls: Arc::new(config),
        })
    }

    /// [`from_pem`](Self::from_pem) with the PEM read from files.
    pub fn from_files(
        ca: &Path,
        identity: Option<(&Path, &Path)>,
        server_name: &str,
    ) -> Result<Self, Error> {
        let read = |what: &str, p: &Path| {
            std::fs::read(p).map_err(|e| tls_err(format!("{what} {}: {e}", p.display())))
        };
        let ca = read("CA file", ca)?;
        let identity = match identity {
            Some((c, k)) => Some((read("client certificate", c)?, read("client key", k)?)),
            None => None,
        };
        Self::from_pem(
            &ca,
            identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
            server_name,
        )
    }

    /// The name the server's certificate is checked against.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// The same, for the gRPC channel.
    pub(crate) fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut c = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(self.server_name.clone());
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        c
    }

    /// The TLS handshake over `tcp` (also for tools that speak HTTP/1.1 to
    /// a node's TLS listener, e.g. to read `/metrics`).
    pub async fn handshake(&self, tcp: TcpStream) -> Result<Stream, Error> {
        let name = ServerName::try_from(self.server_name.clone())
            .map_err(|e| tls_err(format!("server name {:?}: {e}", self.server_name)))?;
        let tls = tokio_rustls::TlsConnector::from(self.rustls.clone())
            .connect(name, tcp)
            .await?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}

fn tls_err(msg: String) -> Error {
    Error::Tls(msg)
}

/// An agent socket's byte stream: plain TCP or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_tls_input_names_what_is_wrong() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (ca, key) = (cert.pem(), key.serialize_pem());
        let tls = Tls::from_pem(ca.as_bytes(), None, "localhost").unwrap();
        assert_eq!(tls.server_name(), "localhost");
        Tls::from_pem(
            ca.as_bytes(),
            Some((ca.as_bytes(), key.as_bytes())),
            "127.0.0.1",
        )
        .unwrap();
        let err = |r: Result<Tls, Error>| r.unwrap_err().to_string();
        assert!(err(Tls::from_pem(b"", None, "localhost")).contains("CA file"));
        assert!(err(Tls::from_pem(ca.as_bytes(), None, "not a name")).contains("server name"));
        let e = err(Tls::from_pem(
            ca.as_bytes(),
            Some((ca.as_bytes(), b"")),
            "localhost",
        ));
        assert!(e.contains("client key"), "{e}");
        let e = err(Tls::from_files(
            Path::new("/nonexistent/ca.pem"),
            None,
            "localhost",
        ));
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
