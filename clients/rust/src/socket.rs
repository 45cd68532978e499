//! An agent's WebSocket: connect with a token, read typed frames, send the
//! client messages.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::tls::{Stream, Tls};
use crate::Error;

/// How to open the socket.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// Bind the client end to this source address (load generators spread
    /// sockets over 127.0.0.x to get past one address's ephemeral ports).
    pub bind_ip: Option<IpAddr>,
    /// Bound on TCP connect + WebSocket handshake.
    pub timeout: Option<Duration>,
    /// Speak TLS (`wss://`): the CA to trust and the server's name.
    pub tls: Option<Tls>,
}

/// A frame from the broker, typed.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerFrame {
    Welcome {
        session_id: String,
        resumed: bool,
        heartbeat_ms: u64,
        grace_ms: u64,
    },
    Notice(Value),
    ForcedLogout {
        reason: String,
        message: String,
    },
    LoggedOut,
    Pong(Value),
    Presence(Value),
    Error {
        code: String,
        message: String,
    },
    Reconnect {
        after_ms: u64,
    },
    /// Whether the node can vouch for the session: `state` is `"ok"`, or
    /// `"degraded"` with a `cause` and the Unix ms it began (`since_ms`).
    /// The socket stays open either way.
    Connectivity {
        state: String,
        cause: Option<String>,
        since_ms: Option<i64>,
    },
    /// The socket was closed, with the close code when there was one.
    Closed {
        code: Option<u16>,
        reason: String,
    },
}

impl ServerFrame {
    /// Parses one text frame.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let v: Value = serde_json::from_str(text).map_err(|e| Error::Protocol(e.to_string()))?;
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        let n = |k: &str| v[k].as_u64().unwrap_or_default();
        Ok(match v["type"].as_str().unwrap_or_default() {
            "welcome" => ServerFrame::Welcome {
                session_id: s("session_id"),
                resumed: v["resumed"].as_bool().unwrap_or(false),
                heartbeat_ms: n("heartbeat_ms"),
                grace_ms: n("grace_ms"),
            },
            "notice" => ServerFrame::Notice(v["notice"].clone()),
            "forced_logout" => ServerFrame::ForcedLogout {
                reason: s("reason"),
                message: s("message"),
            },
            "logged_out" => ServerFrame::LoggedOut,
            "pong" => ServerFrame::Pong(v["id"].clone()),
            "presence" => ServerFrame::Presence(v),
            "error" => ServerFrame::Error {
                code: s("code"),
                message: s("message"),
            },
            "reconnect" => ServerFrame::Reconnect {
                after_ms: n("after_ms"),
            },
            "connectivity" => ServerFrame::Connectivity {
                state: s("state"),
                cause: v["cause"].as_str().map(str::to_string),
                since_ms: v["since_ms"].as_i64(),
            },
            other => return Err(Error::Protocol(format!("unknown frame type {other:?}"))),
        })
    }
}

/// One agent socket.
pub struct AgentSocket {
    ws: WebSocketStream<Stream>,
}

