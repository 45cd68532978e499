//! Time: the one place the broker reads a clock.
//!
//! Two kinds of time, kept apart on purpose:
//!
//! - **Local timers** (heartbeats, sleeps until the next deadline, "when
//!   did this socket last speak") use monotonic time through tokio
//!   ([`monotonic_ms`], `tokio::time::Instant`), so a wall-clock step never
//!   fires or delays them, and tests run them under `tokio::time::pause()`.
//! - **Registry time** ([`Clock::now_ms`], Unix milliseconds) is what
//!   session deadlines, tombstones, notice expiries and leases are written
//!   in. A [`Clock`] is an *offset* plus tokio's monotonic elapsed time:
//!   [`Clock::system`] takes the offset from the wall clock once, when it is
//!   made, and from then on only monotonic time moves it. It therefore also
//!   follows tokio's paused clock, and a wall-clock step (NTP, an operator)
//!   moves no deadline.
//!
//! The clock is a cheap handle (`Arc`) carried in
//! [`RegistryConfig`](crate::registry::RegistryConfig); every registry reads
//! it and nothing else. Tests inject [`Clock::manual`], which moves only
//! when the test calls [`Clock::advance`], so two registries can be driven
//! through the same instants.
//!
//! Assumptions: monotonic time runs at the same rate on every node (true to
//! well under 0.1 % on any host with NTP rate discipline). On one node the
//! offset is the wall clock's when the clock is made. In a cluster it is
//! Redis's: every lease refresh returns Redis's `TIME` and the membership
//! task hands it to [`Clock::follow`], which re-anchors the clock at the
//! midpoint of the round trip whenever it is provably off. So the `now`
//! every node gives the scripts is Redis's time to within half a round
//! trip (plus the monotonic drift of one lease tick), and no cross-node
//! decision depends on the hosts' wall clocks (the membership script reads
//! `TIME` itself). A manual clock is never re-anchored.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Registry time: Unix milliseconds as an offset plus monotonic elapsed time.
#[derive(Clone)]
pub struct Clock {
    source: Arc<Source>,
}

struct Source {
    /// The monotonic instant `offset_ms` refers to.
    origin: Instant,
    /// Unix ms at `origin` (plus every `advance`).
    offset_ms: AtomicI64,
    /// False for a manual clock: only `advance` moves it.
    follows_monotonic: bool,
}

impl Clock {
    /// The wall clock as it reads now, then carried forward by monotonic
    /// (tokio) time.
    pub fn system() -> Self {
        Self::new(wall_ms(), true)
    }

    /// A clock that stands at `start_ms` until [`advance`](Self::advance)
    /// moves it; for tests that drive several registries through the same
    /// instants, or time in steps without a paused runtime.
    pub fn manual(start_ms: i64) -> Self {
        Self::new(start_ms, false)
    }

    fn new(offset_ms: i64, follows_monotonic: bool) -> Self {
        Self {
            source: Arc::new(Source {
                origin: Instant::now(),
                offset_ms: AtomicI64::new(offset_ms),
                follows_monotonic,
            }),
        }
    }

    /// Unix milliseconds, as every registry transition reads them.
    pub fn now_ms(&self) -> i64 {
        let s = &self.source;
        let base = s.offset_ms.load(Ordering::Acquire);
        if s.follows_monotonic {
            base.saturating_add(millis(s.origin.elapsed()))
        } else {
            base
        }
    }

    /// Moves the clock forward by `by` (also a following clock: that is a
    /// step, as a wall clock would take).
    pub fn advance(&self, by: Duration) {
        self.source
            .offset_ms
            .fetch_add(millis(by), Ordering::AcqRel);
    }

    /// Re-anchors the clock: it read `epoch_ms` at the monotonic instant
    /// `at`. For a source that estimates the offset elsewhere (another
    /// host's clock); a manual clock simply jumps to `epoch_ms`.
    pub fn rebase(&self, epoch_ms: i64, at: Instant) {
        let s = &self.source;
        let offset = if s.follows_monotonic {
            epoch_ms.saturating_sub(signed_ms(at, s.origin))
        } else {
            epoch_ms
        };
        s.offset_ms.store(offset, Ordering::Release);
    }

