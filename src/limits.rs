//! Fixed bounds: the limits that are part of the contract or of the
//! broker's own safety, and so are not settings. Each says why it is what
//! it is. Limits an operator may need to change are settings instead
//! ([`crate::config::settings::SETTINGS`], documented in docs/operations.md).
//!
//! The batch sizes of the registries' own sweeps stay beside their loops
//! (`registry/memory.rs`, `registry/redis/`): they tune one loop each and
//! bound nothing a client can reach.

// ---- gRPC request fields (docs/protocol.md); a longer one is INVALID_ARGUMENT.

/// `ClaimRequest.client` (`desktop`, `phonebar`, …): a short tag.
pub const MAX_CLIENT_LEN: usize = 32;
/// `ClaimRequest.role`: a short tag.
pub const MAX_ROLE_LEN: usize = 32;
/// Attributes of one claim: a handful of labels, not a document store.
pub const MAX_ATTRIBUTES: usize = 32;
/// One attribute's key.
pub const MAX_ATTRIBUTE_KEY: usize = 64;
/// One attribute's value.
pub const MAX_ATTRIBUTE_VALUE: usize = 512;
/// `ClaimRequest.idempotency_key`: room for a UUID with a prefix.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;
/// `EvictRequest.message`, shown to the evicted user.
pub const MAX_MESSAGE_LEN: usize = 512;
/// `Notice.text`, shown to the user.
pub const MAX_NOTICE_TEXT: usize = 2048;
/// `Notice.data_json`, for the client application.
pub const MAX_NOTICE_DATA: usize = 8192;
/// Stations asked about in one StationStatus call.
pub const MAX_STATIONS: usize = 500;
/// Stations in one RegisterStations or RemoveStations call (short names:
/// 1000 of 64 bytes would pass the request-size limit below).
pub const MAX_DIRECTORY_CHANGE: usize = 1000;
/// Names one ListStations call examines per station its page may hold: a
/// free-only page skips held stations, and stops after 10 × page_size
/// names (10,000 at most) so one call's work is bounded however many are
/// held; the rest comes on the next page.
pub const STATION_SCAN_FACTOR: usize = 10;
/// ListSessions page size when the caller gives none.
pub const DEFAULT_PAGE: usize = 100;
/// The largest ListSessions page.
pub const MAX_PAGE: usize = 1000;
/// Sessions listed in an EvictResponse of a tenant-wide eviction (the rest
/// are counted in `evicted_count`): a reply for 10,000 sessions would be
/// ~2 MB, near the 4 MB a default gRPC client accepts.
pub const MAX_EVICTED_LISTED: usize = 1000;
/// Largest gRPC request message: every field above fits with room to spare.
pub const MAX_GRPC_REQUEST_BYTES: usize = 64 * 1024;

// ---- client WebSocket frames (docs/protocol.md).

/// The longest presence status a client may set.
pub const MAX_STATUS_LEN: usize = 64;
/// The longest notice id a client may ack.
pub const MAX_NOTICE_ID_LEN: usize = 128;
/// Consecutive bad client frames tolerated before the socket is closed
/// (1008): a client that only sends garbage is broken, not unlucky.
pub const MAX_BAD_FRAMES: u32 = 10;

// ---- listeners.

/// Accept backlog of both listeners: a shift-start storm of thousands of
/// connects must queue, not have SYNs dropped and retried a second later.
/// (The kernel caps it at `net.core.somaxconn`.)
pub const ACCEPT_BACKLOG: u32 = 8192;

// ---- registry.

/// Holders of one shared station (logins on one machine): a few people
/// sharing a desk's phone, not a crowd; one more claim is STATION_IN_USE.
/// Bounds the Redis list of a station's holders and its reads.
pub const MAX_STATION_HOLDERS: usize = 16;