/// Opens a TCP connection from `bind_ip` (when given) without reserving a
/// port at bind time (`IP_BIND_ADDRESS_NO_PORT`), so many sockets per source
/// address do not exhaust ports under TIME_WAIT pressure.
async fn tcp(addr: SocketAddr, bind_ip: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = bind_ip {
        bind_address_no_port(&socket);
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(target_os = "linux")]
fn bind_address_no_port(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid open socket fd, a correctly sized c_int option value;
    // failure only means the kernel picks the port at bind time as usual.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn bind_address_no_port(_: &TcpSocket) {}

impl AgentSocket {
    /// Opens `/v1/ws` on `http` with `token` (in the Authorization header),
    /// over TLS when `opts.tls` is set.
    pub async fn connect(
        http: SocketAddr,
        token: &str,
        opts: &ConnectOptions,
    ) -> Result<Self, Error> {
        let fut = async {
            let tcp = tcp(http, opts.bind_ip).await?;
            let (stream, url) = match &opts.tls {
                Some(tls) => {
                    let host = match tls.server_name().parse::<IpAddr>() {
                        Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
                        _ => tls.server_name().to_string(),
                    };
                    let url = format!("wss://{host}:{}/v1/ws", http.port());
                    (tls.handshake(tcp).await?, url)
                }
                None => (Stream::Plain(tcp), format!("ws://{http}/v1/ws")),
            };
            let mut req = url.into_client_request()?;
            if let Ok(v) = format!("Bearer {token}").parse() {
                req.headers_mut().insert("authorization", v);
            }
            // Small buffers: a load generator holds thousands of these.
            let cfg = WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0);
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(req, stream, Some(cfg)).await?;
            Ok::<_, Error>(AgentSocket { ws })
        };
        match opts.timeout {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .map_err(|_| Error::Timeout("connect"))?,
            None => fut.await,
        }
    }

    /// The next frame; WebSocket pings are answered on the way.
    pub async fn next_frame(&mut self) -> Result<ServerFrame, Error> {
        loop {
            if let Some(frame) = self.next_activity().await? {
                return Ok(frame);
            }
        }
    }

    /// The next thing that arrived: `Some` for a text or close frame (or the
    /// end of the stream), `None` for a control frame — still a sign of life.
    pub(crate) async fn next_activity(&mut self) -> Result<Option<ServerFrame>, Error> {
        match self.ws.next().await {
            None => Ok(Some(ServerFrame::Closed {
                code: None,
                reason: "stream ended".into(),
            })),
            Some(Err(e)) => Ok(Some(ServerFrame::Closed {
                code: None,
                reason: e.to_string(),
            })),
            Some(Ok(Message::Text(t))) => ServerFrame::parse(t.as_str()).map(Some),
            Some(Ok(Message::Close(f))) => Ok(Some(ServerFrame::Closed {
                code: f.as_ref().map(|f| u16::from(f.code)),
                reason: f.map(|f| f.reason.to_string()).unwrap_or_default(),
            })),
            Some(Ok(_)) => Ok(None),
        }
    }

    /// The next frame within `t`.
    pub async fn next_frame_within(&mut self, t: Duration) -> Result<ServerFrame, Error> {
        tokio::time::timeout(t, self.next_frame())
            .await
            .map_err(|_| Error::Timeout("a frame"))?
    }

    pub(crate) async fn send_json(&mut self, v: Value) -> Result<(), Error> {
        self.ws.send(Message::text(v.to_string())).await?;
        Ok(())
    }

    pub async fn send_ping(&mut self, id: &str) -> Result<(), Error> {
        self.send_json(json!({"type": "ping", "id": id})).await
    }

    pub async fn set_status(&mut self, status: &str) -> Result<(), Error> {
        self.send_json(json!({"type": "status", "status": status}))
            .await
    }

    pub async fn ack(&mut self, notice_id: &str) -> Result<(), Error> {
        self.send_json(json!({"type": "ack", "notice_id": notice_id}))
            .await
    }

    pub async fn logout(&mut self) -> Result<(), Error> {
        self.send_json(json!({"type": "logout"})).await
    }

    pub async fn watch_presence(&mut self) -> Result<(), Error> {
        self.send_json(json!({"type": "watch_presence"})).await
    }

    /// Closes normally (best effort).
    pub async fn close(mut self) {
        self.close_in_place().await
    }

    /// Sends a close frame, waiting at most 2 s.
    pub(crate) async fn close_in_place(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_into_their_types() {
        let w = ServerFrame::parse(
            r#"{"type":"welcome","session_id":"s1","resumed":true,"heartbeat_ms":15000,"grace_ms":60000}"#,
        )
        .unwrap();
        assert_eq!(
            w,
            ServerFrame::Welcome {
                session_id: "s1".into(),
                resumed: true,
                heartbeat_ms: 15000,
                grace_ms: 60000
            }
        );
        let f = ServerFrame::parse(
            r#"{"type":"forced_logout","reason":"superseded","message":"m","by":{}}"#,
        )
        .unwrap();
        assert!(
            matches!(f, ServerFrame::ForcedLogout { ref reason, .. } if reason == "superseded")
        );
        assert!(ServerFrame::parse(r#"{"type":"nope"}"#).is_err());
        assert!(ServerFrame::parse("not json").is_err());
    }
}
