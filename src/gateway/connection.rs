//! One task per WebSocket: attach to the session, then relay frames until the
//! socket ends, and detach.
//!
//! The task is the socket's only owner: it reads client frames, writes the
//! queued outbound frames and, when the hub sets the socket's terminal (forced
//! logout, slow consumer, dead heartbeat, drain), flushes what is already
//! queued, writes the terminal frame and closes. No timer lives here: the
//! shared heartbeat sweeper decides when a socket is dead.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn, Instrument};

use super::protocol::{self, ClientMessage};
use super::Shared;
use crate::auth::{ConnectToken, TokenError};
use crate::close::CloseCode;
use crate::frames;
use crate::hub::{Outbound, SocketShared};
use crate::metrics_names as m;
use crate::registry::{Attached, RegistryError, SocketId};
use crate::session::{Generation, Login, Session, SessionId, Tenant};

use crate::limits::MAX_BAD_FRAMES;

tokio::task_local! {
    /// The socket's `write_timeout` (a write that takes longer means the
    /// client stopped reading), set once for the socket's whole task by
    /// [`run`], so every helper that writes needs no extra argument.
    static WRITE_TIMEOUT: Duration;
}

/// The current socket's write timeout; outside a socket task (never, in
/// practice) the setting's default.
fn write_timeout() -> Duration {
    WRITE_TIMEOUT
        .try_with(|t| *t)
        .unwrap_or(Duration::from_secs(10))
}

type Ws<S> = WebSocketStream<S>;

/// A socket past its handshake: attached, welcomed, ready to serve.
struct Opened<S> {
    ws: Ws<S>,
    socket: Arc<SocketShared>,
    session: Holder,
    socket_id: SocketId,
    conn: u64,
}

/// What a served socket keeps of its session: the ids its messages and logs
/// need, not the whole session (an idle socket holds this for a shift; a
/// full `Session` with its strings cost ~0.3 KiB more per socket).
struct Holder {
    tenant: Tenant,
    login: Login,
    id: SessionId,
    generation: Generation,
    may_watch_presence: bool,
}

impl From<&Session> for Holder {
    fn from(s: &Session) -> Self {
        Self {
            tenant: s.tenant.clone(),
            login: s.login.clone(),
            id: s.id.clone(),
            generation: s.generation,
            may_watch_presence: s.can_watch_presence(),
        }
    }
}

/// Serves one socket, from its upgrade to its end.
///
/// Shaped for 100k idle sockets: upgrading and opening (token, attach,
/// welcome, queued notices) run in one boxed future whose state is needed
/// once; the opened socket lives in one heap box, not copied into every
/// state of the long-lived future. Call it outside the task that awaits
/// it: whatever that task captures stays resident. An idle socket's task
/// is ~0.7 KiB instead of ~3 KiB.
pub fn run<S, U>(
    upgrade: U,
    shared: Arc<Shared>,
    token: Result<ConnectToken, TokenError>,
) -> impl std::future::Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    U: std::future::Future<Output = Option<Ws<S>>>,
{
    let opening = {
        let shared = shared.clone();
        Box::pin(async move { open(upgrade.await?, shared, token).await })
    };
    let write_timeout = shared.cfg.write_timeout;
    WRITE_TIMEOUT.scope(write_timeout, async move {
        let Some(opened) = opening.await else {
            return;
        };
        // A `debug` span: at the default `info` level it is disabled and
        // costs an idle socket nothing (an enabled span's slot and
        // formatted fields were ~0.7 KiB per socket). The few warnings a
        // served socket can log carry tenant, login and session
        // themselves.
        let span = tracing::debug_span!(
            "socket",
            conn = opened.conn,
            tenant = %opened.session.tenant,
            login = %opened.session.login,
            session = %opened.session.id,
        );
        // `instrument`, not `span.enter()`: a guard held across `.await`
        // would leak this span into whatever else runs on the thread.
        // Awaited through a pin: `.await` on a value moves it into a second
        // slot of this future, doubling what every idle socket keeps.
        let serving = std::pin::pin!(serve_opened(opened, shared).instrument(span));
        serving.await
    })
}

