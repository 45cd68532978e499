//! The JSON the Lua scripts read and write, and its translation to the
//! domain types. Field names are short because every record is stored and
//! published in this form. Redis' cjson writes an empty Lua table as `{}`,
//! so every list here also accepts an empty object.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::registry::{RegistryError, StationHolder, StationInfo};
use crate::session::{
    Device, EndReason, EndedBy, Ending, Generation, Login, NodeId, Notice, PresenceChange,
    PresenceEvent, Session, SessionId, SessionState, Station, Tenant, Tombstone,
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

/// A [`Session`]: the `s` of a session record (`s:<sid>`), of a tombstone,
/// of events and of replies.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WSession {
    pub id: String,
    pub login: String,
    /// `""` when the session has no station.
    pub station: String,
    pub client: String,
    pub role: String,
    /// [`Session::generation`].
    pub gen: u64,
    /// [`SessionState::as_str`]; an ended session's reason is in `reason`.
    pub state: String,
    /// [`Session::created_at_ms`].
    pub created: i64,
    /// [`Session::last_seen_ms`].
    pub seen: i64,
    pub node: String,
    /// [`Session::attributes`].
    #[serde(default)]
    pub attrs: BTreeMap<String, String>,
    pub status: String,
    /// [`EndReason::as_str`] when `state` is `ended`, else `""`.
    #[serde(default)]
    pub reason: String,
    /// [`Session::device`]; absent when none (most sessions: no bytes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dev: String,
}

/// An [`EndedBy`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WBy {
    pub client: String,
    /// `""`: none.
    pub station: String,
    /// The displacing session's id; `""`: none (admin, broker).
    pub sid: String,
    /// [`EndedBy::at_ms`].
    pub at: i64,
}

/// A [`Tombstone`] (`t:<sid>`, and the `t` of `e` events and replies).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WTomb {
    /// The session as it ended.
    pub s: WSession,
    /// [`EndReason::as_str`].
    pub reason: String,
    pub by: WBy,
    /// The message for the person; `""`: the reason's default message.
    pub msg: String,
}

/// A [`Notice`]: the body stored once per notice (`nb:<body id>`) and
/// carried by notice events.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WNotice {
    pub id: String,
    pub kind: String,
    /// [`Notice::severity`].
    pub sev: String,
    pub text: String,
    /// [`Notice::data_json`]: a JSON object, or `""`.
    pub data: String,
    /// [`Notice::expires_at_ms`].
    pub exp: i64,
}

/// A socket in a session record's `k` list (the Lua side also keeps `t`,
/// when it was attached).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct WSocket {
    /// The node holding it.
    pub n: String,
    /// Its connection number on that node.
    pub c: u64,
}

/// claim.lua's request (`R`), borrowed: a claim builds no JSON tree.
#[derive(Serialize)]
pub struct ClaimReq<'a> {
    /// The id the session gets if granted (chosen by the node).
    pub sid: &'a str,
    pub login: &'a str,
    /// `""`: none.
    pub station: &'a str,
    pub client: &'a str,
    pub role: &'a str,
    /// [`ConflictPolicy::as_str`](crate::session::ConflictPolicy::as_str).
    pub policy: &'static str,
    pub attrs: &'a BTreeMap<String, String>,
    /// The idempotency key; `""`: none.
    pub idem: &'a str,
    /// Whether this node knew the tenant's epoch marker.
    pub kep: bool,
    /// The expected holder of a takeover; absent: any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<&'a str>,
    /// The configured seat limit of the tenant (0: none).
    pub seats: u32,
    /// The claim's device; absent: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev: Option<&'a str>,
    /// With `dev`, when the tenant shares stations: how many may hold one
    /// ([`MAX_STATION_HOLDERS`](crate::limits::MAX_STATION_HOLDERS));
    /// absent: the station is not shared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sh: Option<usize>,
    /// The tenant's directory is strict; absent (not false) otherwise, so
    /// a tenant not in strict mode costs the claim nothing.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
}

/// socket.lua's request: a node's write for one of its sockets. Absent
/// fields stay absent (cjson would turn `null` into a non-nil value).
#[derive(Serialize)]
pub struct SocketReq<'a> {
    /// `attach`, `detach`, `status` or `ack`.
    pub op: &'static str,
    pub sid: &'a str,
    /// The generation the connect token names.
    pub gen: u64,
    pub node: &'a str,
    /// The socket's connection number (attach, detach).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn: Option<u64>,
    /// The new presence status (status).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'a str>,
    /// The notice id acked (ack).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nid: Option<&'a str>,
    /// attach: nodes found in the `{nodes}` dead set whose sockets the
    /// session still lists; they no longer count against its limit.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub dead: &'a [String],
}

