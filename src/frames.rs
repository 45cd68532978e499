//! The server → client frames of the WebSocket protocol (docs/protocol.md),
//! built here and only here.
//!
//! This module sits below both the hub (which queues `notice`, `presence`,
//! `gap`, `forced_logout`, `connectivity` and `reconnect` frames) and the gateway (which writes
//! `welcome`, `pong` and `error`), so neither calls into the other to
//! speak the protocol. Client frames are parsed in `gateway::protocol`.

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::connectivity::Connectivity;
use crate::registry::GapReason;
use crate::session::{EndReason, Notice, PresenceEvent, Session, SessionState, Tombstone};

fn text(v: Value) -> Utf8Bytes {
    Utf8Bytes::from(v.to_string())
}

/// `welcome`, the first frame of a live socket.
pub fn welcome(session: &Session, resumed: bool, heartbeat_ms: u64, grace_ms: u64) -> Utf8Bytes {
    text(json!({
        "type": "welcome",
        "session_id": session.id.as_str(),
        "tenant": session.tenant.as_str(),
        "login": session.login.as_str(),
        "station": session.station.as_ref().map(|s| s.as_str()),
        "generation": session.generation.0,
        "resumed": resumed,
        "heartbeat_ms": heartbeat_ms,
        "grace_ms": grace_ms,
    }))
}

/// `forced_logout` (or `logged_out` for a normal logout) for an ended session.
pub fn ending_frame(t: &Tombstone) -> Utf8Bytes {
    if t.ending.reason == EndReason::LoggedOut {
        return text(json!({"type": "logged_out"}));
    }
    text(json!({
        "type": "forced_logout",
        "reason": t.ending.reason.as_str(),
        "message": t.ending.message,
        "by": {
            "client": t.ending.by.client,
            "station": t.ending.by.station.as_ref().map(|s| s.as_str()),
            "at_ms": t.ending.by.at_ms,
        },
    }))
}

/// `notice`.
pub fn notice_frame(n: &Notice) -> Utf8Bytes {
    let data = if n.data_json.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&n.data_json).unwrap_or(Value::Null)
    };
    text(json!({
        "type": "notice",
        "notice": {
            "id": n.id,
            "kind": n.kind,
            "severity": n.severity,
            "text": n.text,
            "data": data,
            "expires_at_ms": n.expires_at_ms,
        },
    }))
}

/// `gap`, for watching sockets: presence events may have been lost on the
/// way to this node; re-read the state (`ListSessions`).
pub fn gap_frame(reason: GapReason) -> Utf8Bytes {
    text(json!({"type": "gap", "reason": reason.as_str()}))
}

/// `presence`, for watching sockets.
pub fn presence_frame(e: &PresenceEvent) -> Utf8Bytes {
    let s = &e.session;
    let end_reason = match s.state {
        SessionState::Ended(r) => Some(r.as_str()),
        _ => None,
    };
    text(json!({
        "type": "presence",
        "change": e.change.as_str(),
        "session": {
            "session_id": s.id.as_str(),
            "login": s.login.as_str(),
            "station": s.station.as_ref().map(|x| x.as_str()),
            "client": s.client,
            "role": s.role,
            "state": s.state.as_str(),
            "status": s.status,
            "generation": s.generation.0,
            "end_reason": end_reason,
        },
        "status": s.status,
        "at_ms": e.at_ms,
        "seq": e.seq,
    }))
}

/// `pong`, echoing the ping's id.
pub fn pong(id: &Value) -> Utf8Bytes {
    text(json!({"type": "pong", "id": id}))
}

/// `error`.
pub fn error(code: &str, message: &str) -> Utf8Bytes {
    text(json!({"type": "error", "code": code, "message": message}))
}

/// `connectivity`: whether the node can vouch for the session now.
pub fn connectivity(c: &Connectivity) -> Utf8Bytes {
    match c {
        Connectivity::Ok => text(json!({"type": "connectivity", "state": "ok"})),
        Connectivity::Degraded { cause, since_ms } => text(json!({
            "type": "connectivity",
            "state": "degraded",
            "cause": cause.as_str(),
            "since_ms": since_ms,
        })),
    }
}

