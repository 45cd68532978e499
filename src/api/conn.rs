//! The gRPC server's view of an accepted TCP connection.
//!
//! h2 keeps a DATA payload larger than its copy threshold (256 bytes when
//! the socket takes vectored writes) by reference and must flush it before
//! it can queue another frame. A unary reply is HEADERS, one DATA (a claim
//! reply with its connect token is ~450 bytes) and the trailers, so every
//! reply went out in two `writev` calls and woke the caller twice. Saying
//! the socket has no vectored writes raises h2's threshold to 1 KiB: it
//! copies such payloads into its write buffer and the whole reply leaves in
//! one `write`. Larger payloads (long session lists) still go by
//! reference, written one buffer per call.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// An accepted gRPC connection (Nagle off); see the module docs.
pub struct GrpcConn(TcpStream);

impl GrpcConn {
    /// Wraps an accepted socket, turning Nagle off: on our own listener,
    /// Nagle would hold every small reply for the peer's delayed ACK
    /// (~40 ms per claim).
    pub fn new(stream: TcpStream) -> Self {
        let _ = stream.set_nodelay(true);
        GrpcConn(stream)
    }
}

impl Connected for GrpcConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.connect_info()
    }
}

impl AsyncRead for GrpcConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for GrpcConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn keeps_the_peer_address_turns_nagle_off_and_refuses_vectored_writes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        let mut conn = GrpcConn::new(accepted);

        let info = conn.connect_info();
        assert_eq!(info.remote_addr(), client.local_addr().ok());
        assert!(conn.0.nodelay().expect("nodelay"));
        assert!(!conn.is_write_vectored());

        conn.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
    }
}
