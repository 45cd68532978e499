//! Admission limits: open sockets and handshake rates, per node and per
//! client IP, and the per-socket message rate.
//!
//! A refused handshake costs one HTTP response (429) and no task. A socket
//! holds a [`Permit`] for its whole life; dropping it gives the slot back.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dashmap::DashMap;

use crate::session::from_str_by_name;

/// The configured limits.
#[derive(Clone, Copy, Debug)]
pub struct LimitsConfig {
    pub max_sockets: usize,
    pub max_sockets_per_ip: usize,
    pub handshakes_per_second: u32,
    pub handshakes_per_second_per_ip: u32,
}

/// A token bucket: `rate` per second, up to `burst`.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            tokens: burst as f64,
            last: Instant::now(),
            rate: rate as f64,
            burst: burst as f64,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct PerIp {
    sockets: usize,
    bucket: Bucket,
}

/// Which limit refused a handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Sockets,
    SocketsPerIp,
    Handshakes,
    HandshakesPerIp,
}

impl Refusal {
    pub const ALL: [Refusal; 4] = [
        Refusal::Sockets,
        Refusal::SocketsPerIp,
        Refusal::Handshakes,
        Refusal::HandshakesPerIp,
    ];

    /// The name of the setting that refused (in the 429 body and metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Sockets => "max_sockets",
            Refusal::SocketsPerIp => "max_sockets_per_ip",
            Refusal::Handshakes => "handshakes_per_second",
            Refusal::HandshakesPerIp => "handshakes_per_second_per_ip",
        }
    }
}

from_str_by_name!(Refusal, "limit");

/// The node's admission state.
#[derive(Debug)]
pub struct Limits {
    cfg: LimitsConfig,
    global: Mutex<Bucket>,
    sockets: AtomicU64,
    per_ip: DashMap<IpAddr, PerIp>,
    admissions: AtomicU64,
}

/// One admitted socket's slot; released on drop.
#[derive(Debug)]
pub struct Permit {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limits.sockets.fetch_sub(1, Ordering::Relaxed);
        if let Some(mut e) = self.limits.per_ip.get_mut(&self.ip) {
            e.sockets = e.sockets.saturating_sub(1);
        }
    }
}

impl Limits {
    pub fn new(cfg: LimitsConfig) -> Arc<Self> {
        Arc::new(Self {
            global: Mutex::new(Bucket::new(
                cfg.handshakes_per_second,
                cfg.handshakes_per_second,
            )),
            cfg,
            sockets: AtomicU64::new(0),
            per_ip: DashMap::new(),
            admissions: AtomicU64::new(0),
        })
    }

    /// Admits one handshake from `ip`, or says which limit refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        if self.admissions.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.sweep();
        }
        if self.sockets.load(Ordering::Relaxed) as usize >= self.cfg.max_sockets {
            return Err(Refusal::Sockets);
        }
        {
            let mut e = self.per_ip.entry(ip).or_insert_with(|| PerIp {
                sockets: 0,
                bucket: Bucket::new(
                    self.cfg.handshakes_per_second_per_ip,
                    self.cfg.handshakes_per_second_per_ip,
                ),
            });
            if e.sockets >= self.cfg.max_sockets_per_ip {
                return Err(Refusal::SocketsPerIp);
            }
            if !e.bucket.take() {
                return Err(Refusal::HandshakesPerIp);
            }
            let global_ok = self.global.lock().map(|mut b| b.take()).unwrap_or(false);
            if !global_ok {
                return Err(Refusal::Handshakes);
            }
            e.sockets += 1;
        }
        self.sockets.fetch_add(1, Ordering::Relaxed);
        Ok(Permit {
            limits: self.clone(),
            ip,
        })
    }

    /// Forgets IPs with no socket whose bucket has refilled, so the map
    /// stays bounded by the IPs that are active.
    fn sweep(&self) {
        self.per_ip.retain(|_, e| {
            e.sockets > 0 || e.bucket.last.elapsed().as_secs_f64() * e.bucket.rate < e.bucket.burst
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_name_parses_back() {
        for r in Refusal::ALL {
            assert_eq!(r.as_str().parse(), Ok(r));
        }
        assert!("max_handshakes".parse::<Refusal>().is_err());
    }

    fn limits(sockets: usize, per_ip: usize, hs: u32, hs_ip: u32) -> Arc<Limits> {
        Limits::new(LimitsConfig {
            max_sockets: sockets,
            max_sockets_per_ip: per_ip,
            handshakes_per_second: hs,
            handshakes_per_second_per_ip: hs_ip,
        })
    }

    #[test]
    fn sockets_per_ip_are_counted_and_given_back() {
        let l = limits(10, 2, 100, 100);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = l.admit(ip).unwrap();
        let _b = l.admit(ip).unwrap();
        assert_eq!(l.admit(ip).unwrap_err(), Refusal::SocketsPerIp);
        assert!(l.admit("10.0.0.2".parse().unwrap()).is_ok());
        drop(a);
        assert!(l.admit(ip).is_ok());
    }

    #[test]
    fn the_node_wide_socket_limit_holds() {
        let l = limits(2, 10, 100, 100);
        let _a = l.admit("10.0.0.1".parse().unwrap()).unwrap();
        let _b = l.admit("10.0.0.2".parse().unwrap()).unwrap();
        assert_eq!(
            l.admit("10.0.0.3".parse().unwrap()).unwrap_err(),
            Refusal::Sockets
        );
    }

    #[test]
    fn handshake_rates_are_limited_per_ip_and_globally() {
        let l = limits(100, 100, 3, 2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut held = vec![l.admit(ip).unwrap(), l.admit(ip).unwrap()];
        assert_eq!(l.admit(ip).unwrap_err(), Refusal::HandshakesPerIp);
        held.push(l.admit("10.0.0.2".parse().unwrap()).unwrap());
        assert_eq!(
            l.admit("10.0.0.3".parse().unwrap()).unwrap_err(),
            Refusal::Handshakes
        );
    }

    #[test]
    fn a_bucket_refuses_past_its_burst() {
        let mut b = Bucket::new(1, 3);
        assert!(b.take() && b.take() && b.take());
        assert!(!b.take());
    }
}