/// `reconnect`, sent by a draining node.
pub fn reconnect(after_ms: u64) -> Utf8Bytes {
    text(json!({"type": "reconnect", "after_ms": after_ms}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{
        EndedBy, Ending, Generation, Login, NodeId, PresenceChange, SessionId, Station, Tenant,
    };

    fn session(state: SessionState) -> Session {
        Session {
            id: SessionId::parse("5f0c").unwrap(),
            tenant: Tenant::parse("acme").unwrap(),
            login: Login::parse("ana").unwrap(),
            station: Some(Station::parse("desk-4").unwrap()),
            client: "desktop".into(),
            role: "agent".into(),
            generation: Generation(3),
            state,
            created_at_ms: 1,
            last_seen_ms: 2,
            node: NodeId::parse("n1").unwrap(),
            attributes: Default::default(),
            status: "away".into(),
            device: None,
        }
    }

    fn tombstone(reason: EndReason) -> Tombstone {
        Tombstone {
            session: session(SessionState::Ended(reason)),
            ending: Ending {
                reason,
                by: EndedBy {
                    client: "web".into(),
                    station: None,
                    session_id: None,
                    at_ms: 9,
                },
                message: reason.default_message().into(),
            },
        }
    }

    /// The exact bytes clients have always been sent (keys sorted).
    #[test]
    fn every_server_frame_keeps_its_exact_json() {
        let frames = [
            (
                welcome(&session(SessionState::Connected), true, 15000, 60000),
                r#"{"generation":3,"grace_ms":60000,"heartbeat_ms":15000,"login":"ana","resumed":true,"session_id":"5f0c","station":"desk-4","tenant":"acme","type":"welcome"}"#,
            ),
            (
                ending_frame(&tombstone(EndReason::Superseded)),
                r#"{"by":{"at_ms":9,"client":"web","station":null},"message":"Another user has logged with your credentials. Multiple logins not allowed.","reason":"superseded","type":"forced_logout"}"#,
            ),
            (
                ending_frame(&tombstone(EndReason::LoggedOut)),
                r#"{"type":"logged_out"}"#,
            ),
            (
                notice_frame(&Notice {
                    id: "pw".into(),
                    kind: "password_expiry".into(),
                    severity: "warning".into(),
                    text: "soon".into(),
                    data_json: r#"{"days":3}"#.into(),
                    expires_at_ms: 7,
                }),
                r#"{"notice":{"data":{"days":3},"expires_at_ms":7,"id":"pw","kind":"password_expiry","severity":"warning","text":"soon"},"type":"notice"}"#,
            ),
            (
                presence_frame(&PresenceEvent {
                    session: session(SessionState::Ended(EndReason::Evicted)),
                    change: PresenceChange::Ended,
                    at_ms: 5,
                    seq: 9,
                    ending: None,
                }),
                r#"{"at_ms":5,"change":"ended","seq":9,"session":{"client":"desktop","end_reason":"evicted","generation":3,"login":"ana","role":"agent","session_id":"5f0c","state":"ended","station":"desk-4","status":"away"},"status":"away","type":"presence"}"#,
            ),
            (
                gap_frame(GapReason::SubscriptionLost),
                r#"{"reason":"subscription_lost","type":"gap"}"#,
            ),
            (pong(&json!(42)), r#"{"id":42,"type":"pong"}"#),
            (
                error("forbidden", "no"),
                r#"{"code":"forbidden","message":"no","type":"error"}"#,
            ),
            (reconnect(350), r#"{"after_ms":350,"type":"reconnect"}"#),
            (
                connectivity(&Connectivity::Ok),
                r#"{"state":"ok","type":"connectivity"}"#,
            ),
            (
                connectivity(&Connectivity::Degraded {
                    cause: crate::connectivity::Cause::SubscriptionLost,
                    since_ms: 12,
                }),
                r#"{"cause":"subscription_lost","since_ms":12,"state":"degraded","type":"connectivity"}"#,
            ),
        ];
        for (frame, expected) in frames {
            assert_eq!(frame.as_str(), expected);
        }
    }
}
