//! The JSON the Lua scripts read and write, and its translation to the
//! domain types. Field names are short because every record is stored and
//! published in this form. Redis' cjson writes an empty Lua table as `{}`,
//! so every list here also accepts an empty object.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::registry::RegistryError;
use crate::session::{
    EndReason, EndedBy, Ending, Generation, Login, NodeId, Notice, PresenceChange, PresenceEvent,
    Session, SessionId, SessionState, Station, Tenant, Tombstone,
};

/// A list that cjson may have written as `{}` when empty.
fn list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum SeqOrMap<T> {
        Seq(Vec<T>),
        Map(serde::de::IgnoredAny),
    }
    Ok(match Option::<SeqOrMap<T>>::deserialize(d)? {
        Some(SeqOrMap::Seq(v)) => v,
        _ => Vec::new(),
    })
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WSession {
    pub id: String,
    pub login: String,
    pub station: String,
    pub client: String,
    pub role: String,
    pub gen: u64,
    pub state: String,
    pub created: i64,
    pub seen: i64,
    pub node: String,
    #[serde(default)]
    pub attrs: BTreeMap<String, String>,
    pub status: String,
    #[serde(default)]
    pub reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WBy {
    pub client: String,
    pub station: String,
    pub sid: String,
    pub at: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WTomb {
    pub s: WSession,
    pub reason: String,
    pub by: WBy,
    pub msg: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WNotice {
    pub id: String,
    pub kind: String,
    pub sev: String,
    pub text: String,
    pub data: String,
    pub exp: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct WSocket {
    pub n: String,
    pub c: u64,
}

/// claim.lua's request (`R`), borrowed: a claim builds no JSON tree.
#[derive(Serialize)]
pub struct ClaimReq<'a> {
    pub sid: &'a str,
    pub login: &'a str,
    pub station: &'a str,
    pub client: &'a str,
    pub role: &'a str,
    pub policy: &'static str,
    pub attrs: &'a BTreeMap<String, String>,
    pub idem: &'a str,
    /// Whether this node knew the tenant's epoch marker.
    pub kep: bool,
}

/// socket.lua's request: a node's write for one of its sockets. Absent
/// fields stay absent (cjson would turn `null` into a non-nil value).
#[derive(Serialize)]
pub struct SocketReq<'a> {
    pub op: &'static str,
    pub sid: &'a str,
    pub gen: u64,
    pub node: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nid: Option<&'a str>,
}

/// A message on a tenant's event channel.
#[derive(Debug, Deserialize)]
#[serde(tag = "k")]
pub enum WEvent {
    #[serde(rename = "e")]
    Ended { t: WTomb },
    #[serde(rename = "n")]
    Notice { sid: String, n: WNotice },
    #[serde(rename = "p")]
    Presence { s: WSession, c: String, at: i64 },
}

/// Every script's answer: either an error code or the op's fields.
#[derive(Debug, Default, Deserialize)]
pub struct Reply {
    #[serde(default)]
    pub err: Option<String>,
    #[serde(default)]
    pub login: Option<String>,
    #[serde(default)]
    pub cur: Option<u64>,
    /// claim: granted | login | station; attach: live | ended; reassert:
    /// ok | ended | conflict.
    #[serde(default)]
    pub o: Option<String>,
    #[serde(default)]
    pub s: Option<WSession>,
    #[serde(default)]
    pub h: Option<WSession>,
    #[serde(default, deserialize_with = "list")]
    pub ev: Vec<WSession>,
    #[serde(default)]
    pub t: Option<WTomb>,
    #[serde(default)]
    pub resumed: bool,
    #[serde(default, deserialize_with = "list")]
    pub nt: Vec<WNotice>,
    #[serde(default, deserialize_with = "list")]
    pub ss: Vec<WSession>,
    #[serde(default)]
    pub next: String,
    #[serde(default, deserialize_with = "list")]
    pub st: Vec<WStation>,
    #[serde(default)]
    pub d: u32,
    #[serde(default)]
    pub q: u32,
    #[serde(default)]
    pub more: bool,
    #[serde(default, deserialize_with = "list")]
    pub ended: Vec<WTomb>,
    #[serde(default, deserialize_with = "list")]
    pub missing: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct WStation {
    pub l: String,
    pub id: String,
}

/// The membership script's answer.
#[derive(Debug, Default, Deserialize)]
pub struct NodesReply {
    #[serde(default)]
    pub dead: bool,
    #[serde(default)]
    pub epoch: String,
    #[serde(default)]
    pub fresh: bool,
    #[serde(default, deserialize_with = "list")]
    pub due: Vec<String>,
    #[serde(default, deserialize_with = "list")]
    pub t: Vec<String>,
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> RegistryError {
    RegistryError::Unavailable(format!("redis holds a malformed {what}: {detail}"))
}

pub fn end_reason(s: &str) -> Result<EndReason, RegistryError> {
    Ok(match s {
        "logged_out" => EndReason::LoggedOut,
        "superseded" => EndReason::Superseded,
        "station_changed" => EndReason::StationChanged,
        "evicted" => EndReason::Evicted,
        "expired" => EndReason::Expired,
        other => return Err(corrupt("end reason", other)),
    })
}

fn presence_change(s: &str) -> Result<PresenceChange, RegistryError> {
    Ok(match s {
        "claimed" => PresenceChange::Claimed,
        "connected" => PresenceChange::Connected,
        "disconnected" => PresenceChange::Disconnected,
        "reconnected" => PresenceChange::Reconnected,
        "status_changed" => PresenceChange::StatusChanged,
        "ended" => PresenceChange::Ended,
        other => return Err(corrupt("presence change", other)),
    })
}

fn opt_station(s: &str) -> Result<Option<Station>, RegistryError> {
    if s.is_empty() {
        Ok(None)
    } else {
        Station::parse(s)
            .map(Some)
            .map_err(|e| corrupt("station", e))
    }
}

impl WSession {
    pub fn to_session(&self, tenant: &Tenant) -> Result<Session, RegistryError> {
        let state = match self.state.as_str() {
            "pending" => SessionState::Pending,
            "connected" => SessionState::Connected,
            "disconnected" => SessionState::Disconnected,
            "ended" => SessionState::Ended(end_reason(&self.reason)?),
            other => return Err(corrupt("session state", other)),
        };
        Ok(Session {
            id: SessionId::parse(&self.id).map_err(|e| corrupt("session id", e))?,
            tenant: tenant.clone(),
            login: Login::parse(&self.login).map_err(|e| corrupt("login", e))?,
            station: opt_station(&self.station)?,
            client: self.client.clone(),
            role: self.role.clone(),
            generation: Generation(self.gen),
            state,
            created_at_ms: self.created,
            last_seen_ms: self.seen,
            node: NodeId::parse(&self.node).map_err(|e| corrupt("node", e))?,
            attributes: self.attrs.clone(),
            status: self.status.clone(),
        })
    }

    pub fn from_session(s: &Session) -> Self {
        let (state, reason) = match s.state {
            SessionState::Pending => ("pending", ""),
            SessionState::Connected => ("connected", ""),
            SessionState::Disconnected => ("disconnected", ""),
            SessionState::Ended(r) => ("ended", r.as_str()),
        };
        WSession {
            id: s.id.as_str().to_string(),
            login: s.login.as_str().to_string(),
            station: s
                .station
                .as_ref()
                .map(|x| x.as_str().to_string())
                .unwrap_or_default(),
            client: s.client.clone(),
            role: s.role.clone(),
            gen: s.generation.0,
            state: state.to_string(),
            created: s.created_at_ms,
            seen: s.last_seen_ms,
            node: s.node.as_str().to_string(),
            attrs: s.attributes.clone(),
            status: s.status.clone(),
            reason: reason.to_string(),
        }
    }
}

impl WTomb {
    pub fn to_tombstone(&self, tenant: &Tenant) -> Result<Tombstone, RegistryError> {
        let reason = end_reason(&self.reason)?;
        Ok(Tombstone {
            session: self.s.to_session(tenant)?,
            ending: Ending {
                reason,
                by: EndedBy {
                    client: self.by.client.clone(),
                    station: opt_station(&self.by.station)?,
                    session_id: if self.by.sid.is_empty() {
                        None
                    } else {
                        Some(SessionId::parse(&self.by.sid).map_err(|e| corrupt("by.sid", e))?)
                    },
                    at_ms: self.by.at,
                },
                message: if self.msg.is_empty() {
                    reason.default_message().to_string()
                } else {
                    self.msg.clone()
                },
            },
        })
    }
}

impl WNotice {
    pub fn to_notice(&self) -> Notice {
        Notice {
            id: self.id.clone(),
            kind: self.kind.clone(),
            severity: self.sev.clone(),
            text: self.text.clone(),
            data_json: self.data.clone(),
            expires_at_ms: self.exp,
        }
    }

    pub fn from_notice(n: &Notice) -> Self {
        WNotice {
            id: n.id.clone(),
            kind: n.kind.clone(),
            sev: n.severity.clone(),
            text: n.text.clone(),
            data: n.data_json.clone(),
            exp: n.expires_at_ms,
        }
    }
}

pub fn presence_event(
    tenant: &Tenant,
    s: &WSession,
    change: &str,
    at: i64,
) -> Result<PresenceEvent, RegistryError> {
    Ok(PresenceEvent {
        session: s.to_session(tenant)?,
        change: presence_change(change)?,
        at_ms: at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_lists_written_by_cjson_as_objects_decode_as_empty() {
        let r: Reply = serde_json::from_str(r#"{"o":"granted","ev":{},"nt":{}}"#).unwrap();
        assert!(r.ev.is_empty() && r.nt.is_empty());
    }

    #[test]
    fn a_session_round_trips_through_the_wire_form() {
        let tenant = Tenant::parse("acme").unwrap();
        let w: WSession = serde_json::from_str(
            r#"{"id":"abc","login":"ana","station":"","client":"web","role":"agent","gen":3,
               "state":"ended","created":1,"seen":2,"node":"n1","attrs":{},"status":"","reason":"superseded"}"#,
        )
        .unwrap();
        let s = w.to_session(&tenant).unwrap();
        assert_eq!(s.state, SessionState::Ended(EndReason::Superseded));
        assert_eq!(s.station, None);
        let back = WSession::from_session(&s);
        assert_eq!(back.reason, "superseded");
        assert_eq!(back.gen, 3);
    }

    #[test]
    fn an_ended_event_decodes() {
        let w: WEvent = serde_json::from_str(
            r#"{"k":"e","t":{"s":{"id":"abc","login":"ana","station":"","client":"web","role":"agent","gen":3,"state":"ended","created":1,"seen":2,"node":"n1:0000000a","attrs":{},"status":"","reason":"superseded"},"reason":"superseded","by":{"client":"web","station":"","sid":"def","at":2},"msg":""}}"#,
        )
        .unwrap();
        assert!(matches!(w, WEvent::Ended { .. }));
    }
}
