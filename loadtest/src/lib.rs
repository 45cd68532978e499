//! turnstile-loadtest: drives real agents (gRPC claims, WebSockets) against
//! one node or a cluster and measures what they see.
//!
//! - [`scenarios`]: idle, storm, takeover, stations, churn, claim.
//! - [`tenants`]: many quiet tenants held idle against a cluster.
//! - [`notices`]: a tenant-wide notice fanned out to many sockets.
//! - [`slowlog`]: the Redis `SLOWLOG` entries written during a run.
//! - [`report`]: HDR latency histograms, the JSON report, table and SVG.
//! - [`sys`]: /proc figures (broker RSS and CPU, the generator's own CPU).
//! - [`probe`]: the broker's memory and CPU from /proc or from its nodes'
//!   `/metrics`.

pub mod notices;
pub mod probe;
pub mod report;
pub mod scenarios;
pub mod slowlog;
pub mod sys;
pub mod tenants;
