//! The JSON body of a webhook: one presence event, shaped as Standard
//! Webhooks suggests (`type`, `timestamp`, `data`).

use std::time::{Duration, UNIX_EPOCH};

use serde_json::json;

use crate::session::{PresenceEvent, SessionState};

/// `{"type": "presence.<change>", "timestamp": RFC 3339, "data": {...}}`;
/// `data` carries the tenant, the event's sequence number, the session and,
/// for an ending, its reason and who or what ended it.
pub fn json(e: &PresenceEvent) -> Vec<u8> {
    let s = &e.session;
    let at = UNIX_EPOCH + Duration::from_millis(e.at_ms.max(0) as u64);
    let ending = e.ending.as_ref().map(|x| {
        json!({
            "reason": x.reason.as_str(),
            "message": x.message,
            "by": {
                "client": x.by.client,
                "station": x.by.station.as_ref().map(|st| st.as_str()),
                "session_id": x.by.session_id.as_ref().map(|id| id.as_str()),
                "at_ms": x.by.at_ms,
            },
        })
    });
    let end_reason = match s.state {
        SessionState::Ended(r) => Some(r.as_str()),
        _ => None,
    };
    json!({
        "type": format!("presence.{}", e.change.as_str()),
        "timestamp": humantime::format_rfc3339_millis(at).to_string(),
        "data": {
            "tenant": s.tenant.as_str(),
            "sequence": e.seq,
            "change": e.change.as_str(),
            "at_ms": e.at_ms,
            "session": {
                "session_id": s.id.as_str(),
                "login": s.login.as_str(),
                "station": s.station.as_ref().map(|x| x.as_str()),
                "client": s.client,
                "role": s.role,
                "state": s.state.as_str(),
                "status": s.status,
                "generation": s.generation.0,
                "node": s.node.as_str(),
                "attributes": s.attributes,
                "end_reason": end_reason,
            },
            "ending": ending,
        },
    })
    .to_string()
    .into_bytes()
}
