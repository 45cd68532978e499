//! Metric names, in one place. Labels stay low-cardinality: never a login,
//! session id or tenant.

/// Gauge: open WebSockets on this node.
pub const SOCKETS: &str = "turnstile_sockets";
/// Gauge: 1 while this node cannot vouch for its sessions (connectivity
/// degraded: Redis unreachable, subscription lost, lease unconfirmed), else 0.
pub const DEGRADED: &str = "turnstile_degraded";
/// Gauge: 1 when `/readyz` would answer 200 (the registry can serve writes
/// and the node is not draining), else 0; set at each scrape.
pub const READY: &str = "turnstile_ready";
/// Gauge by `state`: live sessions known to this node's registry.
pub const SESSIONS: &str = "turnstile_sessions";
/// Counter by `outcome` (granted, login_in_use, station_in_use, seats_exhausted,
/// station_not_registered, error).
pub const CLAIMS: &str = "turnstile_claims_total";
/// Counter by `why` (holder_changed: not the `expected_session_id`;
/// holder_connected: TAKEOVER_IF_DISCONNECTED met an open socket): takeovers
/// answered LOGIN_IN_USE instead.
pub const TAKEOVERS_REFUSED: &str = "turnstile_takeovers_refused_total";
/// Histogram: claim latency, gRPC request in → reply, seconds.
pub const CLAIM_SECONDS: &str = "turnstile_claim_seconds";
/// Histogram: ListStations latency, request in → reply, seconds (no
/// labels: a tenant is not one).
pub const LIST_STATIONS_SECONDS: &str = "turnstile_list_stations_seconds";
/// Counter: Evict calls with a tenant-wide target (all sessions or a role).
pub const TENANT_EVICTIONS: &str = "turnstile_tenant_evictions_total";
/// Counter by `reason`: forced logouts pushed to sockets.
pub const FORCED_LOGOUTS: &str = "turnstile_forced_logouts_total";
/// Counter by `code`: WebSocket errors sent or seen.
pub const WS_ERRORS: &str = "turnstile_ws_errors_total";
/// Counter: sockets closed because their outbound queue was full.
pub const SLOW_CONSUMERS: &str = "turnstile_slow_consumers_total";
/// Counter: sockets closed because they missed two heartbeats.
pub const HEARTBEAT_DEAD: &str = "turnstile_heartbeat_dead_total";
/// Counter: presence watchers dropped for falling behind.
pub const PRESENCE_LAGGED: &str = "turnstile_presence_watchers_lagged_total";
/// Counter: times this node found Redis had lost its data (epoch changed).
pub const REDIS_DATA_LOSS: &str = "turnstile_redis_data_loss_total";
/// Counter: times this node found Redis had lost writes it saw acknowledged
/// (the write counter went back: a failover to a replica that was behind).
pub const REDIS_LOST_WRITES: &str = "turnstile_redis_lost_writes_total";
/// Counter: times this node found itself declared dead and re-joined.
pub const REDIS_FENCED: &str = "turnstile_redis_fenced_total";
/// Counter: forced logouts delivered by reconciliation (the bus missed them).
pub const REDIS_RECONCILED: &str = "turnstile_redis_reconciled_total";
/// Counter: completed reconciliation rounds (local sockets against Redis).
pub const REDIS_RECONCILE_ROUNDS: &str = "turnstile_redis_reconcile_rounds_total";
/// Summary: lease refresh round trips (the membership script), seconds.
pub const REDIS_LEASE_REFRESH_SECONDS: &str = "turnstile_redis_lease_refresh_seconds";
/// Counter: completed expiry rounds (one per lease tick while the lease
/// holds).
pub const REDIS_EXPIRY_ROUNDS: &str = "turnstile_redis_expiry_rounds_total";
/// Counter: tenants an expiry round woke (had work due, per the due-index).
pub const REDIS_EXPIRY_TENANTS: &str = "turnstile_redis_expiry_tenants_total";
/// Counter: sessions whose sockets Redis listed under this node after it
/// had let them go (a missed detach); reconciliation dropped them.
pub const REDIS_STALE_SOCKETS: &str = "turnstile_redis_stale_sockets_total";
/// Counter by `event` (forced_logout, conflict, seats_exhausted, seat_limit_set,
/// station_not_registered, stations_registered, stations_removed,
/// auth_failure): audit events.
pub const AUDIT_EVENTS: &str = "turnstile_audit_events_total";
/// Counter: log lines (audit events included) dropped because the log sink
/// did not keep up; the audit count above still counts them.
pub const LOG_LINES_DROPPED: &str = "turnstile_log_lines_dropped_total";
/// Counter by `limit`: connections or messages refused by a rate or count limit.
pub const LIMITED: &str = "turnstile_limited_total";
/// Counter by `reason` (bus_overflow, subscription_lost, lease_unconfirmed):
/// times this node's presence watchers were told they may have missed events.
pub const PRESENCE_GAPS: &str = "turnstile_presence_gaps_total";
/// Counter by `outcome` (caught_up, trimmed): WatchPresence streams that
/// read the event log (a resume, or a gap on the way).
pub const PRESENCE_REPLAYS: &str = "turnstile_presence_replays_total";
/// Counter by `outcome` (delivered, refused, failed): webhook POST attempts.
pub const WEBHOOK_ATTEMPTS: &str = "turnstile_webhook_attempts_total";
/// Counter: webhook events given up after `webhook_retry_for` of retries.
pub const WEBHOOK_DEAD_LETTERS: &str = "turnstile_webhook_dead_letters_total";
/// Counter: webhook events that left the event log before they were sent.
pub const WEBHOOK_MISSED: &str = "turnstile_webhook_missed_total";
/// Gauge: events in the log not yet sent by the webhooks this node sends.
pub const WEBHOOK_LAG: &str = "turnstile_webhook_lag_events";
/// Counter by `what` (`queue`, `notice`, `event`): stored notices the
/// registry found and could not decode; each is logged and skipped.
pub const REGISTRY_DECODE_ERRORS: &str = "turnstile_registry_decode_errors_total";