/// Serves an opened socket, then detaches it when its session lives on.
async fn serve_opened<S>(mut o: Box<Opened<S>>, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    debug!("socket attached");
    let detach_needed = serve(&mut o.ws, &shared, &o.socket, &o.session, &o.socket_id).await;
    shared.hub.unregister(&o.socket);
    if detach_needed {
        Box::pin(detach(&shared, &o.session, o.socket_id)).await;
    }
    debug!(detach_needed, "socket finished");
}

/// Verifies, attaches and welcomes; `None` when the socket was refused or
/// told why its session ended (it is closed then).
async fn open<S>(
    mut ws: Ws<S>,
    shared: Arc<Shared>,
    token: Result<ConnectToken, TokenError>,
) -> Option<Box<Opened<S>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let token = match token {
        Ok(t) => t,
        Err(e) => {
            info!(error = %e, "connect token refused");
            metrics::counter!(m::WS_ERRORS, "code" => "invalid_token").increment(1);
            let frame = frames::error("invalid_token", &e.to_string());
            finish(&mut ws, Some(frame), CloseCode::InvalidToken).await;
            return None;
        }
    };
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let socket = Arc::new(SocketShared::new(
        conn,
        token.tenant.clone(),
        token.session_id.clone(),
        shared.cfg.outbound_queue,
    ));
    // Register before attaching so no event after the attach is missed,
    // and so reconciliation never takes the socket for a stale one while
    // its attach is in flight (see `hub::sockets`).
    shared.hub.register(socket.clone());
    let socket_id = SocketId {
        node: shared.cfg.node.clone(),
        conn,
    };
    let attached = shared
        .registry
        .attach(
            &token.tenant,
            &token.session_id,
            token.generation,
            socket_id.clone(),
        )
        .await;
    let session = match attached {
        Ok(Attached::Live {
            session,
            resumed,
            pending,
        }) => {
            let welcome = frames::welcome(
                &session,
                resumed,
                shared.cfg.heartbeat.as_millis() as u64,
                shared.cfg.grace.as_millis() as u64,
            );
            let mut ok = write(&mut ws, Message::Text(welcome)).await;
            // Told at once when the node cannot vouch for the session (a
            // change after `register` may also be queued: the frame is a
            // state, so hearing it twice is harmless).
            let connectivity = shared.hub.connectivity();
            if ok && !connectivity.is_ok() {
                let frame = frames::connectivity(&connectivity);
                ok = write(&mut ws, Message::Text(frame)).await;
            }
            for notice in &pending {
                ok = ok && write(&mut ws, Message::Text(frames::notice_frame(notice))).await;
            }
            let holder = Holder::from(&session);
            if !ok {
                shared.hub.unregister(&socket);
                detach(&shared, &holder, socket_id).await;
                return None;
            }
            holder
        }
        Ok(Attached::Ended(tombstone)) => {
            shared.hub.unregister(&socket);
            finish(
                &mut ws,
                Some(frames::ending_frame(&tombstone)),
                CloseCode::from(tombstone.ending.reason),
            )
            .await;
            return None;
        }
        Err(e) => {
            shared.hub.unregister(&socket);
            // The `error` frame's code is the close's reason.
            let close = match &e {
                RegistryError::TooManySockets { .. } => CloseCode::TooManySockets,
                RegistryError::SocketsElsewhere { .. } => CloseCode::SocketsElsewhere,
                RegistryError::Unavailable(_) => CloseCode::Unavailable,
                _ => CloseCode::SessionUnknown,
            };
            let code = close.reason();
            metrics::counter!(m::WS_ERRORS, "code" => code).increment(1);
            finish(&mut ws, Some(frames::error(code, &e.to_string())), close).await;
            return None;
        }
    };
    Some(Box::new(Opened {
        ws,
        socket,
        session,
        socket_id,
        conn,
    }))
}

