//! The audit trail: who displaced whom, who was refused, who failed to
//! authenticate. Contact centers are asked by auditors; every such event is
//! one structured log line on the `turnstile::audit` target (JSON with
//! `--log-format json`) and a count in `turnstile_audit_events_total{event}`.

use tracing::info;

use crate::metrics_names as m;
use crate::session::{Session, SessionState, Tenant};

const TARGET: &str = "turnstile::audit";

fn count(event: &'static str) {
    metrics::counter!(m::AUDIT_EVENTS, "event" => event).increment(1);
}

/// A session ended by someone else: takeover, station change, eviction.
pub fn forced_logout(ended: &Session, by: &str, from: &str) {
    count("forced_logout");
    let reason = match ended.state {
        SessionState::Ended(r) => r.as_str(),
        _ => "unknown",
    };
    info!(
        target: TARGET,
        event = "forced_logout",
        tenant = %ended.tenant,
        login = %ended.login,
        session = %ended.id,
        station = ended.station.as_ref().map(|x| x.as_str()).unwrap_or(""),
        device = ended.device.as_ref().map(|x| x.as_str()).unwrap_or(""),
        reason,
        by,
        from,
    );
}

/// A claim refused because the login or station is held: `device` is the
/// claim's, `holders` how many hold the station (a shared one: several).
pub fn conflict(
    outcome: &'static str,
    claim_login: &str,
    claim_station: &str,
    device: &str,
    holder: &Session,
    holders: usize,
    from: &str,
) {
    count("conflict");
    info!(
        target: TARGET,
        event = "conflict",
        outcome,
        tenant = %holder.tenant,
        login = claim_login,
        station = claim_station,
        device,
        holder_login = %holder.login,
        holder_session = %holder.id,
        holder_device = holder.device.as_ref().map(|x| x.as_str()).unwrap_or(""),
        holders,
        from,
    );
}

/// A claim refused because the tenant's seats are all in use.
pub fn seats_exhausted(tenant: &Tenant, claim_login: &str, used: u32, limit: u32, from: &str) {
    count("seats_exhausted");
    info!(
        target: TARGET,
        event = "seats_exhausted",
        tenant = %tenant,
        login = claim_login,
        used,
        limit,
        from,
    );
}

/// An operator set a tenant's seat limit (0: none).
pub fn seat_limit_set(tenant: &Tenant, limit: u32, used: u32, by: &str, from: &str) {
    count("seat_limit_set");
    info!(target: TARGET, event = "seat_limit_set", tenant = %tenant, limit, used, by, from);
}

/// A claim refused because the tenant's directory is strict and does not
/// list the station.
pub fn station_not_registered(tenant: &Tenant, claim_login: &str, station: &str, from: &str) {
    count("station_not_registered");
    info!(
        target: TARGET,
        event = "station_not_registered",
        tenant = %tenant,
        login = claim_login,
        station,
        from,
    );
}

/// Stations registered in or removed from a tenant's directory
/// (`event`: stations_registered, stations_removed); `changed` of the call's,
/// `registered` after it.
pub fn directory_changed(
    event: &'static str,
    tenant: &Tenant,
    change: crate::registry::DirectoryChange,
    by: &str,
    from: &str,
) {
    count(event);
    info!(
        target: TARGET,
        event,
        tenant = %tenant,
        changed = change.changed,
        registered = change.registered,
        by,
        from,
    );
}

/// A connect token, API key or origin refused: `who` is the key's name
/// when one was recognised (else `-`), `from` the caller's address.
pub fn auth_failure(channel: &'static str, who: &str, from: &str, detail: &str) {
    count("auth_failure");
    info!(target: TARGET, event = "auth_failure", channel, who, from, detail);
}
