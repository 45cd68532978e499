//! Reconnect delays: exponential backoff with full jitter, as the browser
//! SDK computes them.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Delay ceilings: `initial` for the first failed attempt, doubling per
/// attempt, never above `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The ceiling for failed attempt `attempt` (0-based):
    /// `min(max, initial × 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.min(31);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay before failed attempt `attempt`: "full jitter", `r` (in
    /// `[0, 1)`) of the ceiling. Spreading reconnects over the whole window
    /// keeps agents dropped by one blip from returning at the same instant.
    pub fn delay(&self, attempt: u32, r: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        let r = if r.is_finite() {
            r.clamp(0.0, 1.0)
        } else {
            0.0
        };
        ceiling
            .mul_f64(r)
            .min(ceiling.saturating_sub(Duration::from_nanos(1)))
    }
}

/// A uniform value in `[0, 1)`. Each `RandomState` is freshly keyed by the
/// standard library, which is random enough to spread reconnects and
/// spares the crate a random-number dependency.
pub(crate) fn jitter() -> f64 {
    let bits = RandomState::new().build_hasher().finish() >> 11;
    bits as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(30),
    };

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let ms: Vec<u128> = (0..8).map(|a| B.ceiling(a).as_millis()).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(B.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn delays_stay_inside_the_window() {
        assert_eq!(B.delay(0, 0.0), Duration::ZERO);
        assert_eq!(B.delay(1, 0.5), Duration::from_millis(500));
        assert!(B.delay(0, 1.0) < Duration::from_millis(500));
        assert_eq!(B.delay(3, f64::NAN), Duration::ZERO);
        assert_eq!(B.delay(3, -1.0), Duration::ZERO);
    }

    #[test]
    fn jitter_is_in_the_unit_interval_and_varies() {
        let draws: Vec<f64> = (0..64).map(|_| jitter()).collect();
        assert!(draws.iter().all(|r| (0.0..1.0).contains(r)));
        assert!(draws.windows(2).any(|w| w[0] != w[1]));
    }
}
