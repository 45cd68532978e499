//! `/metrics`: the Prometheus text of the node, with the session census
//! (`turnstile_sessions` by state) refreshed at most every [`CENSUS_EVERY`]
//! and readiness (`turnstile_ready`, what `/readyz` answers) at every scrape.
//!
//! The census walks every live session under its tenant's lock; doing that
//! on every scrape (from any number of scrapers, on a listener that may be
//! public) let a scraper stall claims. Between refreshes the gauges keep
//! their last values.

use std::sync::Mutex;
use std::time::Duration;

use http::{header, Response, StatusCode};
use tokio::time::Instant;

use super::{respond, Body, Shared};

/// The most often the session census is taken.
pub const CENSUS_EVERY: Duration = Duration::from_secs(5);

/// When the census was last taken.
pub struct CensusCache {
    every: Duration,
    /// A std mutex: held for a comparison, never across an await.
    last: Mutex<Option<Instant>>,
}

impl CensusCache {
    pub fn new(every: Duration) -> Self {
        CensusCache {
            every,
            last: Mutex::new(None),
        }
    }

    /// Whether the census is due now; if so, it counts as taken.
    pub fn due(&self) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some(at) if now.duration_since(at) < self.every => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }
}

/// The `/metrics` response.
pub(super) fn respond_metrics(shared: &Shared) -> Response<Body> {
    let Some(handle) = &shared.metrics else {
        return respond(StatusCode::NOT_FOUND, "metrics are disabled\n");
    };
    if shared.census.due() {
        if let Some(c) = shared.registry.census() {
            use crate::metrics_names::SESSIONS;
            use crate::session::SessionState as S;
            for (state, n) in [
                (S::Pending, c.pending),
                (S::Connected, c.connected),
                (S::Disconnected, c.disconnected),
            ] {
                metrics::gauge!(SESSIONS, "state" => state.as_str()).set(n as f64);
            }
        }
    }
    let ready = if super::ready(shared) { 1.0 } else { 0.0 };
    metrics::gauge!(crate::metrics_names::READY).set(ready);
    crate::telemetry::collect_process_metrics();
    crate::telemetry::collect_log_metrics();
    let mut r = respond(StatusCode::OK, handle.render());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_census_is_taken_at_most_once_per_interval() {
        let cache = CensusCache::new(Duration::from_secs(5));
        assert!(cache.due(), "the first scrape takes it");
        assert!(!cache.due());
        tokio::time::advance(Duration::from_millis(4_999)).await;
        assert!(!cache.due());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(cache.due());
        assert!(!cache.due());
    }
}
