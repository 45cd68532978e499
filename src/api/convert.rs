//! Wire ↔ domain conversion: every field of a request is validated here,
//! and an error names the proto field so the caller can fix it.

use std::collections::BTreeMap;

use tonic::Status;

use crate::pb;
use crate::registry::{RegistryError, StationInfo, StationQuery, TenantUsage};
use crate::session::{
    ClaimRequest, ConflictPolicy, EndReason, InvalidField, Notice, PresenceChange, PresenceEvent,
    Session, SessionState, Station,
};

/// Field limits of the gRPC API (defined, with their reasons, in [`crate::limits`]).
pub use crate::limits::{
    DEFAULT_PAGE, MAX_ATTRIBUTES, MAX_ATTRIBUTE_KEY, MAX_ATTRIBUTE_VALUE, MAX_CLIENT_LEN,
    MAX_DIRECTORY_CHANGE, MAX_IDEMPOTENCY_KEY, MAX_MESSAGE_LEN, MAX_NOTICE_DATA, MAX_NOTICE_TEXT,
    MAX_PAGE, MAX_ROLE_LEN, MAX_STATIONS, STATION_SCAN_FACTOR,
};

pub fn invalid(e: InvalidField) -> Status {
    Status::invalid_argument(e.to_string())
}

fn bad(field: &'static str, problem: impl Into<String>) -> Status {
    invalid(InvalidField::new(field, problem))
}

/// A short free-text field: printable, at most `max` bytes.
pub fn short_text(field: &'static str, value: &str, max: usize) -> Result<(), Status> {
    if value.len() > max {
        return Err(bad(
            field,
            format!("is {} bytes long, the limit is {max}", value.len()),
        ));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(bad(field, "must not contain control characters"));
    }
    Ok(())
}

fn optional_station(field: &'static str, value: &str) -> Result<Option<Station>, Status> {
    if value.is_empty() {
        return Ok(None);
    }
    Station::parse_field(field, value)
        .map(Some)
        .map_err(invalid)
}

pub fn claim_request(r: pb::ClaimRequest) -> Result<ClaimRequest, Status> {
    let tenant = crate::session::Tenant::parse(&r.tenant).map_err(invalid)?;
    let login = crate::session::Login::parse(&r.login).map_err(invalid)?;
    let station = optional_station("station", &r.station)?;
    short_text("client", &r.client, MAX_CLIENT_LEN)?;
    short_text("role", &r.role, MAX_ROLE_LEN)?;
    let policy = match pb::ConflictPolicy::try_from(r.on_conflict) {
        // Unspecified is the documented default: a forgotten field never
        // ends anybody's session.
        Ok(pb::ConflictPolicy::Unspecified | pb::ConflictPolicy::Reject) => ConflictPolicy::Reject,
        Ok(pb::ConflictPolicy::Takeover) => ConflictPolicy::Takeover,
        Ok(pb::ConflictPolicy::TakeoverIfDisconnected) => ConflictPolicy::TakeoverIfDisconnected,
        Err(_) => {
            return Err(bad(
                "on_conflict",
                format!("unknown value {}", r.on_conflict),
            ))
        }
    };
    if r.attributes.len() > MAX_ATTRIBUTES {
        return Err(bad(
            "attributes",
            format!(
                "has {} entries, the limit is {MAX_ATTRIBUTES}",
                r.attributes.len()
            ),
        ));
    }
    for (k, v) in &r.attributes {
        if k.is_empty() {
            return Err(bad("attributes", "keys must not be empty"));
        }
        short_text("attributes", k, MAX_ATTRIBUTE_KEY)?;
        short_text("attributes", v, MAX_ATTRIBUTE_VALUE)?;
    }
    short_text("idempotency_key", &r.idempotency_key, MAX_IDEMPOTENCY_KEY)?;
    let expected_session_id = if r.expected_session_id.is_empty() {
        None
    } else if policy == ConflictPolicy::Reject {
        return Err(bad(
            "expected_session_id",
            "needs on_conflict CONFLICT_POLICY_TAKEOVER or CONFLICT_POLICY_TAKEOVER_IF_DISCONNECTED",
        ));
    } else {
        Some(
            crate::session::SessionId::parse_field("expected_session_id", &r.expected_session_id)
                .map_err(invalid)?,
        )
    };
    let device = if r.device.is_empty() {
        None
    } else {
        Some(crate::session::Device::parse_field("device", &r.device).map_err(invalid)?)
    };
    Ok(ClaimRequest {
        tenant,
        login,
        station,
        client: if r.client.is_empty() {
            "unknown".into()
        } else {
            r.client
        },
        role: if r.role.is_empty() {
            "agent".into()
        } else {
            r.role
        },
        policy,
        attributes: r.attributes.into_iter().collect::<BTreeMap<_, _>>(),
        idempotency_key: (!r.idempotency_key.is_empty()).then_some(r.idempotency_key),
        expected_session_id,
        device,
    })
}

