//! turnstile-loadtest: drives real agents (gRPC claims, WebSockets) against
//! one node or a cluster and measures what they see.
//!
//! - [`scenarios`]: idle, storm, takeover, stations, churn, claim.
//! - [`chaos`]: churn on three nodes behind Sentinel while faults are
//!   injected, then a history checker.
//! - [`tenants`]: many quiet tenants held idle against a cluster.
//! - [`shift`]: a whole shift, its rates from a [`profile`].
//! - [`shard`]: `--shard I/N`, one generator's slice of a run.
//! - [`merge`]: the reports of several shards as one.
//! - [`notices`]: a tenant-wide notice fanned out to many sockets.
//! - [`slowlog`]: the Redis `SLOWLOG` entries written during a run.
//! - [`report`]: HDR latency histograms, the JSON report, table and SVG.
//! - [`timeline_svg`]: the time-series plot.
//! - [`sys`]: /proc figures (broker RSS and CPU, the generator's own CPU).
//! - [`probe`]: the broker's memory and CPU from /proc or from its nodes'
//!   `/metrics`.

pub mod chaos;
pub mod directory;
pub mod merge;
pub mod notices;
pub mod probe;
pub mod profile;
pub mod report;
pub mod scenarios;
pub mod shard;
pub mod shift;
pub mod slowlog;
pub mod sys;
pub mod tenants;
pub mod timeline_svg;
