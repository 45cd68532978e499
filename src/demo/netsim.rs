//! A network simulator: a TCP relay between the browser and the broker's
//! WebSocket listener that can be told to misbehave.
//!
//! - `up`: bytes flow both ways.
//! - `cut`: every relayed connection is closed and new ones are dropped at
//!   once — the client sees its socket close (1006) and retries.
//! - `stall`: bytes are swallowed in both directions but nothing is closed,
//!   like a cable pulled somewhere upstream. Only heartbeats notice: the
//!   SDK within two heartbeats, the broker likewise. Connections opened
//!   while stalled hang until the mode changes.
//!
//! Leaving `stall` closes the stalled connections (bytes were lost, the
//! streams are broken), so clients reconnect and resume.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Up,
    Cut,
    Stall,
}

/// The relay; clones share the mode.
#[derive(Clone)]
pub struct NetSim {
    upstream: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
}

impl NetSim {
    pub fn new(upstream: SocketAddr) -> Self {
        let (tx, _) = watch::channel(Mode::Up);
        Self {
            upstream,
            mode: Arc::new(tx),
        }
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    pub fn set(&self, mode: Mode) {
        let old = self.mode.send_replace(mode);
        if old != mode {
            tracing::info!(?old, new = ?mode, "netsim: network mode changed");
        }
    }

    /// Accepts and relays connections until `stop`.
    pub async fn serve(self, listener: TcpListener, stop: CancellationToken, tracker: TaskTracker) {
        while let Some((stream, _)) = turnstile::gateway::accept(&listener, &stop, "netsim").await {
            tracker.spawn(relay(
                stream,
                self.upstream,
                self.mode.subscribe(),
                stop.clone(),
            ));
        }
    }
}

async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    stop: CancellationToken,
) {
    let initial = *mode.borrow_and_update();
    match initial {
        Mode::Cut => return,
        Mode::Stall => return hold(client, mode, stop).await,
        Mode::Up => {}
    }
    let server = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%upstream, error = %e, "netsim: cannot reach the broker");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    pump(client, server, mode, stop).await;
}

/// A connection opened while stalled: swallow what it sends until the mode changes.
async fn hold(mut client: TcpStream, mut mode: watch::Receiver<Mode>, stop: CancellationToken) {
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = mode.changed() => return,
            n = client.read(&mut buf) => if matches!(n, Ok(0) | Err(_)) { return },
        }
    }
}

async fn pump(
    client: TcpStream,
    server: TcpStream,
    mut mode: watch::Receiver<Mode>,
    stop: CancellationToken,
) {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let mut up_buf = vec![0u8; 16 * 1024];
    let mut down_buf = vec![0u8; 16 * 1024];
    let mut stalled = false;
    let mut server_open = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                match *mode.borrow_and_update() {
                    Mode::Cut => return,
                    Mode::Up if stalled => return,
                    Mode::Up => {}
                    Mode::Stall => stalled = true,
                }
            }
            n = client_rx.read(&mut up_buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if !stalled && server_tx.write_all(&up_buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            n = server_rx.read(&mut down_buf), if server_open => match n {
                // While stalled the client must not learn that the broker hung up.
                Ok(0) | Err(_) if stalled => server_open = false,
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if !stalled && client_tx.write_all(&down_buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An echo server standing in for the broker.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn start() -> (NetSim, SocketAddr, CancellationToken) {
        let sim = NetSim::new(echo().await);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(sim.clone().serve(l, stop.clone(), TaskTracker::new()));
        (sim, addr, stop)
    }

    const T: Duration = Duration::from_secs(5);

    async fn roundtrip(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(T, s.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("timed out"))??;
        Ok(buf.to_vec())
    }

    /// Reads until EOF or error: the relay closed the connection.
    async fn closed(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        loop {
            match tokio::time::timeout(T, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    #[tokio::test]
    async fn relays_when_up_and_cut_closes_everything() {
        let (sim, addr, stop) = start().await;
        let mut a = TcpStream::connect(addr).await.unwrap();
        assert_eq!(roundtrip(&mut a).await.unwrap(), b"ping");
        sim.set(Mode::Cut);
        assert!(closed(&mut a).await, "cut closes open connections");
        let mut b = TcpStream::connect(addr).await.unwrap();
        assert!(closed(&mut b).await, "cut drops new connections");
        sim.set(Mode::Up);
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert_eq!(roundtrip(&mut c).await.unwrap(), b"ping");
        stop.cancel();
    }

    #[tokio::test]
    async fn stall_swallows_bytes_silently_and_restoring_closes_stalled_streams() {
        let (sim, addr, stop) = start().await;
        let mut a = TcpStream::connect(addr).await.unwrap();
        assert_eq!(roundtrip(&mut a).await.unwrap(), b"ping");
        sim.set(Mode::Stall);
        a.write_all(b"lost").await.unwrap();
        let mut buf = [0u8; 4];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), a.read(&mut buf))
                .await
                .is_err(),
            "nothing arrives and nothing closes while stalled"
        );
        let mut b = TcpStream::connect(addr).await.unwrap();
        b.write_all(b"hello").await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), b.read(&mut buf))
                .await
                .is_err(),
            "a connection opened while stalled hangs"
        );
        sim.set(Mode::Up);
        assert!(
            closed(&mut a).await,
            "the stalled stream is closed on restore"
        );
        assert!(
            closed(&mut b).await,
            "a connection held while stalled is closed on restore"
        );
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert_eq!(roundtrip(&mut c).await.unwrap(), b"ping");
        assert_eq!(sim.mode(), Mode::Up);
        stop.cancel();
    }
}