    /// Follows another host's clock (the cluster's: Redis's `TIME`), read
    /// as `epoch_ms` at some instant between `sent` and `received`. Steps
    /// only when this clock is provably off — its readings at `sent` and
    /// `received` (±1 ms of rounding) do not bracket `epoch_ms` — and then
    /// re-anchors at the midpoint, so it is right to half a round trip
    /// and one reading's noise never makes it jitter. Returns the step
    /// taken (ms; 0 for none). A manual clock is left alone: its test
    /// drives it.
    pub fn follow(&self, epoch_ms: i64, sent: Instant, received: Instant) -> i64 {
        let s = &self.source;
        if !s.follows_monotonic || received < sent {
            return 0;
        }
        let base = s.offset_ms.load(Ordering::Acquire);
        let early = base.saturating_add(signed_ms(sent, s.origin));
        let late = base.saturating_add(signed_ms(received, s.origin));
        if (early - 1..=late + 1).contains(&epoch_ms) {
            return 0;
        }
        let mid = sent + (received - sent) / 2;
        let step = epoch_ms.saturating_sub(base.saturating_add(signed_ms(mid, s.origin)));
        self.rebase(epoch_ms, mid);
        step
    }

    /// How long from now until `at_ms` (zero when it has passed).
    pub fn until(&self, at_ms: i64) -> Duration {
        Duration::from_millis(at_ms.saturating_sub(self.now_ms()).max(0) as u64)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.source.follows_monotonic {
            "monotonic"
        } else {
            "manual"
        };
        f.debug_struct("Clock")
            .field("kind", &kind)
            .field("now_ms", &self.now_ms())
            .finish()
    }
}

/// Monotonic milliseconds on a process-wide origin, through tokio (so it
/// stands still under `tokio::time::pause()`), for local timers such as a
/// socket's last sign of life. Only differences mean anything. Signed: a
/// paused runtime's clock may stand before the origin another runtime of
/// the same process (a test binary) fixed.
pub fn monotonic_ms() -> i64 {
    static ORIGIN: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);
    signed_ms(Instant::now(), Instant::from_std(*ORIGIN))
}

/// The wall clock, Unix ms (0 before 1970).
fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `a - b` in whole milliseconds, rounded down (also when negative, so
/// differences of two readings are exact).
fn signed_ms(a: Instant, b: Instant) -> i64 {
    let nanos = if a >= b {
        (a - b).as_nanos() as i128
    } else {
        -((b - a).as_nanos() as i128)
    };
    i64::try_from(nanos.div_euclid(1_000_000)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let c = Clock::manual(1_000);
        assert_eq!(c.now_ms(), 1_000);
        c.advance(Duration::from_millis(250));
        assert_eq!(c.now_ms(), 1_250);
        assert_eq!(c.until(2_000), Duration::from_millis(750));
        assert_eq!(c.until(1_000), Duration::ZERO);
        c.rebase(5_000, Instant::now());
        assert_eq!(c.now_ms(), 5_000);
        // Another host's clock does not move it: the test does.
        let t = Instant::now();
        assert_eq!(c.follow(9_000, t, t), 0);
        assert_eq!(c.now_ms(), 5_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_following_clock_steps_only_when_provably_off() {
        let c = Clock::system();
        let sent = Instant::now();
        let at_sent = c.now_ms();
        tokio::time::advance(Duration::from_millis(10)).await;
        let received = Instant::now();
        // Read anywhere inside the round trip: left alone.
        assert_eq!(c.follow(at_sent + 7, sent, received), 0);
        assert_eq!(c.now_ms(), at_sent + 10);
        // 8 s ahead of this host: re-anchored at the midpoint.
        assert_eq!(c.follow(at_sent + 8_000, sent, received), 7_995);
        assert_eq!(c.now_ms(), at_sent + 8_005);
        // And behind.
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(4)).await;
        assert_eq!(
            c.follow(1_000, sent, Instant::now()),
            1_000 - (at_sent + 8_007)
        );
        assert_eq!(c.now_ms(), 1_002);
    }

    #[tokio::test(start_paused = true)]
    async fn the_system_clock_follows_tokio_time() {
        let c = Clock::system();
        let t0 = c.now_ms();
        let m0 = monotonic_ms();
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(c.now_ms() - t0, 90_000);
        assert_eq!(monotonic_ms() - m0, 90_000);
        // Clones share the source: a rebase is seen by every holder.
        let other = c.clone();
        c.rebase(42_000, Instant::now());
        assert_eq!(other.now_ms(), 42_000);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(other.now_ms(), 43_000);
    }
}
