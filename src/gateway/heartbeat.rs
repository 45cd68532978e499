//! The heartbeat sweeper: **one** task for all sockets of the node.
//!
//! Every `heartbeat` it walks the hub's sockets once: a socket that sent
//! nothing (not even a pong) for two intervals is dead and is told to close —
//! its connection then detaches and the session becomes DISCONNECTED; every
//! other socket is queued a WebSocket ping. No socket owns a timer, so 100k
//! idle sockets cost one wake-up per socket per interval.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::monotonic_ms;
use crate::close::CloseCode;
use crate::hub::{Hub, Outbound, Terminal};
use crate::metrics_names as m;

/// Runs until `stop` is cancelled.
pub async fn run(hub: Arc<Hub>, heartbeat: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let dead_after = 2 * heartbeat.as_millis() as i64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = monotonic_ms();
        for socket in hub.sockets() {
            if now - socket.last_seen.load(Ordering::Relaxed) > dead_after {
                metrics::counter!(m::HEARTBEAT_DEAD).increment(1);
                socket.terminate(Terminal {
                    frame: None,
                    close: CloseCode::HeartbeatTimeout,
                    detach: true,
                });
            } else {
                socket.send(Outbound::Ping);
            }
        }
    }
}