/// Relays frames until the socket ends; returns whether the session lives on
/// (so the registry must hear of the detach).
async fn serve<S>(
    ws: &mut Ws<S>,
    shared: &Shared,
    socket: &Arc<SocketShared>,
    session: &Holder,
    socket_id: &SocketId,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut bad_frames = 0u32;
    let rate = shared.cfg.messages_per_second;
    let mut bucket = super::limits::Bucket::new(rate, rate.saturating_mul(2));
    loop {
        tokio::select! {
            biased;
            _ = socket.wake.notified() => {
                let Some(t) = socket.take_terminal() else { continue };
                // Flush what is already queued, then the terminal frame.
                while let Some(out) = socket.try_next() {
                    let Outbound::Text(frame) = out else { continue };
                    if !Box::pin(write(ws, Message::Text(frame))).await { return t.detach; }
                }
                if t.detach {
                    // Detach before the close reaches the client: a client
                    // told to reconnect (drain) must find its session
                    // DISCONNECTED wherever it lands, so it resumes.
                    shared.hub.unregister(socket);
                    Box::pin(detach(shared, session, socket_id.clone())).await;
                }
                Box::pin(finish(ws, t.frame, t.close)).await;
                return false;
            }
            out = socket.next() => {
                let msg = match out {
                    Outbound::Text(frame) => Message::Text(frame),
                    Outbound::Ping => Message::Ping(Default::default()),
                };
                // A client that stopped reading blocks this write; when the
                // hub gives up on it (queue full) the terminal wakes us and
                // the socket is dropped instead of waiting out the timeout.
                let written = tokio::select! {
                    ok = Box::pin(write(ws, msg)) => ok,
                    _ = socket.wake.notified() => false,
                };
                if !written { return true; }
            }
            incoming = ws.next() => {
                socket
                    .last_seen
                    .store(crate::clock::monotonic_ms(), Ordering::Relaxed);
                if matches!(incoming, Some(Ok(Message::Text(_) | Message::Binary(_)))) && !bucket.take() {
                    metrics::counter!(m::LIMITED, "limit" => "messages_per_second").increment(1);
                    warn!(tenant = %session.tenant, login = %session.login, session = %session.id, "client exceeded its message rate");
                    let frame = frames::error(
                        "rate_limited",
                        &format!("more than {rate} messages per second; slow down"),
                    );
                    Box::pin(finish(ws, Some(frame), CloseCode::RateLimited)).await;
                    return true;
                }
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Binary(_))) => {
                        bad_frames += 1;
                        Box::pin(reply_error(ws, "binary_not_supported", "send JSON text frames")).await;
                        if bad_frames >= MAX_BAD_FRAMES { return Box::pin(close_bad(ws)).await; }
                        continue;
                    }
                    Some(Ok(Message::Close(_))) | None => return true,
                    Some(Ok(_)) => continue, // ping (answered by tungstenite), pong
                    Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                        metrics::counter!(m::WS_ERRORS, "code" => "too_big").increment(1);
                        warn!(tenant = %session.tenant, login = %session.login, session = %session.id, size, max_size, "message too big");
                        Box::pin(finish(ws, None, CloseCode::MessageTooBig)).await;
                        return true;
                    }
                    Some(Err(e)) => { debug!(error = %e, "socket error"); return true; }
                };
                match protocol::parse(text.as_str()) {
                    Ok(msg) => {
                        bad_frames = 0;
                        // Boxed: the rare paths' state must not be part of
                        // every idle socket's resident future.
                        if let Some(done) = Box::pin(handle(ws, shared, socket, session, msg)).await {
                            return done;
                        }
                    }
                    Err(e) => {
                        bad_frames += 1;
                        metrics::counter!(m::WS_ERRORS, "code" => e.code).increment(1);
                        Box::pin(reply_error(ws, e.code, &e.message)).await;
                        if bad_frames >= MAX_BAD_FRAMES { return Box::pin(close_bad(ws)).await; }
                    }
                }
            }
        }
    }
}

/// Acts on one client message; `Some(detach)` when the socket must end.
async fn handle<S>(
    ws: &mut Ws<S>,
    shared: &Shared,
    socket: &Arc<SocketShared>,
    session: &Holder,
    msg: ClientMessage,
) -> Option<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let reg = &shared.registry;
    let result = match msg {
        ClientMessage::Ping { id } => {
            return (!write(ws, Message::Text(frames::pong(&id))).await).then_some(true);
        }
        ClientMessage::Status { status } => {
            reg.set_status(&session.tenant, &session.id, session.generation, status)
                .await
        }
        ClientMessage::Ack { notice_id } => reg.ack(&session.tenant, &session.id, &notice_id).await,
        // The Ended event brings `logged_out` and the close through the hub.
        ClientMessage::Logout => reg.release(&session.tenant, &session.id).await.map(|_| ()),
        ClientMessage::WatchPresence => {
            if session.may_watch_presence {
                shared.hub.watch_socket(socket.clone());
                reg.watch(&session.tenant).await
            } else {
                reply_error(
                    ws,
                    "forbidden",
                    "watch_presence needs role supervisor or admin",
                )
                .await;
                Ok(())
            }
        }
    };
    if let Err(e) = result {
        reply_error(ws, "rejected", &e.to_string()).await;
    }
    None
}