pub fn usage(u: TenantUsage) -> pb::TenantUsage {
    pb::TenantUsage {
        seats_used: u.seats_used,
        seat_limit: u.seat_limit,
    }
}

pub fn notice(n: Option<pb::Notice>) -> Result<Notice, Status> {
    let n = n.ok_or_else(|| bad("notice", "is required"))?;
    if n.id.is_empty() {
        return Err(bad("notice.id", "must not be empty"));
    }
    short_text("notice.id", &n.id, 128)?;
    if n.kind.is_empty() {
        return Err(bad("notice.kind", "must not be empty"));
    }
    short_text("notice.kind", &n.kind, 64)?;
    short_text("notice.severity", &n.severity, 32)?;
    if n.text.len() > MAX_NOTICE_TEXT {
        return Err(bad(
            "notice.text",
            format!(
                "is {} bytes long, the limit is {MAX_NOTICE_TEXT}",
                n.text.len()
            ),
        ));
    }
    if !n.data_json.is_empty() {
        if n.data_json.len() > MAX_NOTICE_DATA {
            return Err(bad(
                "notice.data_json",
                format!("the limit is {MAX_NOTICE_DATA} bytes"),
            ));
        }
        match serde_json::from_str::<serde_json::Value>(&n.data_json) {
            Ok(serde_json::Value::Object(_)) => {}
            _ => return Err(bad("notice.data_json", "must be a JSON object")),
        }
    }
    if n.expires_at_ms < 0 {
        return Err(bad("notice.expires_at_ms", "must not be negative"));
    }
    Ok(Notice {
        id: n.id,
        kind: n.kind,
        severity: if n.severity.is_empty() {
            "info".into()
        } else {
            n.severity
        },
        text: n.text,
        data_json: n.data_json,
        expires_at_ms: n.expires_at_ms,
    })
}

pub fn page_size(n: u32) -> Result<usize, Status> {
    match n as usize {
        0 => Ok(DEFAULT_PAGE),
        n if n > MAX_PAGE => Err(bad(
            "page_size",
            format!("{n} is over the limit of {MAX_PAGE}"),
        )),
        n => Ok(n),
    }
}

pub fn stations(list: &[String]) -> Result<Vec<Station>, Status> {
    if list.len() > MAX_STATIONS {
        return Err(bad(
            "stations",
            format!("has {} entries, the limit is {MAX_STATIONS}", list.len()),
        ));
    }
    list.iter()
        .map(|s| Station::parse_field("stations", s).map_err(invalid))
        .collect()
}

/// The stations of a RegisterStations or RemoveStations call.
pub fn directory_change(list: &[String]) -> Result<Vec<Station>, Status> {
    if list.len() > MAX_DIRECTORY_CHANGE {
        return Err(bad(
            "stations",
            format!(
                "has {} entries, the limit is {MAX_DIRECTORY_CHANGE} per call",
                list.len()
            ),
        ));
    }
    list.iter()
        .map(|s| Station::parse_field("stations", s).map_err(invalid))
        .collect()
}

/// A ListStations request as a directory query.
pub fn station_query(r: &pb::ListStationsRequest) -> Result<StationQuery, Status> {
    if !r.prefix.is_empty() {
        Station::parse_field("prefix", &r.prefix).map_err(invalid)?;
    }
    let after = if r.page_token.is_empty() {
        None
    } else {
        Some(Station::parse_field("page_token", &r.page_token).map_err(invalid)?)
    };
    let limit = page_size(r.page_size)?;
    Ok(StationQuery {
        prefix: r.prefix.clone(),
        free_only: r.free_only,
        limit,
        scan: limit * STATION_SCAN_FACTOR,
        after,
    })
}

pub fn session(s: &Session) -> pb::Session {
    let (state, end) = match s.state {
        SessionState::Pending => (pb::SessionState::Pending, pb::EndReason::Unspecified),
        SessionState::Connected => (pb::SessionState::Connected, pb::EndReason::Unspecified),
        SessionState::Disconnected => (pb::SessionState::Disconnected, pb::EndReason::Unspecified),
        SessionState::Ended(r) => (pb::SessionState::Ended, end_reason(r)),
    };
    pb::Session {
        session_id: s.id.to_string(),
        tenant: s.tenant.to_string(),
        login: s.login.to_string(),
        station: s
            .station
            .as_ref()
            .map(|x| x.to_string())
            .unwrap_or_default(),
        client: s.client.clone(),
        role: s.role.clone(),
        generation: s.generation.0,
        state: state as i32,
        created_at_ms: s.created_at_ms,
        last_seen_ms: s.last_seen_ms,
        node: s.node.to_string(),
        attributes: s.attributes.clone().into_iter().collect(),
        status: s.status.clone(),
        end_reason: end as i32,
        device: s.device.as_ref().map(|d| d.to_string()).unwrap_or_default(),
    }
}

