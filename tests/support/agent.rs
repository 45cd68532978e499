//! An agent's socket on a real node process, through the `turnstile-client`
//! crate as a real agent application would use it (tests/cluster.rs,
//! tests/failover.rs).

use turnstile_client::{AgentSocket, ConnectOptions, ServerFrame};

use super::procs::NodeProc;
use super::within;

pub struct Agent(pub AgentSocket);

/// What a welcome said.
pub struct Welcome {
    pub session_id: String,
    pub resumed: bool,
}

impl Agent {
    /// The next frame but `connectivity` (tests/connectivity.rs covers
    /// those; the faults the cluster tests inject cause them).
    pub async fn next(&mut self) -> ServerFrame {
        within("a frame", async {
            loop {
                match self.0.next_frame().await.expect("a protocol frame") {
                    ServerFrame::Connectivity { .. } => continue,
                    other => return other,
                }
            }
        })
        .await
    }

    /// A `forced_logout` with this reason and message, then the close.
    pub async fn expect_forced_logout(&mut self, reason: &str, message: &str, code: u16) {
        match self.next().await {
            ServerFrame::ForcedLogout {
                reason: r,
                message: m,
            } => {
                assert_eq!((r.as_str(), m.as_str()), (reason, message));
            }
            other => panic!("expected forced_logout {reason}, got {other:?}"),
        }
        self.expect_close(code).await;
    }

    /// A `forced_logout` with this reason (message and close not checked).
    pub async fn expect_forced_logout_reason(&mut self, reason: &str) {
        match self.next().await {
            ServerFrame::ForcedLogout { reason: r, .. } => assert_eq!(r, reason),
            other => panic!("expected forced_logout {reason}, got {other:?}"),
        }
    }

    pub async fn expect_close(&mut self, code: u16) {
        match self.next().await {
            ServerFrame::Closed { code: c, .. } => assert_eq!(c, Some(code)),
            other => panic!("expected close {code}, got {other:?}"),
        }
    }

    pub async fn close(self) {
        self.0.close().await;
    }
}

/// Opens an agent's socket on `node` and reads its welcome.
pub async fn welcome_on(node: &NodeProc, token: &str) -> (Agent, Welcome) {
    let socket = within(
        "connect",
        AgentSocket::connect(node.http, token, &ConnectOptions::default()),
    )
    .await
    .expect("the socket opens");
    let mut agent = Agent(socket);
    match agent.next().await {
        ServerFrame::Welcome {
            session_id,
            resumed,
            ..
        } => (
            agent,
            Welcome {
                session_id,
                resumed,
            },
        ),
        other => panic!("expected welcome, got {other:?}"),
    }
}