async fn reply_error<S>(ws: &mut Ws<S>, code: &str, message: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    write(ws, Message::Text(frames::error(code, message))).await;
}

async fn close_bad<S>(ws: &mut Ws<S>) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    finish(ws, None, CloseCode::TooManyBadFrames).await;
    true
}

/// Writes one frame, bounded by the write timeout; false when the socket is gone.
/// A text longer than [`FRAGMENT_BYTES`] goes out as fragments of that size
/// (one message to the client, RFC 6455 §5.4).
async fn write<S>(ws: &mut Ws<S>, msg: Message) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let send = async {
        match msg {
            Message::Text(text) if text.len() > FRAGMENT_BYTES => {
                for frame in fragments(text.into()) {
                    ws.feed(Message::Frame(frame)).await?;
                }
                ws.flush().await
            }
            msg => ws.send(msg).await,
        }
    };
    matches!(
        tokio::time::timeout(write_timeout(), send).await,
        Ok(Ok(()))
    )
}

/// The largest frame a socket writes. A connection's write buffer keeps the
/// capacity of the largest frame it ever wrote (tungstenite's `FrameCodec`
/// never shrinks it), so one 4 KiB notice would otherwise pin ~4 KiB on
/// every socket it reached, for the socket's life. With `write_buffer_size`
/// 0 each fragment is written as it is fed, so the buffer holds one.
pub(crate) const FRAGMENT_BYTES: usize = 1024;

/// A text message as frames of at most [`FRAGMENT_BYTES`]: a text frame,
/// then continuations, the last one final. Slices of one buffer, no copy;
/// a fragment may end inside a UTF-8 character (the message as a whole is
/// what must be valid UTF-8).
fn fragments(text: Bytes) -> impl Iterator<Item = Frame> {
    let n = text.len().div_ceil(FRAGMENT_BYTES);
    (0..n).map(move |i| {
        let end = ((i + 1) * FRAGMENT_BYTES).min(text.len());
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        Frame::message(text.slice(i * FRAGMENT_BYTES..end), opcode, i + 1 == n)
    })
}

/// Sends an optional last frame and the close.
async fn finish<S>(ws: &mut Ws<S>, frame: Option<Utf8Bytes>, close: CloseCode)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(frame) = frame {
        if !write(ws, Message::Text(frame)).await {
            return;
        }
    }
    let close = CloseFrame {
        code: WsCloseCode::from(close.as_u16()),
        reason: Utf8Bytes::from_static(close.reason()),
    };
    let _ = tokio::time::timeout(write_timeout(), ws.close(Some(close))).await;
}

async fn detach(shared: &Shared, session: &Holder, socket: SocketId) {
    if let Err(e) = shared
        .registry
        .detach(&session.tenant, &session.id, session.generation, socket)
        .await
    {
        warn!(tenant = %session.tenant, login = %session.login, session = %session.id, error = %e, "detach failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_go_as_a_text_frame_then_final_continuations() {
        let text = Bytes::from("é".repeat(FRAGMENT_BYTES + 10)); // 2,068 bytes
        let frames: Vec<Frame> = fragments(text.clone()).collect();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].header().opcode, OpCode::Data(Data::Text));
        assert!(frames[1..]
            .iter()
            .all(|f| f.header().opcode == OpCode::Data(Data::Continue)));
        let fins: Vec<bool> = frames.iter().map(|f| f.header().is_final).collect();
        assert_eq!(fins, [false, false, true]);
        assert!(frames.iter().all(|f| f.payload().len() <= FRAGMENT_BYTES));
        let joined: Vec<u8> = frames.iter().flat_map(|f| f.payload().to_vec()).collect();
        assert_eq!(joined, text.to_vec());
    }
}