/// A message on a tenant's event channel; `k` names the kind.
#[derive(Debug, Deserialize)]
#[serde(tag = "k")]
pub enum WEvent {
    /// `e`: a session ended; `t` its tombstone.
    #[serde(rename = "e")]
    Ended { t: WTomb },
    /// `n`: notice `n` for each of sessions `sids`.
    #[serde(rename = "n")]
    Notice { sids: Vec<String>, n: WNotice },
    /// `p`: presence change `c` ([`PresenceChange::as_str`]) of session `s`
    /// at unix ms `at`.
    /// `q` is its sequence number in the tenant's event log; an ending
    /// also carries `by` and `msg` (as in [`WTomb`]).
    #[serde(rename = "p")]
    Presence {
        s: WSession,
        c: String,
        at: i64,
        #[serde(default)]
        q: u64,
        #[serde(default)]
        by: Option<WBy>,
        #[serde(default)]
        msg: String,
    },
}

/// Every script's answer: either an error code or the op's fields.
#[derive(Debug, Default, Deserialize)]
pub struct Reply {
    /// The error code (`fenced`, `ended`, `notfound`, `stale`, `toomany`,
    /// `idem`, `dataloss` ...); the other fields are then absent or details.
    #[serde(default)]
    pub err: Option<String>,
    /// `idem`: the login the idempotency key was first used for.
    #[serde(default)]
    pub login: Option<String>,
    /// `stale`: the session's current generation.
    #[serde(default)]
    pub cur: Option<u64>,
    /// `toomany`: the other nodes holding the session's sockets (which may
    /// have died without being declared dead yet).
    #[serde(default, deserialize_with = "list")]
    pub elsewhere: Vec<String>,
    /// claim: granted | login | station; attach: live | ended; reassert:
    /// ok | ended | conflict.
    #[serde(default)]
    pub o: Option<String>,
    /// The session the op was about (granted, attached, released ...).
    #[serde(default)]
    pub s: Option<WSession>,
    /// claim: the holder of the login or station on a conflict.
    #[serde(default)]
    pub h: Option<WSession>,
    /// claim (station): every holder of the station, `h` first.
    #[serde(default, deserialize_with = "list")]
    pub hs: Vec<WSession>,
    /// claim (seats), seats: live sessions of the tenant.
    #[serde(default)]
    pub used: u32,
    /// claim (seats), seats: the seat limit in force (0: none).
    #[serde(default)]
    pub limit: u32,
    /// claim: the sessions a takeover ended (evicted).
    #[serde(default, deserialize_with = "list")]
    pub ev: Vec<WSession>,
    /// A tombstone: attach or reassert of an ended session.
    #[serde(default)]
    pub t: Option<WTomb>,
    /// attach: the session came back from DISCONNECTED.
    #[serde(default)]
    pub resumed: bool,
    /// attach: the session's queued notices, each the JSON of a
    /// [`WNotice`] as stored, decoded on its own, so one that no longer
    /// decodes cannot empty the rest.
    #[serde(default, deserialize_with = "list")]
    pub nt: Vec<String>,
    /// attach, notify: stored queue lines that did not parse (skipped).
    #[serde(default)]
    pub bad: u32,
    /// list: one page of sessions.
    #[serde(default, deserialize_with = "list")]
    pub ss: Vec<WSession>,
    /// list, notify: where the next page or batch starts; `""`: done.
    #[serde(default)]
    pub next: String,
    /// stations: one entry per station asked, in order; dir: one per
    /// station of the page.
    #[serde(default, deserialize_with = "list")]
    pub st: Vec<WStation>,
    /// dir: the names of the page's stations, in order.
    #[serde(default, deserialize_with = "list")]
    pub sn: Vec<String>,
    /// dir, directory: stations registered in the tenant.
    #[serde(default)]
    pub reg: u64,
    /// directory: stations added or removed.
    #[serde(default)]
    pub n: u32,
    /// toomanystations: stations the call would have added.
    #[serde(default)]
    pub adding: u64,
    /// toomanystations: stations registered had it added them.
    #[serde(default)]
    pub would: u64,
    /// notify: notices delivered to a session with a socket.
    #[serde(default)]
    pub d: u32,
    /// notify: notices queued for a session without one.
    #[serde(default)]
    pub q: u32,
    /// reap, expire: call again, work is left.
    #[serde(default)]
    pub more: bool,
    /// sync: tombstones of held sessions that ended (a missed forced logout).
    #[serde(default, deserialize_with = "list")]
    pub ended: Vec<WTomb>,
    /// sync: held session ids Redis no longer knows (to re-assert).
    #[serde(default, deserialize_with = "list")]
    pub missing: Vec<String>,
}

/// One station in a stations reply (prelude.lua `station_info`): its
/// holders, first first; none when free.
#[derive(Debug, Deserialize)]
pub struct WStation {
    #[serde(default, deserialize_with = "list")]
    pub hs: Vec<WHolder>,
}

/// One holder of a station.
#[derive(Debug, Deserialize)]
pub struct WHolder {
    /// The holder's login.
    pub l: String,
    /// The holder's session id.
    pub id: String,
    /// Its device; absent or `""`: none.
    #[serde(default)]
    pub d: String,
}

