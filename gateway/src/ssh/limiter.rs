//! Slows password and key guessing per source address: after too many failed logins
//! in a window, new connections from that address are dropped until it passes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
const MAX_FAILURES: u32 = 30;
/// Addresses remembered at most, so a scan cannot grow the table without bound.
const MAX_ADDRESSES: usize = 10_000;

/// Failed logins counted by every limiter of this process (SSH front door, runner
/// joins, API keys), for `/metrics`.
static FAILURES_TOTAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many logins failed in this process so far.
pub fn failures_total() -> u64 {
    FAILURES_TOTAL.load(std::sync::atomic::Ordering::Relaxed)
}

#[derive(Default)]
pub struct FailureLimiter {
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    pub fn failed(&self, ip: IpAddr) {
        FAILURES_TOTAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        let now = Instant::now();
        if map.len() >= MAX_ADDRESSES {
            map.retain(|_, (since, _)| now.duration_since(*since) < WINDOW);
        }
        let entry = map.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        let Ok(map) = self.failures.lock() else {
            return true;
        };
        map.get(&ip)
            .is_none_or(|(since, n)| *n < MAX_FAILURES || since.elapsed() >= WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_failures_block_an_address_only() {
        let limiter = FailureLimiter::default();
        let bad: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let good: IpAddr = "192.0.2.2".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        for _ in 0..MAX_FAILURES {
            assert!(limiter.allows(bad));
            limiter.failed(bad);
        }
        assert!(!limiter.allows(bad));
        assert!(limiter.allows(good));
    }
}