fn end_reason(r: EndReason) -> pb::EndReason {
    match r {
        EndReason::LoggedOut => pb::EndReason::LoggedOut,
        EndReason::Superseded => pb::EndReason::Superseded,
        EndReason::StationChanged => pb::EndReason::StationChanged,
        EndReason::Evicted => pb::EndReason::Evicted,
        EndReason::Expired => pb::EndReason::Expired,
    }
}

pub fn station_info(i: &StationInfo) -> pb::StationInfo {
    pb::StationInfo {
        station: i.station.to_string(),
        free: i.holder.is_none(),
        login: i
            .holder
            .as_ref()
            .map(|h| h.0.to_string())
            .unwrap_or_default(),
        session_id: i
            .holder
            .as_ref()
            .map(|h| h.1.to_string())
            .unwrap_or_default(),
        holders: i
            .holders
            .iter()
            .map(|h| pb::StationHolder {
                login: h.login.to_string(),
                session_id: h.session_id.to_string(),
                device: h.device.as_ref().map(|d| d.to_string()).unwrap_or_default(),
            })
            .collect(),
    }
}

pub fn presence(e: &PresenceEvent) -> pb::PresenceEvent {
    let change = match e.change {
        PresenceChange::Claimed => pb::PresenceChange::Claimed,
        PresenceChange::Connected => pb::PresenceChange::Connected,
        PresenceChange::Disconnected => pb::PresenceChange::Disconnected,
        PresenceChange::Reconnected => pb::PresenceChange::Reconnected,
        PresenceChange::StatusChanged => pb::PresenceChange::StatusChanged,
        PresenceChange::Ended => pb::PresenceChange::Ended,
    };
    pb::PresenceEvent {
        tenant: e.session.tenant.to_string(),
        session: Some(session(&e.session)),
        change: change as i32,
        status: e.session.status.clone(),
        at_ms: e.at_ms,
        sequence: e.seq,
        ending: e.ending.as_ref().map(|x| pb::PresenceEnding {
            reason: end_reason(x.reason) as i32,
            by_client: x.by.client.clone(),
            by_station: x
                .by
                .station
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            by_session_id: x
                .by
                .session_id
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            message: x.message.clone(),
        }),
    }
}

/// The gRPC status for a registry error.
pub fn status(e: RegistryError) -> Status {
    match &e {
        RegistryError::SessionNotFound { .. }
        | RegistryError::LoginNotFound { .. }
        | RegistryError::StationNotFound { .. } => Status::not_found(e.to_string()),
        RegistryError::StaleGeneration { .. } | RegistryError::SessionEnded { .. } => {
            Status::failed_precondition(e.to_string())
        }
        RegistryError::TooManySockets { .. } | RegistryError::TooManyStations { .. } => {
            Status::resource_exhausted(e.to_string())
        }
        RegistryError::SocketsElsewhere { .. } => Status::unavailable(e.to_string()),
        RegistryError::IdempotencyKeyReused { .. } | RegistryError::InvalidNotice { .. } => {
            Status::invalid_argument(e.to_string())
        }
        RegistryError::Unavailable(_) => Status::unavailable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> pb::ClaimRequest {
        pb::ClaimRequest {
            tenant: "acme".into(),
            login: "ana".into(),
            ..Default::default()
        }
    }

    #[test]
    fn claim_requests_name_the_bad_field() {
        let mut r = req();
        r.station = "desk 4".into();
        let e = claim_request(r).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("station:"), "{}", e.message());
        let mut r = req();
        r.on_conflict = 9;
        assert!(claim_request(r)
            .unwrap_err()
            .message()
            .starts_with("on_conflict:"));
        let mut r = req();
        r.tenant.clear();
        assert_eq!(
            claim_request(r).unwrap_err().message(),
            "tenant: must not be empty"
        );
        let ok = claim_request(req()).unwrap();
        assert_eq!(ok.station, None);
        assert_eq!(ok.role, "agent");
        // An unset policy is UNSPECIFIED, which means REJECT.
        assert_eq!(ok.policy, ConflictPolicy::Reject);
        let mut r = req();
        r.on_conflict = pb::ConflictPolicy::Takeover as i32;
        assert_eq!(claim_request(r).unwrap().policy, ConflictPolicy::Takeover);
    }

    #[test]
    fn notices_and_pages_are_checked() {
        assert!(notice(None).unwrap_err().message().starts_with("notice:"));
        let n = pb::Notice {
            id: "n1".into(),
            kind: "license_expiry".into(),
            data_json: "[1]".into(),
            ..Default::default()
        };
        assert!(notice(Some(n))
            .unwrap_err()
            .message()
            .starts_with("notice.data_json:"));
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE);
        assert!(page_size(5000)
            .unwrap_err()
            .message()
            .starts_with("page_size:"));
    }
}