impl WStation {
    pub fn to_info(&self, station: &Station) -> Result<StationInfo, RegistryError> {
        let holders = self
            .hs
            .iter()
            .map(|h| {
                Ok(StationHolder {
                    login: Login::parse(&h.l).map_err(|e| corrupt("login", e))?,
                    session_id: SessionId::parse(&h.id).map_err(|e| corrupt("session id", e))?,
                    device: opt_device(&h.d)?,
                })
            })
            .collect::<Result<_, RegistryError>>()?;
        Ok(StationInfo::new(station.clone(), holders))
    }
}

/// The membership script's answer.
#[derive(Debug, Default, Deserialize)]
pub struct NodesReply {
    /// This node was declared dead: it is fenced.
    #[serde(default)]
    pub dead: bool,
    /// The global epoch (a new one means Redis lost its data).
    #[serde(default)]
    pub epoch: String,
    /// lease: this node had no lease (it was gone or is new).
    #[serde(default)]
    pub fresh: bool,
    /// lease: nodes whose lease ran out, and unfinished reaps, to bury.
    #[serde(default, deserialize_with = "list")]
    pub due: Vec<String>,
    /// bury: the tenants to reap the buried node's sockets from.
    #[serde(default, deserialize_with = "list")]
    pub t: Vec<String>,
    /// lease: Redis's clock when it ran the script (Unix ms).
    #[serde(default)]
    pub now: Option<f64>,
    /// lease: the write counter (one Redis), after this refresh.
    #[serde(default)]
    pub wc: Option<f64>,
    /// lease: this refresh found writes this node saw missing, and started
    /// a new epoch.
    #[serde(default)]
    pub lost: bool,
    /// lease: this refresh started a new epoch (no epoch, or lost writes).
    #[serde(default)]
    pub created: bool,
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> RegistryError {
    RegistryError::Unavailable(format!("redis holds a malformed {what}: {detail}"))
}

pub fn end_reason(s: &str) -> Result<EndReason, RegistryError> {
    s.parse().map_err(|e| corrupt("end reason", e))
}

fn presence_change(s: &str) -> Result<PresenceChange, RegistryError> {
    s.parse().map_err(|e| corrupt("presence change", e))
}

fn opt_device(s: &str) -> Result<Option<Device>, RegistryError> {
    if s.is_empty() {
        Ok(None)
    } else {
        Device::parse(s).map(Some).map_err(|e| corrupt("device", e))
    }
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
        let state = SessionState::parse(&self.state, &self.reason)
            .map_err(|e| corrupt("session state", e))?;
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
            device: opt_device(&self.dev)?,
        })
    }

    pub fn from_session(s: &Session) -> Self {
        let (state, reason) = (
            s.state.as_str(),
            s.state.end_reason().map(EndReason::as_str).unwrap_or(""),
        );
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
            dev: s
                .device
                .as_ref()
                .map(|d| d.as_str().to_string())
                .unwrap_or_default(),
        }
    }
}

impl WBy {
    pub fn to_ended_by(&self) -> Result<EndedBy, RegistryError> {
        Ok(EndedBy {
            client: self.client.clone(),
            station: opt_station(&self.station)?,
            session_id: if self.sid.is_empty() {
                None
            } else {
                Some(SessionId::parse(&self.sid).map_err(|e| corrupt("by.sid", e))?)
            },
            at_ms: self.at,
        })
    }
}

impl WTomb {
    pub fn to_tombstone(&self, tenant: &Tenant) -> Result<Tombstone, RegistryError> {
        let reason = end_reason(&self.reason)?;
        Ok(Tombstone {
            session: self.s.to_session(tenant)?,
            ending: Ending {
                reason,
                by: self.by.to_ended_by()?,
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

/// A presence message (of the bus or the event log) as an event.
pub fn presence_event(tenant: &Tenant, ev: &WEvent) -> Result<PresenceEvent, RegistryError> {
    let WEvent::Presence {
        s,
        c,
        at,
        q,
        by,
        msg,
    } = ev
    else {
        return Err(corrupt("presence event", "another kind of event"));
    };
    let session = s.to_session(tenant)?;
    let ending = match (by, session.state) {
        (Some(by), SessionState::Ended(reason)) => Some(Ending {
            reason,
            by: by.to_ended_by()?,
            message: if msg.is_empty() {
                reason.default_message().to_string()
            } else {
                msg.clone()
            },
        }),
        _ => None,
    };
    Ok(PresenceEvent {
        session,
        change: presence_change(c)?,
        at_ms: *at,
        seq: *q,
        ending,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_lists_written_by_cjson_as_objects_decode_as_empty() {
        let r: Reply = serde_json::from_str(r#"{"o":"granted","ev":{},"nt":{}}"#).unwrap();
        assert_eq!(r.bad, 0);
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
